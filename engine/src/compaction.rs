//! Background work on sealed segments: writing hint files and compacting.
//!
//! Compaction copies the live records of a segment to the head of the log
//! (keeping their sequence numbers), syncs, and deletes the segment. It runs
//! in a low-share task queue and yields after every record, so foreground
//! requests keep their latency.
//!
//! Tombstones: a live tombstone (the newest record of its key) is always
//! copied. A dead one (reaped, or superseded) may be dropped only when no
//! other segment can hold an older record of its key, proven by every other
//! segment's smallest sequence number being larger. Otherwise it is copied
//! as dead weight, so a deleted key can never come back on reopen.

use std::rc::Rc;

use crate::engine::{Inner, State};
use crate::error::{EngineError, Result};
use crate::hint::{HintChunk, HintEntry, HintWriter};
use crate::record::{RecordView, FLAG_TOMBSTONE};
use crate::scan::SegmentCursor;
use crate::segment::{hint_path, hint_tmp_path, segment_path};
use crate::writer::Appended;

/// What one call to [`crate::Engine::compact`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub segments_compacted: u32,
    /// Segments left in place because records the keydir names could not
    /// be read back (see the error log).
    pub segments_kept: u32,
    pub bytes_reclaimed: u64,
    pub records_copied: u64,
    pub tombstones_dropped: u64,
}

enum Fate {
    /// The keydir names this record: copy it and repoint the key.
    CopyLive,
    /// A dead tombstone that may still shadow an older record elsewhere.
    CopyDead,
    Drop,
}

fn fate_of(st: &State, segment: u32, offset: u64, view: &RecordView<'_>) -> Fate {
    let newest = st.keydir.get(view.header.partition, view.key);
    if let Some(entry) = newest {
        if entry.segment == segment && u64::from(entry.offset) == offset {
            return Fate::CopyLive;
        }
        if entry.seq > view.header.seq {
            // A newer record of the key exists and shadows anything older.
            return Fate::Drop;
        }
    }
    if view.header.flags & FLAG_TOMBSTONE == 0 {
        return Fate::Drop;
    }
    let older_may_survive = st
        .segments
        .values()
        .any(|other| other.id != segment && other.seq_min < view.header.seq);
    if older_may_survive {
        Fate::CopyDead
    } else {
        Fate::Drop
    }
}

/// A live record compaction must copy: partition, key, offset and length.
type LiveRecord = (u32, Vec<u8>, u64, usize);

/// Whether the live records of segment `id` are best found from the
/// keydir (`live_from_keydir`) rather than by scanning the segment and
/// probing the keydir once per record: the keydir is not much larger than
/// the segment, and the segment holds no tombstone (a dead tombstone that
/// may still shadow an older record is found only by a scan). Under steady
/// overwrites most of a sealed segment is dead, and the scan's probe of
/// each dead record was most of compaction's CPU.
fn keydir_walk_pays(st: &State, id: u32) -> bool {
    const KEYS_PER_RECORD_MAX: u64 = 4;
    let segment = &st.segments[&id];
    segment.tombstones == 0 && st.keydir.key_count() <= segment.records.saturating_mul(KEYS_PER_RECORD_MAX)
}

/// The live records of sealed segment `id`, from one walk of the keydir,
/// grouped by the `SPARSE_READ_BYTES` chunk of the segment they lie in
/// (each group in no order; `copy_from_keydir` sorts one at a time).
///
/// The walk yields between partitions: walking half a million keys in one
/// go stalled the shard for tens of milliseconds. While it yields, keys
/// may move out of the segment (overwritten), never into it (it is
/// sealed), so what it finds is every record still live at its end, and
/// perhaps some that died meanwhile, which `copy_record` copies as dead.
async fn live_from_keydir(inner: &Inner, id: u32) -> Vec<Vec<LiveRecord>> {
    let partitions: Vec<u32> = inner.state.borrow().keydir.partition_ids().collect();
    let mut chunks: Vec<Vec<LiveRecord>> = Vec::new();
    for partition in partitions {
        {
            let st = inner.state.borrow();
            if st.closing {
                break;
            }
            for (key, entry) in st.keydir.in_segment(partition, id) {
                let offset = u64::from(entry.offset);
                let chunk = (offset / SPARSE_READ_BYTES as u64) as usize;
                if chunks.len() <= chunk {
                    chunks.resize_with(chunk + 1, Vec::new);
                }
                chunks[chunk].push((partition, key.to_vec(), offset, entry.record_bytes()));
            }
        }
        glommio::yield_if_needed().await;
    }
    chunks
}

