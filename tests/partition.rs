//! A network partition, for real: five `dynkv serve` processes (N = 3,
//! R = W = 2), each in a network namespace this test creates, with one
//! veth interface (10.99.0.11 to .15) on a bridge in one more namespace.
//! nftables rules inside the nodes' namespaces cut the cluster in two
//! ({.11, .12} and {.13, .14, .15}); both
//! sides keep writing (sloppy quorum: fallbacks on their side hold hints,
//! and coordinate the keys with no primary on their side), some keys on
//! both sides at once, and the minority reads its writes back. After
//! healing:
//! - every acknowledged write is stored on each of its key's N primary
//!   owners within a bounded time (checked on the nodes' engines, with the
//!   owners read from the ownership the nodes stored);
//! - keys written on both sides read back with both values as siblings,
//!   so no acknowledged write was silently lost (a write that failed may
//!   show as well: it reached some replica);
//! - nothing left the test's network: a counting rule on every packet to an
//!   address outside 10.99.0.0/24 and loopback counted none.
//!
//! Needs root (namespaces, nft); `.ci/run` installs iproute2 and nftables.
//! Every process is stopped by PID, and the namespaces are deleted, on any
//! exit.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dynkv_net::{CallOptions, Client, ClientOptions};
use dynkv_ring::{NodeId, Ownership, PartitionCount};
use support::{run, stored_values};

const SECRET: &str = "test-partition-secret-0123456789";
const NODES: usize = 5;
const MINORITY: usize = 2;

fn ip_of(i: usize) -> String {
    format!("10.99.0.{}", 11 + i)
}

fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The test's network: a namespace per node, each with one veth interface
/// plugged into a bridge in one more namespace; all deleted on drop.
struct Namespace {
    prefix: String,
    /// Namespaces created so far (deleted on drop).
    created: Vec<String>,
}

impl Namespace {
    fn node_ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    fn create() -> Result<Namespace, String> {
        let mut net = Namespace {
            prefix: format!("dkvp{}", std::process::id()),
            created: Vec::new(),
        };
        let bridge = format!("{}-br", net.prefix);
        sh("ip", &["netns", "add", &bridge])?;
        net.created.push(bridge.clone());
        sh("ip", &["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        sh("ip", &["-n", &bridge, "link", "set", "br0", "up"])?;
        for i in 0..NODES {
            let ns = net.node_ns(i);
            sh("ip", &["netns", "add", &ns])?;
            net.created.push(ns.clone());
            let port = format!("p{i}");
            // IPv4 only: no IPv6 autoconfiguration chatter on the bridge.
            for setting in [
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ] {
                sh("ip", &["netns", "exec", &ns, "sysctl", "-qw", setting])?;
            }
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            sh(
                "ip",
                &[
                    "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &bridge,
                ],
            )?;
            sh("ip", &["-n", &bridge, "link", "set", &port, "master", "br0"])?;
            sh("ip", &["-n", &bridge, "link", "set", &port, "up"])?;
            sh(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{}/24", ip_of(i)), "dev", "eth0"],
            )?;
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            // Every packet to an address outside the test's network is
            // counted and dropped; the count must stay 0.
            net.nft(i, "add table inet dkvtest")?;
            net.nft(
                i,
                "add chain inet dkvtest output { type filter hook output priority 0 ; }",
            )?;
            net.nft(
                i,
                "add rule inet dkvtest output ip daddr != { 10.99.0.0/24, 127.0.0.0/8 } counter drop",
            )?;
            net.nft(
                i,
                "add rule inet dkvtest output meta nfproto ipv6 ip6 daddr != ::1 counter drop",
            )?;
        }
        Ok(net)
    }

    fn nft(&self, i: usize, command: &str) -> Result<String, String> {
        let ns = self.node_ns(i);
        let args: Vec<&str> = ["netns", "exec", &ns, "nft"]
            .into_iter()
            .chain(command.split(' '))
            .collect();
        sh("ip", &args)
    }

    /// Drops every packet between nodes `0..at` and `at..NODES`, on each
    /// node's way out.
    fn cut(&self, at: usize) {
        for i in 0..NODES {
            let others: Vec<String> = if i < at {
                (at..NODES).map(ip_of).collect()
            } else {
                (0..at).map(ip_of).collect()
            };
            self.nft(
                i,
                "add chain inet dkvtest cut { type filter hook output priority -1 ; }",
            )
            .unwrap();
            self.nft(
                i,
                &format!("add rule inet dkvtest cut ip daddr {{ {} }} drop", others.join(", ")),
            )
            .unwrap();
        }
    }

    fn heal(&self) {
        for i in 0..NODES {
            self.nft(i, "delete chain inet dkvtest cut").unwrap();
        }
    }

    /// Packets counted going outside the test's network.
    fn escaped_packets(&self) -> u64 {
        (0..NODES)
            .map(|i| {
                let rules = self.nft(i, "list chain inet dkvtest output").unwrap();
                rules
                    .lines()
                    .filter_map(|l| {
                        let at = l.find("packets ")?;
                        l[at + 8..].split(' ').next()?.parse::<u64>().ok()
                    })
                    .sum::<u64>()
            })
            .sum()
    }

    /// Runs `f` on a thread that entered node `i`'s namespace (so its
    /// sockets are there), in a glommio executor.
    fn run<T: Send + 'static, F, Fut>(&self, i: usize, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let path = PathBuf::from("/var/run/netns").join(self.node_ns(i));
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("namespace file");
            // SAFETY: setns on this thread only, with a namespace file we
            // hold open.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            run(f())
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for ns in &self.created {
            let _ = sh("ip", &["netns", "del", ns]);
        }
    }
}

struct Proc {
    child: Option<Child>,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Proc {
    fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "node ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(ns: &Namespace, i: usize, config: &Path) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("node.log");
    let peers: Vec<String> = (0..NODES)
        .filter(|&j| j != i)
        .map(|j| format!("{}:7700", ip_of(j)))
        .collect();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.node_ns(i),
            env!("CARGO_BIN_EXE_dynkv"),
            "serve",
            "--shards",
            "2",
        ])
        .args(["--listen", &ip_of(i), "--node-id", &(i + 1).to_string()])
        .args(["--n", "3", "--r", "2", "--w", "2", "--cluster-secret", SECRET])
        .args(["--config", config.to_str().unwrap(), "--peers", &peers.join(",")])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start dynkv in the namespace");
    Proc {
        child: Some(child),
        dir,
        log,
    }
}

