//! Node identity and what placement needs to know about a node.

use std::fmt;

/// Largest capacity weight a node may declare.
pub const WEIGHT_MAX: u32 = 1 << 16;
/// Largest number of shards (cores) per node.
pub const SHARDS_MAX: u16 = 1024;

/// A node's permanent identity, chosen once when its data directory is
/// created. Placement and membership order nodes by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A failure domain (rack, room, site). Replicas of a partition go to
/// distinct zones when there are at least N of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ZoneId(pub u32);

/// A node as placement sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimNode {
    pub id: NodeId,
    /// Relative capacity; partitions are owned in proportion to it. By
    /// default a node's shard count.
    pub weight: u32,
    pub zone: ZoneId,
    /// Shards (executors) on the node; its partitions are split evenly
    /// among them.
    pub shards: u16,
}

impl ClaimNode {
    /// A node whose weight is its shard count, in the default zone.
    pub fn new(id: u64, shards: u16) -> ClaimNode {
        ClaimNode {
            id: NodeId(id),
            weight: u32::from(shards),
            zone: ZoneId(0),
            shards,
        }
    }
}