/// Appends a copy of segment `id`'s record at `offset` to the head of the
/// log; if it is still its key's newest (`live`), repoints the key.
async fn copy_record(inner: &Rc<Inner>, id: u32, offset: u64, view: &RecordView<'_>, live: bool) -> Result<()> {
    let header = view.header;
    let (partition, key, value) = (header.partition, view.key, view.value);
    let bytes = view.record_bytes();
    let repoint = |st: &mut State, _: &_, at: Appended| {
        st.segments
            .get_mut(&at.segment)
            .expect("the active segment is registered")
            .note_record(bytes, header.seq, header.flags & FLAG_TOMBSTONE != 0);
        let from = (id, offset as u32);
        let moved = live
            .then(|| st.keydir.relocate(partition, key, from, (at.segment, at.offset)))
            .flatten();
        // The copy is dead if the key moved on meanwhile; the original is
        // dead either way.
        match moved {
            None => st.mark_dead(at.segment, bytes),
            Some(cache_slot) => {
                st.mark_dead(id, bytes);
                st.cache.relocate(cache_slot, from, (at.segment, at.offset));
            }
        }
        st.counters.compaction_bytes_copied += bytes as u64;
    };
    inner
        .append_with(|st| st.check_writable().map(|_| header), key, value, repoint)
        .await?;
    Ok(())
}

/// Between two records: let requests run, and keep the hint queue short
/// (compaction's own copies are appends too) while a long compaction holds
/// the background task.
async fn pause(inner: &Rc<Inner>) {
    glommio::yield_if_needed().await;
    if inner.state.borrow().hints.backlogged() {
        if let Err(err) = stream_hints(inner).await {
            tracing::warn!(dir = %inner.config.dir.display(), "streaming a hint file failed: {err}");
        }
    }
}

/// Bytes compaction reads from a segment at a time when it reads only
/// where the keydir says live records are.
const SPARSE_READ_BYTES: usize = 1 << 20;

/// Copies the live records `live` names out of segment `id`, reading the
/// segment in chunks, and only the chunks that hold one. Returns false if a
/// record could not be read back as the keydir describes it (the segment
/// is then kept, and the error logged).
async fn copy_from_keydir(
    inner: &Rc<Inner>,
    id: u32,
    file: &glommio::io::DmaFile,
    chunks: Vec<Vec<LiveRecord>>,
    report: &mut CompactionReport,
) -> Result<bool> {
    let mut read: Option<(u64, glommio::io::ReadResult)> = None;
    for mut live in chunks {
        // File order within the chunk: one read covers most of it.
        live.sort_unstable_by_key(|&(_, _, offset, _)| offset);
        for (partition, key, offset, bytes) in live {
            if inner.state.borrow().closing {
                return Ok(true);
            }
            // Not looked up again here: a key that moved on since the walk
            // is rare, and `copy_record` repoints a key only if it still
            // names this record (else the copy is dead at once).
            let end = offset + bytes as u64;
            if !read
                .as_ref()
                .is_some_and(|(start, r)| *start <= offset && end <= start + r.len() as u64)
            {
                let r = file.read_at(offset, SPARSE_READ_BYTES.max(bytes)).await.map_err(|e| {
                    EngineError::glommio("reading records to compact", segment_path(&inner.config.dir, id), e)
                })?;
                read = Some((offset, r));
            }
            let (start, r) = read.as_ref().expect("read just above");
            let at = (offset - start) as usize;
            let record = r.get(at..at + bytes).unwrap_or_default();
            match crate::record::decode(record) {
                Ok(view) if view.key == key && view.header.partition == partition => {
                    copy_record(inner, id, offset, &view, true).await?;
                    report.records_copied += 1;
                }
                _ => {
                    tracing::error!(
                        segment = id,
                        offset,
                        "a live record does not match the keydir; keeping the segment"
                    );
                    return Ok(false);
                }
            }
            pause(inner).await;
        }
    }
    Ok(true)
}

