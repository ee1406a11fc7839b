//! A seeded simulation of a 5-node cluster (N = 3, R = 2, W = 2) in one
//! thread, driving the same coordinator and replica state machines as the
//! server (`dynkv::cluster`).
//!
//! The simulator owns the clock, the network and the disks. During the
//! fault phase the network drops, delays, duplicates and reorders messages,
//! cuts links between groups of nodes, and nodes crash (losing every
//! in-flight round but nothing durable) and restart. Clients meanwhile read,
//! read-modify-write, write blind and delete a small set of keys. Then the
//! network heals, every node restarts, hints are handed off, and the checks
//! run:
//!
//! - every acknowledged write is visible to a later quorum read (present,
//!   or superseded by a value that is);
//! - after read repair, the three primaries of every key hold equal objects
//!   and no hint is left;
//! - nothing an acknowledged write superseded (a deleted value among them)
//!   comes back;
//! - every read's siblings are pairwise concurrent.
//!
//! A failure prints its seed; `DYNKV_SIM_SEED=<seed> cargo test --test
//! simulation` replays just that one. `DYNKV_SIM_SEEDS=<n>` runs more.

mod support;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use dynkv::cluster::replica::{absorb, coordinate, WriteContext};
use dynkv::cluster::{GetPlan, GetRound, PutPlan, PutRound, Quorum, QuorumError, Send};
use dynkv::version::{Clock, Sibling, VersionLimits, VersionVector};
use dynkv_ring::{claim, ClaimNode, NodeId, PartitionCount, PartitionTable, PreferenceList};
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;

const NODES: u64 = 5;
const N: usize = 3;
const R: usize = 2;
const W: usize = 2;
const KEYS: u64 = 6;
const CLIENTS: usize = 4;
const FAULT_PHASE_MS: u64 = 3_000;
const HEAL_PHASE_MS_MAX: u64 = 20_000;
const REPLICA_TIMEOUT_MS: u64 = 60;
const REQUEST_TIMEOUT_MS: u64 = 400;
const HANDOFF_INTERVAL_MS: u64 = 50;
/// How far back a lossy crash loses store writes.
const UNSYNCED_WINDOW_MS: u64 = 30;

#[derive(Clone, Debug)]
enum Body {
    Write {
        round: u64,
        key: u64,
        object: Clock,
        hint_for: Option<NodeId>,
    },
    WriteAck {
        round: u64,
        ok: bool,
    },
    Read {
        round: u64,
        key: u64,
        hint_for: Option<NodeId>,
    },
    /// `None`: the read failed (the replica was down: a refused connection).
    ReadReply {
        round: u64,
        clock: Option<Clock>,
    },
}

#[derive(Clone, Debug)]
struct Envelope {
    from: NodeId,
    to: NodeId,
    body: Body,
}

/// Why a round exists at a node.
enum Round {
    Put {
        round: PutRound,
        client: Option<usize>,
        write: usize,
        key: u64,
        object: Clock,
    },
    Get {
        round: GetRound,
        key: u64,
        client: Option<usize>,
    },
    Handoff {
        target: NodeId,
        key: u64,
        object: Clock,
    },
}

struct SimNode {
    up: bool,
    /// The writer id this node stamps on versions; renewed after a crash
    /// that lost writes (as `src/server/actor.rs` does).
    actor: NodeId,
    /// Durable (except for `unsynced` writes in lossy runs): the store and
    /// the hints survive crashes.
    store: BTreeMap<u64, Clock>,
    /// Lossy runs (sync=interval): store writes of the last
    /// `UNSYNCED_WINDOW_MS`, with what they replaced, undone by a crash.
    unsynced: Vec<(u64, u64, Option<Clock>)>,
    hints: BTreeMap<(NodeId, u64), Clock>,
    /// Volatile: lost in a crash.
    rounds: HashMap<u64, (Round, Option<u64>)>,
    /// Writer ids for the versions this node coordinates as a fallback, per
    /// partition, with the primary whose hint holds them: renewed whenever
    /// a hint of the partition holding that writer's versions is deleted
    /// (as the server's hint store does), and volatile.
    fallback_actors: HashMap<u32, (NodeId, NodeId)>,
    next_handoff_ms: u64,
}

