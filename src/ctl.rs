//! `dynkv ctl`: a command-line client for a running node.

use std::net::SocketAddr;
use std::time::Duration;

use dynkv_net::{Client, ClientOptions};

#[derive(clap::Args, Debug)]
pub(crate) struct CtlArgs {
    /// Native-protocol address of any shard of the node.
    #[arg(long, default_value = "127.0.0.1:7600")]
    addr: SocketAddr,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CtlCommand {
    /// Print the value(s) of a key; siblings are printed one per line.
    Get { key: String },
    /// Store a value.
    Put { key: String, value: String },
    /// Delete a key.
    Del { key: String },
    /// Node statistics (Prometheus text).
    Stats,
    /// Liveness and shard layout.
    Status,
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
        let client = Client::connect(args.addr, options).await.map_err(|e| e.to_string())?;
        let fail = |e: dynkv_net::ClientError| e.to_string();
        match args.command {
            CtlCommand::Get { key } => {
                let got = client.get(key.as_bytes()).await.map_err(fail)?;
                if got.values.is_empty() {
                    return Err(format!("{key}: not found"));
                }
                if got.values.len() > 1 {
                    println!("({} siblings)", got.values.len());
                }
                for value in got.values {
                    println!("{}", String::from_utf8_lossy(&value));
                }
            }
            CtlCommand::Put { key, value } => {
                client.put(key.as_bytes(), value.as_bytes(), None).await.map_err(fail)?;
                println!("OK");
            }
            CtlCommand::Del { key } => {
                client.delete(key.as_bytes(), &[]).await.map_err(fail)?;
                println!("OK");
            }
            CtlCommand::Stats => print!("{}", client.stats().await.map_err(fail)?),
            CtlCommand::Status => {
                let started = std::time::Instant::now();
                client.ping().await.map_err(fail)?;
                println!("node {} is up (ping {:?})", args.addr, started.elapsed());
                for (shard, addr) in client.shard_addresses().iter().enumerate() {
                    println!("  shard {shard}: {addr}");
                }
            }
        }
        Ok(())
    })
}