/// Copies what must survive of segment `id` by scanning it whole: live
/// records, and dead tombstones that may still shadow an older record.
/// Returns false if part of it could not be read (corrupt ranges).
async fn scan_and_copy(
    inner: &Rc<Inner>,
    id: u32,
    file: &glommio::io::DmaFile,
    path: &std::path::Path,
    report: &mut CompactionReport,
) -> Result<bool> {
    let mut cursor = SegmentCursor::open(file, path, id, inner.config.record_max_bytes()).await?;
    while let Some((offset, view)) = cursor.next().await? {
        if inner.state.borrow().closing {
            return Ok(true);
        }
        // Bound first: a borrow in the match's scrutinee would last through
        // the copy's append.
        let fate = fate_of(&inner.state.borrow(), id, offset, &view);
        match fate {
            Fate::Drop => {
                if view.header.flags & FLAG_TOMBSTONE != 0 {
                    report.tombstones_dropped += 1;
                }
            }
            fate @ (Fate::CopyLive | Fate::CopyDead) => {
                copy_record(inner, id, offset, &view, matches!(fate, Fate::CopyLive)).await?;
                report.records_copied += 1;
            }
        }
        pause(inner).await;
    }
    Ok(cursor.finish().corrupt.is_empty())
}

/// Rewrites segment `id` and deletes it. Returns the bytes reclaimed, or
/// `None` if the segment had to be kept.
async fn compact_segment(inner: &Rc<Inner>, id: u32, report: &mut CompactionReport) -> Result<()> {
    let path = segment_path(&inner.config.dir, id);
    let (file, size_before, by_keydir) = {
        let st = inner.state.borrow();
        let segment = &st.segments[&id];
        assert!(segment.sealed, "only sealed segments are compacted");
        (segment.file.clone(), segment.record_bytes, keydir_walk_pays(&st, id))
    };
    let intact = if by_keydir {
        let live = live_from_keydir(inner, id).await;
        copy_from_keydir(inner, id, &file, live, report).await?
    } else {
        scan_and_copy(inner, id, &file, &path, report).await?
    };
    if inner.state.borrow().closing {
        return Ok(());
    }
    inner.sync_all().await?;
    let segment = {
        let mut st = inner.state.borrow_mut();
        let segment = &st.segments[&id];
        if segment.dead_bytes < segment.record_bytes || !intact {
            tracing::error!(
                segment = id,
                live_bytes = segment.record_bytes - segment.dead_bytes,
                intact,
                "segment still holds live data after compaction; keeping it"
            );
            report.segments_kept += 1;
            return Ok(());
        }
        st.cache.forget_segment(id);
        st.counters.segments_compacted += 1;
        st.counters.segments_compacted_from_keydir += u64::from(by_keydir);
        st.segments.remove(&id).expect("present above")
    };
    let remove_error = |e| EngineError::glommio("removing compacted segment", &path, e);
    segment.file.remove().await.map_err(remove_error)?;
    if segment.has_hint {
        let hint = hint_path(&inner.config.dir, id);
        std::fs::remove_file(&hint).map_err(|e| EngineError::io("removing hint", &hint, e))?;
    }
    inner
        .dir
        .sync()
        .await
        .map_err(|e| EngineError::glommio("syncing data directory", &inner.config.dir, e))?;
    report.segments_compacted += 1;
    report.bytes_reclaimed += size_before;
    Ok(())
}

/// Sealed segments whose dead fraction passed the threshold, oldest first.
fn candidates(inner: &Inner) -> Vec<u32> {
    let st = inner.state.borrow();
    st.segments
        .values()
        .filter(|s| s.sealed && s.record_bytes > 0 && s.dead_fraction() >= inner.config.compaction_dead_fraction)
        .map(|s| s.id)
        .collect()
}

/// A sealed segment at least this dead is compacted in the background
/// whatever the rest of the store holds: it costs at most a fifth of a
/// copied byte per byte reclaimed.
const NEARLY_DEAD_FRACTION: f64 = 0.8;

