//! A cluster that grows and shrinks, with real `dynkv serve` processes on
//! 127.0.0.1 ports, N = 2: a fourth node joins while writes go on, a node
//! leaves (handing its partitions off, then stopping by itself), and a
//! SIGKILLed node is removed (its partitions copied from the survivors).
//! After each change settles, every acknowledged key reads back with its
//! value, and the stored keys add up to exactly N copies of each: the new
//! owners received their share and the old owners dropped theirs. Every
//! process is stopped by PID.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use dynkv_net::{CallOptions, Client};
use support::{client_options, free_ports, run, Node, Ports};

const SECRET: &str = "test-elastic-secret-0123456789";
const N: usize = 2;

fn value_of(key: &str) -> Vec<u8> {
    format!("value-of-{key}").into_bytes()
}

struct Member {
    id: u64,
    dir: tempfile::TempDir,
    ports: Ports,
    node: Option<Node>,
}

impl Member {
    fn node(&self) -> &Node {
        self.node.as_ref().expect("running")
    }

    /// Sums a metric over this node's shards.
    fn metric(&self, name: &str) -> u64 {
        support::node_metric(self.node().addr(), name)
    }

    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_dynkv"))
            .args(["ctl", "--addr", &self.node().addr().to_string()])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// Starts node `id` on `ports` with `--join` (or `--peers`) `cluster`,
/// without waiting for it.
fn spawn(id: u64, ports: Ports, config: &std::path::Path, cluster: &[String], join: bool) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let flag = if join { "--join" } else { "--peers" };
    let args: Vec<String> = [
        "--node-id",
        &id.to_string(),
        "--n",
        &N.to_string(),
        "--cluster-secret",
        SECRET,
        "--config",
        config.to_str().unwrap(),
        flag,
        &cluster.join(","),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let node = Node::spawn(dir.path(), ports, &args);
    Member {
        id,
        dir,
        ports,
        node: Some(node),
    }
}

fn start(id: u64, config: &std::path::Path, cluster: &[String], join: bool) -> Member {
    let mut member = spawn(id, free_ports(), config, cluster, join);
    member
        .node
        .as_mut()
        .unwrap()
        .wait_listening()
        .unwrap_or_else(|log| panic!("node {id}: {log}"));
    member
}

/// Waits until `until` holds, or fails with `what` and the members' logs.
fn wait_for(members: &[&Member], what: &str, limit: Duration, until: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !until() {
        if Instant::now() > deadline {
            let logs: Vec<String> = members
                .iter()
                .map(|m| format!("--- node {} ---\n{}", m.id, m.node().log()))
                .collect();
            let status = members[0].ctl(&["status"]).1;
            panic!("{what} within {limit:?}\n{status}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn epoch(member: &Member) -> u64 {
    member.metric("dynkv_ownership_epoch") / u64::from(support::SHARDS)
}

/// Every member settled on the same epoch, at least `epoch_min` (a change
/// is planned and committed: two epochs), and the stored keys add up to N
/// copies of `keys`.
fn settled(members: &[&Member], epoch_min: u64, keys: usize) -> bool {
    let shards = u64::from(support::SHARDS);
    let epochs: Vec<u64> = members
        .iter()
        .map(|m| m.metric("dynkv_ownership_epoch") / shards)
        .collect();
    let all_settled = members.iter().all(|m| m.metric("dynkv_ownership_settled") == shards);
    let stored: u64 = members.iter().map(|m| m.metric("dynkv_engine_keys")).sum();
    all_settled && epochs[0] >= epoch_min && epochs.windows(2).all(|w| w[0] == w[1]) && stored == (keys * N) as u64
}

fn write(member: &Member, keys: std::ops::Range<usize>) {
    let addr = member.node().addr();
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        for batch in keys.collect::<Vec<_>>().chunks(32) {
            let puts = batch.iter().map(|i| {
                let key = format!("key-{i}");
                let client = &client;
                async move { client.put(key.as_bytes(), &value_of(&key), None).await }
            });
            for result in futures::future::join_all(puts).await {
                result.unwrap();
            }
        }
    });
}

/// Reads every key through `member` with R = N (every owner answers).
fn check_all(member: &Member, keys: usize, stage: &str) {
    let addr = member.node().addr();
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        let all = CallOptions {
            quorum: Some(N as u8),
            ..CallOptions::default()
        };
        for i in 0..keys {
            let key = format!("key-{i}");
            let got = client.get_with(key.as_bytes(), &all).await.unwrap();
            assert_eq!(got.values, vec![value_of(&key)], "{key} {stage}");
        }
    });
}