/// One write as the checker sees it. Its id travels as the sibling's
/// timestamp, so every sibling a read returns names its write.
struct WriteRecord {
    key: u64,
    dot: (NodeId, u64),
    context: Option<VersionVector>,
    acked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Idle,
    Waiting { node: NodeId, round: u64, give_up_ms: u64 },
}

struct Client {
    state: ClientState,
    contexts: HashMap<u64, VersionVector>,
}

struct Faults {
    drop_p: f64,
    dup_p: f64,
    delay_ms_max: u64,
    crash_p: f64,
    /// Nodes on each side of a cut; empty when the network is whole.
    cut: Vec<bool>,
}

struct Sim {
    seed: u64,
    rng: XorShiftRng,
    now_ms: u64,
    nodes: Vec<SimNode>,
    net: BinaryHeap<Reverse<(u64, u64, usize)>>,
    in_flight: HashMap<usize, Envelope>,
    next_message: usize,
    faults: Faults,
    table: PartitionTable,
    writes: Vec<WriteRecord>,
    clients: Vec<Client>,
    next_round: u64,
    limits: VersionLimits,
    /// Outcomes of reads the simulator itself made.
    answers: HashMap<u64, Result<Clock, QuorumError>>,
    /// Every dot ever issued per key, with its write: a dot must never be
    /// reused for a key.
    dots: HashMap<(u64, (NodeId, u64)), u64>,
    /// Crashes lose recent store writes (sync=interval). Acknowledged
    /// writes may then be lost, so only the checks that must still hold
    /// run: dots are unique, siblings are concurrent, replicas converge.
    lossy: bool,
    next_actor: u64,
}

fn node_index(node: NodeId) -> usize {
    (node.0 - 1) as usize
}