/// The segment background compaction should rewrite next, if any: the
/// deadest sealed one past the threshold, while dead bytes are at least
/// `compaction_dead_fraction` of the whole store's record bytes (or at
/// once if it is nearly all dead).
///
/// Why not every segment past the threshold, as an explicit compaction
/// does: that rewrites segments 70% live, copying 2.3 bytes per byte
/// reclaimed, and under steady overwrites compaction then cost as much CPU
/// as the writes. Waiting until the store as a whole is that dead keeps
/// the same bound on disk use (live / (1 - threshold)) while the segments
/// rewritten are much deader: under uniform overwrites, about half dead
/// (the log's oldest segments decay the most), near one copied byte per
/// byte reclaimed.
fn next_in_background(segments: &[SegmentUse], dead_fraction: f64) -> Option<u32> {
    let (dead, total) = segments
        .iter()
        .fold((0u64, 0u64), |(d, t), s| (d + s.dead_bytes, t + s.record_bytes));
    let store_dead = total > 0 && dead as f64 >= dead_fraction * total as f64;
    let fraction = |s: &SegmentUse| s.dead_bytes as f64 / s.record_bytes as f64;
    segments
        .iter()
        .filter(|s| s.sealed && s.record_bytes > 0)
        .map(|s| (fraction(s), s.id))
        .filter(|&(f, _)| f >= NEARLY_DEAD_FRACTION.max(dead_fraction) || (store_dead && f >= dead_fraction))
        // The deadest; of equals, the oldest.
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, id)| id)
}

/// What `next_in_background` needs to know of a segment.
#[derive(Clone, Copy, Debug)]
struct SegmentUse {
    id: u32,
    sealed: bool,
    dead_bytes: u64,
    record_bytes: u64,
}

fn segment_uses(st: &State) -> Vec<SegmentUse> {
    st.segments
        .values()
        .map(|s| SegmentUse {
            id: s.id,
            sealed: s.sealed,
            dead_bytes: s.dead_bytes,
            record_bytes: s.record_bytes,
        })
        .collect()
}

async fn one_compaction_at_a_time(inner: &Inner) -> Result<glommio::sync::Permit<'_>> {
    inner
        .compaction_permit
        .acquire_permit(1)
        .await
        .map_err(|_| EngineError::Closed)
}

/// Background compaction: one segment at a time, as `next_in_background`
/// picks them, until it picks none.
async fn compact_in_background(inner: &Rc<Inner>, report: &mut CompactionReport) -> Result<()> {
    let _permit = one_compaction_at_a_time(inner).await?;
    loop {
        let next = {
            let st = inner.state.borrow();
            if st.closing {
                return Ok(());
            }
            next_in_background(&segment_uses(&st), inner.config.compaction_dead_fraction)
        };
        let Some(id) = next else {
            return Ok(());
        };
        let before = report.segments_compacted;
        compact_segment(inner, id, report).await?;
        if report.segments_compacted == before {
            // Kept (a record could not be read back): picking it again
            // would loop; the next round tries again.
            return Ok(());
        }
    }
}

async fn compact_candidates(inner: &Rc<Inner>, report: &mut CompactionReport) -> Result<()> {
    let _permit = one_compaction_at_a_time(inner).await?;
    for id in candidates(inner) {
        if inner.state.borrow().segments.contains_key(&id) {
            compact_segment(inner, id, report).await?;
        }
    }
    Ok(())
}

/// Seals the active segment if compaction could reclaim anything from it,
/// then compacts every eligible segment.
pub(crate) async fn compact_now(inner: &Rc<Inner>) -> Result<CompactionReport> {
    let active = {
        let mut st = inner.state.borrow_mut();
        st.check_writable()?;
        let id = st.writer.segment_id;
        let dead = st.segments[&id].dead_fraction() >= inner.config.compaction_dead_fraction;
        if dead {
            st.roll_requested = true;
        }
        dead.then_some(id)
    };
    if let Some(id) = active {
        inner.work.notify();
        loop {
            let wait = {
                let st = inner.state.borrow();
                st.check_writable()?;
                if st.writer.segment_id != id {
                    break;
                }
                inner.space.wait()
            };
            wait.await;
        }
    }
    let mut report = CompactionReport::default();
    compact_candidates(inner, &mut report).await?;
    Ok(report)
}