#[test]
fn nodes_join_leave_and_are_removed_with_their_data_moved() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("dynkv.toml");
    std::fs::write(
        &config,
        "gossip_interval_ms = 300\nownership_drop_delay_ms = 1000\ntransfer_keys_per_second_max = 100000\n\
         anti_entropy_partition_pause_ms = 50\n",
    )
    .unwrap();
    // Three nodes form the cluster.
    let mut first: Vec<Member> = Vec::new();
    let block: Vec<Ports> = (0..3).map(|_| free_ports()).collect();
    for (i, ports) in block.iter().enumerate() {
        let peers: Vec<String> = block
            .iter()
            .filter(|p| p.internode != ports.internode)
            .map(Ports::internode_addr)
            .collect();
        first.push(spawn(i as u64 + 1, *ports, &config, &peers, false));
    }
    for m in &mut first {
        m.node.as_mut().unwrap().wait_listening().unwrap();
    }
    let [a, b, c]: [Member; 3] = first.try_into().ok().unwrap();
    wait_for(&[&a, &b, &c], "the cluster forms", Duration::from_secs(30), || {
        [&a, &b, &c].iter().all(|m| m.metric("dynkv_cluster_ready") == 2)
    });
    write(&a, 0..400);

    // A fourth node joins through node 1 while writes go on.
    let before = epoch(&a);
    let started = Instant::now();
    let d = start(4, &config, &[a.ports.internode_addr()], true);
    write(&b, 400..600);
    wait_for(&[&a, &b, &c, &d], "the join settles", Duration::from_secs(60), || {
        settled(&[&a, &b, &c, &d], before + 2, 600)
    });
    let joined_in = started.elapsed();
    assert!(d.metric("dynkv_partitions_owned") > 0, "node 4 owns partitions");
    assert!(d.metric("dynkv_transfer_keys_total") > 0, "node 4 received keys");
    assert!(
        [&a, &b, &c]
            .iter()
            .map(|m| m.metric("dynkv_dropped_partitions_total"))
            .sum::<u64>()
            > 0,
        "old owners dropped what moved"
    );
    check_all(&d, 600, "after the join");
    let (ok, status) = d.ctl(&["status"]);
    let node_4 = format!("node {}", dynkv_ring::NodeId(4));
    assert!(ok && status.contains("settled") && status.contains(&node_4), "{status}");

    // Node 1 leaves: it hands off, then stops by itself with status 0.
    let before = epoch(&b);
    let (ok, said) = b.ctl(&["leave", "1"]);
    assert!(ok, "{said}");
    let mut a = a;
    let exited = a.node.as_mut().unwrap().wait_exit_within(Duration::from_secs(60));
    assert!(
        exited.is_some_and(|s| s.success()),
        "node 1 stops after leaving: {exited:?}\n{}",
        a.node().log()
    );
    wait_for(&[&b, &c, &d], "the leave settles", Duration::from_secs(60), || {
        settled(&[&b, &c, &d], before + 2, 600)
    });
    check_all(&b, 600, "after node 1 left");
    // It refuses to come back with its old data directory.
    let mut again = Node::spawn(
        a.dir.path(),
        a.ports,
        &["--node-id".into(), "1".into(), "--cluster-secret".into(), SECRET.into()],
    );
    let refused = again
        .wait_listening()
        .expect_err("a node that left does not start again");
    assert!(refused.contains("left or was removed"), "{refused}");

    // Node 3 dies for good and is removed; the survivors re-replicate.
    let (ok, refused) = b.ctl(&["remove", "3"]);
    assert!(
        !ok && refused.contains("is up"),
        "a live node is not removed: {refused}"
    );
    let mut c = c;
    c.node.take().unwrap().kill();
    wait_for(&[&b, &d], "node 3 is seen down", Duration::from_secs(30), || {
        b.metric("dynkv_cluster_members_down") > 0
    });
    let before = epoch(&b);
    // By its id as status shows it (hex).
    let node_3 = dynkv_ring::NodeId(3).to_string();
    let (ok, said) = b.ctl(&["remove", &node_3]);
    assert!(ok, "{said}");
    wait_for(&[&b, &d], "the removal settles", Duration::from_secs(60), || {
        settled(&[&b, &d], before + 2, 600)
    });
    check_all(&d, 600, "after node 3 was removed");
    eprintln!("join of a fourth node with 600 keys settled in {joined_in:?}");
    for m in [b, d] {
        let id = m.id;
        assert!(m.node.unwrap().terminate().success(), "node {id} exits 0 on SIGTERM");
    }
}
