//! Typed errors of placement and membership. Each names the offending value.

use crate::node::NodeId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("partition count {0} must be a power of two between 1 and {max}", max = crate::partition::PARTITIONS_MAX)]
    PartitionCount(u64),
    #[error("replication factor N = {0} must be between 1 and {max}", max = crate::claim::REPLICAS_MAX)]
    Replicas(usize),
    #[error("node {node} has capacity weight {weight}; weights must be between 1 and {max}", max = crate::node::WEIGHT_MAX)]
    Weight { node: NodeId, weight: u32 },
    #[error("node {node} has {shards} shards; a node needs between 1 and {max}", max = crate::node::SHARDS_MAX)]
    Shards { node: NodeId, shards: u16 },
    #[error("node id {node} appears twice with different addresses ({first} and {second})")]
    DuplicateNode {
        node: NodeId,
        first: String,
        second: String,
    },
    #[error("node id {node} appears twice")]
    DuplicateId { node: NodeId },
    #[error("cannot place partitions on an empty membership")]
    NoNodes,
    #[error("{count} nodes exceed the limit of {max}", max = crate::claim::NODES_MAX)]
    TooManyNodes { count: usize },
    #[error("malformed membership encoding: {0}")]
    Malformed(&'static str),
    #[error("partition {partition} is out of range for a ring of {q} partitions")]
    PartitionOutOfRange { partition: u32, q: u32 },
}
