//! Membership, ownership and liveness, kept by shard 0: gossip with the
//! configured seeds (`peers`, `join`) and random members, a failure
//! detector, and the claimant's ownership changes.
//!
//! At start the node loads the membership and ownership it last knew from
//! its data directory and adds its own record (with a raised incarnation,
//! so a changed address wins). Every `gossip_interval_ms` it exchanges with
//! `gossip_fanout` members chosen at random, over its persistent internode
//! links, digest first: a peer whose digest matches answers "same";
//! otherwise the full states (membership and ownership) are swapped and
//! merged (push-pull). Seeds not yet known by id get the full state over a
//! fresh authenticated connection. Any change is written back to the data directory and sent
//! to every shard as a new [`ClusterView`].
//!
//! Ownership (`dynkv_ring::Ownership`) starts from a *genesis* table every
//! node forming the cluster computes alike from the configured peers; a
//! node started with `join` waits for the cluster's instead. After each
//! round the *claimant* (the lowest-id member not gone and not down)
//! plans or commits ownership changes; incoming replicas confirm their
//! partitions through [`Members::confirm`].
//!
//! Every exchange, either way, also carries the sender's table of
//! heartbeats (`dynkv::cluster::heartbeats`): each node raises its own beat
//! every round, and a node whose beat rose was heard from, whoever relayed
//! it. A phi-accrual detector per peer (`dynkv::cluster::liveness`) turns
//! silence into "down", and the down set goes to every shard, whose
//! coordinators then send that node's copies straight to fallbacks.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use dynkv::cluster::heartbeats::{gossip_peers, Heartbeats};
use dynkv::cluster::liveness::FailureDetector;
use dynkv_net::{ClientOptions, Connection, Head, Opcode, Status};
use dynkv_ring::{claim, Lifecycle, Liveness, Membership, NodeId, NodeRecord, Ownership, PartitionCount, ZoneId};
use glommio::net::TcpStream;

use crate::config::ServeConfig;
use crate::server::auth;
use crate::server::shard::Shard;
use crate::server::view::ClusterView;

const MEMBERSHIP_FILE: &str = "membership";
const OWNERSHIP_FILE: &str = "ownership";
/// Pause between gossip rounds while peers are missing (then
/// `gossip_interval_ms`).
const FORMING_PASS_MS: u64 = 200;
/// Longest one gossip exchange may take: well under the round interval, so
/// that one unreachable peer cannot stretch the rounds (and the heartbeat
/// intervals every other peer's detector sees).
const EXCHANGE_TIMEOUT_MS_MAX: u64 = 2_000;
/// Gossip payload kinds: a digest, a full state, or "same".
const GOSSIP_DIGEST: u8 = 1;
const GOSSIP_FULL: u8 = 2;
const GOSSIP_SAME: u8 = 0;
/// Rounds a node that has left keeps gossiping (so every member learns it
/// is gone) before it stops.
const ROUNDS_AFTER_LEAVING: u32 = 3;

pub(crate) struct Members {
    me: NodeId,
    q: PartitionCount,
    n: usize,
    /// Configured cluster members: the genesis table is placed on them.
    peers: Vec<SocketAddr>,
    /// Members of a running cluster this node joins through.
    join: Vec<SocketAddr>,
    dir: PathBuf,
    secret: Vec<u8>,
    membership: RefCell<Membership>,
    ownership: RefCell<Option<Ownership>>,
    detector: RefCell<FailureDetector>,
    heartbeats: RefCell<Heartbeats>,
    /// Members contacted per round, and the state of the generator that
    /// picks them (xorshift64, seeded at random).
    gossip_fanout: usize,
    peer_picker: Cell<u64>,
    /// Heartbeats further ahead of this node's clock are ignored.
    clock_skew_max_ms: u64,
    /// The down set last sent to the shards.
    down: RefCell<Vec<NodeId>>,
    gossip_interval_ms: u64,
    /// Views made so far (each view's generation).
    generation: Cell<u64>,
    /// Confirmations not yet sent to the shards in a view.
    unpublished: Cell<bool>,
    /// Rounds left before a node that has left stops.
    leaving_rounds: Cell<Option<u32>>,
}

