//! A seeded simulation of membership changes: joins, leaves, crashes with
//! removal, and network partitions, driving the real gossiped state
//! (`Membership`, `Ownership`) and the claimant rule, with a model of which
//! node holds each partition's data.
//!
//! Each step, one of:
//! - gossip between two nodes that can reach each other (push-pull merge of
//!   membership and ownership);
//! - a node acting as claimant (if it is one in its own view);
//! - a node copying a partition it is receiving from a reachable current
//!   owner, then confirming it;
//! - anti-entropy between two current owners of a partition;
//! - a node dropping partitions it no longer owns, once its view is settled
//!   (at once: no grace period, to stress the ordering), each after handing
//!   it to every owner, as the server does;
//! - a leaving node finishing its leave (and stopping);
//! - rarely: a join, a leave, a crash followed by an operator's removal, a
//!   network partition, or its healing.
//!
//! Invariants, after every step: no partition loses its last copy (crashed
//! nodes keep theirs on disk until removed); every node that owns a
//! partition in a committed table it adopted holds it or is receiving it.
//! At the end, after healing (and an operator's removal of stopped nodes
//! some members never heard leave), the cluster must converge: one settled
//! ownership on every member, placed on exactly the live members, with
//! every owner holding its partitions and no one holding others.
//!
//! A failure prints its seed; `DYNKV_SIM_SEED=<seed> cargo test --test
//! membership_sim` replays it. `DYNKV_SIM_SEEDS=<n>` runs more.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use dynkv_ring::{
    claim, claimant, Lifecycle, Liveness, Membership, NodeId, NodeRecord, Ownership, PartitionCount, ZoneId,
};
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;

const N: usize = 3;
const Q: u64 = 64;
const FIRST: u64 = 4;
const NODES_MAX: u64 = 9;
const STEPS: usize = 3_000;
const SETTLE_STEPS: usize = 40_000;

struct Node {
    membership: Membership,
    ownership: Option<Ownership>,
    holds: BTreeSet<u32>,
    /// Stopped: crashed (data kept on disk) or left (data gone).
    running: bool,
    /// Left the cluster, or removed by an operator.
    gone: bool,
}

struct Sim {
    rng: XorShiftRng,
    nodes: BTreeMap<u64, Node>,
    /// Side of a network partition per node (all 0 when healed).
    side: BTreeMap<u64, u8>,
    next_id: u64,
    trace: Vec<String>,
}

fn record(id: u64) -> NodeRecord {
    NodeRecord {
        id: NodeId(id),
        incarnation: 1,
        lifecycle: Lifecycle::Up,
        liveness: Liveness::Alive,
        address: format!("10.0.0.{id}:7700"),
        shard_ports: vec![7600, 7601],
        weight: 2,
        zone: ZoneId(0),
    }
}