/// Writes the hint file of segment `id` by scanning it.
pub(crate) async fn write_hint(inner: &Rc<Inner>, id: u32) -> Result<()> {
    let Some(file) = inner.state.borrow().segments.get(&id).map(|s| s.file.clone()) else {
        return Ok(());
    };
    let dir = &inner.config.dir;
    let path = segment_path(dir, id);
    let mut cursor = SegmentCursor::open(&file, &path, id, inner.config.record_max_bytes()).await?;
    let mut hint = HintWriter::create(id, &hint_tmp_path(dir, id)).await?;
    while let Some((offset, view)) = cursor.next().await? {
        let entry = HintEntry::of(&view.header, u32::try_from(offset).expect("segments are at most 4 GiB"));
        hint.push(&entry, view.key).await?;
        glommio::yield_if_needed().await;
    }
    if !cursor.finish().corrupt.is_empty() {
        // A hint must describe the segment exactly; a damaged segment is
        // scanned at every open instead, which reports the damage again.
        return Ok(());
    }
    finish_hint(inner, hint, false).await
}

/// Completes a segment's hint file and records that the segment has one
/// (`streamed`: built from queued entries, else by a scan).
async fn finish_hint(inner: &Inner, hint: HintWriter, streamed: bool) -> Result<()> {
    let dir = &inner.config.dir;
    let id = hint.segment_id();
    if !inner.state.borrow().segments.contains_key(&id) {
        // Compacted away meanwhile: a hint naming no segment must not be
        // made durable.
        drop(hint);
        let tmp = hint_tmp_path(dir, id);
        return std::fs::remove_file(&tmp).map_err(|e| EngineError::io("removing hint", &tmp, e));
    }
    hint.finish(&hint_path(dir, id)).await?;
    inner
        .dir
        .sync()
        .await
        .map_err(|e| EngineError::glommio("syncing data directory", dir, e))?;
    let mut st = inner.state.borrow_mut();
    let compacted_meanwhile = match st.segments.get_mut(&id) {
        Some(segment) => {
            segment.has_hint = true;
            false
        }
        None => true,
    };
    if streamed {
        st.counters.hints_streamed += 1;
    } else {
        st.counters.hints_scanned += 1;
    }
    drop(st);
    if compacted_meanwhile {
        // Compaction deleted the segment while its hint was being written
        // and found no hint to delete with it.
        let path = hint_path(dir, id);
        std::fs::remove_file(&path).map_err(|e| EngineError::io("removing hint", &path, e))?;
    }
    Ok(())
}

/// Streams the hint entries queued by appends into their segments' hint
/// files, and completes the file of every segment sealed since. The active
/// segment's file stays open in `Inner::hint_stream` for the next call.
pub(crate) async fn stream_hints(inner: &Inner) -> Result<()> {
    // One streamer at a time: compaction streams too, and an explicit
    // compaction runs beside the background task.
    if inner.hint_streaming.replace(true) {
        return Ok(());
    }
    let result = stream_queued(inner).await;
    inner.hint_streaming.set(false);
    result
}

async fn stream_queued(inner: &Inner) -> Result<()> {
    loop {
        let Some(chunk) = inner.state.borrow_mut().hints.take() else {
            return Ok(());
        };
        let segment = chunk.segment;
        let result = stream_chunk(inner, &chunk).await;
        let mut st = inner.state.borrow_mut();
        st.hints.recycle(chunk.payload);
        if result.is_err() {
            // This chunk's entries are gone; the segment's hint will be
            // written from the segment itself once it is sealed.
            st.hints.abandon(segment);
            drop(st);
            inner.hint_stream.borrow_mut().take();
            return result;
        }
    }
}

async fn stream_chunk(inner: &Inner, chunk: &HintChunk) -> Result<()> {
    let open = inner.hint_stream.borrow_mut().take();
    let mut hint = match open {
        Some(hint) if hint.segment_id() == chunk.segment => hint,
        // The segment's earlier entries went out with a writer that failed.
        _ if !chunk.first => {
            inner.state.borrow_mut().hints.abandon(chunk.segment);
            return Ok(());
        }
        _ => HintWriter::create(chunk.segment, &hint_tmp_path(&inner.config.dir, chunk.segment)).await?,
    };
    hint.push_payload(&chunk.payload, chunk.entries).await?;
    if chunk.last {
        finish_hint(inner, hint, true).await
    } else {
        *inner.hint_stream.borrow_mut() = Some(hint);
        Ok(())
    }
}

