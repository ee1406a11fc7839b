//! Engine counters and the snapshot exported to metrics.

use crate::engine::State;
use crate::record::FLAG_TOMBSTONE;

/// Running counters, updated in place on the data path.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) puts: u64,
    pub(crate) deletes: u64,
    pub(crate) gets: u64,
    pub(crate) disk_reads: u64,
    pub(crate) value_bytes_put: u64,
    pub(crate) batches: u64,
    pub(crate) syncs: u64,
    pub(crate) bytes_written: u64,
    pub(crate) segments_sealed: u64,
    pub(crate) segments_compacted: u64,
    pub(crate) segments_compacted_from_keydir: u64,
    pub(crate) compaction_bytes_copied: u64,
    pub(crate) hints_streamed: u64,
    pub(crate) hints_scanned: u64,
}

impl Counters {
    pub(crate) fn note_write(&mut self, flags: u8, value_len: usize) {
        if flags & FLAG_TOMBSTONE != 0 {
            self.deletes += 1;
        } else {
            self.puts += 1;
        }
        self.value_bytes_put += value_len as u64;
    }
}

/// A point-in-time view of one engine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    /// Keys in the keydir, tombstones included.
    pub keys: u64,
    /// Bytes of records that are the newest for their key.
    pub live_bytes: u64,
    /// Bytes of superseded records awaiting compaction.
    pub dead_bytes: u64,
    pub segments: u64,
    pub puts: u64,
    pub deletes: u64,
    pub gets: u64,
    /// Gets served by a disk read (neither cache nor write buffer).
    pub disk_reads: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_bytes: u64,
    /// Writes handed to the disk; each covers a group of puts.
    pub write_batches: u64,
    pub syncs: u64,
    pub bytes_written: u64,
    pub segments_sealed: u64,
    pub segments_compacted: u64,
    /// Of those, segments whose few live records were found in the keydir
    /// and read one by one instead of scanning the segment.
    pub segments_compacted_from_keydir: u64,
    pub compaction_bytes_copied: u64,
    /// Hint files built from entries queued as their segment was appended.
    pub hints_streamed: u64,
    /// Hint files built by reading their segment back: segments sealed by
    /// an earlier run without one, or whose queued entries were given up
    /// (a failed hint write, or the queue at its memory bound).
    pub hints_scanned: u64,
}

impl EngineStats {
    pub(crate) fn collect(st: &State) -> EngineStats {
        let record_bytes: u64 = st.segments.values().map(|s| s.record_bytes).sum();
        let dead_bytes: u64 = st.segments.values().map(|s| s.dead_bytes).sum();
        let c = &st.counters;
        EngineStats {
            keys: st.keydir.key_count(),
            live_bytes: record_bytes - dead_bytes,
            dead_bytes,
            segments: st.segments.len() as u64,
            puts: c.puts,
            deletes: c.deletes,
            gets: c.gets,
            disk_reads: c.disk_reads,
            cache_hits: st.cache.hits(),
            cache_misses: st.cache.misses(),
            cache_bytes: st.cache.bytes(),
            write_batches: c.batches,
            syncs: c.syncs,
            bytes_written: c.bytes_written,
            segments_sealed: c.segments_sealed,
            segments_compacted: c.segments_compacted,
            segments_compacted_from_keydir: c.segments_compacted_from_keydir,
            compaction_bytes_copied: c.compaction_bytes_copied,
            hints_streamed: c.hints_streamed,
            hints_scanned: c.hints_scanned,
        }
    }
}