fn key_bytes(key: u64) -> [u8; 8] {
    key.to_le_bytes()
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let nodes: Vec<ClaimNode> = (1..=NODES).map(|id| ClaimNode::new(id, 1)).collect();
        let table = claim(None, &nodes, PartitionCount::new(64).unwrap(), N).unwrap();
        let mut rng = XorShiftRng::seed_from_u64(seed);
        let lossy = seed % 3 == 2;
        let faults = Faults {
            drop_p: rng.random_range(0.0..0.2),
            dup_p: rng.random_range(0.0..0.1),
            delay_ms_max: rng.random_range(1..40),
            crash_p: rng.random_range(0.0..0.002),
            cut: Vec::new(),
        };
        Sim {
            seed,
            rng,
            now_ms: 0,
            nodes: (1..=NODES)
                .map(|id| SimNode {
                    up: true,
                    actor: NodeId(id),
                    store: BTreeMap::new(),
                    unsynced: Vec::new(),
                    hints: BTreeMap::new(),
                    rounds: HashMap::new(),
                    fallback_actors: HashMap::new(),
                    next_handoff_ms: 0,
                })
                .collect(),
            net: BinaryHeap::new(),
            in_flight: HashMap::new(),
            next_message: 0,
            faults,
            table,
            writes: Vec::new(),
            clients: (0..CLIENTS)
                .map(|_| Client {
                    state: ClientState::Idle,
                    contexts: HashMap::new(),
                })
                .collect(),
            next_round: 1,
            limits: VersionLimits {
                siblings_max: 64,
                context_nodes_max: 16,
            },
            answers: HashMap::new(),
            dots: HashMap::new(),
            lossy,
            next_actor: 1000,
        }
    }

    fn partition(&self, key: u64) -> u32 {
        self.table.partition_count().partition_of(&key_bytes(key))
    }

    fn preference(&self, key: u64) -> PreferenceList {
        PreferenceList::new(&self.table, self.partition(key), |_| false, 2)
    }

    /// The nodes that are up among `key`'s non-owners, in preference order.
    fn up_fallbacks(&self, key: u64) -> Vec<NodeId> {
        let pref = PreferenceList::new(&self.table, self.partition(key), |n| !self.nodes[node_index(n)].up, 2);
        pref.fallbacks.iter().map(|o| o.node).collect()
    }

    /// What node `at` holds as hints for `key`, whichever primary each is
    /// for (a fallback's answer to a read).
    fn hinted(&self, at: usize, key: u64) -> Clock {
        self.primaries(key)
            .iter()
            .filter_map(|p| self.nodes[at].hints.get(&(*p, key)))
            .fold(Clock::new(), |merged, hint| merged.sync(hint))
    }

    fn primaries(&self, key: u64) -> Vec<NodeId> {
        self.preference(key).primaries.iter().map(|o| o.node).collect()
    }

    fn linked(&self, a: NodeId, b: NodeId) -> bool {
        self.faults.cut.is_empty() || a == b || self.faults.cut[node_index(a)] == self.faults.cut[node_index(b)]
    }

    fn send(&mut self, from: NodeId, to: NodeId, body: Body) {
        let local = from == to;
        if !local && (!self.linked(from, to) || self.rng.random_bool(self.faults.drop_p)) {
            return;
        }
        let copies = if !local && self.rng.random_bool(self.faults.dup_p) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if local {
                0
            } else {
                self.rng.random_range(1..=self.faults.delay_ms_max)
            };
            let id = self.next_message;
            self.next_message += 1;
            // The random tiebreak reorders messages due at the same time.
            let tiebreak = self.rng.random_range(0..u64::MAX);
            self.net.push(Reverse((self.now_ms + delay, tiebreak, id)));
            self.in_flight.insert(
                id,
                Envelope {
                    from,
                    to,
                    body: body.clone(),
                },
            );
        }
    }

    fn new_round(&mut self) -> u64 {
        self.next_round += 1;
        self.next_round
    }

    /// Writes a node's stored version, remembering it as unsynced in lossy
    /// runs.
    fn store_write(&mut self, at: usize, key: u64, clock: Clock) {
        let now = self.now_ms;
        let node = &mut self.nodes[at];
        let previous = node.store.insert(key, clock);
        if self.lossy {
            node.unsynced
                .retain(|(t, _, _)| now.saturating_sub(*t) < UNSYNCED_WINDOW_MS);
            node.unsynced.push((now, key, previous));
        }
    }

    fn deliver(&mut self, env: Envelope) {
        let at = node_index(env.to);
        if !self.nodes[at].up {
            // A crashed node refuses connections: the sender learns it.
            match env.body {
                Body::Write { round, .. } => self.send(env.to, env.from, Body::WriteAck { round, ok: false }),
                Body::Read { round, .. } => self.send(env.to, env.from, Body::ReadReply { round, clock: None }),
                Body::WriteAck { .. } | Body::ReadReply { .. } => {}
            }
            return;
        }
        match env.body {
            Body::Write {
                round,
                key,
                object,
                hint_for,
            } => {
                match hint_for {
                    Some(primary) => {
                        let slot = self.nodes[at].hints.entry((primary, key)).or_default();
                        if let Some(merged) = absorb(slot, &object) {
                            *slot = merged;
                        }
                    }
                    None => {
                        let local = self.nodes[at].store.get(&key).cloned().unwrap_or_default();
                        if let Some(merged) = absorb(&local, &object) {
                            self.store_write(at, key, merged);
                        }
                    }
                }
                self.send(env.to, env.from, Body::WriteAck { round, ok: true });
            }
            Body::Read { round, key, hint_for } => {
                let clock = match hint_for {
                    Some(_) => self.hinted(at, key),
                    None => self.nodes[at].store.get(&key).cloned().unwrap_or_default(),
                };
                let clock = Some(clock);
                self.send(env.to, env.from, Body::ReadReply { round, clock });
            }
            Body::WriteAck { round, ok } => self.on_write_ack(env.to, env.from, round, ok),
            Body::ReadReply { round, clock } => {
                let now = self.now_ms;
                let mut fallback = None;
                if let Some((Round::Get { round: get, key, .. }, _)) = self.nodes[at].rounds.get_mut(&round) {
                    fallback = get.handle_reply(env.from, clock, now).map(|s| (s, *key));
                }
                if let Some((send, key)) = fallback {
                    let body = Body::Read {
                        round,
                        key,
                        hint_for: send.hint_for,
                    };
                    self.send(env.to, send.to, body);
                }
                self.settle(env.to, round);
            }
        }
    }

    fn on_write_ack(&mut self, at_node: NodeId, from: NodeId, round_id: u64, ok: bool) {
        let now = self.now_ms;
        let at = node_index(at_node);
        let Some((round, _)) = self.nodes[at].rounds.get_mut(&round_id) else {
            return;
        };
        match round {
            Round::Put { round, .. } => {
                let sends = round.handle_reply(from, ok, now);
                self.send_put_copies(at_node, round_id, sends);
            }
            Round::Handoff { target, key, object } => {
                // A hint is deleted only once the primary has it, and only
                // if no newer version joined the hint meanwhile.
                if ok && *target == from {
                    let (target, key, object) = (*target, *key, object.clone());
                    let partition = self.partition(key);
                    let node = &mut self.nodes[at];
                    if node.hints.get(&(target, key)) == Some(&object) {
                        // As the server's hint store: only a hint holding
                        // the partition's fallback writer retires it.
                        if let Some((_, writer)) = node.fallback_actors.get(&partition) {
                            if object.context().get(*writer) > 0 {
                                node.fallback_actors.remove(&partition);
                            }
                        }
                        node.hints.remove(&(target, key));
                    }
                    node.rounds.remove(&round_id);
                }
                return;
            }
            Round::Get { .. } => {}
        }
        self.settle(at_node, round_id);
    }

    fn send_put_copies(&mut self, at: NodeId, round_id: u64, sends: Vec<Send>) {
        let Some((Round::Put { key, object, .. }, _)) = self.nodes[node_index(at)].rounds.get(&round_id) else {
            return;
        };
        let (key, object) = (*key, object.clone());
        for s in sends {
            self.send(
                at,
                s.to,
                Body::Write {
                    round: round_id,
                    key,
                    object: object.clone(),
                    hint_for: s.hint_for,
                },
            );
        }
    }

    /// Reports a finished outcome to the waiting client and drops finished
    /// rounds (sending read repairs first).
    fn settle(&mut self, at_node: NodeId, round_id: u64) {
        let now = self.now_ms;
        let at = node_index(at_node);
        let Some((round, _)) = self.nodes[at].rounds.get_mut(&round_id) else {
            return;
        };
        let mut repairs = Vec::new();
        let finished = match round {
            Round::Put {
                round, client, write, ..
            } => {
                if let Some(outcome) = round.poll_outcome() {
                    self.writes[*write].acked = outcome.is_ok();
                    if let Some(c) = client.take() {
                        self.clients[c].state = ClientState::Idle;
                    }
                }
                round.is_finished(now)
            }
            Round::Get { round, key, client } => {
                if let Some(outcome) = round.poll_outcome() {
                    if let Ok(clock) = &outcome {
                        check_siblings_concurrent(self.seed, &self.writes, clock);
                    }
                    match client.take() {
                        Some(c) => {
                            if let Ok(clock) = &outcome {
                                self.clients[c].contexts.insert(*key, clock.context());
                            }
                            self.clients[c].state = ClientState::Idle;
                        }
                        None => {
                            self.answers.insert(round_id, outcome);
                        }
                    }
                }
                let finished = round.is_finished(now);
                if finished {
                    repairs = round
                        .repairs()
                        .into_iter()
                        .map(|s| (s, *key, round.merged().clone()))
                        .collect();
                }
                finished
            }
            Round::Handoff { .. } => false,
        };
        if finished {
            if let Some((Round::Put { round, key, object, .. }, _)) = self.nodes[at].rounds.get(&round_id) {
                // The coordinator keeps a hint for every primary left
                // without the version.
                let (key, object) = (*key, object.clone());
                for primary in round.unplaced() {
                    let slot = self.nodes[at].hints.entry((primary, key)).or_default();
                    *slot = slot.sync(&object);
                }
            }
            self.nodes[at].rounds.remove(&round_id);
            for (send, key, object) in repairs {
                let round = self.new_round();
                self.send(
                    at_node,
                    send.to,
                    Body::Write {
                        round,
                        key,
                        object,
                        hint_for: send.hint_for,
                    },
                );
            }
        }
    }

    fn start_put(
        &mut self,
        client: Option<usize>,
        key: u64,
        context: WriteContext,
        delete: bool,
    ) -> Option<(NodeId, u64)> {
        let pref = self.preference(key);
        let primaries: Vec<NodeId> = pref.primaries.iter().map(|o| o.node).collect();
        let up_primaries: Vec<NodeId> = primaries
            .iter()
            .copied()
            .filter(|p| self.nodes[node_index(*p)].up)
            .collect();
        // No primary up: the first fallback that is coordinates, holding
        // its copy as a hint for the first primary.
        let (coordinator, stands_in_for) = match up_primaries.len() {
            0 => (*self.up_fallbacks(key).first()?, Some(primaries[0])),
            n => (up_primaries[self.rng.random_range(0..n)], None),
        };
        let plan = PutPlan {
            down: if stands_in_for.is_some() {
                primaries.clone()
            } else {
                Vec::new()
            },
            primaries,
            fallbacks: pref.fallbacks.iter().map(|o| o.node).collect(),
            coordinator,
            stands_in_for,
            quorum: Quorum { total: W, primaries: 0 },
            replica_timeout_ms: REPLICA_TIMEOUT_MS,
            timeout_ms: REQUEST_TIMEOUT_MS,
        };
        let id = self.writes.len() as u64;
        let sibling = Sibling {
            timestamp_ms: id,
            value: (!delete).then(|| bytes::Bytes::copy_from_slice(&id.to_le_bytes())),
        };
        let at = node_index(coordinator);
        let (actor, local) = match stands_in_for {
            None => (
                self.nodes[at].actor,
                self.nodes[at].store.get(&key).cloned().unwrap_or_default(),
            ),
            Some(target) => {
                let partition = self.partition(key);
                let actor = match self.nodes[at].fallback_actors.get(&partition) {
                    Some((t, actor)) if *t == target => *actor,
                    _ => {
                        self.next_actor += 1;
                        let actor = NodeId(self.next_actor);
                        self.nodes[at].fallback_actors.insert(partition, (target, actor));
                        actor
                    }
                };
                (actor, self.hinted(at, key))
            }
        };
        let given = match &context {
            WriteContext::Given(vv) => Some(vv.clone()),
            WriteContext::Local => Some(local.context()),
            WriteContext::Blind => None,
        };
        let Ok(object) = coordinate(&local, &context, actor, sibling, self.limits) else {
            return None; // Too many siblings: the client is told, nothing is written.
        };
        let dot = object
            .dotted_siblings()
            .find(|(_, _, s)| s.timestamp_ms == id)
            .map(|(n, c, _)| (n, c))
            .expect("the new write is live in its own version");
        if let Some(earlier) = self.dots.insert((key, dot), id) {
            panic!(
                "seed {}: key {key}: dot {dot:?} issued twice (writes {earlier} and {id})",
                self.seed
            );
        }
        match stands_in_for {
            None => self.store_write(at, key, object.clone()),
            Some(target) => {
                let slot = self.nodes[at].hints.entry((target, key)).or_default();
                *slot = slot.sync(&object);
            }
        }
        self.writes.push(WriteRecord {
            key,
            dot,
            context: given,
            acked: false,
        });
        let round_id = self.new_round();
        let (round, sends) = PutRound::start(&plan, self.now_ms);
        self.nodes[node_index(coordinator)].rounds.insert(
            round_id,
            (
                Round::Put {
                    round,
                    client,
                    write: id as usize,
                    key,
                    object: object.clone(),
                },
                None,
            ),
        );
        for s in sends {
            self.send(
                coordinator,
                s.to,
                Body::Write {
                    round: round_id,
                    key,
                    object: object.clone(),
                    hint_for: s.hint_for,
                },
            );
        }
        self.settle(coordinator, round_id);
        Some((coordinator, round_id))
    }

    fn start_get(&mut self, client: Option<usize>, key: u64, r: usize) -> Option<(NodeId, u64)> {
        let primaries = self.primaries(key);
        let up: Vec<NodeId> = primaries
            .iter()
            .copied()
            .filter(|p| self.nodes[node_index(*p)].up)
            .collect();
        let (coordinator, plan) = if up.is_empty() {
            // No primary up: ask the fallbacks a write would have used,
            // starting with the coordinator itself.
            let fallbacks = self.up_fallbacks(key);
            let coordinator = *fallbacks.first()?;
            let plan = GetPlan {
                targets: fallbacks
                    .iter()
                    .zip(&primaries)
                    .map(|(f, p)| Send {
                        to: *f,
                        hint_for: Some(*p),
                    })
                    .collect(),
                fallbacks: fallbacks.iter().skip(primaries.len()).copied().collect(),
                quorum: Quorum { total: r, primaries: 0 },
                timeout_ms: REQUEST_TIMEOUT_MS,
            };
            (coordinator, plan)
        } else {
            let plan = GetPlan {
                targets: primaries.iter().map(|p| Send { to: *p, hint_for: None }).collect(),
                fallbacks: self.preference(key).fallbacks.iter().map(|o| o.node).collect(),
                quorum: Quorum { total: r, primaries: 0 },
                timeout_ms: REQUEST_TIMEOUT_MS,
            };
            (up[self.rng.random_range(0..up.len())], plan)
        };
        let round_id = self.new_round();
        let (round, sends) = GetRound::start(&plan, self.now_ms);
        self.nodes[node_index(coordinator)]
            .rounds
            .insert(round_id, (Round::Get { round, key, client }, None));
        for s in sends {
            self.send(
                coordinator,
                s.to,
                Body::Read {
                    round: round_id,
                    key,
                    hint_for: s.hint_for,
                },
            );
        }
        Some((coordinator, round_id))
    }

    fn client_step(&mut self, c: usize) {
        match self.clients[c].state {
            ClientState::Waiting {
                node,
                round,
                give_up_ms,
            } => {
                // A crashed coordinator never answers; the outcome of its
                // write stays unknown (not acknowledged).
                let gone = !self.nodes[node_index(node)].rounds.contains_key(&round);
                if gone || self.now_ms >= give_up_ms {
                    self.clients[c].state = ClientState::Idle;
                }
                return;
            }
            ClientState::Idle => {}
        }
        if !self.rng.random_bool(0.3) {
            return;
        }
        let key = self.rng.random_range(0..KEYS);
        let roll = self.rng.random_range(0..100);
        let context = self.clients[c].contexts.get(&key).cloned();
        let started = match (roll, context) {
            (0..40, _) => self.start_get(Some(c), key, R),
            (40..75, Some(ctx)) => self.start_put(Some(c), key, WriteContext::Given(ctx), false),
            (75..85, Some(ctx)) => self.start_put(Some(c), key, WriteContext::Given(ctx), true),
            (85..92, _) => self.start_put(Some(c), key, WriteContext::Local, false),
            _ => self.start_put(Some(c), key, WriteContext::Blind, false),
        };
        if let Some((node, round)) = started {
            self.clients[c].state = ClientState::Waiting {
                node,
                round,
                give_up_ms: self.now_ms + REQUEST_TIMEOUT_MS * 2,
            };
        }
    }

    fn handoff_step(&mut self, at: usize) {
        let node = &mut self.nodes[at];
        if !node.up || self.now_ms < node.next_handoff_ms {
            return;
        }
        node.next_handoff_ms = self.now_ms + HANDOFF_INTERVAL_MS;
        let pending: Vec<((NodeId, u64), Clock)> = node.hints.iter().take(4).map(|(k, v)| (*k, v.clone())).collect();
        let me = NodeId(at as u64 + 1);
        for ((target, key), object) in pending {
            let round = self.new_round();
            let give_up = self.now_ms + REQUEST_TIMEOUT_MS;
            self.nodes[at].rounds.insert(
                round,
                (
                    Round::Handoff {
                        target,
                        key,
                        object: object.clone(),
                    },
                    Some(give_up),
                ),
            );
            self.send(
                me,
                target,
                Body::Write {
                    round,
                    key,
                    object,
                    hint_for: None,
                },
            );
        }
    }

    fn tick_rounds(&mut self, at: usize) {
        let now = self.now_ms;
        let me = NodeId(at as u64 + 1);
        let ids: Vec<u64> = self.nodes[at].rounds.keys().copied().collect();
        for id in ids {
            let Some((round, give_up)) = self.nodes[at].rounds.get_mut(&id) else {
                continue;
            };
            match round {
                Round::Put { round, .. } => {
                    if now >= round.next_timeout_ms() {
                        let sends = round.handle_tick(now);
                        self.send_put_copies(me, id, sends);
                    }
                }
                Round::Get { round, .. } => round.handle_tick(now),
                Round::Handoff { .. } => {
                    if give_up.is_some_and(|g| now >= g) {
                        self.nodes[at].rounds.remove(&id);
                    }
                    continue;
                }
            }
            self.settle(me, id);
        }
    }

    fn crash_or_restart(&mut self) {
        for at in 0..NODES as usize {
            if self.rng.random_bool(self.faults.crash_p) {
                let node = &mut self.nodes[at];
                if node.up {
                    node.up = false;
                    node.rounds.clear();
                    node.fallback_actors.clear();
                    // Unsynced writes are lost, newest first; the node
                    // then writes under a new actor id.
                    let lost = !node.unsynced.is_empty();
                    for (_, key, previous) in node.unsynced.drain(..).rev() {
                        match previous {
                            Some(clock) => node.store.insert(key, clock),
                            None => node.store.remove(&key),
                        };
                    }
                    if lost {
                        self.next_actor += 1;
                        node.actor = NodeId(self.next_actor);
                    }
                } else {
                    node.up = true;
                }
            }
        }
        if self.rng.random_bool(0.001) {
            self.faults.cut = if self.faults.cut.is_empty() {
                (0..NODES).map(|_| self.rng.random_bool(0.5)).collect()
            } else {
                Vec::new()
            };
        }
    }

    /// Moves time forward by 1 ms.
    fn step(&mut self, clients: bool) {
        self.now_ms += 1;
        while let Some(Reverse((at, _, id))) = self.net.peek().copied() {
            if at > self.now_ms {
                break;
            }
            self.net.pop();
            let env = self.in_flight.remove(&id).expect("every queued message is in flight");
            self.deliver(env);
        }
        for at in 0..NODES as usize {
            if self.nodes[at].up {
                self.tick_rounds(at);
                self.handoff_step(at);
            }
        }
        if clients {
            for c in 0..CLIENTS {
                self.client_step(c);
            }
        }
    }

    fn heal(&mut self) {
        self.lossy_window_closed();
        self.faults = Faults {
            drop_p: 0.0,
            dup_p: 0.0,
            delay_ms_max: 5,
            crash_p: 0.0,
            cut: Vec::new(),
        };
        for node in &mut self.nodes {
            node.up = true;
        }
    }

    /// After healing nothing is lost any more.
    fn lossy_window_closed(&mut self) {
        for node in &mut self.nodes {
            node.unsynced.clear();
        }
    }

    fn quiescent(&self) -> bool {
        self.net.is_empty() && self.nodes.iter().all(|n| n.hints.is_empty() && n.rounds.is_empty())
    }

    fn run_until_quiescent(&mut self, what: &str) {
        let start = self.now_ms;
        while !self.quiescent() {
            assert!(
                self.now_ms - start < HEAL_PHASE_MS_MAX,
                "seed {}: {what} did not settle in {HEAL_PHASE_MS_MAX} ms",
                self.seed
            );
            self.step(false);
        }
    }

    /// A quorum read after healing.
    fn final_read(&mut self, key: u64, r: usize) -> Clock {
        let (_, round) = self.start_get(None, key, r).expect("every node is up");
        for _ in 0..REQUEST_TIMEOUT_MS * 2 {
            if let Some(outcome) = self.answers.remove(&round) {
                return outcome.unwrap_or_else(|e| panic!("seed {}: read after healing failed: {e}", self.seed));
            }
            self.step(false);
        }
        panic!("seed {}: no answer to a read after healing", self.seed)
    }

    fn run(&mut self) {
        while self.now_ms < FAULT_PHASE_MS {
            self.crash_or_restart();
            self.step(true);
        }
        self.heal();
        self.run_until_quiescent("handoff after healing");
        for key in 0..KEYS {
            let clock = self.final_read(key, R);
            check_siblings_concurrent(self.seed, &self.writes, &clock);
            if !self.lossy {
                check_acknowledged_visible(self.seed, &self.writes, key, &clock);
                check_superseded_gone(self.seed, &self.writes, key, &clock);
            }
        }
        // A read of all N repairs every replica that answered with less.
        for key in 0..KEYS {
            self.final_read(key, N);
        }
        self.run_until_quiescent("read repair");
        for key in 0..KEYS {
            let copies: Vec<Option<&Clock>> = self
                .primaries(key)
                .iter()
                .map(|p| self.nodes[node_index(*p)].store.get(&key))
                .collect();
            assert!(
                copies.windows(2).all(|w| w[0] == w[1]),
                "seed {}: replicas of key {key} differ: {copies:?}",
                self.seed
            );
        }
    }
}

