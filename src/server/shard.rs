//! One shard: its engine and hint store, its view of the cluster, its links
//! to peer shards on other nodes, and the bounded channels to the other
//! shards of this node.
//!
//! A request runs where its key's partition lives. On a node that is a
//! primary of the partition, the owning shard coordinates it (forwarded over
//! the channel mesh if it arrived elsewhere: bounded, one single-producer
//! channel per pair of shards, answers on one-shot channels, so a full queue
//! only makes a sender wait and never deadlocks a reply). A node that is not
//! a primary forwards the request over an internode link to a primary's
//! owning shard. Replica messages go straight from a coordinating shard to
//! the owning shard of each replica node.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynkv_engine::{Engine, EngineError, EngineStats, GetNow};
use dynkv_net::Status;
use dynkv_ring::{NodeId, Owner, PartitionCount};
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};

use crate::config::ServeConfig;
use crate::server::context_seal::ContextSeal;
use crate::server::hints::HintStore;
use crate::server::key_locks::KeyLocks;
use crate::server::link::Links;
use crate::server::members::Members;
use crate::server::metrics::ShardCounters;
use crate::server::view::ClusterView;
use dynkv::object::{decode_object_shared, ObjectView};
use dynkv::version::{Clock, VersionLimits};

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Get,
    Put,
    Delete,
    Stats,
    /// Internode: a replica's stored version of a key.
    ReplicaGet,
    /// Internode: merge a version into a replica (or a hint).
    ReplicaPut,
    /// Internode: part of a partition's Merkle tree, for anti-entropy.
    Merkle,
    /// An operator's command, run by shard 0's membership keeper.
    Admin,
}

pub(crate) const OP_COUNT: usize = 8;
/// Writes one shard copies to incoming replicas at once.
const INCOMING_COPIES_MAX: u64 = 1024;
/// Longest timeout a client may ask for.
const REQUEST_TIMEOUT_MAX_MS: u64 = 60_000;

/// Per-request settings from the frame header and the port it came in on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestOptions {
    /// R or W; 0 means the node's default.
    pub(crate) quorum: u8,
    /// pr or pw; 0 means none.
    pub(crate) primary_quorum: u8,
    /// 0 means the node's default.
    pub(crate) timeout_ms: u32,
    /// A write supersedes whatever the coordinator holds (RESP's SET).
    pub(crate) supersede_local: bool,
    /// For replica messages: the primary a hint is held for.
    pub(crate) hint_for: Option<NodeId>,
    /// The request came from another node, which already chose this one as
    /// coordinator; it is never forwarded again.
    pub(crate) from_peer: bool,
    /// Every primary of the key is unreachable from the sender: a client
    /// request is coordinated here as a fallback (unless this node is a
    /// primary after all, or, for a peer's request, reaches one), and a
    /// replica put's hint is kept whatever its age.
    pub(crate) as_fallback: bool,
}

/// The answer to a request; `Send`, so it can cross shards.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done,
    /// A key's merged version (empty if no replica had it). Not boxed: a
    /// clock is one `Vec`, no larger than `Failed`'s message.
    Object(Clock),
    Stats(Box<ShardReport>),
    /// Raw bytes for the response's value (Merkle exchanges).
    Bytes(Vec<u8>),
    Failed(Status, String),
}

// Every request's future holds an Outcome and forwarded ones cross a
// channel in one: keep it to a String and a tag.
const _: () = assert!(std::mem::size_of::<Outcome>() <= 32);

impl Outcome {
    pub(crate) fn failed(status: Status, message: impl Into<String>) -> Outcome {
        Outcome::Failed(status, message.into())
    }
}

/// One shard's figures, for `stats` and metrics.
#[derive(Clone, Debug)]
pub(crate) struct ShardReport {
    pub(crate) shard: usize,
    pub(crate) engine: EngineStats,
    pub(crate) counters: crate::server::metrics::CountersSnapshot,
    pub(crate) hints: crate::server::metrics::HintSnapshot,
    /// Nodes in this shard's view of the membership, and whether the
    /// partition table is placed (false while forming).
    pub(crate) members: u64,
    pub(crate) ready: bool,
    /// Members the failure detector holds down.
    pub(crate) down: u64,
    /// Epoch, partitions owned, partitions receiving, cluster transfers
    /// unconfirmed, settled (0/1).
    pub(crate) ownership: [u64; 5],
}