/// Resolves configured addresses.
fn resolve(addrs: &[String]) -> Result<Vec<SocketAddr>, String> {
    addrs
        .iter()
        .map(|p| {
            p.to_socket_addrs()
                .map_err(|e| format!("peer {p}: {e}"))?
                .next()
                .ok_or_else(|| format!("peer {p} resolves to no address"))
        })
        .collect()
}

/// `a, b, c`.
fn addresses(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Reads a state file, `None` if there is none.
fn read_state(path: &std::path::Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes a state file atomically and durably.
fn write_state(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot store {}: {e}", path.display()))
}

impl Members {
    /// Loads the stored membership and ownership and adds this node's
    /// record.
    pub(crate) fn open(config: &ServeConfig, me: NodeId, q: PartitionCount) -> Result<Members, String> {
        let peers = resolve(&config.peers)?;
        let join = resolve(&config.join)?;
        if !(peers.is_empty() && join.is_empty()) && config.listen.is_unspecified() && config.advertise.is_none() {
            return Err(
                "a cluster node must listen on a specific address, or set advertise (other nodes dial it)".into(),
            );
        }
        let dir = config.data_dir.clone();
        let membership_path = dir.join(MEMBERSHIP_FILE);
        let mut membership = match read_state(&membership_path)? {
            Some(bytes) => Membership::decode(&bytes).map_err(|e| format!("{}: {e}", membership_path.display()))?,
            None => Membership::default(),
        };
        if membership.get(me).is_some_and(|r| r.lifecycle == Lifecycle::Left) {
            return Err(format!(
                "node {me} left or was removed from its cluster; to join again, start it with an empty data \
                 directory and --join"
            ));
        }
        let ownership_path = dir.join(OWNERSHIP_FILE);
        let ownership = match read_state(&ownership_path)? {
            Some(bytes) => Some(Ownership::decode(&bytes).map_err(|e| format!("{}: {e}", ownership_path.display()))?),
            None => None,
        };
        if ownership.as_ref().is_some_and(|o| o.current().partition_count() != q) {
            return Err(format!("{} has another partition count", ownership_path.display()));
        }
        let stored = membership.get(me).cloned();
        if let Some(old) = stored.as_ref().filter(|r| r.shard_ports.len() != config.shards) {
            return Err(format!(
                "the data directory holds {} shard(s) of data but {} were asked for; start with --shards {} \
                 (changing a node's shard count is not supported yet)",
                old.shard_ports.len(),
                config.shards,
                old.shard_ports.len()
            ));
        }
        let incarnation = stored.as_ref().map_or(1, |r| r.incarnation + 1);
        let shards = config.shards as u16;
        membership.merge_record(NodeRecord {
            id: me,
            incarnation,
            // A leave in progress goes on after a restart.
            lifecycle: stored.map_or(Lifecycle::Up, |r| r.lifecycle),
            liveness: Liveness::Alive,
            address: config.advertised_address(),
            shard_ports: (0..shards).map(|s| config.base_port + s).collect(),
            weight: config.capacity_weight(),
            zone: ZoneId(config.zone),
        });
        let members = Members {
            me,
            q,
            n: config.n,
            peers,
            join,
            dir,
            secret: config.cluster_secret.as_bytes().to_vec(),
            membership: RefCell::new(membership),
            ownership: RefCell::new(ownership),
            detector: RefCell::new(FailureDetector::new(dynkv_ring::PhiConfig::default())),
            heartbeats: RefCell::new(Heartbeats::default()),
            gossip_fanout: config.gossip_fanout,
            clock_skew_max_ms: config.clock_skew_max_ms,
            peer_picker: Cell::new(getrandom::u64().map_err(|e| format!("no randomness for gossip: {e}"))? | 1),
            down: RefCell::new(Vec::new()),
            gossip_interval_ms: config.gossip_interval_ms,
            generation: Cell::new(0),
            unpublished: Cell::new(false),
            leaving_rounds: Cell::new(None),
        };
        members.found_genesis()?;
        members.persist()?;
        Ok(members)
    }

    /// Configured peers not heard from yet.
    fn waiting_for(&self) -> Vec<SocketAddr> {
        let membership = self.membership.borrow();
        let known: Vec<SocketAddr> = membership
            .records()
            .filter(|r| r.id != self.me)
            .filter_map(|r| r.address.parse().ok())
            .collect();
        self.peers.iter().copied().filter(|p| !known.contains(p)).collect()
    }

    /// Places the first table once every configured peer is known, unless
    /// this node joins a running cluster (whose table it waits for). The
    /// genesis covers only the configured members, so that every node
    /// forming the cluster computes the same table; later members are
    /// added by the claimant.
    fn found_genesis(&self) -> Result<bool, String> {
        if self.ownership.borrow().is_some() || !self.join.is_empty() || !self.waiting_for().is_empty() {
            return Ok(false);
        }
        let nodes: Vec<_> = {
            let membership = self.membership.borrow();
            let configured = |r: &&NodeRecord| {
                r.id == self.me || r.address.parse().is_ok_and(|a: SocketAddr| self.peers.contains(&a))
            };
            membership
                .records()
                .filter(configured)
                .filter(|r| matches!(r.lifecycle, Lifecycle::Joining | Lifecycle::Up))
                .map(NodeRecord::claim_node)
                .collect()
        };
        let table = claim(None, &nodes, self.q, self.n).map_err(|e| format!("cannot place partitions: {e}"))?;
        *self.ownership.borrow_mut() = Some(Ownership::genesis(table));
        Ok(true)
    }

    pub(crate) fn view(&self) -> Result<ClusterView, String> {
        let forming = match (self.ownership.borrow().is_some(), self.join.is_empty()) {
            (true, _) => None,
            (false, false) => Some(format!(
                "joining: waiting for the cluster's ownership from {}",
                addresses(&self.join)
            )),
            (false, true) => Some(format!(
                "cluster is forming: waiting to hear from peers {}",
                addresses(&self.waiting_for())
            )),
        };
        let mut view = ClusterView::new(
            self.me,
            self.membership.borrow().clone(),
            self.ownership.borrow().clone(),
            forming,
        )?;
        self.generation.set(self.generation.get() + 1);
        view.generation = self.generation.get();
        Ok(view)
    }

    fn persist(&self) -> Result<(), String> {
        write_state(&self.dir.join(MEMBERSHIP_FILE), &self.membership.borrow().encode())?;
        match &*self.ownership.borrow() {
            Some(ownership) => write_state(&self.dir.join(OWNERSHIP_FILE), &ownership.encode()),
            None => Ok(()),
        }
    }

    /// Stores the state and sends every shard a new view.
    async fn publish(&self, shard: &Shard) {
        self.unpublished.set(false);
        if let Err(err) = self.persist() {
            tracing::error!("{err}");
        }
        match self.view() {
            Ok(view) => {
                if view.table.is_some() && shard.view().table.is_none() {
                    tracing::info!(members = view.membership.records().count(), "cluster formed");
                }
                shard.broadcast_view(Arc::new(view)).await;
            }
            Err(err) => tracing::error!("membership changed but cannot be placed: {err}"),
        }
    }

    /// The gossip digest: membership and ownership.
    fn digest(&self) -> u64 {
        let ownership = self.ownership.borrow().as_ref().map_or(0, Ownership::digest);
        let mut bytes = self.membership.borrow().digest().to_le_bytes().to_vec();
        bytes.extend_from_slice(&ownership.to_le_bytes());
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }

    /// The full state: `membership length u32 | membership | ownership`
    /// (ownership empty if this node has none yet).
    pub(crate) fn encoded(&self) -> Vec<u8> {
        let membership = self.membership.borrow().encode();
        let mut out = (membership.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&membership);
        if let Some(ownership) = &*self.ownership.borrow() {
            out.extend_from_slice(&ownership.encode());
        }
        out
    }

    /// Merges a peer's full state; on a change, stores it and sends the
    /// new view to every shard.
    async fn merge_full(&self, shard: &Shard, payload: &[u8]) -> Result<(), String> {
        let malformed = || "malformed gossip state".to_string();
        let len = u32::from_le_bytes(payload.get(..4).ok_or_else(malformed)?.try_into().expect("4 bytes")) as usize;
        let membership = payload.get(4..4 + len).ok_or_else(malformed)?;
        let membership = Membership::decode(membership).map_err(|e| e.to_string())?;
        let ownership = match &payload[4 + len..] {
            [] => None,
            bytes => Some(Ownership::decode(bytes).map_err(|e| e.to_string())?),
        };
        if ownership
            .as_ref()
            .is_some_and(|o| o.current().partition_count() != self.q)
        {
            return Err("a peer's ownership has another partition count".into());
        }
        let mut changed = self.membership.borrow_mut().merge(&membership);
        if let Some(theirs) = ownership {
            let mut ours = self.ownership.borrow_mut();
            match &mut *ours {
                Some(ours) => changed |= ours.merge(&theirs),
                None => {
                    tracing::info!(epoch = theirs.epoch(), "received the cluster's ownership");
                    *ours = Some(theirs);
                    changed = true;
                }
            }
        }
        changed |= self.found_genesis()?;
        if changed {
            self.publish(shard).await;
        }
        Ok(())
    }
    /// A gossip request: `sender u64 | kind u8 | heartbeats | payload`.
    fn request(&self, kind: u8) -> Vec<u8> {
        let mut out = self.me.0.to_le_bytes().to_vec();
        out.push(kind);
        self.heartbeats.borrow().encode(self.me, &mut out);
        match kind {
            GOSSIP_DIGEST => out.extend_from_slice(&self.digest().to_le_bytes()),
            _ => out.extend_from_slice(&self.encoded()),
        }
        out
    }

    /// Takes a peer's heartbeats: the nodes whose beat rose were heard.
    fn take_heartbeats(&self, shard: &Shard, beats: &[(NodeId, u64)]) {
        let heard = {
            let membership = self.membership.borrow();
            let beat_max = crate::server::hints::unix_ms().saturating_add(self.clock_skew_max_ms);
            self.heartbeats
                .borrow_mut()
                .merge(beats, self.me, beat_max, |node| membership.get(node).is_some())
        };
        let now = shard.now_ms();
        let mut detector = self.detector.borrow_mut();
        for node in heard {
            detector.heard(node, now);
        }
    }

    /// Answers a peer's gossip request (on shard 0): merges its heartbeats
    /// and any full state, and answers "same" or ours, with our heartbeats.
    pub(crate) async fn answer(&self, shard: &Shard, request: &[u8]) -> Result<Vec<u8>, String> {
        if request.len() < 9 {
            return Err("a gossip request starts with the sender's id and a kind".into());
        }
        let kind = request[8];
        let (beats, payload) = Heartbeats::decode(&request[9..])?;
        let same = match kind {
            GOSSIP_DIGEST if payload.len() == 8 => {
                u64::from_le_bytes(payload.try_into().expect("8 bytes")) == self.digest()
            }
            GOSSIP_FULL => {
                self.merge_full(shard, payload).await?;
                payload == self.encoded()
            }
            _ => return Err(format!("unknown gossip kind {kind}")),
        };
        // After the state: a sender that just joined is known now.
        self.take_heartbeats(shard, &beats);
        let mut out = vec![if same { GOSSIP_SAME } else { GOSSIP_FULL }];
        self.heartbeats.borrow().encode(self.me, &mut out);
        if !same {
            out.extend_from_slice(&self.encoded());
        }
        Ok(out)
    }

    /// Takes a reply: merges a full state; true if the peer's state lacked
    /// something ours has (so ours should be pushed).
    async fn take_reply(&self, shard: &Shard, reply: &[u8]) -> Result<bool, String> {
        let (&kind, rest) = reply.split_first().ok_or("an empty gossip reply")?;
        let (beats, payload) = Heartbeats::decode(rest)?;
        let differs = match (kind, payload) {
            (GOSSIP_SAME, []) => false,
            (GOSSIP_FULL, payload) => {
                self.merge_full(shard, payload).await?;
                payload != self.encoded()
            }
            _ => return Err("malformed gossip reply".into()),
        };
        self.take_heartbeats(shard, &beats);
        Ok(differs)
    }

    /// One round with a known member over its persistent link: digest,
    /// then full states both ways if they differ.
    fn exchange_timeout(&self) -> Duration {
        Duration::from_millis((self.gossip_interval_ms / 2).clamp(50, EXCHANGE_TIMEOUT_MS_MAX))
    }

    async fn gossip_with(&self, shard: &Shard, node: NodeId) -> Result<(), String> {
        let view = shard.view();
        let addr = view.internode_addr(node, 0);
        let timeout = self.exchange_timeout();
        let call = |body: Vec<u8>| async move {
            let head = Head::request(Opcode::Gossip, 0);
            shard
                .links
                .call_for_value(node, 0, addr, head, (&[], &[], &body), timeout)
                .await
        };
        let reply = call(self.request(GOSSIP_DIGEST)).await?;
        if self.take_reply(shard, &reply).await? {
            let reply = call(self.request(GOSSIP_FULL)).await?;
            self.take_reply(shard, &reply).await?;
        }
        Ok(())
    }

    /// Pushes our full state to a seed known only by address (a fresh
    /// authenticated connection) and merges its answer.
    async fn gossip_with_seed(&self, shard: &Shard, addr: SocketAddr) -> Result<(), String> {
        let timeout = self.exchange_timeout();
        let mut stream = TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        auth::dial(&mut stream, &self.secret, self.me, None, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let conn = Connection::from_stream(stream, addr, &ClientOptions::default());
        let response = conn
            .call(
                Head::request(Opcode::Gossip, 0),
                &[],
                &[],
                &self.request(GOSSIP_FULL),
                timeout,
            )
            .await
            .map_err(|e| e.to_string())?;
        if response.status != Status::Ok as u8 {
            return Err(String::from_utf8_lossy(&response.value).into_owned());
        }
        self.take_reply(shard, &response.value).await.map(|_| ())
    }

    /// Peers (not this node, not gone) and seeds not yet known by id.
    fn targets(&self) -> (Vec<NodeId>, Vec<SocketAddr>) {
        let membership = self.membership.borrow();
        let known: Vec<&NodeRecord> = membership
            .records()
            .filter(|r| r.id != self.me && r.lifecycle != Lifecycle::Left)
            .collect();
        let known_addrs: Vec<SocketAddr> = known.iter().filter_map(|r| r.address.parse().ok()).collect();
        let seeds = self
            .peers
            .iter()
            .chain(&self.join)
            .copied()
            .filter(|p| !known_addrs.contains(p))
            .collect();
        (known.iter().map(|r| r.id).collect(), seeds)
    }

    /// Starts a round: raises this node's heartbeat, and picks the members
    /// to contact among `peers` (see `gossip_peers`).
    fn start_round(&self, peers: &[NodeId]) -> Vec<NodeId> {
        self.heartbeats
            .borrow_mut()
            .beat(self.me, crate::server::hints::unix_ms());
        let down = self.down.borrow();
        gossip_peers(
            peers,
            |node| down.contains(&node),
            self.gossip_fanout,
            || {
                let mut x = self.peer_picker.get();
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.peer_picker.set(x);
                x
            },
        )
    }

    /// Recomputes the down set; sends it to the shards when it changed.
    async fn publish_liveness(&self, shard: &Shard, peers: &[NodeId]) {
        let now = shard.now_ms();
        self.heartbeats
            .borrow_mut()
            .retain(|node| node == self.me || peers.contains(&node));
        let down = {
            let mut detector = self.detector.borrow_mut();
            detector.retain(peers);
            for peer in peers {
                detector.track(*peer, now);
            }
            detector.down(now)
        };
        if *self.down.borrow() == down {
            return;
        }
        for node in down.iter().filter(|n| !self.down.borrow().contains(n)) {
            tracing::warn!(%node, "node is down (no heartbeat of it heard)");
        }
        for node in self.down.borrow().iter().filter(|n| !down.contains(n)) {
            tracing::info!(%node, "node is up again");
        }
        *self.down.borrow_mut() = down.clone();
        shard.broadcast_down(Arc::new(down)).await;
    }
}

impl Members {
    /// The member that plans and commits ownership changes (see
    /// `dynkv_ring::claimant`): none while a member is down.
    fn claimant(&self) -> Option<NodeId> {
        dynkv_ring::claimant(&self.membership.borrow(), &self.down.borrow())
    }

    fn lifecycle(&self) -> Option<Lifecycle> {
        self.membership.borrow().get(self.me).map(|r| r.lifecycle)
    }

    /// Changes this node's own lifecycle, raising its incarnation.
    fn set_lifecycle(&self, lifecycle: Lifecycle) {
        let mut membership = self.membership.borrow_mut();
        if let Some(mut record) = membership.get(self.me).cloned() {
            record.lifecycle = lifecycle;
            record.incarnation += 1;
            membership.merge_record(record);
        }
    }

    /// Work after each gossip round: the claimant's step, the end of a
    /// leave, and confirmations not yet in a view. True when this node
    /// should stop (it has left, or was removed).
    async fn after_round(&self, shard: &Shard) -> bool {
        let mut changed = self.unpublished.replace(false);
        if self.claimant() == Some(self.me) {
            let nodes = self.membership.borrow().placement_nodes();
            let next = match &*self.ownership.borrow() {
                Some(ownership) => ownership.next(&nodes, self.n, self.me),
                None => Ok(None),
            };
            match next {
                Ok(Some(next)) => {
                    let (done, total) = next.progress();
                    match next.pending() {
                        Some(_) => tracing::info!(epoch = next.epoch(), total, "ownership change planned"),
                        None => tracing::info!(epoch = next.epoch(), done, "ownership change committed"),
                    }
                    *self.ownership.borrow_mut() = Some(next);
                    changed = true;
                }
                Ok(None) => {}
                Err(err) => tracing::error!("cannot plan ownership: {err}"),
            }
        }
        // Nothing left to hand off: settled without this node, or never
        // given any partition (it left before its join was placed).
        let settled_without_me = self
            .ownership
            .borrow()
            .as_ref()
            .is_none_or(|o| o.current().load(self.me) == 0 && o.pending().is_none_or(|p| p.load(self.me) == 0));
        match self.lifecycle() {
            Some(Lifecycle::Leaving) if settled_without_me => {
                tracing::info!("every partition has moved off this node: it has left the cluster");
                self.set_lifecycle(Lifecycle::Left);
                self.leaving_rounds.set(Some(ROUNDS_AFTER_LEAVING));
                changed = true;
            }
            Some(Lifecycle::Left) if self.leaving_rounds.get().is_none() => {
                tracing::error!("this node was removed from the cluster; stopping");
                return true;
            }
            _ => {}
        }
        if changed {
            self.publish(shard).await;
        }
        match self.leaving_rounds.get() {
            Some(0) => true,
            Some(n) => {
                self.leaving_rounds.set(Some(n - 1));
                false
            }
            None => false,
        }
    }

    /// Records that this node holds `partition`'s data (an incoming
    /// replica's transfer is complete); gossip carries it to the claimant.
    pub(crate) fn confirm(&self, partition: u32) {
        let confirmed = self
            .ownership
            .borrow_mut()
            .as_mut()
            .is_some_and(|o| o.confirm(partition, self.me));
        if confirmed {
            self.unpublished.set(true);
        }
    }

    /// An operator's command (`dynkv ctl`): `status`, `leave` or `remove`.
    pub(crate) async fn admin(&self, shard: &Shard, command: &str, argument: &str) -> Result<String, String> {
        // Ids as status shows them (16 hex digits), or in decimal.
        let node = || -> Result<NodeId, String> {
            let parsed = match argument.trim() {
                "" => return Ok(self.me),
                text if text.len() == 16 => u64::from_str_radix(text, 16),
                text => text.parse(),
            };
            parsed
                .map(NodeId)
                .map_err(|_| format!("{argument:?} is not a node id (16 hex digits, or decimal)"))
        };
        match command {
            "status" => Ok(self.status(shard)),
            "leave" => {
                let node = node()?;
                if node != self.me {
                    return self.relay_admin(shard, node, command).await;
                }
                match self.lifecycle() {
                    Some(Lifecycle::Leaving) => return Ok(format!("node {node} is already leaving")),
                    Some(Lifecycle::Up | Lifecycle::Joining) => {}
                    other => return Err(format!("node {node} cannot leave from state {other:?}")),
                }
                if self.membership.borrow().placement_nodes().len() <= 1 {
                    return Err("the last node of a cluster cannot leave".into());
                }
                self.set_lifecycle(Lifecycle::Leaving);
                self.publish(shard).await;
                tracing::info!("leaving the cluster: handing off every partition");
                Ok(format!(
                    "node {node} is leaving: it hands off its partitions, then stops (watch `dynkv ctl status`)"
                ))
            }
            "remove" => {
                let node = node()?;
                if node == self.me {
                    return Err("a node cannot remove itself; use `dynkv ctl leave`".into());
                }
                let record = self
                    .membership
                    .borrow()
                    .get(node)
                    .cloned()
                    .ok_or_else(|| format!("node {node} is not a member"))?;
                if record.lifecycle == Lifecycle::Left {
                    return Ok(format!("node {node} is already gone"));
                }
                if !self.down.borrow().contains(&node) {
                    return Err(format!(
                        "node {node} is up; `dynkv ctl leave {node}` hands its data off before it stops"
                    ));
                }
                self.membership.borrow_mut().merge_record(NodeRecord {
                    lifecycle: Lifecycle::Left,
                    incarnation: record.incarnation + 1,
                    ..record
                });
                self.publish(shard).await;
                tracing::warn!(%node, "node removed by an operator: its partitions are re-replicated");
                Ok(format!(
                    "node {node} removed: its partitions are copied from the other replicas (watch `dynkv ctl status`)"
                ))
            }
            _ => Err(format!("unknown admin command {command:?} (status, leave, remove)")),
        }
    }

    /// Sends an admin command to the node it concerns.
    async fn relay_admin(&self, shard: &Shard, node: NodeId, command: &str) -> Result<String, String> {
        let view = shard.view();
        let head = Head::request(Opcode::Admin, 0);
        let reply = shard
            .links
            .call_for_value(
                node,
                0,
                view.internode_addr(node, 0),
                head,
                (command.as_bytes(), &[], &[]),
                Duration::from_millis(EXCHANGE_TIMEOUT_MS_MAX),
            )
            .await?;
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }

    /// The cluster as this node sees it, for `dynkv ctl status`.
    fn status(&self, shard: &Shard) -> String {
        let mut out = String::new();
        let ownership = self.ownership.borrow();
        match &*ownership {
            None => {
                let reason = shard.view().forming_reason().unwrap_or_default();
                let _ = writeln!(out, "ownership: none yet ({reason})");
            }
            Some(o) => {
                let _ = write!(out, "ownership: epoch {}, ", o.epoch());
                match o.pending() {
                    None => {
                        let _ = writeln!(out, "settled");
                    }
                    Some(_) => {
                        let (done, total) = o.progress();
                        let _ = writeln!(
                            out,
                            "moving: {done} of {total} incoming replicas hold their data (claimant {})",
                            o.claimant()
                        );
                    }
                }
            }
        }
        let down = self.down.borrow();
        for r in self.membership.borrow().records() {
            let owned = ownership.as_ref().map_or(0, |o| o.current().load(r.id));
            let target = ownership
                .as_ref()
                .and_then(|o| o.pending())
                .map(|p| format!(" -> {}", p.load(r.id)))
                .unwrap_or_default();
            let liveness = if r.id == self.me {
                "this node"
            } else if down.contains(&r.id) {
                "down"
            } else {
                "up"
            };
            let _ = writeln!(
                out,
                "  node {} {} {:?} ({liveness}), weight {}, zone {}, {} shard(s), replicas {owned}{target}",
                r.id,
                r.address,
                r.lifecycle,
                r.weight,
                r.zone.0,
                r.shard_ports.len()
            );
        }
        out
    }
}

/// Gossips until shutdown: a round with `gossip_fanout` random members and
/// every unknown seed at once, every `gossip_interval_ms` from the start of
/// the last round.
pub(crate) async fn run(shard: Rc<Shard>, members: Rc<Members>) {
    loop {
        let started = std::time::Instant::now();
        let (peers, seeds) = members.targets();
        let chosen = members.start_round(&peers);
        let with_seeds = seeds.iter().map(|&seed| {
            let (members, shard) = (members.clone(), shard.clone());
            async move {
                if let Err(err) = members.gossip_with_seed(&shard, seed).await {
                    tracing::debug!(%seed, "gossip with a seed failed: {err}");
                }
            }
        });
        let with_peers = chosen.iter().map(|&node| {
            let (members, shard) = (members.clone(), shard.clone());
            async move {
                if let Err(err) = members.gossip_with(&shard, node).await {
                    tracing::debug!(%node, "gossip failed: {err}");
                }
            }
        });
        futures::future::join(
            futures::future::join_all(with_seeds),
            futures::future::join_all(with_peers),
        )
        .await;
        members.publish_liveness(&shard, &peers).await;
        if members.after_round(&shard).await {
            crate::server::shutdown::request();
            return;
        }
        let interval = if shard.view().table.is_some() {
            members.gossip_interval_ms
        } else {
            FORMING_PASS_MS
        };
        let pause = Duration::from_millis(interval).saturating_sub(started.elapsed());
        if shard.stopping.sleep(pause).await {
            return;
        }
    }
}
