//! The in-memory index: per partition, key → newest record location, plus
//! the partition's Merkle tree, kept in step on every change.
//!
//! The keydir never does I/O. It is the single authority on which record of
//! a key is live; everything else (dead-byte accounting, compaction) follows
//! from what it returns.

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;

/// The keydir's hasher: foldhash, seeded randomly per map, is several
/// times faster than SipHash on short keys and still resists collision
/// flooding by a client that cannot observe the seed. hashbrown rather than
/// std's map for `entry_ref`: a new key is found absent and inserted with
/// one hash and one probe (std's map needs an owned key for that, or a
/// lookup then an insert: two of each, 14% of a put in the engine bench).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use smallvec::SmallVec;

use crate::cache::NO_SLOT;
use crate::merkle::MerkleTree;
use crate::record::FLAG_TOMBSTONE;

/// A key as the keydir stores it: up to 24 bytes inline in the table's
/// slot (32 bytes in all), longer ones on the heap. A lookup compares the
/// key without following a pointer to a separate allocation, which was a
/// cache miss on most lookups, and short keys cost no allocation.
pub(crate) type StoredKey = SmallVec<[u8; 24]>;

/// Where a key's newest record lives, and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyEntry {
    pub(crate) seq: u64,
    pub(crate) body_checksum: u64,
    pub(crate) segment: u32,
    pub(crate) offset: u32,
    pub(crate) value_len: u32,
    pub(crate) key_len: u16,
    pub(crate) flags: u8,
    /// The value's slot in the shard's value cache (`cache::NO_SLOT` if
    /// none). It counts only while the slot still holds this record's
    /// location; the cache checks.
    pub(crate) cache_slot: u32,
}

impl KeyEntry {
    /// The entry for the record with `header` at `offset` of `segment`.
    pub(crate) fn at(header: &crate::record::RecordHeader, segment: u32, offset: u32) -> KeyEntry {
        KeyEntry {
            seq: header.seq,
            body_checksum: header.body_checksum,
            segment,
            offset,
            value_len: header.value_len,
            key_len: header.key_len,
            flags: header.flags,
            cache_slot: NO_SLOT,
        }
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }

    pub(crate) fn record_bytes(&self) -> usize {
        crate::record::record_bytes(usize::from(self.key_len), self.value_len as usize)
    }
}

/// One partition's keys and tree.
#[derive(Default)]
pub(crate) struct PartitionIndex {
    pub(crate) keys: FastMap<StoredKey, KeyEntry>,
    pub(crate) merkle: MerkleTree,
}

/// Result of offering a record to the keydir.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// The record is now the key's newest; it replaced this entry, if any.
    Newer(Option<KeyEntry>),
    /// The keydir already holds a record at least as new; the offered one is
    /// dead on arrival.
    Stale,
}

#[derive(Default)]
pub(crate) struct Keydir {
    partitions: FastMap<u32, PartitionIndex>,
    keys: u64,
}

impl Keydir {
    pub(crate) fn get(&self, partition: u32, key: &[u8]) -> Option<&KeyEntry> {
        self.partitions.get(&partition)?.keys.get(key)
    }

    pub(crate) fn get_mut(&mut self, partition: u32, key: &[u8]) -> Option<&mut KeyEntry> {
        self.partitions.get_mut(&partition)?.keys.get_mut(key)
    }

    pub(crate) fn partition(&self, partition: u32) -> Option<&PartitionIndex> {
        self.partitions.get(&partition)
    }