/// A request forwarded from another shard of this node.
pub(crate) struct Forwarded {
    pub(crate) op: Op,
    pub(crate) key: Vec<u8>,
    pub(crate) context: Vec<u8>,
    pub(crate) value: Vec<u8>,
    pub(crate) options: RequestOptions,
    pub(crate) reply: oneshot::Sender<Outcome>,
}

/// RESP commands a connection on another shard received for keys this
/// shard alone holds, as the client sent them, to be answered as one
/// pipeline (see `resp::answer_batch`).
pub(crate) struct RespBatch {
    /// The commands' RESP bytes, back to back.
    pub(crate) commands: Vec<u8>,
    pub(crate) count: usize,
    pub(crate) reply: oneshot::Sender<RespReplies>,
}

/// The replies to a `RespBatch`, back to back; `ends[i]` is where the
/// reply to command `i` ends.
pub(crate) struct RespReplies {
    pub(crate) bytes: Vec<u8>,
    pub(crate) ends: Vec<usize>,
}

/// What shards send each other.
pub(crate) enum ShardMsg {
    Request(Forwarded),
    Resp(RespBatch),
    /// A new cluster view, from shard 0.
    View(Arc<ClusterView>),
    /// The nodes the failure detector now holds down, from shard 0.
    Down(Arc<Vec<NodeId>>),
    /// To shard 0: this node now holds a partition it was receiving.
    Confirm(u32),
}

pub(crate) fn engine_failure(err: EngineError) -> Outcome {
    let status = match err {
        EngineError::KeyTooLarge { .. } => Status::KeyTooLarge,
        EngineError::ValueTooLarge { .. } => Status::ValueTooLarge,
        EngineError::Closed => Status::ShuttingDown,
        _ => Status::Internal,
    };
    Outcome::Failed(status, err.to_string())
}

/// A stored record as the version it holds (empty if absent or deleted).
fn stored_version(record: dynkv_engine::Result<Option<dynkv_engine::Record>>) -> Result<Clock, Outcome> {
    match record {
        Ok(Some(record)) if !record.tombstone => decode_object_shared(&record.value).map_err(|e| {
            Outcome::failed(
                Status::Internal,
                format!("the stored version of this key is corrupt: {e}"),
            )
        }),
        Ok(_) => Ok(Clock::new()),
        Err(err) => Err(engine_failure(err)),
    }
}

pub(crate) struct Shard {
    pub(crate) id: usize,
    pub(crate) me: NodeId,
    /// The writer id this shard stamps on versions (see `actor.rs`).
    pub(crate) actor: NodeId,
    pub(crate) seal: ContextSeal,
    /// The engine makes every acknowledged write durable before the ack.
    pub(crate) sync_always: bool,
    pub(crate) engine: Engine,
    pub(crate) hints: HintStore,
    pub(crate) config: ServeConfig,
    pub(crate) q: PartitionCount,
    pub(crate) limits: VersionLimits,
    view: RefCell<Rc<ClusterView>>,
    /// Nodes the failure detector holds down (this shard's copy).
    detected_down: RefCell<Rc<Vec<NodeId>>>,
    pub(crate) senders: Senders<ShardMsg>,
    pub(crate) links: Links,
    /// Serializes read-modify-write of one key on this shard.
    pub(crate) key_locks: KeyLocks,
    /// Writes being copied to replicas that receive their partition during
    /// an ownership change; past the bound, a copy becomes a hint at once.
    pub(crate) incoming_copies: Rc<glommio::sync::Semaphore>,
    pub(crate) counters: ShardCounters,
    /// Open client connections on this shard.
    pub(crate) connections: Cell<usize>,
    /// Closed when the node shuts down.
    pub(crate) stopping: Rc<crate::server::shutdown::Gate>,
    /// The low-share task queue of background work (handoff,
    /// anti-entropy, transfers, and peers' requests for theirs).
    pub(crate) background: glommio::TaskQueueHandle,
    /// Membership keeper; only on shard 0.
    pub(crate) members: Option<Rc<Members>>,
    started: Instant,
}

/// What a new shard is made of.
pub(crate) struct ShardParts {
    pub(crate) id: usize,
    pub(crate) me: NodeId,
    pub(crate) actor: NodeId,
    pub(crate) seal: ContextSeal,
    pub(crate) engine: Engine,
    pub(crate) hints: HintStore,
    pub(crate) config: ServeConfig,
    pub(crate) q: PartitionCount,
    pub(crate) view: Arc<ClusterView>,
    pub(crate) senders: Senders<ShardMsg>,
    pub(crate) members: Option<Rc<Members>>,
    pub(crate) background: glommio::TaskQueueHandle,
}