fn write_of(sibling: &Sibling) -> usize {
    sibling.timestamp_ms as usize
}

/// True if write `later`'s context covered write `earlier`.
fn supersedes(writes: &[WriteRecord], later: usize, earlier: usize) -> bool {
    let (node, counter) = writes[earlier].dot;
    writes[later]
        .context
        .as_ref()
        .is_some_and(|ctx| ctx.contains_dot(node, counter))
}

fn check_siblings_concurrent(seed: u64, writes: &[WriteRecord], clock: &Clock) {
    let ids: Vec<usize> = clock.siblings().map(write_of).collect();
    for &a in &ids {
        for &b in &ids {
            assert!(
                a == b || !supersedes(writes, a, b),
                "seed {seed}: write {a} superseded write {b} yet both are siblings"
            );
        }
    }
}

fn check_acknowledged_visible(seed: u64, writes: &[WriteRecord], key: u64, clock: &Clock) {
    let seen: Vec<usize> = clock.siblings().map(write_of).collect();
    for (id, _) in writes.iter().enumerate().filter(|(_, w)| w.key == key && w.acked) {
        let visible = seen.contains(&id) || seen.iter().any(|&s| supersedes(writes, s, id));
        assert!(
            visible,
            "seed {seed}: acknowledged write {id} to key {key} is lost; the read saw {seen:?}"
        );
    }
}

