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

#[derive(Clone)]
struct ValueWeighter;

impl Weighter<u64, Bytes> for ValueWeighter {
    fn weight(&self, _key: &u64, value: &Bytes) -> u64 {
        // Count a fixed overhead so that many tiny values are bounded too.
        value.len() as u64 + 64
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

    /// Moves a cached value to its key's new location with the new value:
    /// an overwrite of a key whose value is cached keeps the key cached.
    /// A read-modify-write (the server reads every key's version before
    /// writing it) would otherwise miss the cache and read the disk on
    /// every write. Keys not cached stay uncached, so a stream of fresh or
    /// cold writes costs one failed lookup and evicts nothing.
    pub(crate) fn replace(&mut self, old: (u32, u32), new: (u32, u32), value: &[u8]) {
        let Some(cache) = self.cache.as_mut() else { return };
        if cache.remove(&location_key(old.0, old.1)).is_some() {
            self.insert(new.0, new.1, Bytes::copy_from_slice(value));
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