impl Shard {
    pub(crate) fn new(parts: ShardParts) -> Shard {
        let limits = VersionLimits {
            siblings_max: parts.config.siblings_max,
            ..VersionLimits::default()
        };
        let sync_always = parts.config.sync_always();
        Shard {
            id: parts.id,
            me: parts.me,
            actor: parts.actor,
            seal: parts.seal,
            sync_always,
            engine: parts.engine,
            hints: parts.hints,
            links: Links::new(parts.me, &parts.config.cluster_secret),
            config: parts.config,
            q: parts.q,
            limits,
            view: RefCell::new(Rc::new((*parts.view).clone())),
            detected_down: RefCell::new(Rc::new(Vec::new())),
            senders: parts.senders,
            key_locks: KeyLocks::default(),
            incoming_copies: Rc::new(glommio::sync::Semaphore::new(INCOMING_COPIES_MAX)),
            counters: ShardCounters::default(),
            connections: Cell::new(0),
            stopping: crate::server::shutdown::Gate::new(),
            members: parts.members,
            background: parts.background,
            started: Instant::now(),
        }
    }

    /// The current cluster view.
    pub(crate) fn view(&self) -> Rc<ClusterView> {
        self.view.borrow().clone()
    }

    /// Installs a view received from shard 0, as this shard's own copy,
    /// unless a newer one is already installed.
    pub(crate) fn set_view(&self, view: &ClusterView) {
        if view.generation >= self.view.borrow().generation {
            *self.view.borrow_mut() = Rc::new(view.clone());
        }
    }

    /// True if `node` should be treated as down: the failure detector says
    /// so, or this shard's link to it is backing off after a failure.
    pub(crate) fn is_down(&self, node: NodeId) -> bool {
        self.links.is_down(node) || self.detected_down.borrow().contains(&node)
    }

    /// This shard as a partition owner.
    pub(crate) fn owner(&self) -> Owner {
        Owner {
            node: self.me,
            shard: self.id as u16,
        }
    }

    /// Runs `task` in this shard's low-share background queue.
    pub(crate) fn spawn_background(&self, task: impl std::future::Future<Output = ()> + 'static) {
        match glommio::spawn_local_into(task, self.background) {
            Ok(task) => {
                task.detach();
            }
            Err(err) => tracing::error!(shard = self.id, "cannot queue background work: {err}"),
        }
    }

    /// Nodes the failure detector holds down.
    pub(crate) fn down_nodes(&self) -> Rc<Vec<NodeId>> {
        self.detected_down.borrow().clone()
    }

    /// Takes the failure detector's new down set.
    fn set_down(&self, down: &[NodeId]) {
        let previous = std::mem::replace(&mut *self.detected_down.borrow_mut(), Rc::new(down.to_vec()));
        for node in previous.iter().filter(|n| !down.contains(n)) {
            self.links.node_is_back(*node);
        }
    }

    /// Sends the failure detector's down set to every shard.
    pub(crate) async fn broadcast_down(&self, down: Arc<Vec<NodeId>>) {
        self.set_down(&down);
        for peer in (0..self.senders.nr_consumers()).filter(|&s| s != self.id) {
            let _ = self.senders.send_to(peer, ShardMsg::Down(down.clone())).await;
        }
    }

    /// Monotonic milliseconds, the clock of the coordinator state machines.
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn request_timeout(&self, options: &RequestOptions) -> Duration {
        let ms = match options.timeout_ms {
            0 => self.config.request_timeout_ms,
            ms => u64::from(ms).min(REQUEST_TIMEOUT_MAX_MS),
        };
        Duration::from_millis(ms)
    }

    /// Executes a request wherever its key lives.
    pub(crate) async fn execute(
        self: &Rc<Self>,
        op: Op,
        key: &[u8],
        context: &[u8],
        value: &[u8],
        options: RequestOptions,
    ) -> Outcome {
        let started = Instant::now();
        let outcome = self.route(op, key, context, value, options).await;
        self.counters.record(op, &outcome, started.elapsed());
        outcome
    }

