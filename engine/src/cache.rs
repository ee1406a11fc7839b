//! Bounded per-shard cache of hot values.
//!
//! O_DIRECT bypasses the page cache, so hot values would otherwise cost a
//! disk read each. The cache is a slab of slots evicted by CLOCK (second
//! chance), and the keydir entry of a cached key holds its slot number: a
//! hit costs no lookup beyond the keydir's own. Before, the cache was a hash
//! map of its own keyed by record location, and its probe was a third of a
//! cached read's lookups.
//!
//! A slot remembers the record location (segment, offset) its value came
//! from, and a keydir entry's slot counts only while the two agree. A
//! location is written once and never changes meaning, so an entry whose
//! slot was evicted and given to another record simply misses; nothing
//! needs to find and clear the entry that pointed there.

use bytes::Bytes;

/// A keydir entry's slot number when its value is not cached.
pub(crate) const NO_SLOT: u32 = u32::MAX;
/// Values larger than this fraction of the cache are not cached, so one
/// huge value cannot flush everything else.
const CACHE_ENTRY_MAX_FRACTION: u64 = 8;
/// Weight counted for each entry beyond its value (the slot itself and the
/// value's allocation), so that many tiny values are bounded too.
const ENTRY_OVERHEAD_BYTES: u64 = 64;

struct Slot {
    /// Segment << 32 | offset of the record the value belongs to.
    location: u64,
    /// `None` for a free slot.
    value: Option<Bytes>,
    /// Set by a hit; the clock hand clears it once before evicting.
    referenced: bool,
}

pub(crate) struct ReadCache {
    slots: Vec<Slot>,
    free: Vec<u32>,
    hand: usize,
    bytes: u64,
    capacity_bytes: u64,
    hits: u64,
    misses: u64,
}

fn location_key(location: (u32, u32)) -> u64 {
    (u64::from(location.0) << 32) | u64::from(location.1)
}

fn weight(value: &Bytes) -> u64 {
    value.len() as u64 + ENTRY_OVERHEAD_BYTES
}

impl ReadCache {
    pub(crate) fn new(capacity_bytes: u64) -> ReadCache {
        ReadCache {
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            bytes: 0,
            capacity_bytes,
            hits: 0,
            misses: 0,
        }
    }

    /// The value cached in `slot` for the record at `location`, if any
    /// (counted as a hit).
    pub(crate) fn get(&mut self, slot: u32, location: (u32, u32)) -> Option<Bytes> {
        self.hit(slot, location).cloned()
    }

    /// [`ValueCache::get`] borrowed: no reference count is touched.
    pub(crate) fn hit(&mut self, slot: u32, location: (u32, u32)) -> Option<&Bytes> {
        match self.live_slot(slot, location) {
            Some(index) => {
                self.hits += 1;
                let slot = &mut self.slots[index];
                slot.referenced = true;
                slot.value.as_ref()
            }
            // A miss is counted by whoever finds the value elsewhere
            // (`note_miss`): a lookup that gives up is not a read.
            None => None,
        }
    }

    /// Caches a value read from disk; returns its slot, or `NO_SLOT` if
    /// the value is too large for this cache.
    pub(crate) fn insert(&mut self, location: (u32, u32), value: Bytes) -> u32 {
        if value.len() as u64 > self.capacity_bytes / CACHE_ENTRY_MAX_FRACTION || weight(&value) > self.capacity_bytes {
            return NO_SLOT;
        }
        self.evict_until_room_for(weight(&value));
        self.bytes += weight(&value);
        let filled = Slot {
            location: location_key(location),
            value: Some(value),
            referenced: false,
        };
        match self.free.pop() {
            Some(index) => {
                debug_assert!(self.slots[index as usize].value.is_none(), "a free slot holds nothing");
                self.slots[index as usize] = filled;
                index
            }
            None => {
                self.slots.push(filled);
                u32::try_from(self.slots.len() - 1).expect("fewer slots than capacity_bytes / 64")
            }
        }
    }

