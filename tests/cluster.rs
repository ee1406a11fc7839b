//! A 3-node cluster of real `dynkv serve` processes on 127.0.0.1 ports,
//! N = 3, R = 2, W = 2: replication to every node, writes and reads with a
//! node SIGKILLed, hinted handoff after its restart (checked by opening each
//! node's engines directly), siblings from concurrent writers resolved by a
//! context, RESP through the cluster, and a node without the cluster secret
//! kept out. Every process is stopped by PID.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use dynkv_net::{CallOptions, Client, ClientError, Status};
use support::{client_options, free_ports, run, stored_values, Node, Ports};

const SECRET: &str = "test-cluster-secret-0123456789";
const NODES: usize = 3;

struct Cluster {
    n: usize,
    /// Extra `dynkv serve` arguments for every node.
    extra: Vec<String>,
    dirs: Vec<tempfile::TempDir>,
    ports: Vec<Ports>,
    nodes: Vec<Option<Node>>,
}

impl Cluster {
    /// Three nodes with `n` replicas per key (R = W = 2, or 1 if n is).
    fn start(n: usize) -> Cluster {
        Cluster::start_with(n, Vec::new())
    }

    fn start_with(n: usize, extra: Vec<String>) -> Cluster {
        let ports: Vec<Ports> = (0..NODES).map(|_| free_ports()).collect();
        let dirs: Vec<tempfile::TempDir> = (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut cluster = Cluster {
            n,
            extra,
            dirs,
            ports,
            nodes: (0..NODES).map(|_| None).collect(),
        };
        for i in 0..NODES {
            cluster.spawn(i);
        }
        for i in 0..NODES {
            cluster.wait_ready(i);
        }
        cluster
    }

    fn args(&self, i: usize, secret: &str) -> Vec<String> {
        let peers: Vec<String> = (0..NODES)
            .filter(|&j| j != i)
            .map(|j| self.ports[j].internode_addr())
            .collect();
        let n = self.n.to_string();
        let quorum = self.n.min(2).to_string();
        let mut args: Vec<String> = ["--n", &n, "--r", &quorum, "--w", &quorum, "--cluster-secret", secret]
            .iter()
            .map(ToString::to_string)
            .collect();
        args.extend(["--peers".to_string(), peers.join(",")]);
        args.extend(self.extra.iter().cloned());
        args
    }

    fn spawn(&mut self, i: usize) {
        let mut node = Node::spawn(self.dirs[i].path(), self.ports[i], &self.args(i, SECRET));
        node.wait_listening().unwrap_or_else(|log| panic!("node {i}: {log}"));
        self.nodes[i] = Some(node);
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Waits until node `i` serves requests (the cluster has formed).
    fn wait_ready(&self, i: usize) {
        let addr = self.node(i).addr();
        let deadline = Instant::now() + Duration::from_secs(30);
        run(async move {
            let client = Client::connect(addr, client_options()).await.unwrap();
            loop {
                match client.get(b"probe").await {
                    Ok(_) => return,
                    Err(err) if Instant::now() < deadline => {
                        let _ = err;
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    }
                    Err(err) => panic!("node {i} never became ready: {err}"),
                }
            }
        });
    }

    /// Sums a metric over the shards of node `i`.
    fn metric(&self, i: usize, name: &str) -> u64 {
        support::node_metric(self.node(i).addr(), name)
    }

    /// Kills node `dead` and waits until node 0 holds it down. A write
    /// forwarded to a primary in the instant between its death and its
    /// detection has an unknown fate and is answered Timeout, by design;
    /// the tests that use this are about what happens once it is down.
    fn kill_and_wait_down(&mut self, dead: usize) {
        self.nodes[dead].take().unwrap().kill();
        self.wait_held_down();
    }

    /// Waits (at most 20 s) until node 0's failure detector holds a node
    /// down.
    fn wait_held_down(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric(0, "dynkv_cluster_members_down") == 0 {
            assert!(Instant::now() < deadline, "node 0 never held the killed node down");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until no node holds another down.
    fn wait_all_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while (0..NODES).any(|i| self.metric(i, "dynkv_cluster_members_down") > 0) {
            assert!(Instant::now() < deadline, "nodes still see each other down after 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_all(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(node) = node.take() {
                assert!(node.terminate().success(), "node {i} exits 0 on SIGTERM");
            }
        }
    }
}

fn value_of(key: &str) -> Vec<u8> {
    format!("value-of-{key}").into_bytes()
}

#[test]
fn writes_survive_a_killed_node_and_hinted_handoff_brings_it_up_to_date() {
    let mut cluster = Cluster::start(3);
    let addrs: Vec<_> = (0..NODES).map(|i| cluster.node(i).addr()).collect();
    // Concurrent writers, one per node.
    let before: Vec<String> = (0..NODES)
        .flat_map(|n| (0..60).map(move |i| format!("w{n}-{i}")))
        .collect();
    run({
        let (addrs, before) = (addrs.clone(), before.clone());
        async move {
            let writers = (0..NODES).map(|n| {
                let keys: Vec<String> = before
                    .iter()
                    .filter(|k| k.starts_with(&format!("w{n}-")))
                    .cloned()
                    .collect();
                let addr = addrs[n];
                async move {
                    let client = Client::connect(addr, client_options()).await.unwrap();
                    let values: Vec<Vec<u8>> = keys.iter().map(|k| value_of(k)).collect();
                    let puts = keys.iter().zip(&values).map(|(k, v)| client.put(k.as_bytes(), v, None));
                    for result in futures::future::join_all(puts).await {
                        result.unwrap();
                    }
                }
            });
            futures::future::join_all(writers).await;
            let reader = Client::connect(addrs[1], client_options()).await.unwrap();
            for key in &before {
                assert_eq!(
                    reader.get(key.as_bytes()).await.unwrap().values,
                    vec![value_of(key)],
                    "{key}"
                );
            }
        }
    });
    cluster.nodes[2].take().unwrap().kill();
    let after: Vec<String> = (0..60).map(|i| format!("after-{i}")).collect();
    run({
        let (addrs, after, before) = (addrs.clone(), after.clone(), before.clone());
        async move {
            let clients = [
                Client::connect(addrs[0], client_options()).await.unwrap(),
                Client::connect(addrs[1], client_options()).await.unwrap(),
            ];
            for (i, key) in after.iter().enumerate() {
                let client = &clients[i % 2];
                client
                    .put(key.as_bytes(), &value_of(key), None)
                    .await
                    .unwrap_or_else(|e| panic!("write {key} with a node down: {e}"));
            }
            for key in before.iter().chain(&after) {
                let got = clients[0].get(key.as_bytes()).await.unwrap();
                assert_eq!(got.values, vec![value_of(key)], "{key} with a node down");
            }
            // Per-request quorums: all three replicas cannot answer now.
            let all = CallOptions {
                quorum: Some(3),
                ..CallOptions::default()
            };
            let err = clients[1].get_with(b"after-0", &all).await.unwrap_err();
            assert!(
                matches!(
                    &err,
                    ClientError::Server {
                        status: Status::Unavailable,
                        ..
                    }
                ),
                "{err}"
            );
            let err = clients[1]
                .put_with(b"quorum-probe", b"x", None, &all)
                .await
                .unwrap_err();
            assert!(
                matches!(
                    &err,
                    ClientError::Server {
                        status: Status::Unavailable,
                        ..
                    }
                ),
                "{err}"
            );
        }
    });
    let pending: u64 = (0..2).map(|i| cluster.metric(i, "dynkv_hints_pending")).sum();
    assert!(pending > 0, "the coordinators keep hints for the dead node");
    // Gossip's failure detector notices the silence.
    cluster.wait_held_down();
    cluster.spawn(2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..2).map(|i| cluster.metric(i, "dynkv_hints_pending")).sum::<u64>() > 0 {
        assert!(Instant::now() < deadline, "hints were not handed off within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let delivered: u64 = (0..2).map(|i| cluster.metric(i, "dynkv_hints_delivered_total")).sum();
    assert!(delivered >= after.len() as u64, "{delivered} hints delivered");
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.metric(0, "dynkv_cluster_members_down") > 0 {
        assert!(
            Instant::now() < deadline,
            "node 0 still holds node 2 down after it returned"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.stop_all();
    for i in 0..NODES {
        for key in before.iter().chain(&after) {
            let values = stored_values(cluster.dirs[i].path(), key.as_bytes());
            assert_eq!(values, vec![value_of(key)], "{key} on node {i}");
        }
    }
}

/// Writes `value(key)` to every key through node `via`, blind; panics on a
/// failed write.
fn put_blind(cluster: &Cluster, via: usize, keys: &[String], value: fn(&str) -> Vec<u8>) {
    let (addr, keys) = (cluster.node(via).addr(), keys.to_vec());
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        for key in &keys {
            client
                .put(key.as_bytes(), &value(key), None)
                .await
                .unwrap_or_else(|e| panic!("write {key} through node {via}: {e}"));
        }
    });
}

/// Reads every key through node `via` and checks its values (in any order).
fn expect_values(cluster: &Cluster, via: usize, keys: &[String], want: fn(&str) -> Vec<Vec<u8>>, stage: &str) {
    let (addr, keys) = (cluster.node(via).addr(), keys.to_vec());
    run(async move {
        let client = Client::connect(addr, client_options()).await.unwrap();
        for key in &keys {
            let mut got = client.get(key.as_bytes()).await.unwrap().values;
            got.sort();
            assert_eq!(got, want(key), "{key} through node {via} {stage}");
        }
    });
}

impl Cluster {
    /// Kills node 2 and waits until nodes 0 and 1 both hold it down.
    fn kill_node_2_and_wait_down(&mut self) {
        self.nodes[2].take().unwrap().kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        while (0..2).any(|i| self.metric(i, "dynkv_cluster_members_down") == 0) {
            assert!(Instant::now() < deadline, "nodes 0 and 1 never held node 2 down");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Restarts node 2 and waits until nodes 0 and 1 hold no hint.
    fn restart_node_2_and_wait_handed_off(&mut self) {
        self.spawn(2);
        let deadline = Instant::now() + Duration::from_secs(60);
        while (0..2).map(|i| self.metric(i, "dynkv_hints_pending")).sum::<u64>() > 0 {
            assert!(Instant::now() < deadline, "hints were not handed off within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn keys_whose_primaries_are_all_down_stay_writable_through_a_fallback_and_no_rewrite_is_lost() {
    // N = 1: a key whose only primary (node 2) is down is coordinated by a
    // fallback. Ordinary hints would expire at once; a fallback's must not,
    // since they are the only copies.
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("dynkv.toml");
    std::fs::write(&config, "hint_age_max_ms = 1\nhandoff_interval_ms = 100\n").unwrap();
    let mut cluster = Cluster::start_with(1, vec!["--config".into(), config.to_str().unwrap().into()]);
    let keys: Vec<String> = (0..60).map(|i| format!("fallback-{i}")).collect();
    fn first(key: &str) -> Vec<u8> {
        format!("{key}-first").into_bytes()
    }
    fn second(key: &str) -> Vec<u8> {
        format!("{key}-second").into_bytes()
    }

    cluster.kill_node_2_and_wait_down();
    put_blind(&cluster, 0, &keys, first);
    let coordinated: u64 = (0..2)
        .map(|i| cluster.metric(i, "dynkv_fallback_coordinated_total"))
        .sum();
    assert!(
        (5..=40).contains(&coordinated),
        "node 2's share of the keys was written through a fallback: {coordinated} of 60"
    );
    // Both live nodes read them back while node 2 is still down.
    for via in 0..2 {
        expect_values(&cluster, via, &keys, |k| vec![first(k)], "with node 2 down");
    }
    cluster.restart_node_2_and_wait_handed_off();
    expect_values(&cluster, 2, &keys, |k| vec![first(k)], "after handoff");

    // Again, blind, through the other node. The fallback has deleted the
    // hints it delivered, so it must not continue the writer id it used:
    // its new write would claim to have seen the first one, and node 2
    // would drop that as superseded.
    cluster.kill_node_2_and_wait_down();
    put_blind(&cluster, 1, &keys, second);
    cluster.restart_node_2_and_wait_handed_off();
    for via in 0..3 {
        expect_values(
            &cluster,
            via,
            &keys,
            |k| vec![first(k), second(k)],
            "after the second handoff (blind writes are siblings)",
        );
    }
    cluster.stop_all();
}

fn redis(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs (.ci/run installs redis-tools)");
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// With N = 2 of 3 nodes, every key has a node that is not a primary: it
/// forwards, and fallbacks exist for sloppy quorum.
#[test]
fn concurrent_writes_make_siblings_that_a_context_resolves_and_strangers_are_kept_out() {
    let mut cluster = Cluster::start(2);
    let (a, b) = (cluster.node(0).addr(), cluster.node(1).addr());
    run(async move {
        let one = Client::connect(a, client_options()).await.unwrap();
        let two = Client::connect(b, client_options()).await.unwrap();
        // Two clients write without reading first: concurrent.
        let (first, second) = futures::future::join(
            one.put(b"shared", b"from-one", None),
            two.put(b"shared", b"from-two", None),
        )
        .await;
        first.unwrap();
        second.unwrap();
        let got = two.get(b"shared").await.unwrap();
        let mut values = got.values.clone();
        values.sort();
        assert_eq!(values, vec![b"from-one".to_vec(), b"from-two".to_vec()], "siblings");
        one.put(b"shared", b"merged", Some(&got.context)).await.unwrap();
        assert_eq!(two.get(b"shared").await.unwrap().values, vec![b"merged".to_vec()]);
        // Read-modify-write in a loop never makes siblings.
        for i in 0..20 {
            let got = one.get(b"counter").await.unwrap();
            assert!(got.values.len() <= 1, "siblings after {i} read-modify-writes");
            let context = (!got.context.is_empty()).then_some(&got.context[..]);
            let client = if i % 2 == 0 { &one } else { &two };
            client.put(b"counter", i.to_string().as_bytes(), context).await.unwrap();
        }
        // A delete with the context removes the key everywhere.
        let got = one.get(b"shared").await.unwrap();
        two.delete(b"shared", &got.context).await.unwrap();
        assert!(one.get(b"shared").await.unwrap().values.is_empty());
    });
    // RESP coordinates through the cluster: written on one node, read on
    // another.
    if Command::new("redis-cli").arg("--version").output().is_ok() {
        assert_eq!(redis(cluster.ports[0].resp, &["SET", "resp-key", "resp-value"]), "OK");
        assert_eq!(redis(cluster.ports[2].resp, &["GET", "resp-key"]), "resp-value");
        assert_eq!(redis(cluster.ports[1].resp, &["SET", "resp-key", "second"]), "OK");
        assert_eq!(redis(cluster.ports[0].resp, &["GET", "resp-key"]), "second");
        assert_eq!(redis(cluster.ports[2].resp, &["DEL", "resp-key"]), "1");
        assert_eq!(redis(cluster.ports[1].resp, &["GET", "resp-key"]), "");
    } else {
        eprintln!("redis-cli is not installed; skipping the RESP part");
    }
    // A node with the wrong secret is refused and never forms a cluster.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger_ports = free_ports();
    let args: Vec<String> = [
        "--cluster-secret",
        "a-wrong-secret-0123456789",
        "--peers",
        &cluster.ports[0].internode_addr(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut stranger = Node::spawn(stranger_dir.path(), stranger_ports, &args);
    stranger.wait_listening().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let addr = stranger.addr();
    let err = run(async move { Client::connect(addr, client_options()).await.unwrap().get(b"k").await }).unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { status: Status::Unavailable, message } if message.contains("forming")),
        "{err}"
    );
    assert!(
        cluster.node(0).log().contains("refused an internode connection"),
        "node 0 logs the refusal:\n{}",
        cluster.node(0).log()
    );
    assert!(stranger.terminate().success());
    // Sloppy quorum: with node 2 down, a key it owns is written to its other
    // primary and a fallback holding a hint, and handed off when it returns.
    cluster.kill_and_wait_down(2);
    let keys: Vec<String> = (0..40).map(|i| format!("sloppy-{i}")).collect();
    run({
        let keys = keys.clone();
        async move {
            let client = Client::connect(a, client_options()).await.unwrap();
            for key in &keys {
                client.put(key.as_bytes(), &value_of(key), None).await.unwrap();
            }
            for key in &keys {
                assert_eq!(client.get(key.as_bytes()).await.unwrap().values, vec![value_of(key)]);
            }
        }
    });
    let hinted: u64 = (0..2).map(|i| cluster.metric(i, "dynkv_hints_stored_total")).sum();
    assert!(hinted > 0, "writes for node 2 left hints");
    cluster.spawn(2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..3).map(|i| cluster.metric(i, "dynkv_hints_pending")).sum::<u64>() > 0 {
        assert!(Instant::now() < deadline, "hints were not handed off within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let c = cluster.node(2).addr();
    run(async move {
        let client = Client::connect(c, client_options()).await.unwrap();
        for key in &keys {
            assert_eq!(
                client.get(key.as_bytes()).await.unwrap().values,
                vec![value_of(key)],
                "{key}"
            );
        }
    });
    cluster.stop_all();
}

#[test]
fn anti_entropy_alone_repairs_a_node_that_missed_writes() {
    // No hint is ever kept (the hint store holds 0 bytes), and nothing
    // reads the keys: only anti-entropy can bring node 2 up to date.
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("dynkv.toml");
    std::fs::write(
        &config,
        "hints_max_mib = 0\nanti_entropy_partition_pause_ms = 2\nanti_entropy_keys_per_second_max = 100000\n",
    )
    .unwrap();
    let mut cluster = Cluster::start_with(3, vec!["--config".into(), config.to_str().unwrap().into()]);
    cluster.nodes[2].take().unwrap().kill();
    let keys: Vec<String> = (0..80).map(|i| format!("missed-{i}")).collect();
    let a = cluster.node(0).addr();
    run({
        let keys = keys.clone();
        async move {
            let client = Client::connect(a, client_options()).await.unwrap();
            for key in &keys {
                client.put(key.as_bytes(), &value_of(key), None).await.unwrap();
            }
        }
    });
    let refused: u64 = (0..2)
        .map(|i| cluster.metric(i, "dynkv_hints_dropped_full_total"))
        .sum();
    assert!(refused > 0, "the hints for node 2 were refused");
    cluster.spawn(2);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let repaired: u64 = (0..3)
            .map(|i| cluster.metric(i, "dynkv_anti_entropy_repaired_total"))
            .sum();
        let passes = cluster.metric(2, "dynkv_anti_entropy_passes_total");
        if repaired >= keys.len() as u64 && passes >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "anti-entropy repaired {repaired} keys in 90 s ({passes} passes on node 2)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.stop_all();
    for key in &keys {
        let values = stored_values(cluster.dirs[2].path(), key.as_bytes());
        assert_eq!(values, vec![value_of(key)], "{key} on node 2");
    }
}

#[test]
fn deletes_are_reaped_once_every_replica_holds_them_and_never_come_back() {
    // Hints expire at once, so the node that missed the deletes learns of
    // them from anti-entropy; tombstones may be reaped 1.5 s after the
    // delete, once every replica holds them.
    reap_scenario(
        "hint_age_max_ms = 300\ntombstone_reap_after_ms = 1500\nclock_skew_max_ms = 500\n",
        2500,
        false,
    );
}

#[test]
fn deletes_handed_off_to_a_returning_replica_are_reaped_and_never_come_back() {
    // The node is back within the hint window: hinted handoff brings it the
    // deletes; tombstones may be reaped 5 s after the delete.
    reap_scenario(
        "hint_age_max_ms = 4000\ntombstone_reap_after_ms = 5000\nclock_skew_max_ms = 500\nhandoff_interval_ms = 100\n",
        800,
        true,
    );
}

/// Reads every key through every node at R = 3 and checks its values
/// against `want`, retrying while R = 3 is briefly unavailable (a restarted
/// node's links back off for up to 5 s after its absence).
fn read_through_every_node(cluster: &Cluster, keys: &[String], stage: &str, want: fn(&str) -> Vec<Vec<u8>>) {
    for i in 0..NODES {
        let addr = cluster.node(i).addr();
        let (keys, stage) = (keys.to_vec(), stage.to_string());
        run(async move {
            let client = Client::connect(addr, client_options()).await.unwrap();
            let all = CallOptions {
                quorum: Some(3),
                ..CallOptions::default()
            };
            for key in &keys {
                let deadline = Instant::now() + Duration::from_secs(15);
                let got = loop {
                    match client.get_with(key.as_bytes(), &all).await {
                        Ok(got) => break got,
                        Err(_) if Instant::now() < deadline => {
                            glommio::timer::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("{key} through node {i} {stage}: {e}"),
                    }
                };
                assert_eq!(got.values, want(key), "{key} through node {i} {stage}");
            }
        });
    }
}

/// Deletes made while node 2 is down (for `down_ms`) and holds the old
/// values; `handoff`: it must get them from hints, else from anti-entropy.
fn reap_scenario(settings: &str, down_ms: u64, handoff: bool) {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("dynkv.toml");
    std::fs::write(
        &config,
        format!("{settings}anti_entropy_partition_pause_ms = 2\nanti_entropy_keys_per_second_max = 100000\n"),
    )
    .unwrap();
    let mut cluster = Cluster::start_with(3, vec!["--config".into(), config.to_str().unwrap().into()]);
    let keys: Vec<String> = (0..20).map(|i| format!("gone-{i}")).collect();
    let a = cluster.node(0).addr();
    let put_all = |addr, keys: Vec<String>| {
        run(async move {
            let client = Client::connect(addr, client_options()).await.unwrap();
            for key in &keys {
                client.put(key.as_bytes(), &value_of(key), None).await.unwrap();
            }
        })
    };
    put_all(a, keys.clone());
    // Node 2 misses the deletes, and keeps the values.
    cluster.kill_and_wait_down(2);
    run({
        let keys = keys.clone();
        async move {
            let client = Client::connect(a, client_options()).await.unwrap();
            for key in &keys {
                let context = client.get(key.as_bytes()).await.unwrap().context;
                client.delete(key.as_bytes(), &context).await.unwrap();
            }
        }
    });
    std::thread::sleep(Duration::from_millis(down_ms));
    let reaped = |cluster: &Cluster, nodes: &[usize]| -> u64 {
        nodes
            .iter()
            .map(|&i| cluster.metric(i, "dynkv_tombstones_reaped_total"))
            .sum()
    };
    assert_eq!(
        reaped(&cluster, &[0, 1]),
        0,
        "nothing is reaped while a replica is away"
    );
    cluster.spawn(2);
    cluster.wait_ready(2);
    cluster.wait_all_up();
    if handoff {
        let deadline = Instant::now() + Duration::from_secs(30);
        while (0..2)
            .map(|i| cluster.metric(i, "dynkv_hints_delivered_total"))
            .sum::<u64>()
            < keys.len() as u64
        {
            assert!(Instant::now() < deadline, "the deletes were not handed off to node 2");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Every replica: the delete arrives at node 2 through anti-entropy,
    // then all three reap, and no read at any point sees a value again.
    let read_all = |cluster: &Cluster, stage: &str| read_through_every_node(cluster, &keys, stage, |_| Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        read_all(&cluster, "while reaping");
        let stored: u64 = (0..NODES).map(|i| cluster.metric(i, "dynkv_engine_keys")).sum();
        if stored == 0 && reaped(&cluster, &[0, 1, 2]) >= 3 * keys.len() as u64 {
            break;
        }
        if Instant::now() > deadline {
            let per_node: Vec<(u64, u64)> = (0..NODES)
                .map(|i| {
                    (
                        cluster.metric(i, "dynkv_engine_keys"),
                        cluster.metric(i, "dynkv_tombstones_reaped_total"),
                    )
                })
                .collect();
            panic!("tombstones not reaped in 60 s: (keys, reaped) per node {per_node:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Reaped for good: after a restart too.
    let node = cluster.nodes[1].take().unwrap();
    assert!(node.terminate().success());
    cluster.spawn(1);
    cluster.wait_ready(1);
    cluster.wait_all_up();
    read_all(&cluster, "after a restart");
    // A key written again after its history was reaped is not taken for
    // an old write (no dot is reused).
    put_all(cluster.node(1).addr(), keys.clone());
    read_through_every_node(&cluster, &keys, "rewritten", |key| vec![value_of(key)]);
    cluster.stop_all();
}