    async fn route(
        self: &Rc<Self>,
        op: Op,
        key: &[u8],
        context: &[u8],
        value: &[u8],
        options: RequestOptions,
    ) -> Outcome {
        if op == Op::Stats {
            return Outcome::Stats(Box::new(self.report()));
        }
        if op == Op::Merkle {
            return self.route_merkle(key, context, value, options).await;
        }
        if op == Op::Admin {
            return match &self.members {
                Some(members) => {
                    let command = String::from_utf8_lossy(key);
                    match Box::pin(members.admin(self, &command, &String::from_utf8_lossy(value))).await {
                        Ok(text) => Outcome::Bytes(text.into_bytes()),
                        Err(message) => Outcome::failed(Status::BadRequest, message),
                    }
                }
                None => self.forward(0, op, key, context, value, options).await,
            };
        }
        if key.len() > self.config.key_max_bytes {
            let message = format!("key of {} bytes exceeds {}", key.len(), self.config.key_max_bytes);
            return Outcome::failed(Status::KeyTooLarge, message);
        }
        let view = self.view();
        if let Some(reason) = view.forming_reason() {
            return Outcome::failed(Status::Unavailable, reason);
        }
        let partition = self.q.partition_of(key);
        // A hint may be kept on any shard; everything else on the owner.
        if options.hint_for.is_some() {
            return self.replica_local(op, partition, key, value, options).await;
        }
        // Replica messages are also taken by a replica still receiving
        // the partition; client requests only by current owners.
        let local = match op {
            Op::ReplicaGet | Op::ReplicaPut if view.is_replica_shard(partition, self.id as u16) => Some(self.id as u16),
            Op::ReplicaGet | Op::ReplicaPut => view.local_replica_shard(partition),
            _ => view.local_owner_shard(partition),
        };
        match local {
            Some(shard) if usize::from(shard) == self.id => match op {
                Op::ReplicaGet | Op::ReplicaPut => self.replica_local(op, partition, key, value, options).await,
                _ => self.coordinate(op, partition, key, context, value, options).await,
            },
            Some(shard) => {
                self.counters.forwarded.set(self.counters.forwarded.get() + 1);
                self.forward(usize::from(shard), op, key, context, value, options).await
            }
            // No primary was reachable from the sender (a peer, or another
            // shard here): this node coordinates as a fallback, on the shard
            // that keeps the partition's hints.
            None if options.as_fallback && matches!(op, Op::Get | Op::Put | Op::Delete) => {
                let shard = view.shard_of(self.me, partition);
                if usize::from(shard) != self.id {
                    self.forward(usize::from(shard), op, key, context, value, options).await
                } else if options.from_peer {
                    Box::pin(self.take_as_fallback(op, partition, key, context, value, options)).await
                } else {
                    // Another shard of this node found no primary.
                    Box::pin(self.coordinate_as_fallback(op, partition, key, context, value, options)).await
                }
            }
            None if matches!(op, Op::ReplicaGet | Op::ReplicaPut) || options.from_peer => Outcome::failed(
                Status::NotPrimary,
                format!("node {} is not a primary of partition {partition}", self.me),
            ),
            None => {
                self.counters.forwarded.set(self.counters.forwarded.get() + 1);
                // Boxed: its future is several times the size of the rest
                // of a request's, and every request's future is moved
                // (copied) when it is queued, so only the requests that
                // take this path should pay for it.
                Box::pin(self.forward_to_primary(op, partition, key, context, value, options)).await
            }
        }
    }

    /// A Merkle request runs on the shard owning its partition.
    async fn route_merkle(&self, key: &[u8], context: &[u8], value: &[u8], options: RequestOptions) -> Outcome {
        let Some((partition, what, index)) = crate::server::anti_entropy::parse_request(key) else {
            return Outcome::failed(
                Status::BadRequest,
                "a Merkle request key is partition u32 | what u8 | index u16",
            );
        };
        if partition >= self.q.get() {
            return Outcome::failed(Status::BadRequest, format!("partition {partition} out of range"));
        }
        let view = self.view();
        if view.is_replica_shard(partition, self.id as u16) {
            return self.merkle_answer(partition, what, index);
        }
        match view.local_replica_shard(partition) {
            Some(shard) => {
                self.forward(usize::from(shard), Op::Merkle, key, context, value, options)
                    .await
            }
            None => Outcome::failed(
                Status::NotPrimary,
                format!("node {} is not a primary of partition {partition}", self.me),
            ),
        }
    }