    /// Every key of `partition` whose newest record lies in `segment`.
    /// Walks the partition's keys.
    pub(crate) fn in_segment(&self, partition: u32, segment: u32) -> impl Iterator<Item = (&[u8], &KeyEntry)> + '_ {
        self.partitions.get(&partition).into_iter().flat_map(move |index| {
            index
                .keys
                .iter()
                .filter(move |(_, entry)| entry.segment == segment)
                .map(|(key, entry)| (&key[..], entry))
        })
    }

    pub(crate) fn partition_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.partitions.keys().copied()
    }

    pub(crate) fn key_count(&self) -> u64 {
        self.keys
    }

    /// Installs `entry` if it is newer than what the key has. Ties (the same
    /// record copied by compaction) keep the existing entry. `cache_slot`
    /// is told the entry being replaced and gives the new one's value
    /// cache slot; it is called only if `entry` is installed, in the same
    /// probe of the table.
    pub(crate) fn apply(
        &mut self,
        partition: u32,
        key: &[u8],
        mut entry: KeyEntry,
        cache_slot: impl FnOnce(Option<&KeyEntry>) -> u32,
    ) -> Applied {
        debug_assert_eq!(usize::from(entry.key_len), key.len());
        let index = self.partitions.entry(partition).or_default();
        match index.keys.entry_ref(key) {
            EntryRef::Occupied(existing) if existing.get().seq >= entry.seq => Applied::Stale,
            EntryRef::Occupied(mut existing) => {
                entry.cache_slot = cache_slot(Some(existing.get()));
                let old = std::mem::replace(existing.get_mut(), entry);
                // Out with the old contribution, in with the new: XOR is
                // linear, so one toggle (one leaf hash) does both.
                index.merkle.toggle(key, old.body_checksum ^ entry.body_checksum);
                Applied::Newer(Some(old))
            }
            EntryRef::Vacant(vacant) => {
                entry.cache_slot = cache_slot(None);
                vacant.insert(entry);
                index.merkle.toggle(key, entry.body_checksum);
                self.keys += 1;
                Applied::Newer(None)
            }
        }
    }

    /// Points a key at a copy of its record, if the key still names the
    /// original. Returns the key's value cache slot if it moved. The object
    /// (and so the Merkle tree) is unchanged.
    pub(crate) fn relocate(&mut self, partition: u32, key: &[u8], from: (u32, u32), to: (u32, u32)) -> Option<u32> {
        let entry = self.get_mut(partition, key)?;
        if (entry.segment, entry.offset) != from {
            return None;
        }
        (entry.segment, entry.offset) = to;
        Some(entry.cache_slot)
    }

    /// Removes a key whose newest record is the tombstone with `seq`.
    pub(crate) fn remove_tombstone(&mut self, partition: u32, key: &[u8], seq: u64) -> Option<KeyEntry> {
        let index = self.partitions.get_mut(&partition)?;
        let entry = *index.keys.get(key)?;
        if entry.seq != seq || !entry.is_tombstone() {
            return None;
        }
        index.keys.remove(key);
        index.merkle.toggle(key, entry.body_checksum);
        self.keys -= 1;
        if index.keys.is_empty() {
            self.partitions.remove(&partition);
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, sum: u64) -> KeyEntry {
        KeyEntry {
            seq,
            body_checksum: sum,
            segment: 1,
            offset: seq as u32,
            value_len: 1,
            key_len: 1,
            flags: 0,
            cache_slot: NO_SLOT,
        }
    }

    #[test]
    fn newest_seq_wins_in_any_order() {
        let mut a = Keydir::default();
        let mut b = Keydir::default();
        for e in [entry(1, 10), entry(3, 30), entry(2, 20)] {
            a.apply(0, b"k", e, |_| NO_SLOT);
        }
        for e in [entry(3, 30), entry(1, 10), entry(2, 20)] {
            b.apply(0, b"k", e, |_| NO_SLOT);
        }
        assert_eq!(a.get(0, b"k"), b.get(0, b"k"));
        assert_eq!(a.get(0, b"k").unwrap().seq, 3);
        assert_eq!(a.partition(0).unwrap().merkle, b.partition(0).unwrap().merkle);
        assert_eq!(a.key_count(), 1);
    }

    #[test]
    fn relocate_only_moves_the_named_record() {
        let mut kd = Keydir::default();
        kd.apply(0, b"k", entry(5, 1), |_| 7);
        assert_eq!(kd.relocate(0, b"k", (9, 9), (2, 0)), None);
        assert_eq!(
            kd.relocate(0, b"k", (1, 5), (2, 0)),
            Some(7),
            "the cache slot goes along"
        );
        assert_eq!(kd.get(0, b"k").unwrap().segment, 2);
    }

    #[test]
    fn only_the_current_tombstone_can_be_removed() {
        let mut kd = Keydir::default();
        let mut tomb = entry(4, 1);
        tomb.flags = FLAG_TOMBSTONE;
        kd.apply(0, b"k", tomb, |_| NO_SLOT);
        assert!(kd.remove_tombstone(0, b"k", 3).is_none());
        assert!(kd.remove_tombstone(0, b"k", 4).is_some());
        assert_eq!(kd.key_count(), 0);
        kd.apply(0, b"v", entry(5, 1), |_| NO_SLOT);
        assert!(
            kd.remove_tombstone(0, b"v", 5).is_none(),
            "a live value is not a tombstone"
        );
    }

    #[test]
    fn short_keys_are_inline_and_long_ones_still_work() {
        assert_eq!(
            std::mem::size_of::<StoredKey>(),
            32,
            "one slot: 24 key bytes and a length"
        );
        assert!(!StoredKey::from_slice(&[7; 24]).spilled());
        assert_eq!(std::mem::size_of::<KeyEntry>(), 40, "docs/storage-format.md says 40");
        let mut kd = Keydir::default();
        let long = [9u8; 300];
        let header = crate::record::header_for(0, 1, 0, 300, 1, 0);
        kd.apply(0, &long, KeyEntry::at(&header, 1, 0), |_| NO_SLOT);
        assert_eq!(kd.get(0, &long).map(|e| e.seq), Some(1));
        assert!(kd.get(0, &long[..299]).is_none());
    }
}
