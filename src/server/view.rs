//! What a shard knows about the cluster: the membership, and the partition
//! table computed from it. Shard 0 builds a new view whenever membership
//! changes and sends it to every shard, which keeps its own copy (an `Rc`,
//! so no reference count is shared between cores) and swaps it in whole;
//! requests read the current view without locks or atomics.
//!
//! The table is computed only once every configured peer has been heard
//! from (directly, or through the membership kept in the data directory),
//! so that every node computes it from the same membership. Until then the
//! node is *forming* and refuses requests with "unavailable".

use std::net::SocketAddr;

use dynkv_ring::{claim, Lifecycle, Membership, NodeId, Owner, PartitionCount, PartitionTable, PreferenceList};

/// Most fallbacks a preference list carries.
const FALLBACKS_MAX: usize = 4;

#[derive(Clone)]
pub(crate) struct ClusterView {
    /// Increases with every view shard 0 makes: a shard keeps the newest
    /// it received, whatever order the mesh delivered them in.
    pub(crate) generation: u64,
    pub(crate) me: NodeId,
    pub(crate) membership: Membership,
    /// `None` while forming.
    pub(crate) table: Option<PartitionTable>,
    /// Configured peers not heard from yet.
    pub(crate) waiting_for: Vec<SocketAddr>,
    /// Shards of this node.
    shards: u16,
}

impl ClusterView {
    /// A view of `membership` for node `me`, which expects to hear from
    /// `peers` before it places anything.
    pub(crate) fn new(
        me: NodeId,
        q: PartitionCount,
        n: usize,
        membership: Membership,
        peers: &[SocketAddr],
    ) -> Result<ClusterView, String> {
        let known: Vec<SocketAddr> = membership
            .records()
            .filter(|r| r.id != me)
            .filter_map(|r| r.address.parse().ok())
            .collect();
        let waiting_for: Vec<SocketAddr> = peers.iter().copied().filter(|p| !known.contains(p)).collect();
        let shards = membership
            .get(me)
            .map(|r| r.shard_ports.len() as u16)
            .ok_or("the membership lacks this node's own record")?;
        let table = if waiting_for.is_empty() {
            let nodes = membership.placement_nodes();
            Some(claim(None, &nodes, q, n.min(nodes.len())).map_err(|e| format!("cannot place partitions: {e}"))?)
        } else {
            None
        };
        Ok(ClusterView {
            generation: 0,
            me,
            membership,
            table,
            waiting_for,
            shards,
        })
    }

    /// Why requests are refused, while forming.
    pub(crate) fn forming_reason(&self) -> Option<String> {
        self.table.is_none().then(|| {
            let waiting: Vec<String> = self.waiting_for.iter().map(ToString::to_string).collect();
            format!("cluster is forming: waiting to hear from peers {}", waiting.join(", "))
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
    /// is a primary, else (for hints) a spread over its shards.
    pub(crate) fn shard_of(&self, node: NodeId, partition: u32) -> u16 {
        if let Some(owner) = self.primaries(partition).iter().find(|o| o.node == node) {
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