/// Writes the hint of the active segment at close: from the entries
/// streamed as it was appended if there are all of them, else by reading
/// the segment.
pub(crate) async fn write_active_hint(inner: &Rc<Inner>) -> Result<()> {
    if inner.hint_streaming.get() {
        // An explicit compaction still streams (the background task has
        // stopped): leave this segment without a hint rather than write
        // one file from two places; the next open scans it.
        return Ok(());
    }
    stream_hints(inner).await?;
    let active = inner.state.borrow().writer.segment_id;
    let open = inner.hint_stream.borrow_mut().take();
    match open {
        Some(hint) if hint.segment_id() == active => finish_hint(inner, hint, true).await,
        _ => write_hint(inner, active).await,
    }
}

async fn background_round(inner: &Rc<Inner>) -> Result<()> {
    stream_hints(inner).await?;
    // Segments whose hint was not built as they were appended (sealed by
    // an earlier run of the engine, or their streaming failed). Not while
    // an explicit compaction streams: a segment it has taken off the queue
    // may be finishing its hint.
    let missing: Vec<u32> = if inner.hint_streaming.get() {
        Vec::new()
    } else {
        let st = inner.state.borrow();
        st.segments
            .values()
            .filter(|s| s.sealed && !s.has_hint && !st.hints.holds(s.id))
            .map(|s| s.id)
            .collect()
    };
    for id in missing {
        if inner.state.borrow().closing {
            return Ok(());
        }
        write_hint(inner, id).await?;
    }
    if !inner.config.compaction_auto {
        return Ok(());
    }
    let mut report = CompactionReport::default();
    compact_in_background(inner, &mut report).await
}

/// The background task: hint files for newly sealed segments, then
/// compaction, whenever woken or every `compaction_interval`.
pub(crate) async fn run_background(inner: Rc<Inner>) {
    loop {
        let wake = inner.background.wait();
        if inner.state.borrow().closing {
            return;
        }
        if let Err(err) = background_round(&inner).await {
            if matches!(err, EngineError::Closed) {
                return;
            }
            tracing::error!(dir = %inner.config.dir.display(), "background compaction failed: {err}");
            if matches!(err, EngineError::DiskFull { .. } | EngineError::Failed { .. }) {
                return;
            }
        }
        futures_lite::future::or(wake, glommio::timer::sleep(inner.config.compaction_interval)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: u32, sealed: bool, dead_bytes: u64, record_bytes: u64) -> SegmentUse {
        SegmentUse {
            id,
            sealed,
            dead_bytes,
            record_bytes,
        }
    }

    #[test]
    fn background_compaction_waits_until_the_store_is_as_dead_as_the_threshold() {
        // Segment 1 is 40% dead, past the threshold, but the store is 20%.
        let segments = [seg(1, true, 40, 100), seg(2, true, 0, 100), seg(3, false, 0, 0)];
        assert_eq!(next_in_background(&segments, 0.3), None);
        // Now 30% dead as a whole: the deadest sealed segment goes first.
        let segments = [seg(1, true, 40, 100), seg(2, true, 50, 100), seg(3, false, 0, 100)];
        assert_eq!(next_in_background(&segments, 0.3), Some(2));
    }

    #[test]
    fn background_compaction_takes_nearly_dead_segments_at_once_and_never_the_active_one() {
        let segments = [seg(1, true, 0, 1000), seg(2, true, 85, 100), seg(3, true, 95, 100)];
        assert_eq!(next_in_background(&segments, 0.3), Some(3));
        // The active segment is never a candidate, however dead.
        let segments = [seg(1, true, 0, 100), seg(2, false, 100, 100)];
        assert_eq!(next_in_background(&segments, 0.3), None);
        // Of equally dead segments, the oldest; empty ones never.
        let segments = [seg(5, true, 90, 100), seg(4, true, 90, 100), seg(6, true, 0, 0)];
        assert_eq!(next_in_background(&segments, 0.3), Some(4));
        // A segment under the threshold is never taken, however dead the
        // store (its dead bytes are elsewhere).
        let segments = [seg(1, true, 20, 100), seg(2, false, 100, 100)];
        assert_eq!(next_in_background(&segments, 0.3), None);
        assert_eq!(next_in_background(&[], 0.3), None);
    }
}