fn set_lifecycle(membership: &mut Membership, id: u64, lifecycle: Lifecycle) {
    let mut r = membership.get(NodeId(id)).expect("member").clone();
    r.lifecycle = lifecycle;
    r.incarnation += 1;
    membership.merge_record(r);
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut membership = Membership::default();
        for id in 1..=FIRST {
            membership.insert(record(id)).unwrap();
        }
        let q = PartitionCount::new(Q).unwrap();
        let table = claim(None, &membership.placement_nodes(), q, N).unwrap();
        let genesis = Ownership::genesis(table);
        let nodes = (1..=FIRST)
            .map(|id| {
                let holds = (0..Q as u32)
                    .filter(|&p| genesis.current().owners(p).iter().any(|o| o.node == NodeId(id)))
                    .collect();
                let node = Node {
                    membership: membership.clone(),
                    ownership: Some(genesis.clone()),
                    holds,
                    running: true,
                    gone: false,
                };
                (id, node)
            })
            .collect();
        Sim {
            rng: XorShiftRng::seed_from_u64(seed),
            nodes,
            side: (1..=FIRST).map(|id| (id, 0)).collect(),
            next_id: FIRST + 1,
            trace: Vec::new(),
        }
    }

    fn reachable(&self, a: u64, b: u64) -> bool {
        self.nodes[&a].running && self.nodes[&b].running && self.side[&a] == self.side[&b]
    }

    /// Nodes `me` holds down: those it cannot reach.
    fn down_for(&self, me: u64) -> Vec<NodeId> {
        self.nodes
            .keys()
            .filter(|&&id| id != me && !self.reachable(me, id))
            .map(|&id| NodeId(id))
            .collect()
    }

    fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.running)
            .map(|(&id, _)| id)
            .collect()
    }

    fn pick(&mut self, ids: &[u64]) -> Option<u64> {
        (!ids.is_empty()).then(|| ids[self.rng.random_range(0..ids.len())])
    }

    fn gossip(&mut self, a: u64, b: u64) {
        let (ma, oa) = (self.nodes[&a].membership.clone(), self.nodes[&a].ownership.clone());
        let (mb, ob) = (self.nodes[&b].membership.clone(), self.nodes[&b].ownership.clone());
        for (id, m, o) in [(a, mb, ob), (b, ma, oa)] {
            let node = self.nodes.get_mut(&id).unwrap();
            node.membership.merge(&m);
            match (&mut node.ownership, o) {
                (Some(ours), Some(theirs)) => {
                    ours.merge(&theirs);
                }
                (ours @ None, theirs) => *ours = theirs,
                (_, None) => {}
            }
        }
    }

    fn claim_step(&mut self, id: u64) {
        let down = self.down_for(id);
        let node = &self.nodes[&id];
        if claimant(&node.membership, &down) != Some(NodeId(id)) {
            return;
        }
        let Some(ownership) = &node.ownership else { return };
        let nodes = node.membership.placement_nodes();
        if let Some(next) = ownership.next(&nodes, N, NodeId(id)).unwrap() {
            self.trace.push(format!(
                "node {id} claims epoch {} pending={}",
                next.epoch(),
                next.pending().is_some()
            ));
            self.nodes.get_mut(&id).unwrap().ownership = Some(next);
        }
    }

    /// Copies one partition `id` is receiving from a reachable current
    /// owner that holds it, and confirms.
    fn transfer_step(&mut self, id: u64) {
        let Some(ownership) = &self.nodes[&id].ownership else {
            return;
        };
        let wanted: Vec<u32> = (0..Q as u32)
            .filter(|&p| ownership.incoming(p).any(|o| o.node == NodeId(id)) && !ownership.is_confirmed(p, NodeId(id)))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let p = wanted[self.rng.random_range(0..wanted.len())];
        let sources: Vec<u64> = ownership
            .sources(p)
            .iter()
            .map(|o| o.node.0)
            .filter(|&s| s != id && !self.nodes[&s].gone)
            .collect();
        let live: Vec<u64> = sources.iter().copied().filter(|&s| self.reachable(id, s)).collect();
        // As the server: no source left at all confirms an empty copy; no
        // reachable source waits; else every reachable source is synced,
        // and the copy has the data if any of them held it (a source with
        // a newer view may already have dropped it).
        if live.is_empty() && !sources.is_empty() {
            return;
        }
        let got = live.iter().any(|s| self.nodes[s].holds.contains(&p));
        let node = self.nodes.get_mut(&id).unwrap();
        if got {
            node.holds.insert(p);
        }
        node.ownership.as_mut().unwrap().confirm(p, NodeId(id));
    }

    /// Anti-entropy: a current owner and a reachable co-owner (in its
    /// view) of a partition end up holding it if either did.
    fn anti_entropy_step(&mut self, id: u64) {
        let Some(ownership) = self.nodes[&id].ownership.clone() else {
            return;
        };
        let p = self.rng.random_range(0..Q as u32);
        let owners: Vec<u64> = ownership.current().owners(p).iter().map(|o| o.node.0).collect();
        if !owners.contains(&id) {
            return;
        }
        let peers: Vec<u64> = owners
            .into_iter()
            .filter(|&o| o != id && self.reachable(id, o))
            .collect();
        for peer in peers {
            if self.nodes[&id].holds.contains(&p) || self.nodes[&peer].holds.contains(&p) {
                self.nodes.get_mut(&id).unwrap().holds.insert(p);
                self.nodes.get_mut(&peer).unwrap().holds.insert(p);
            }
        }
    }

    /// Drops partitions `id` no longer owns in its settled view, each
    /// after handing it to every owner (all reachable, as the server's
    /// final comparison needs).
    fn drop_step(&mut self, id: u64) {
        let Some(ownership) = &self.nodes[&id].ownership else {
            return;
        };
        if ownership.pending().is_some() {
            return;
        }
        let table = ownership.current().clone();
        let held: Vec<u32> = self.nodes[&id].holds.iter().copied().collect();
        for p in held {
            let owners: Vec<u64> = table.owners(p).iter().map(|o| o.node.0).collect();
            if owners.contains(&id) {
                continue;
            }
            let owners: Vec<u64> = owners.into_iter().filter(|&o| !self.nodes[&o].gone).collect();
            if owners.is_empty() || owners.iter().any(|&o| !self.reachable(id, o)) {
                continue;
            }
            for o in owners {
                self.nodes.get_mut(&o).unwrap().holds.insert(p);
            }
            self.nodes.get_mut(&id).unwrap().holds.remove(&p);
        }
    }

    fn finish_leave(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        let leaving = node
            .membership
            .get(NodeId(id))
            .is_some_and(|r| r.lifecycle == Lifecycle::Leaving);
        let done = node
            .ownership
            .as_ref()
            .is_some_and(|o| o.pending().is_none() && o.current().load(NodeId(id)) == 0);
        if leaving && done {
            set_lifecycle(&mut node.membership, id, Lifecycle::Left);
            // It tells a few peers before it stops.
            let peers: Vec<u64> = self
                .running()
                .into_iter()
                .filter(|&p| p != id && self.reachable(id, p))
                .collect();
            for p in peers.into_iter().take(2) {
                self.gossip(id, p);
            }
            let node = self.nodes.get_mut(&id).unwrap();
            node.running = false;
            node.gone = true;
            node.holds.clear();
            self.trace.push(format!("node {id} left"));
        }
    }

    fn members_up(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.running && !n.gone)
            .map(|(&id, _)| id)
            .collect()
    }

    fn event(&mut self) {
        let live = self.members_up();
        let crashed = self.nodes.values().any(|n| !n.running && !n.gone);
        match self.rng.random_range(0..6) {
            0 if self.next_id <= NODES_MAX => {
                let id = self.next_id;
                self.next_id += 1;
                let Some(seed) = self.pick(&live) else { return };
                let mut membership = Membership::default();
                membership.insert(record(id)).unwrap();
                self.nodes.insert(
                    id,
                    Node {
                        membership,
                        ownership: None,
                        holds: BTreeSet::new(),
                        running: true,
                        gone: false,
                    },
                );
                self.side.insert(id, self.side[&seed]);
                self.gossip(id, seed);
                self.trace.push(format!("node {id} joins through {seed}"));
            }
            1 if live.len() > N => {
                let Some(id) = self.pick(&live) else { return };
                let node = self.nodes.get_mut(&id).unwrap();
                if node
                    .membership
                    .get(NodeId(id))
                    .is_some_and(|r| r.lifecycle == Lifecycle::Up)
                {
                    set_lifecycle(&mut node.membership, id, Lifecycle::Leaving);
                    self.trace.push(format!("node {id} leaves"));
                }
            }
            2 if live.len() > N && !crashed && self.converged() => {
                // A node dies for good; an operator on a node that sees it
                // down removes it. Operators remove one node at a time,
                // after the last change settled (`ctl status`): removing N
                // nodes at once loses data by definition.
                let Some(id) = self.pick(&live) else { return };
                self.nodes.get_mut(&id).unwrap().running = false;
                let others: Vec<u64> = live.iter().copied().filter(|&o| o != id).collect();
                let Some(operator) = self.pick(&others) else { return };
                set_lifecycle(
                    &mut self.nodes.get_mut(&operator).unwrap().membership,
                    id,
                    Lifecycle::Left,
                );
                let node = self.nodes.get_mut(&id).unwrap();
                node.gone = true;
                node.holds.clear();
                self.trace
                    .push(format!("node {id} crashes and is removed by {operator}"));
            }
            3 => {
                let ids: Vec<u64> = self.side.keys().copied().collect();
                for id in ids {
                    let side = self.rng.random_range(0..2u8);
                    self.side.insert(id, side);
                }
                self.trace.push(format!("network partition {:?}", self.side));
            }
            4 => {
                self.heal();
            }
            _ => {}
        }
    }

    /// What an operator does when `ctl status` shows a member down for
    /// long: `ctl remove` it. A node that left while cut off from some
    /// members (so they never heard it was gone) looks exactly like that,
    /// and ownership changes wait while a member is down.
    fn operator_removes_stopped(&mut self) {
        let stopped: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.running)
            .map(|(&id, _)| id)
            .collect();
        let Some(&operator) = self.members_up().first() else {
            return;
        };
        let membership = &mut self.nodes.get_mut(&operator).unwrap().membership;
        for id in stopped {
            if membership
                .get(NodeId(id))
                .is_some_and(|r| r.lifecycle != Lifecycle::Left)
            {
                set_lifecycle(membership, id, Lifecycle::Left);
                self.trace
                    .push(format!("operator on node {operator} removes stopped node {id}"));
            }
        }
    }

    fn heal(&mut self) {
        for side in self.side.values_mut() {
            *side = 0;
        }
        self.trace.push("network healed".into());
    }

    fn step(&mut self) {
        let running = self.running();
        let Some(a) = self.pick(&running) else { return };
        match self.rng.random_range(0..100) {
            0..=39 => {
                if let Some(b) = self.pick(&running) {
                    if a != b && self.reachable(a, b) {
                        self.gossip(a, b);
                    }
                }
            }
            40..=54 => self.claim_step(a),
            55..=79 => self.transfer_step(a),
            80..=89 => self.drop_step(a),
            90..=94 => self.finish_leave(a),
            95..=98 => self.anti_entropy_step(a),
            _ => {}
        }
    }

    /// No partition has lost every copy.
    fn check_no_loss(&self) {
        for p in 0..Q as u32 {
            assert!(
                self.nodes.values().any(|n| !n.gone && n.holds.contains(&p)),
                "partition {p} lost every copy"
            );
        }
    }

    /// Converged: every member has one settled ownership placed on the
    /// members, owners hold their partitions and nobody else does.
    fn converged(&self) -> bool {
        let members = self.members_up();
        let first = &self.nodes[&members[0]];
        let Some(ownership) = &first.ownership else {
            return false;
        };
        if ownership.pending().is_some() {
            return false;
        }
        let placed: BTreeSet<u64> = ownership.current().members().iter().map(|m| m.id.0).collect();
        if placed != members.iter().copied().collect() {
            return false;
        }
        members.iter().all(|id| {
            let node = &self.nodes[id];
            let owned: BTreeSet<u32> = (0..Q as u32)
                .filter(|&p| ownership.current().owners(p).iter().any(|o| o.node == NodeId(*id)))
                .collect();
            node.ownership.as_ref() == Some(ownership) && node.holds == owned
        })
    }

    fn run(&mut self) {
        for _ in 0..STEPS {
            if self.rng.random_range(0..100) == 0 {
                self.event();
            }
            self.step();
            self.check_no_loss();
        }
        self.heal();
        for i in 0..SETTLE_STEPS {
            if i % 1000 == 999 {
                self.operator_removes_stopped();
            }
            self.step();
            self.check_no_loss();
            if i % 64 == 0 && self.converged() {
                return;
            }
        }
        let mut state = String::new();
        for (id, n) in &self.nodes {
            let o = n.ownership.as_ref();
            state +=
                &format!(
                "\n node {id} running={} gone={} lifecycle={:?} epoch={:?} claimant={:?} pending={:?} progress={:?} \
                 claimant_here={:?} holds={} placement={:?}",
                n.running,
                n.gone,
                n.membership.get(NodeId(*id)).map(|r| r.lifecycle),
                o.map(|o| o.epoch()),
                o.map(|o| o.claimant()),
                o.map(|o| o.pending().is_some()),
                o.map(|o| o.progress()),
                claimant(&n.membership, &self.down_for(*id)),
                n.holds.len(),
                n.membership.placement_nodes().iter().map(|m| m.id.0).collect::<Vec<_>>(),
            );
        }
        panic!("no convergence after healing:{state}");
    }
}

#[test]
fn membership_changes_never_lose_a_partition_and_converge() {
    let mut changes = 0;
    for seed in support::seeds(40) {
        let mut sim = Sim::new(seed);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
        if let Err(panic) = result {
            eprintln!("membership simulation failed; replay with DYNKV_SIM_SEED={seed}");
            for line in sim.trace.iter().rev().take(40).rev() {
                eprintln!("  {line}");
            }
            std::panic::resume_unwind(panic);
        }
        changes += sim.trace.len();
    }
    eprintln!("membership simulation: {changes} ownership changes and events");
}
