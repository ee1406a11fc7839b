//! Bounded per-shard cache of recently read values.
//!
//! O_DIRECT bypasses the page cache, so hot values would otherwise cost a
//! disk read each. Entries are keyed by record location (segment, offset),
//! not by key: a location is written once and never changes meaning, so the
//! cache needs no invalidation on overwrite; stale locations simply age out
//! (quick_cache's S3-FIFO policy evicts them first, as they are never hit).

use bytes::Bytes;
use quick_cache::{unsync::Cache, Weighter};

/// Values larger than this fraction of the cache are not cached, so one
/// huge value cannot flush everything else.
const CACHE_ENTRY_MAX_FRACTION: u64 = 8;
/// Weight counted for each entry beyond its value, so that many tiny
/// values are bounded too.
const ENTRY_OVERHEAD_BYTES: u64 = 64;

#[derive(Clone)]
struct ValueWeighter;

impl Weighter<u64, Bytes> for ValueWeighter {
    fn weight(&self, _key: &u64, value: &Bytes) -> u64 {
        value.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

pub(crate) struct ReadCache {
    cache: Option<Cache<u64, Bytes, ValueWeighter>>,
    capacity_bytes: u64,
    hits: u64,
    misses: u64,
}

fn location_key(segment: u32, offset: u32) -> u64 {
    (u64::from(segment) << 32) | u64::from(offset)
}

impl ReadCache {
    pub(crate) fn new(capacity_bytes: u64) -> ReadCache {
        let cache = (capacity_bytes > 0).then(|| {
            let items = (capacity_bytes / 256).clamp(16, 1 << 22) as usize;
            Cache::with_weighter(items, capacity_bytes, ValueWeighter)
        });
        ReadCache {
            cache,
            capacity_bytes,
            hits: 0,
            misses: 0,
        }
    }

    pub(crate) fn get(&mut self, segment: u32, offset: u32) -> Option<Bytes> {
        let found = self.cache.as_ref()?.get(&location_key(segment, offset)).cloned();
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    pub(crate) fn insert(&mut self, segment: u32, offset: u32, value: Bytes) {
        if value.len() as u64 > self.capacity_bytes / CACHE_ENTRY_MAX_FRACTION {
            return;
        }
        if let Some(cache) = self.cache.as_mut() {
            cache.insert(location_key(segment, offset), value);
        }
    }

    /// Caches a freshly written value at its location while the cache
    /// has room, or if the key's previous value was cached; drops the
    /// previous value either way.
    ///
    /// O_DIRECT gives no page cache, so without this a value read soon
    /// after it was written (what was just written is often what is read
    /// next) cost a disk read once the write buffer had been flushed. Once
    /// the cache is full, only overwrites of cached (hot) keys are admitted:
    /// admitting every write then would evict an entry per put, and a bulk
    /// load's puts cost about a third more in `benches/engine.rs`.
    pub(crate) fn write(&mut self, old: Option<(u32, u32)>, new: (u32, u32), value: Option<&[u8]>) {
        let Some(cache) = self.cache.as_mut() else { return };
        let was_cached = old.is_some_and(|old| cache.remove(&location_key(old.0, old.1)).is_some());
        let Some(value) = value else { return };
        let room = cache.weight() + ENTRY_OVERHEAD_BYTES + value.len() as u64 <= cache.capacity();
        if was_cached || room {
            self.insert(new.0, new.1, Bytes::copy_from_slice(value));
        }
    }

    /// Follows a record that compaction copied: a cached value stays
    /// cached at its new location.
    pub(crate) fn relocate(&mut self, from: (u32, u32), to: (u32, u32)) {
        let Some(cache) = self.cache.as_mut() else { return };
        if let Some(value) = cache.remove(&location_key(from.0, from.1)) {
            cache.insert(location_key(to.0, to.1), value.1);
        }
    }

    /// Drops entries of a deleted segment so their memory is freed now.
    pub(crate) fn forget_segment(&mut self, segment: u32) {
        if let Some(cache) = self.cache.as_mut() {
            cache.retain(|&key, _| (key >> 32) as u32 != segment);
        }
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits
    }

    pub(crate) fn misses(&self) -> u64 {
        self.misses
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.weight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_the_old_location_and_relocation_follows_compaction() {
        let mut cache = ReadCache::new(1 << 20);
        cache.write(None, (1, 0), Some(b"v1"));
        cache.write(Some((1, 0)), (1, 64), Some(b"v2"));
        assert!(cache.get(1, 0).is_none(), "the overwritten value left the cache");
        assert_eq!(cache.get(1, 64).as_deref(), Some(&b"v2"[..]));
        cache.relocate((1, 64), (2, 0));
        assert!(cache.get(1, 64).is_none());
        assert_eq!(cache.get(2, 0).as_deref(), Some(&b"v2"[..]));
        cache.write(Some((2, 0)), (2, 128), None);
        assert!(
            cache.get(2, 0).is_none() && cache.get(2, 128).is_none(),
            "a tombstone uncaches its key"
        );
        assert_eq!(cache.bytes(), 0);
        // Full: a new key's value is not admitted, an overwrite of a cached
        // key is.
        let mut small = ReadCache::new(8 * (10 + 64));
        for offset in 0..8 {
            small.write(None, (1, offset), Some(&[7; 10]));
        }
        assert_eq!(small.bytes(), 8 * (10 + 64), "writes are admitted while there is room");
        small.write(None, (1, 8), Some(&[8; 10]));
        assert!(small.get(1, 8).is_none(), "no room for a new key");
        small.write(Some((1, 0)), (1, 9), Some(&[9; 10]));
        assert_eq!(small.get(1, 9).as_deref(), Some(&[9; 10][..]), "a hot key stays cached");
        let mut off = ReadCache::new(0);
        off.write(None, (1, 0), Some(b"v"));
        assert!(off.get(1, 0).is_none());
    }
}
