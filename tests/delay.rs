//! Replication through delay and reordering: three real nodes (N = 3,
//! R = W = 2) whose internode traffic all goes through fault-injecting
//! proxies (each node advertises its proxy's address), which hold every
//! chunk for 0 to 15 ms. Clients write concurrently (read-modify-write with
//! contexts on their own keys, blind writes on shared ones), a node is
//! SIGKILLed and later restarted. Afterwards every node's engines hold
//! every acknowledged write: read-modify-writes without siblings, shared
//! keys with only values that were written. Every process is stopped by
//! PID.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dynkv_net::Client;
use support::proxy::Proxy;
use support::{client_options, free_ports, run, stored_values, Node, Ports};

const SECRET: &str = "test-delay-secret-0123456789";
const NODES: usize = 3;
const DELAY_MAX_MS: u64 = 15;

struct Member {
    dir: tempfile::TempDir,
    ports: Ports,
    /// Shard 0's proxy port; shard 1's is the next.
    advertised: u16,
    node: Option<Node>,
}

fn spawn(members: &[Member], i: usize) -> Node {
    let peers: Vec<String> = (0..NODES)
        .filter(|&j| j != i)
        .map(|j| format!("127.0.0.1:{}", members[j].advertised))
        .collect();
    let args: Vec<String> = [
        "--n",
        "3",
        "--r",
        "2",
        "--w",
        "2",
        "--cluster-secret",
        SECRET,
        "--advertise",
        &format!("127.0.0.1:{}", members[i].advertised),
        "--peers",
        &peers.join(","),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut node = Node::spawn(members[i].dir.path(), members[i].ports, &args);
    node.wait_listening().unwrap_or_else(|log| panic!("node {i}: {log}"));
    node
}

fn metric(node: &Node, name: &str) -> u64 {
    support::node_metric(node.addr(), name)
}

fn wait_for(what: &str, members: &[Member], until: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !until() {
        if Instant::now() > deadline {
            let logs: Vec<String> = members.iter().filter_map(|m| m.node.as_ref().map(Node::log)).collect();
            panic!("{what} within 60 s\n{}", logs.join("\n---\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn replication_keeps_every_acknowledged_write_through_delayed_reordered_links() {
    let mut members: Vec<Member> = (0..NODES)
        .map(|_| Member {
            dir: tempfile::tempdir().unwrap(),
            ports: free_ports(),
            advertised: free_ports().native,
            node: None,
        })
        .collect();
    // One proxy per shard's internode port: advertised + s → internode + s.
    let proxies: Vec<Proxy> = members
        .iter()
        .enumerate()
        .flat_map(|(i, m)| {
            (0..support::SHARDS).map(move |s| {
                let listen = format!("127.0.0.1:{}", m.advertised + s).parse().unwrap();
                let upstream = format!("127.0.0.1:{}", m.ports.internode + s).parse().unwrap();
                Proxy::start(listen, upstream, DELAY_MAX_MS, 1 + i as u64 * 10 + u64::from(s)).unwrap()
            })
        })
        .collect();
    for i in 0..NODES {
        let node = spawn(&members, i);
        members[i].node = Some(node);
    }
    wait_for("the cluster forms", &members, || {
        members
            .iter()
            .all(|m| metric(m.node.as_ref().unwrap(), "dynkv_cluster_ready") == 2)
    });

    // Three clients at once: read-modify-write on their own keys, blind
    // writes on shared keys.
    let addrs: Vec<_> = members.iter().map(|m| m.node.as_ref().unwrap().addr()).collect();
    let own = |c: usize| -> Vec<String> { (0..30).map(|i| format!("own{c}-{i}")).collect() };
    let shared: Vec<String> = (0..10).map(|i| format!("shared-{i}")).collect();
    let acked_shared: Vec<BTreeSet<String>> = run({
        let (addrs, shared) = (addrs.clone(), shared.clone());
        async move {
            let clients = (0..NODES).map(|c| {
                let (addr, keys, shared) = (addrs[c], own(c), shared.clone());
                async move {
                    let client = Client::connect(addr, client_options()).await.unwrap();
                    for key in &keys {
                        client.put(key.as_bytes(), b"first", None).await.unwrap();
                        let context = client.get(key.as_bytes()).await.unwrap().context;
                        client
                            .put(key.as_bytes(), key.as_bytes(), Some(&context))
                            .await
                            .unwrap();
                    }
                    let mut acked = BTreeSet::new();
                    for key in &shared {
                        let value = format!("{key}@{c}");
                        if client.put(key.as_bytes(), value.as_bytes(), None).await.is_ok() {
                            acked.insert(value);
                        }
                    }
                    acked
                }
            });
            futures::future::join_all(clients).await
        }
    });

    // Node 2 is killed; writes go on; it comes back and catches up.
    members[2].node.take().unwrap().kill();
    let after: Vec<String> = (0..30).map(|i| format!("after-{i}")).collect();
    run({
        let (addr, after) = (addrs[0], after.clone());
        async move {
            let client = Client::connect(addr, client_options()).await.unwrap();
            for key in &after {
                client.put(key.as_bytes(), key.as_bytes(), None).await.unwrap();
            }
        }
    });
    let node = spawn(&members, 2);
    members[2].node = Some(node);
    wait_for("hints handed off", &members, || {
        members.iter().all(|m| {
            let node = m.node.as_ref().unwrap();
            metric(node, "dynkv_cluster_members_down") == 0 && metric(node, "dynkv_hints_pending") == 0
        })
    });
    let forwarded: u64 = proxies
        .iter()
        .map(|p| p.chunks.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(
        forwarded > 100,
        "internode traffic went through the proxies ({forwarded} chunks)"
    );
    for m in &mut members {
        assert!(m.node.take().unwrap().terminate().success());
    }
    for (i, m) in members.iter().enumerate() {
        for c in 0..NODES {
            for key in own(c) {
                let stored = stored_values(m.dir.path(), key.as_bytes());
                assert_eq!(stored, vec![key.clone().into_bytes()], "{key} on node {i}");
            }
        }
        for key in &after {
            assert_eq!(
                stored_values(m.dir.path(), key.as_bytes()),
                vec![key.clone().into_bytes()],
                "{key} on node {i}"
            );
        }
        for key in &shared {
            let stored: BTreeSet<String> = stored_values(m.dir.path(), key.as_bytes())
                .into_iter()
                .map(|v| String::from_utf8(v).unwrap())
                .collect();
            let acked: BTreeSet<String> = acked_shared
                .iter()
                .flatten()
                .filter(|v| v.starts_with(&format!("{key}@")))
                .cloned()
                .collect();
            assert!(
                stored.is_superset(&acked),
                "{key} on node {i}: {stored:?} lacks some of {acked:?}"
            );
            assert!(
                stored.iter().all(|v| v.starts_with(&format!("{key}@"))),
                "{key} on node {i}: {stored:?}"
            );
        }
    }
}
