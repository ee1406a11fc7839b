//! Membership and liveness, kept by shard 0: gossip with the configured
//! seeds (`peers`) and every known member, and a failure detector.
//!
//! At start the node loads the membership it last knew from its data
//! directory and adds its own record (with a raised incarnation, so a
//! changed address wins). Every `gossip_interval_ms` it exchanges with each
//! known member over its persistent internode link, digest first: a peer
//! whose digest matches answers "same"; otherwise the full states are
//! swapped and merged (push-pull). Seeds not yet known by id get the full
//! state over a fresh authenticated connection. Any change is written back
//! to the data directory and sent to every shard as a new [`ClusterView`].
//!
//! Every exchange, either way, counts as hearing from that peer; a phi-
//! accrual detector per peer (`dynkv::cluster::liveness`) turns silence into
//! "down", and the down set goes to every shard, whose coordinators then
//! send that node's copies straight to fallbacks. Contacting every member
//! each round suits clusters of tens of nodes; larger ones want a random
//! subset (Dynamo's one peer a second).

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use dynkv::cluster::liveness::FailureDetector;
use dynkv_net::{ClientOptions, Connection, Head, Opcode, Status};
use dynkv_ring::{Lifecycle, Liveness, Membership, NodeId, NodeRecord, PartitionCount, ZoneId};
use glommio::net::TcpStream;

use crate::config::ServeConfig;
use crate::server::auth;
use crate::server::shard::Shard;
use crate::server::view::ClusterView;

const MEMBERSHIP_FILE: &str = "membership";
/// Pause between gossip rounds while peers are missing (then
/// `gossip_interval_ms`).
const FORMING_PASS_MS: u64 = 200;
/// Longest one gossip exchange may take: well under the round interval, so
/// that one unreachable peer cannot stretch the rounds (and the heartbeat
/// intervals every other peer's detector sees).
const EXCHANGE_TIMEOUT_MS_MAX: u64 = 2_000;
/// Gossip payload kinds: a digest, a full membership, or "same".
const GOSSIP_DIGEST: u8 = 1;
const GOSSIP_FULL: u8 = 2;
const GOSSIP_SAME: u8 = 0;

pub(crate) struct Members {
    me: NodeId,
    q: PartitionCount,
    n: usize,
    peers: Vec<SocketAddr>,
    path: PathBuf,
    secret: Vec<u8>,
    membership: RefCell<Membership>,
    detector: RefCell<FailureDetector>,
    /// The down set last sent to the shards.
    down: RefCell<Vec<NodeId>>,
    gossip_interval_ms: u64,
    /// Views made so far (each view's generation).
    generation: std::cell::Cell<u64>,
}

/// Resolves the configured peer addresses.
fn resolve_peers(config: &ServeConfig) -> Result<Vec<SocketAddr>, String> {
    config
        .peers
        .iter()
        .map(|p| {
            p.to_socket_addrs()
                .map_err(|e| format!("peer {p}: {e}"))?
                .next()
                .ok_or_else(|| format!("peer {p} resolves to no address"))
        })
        .collect()
}