fn addr(i: usize) -> std::net::SocketAddr {
    format!("{}:7600", ip_of(i)).parse().unwrap()
}

fn options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

/// Sums a metric over node `i`'s shards.
fn metric(ns: &Namespace, i: usize, name: &'static str) -> Option<u64> {
    ns.run(i, move || async move {
        let text = Client::connect(addr(i), options()).await.ok()?.stats().await.ok()?;
        Some(support::sum_metric(&text, name))
    })
}

fn wait_for(what: &str, limit: Duration, procs: &[Proc], mut until: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !until() {
        if Instant::now() > deadline {
            let logs: Vec<String> = procs
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    format!(
                        "--- node {}\n{}",
                        i + 1,
                        std::fs::read_to_string(&p.log).unwrap_or_default()
                    )
                })
                .collect();
            panic!("{what} within {limit:?}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Blind writes of `keys` (value per key from `value`) through node `via`;
/// the keys whose write was acknowledged.
fn write(ns: &Namespace, via: usize, keys: Vec<String>, side: &'static str) -> Vec<String> {
    ns.run(via, move || async move {
        let client = Client::connect(addr(via), options()).await.unwrap();
        let mut acked = Vec::new();
        for key in keys {
            let value = format!("{key}@{side}");
            if client.put(key.as_bytes(), value.as_bytes(), None).await.is_ok() {
                acked.push(key);
            }
        }
        acked
    })
}

#[test]
fn a_partitioned_cluster_keeps_every_acknowledged_write_and_shows_both_sides() {
    let ns = match Namespace::create() {
        Ok(ns) => ns,
        Err(err) => panic!(
            "this test needs network namespaces and nftables (run as root; .ci/run installs iproute2 and \
             nftables): {err}"
        ),
    };
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("dynkv.toml");
    std::fs::write(
        &config,
        "gossip_interval_ms = 300\nreplica_timeout_ms = 300\nrequest_timeout_ms = 3000\n\
         handoff_interval_ms = 200\nanti_entropy_partition_pause_ms = 5\nanti_entropy_keys_per_second_max = 100000\n",
    )
    .unwrap();
    let mut procs: Vec<Proc> = (0..NODES).map(|i| spawn(&ns, i, &config)).collect();
    wait_for("the cluster forms", Duration::from_secs(30), &procs, || {
        (0..NODES).all(|i| metric(&ns, i, "dynkv_cluster_ready") == Some(2))
    });

    ns.cut(MINORITY);
    wait_for("each side sees the other down", Duration::from_secs(30), &procs, || {
        (0..NODES).all(|i| {
            let others = if i < MINORITY { NODES - MINORITY } else { MINORITY };
            metric(&ns, i, "dynkv_cluster_members_down") == Some(others as u64 * 2)
        })
    });

    // Both sides write their own keys, and the same "both-" keys.
    let keys = |prefix: &str, n: usize| -> Vec<String> { (0..n).map(|i| format!("{prefix}-{i}")).collect() };
    let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (via, side, own) in [(0, "minority", "min"), (MINORITY, "majority", "maj")] {
        let mut written = keys(own, 30);
        written.extend(keys("both", 15));
        for key in write(&ns, via, written, side) {
            acked.entry(key.clone()).or_default().insert(format!("{key}@{side}"));
        }
    }
    // Sloppy quorum keeps both sides writable: a key with a primary on a
    // side is coordinated there, and one whose N = 3 primaries are all on
    // the majority side by a minority fallback, which keeps the copies as
    // hints (W = 2 of the minority's 2 nodes).
    let both_sides = acked.values().filter(|v| v.len() == 2).count();
    let on = |side: &str| acked.values().filter(|v| v.iter().any(|w| w.ends_with(side))).count();
    assert_eq!(both_sides, 15, "both sides took every shared key: {acked:?}");
    assert_eq!(on("@majority"), 45, "the majority side took every write: {acked:?}");
    assert_eq!(on("@minority"), 45, "the minority side took every write: {acked:?}");

    // The minority reads its own writes back while cut off, through the
    // node that did not coordinate them.
    let minority_writes: Vec<String> = acked
        .iter()
        .filter(|(_, v)| v.iter().any(|w| w.ends_with("@minority")))
        .map(|(key, _)| key.clone())
        .collect();
    ns.run(1, move || async move {
        let client = Client::connect(addr(1), options()).await.unwrap();
        for key in &minority_writes {
            let got = client.get(key.as_bytes()).await.unwrap();
            let want = format!("{key}@minority").into_bytes();
            assert_eq!(got.values, vec![want], "{key} read on the minority side");
        }
    });

    ns.heal();
    let started = Instant::now();
    wait_for(
        "hints handed off after healing",
        Duration::from_secs(60),
        &procs,
        || {
            (0..NODES).all(|i| metric(&ns, i, "dynkv_cluster_members_down") == Some(0))
                && (0..NODES).all(|i| metric(&ns, i, "dynkv_hints_pending") == Some(0))
        },
    );
    let handed_off_in = started.elapsed();

    // Siblings from the two sides, through every node.
    let expected = acked.clone();
    ns.run(0, move || async move {
        for i in 0..NODES {
            let client = Client::connect(addr(i), options()).await.unwrap();
            let all = CallOptions {
                quorum: Some(3),
                ..CallOptions::default()
            };
            for (key, values) in &expected {
                let got = client.get_with(key.as_bytes(), &all).await.unwrap();
                let got: BTreeSet<String> = got
                    .values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                // Acknowledged writes all show; a write that failed may
                // show too (it reached some replica), nothing else.
                let attempted = |v: &String| v.ends_with("@majority") || v.ends_with("@minority");
                assert!(
                    got.is_superset(values),
                    "{key} through node {}: {got:?} lacks some of {values:?}",
                    i + 1
                );
                assert!(got.iter().all(attempted), "{key}: {got:?}");
            }
        }
    });
    assert_eq!(ns.escaped_packets(), 0, "a packet left the test's network");

    // Every acknowledged write on each of its N primaries' disks.
    for p in &mut procs {
        p.terminate();
    }
    let data = |i: usize| procs[i].dir.path().join("dynkv-data");
    let ownership = Ownership::decode(&std::fs::read(data(0).join("ownership")).unwrap()).unwrap();
    let node_dir: BTreeMap<NodeId, usize> = (0..NODES).map(|i| (NodeId(i as u64 + 1), i)).collect();
    for (key, values) in &acked {
        let partition = PartitionCount::default().partition_of(key.as_bytes());
        let owners = ownership.current().owners(partition);
        assert_eq!(owners.len(), 3);
        for owner in owners {
            let i = node_dir[&owner.node];
            let stored: BTreeSet<String> = stored_values(procs[i].dir.path(), key.as_bytes())
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            assert!(
                stored.is_superset(values),
                "{key} on its primary, node {}: {stored:?} lacks some of {values:?}",
                i + 1
            );
        }
    }
    eprintln!(
        "partition: {} keys acknowledged ({both_sides} on both sides), all on their primaries {handed_off_in:?} \
         after healing",
        acked.len()
    );
}
