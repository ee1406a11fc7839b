//! What a shard knows about the cluster: the membership, and the ownership
//! (current and pending partition tables) gossiped with it. Shard 0 builds
//! a new view whenever either changes and sends it to every shard, which
//! keeps its own copy (an `Rc`, so no reference count is shared between
//! cores) and swaps it in whole; requests read the current view without
//! locks or atomics.
//!
//! Until the node has an ownership (every configured peer heard from, or
//! the cluster's received after `--join`), it is *forming* and refuses
//! requests with "unavailable".

use std::net::SocketAddr;

use dynkv_ring::{Lifecycle, Membership, NodeId, Owner, Ownership, PartitionTable, PreferenceList};

/// Most fallbacks a preference list carries.
const FALLBACKS_MAX: usize = 4;

#[derive(Clone)]
pub(crate) struct ClusterView {
    /// Increases with every view shard 0 makes: a shard keeps the newest
    /// it received, whatever order the mesh delivered them in.
    pub(crate) generation: u64,
    pub(crate) me: NodeId,
    pub(crate) membership: Membership,
    /// The current table (`None` while forming).
    pub(crate) table: Option<PartitionTable>,
    /// Current and pending tables, and confirmed transfers.
    pub(crate) ownership: Option<Ownership>,
    /// `ownership`'s plan (epoch, digest of the tables), computed once
    /// here: it encodes and hashes both tables.
    plan: Option<(u64, u64)>,
    /// Why requests are refused, while forming.
    forming: Option<String>,
    /// Shards of this node.
    shards: u16,
}

impl ClusterView {
    /// A view of `membership` and `ownership` for node `me`; `forming`
    /// says why there is no ownership yet.
    pub(crate) fn new(
        me: NodeId,
        membership: Membership,
        ownership: Option<Ownership>,
        forming: Option<String>,
    ) -> Result<ClusterView, String> {
        let shards = membership
            .get(me)
            .map(|r| r.shard_ports.len() as u16)
            .ok_or("the membership lacks this node's own record")?;
        Ok(ClusterView {
            generation: 0,
            me,
            table: ownership.as_ref().map(|o| o.current().clone()),
            plan: ownership.as_ref().map(Ownership::plan),
            forming: if ownership.is_some() {
                None
            } else {
                Some(forming.unwrap_or_else(|| "cluster is forming".into()))
            },
            ownership,
            membership,
            shards,
        })
    }

    /// The ownership plan this view shows (`None` while forming).
    pub(crate) fn plan(&self) -> Option<(u64, u64)> {
        self.plan
    }

    /// Why requests are refused, while forming.
    pub(crate) fn forming_reason(&self) -> Option<String> {
        self.forming.clone()
    }

    /// Whether the cluster is still forming (see `forming_reason`).
    pub(crate) fn is_forming(&self) -> bool {
        self.forming.is_some()
    }

    /// Replicas of `partition` that are receiving its data (owners in the
    /// pending table that do not own it now).
    pub(crate) fn incoming(&self, partition: u32) -> Vec<Owner> {
        self.ownership
            .as_ref()
            .map_or_else(Vec::new, |o| o.incoming(partition).collect())
    }

    /// True if shard `shard` of this node holds `partition` as a current
    /// owner or an incoming one (which accepts copies while it receives).
    pub(crate) fn is_replica_shard(&self, partition: u32, shard: u16) -> bool {
        let me = Owner { node: self.me, shard };
        self.primaries(partition).contains(&me) || self.incoming(partition).contains(&me)
    }

    /// This node's shard for `partition` if it is a replica: a current
    /// owner, else an incoming one.
    pub(crate) fn local_replica_shard(&self, partition: u32) -> Option<u16> {
        self.local_owner_shard(partition).or_else(|| {
            self.incoming(partition)
                .into_iter()
                .find(|o| o.node == self.me)
                .map(|o| o.shard)
        })
    }

    /// The owners of `partition`, in preference order (empty while forming).
    pub(crate) fn primaries(&self, partition: u32) -> &[Owner] {
        self.table.as_ref().map_or(&[], |t| t.owners(partition))
    }

    /// This node's shard for `partition`, if this node is a primary of it.
    pub(crate) fn local_owner_shard(&self, partition: u32) -> Option<u16> {
        self.primaries(partition)
            .iter()
            .find(|o| o.node == self.me)
            .map(|o| o.shard)
    }

    /// The shard a client should send a key of `partition` to: the owning
    /// shard if this node is a primary, else a spread over all shards.
    pub(crate) fn client_shard(&self, partition: u32) -> u16 {
        self.local_owner_shard(partition)
            .unwrap_or((partition % u32::from(self.shards.max(1))) as u16)
    }

    /// Primaries and fallbacks of `partition`, skipping `is_down` nodes as
    /// fallbacks.
    pub(crate) fn preference(&self, partition: u32, is_down: impl Fn(NodeId) -> bool) -> Option<PreferenceList> {
        let table = self.table.as_ref()?;
        Some(PreferenceList::new(table, partition, is_down, FALLBACKS_MAX))
    }

    /// The shard of `node` that serves `partition`: its owning shard if it
    /// is a primary or incoming replica, else (for hints) a spread over its shards.
    pub(crate) fn shard_of(&self, node: NodeId, partition: u32) -> u16 {
        if let Some(owner) = self.primaries(partition).iter().find(|o| o.node == node) {
            return owner.shard;
        }
        if let Some(owner) = self.incoming(partition).into_iter().find(|o| o.node == node) {
            return owner.shard;
        }
        let shards = self.membership.get(node).map_or(1, |r| r.shard_ports.len().max(1));
        (partition as usize % shards) as u16
    }

    /// The internode address of `node`'s shard `shard`.
    pub(crate) fn internode_addr(&self, node: NodeId, shard: u16) -> Option<SocketAddr> {
        let record = self.membership.get(node)?;
        if record.lifecycle == Lifecycle::Left {
            return None;
        }
        let base: SocketAddr = record.address.parse().ok()?;
        Some(SocketAddr::new(base.ip(), base.port().checked_add(shard)?))
    }
}
