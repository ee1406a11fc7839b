//! Preference lists: the N owners of a key's partition, then fallbacks for
//! sloppy quorum.
//!
//! Fallbacks are found by walking the following partitions in order and
//! taking their owners that are neither primaries nor reported down, so a
//! failed node's load spreads over many nodes and every node computes the
//! same list.

use crate::claim::{Owner, PartitionTable};
use crate::node::NodeId;

/// Who should hold a key: primaries in preference order, then fallbacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreferenceList {
    pub partition: u32,
    /// The partition's owners, whether up or down.
    pub primaries: Vec<Owner>,
    /// Distinct, healthy non-owners, in the order they should be tried.
    pub fallbacks: Vec<Owner>,
}

impl PreferenceList {
    /// Computes the list for `partition` with up to `fallbacks_max`
    /// fallbacks, skipping nodes for which `is_down` is true.
    pub fn new(
        table: &PartitionTable,
        partition: u32,
        is_down: impl Fn(NodeId) -> bool,
        fallbacks_max: usize,
    ) -> PreferenceList {
        let q = table.partition_count().get();
        assert!(partition < q, "partition {partition} out of range for {q}");
        let primaries = table.owners(partition).to_vec();
        let members = table.members().len();
        let mut fallbacks: Vec<Owner> = Vec::with_capacity(fallbacks_max);
        // Down nodes passed over. Once every member was seen (as a primary,
        // a fallback or a down node), no fallback is left to find, so a
        // small cluster stops early instead of walking the whole ring.
        let mut down: Vec<NodeId> = Vec::new();
        for step in 1..q {
            if fallbacks.len() >= fallbacks_max || primaries.len() + fallbacks.len() + down.len() >= members {
                break;
            }
            let next = (partition + step) & (q - 1);
            for owner in table.owners(next) {
                let seen =
                    primaries.iter().chain(&fallbacks).any(|o| o.node == owner.node) || down.contains(&owner.node);
                if seen {
                    continue;
                }
                if is_down(owner.node) {
                    down.push(owner.node);
                } else if fallbacks.len() < fallbacks_max {
                    fallbacks.push(*owner);
                }
            }
        }
        PreferenceList {
            partition,
            primaries,
            fallbacks,
        }
    }

    /// The first N healthy nodes: up primaries, then as many fallbacks as
    /// there are down primaries. This is where a sloppy-quorum write goes.
    pub fn healthy_targets(&self, is_down: impl Fn(NodeId) -> bool) -> Vec<Owner> {
        let up: Vec<Owner> = self.primaries.iter().copied().filter(|o| !is_down(o.node)).collect();
        let missing = self.primaries.len() - up.len();
        up.into_iter()
            .chain(self.fallbacks.iter().copied().take(missing))
            .collect()
    }
}