fn check_superseded_gone(seed: u64, writes: &[WriteRecord], key: u64, clock: &Clock) {
    for s in clock.siblings().map(write_of) {
        for (id, _) in writes.iter().enumerate().filter(|(_, w)| w.key == key && w.acked) {
            assert!(
                !supersedes(writes, id, s),
                "seed {seed}: write {s} to key {key} came back although acknowledged write {id} superseded it"
            );
        }
    }
}

#[test]
fn cluster_keeps_acknowledged_writes_and_converges_under_faults() {
    let mut acked = 0;
    let mut writes = 0;
    for seed in support::seeds(500) {
        let mut sim = Sim::new(seed);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
        if let Err(panic) = result {
            eprintln!("simulation failed; replay with DYNKV_SIM_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
        acked += sim.writes.iter().filter(|w| w.acked).count();
        writes += sim.writes.len();
    }
    eprintln!("simulation: {writes} writes, {acked} acknowledged");
    assert!(
        acked > 0,
        "no write was ever acknowledged: the simulation tests nothing"
    );
}

#[test]
fn one_client_read_modify_write_never_makes_siblings() {
    for seed in 0..20 {
        let mut sim = Sim::new(seed);
        sim.heal();
        let mut context = None;
        for i in 0..50 {
            let ctx = context.take().map(WriteContext::Given).unwrap_or(WriteContext::Blind);
            let (node, round) = sim.start_put(None, 1, ctx, i % 10 == 9).expect("a write starts");
            while sim.nodes[node_index(node)].rounds.contains_key(&round) {
                sim.step(false);
            }
            let clock = sim.final_read(1, R);
            assert!(
                clock.sibling_count() <= 1,
                "seed {seed}: step {i} made siblings: {clock:?}"
            );
            context = Some(clock.context());
        }
    }
}