impl Members {
    /// Loads the stored membership and adds this node's record.
    pub(crate) fn open(config: &ServeConfig, me: NodeId, q: PartitionCount) -> Result<Members, String> {
        let peers = resolve_peers(config)?;
        if !peers.is_empty() && config.listen.is_unspecified() {
            return Err("a cluster node must listen on a specific address (other nodes dial it)".into());
        }
        let path = config.data_dir.join(MEMBERSHIP_FILE);
        let mut membership = match std::fs::read(&path) {
            Ok(bytes) => Membership::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Membership::default(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let incarnation = membership.get(me).map_or(1, |r| r.incarnation + 1);
        let shards = config.shards as u16;
        membership.merge_record(NodeRecord {
            id: me,
            incarnation,
            lifecycle: Lifecycle::Up,
            liveness: Liveness::Alive,
            address: SocketAddr::new(config.listen, config.internode_base_port).to_string(),
            shard_ports: (0..shards).map(|s| config.base_port + s).collect(),
            weight: u32::from(shards),
            zone: ZoneId(0),
        });
        let members = Members {
            me,
            q,
            n: config.n,
            peers,
            path,
            secret: config.cluster_secret.as_bytes().to_vec(),
            membership: RefCell::new(membership),
            detector: RefCell::new(FailureDetector::new(dynkv_ring::PhiConfig::default())),
            down: RefCell::new(Vec::new()),
            gossip_interval_ms: config.gossip_interval_ms,
            generation: std::cell::Cell::new(0),
        };
        members.persist()?;
        Ok(members)
    }

    pub(crate) fn view(&self) -> Result<ClusterView, String> {
        let mut view = ClusterView::new(self.me, self.q, self.n, self.membership.borrow().clone(), &self.peers)?;
        self.generation.set(self.generation.get() + 1);
        view.generation = self.generation.get();
        Ok(view)
    }

    pub(crate) fn encoded(&self) -> Vec<u8> {
        self.membership.borrow().encode()
    }

    fn persist(&self) -> Result<(), String> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, self.membership.borrow().encode())
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| format!("cannot store membership in {}: {e}", self.path.display()))
    }

    /// Merges a peer's membership; on a change, stores it and sends the new
    /// view to every shard.
    pub(crate) async fn merge(&self, shard: &Shard, other: &Membership) {
        if !self.membership.borrow_mut().merge(other) {
            return;
        }
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

    /// A gossip request: `sender u64 | kind u8 | payload`.
    fn request(&self, kind: u8) -> Vec<u8> {
        let mut out = self.me.0.to_le_bytes().to_vec();
        out.push(kind);
        match kind {
            GOSSIP_DIGEST => out.extend_from_slice(&self.membership.borrow().digest().to_le_bytes()),
            _ => out.extend_from_slice(&self.encoded()),
        }
        out
    }

    /// Answers a peer's gossip request (on shard 0): records that the
    /// sender was heard, merges a full state, and answers "same" or ours.
    pub(crate) async fn answer(&self, shard: &Shard, request: &[u8]) -> Result<Vec<u8>, String> {
        if request.len() < 9 {
            return Err("a gossip request starts with the sender's id and a kind".into());
        }
        let sender = NodeId(u64::from_le_bytes(request[..8].try_into().expect("8 bytes")));
        let (kind, payload) = (request[8], &request[9..]);
        let same = match kind {
            GOSSIP_DIGEST if payload.len() == 8 => {
                u64::from_le_bytes(payload.try_into().expect("8 bytes")) == self.membership.borrow().digest()
            }
            GOSSIP_FULL => {
                let theirs = Membership::decode(payload).map_err(|e| e.to_string())?;
                self.merge(shard, &theirs).await;
                theirs.digest() == self.membership.borrow().digest()
            }
            _ => return Err(format!("unknown gossip kind {kind}")),
        };
        if self.membership.borrow().get(sender).is_some() {
            self.detector.borrow_mut().heard(sender, shard.now_ms());
        }
        Ok(if same { vec![GOSSIP_SAME] } else { self.request_reply() })
    }

    fn request_reply(&self) -> Vec<u8> {
        let mut out = vec![GOSSIP_FULL];
        out.extend_from_slice(&self.encoded());
        out
    }

    /// Takes a reply: merges a full state; true if the peer's state lacked
    /// something ours has (so ours should be pushed).
    async fn take_reply(&self, shard: &Shard, reply: &[u8]) -> Result<bool, String> {
        match reply.split_first() {
            Some((&GOSSIP_SAME, [])) => Ok(false),
            Some((&GOSSIP_FULL, payload)) => {
                let theirs = Membership::decode(payload).map_err(|e| e.to_string())?;
                self.merge(shard, &theirs).await;
                Ok(theirs.digest() != self.membership.borrow().digest())
            }
            _ => Err("malformed gossip reply".into()),
        }
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
        self.detector.borrow_mut().heard(node, shard.now_ms());
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
            .copied()
            .filter(|p| !known_addrs.contains(p))
            .collect();
        (known.iter().map(|r| r.id).collect(), seeds)
    }

    /// Recomputes the down set; sends it to the shards when it changed.
    async fn publish_liveness(&self, shard: &Shard, peers: &[NodeId]) {
        let now = shard.now_ms();
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
            tracing::warn!(%node, "node is down (no answer to gossip)");
        }
        for node in self.down.borrow().iter().filter(|n| !down.contains(n)) {
            tracing::info!(%node, "node is up again");
        }
        *self.down.borrow_mut() = down.clone();
        shard.broadcast_down(Arc::new(down)).await;
    }
}

/// Gossips until shutdown: a round with every member and unknown seed at
/// once, every `gossip_interval_ms` from the start of the last round.
pub(crate) async fn run(shard: Rc<Shard>, members: Rc<Members>) {
    loop {
        let started = std::time::Instant::now();
        let (peers, seeds) = members.targets();
        let with_seeds = seeds.iter().map(|&seed| {
            let (members, shard) = (members.clone(), shard.clone());
            async move {
                if let Err(err) = members.gossip_with_seed(&shard, seed).await {
                    tracing::debug!(%seed, "gossip with a seed failed: {err}");
                }
            }
        });
        let with_peers = peers.iter().map(|&node| {
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
