//! `dynkv ctl`: a command-line client for a running node.

use std::net::SocketAddr;
use std::time::Duration;

use dynkv_net::{CallOptions, Client, ClientOptions, Connection, Head, Opcode, Status};

#[derive(clap::Args, Debug)]
pub(crate) struct CtlArgs {
    /// Native-protocol address of any shard of the node.
    #[arg(long, default_value = "127.0.0.1:7600")]
    addr: SocketAddr,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Read quorum R for get (default: the node's).
    #[arg(long)]
    r: Option<u8>,
    /// Write quorum W for put and del (default: the node's).
    #[arg(long)]
    w: Option<u8>,
    /// How many of the R or W answers must come from primary owners.
    #[arg(long)]
    primaries: Option<u8>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CtlCommand {
    /// Print the value(s) of a key, one sibling per line, then its context
    /// (hex) for a later `put --context` or `del --context`.
    Get { key: String },
    /// Store a value. With `--context` it supersedes what that read saw;
    /// without, ctl reads the key first and supersedes what it finds.
    Put {
        key: String,
        value: String,
        #[arg(long)]
        context: Option<String>,
        /// Write without any context: the value becomes a sibling of
        /// whatever exists.
        #[arg(long, conflicts_with = "context")]
        blind: bool,
    },
    /// Delete a key (supersedes what `--context` saw, or what ctl reads).
    Del {
        key: String,
        #[arg(long)]
        context: Option<String>,
    },
    /// Node statistics (Prometheus text).
    Stats,
    /// Liveness, cluster membership and ownership (with the progress of a
    /// join, leave or removal), pending hints and shard layout.
    Status,
    /// Make a node leave the cluster: it hands every partition it owns to
    /// the remaining nodes, then stops. Without NODE, the node at --addr.
    /// NODE is an id as `status` shows it (16 hex digits) or in decimal.
    Leave { node: Option<String> },
    /// Remove a node that is down for good: the others copy its
    /// partitions from the surviving replicas. It must not come back.
    /// NODE is an id as `status` shows it (16 hex digits) or in decimal.
    Remove { node: String },
}

pub(crate) fn run(args: CtlArgs) -> Result<(), String> {
    let options = ClientOptions {
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        connect_timeout: Duration::from_millis(args.timeout_ms.clamp(1, 10_000)),
        ..ClientOptions::default()
    };
    let executor = glommio::LocalExecutorBuilder::default()
        .make()
        .map_err(|e| format!("cannot start an executor: {e}"))?;
    executor.run(async move {
        let admin = |command: &'static str, argument: String| async move {
            let conn = Connection::open(args.addr, &options).await.map_err(|e| e.to_string())?;
            let head = Head::request(Opcode::Admin, 0);
            let response = conn
                .call(head, command.as_bytes(), &[], argument.as_bytes(), options.timeout)
                .await
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&response.value).into_owned();
            if response.status == Status::Ok as u8 {
                Ok(text)
            } else {
                Err(text)
            }
        };
        let client = Client::connect(args.addr, options).await.map_err(|e| e.to_string())?;
        let fail = |e: dynkv_net::ClientError| e.to_string();
        let read = CallOptions {
            quorum: args.r,
            primary_quorum: args.primaries,
            ..CallOptions::default()
        };
        let write = CallOptions { quorum: args.w, ..read };
        match args.command {
            CtlCommand::Get { key } => {
                let got = client.get_with(key.as_bytes(), &read).await.map_err(fail)?;
                if got.values.is_empty() {
                    return Err(format!("{key}: not found"));
                }
                if got.values.len() > 1 {
                    println!("({} siblings)", got.values.len());
                }
                for value in got.values {
                    println!("{}", String::from_utf8_lossy(&value));
                }
                println!("context: {}", to_hex(&got.context));
            }
            CtlCommand::Put {
                key,
                value,
                context,
                blind,
            } => {
                let context = match (context, blind) {
                    (_, true) => Vec::new(),
                    (Some(hex), _) => from_hex(&hex)?,
                    (None, false) => client.get(key.as_bytes()).await.map_err(fail)?.context,
                };
                let context = (!context.is_empty()).then_some(&context[..]);
                client
                    .put(key.as_bytes(), value.as_bytes(), context)
                    .await
                    .map_err(fail)?;
                println!("OK");
            }
            CtlCommand::Del { key, context } => {
                let context = match context {
                    Some(hex) => from_hex(&hex)?,
                    None => client.get_with(key.as_bytes(), &read).await.map_err(fail)?.context,
                };
                client
                    .delete_with(key.as_bytes(), &context, &write)
                    .await
                    .map_err(fail)?;
                println!("OK");
            }
            CtlCommand::Stats => print!("{}", client.stats().await.map_err(fail)?),
            CtlCommand::Leave { node } => {
                println!("{}", admin("leave", node.unwrap_or_default()).await?);
            }
            CtlCommand::Remove { node } => println!("{}", admin("remove", node).await?),
            CtlCommand::Status => {
                let started = std::time::Instant::now();
                client.ping().await.map_err(fail)?;
                println!("node {} is up (ping {:?})", args.addr, started.elapsed());
                let stats = client.stats().await.map_err(fail)?;
                let first = |name: &str| metric_values(&stats, name).first().copied().unwrap_or(0);
                let ready = if first("dynkv_cluster_ready") == 1 {
                    "ready"
                } else {
                    "forming"
                };
                println!(
                    "cluster: {} member(s), {} down, {ready}",
                    first("dynkv_cluster_members"),
                    first("dynkv_cluster_members_down")
                );
                let pending = metric_values(&stats, "dynkv_hints_pending");
                let bytes = metric_values(&stats, "dynkv_hints_pending_bytes");
                println!(
                    "hints pending: {} ({} bytes)",
                    pending.iter().sum::<u64>(),
                    bytes.iter().sum::<u64>()
                );
                for (shard, addr) in client.shard_addresses().iter().enumerate() {
                    let hints = pending.get(shard).copied().unwrap_or(0);
                    println!("  shard {shard}: {addr}, {hints} hint(s) pending");
                }
                print!("{}", admin("status", String::new()).await?);
            }
        }
        Ok(())
    })
}

/// Values of one metric, a line per shard, in order.
fn metric_values(stats: &str, name: &str) -> Vec<u64> {
    stats
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("context {text:?} is not hex (copy it from `dynkv ctl get`)");
    if text.len() & 1 == 1 {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip_through_hex_and_bad_hex_is_named() {
        let bytes = vec![0x01, 0x00, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
        assert!(from_hex("abc").unwrap_err().contains("not hex"));
        assert!(from_hex("zz").unwrap_err().contains("not hex"));
    }

    #[test]
    fn metric_values_reads_one_line_per_shard() {
        let text = "# HELP x\ndynkv_hints_pending{shard=\"0\"} 3\ndynkv_hints_pending_bytes{shard=\"0\"} 9\ndynkv_hints_pending{shard=\"1\"} 4\n";
        assert_eq!(metric_values(text, "dynkv_hints_pending"), vec![3, 4]);
    }
}
