//! `dynkv-ring`: who owns a key, and who is alive.
//!
//! Pure logic: no I/O, no clocks (time is an argument), no randomness that
//! is not derived from the inputs. Every function is deterministic, so a
//! seeded simulation can drive a whole cluster, and every node with the same
//! view computes the same answers.
//!
//! - [`PartitionCount`]: keys → partitions (xxh3-64, Q equal ranges).
//! - [`claim`]: membership (+ previous table) → [`PartitionTable`], balanced by
//!   capacity weight, minimal movement, distinct nodes and zones, split over
//!   each node's shards.
//! - [`PreferenceList`]: owners, then fallbacks for sloppy quorum.
//! - [`Membership`]: the gossiped state, a join-semilattice.
//! - [`Ownership`]: the current table, the pending one during a change,
//!   and which new replicas hold their data.
//! - [`PhiAccrual`]: the failure detector.
//!
//! ```
//! use dynkv_ring::{claim, ClaimNode, PartitionCount};
//!
//! let nodes = [ClaimNode::new(1, 4), ClaimNode::new(2, 4), ClaimNode::new(3, 8)];
//! let table = claim(None, &nodes, PartitionCount::default(), 3).unwrap();
//! let (partition, owners) = table.owners_of_key(b"user:42");
//! assert_eq!(owners.len(), 3);
//! assert!(partition < 1024);
//! ```

mod claim;
mod error;
mod membership;
mod node;
mod ownership;
mod partition;
mod phi;
mod preference;

pub use claim::{claim, ideal_load, Owner, PartitionTable, NODES_MAX, REPLICAS_MAX};
pub use error::RingError;
pub use membership::{Lifecycle, Liveness, Membership, NodeRecord, ADDRESS_MAX_BYTES};
pub use node::{ClaimNode, NodeId, ZoneId, SHARDS_MAX, WEIGHT_MAX};
pub use ownership::{claimant, Ownership, GENESIS_CLAIMANT};
pub use partition::{PartitionCount, PARTITIONS_DEFAULT, PARTITIONS_MAX};
pub use phi::{PhiAccrual, PhiConfig};
pub use preference::PreferenceList;