    /// Caches a freshly written value at its location while the cache has
    /// room, or if the key's previous value was cached; drops the previous
    /// value either way. Returns the new value's slot.
    ///
    /// O_DIRECT gives no page cache, so without this a value read soon
    /// after it was written (what was just written is often what is read
    /// next) cost a disk read once the write buffer had been flushed. Once
    /// the cache is full, only overwrites of cached (hot) keys are admitted:
    /// admitting every write then would evict an entry per put, and a bulk
    /// load's puts cost about a third more in `benches/engine.rs`.
    pub(crate) fn write(&mut self, old: Option<(u32, (u32, u32))>, new: (u32, u32), value: Option<&[u8]>) -> u32 {
        let was_cached = old.is_some_and(|(slot, location)| self.remove(slot, location));
        let Some(value) = value else { return NO_SLOT };
        let room = self.bytes + ENTRY_OVERHEAD_BYTES + value.len() as u64 <= self.capacity_bytes;
        if was_cached || room {
            self.insert(new, Bytes::copy_from_slice(value))
        } else {
            NO_SLOT
        }
    }

    /// Follows a record that compaction copied: a cached value stays
    /// cached, in the same slot, at its new location.
    pub(crate) fn relocate(&mut self, slot: u32, from: (u32, u32), to: (u32, u32)) {
        if let Some(index) = self.live_slot(slot, from) {
            self.slots[index].location = location_key(to);
        }
    }

    /// Drops the value of the record at `location` from `slot`; returns
    /// whether it was cached.
    pub(crate) fn remove(&mut self, slot: u32, location: (u32, u32)) -> bool {
        match self.live_slot(slot, location) {
            Some(index) => {
                self.free_slot(index);
                true
            }
            None => false,
        }
    }