    pub(crate) async fn forward(
        &self,
        owner: usize,
        op: Op,
        key: &[u8],
        context: &[u8],
        value: &[u8],
        options: RequestOptions,
    ) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let msg = ShardMsg::Request(Forwarded {
            op,
            key: key.to_vec(),
            context: context.to_vec(),
            value: value.to_vec(),
            options,
            reply,
        });
        if self.senders.send_to(owner, msg).await.is_err() {
            return Outcome::failed(Status::ShuttingDown, format!("shard {owner} is not accepting requests"));
        }
        answer
            .await
            .unwrap_or_else(|_| Outcome::failed(Status::ShuttingDown, format!("shard {owner} dropped the request")))
    }

    /// Brings what serving `key` here would read into the CPU cache; see
    /// `Engine::prefetch`. A key another shard owns just misses.
    pub(crate) fn prefetch(&self, key: &[u8]) {
        if key.len() <= self.config.key_max_bytes {
            self.engine.prefetch(self.q.partition_of(key), key);
        }
    }

    /// Reads this shard's stored version of `key` (empty if none).
    pub(crate) async fn read_local(&self, partition: u32, key: &[u8]) -> Result<Clock, Outcome> {
        stored_version(self.engine.get(partition, key).await)
    }

    /// A client's get (without a hint target) answered at once, without a
    /// future, when it can be: this shard is the key's only replica (so
    /// `coordinate_get` would only read it here) and its stored version is
    /// in memory. `None` sends the request the usual way, which also
    /// answers every error. The shard's request counters are left to the
    /// caller (see `get_now`).
    pub(crate) fn read_now(&self, key: &[u8]) -> Option<Outcome> {
        let partition = self.sole_replica_of(key)?;
        Some(match self.stored_version_now(partition, key)? {
            Ok(clock) => Outcome::Object(clock),
            Err(outcome) => outcome,
        })
    }

    /// The partition of `key` if this shard is its only replica, and no
    /// other replica is receiving it: a request for it involves no one
    /// else. `None` also for a key over the limit or while forming.
    pub(crate) fn sole_replica_of(&self, key: &[u8]) -> Option<u32> {
        let (partition, shard) = self.sole_local_replica(key)?;
        (shard == self.id).then_some(partition)
    }

    /// The partition of `key` and the shard of this node that is its only
    /// replica, if one is and no other replica is receiving it.
    pub(crate) fn sole_local_replica(&self, key: &[u8]) -> Option<(u32, usize)> {
        if key.len() > self.config.key_max_bytes {
            return None;
        }
        let view = self.view.borrow();
        let partition = self.q.partition_of(key);
        match view.primaries(partition) {
            [only] if only.node == self.me && !view.is_forming() => view
                .incoming(partition)
                .is_empty()
                .then_some((partition, usize::from(only.shard))),
            _ => None,
        }
    }

    /// `read_local` if memory can answer it; `None` if it needs the disk.
    pub(crate) fn stored_version_now(&self, partition: u32, key: &[u8]) -> Option<Result<Clock, Outcome>> {
        match self.engine.get_now(partition, key) {
            Ok(GetNow::OnDisk(_)) => None,
            Ok(GetNow::Answered(record)) => Some(stored_version(Ok(record))),
            Err(err) => Some(Err(engine_failure(err))),
        }
    }

    /// `get_now` for a caller that answers from the stored object in place
    /// (see `ObjectView`): `f` gets a view of it (`None`: nothing stored,
    /// which reads as an empty clock). `None` if the object is not in
    /// memory or this shard is not the key's only replica: then `get_now`
    /// or the usual path. The latency is stamped as `get_now`'s is.
    pub(crate) fn peek_now<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<ObjectView<'_>>) -> T,
    ) -> Option<Result<T, Outcome>> {
        let partition = self.sole_replica_of(key)?;
        let peeked = self.engine.peek_now(partition, key, |stored| match stored {
            None => Some(f(None)),
            // A view that does not parse goes the decoding way, which
            // reports what is wrong.
            Some(bytes) => ObjectView::parse(bytes).ok().map(|view| f(Some(view))),
        });
        let answered = match peeked {
            Ok(Some(Some(answer))) => Ok(answer),
            Ok(_) => return None,
            Err(err) => Err(engine_failure(err)),
        };
        self.counters.count(Op::Get, answered.is_err());
        Some(answered)
    }

    /// `read_now` for a client connection of this shard, counted like
    /// `execute`; the caller stamps its latency with the batch's
    /// (`ShardCounters::stamp_batch`).
    pub(crate) fn get_now(&self, key: &[u8]) -> Option<Outcome> {
        let outcome = self.read_now(key)?;
        self.counters.record_in_batch(Op::Get, &outcome);
        Some(outcome)
    }

    pub(crate) fn report(&self) -> ShardReport {
        let (pending, pending_bytes) = self.hints.pending();
        let h = &self.hints.counters;
        ShardReport {
            shard: self.id,
            engine: self.engine.stats(),
            counters: self.counters.snapshot(self.connections.get()),
            hints: crate::server::metrics::HintSnapshot {
                pending,
                pending_bytes,
                stored: h.stored.get(),
                delivered: h.delivered.get(),
                dropped_full: h.dropped_full.get(),
                expired: h.expired.get(),
            },
            members: self.view().membership.records().count() as u64,
            ready: self.view().table.is_some(),
            down: self.down_nodes().len() as u64,
            ownership: self.ownership_figures(),
        }
    }

    fn ownership_figures(&self) -> [u64; 5] {
        let view = self.view();
        let Some(ownership) = &view.ownership else {
            return [0; 5];
        };
        let me = self.owner();
        let q = self.q.get();
        let owned = (0..q).filter(|&p| ownership.current().owners(p).contains(&me)).count();
        let receiving = (0..q)
            .filter(|&p| ownership.incoming(p).any(|o| o == me) && !ownership.is_confirmed(p, self.me))
            .count();
        let (done, total) = ownership.progress();
        [
            ownership.epoch(),
            owned as u64,
            receiving as u64,
            (total - done) as u64,
            u64::from(ownership.pending().is_none()),
        ]
    }

    /// Every shard's report, this one's included (asks peers over the mesh).
    pub(crate) async fn all_reports(&self) -> Vec<ShardReport> {
        let mut reports = vec![self.report()];
        for peer in (0..self.senders.nr_consumers()).filter(|&s| s != self.id) {
            let options = RequestOptions::default();
            if let Outcome::Stats(report) = self.forward(peer, Op::Stats, &[], &[], &[], options).await {
                reports.push(*report);
            }
        }
        reports.sort_by_key(|r| r.shard);
        reports
    }

    /// Sends a new view to every other shard.
    pub(crate) async fn broadcast_view(&self, view: Arc<ClusterView>) {
        self.set_view(&view);
        for peer in (0..self.senders.nr_consumers()).filter(|&s| s != self.id) {
            let _ = self.senders.send_to(peer, ShardMsg::View(view.clone())).await;
        }
    }

    /// Serves messages from peer shards until their channels close.
    pub(crate) fn serve_peers(self: &Rc<Self>, mut receivers: Receivers<ShardMsg>) {
        for (_, receiver) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = receiver.recv().await {
                    match msg {
                        ShardMsg::View(view) => shard.set_view(&view),
                        ShardMsg::Down(down) => shard.set_down(&down),
                        ShardMsg::Confirm(partition) => {
                            if let Some(members) = &shard.members {
                                members.confirm(partition);
                            }
                        }
                        ShardMsg::Request(req) if req.op == Op::Get && req.options.hint_for.is_none() => {
                            match shard.read_now(&req.key) {
                                // The requester may have given up; that is fine.
                                Some(outcome) => {
                                    drop(req.reply.send(outcome));
                                    glommio::yield_if_needed().await;
                                }
                                None => shard.serve_forwarded(req).await,
                            }
                        }
                        ShardMsg::Request(req) => shard.serve_forwarded(req).await,
                        ShardMsg::Resp(batch) => crate::server::resp::serve_forwarded(&shard, batch).await,
                    }
                }
            })
            .detach();
        }
    }

    /// Runs a request another shard forwarded, in place unless it must
    /// wait (see `eager`).
    async fn serve_forwarded(self: &Rc<Self>, req: Forwarded) {
        let shard = self.clone();
        super::eager::run_or_spawn(async move {
            let outcome = shard
                .route(req.op, &req.key, &req.context, &req.value, req.options)
                .await;
            // The requester may have given up; that is fine.
            let _ = req.reply.send(outcome);
        })
        .await;
    }
}
