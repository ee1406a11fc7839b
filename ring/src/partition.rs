//! Keys to partitions: the 64-bit xxh3 space cut into Q equal ranges
//! (Dynamo's strategy 3). Q is a power of two, so the partition is the top
//! log2(Q) bits of the hash.

use xxhash_rust::xxh3::xxh3_64;

use crate::error::RingError;

/// Largest partition count: 2^16 keeps the table small enough to gossip.
pub const PARTITIONS_MAX: u32 = 1 << 16;
/// Default partition count.
pub const PARTITIONS_DEFAULT: u32 = 1024;

/// A validated partition count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PartitionCount {
    q: u32,
    shift: u32,
}

impl PartitionCount {
    pub fn new(q: u64) -> Result<PartitionCount, RingError> {
        if q == 0 || q > u64::from(PARTITIONS_MAX) || !q.is_power_of_two() {
            return Err(RingError::PartitionCount(q));
        }
        let q = q as u32;
        Ok(PartitionCount {
            q,
            shift: 64 - q.trailing_zeros(),
        })
    }

    pub fn get(self) -> u32 {
        self.q
    }

    /// The partition of a key.
    #[inline]
    pub fn partition_of(self, key: &[u8]) -> u32 {
        self.partition_of_hash(xxh3_64(key))
    }

    /// The partition of a 64-bit key hash.
    #[inline]
    pub fn partition_of_hash(self, hash: u64) -> u32 {
        // A shift by 64 (Q = 1) is not defined for u64; checked_shr covers it.
        hash.checked_shr(self.shift).unwrap_or(0) as u32
    }
}

impl Default for PartitionCount {
    fn default() -> Self {
        PartitionCount::new(u64::from(PARTITIONS_DEFAULT)).expect("the default is a power of two")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_counts_that_are_not_powers_of_two() {
        for bad in [0u64, 3, 1000, 1 << 17] {
            assert_eq!(PartitionCount::new(bad), Err(RingError::PartitionCount(bad)));
        }
        assert!(RingError::PartitionCount(1000).to_string().contains("1000"));
    }

    #[test]
    fn partitions_cover_the_hash_space_evenly() {
        let q = PartitionCount::new(8).unwrap();
        assert_eq!(q.partition_of_hash(0), 0);
        assert_eq!(q.partition_of_hash(u64::MAX), 7);
        assert_eq!(q.partition_of_hash(1 << 61), 1);
        let one = PartitionCount::new(1).unwrap();
        assert_eq!(one.partition_of_hash(u64::MAX), 0);
    }
}
