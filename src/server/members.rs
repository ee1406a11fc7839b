//! Membership from a seed list (`peers`), kept by shard 0.
//!
//! At start the node loads the membership it last knew from its data
//! directory, adds its own record (with a raised incarnation, so a changed
//! address wins), and then exchanges memberships with every configured peer
//! over an authenticated internode connection: a short pass until every
//! peer has been heard from, then a slow one. Any change is written back to
//! the data directory and sent to every shard as a new [`ClusterView`].
//!
//! This is the one membership source of this version; gossip with a failure
//! detector will replace the seed exchange behind the same interface
//! (`Members::merge` and the views it produces).

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use dynkv_net::{ClientOptions, Connection, Head, Opcode, Status};
use dynkv_ring::{Lifecycle, Liveness, Membership, NodeId, NodeRecord, PartitionCount, ZoneId};
use glommio::net::TcpStream;

use crate::config::ServeConfig;
use crate::server::auth;
use crate::server::shard::Shard;
use crate::server::view::ClusterView;

const MEMBERSHIP_FILE: &str = "membership";
/// Pause between exchange passes while peers are missing, and after.
const FORMING_PASS_MS: u64 = 200;
const STEADY_PASS_MS: u64 = 5_000;
const EXCHANGE_TIMEOUT_MS: u64 = 2_000;

pub(crate) struct Members {
    me: NodeId,
    q: PartitionCount,
    n: usize,
    peers: Vec<SocketAddr>,
    path: PathBuf,
    secret: Vec<u8>,
    membership: RefCell<Membership>,
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
        };
        members.persist()?;
        Ok(members)
    }

    pub(crate) fn view(&self) -> Result<ClusterView, String> {
        ClusterView::new(self.me, self.q, self.n, self.membership.borrow().clone(), &self.peers)
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

    /// One exchange with a peer: send ours, merge theirs.
    async fn exchange(&self, addr: SocketAddr) -> Result<Membership, String> {
        let timeout = Duration::from_millis(EXCHANGE_TIMEOUT_MS);
        let mut stream = TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        auth::dial(&mut stream, &self.secret, self.me, None, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let conn = Connection::from_stream(stream, addr, &ClientOptions::default());
        let response = conn
            .call(Head::request(Opcode::Gossip, 0), &[], &[], &self.encoded(), timeout)
            .await
            .map_err(|e| e.to_string())?;
        if response.status != Status::Ok as u8 {
            return Err(String::from_utf8_lossy(&response.value).into_owned());
        }
        Membership::decode(&response.value).map_err(|e| e.to_string())
    }
}

/// Exchanges membership with the configured peers until shutdown.
pub(crate) async fn run(shard: Rc<Shard>, members: Rc<Members>) {
    loop {
        for &peer in &members.peers {
            match members.exchange(peer).await {
                Ok(theirs) => members.merge(&shard, &theirs).await,
                Err(err) => tracing::debug!(%peer, "membership exchange failed: {err}"),
            }
        }
        let pause = if shard.view().table.is_some() {
            STEADY_PASS_MS
        } else {
            FORMING_PASS_MS
        };
        if shard.stopping.sleep(Duration::from_millis(pause)).await {
            return;
        }
    }
}