    /// Drops entries of a deleted segment so their memory is freed now.
    /// Every key was moved off the segment first, taking its value along
    /// (`relocate`), so this finds only what a race left behind.
    pub(crate) fn forget_segment(&mut self, segment: u32) {
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.value.is_some() && (slot.location >> 32) as u32 == segment {
                self.free_slot(index);
            }
        }
    }

    /// Reads the first byte of `slot`'s value, if any, without counting a
    /// hit or a miss: brings the slot and the value's start into the CPU
    /// cache (see `Engine::prefetch`).
    pub(crate) fn prefetch(&self, slot: u32) {
        if let Some(Some(value)) = self.slots.get(slot as usize).map(|s| s.value.as_ref()) {
            std::hint::black_box(value.first());
        }
    }

    /// Whether `slot` holds the value of the record at `location`.
    pub(crate) fn holds(&self, slot: u32, location: (u32, u32)) -> bool {
        self.live_slot(slot, location).is_some()
    }

    fn live_slot(&self, slot: u32, location: (u32, u32)) -> Option<usize> {
        let index = slot as usize;
        let found = self.slots.get(index)?;
        (found.value.is_some() && found.location == location_key(location)).then_some(index)
    }

    fn free_slot(&mut self, index: usize) {
        let value = self.slots[index].value.take().expect("freeing a filled slot");
        self.bytes -= weight(&value);
        self.free.push(index as u32);
    }

    /// Sweeps the clock hand, evicting unreferenced values and clearing the
    /// referenced bit of the others, until `needed` more bytes fit. Two
    /// sweeps always suffice: the first clears every bit.
    fn evict_until_room_for(&mut self, needed: u64) {
        let mut steps = 2 * self.slots.len();
        while self.bytes + needed > self.capacity_bytes && steps > 0 {
            steps -= 1;
            self.hand = (self.hand + 1) % self.slots.len();
            let slot = &mut self.slots[self.hand];
            if slot.value.is_none() {
                continue;
            }
            if std::mem::take(&mut slot.referenced) {
                continue;
            }
            self.free_slot(self.hand);
        }
        debug_assert!(self.bytes + needed <= self.capacity_bytes, "two sweeps make room");
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits
    }

    /// Counts a read the cache could not serve.
    pub(crate) fn note_miss(&mut self) {
        self.misses += 1;
    }

    pub(crate) fn misses(&self) -> u64 {
        self.misses
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_the_old_location_and_relocation_follows_compaction() {
        let mut cache = ReadCache::new(1 << 20);
        let s1 = cache.write(None, (1, 0), Some(b"v1"));
        let s2 = cache.write(Some((s1, (1, 0))), (1, 64), Some(b"v2"));
        assert!(cache.get(s1, (1, 0)).is_none(), "the overwritten value left the cache");
        assert_eq!(cache.get(s2, (1, 64)).as_deref(), Some(&b"v2"[..]));
        cache.relocate(s2, (1, 64), (2, 0));
        assert!(cache.get(s2, (1, 64)).is_none());
        assert_eq!(cache.get(s2, (2, 0)).as_deref(), Some(&b"v2"[..]));
        assert_eq!(cache.write(Some((s2, (2, 0))), (2, 128), None), NO_SLOT);
        assert!(cache.get(s2, (2, 0)).is_none(), "a tombstone uncaches its key");
        assert_eq!(cache.bytes(), 0);
        assert!(cache.get(NO_SLOT, (2, 128)).is_none());
        // Full: a new key's value is not admitted, an overwrite of a cached
        // key is.
        let mut small = ReadCache::new(8 * (10 + 64));
        let slots: Vec<u32> = (0..8)
            .map(|offset| small.write(None, (1, offset), Some(&[7; 10])))
            .collect();
        assert_eq!(small.bytes(), 8 * (10 + 64), "writes are admitted while there is room");
        assert_eq!(
            small.write(None, (1, 8), Some(&[8; 10])),
            NO_SLOT,
            "no room for a new key"
        );
        let hot = small.write(Some((slots[0], (1, 0))), (1, 9), Some(&[9; 10]));
        assert_eq!(
            small.get(hot, (1, 9)).as_deref(),
            Some(&[9; 10][..]),
            "a hot key stays cached"
        );
        let mut off = ReadCache::new(0);
        assert_eq!(off.write(None, (1, 0), Some(b"v")), NO_SLOT);
        assert_eq!(off.insert((1, 0), Bytes::from_static(b"v")), NO_SLOT);
    }

    #[test]
    fn the_clock_evicts_values_not_read_since_its_last_pass_and_a_reused_slot_misses() {
        // Room for four 16-byte values.
        let mut cache = ReadCache::new(4 * (16 + 64));
        let value = Bytes::from(vec![1; 16]);
        let slots: Vec<u32> = (0..4).map(|i| cache.insert((1, i), value.clone())).collect();
        assert!(cache.get(slots[1], (1, 1)).is_some());
        assert!(cache.get(slots[3], (1, 3)).is_some());
        let fifth = cache.insert((1, 4), value.clone());
        let sixth = cache.insert((1, 5), value.clone());
        assert_eq!(cache.bytes(), 4 * (16 + 64), "still within capacity");
        assert!(
            cache.get(slots[1], (1, 1)).is_some(),
            "a read value had a second chance"
        );
        assert!(
            cache.get(slots[3], (1, 3)).is_some(),
            "a read value had a second chance"
        );
        assert!(cache.get(slots[0], (1, 0)).is_none() && cache.get(slots[2], (1, 2)).is_none());
        assert!(
            [fifth, sixth].contains(&slots[0]) || [fifth, sixth].contains(&slots[2]),
            "an evicted slot is reused"
        );
        assert_eq!(cache.get(fifth, (1, 4)).as_deref(), Some(&value[..]));
        assert_eq!(cache.get(sixth, (1, 5)).as_deref(), Some(&value[..]));
        cache.forget_segment(1);
        assert_eq!(cache.bytes(), 0);
        assert!(cache.get(fifth, (1, 4)).is_none());
        let too_big = Bytes::from(vec![0; 64]);
        assert_eq!(cache.insert((2, 0), too_big), NO_SLOT, "over an eighth of the cache");
    }
}
