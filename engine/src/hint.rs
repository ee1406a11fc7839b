//! Hint files: a compact index of one sealed segment, so that reopening a
//! store reads keys and locations but never values.
//!
//! A hint file is `HintFileHeader | (HintEntry | key)*`. It is written to a
//! temporary name, synced, and renamed into place, so it is either whole or
//! absent. A hint whose checksum fails is ignored and its segment scanned
//! instead: hints are an optimisation, never the source of truth.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytemuck::{Pod, Zeroable};
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::error::{EngineError, Result};
use crate::record::RecordHeader;

const HINT_MAGIC: u64 = u64::from_le_bytes(*b"DKVHINT1");
const HINT_FORMAT: u32 = 1;
const HINT_HEADER_BYTES: usize = std::mem::size_of::<HintFileHeader>();
const HINT_ENTRY_BYTES: usize = std::mem::size_of::<HintEntry>();

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct HintFileHeader {
    magic: u64,
    format: u32,
    segment_id: u32,
    entry_count: u64,
    payload_bytes: u64,
    payload_checksum: u64,
    reserved: [u64; 2],
    /// xxh3-64 over the bytes before this field.
    header_checksum: u64,
}

const _: () = assert!(HINT_HEADER_BYTES == 64);

/// One record of the segment, minus its value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct HintEntry {
    pub(crate) seq: u64,
    pub(crate) body_checksum: u64,
    pub(crate) offset: u32,
    pub(crate) value_len: u32,
    pub(crate) partition: u32,
    pub(crate) key_len: u16,
    pub(crate) flags: u8,
    pub(crate) reserved: u8,
}

const _: () = assert!(HINT_ENTRY_BYTES == 32);

impl HintEntry {
    /// The entry of the record with `header` at `offset` of its segment.
    pub(crate) fn of(header: &RecordHeader, offset: u32) -> HintEntry {
        HintEntry {
            seq: header.seq,
            body_checksum: header.body_checksum,
            offset,
            value_len: header.value_len,
            partition: header.partition,
            key_len: header.key_len,
            flags: header.flags,
            reserved: 0,
        }
    }
}

/// Hint payload queued between appends and the hint writer: once this many
/// bytes are waiting, the background task is woken to stream them out.
const HINT_QUEUE_WAKE_BYTES: usize = 1 << 20;

/// The most hint payload queued per engine. Past it (the background task
/// starved, or stopped by a full disk) the segment being appended is given
/// up: its hint is written later by reading it back.
pub(crate) const HINT_QUEUE_MAX_BYTES: usize = 64 << 20;

/// The hint entries of records appended since the background task last
/// streamed them into hint files, per segment, oldest first.
///
/// A segment's hint is built as its records are appended, instead of by
/// reading the sealed segment back: that read, with its decode and
/// checksum of every value, was a fifth of a shard's CPU under a load of
/// 1 KiB puts. Every record reaches a segment through the log's append,
/// and a segment is sealed only once all of them are written and synced,
/// so the entries noted here describe the sealed segment exactly.
#[derive(Default)]
pub(crate) struct HintQueue {
    logs: std::collections::VecDeque<HintLog>,
    /// Payload bytes noted since the background task was last woken.
    unannounced_bytes: usize,
    /// Payload bytes held by all logs.
    queued_bytes: usize,
    /// A drained payload's allocation, reused by the next log taken.
    spare: Vec<u8>,
}

struct HintLog {
    segment: u32,
    payload: Vec<u8>,
    entries: u64,
    /// Payload was taken before: a writer for this segment holds the rest.
    started: bool,
    /// The segment is sealed; this log has its last entries.
    sealed: bool,
    /// Entries were lost (a write of the hint failed): this segment's hint
    /// must come from reading the segment back.
    abandoned: bool,
}

/// Payload taken from a [`HintQueue`] to stream into a segment's hint.
pub(crate) struct HintChunk {
    pub(crate) segment: u32,
    pub(crate) payload: Vec<u8>,
    pub(crate) entries: u64,
    /// The first payload of the segment: a new hint file starts with it.
    pub(crate) first: bool,
    /// The last payload of the segment: its hint file is complete after it.
    pub(crate) last: bool,
}

impl HintQueue {
    /// Notes the record with `header` appended at `offset` of `segment`.
    /// Returns true when enough is queued that the streamer should run.
    pub(crate) fn note(&mut self, segment: u32, offset: u32, header: &RecordHeader, key: &[u8]) -> bool {
        if self.logs.back().is_none_or(|log| log.segment != segment) {
            debug_assert!(
                self.logs.back().is_none_or(|log| log.segment < segment),
                "segments are appended in order"
            );
            self.logs.push_back(HintLog {
                segment,
                payload: std::mem::take(&mut self.spare),
                entries: 0,
                started: false,
                sealed: false,
                abandoned: false,
            });
        }
        let log = self.logs.back_mut().expect("pushed above");
        if log.abandoned {
            return false;
        }
        let bytes = HINT_ENTRY_BYTES + key.len();
        if self.queued_bytes + bytes > HINT_QUEUE_MAX_BYTES {
            self.abandon(segment);
            return false;
        }
        let entry = HintEntry::of(header, offset);
        log.payload.extend_from_slice(bytemuck::bytes_of(&entry));
        log.payload.extend_from_slice(key);
        log.entries += 1;
        self.queued_bytes += bytes;
        self.unannounced_bytes += bytes;
        if self.unannounced_bytes >= HINT_QUEUE_WAKE_BYTES {
            self.unannounced_bytes = 0;
            return true;
        }
        false
    }

    /// Marks `segment` sealed: nothing more will be appended to it.
    pub(crate) fn seal(&mut self, segment: u32) {
        if let Some(log) = self.logs.iter_mut().find(|log| log.segment == segment) {
            log.sealed = true;
        }
    }

    /// Whether enough is queued that a long-running background job
    /// (compaction) should stream it out before going on.
    pub(crate) fn backlogged(&self) -> bool {
        self.queued_bytes >= HINT_QUEUE_WAKE_BYTES
    }

    /// Whether entries of `segment` are still queued (its hint is not yet
    /// complete, or was abandoned and waits to be dropped).
    pub(crate) fn holds(&self, segment: u32) -> bool {
        self.logs.iter().any(|log| log.segment == segment)
    }

    /// Takes the oldest segment's queued payload. Abandoned logs are
    /// dropped on the way, once sealed.
    pub(crate) fn take(&mut self) -> Option<HintChunk> {
        loop {
            let log = self.logs.front_mut()?;
            if log.abandoned {
                if !log.sealed {
                    return None;
                }
                self.logs.pop_front();
                continue;
            }
            if !log.sealed && log.payload.is_empty() {
                return None;
            }
            self.queued_bytes -= log.payload.len();
            let chunk = HintChunk {
                segment: log.segment,
                payload: std::mem::replace(&mut log.payload, std::mem::take(&mut self.spare)),
                entries: std::mem::take(&mut log.entries),
                first: !std::mem::replace(&mut log.started, true),
                last: log.sealed,
            };
            if chunk.last {
                self.logs.pop_front();
            }
            return Some(chunk);
        }
    }

    /// Gives back a streamed payload's allocation for reuse.
    pub(crate) fn recycle(&mut self, mut payload: Vec<u8>) {
        payload.clear();
        if payload.capacity() > self.spare.capacity() {
            self.spare = payload;
        }
    }

    /// Gives up streaming `segment`'s hint (part of it was lost); the
    /// segment's hint is then written by reading it back once sealed.
    pub(crate) fn abandon(&mut self, segment: u32) {
        if let Some(log) = self.logs.iter_mut().find(|log| log.segment == segment) {
            self.queued_bytes -= log.payload.len();
            log.abandoned = true;
            log.payload = Vec::new();
            log.entries = 0;
        }
    }
}

impl HintFileHeader {
    fn checksum(&self) -> u64 {
        xxh3_64(&bytemuck::bytes_of(self)[..HINT_HEADER_BYTES - 8])
    }
}

/// Bytes of a hint file staged in memory before they are written out.
const HINT_CHUNK_BYTES: usize = 1 << 20;

/// Streams a hint file out as its entries come, through one reused chunk
/// buffer, so a hint costs 1 MiB of memory however large its segment.
///
/// Building the whole payload in memory and then copying it into an
/// aligned buffer cost a shard 5% of its CPU under an update load: a 64 MiB
/// segment of small records makes a hint of about 17 MiB, and each such
/// buffer, fresh from the OS, was zeroed page by page by the kernel. The
/// header (counts and payload checksum) is known only at the end, so the
/// file's first aligned block is kept and written again last.
pub(crate) struct HintWriter {
    segment_id: u32,
    file: DmaFile,
    /// Where the file is written; `finish` renames it.
    tmp_path: PathBuf,
    chunk: Rc<DmaBuffer>,
    /// Bytes of `chunk` filled.
    fill: usize,
    /// Bytes of the file written so far (whole chunks).
    written: u64,
    /// The file's first aligned block as first written (the header's
    /// place zeroed), once the first chunk has gone out.
    first_block: Option<Vec<u8>>,
    entries: u64,
    payload_bytes: u64,
    payload_hash: Xxh3,
}

impl HintWriter {
    /// Creates the hint of `segment_id` at `tmp_path`; `finish` renames it.
    pub(crate) async fn create(segment_id: u32, tmp_path: &Path) -> Result<HintWriter> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(tmp_path)
            .await
            .map_err(|e| EngineError::glommio("creating hint file", tmp_path, e))?;
        let chunk = Rc::new(file.alloc_dma_buffer(HINT_CHUNK_BYTES));
        debug_assert_eq!(file.align_up(HINT_CHUNK_BYTES as u64), HINT_CHUNK_BYTES as u64);
        Ok(HintWriter {
            segment_id,
            file,
            tmp_path: tmp_path.to_path_buf(),
            chunk,
            // The header's place; it is filled in at the end.
            fill: HINT_HEADER_BYTES,
            written: 0,
            first_block: None,
            entries: 0,
            payload_bytes: 0,
            payload_hash: Xxh3::new(),
        })
    }

    pub(crate) fn segment_id(&self) -> u32 {
        self.segment_id
    }

    pub(crate) async fn push(&mut self, entry: &HintEntry, key: &[u8]) -> Result<()> {
        assert_eq!(usize::from(entry.key_len), key.len(), "hint key length mismatch");
        self.append(bytemuck::bytes_of(entry)).await?;
        self.append(key).await?;
        self.entries += 1;
        Ok(())
    }

    /// Appends `entries` entries already laid out as hint payload (as a
    /// [`HintQueue`] builds them).
    pub(crate) async fn push_payload(&mut self, payload: &[u8], entries: u64) -> Result<()> {
        self.append(payload).await?;
        self.entries += entries;
        Ok(())
    }

    async fn append(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.payload_hash.update(bytes);
        self.payload_bytes += bytes.len() as u64;
        while !bytes.is_empty() {
            let n = bytes.len().min(HINT_CHUNK_BYTES - self.fill);
            let fill = self.fill;
            self.chunk_mut()[fill..fill + n].copy_from_slice(&bytes[..n]);
            self.fill += n;
            bytes = &bytes[n..];
            if self.fill == HINT_CHUNK_BYTES {
                if self.first_block.is_none() {
                    let block = self.file.align_up(HINT_HEADER_BYTES as u64) as usize;
                    let mut first = self.chunk.as_bytes()[..block].to_vec();
                    first[..HINT_HEADER_BYTES].fill(0);
                    self.first_block = Some(first);
                }
                let written = self
                    .file
                    .write_rc_at(self.chunk.clone(), self.written)
                    .await
                    .map_err(|e| EngineError::glommio("writing hint file", &self.tmp_path, e))?;
                EngineError::check_written("writing hint file", &self.tmp_path, written, HINT_CHUNK_BYTES)?;
                self.written += HINT_CHUNK_BYTES as u64;
                self.fill = 0;
            }
        }
        Ok(())
    }

    /// The chunk, to fill; its last write has completed, so nothing else
    /// holds it (a fresh one if something unexpectedly still does).
    fn chunk_mut(&mut self) -> &mut [u8] {
        if Rc::get_mut(&mut self.chunk).is_none() {
            self.chunk = Rc::new(self.file.alloc_dma_buffer(HINT_CHUNK_BYTES));
        }
        Rc::get_mut(&mut self.chunk)
            .expect("a fresh chunk has one owner")
            .as_bytes_mut()
    }

    /// Writes what is staged and the header, makes the file durable, and
    /// renames it to `final_path`.
    pub(crate) async fn finish(mut self, final_path: &Path) -> Result<()> {
        let mut header = HintFileHeader {
            magic: HINT_MAGIC,
            format: HINT_FORMAT,
            segment_id: self.segment_id,
            entry_count: self.entries,
            payload_bytes: self.payload_bytes,
            payload_checksum: self.payload_hash.digest(),
            reserved: [0; 2],
            header_checksum: 0,
        };
        header.header_checksum = header.checksum();
        debug_assert_eq!(
            self.written + self.fill as u64,
            (HINT_HEADER_BYTES as u64) + self.payload_bytes,
            "every staged byte is the header's place or payload"
        );
        let tmp_path = std::mem::take(&mut self.tmp_path);
        let io = |e| EngineError::glommio("writing hint file", &tmp_path, e);
        let tail = self.file.align_up(self.fill as u64) as usize;
        let (fill, header_here) = (self.fill, self.first_block.is_none());
        let chunk = self.chunk_mut();
        chunk[fill..tail].fill(0);
        if header_here {
            chunk[..HINT_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&header));
        }
        if tail > 0 {
            let mut last = match Rc::try_unwrap(self.chunk) {
                Ok(chunk) => chunk,
                // Not reached: chunk_mut made the chunk ours alone.
                Err(shared) => {
                    let mut copy = self.file.alloc_dma_buffer(HINT_CHUNK_BYTES);
                    copy.as_bytes_mut().copy_from_slice(shared.as_bytes());
                    copy
                }
            };
            last.trim_to_size(tail);
            let written = self.file.write_at(last, self.written).await.map_err(io)?;
            EngineError::check_written("writing hint file", &tmp_path, written, tail)?;
        }
        if let Some(mut first) = self.first_block.take() {
            first[..HINT_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&header));
            let mut block = self.file.alloc_dma_buffer(first.len());
            block.as_bytes_mut().copy_from_slice(&first);
            let written = self.file.write_at(block, 0).await.map_err(io)?;
            EngineError::check_written("writing hint file", &tmp_path, written, first.len())?;
        }
        self.file.fdatasync().await.map_err(io)?;
        self.file.rename(final_path).await.map_err(io)?;
        self.file.close().await.map_err(io)?;
        Ok(())
    }
}

/// Reads a hint file. Returns `None` (and the caller scans the segment) if
/// the file is damaged or names another segment.
pub(crate) async fn read_hint(path: &Path, segment_id: u32) -> Result<Option<Vec<u8>>> {
    let file = DmaFile::open(path)
        .await
        .map_err(|e| EngineError::glommio("opening hint file", path, e))?;
    let size = file
        .file_size()
        .await
        .map_err(|e| EngineError::glommio("sizing hint file", path, e))?;
    let read = file
        .read_at(0, size as usize)
        .await
        .map_err(|e| EngineError::glommio("reading hint file", path, e))?;
    let _ = file.close().await;
    let Some(raw) = read.get(..HINT_HEADER_BYTES) else {
        return Ok(None);
    };
    let header: HintFileHeader = bytemuck::pod_read_unaligned(raw);
    let valid = header.magic == HINT_MAGIC
        && header.header_checksum == header.checksum()
        && header.format == HINT_FORMAT
        && header.segment_id == segment_id;
    if !valid {
        return Ok(None);
    }
    let end = HINT_HEADER_BYTES as u64 + header.payload_bytes;
    let Some(payload) = read.get(HINT_HEADER_BYTES..end.min(usize::MAX as u64) as usize) else {
        return Ok(None);
    };
    if xxh3_64(payload) != header.payload_checksum {
        return Ok(None);
    }
    Ok(Some(payload.to_vec()))
}

/// Iterates the entries of a verified hint payload. Stops at the first
/// malformed entry (impossible after the checksum passed, but a disk
/// boundary is asserted, not trusted).
pub(crate) fn entries(payload: &[u8]) -> impl Iterator<Item = (HintEntry, &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let raw = payload.get(pos..pos + HINT_ENTRY_BYTES)?;
        let entry: HintEntry = bytemuck::pod_read_unaligned(raw);
        let key_start = pos + HINT_ENTRY_BYTES;
        let key = payload.get(key_start..key_start + usize::from(entry.key_len))?;
        pos = key_start + key.len();
        Some((entry, key))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(queue: &mut HintQueue, segment: u32, seq: u64, key: &[u8]) -> bool {
        let header = crate::record::header_for(7, seq, 0, key.len() as u16, 10, seq * 3);
        queue.note(segment, seq as u32 * 64, &header, key)
    }

    #[test]
    fn a_segment_streams_in_order_and_ends_at_its_seal() {
        let mut queue = HintQueue::default();
        note(&mut queue, 1, 1, b"a");
        note(&mut queue, 1, 2, b"bb");
        let chunk = queue.take().unwrap();
        assert_eq!(
            (chunk.segment, chunk.entries, chunk.first, chunk.last),
            (1, 2, true, false)
        );
        let got: Vec<_> = entries(&chunk.payload)
            .map(|(e, k)| (e.seq, e.offset, k.to_vec()))
            .collect();
        assert_eq!(got, [(1, 64, b"a".to_vec()), (2, 128, b"bb".to_vec())]);
        queue.recycle(chunk.payload);
        assert!(queue.take().is_none(), "nothing new for the active segment");
        note(&mut queue, 1, 3, b"c");
        queue.seal(1);
        note(&mut queue, 2, 4, b"d");
        let chunk = queue.take().unwrap();
        assert_eq!(
            (chunk.segment, chunk.entries, chunk.first, chunk.last),
            (1, 1, false, true)
        );
        assert!(!queue.holds(1));
        let chunk = queue.take().unwrap();
        assert_eq!(
            (chunk.segment, chunk.entries, chunk.first, chunk.last),
            (2, 1, true, false)
        );
        assert!(queue.holds(2));
    }

    #[test]
    fn an_abandoned_segment_queues_nothing_and_leaves_at_its_seal() {
        let mut queue = HintQueue::default();
        note(&mut queue, 3, 1, b"a");
        queue.abandon(3);
        note(&mut queue, 3, 2, b"b");
        assert!(queue.take().is_none());
        assert!(queue.holds(3), "still being appended");
        queue.seal(3);
        note(&mut queue, 4, 3, b"c");
        let chunk = queue.take().unwrap();
        assert_eq!((chunk.segment, chunk.entries, chunk.first), (4, 1, true));
        assert!(!queue.holds(3));
    }

    #[test]
    fn past_its_memory_bound_the_queue_gives_up_the_segment_being_appended() {
        let mut queue = HintQueue::default();
        let key = [0u8; 992];
        let per_entry = HINT_ENTRY_BYTES + key.len();
        note(&mut queue, 1, 0, &key);
        queue.seal(1);
        // Exactly full: the bound is reached, not passed.
        for i in 1..HINT_QUEUE_MAX_BYTES / per_entry {
            note(&mut queue, 2, i as u64, &key);
        }
        assert_eq!(queue.queued_bytes, HINT_QUEUE_MAX_BYTES);
        assert!(queue.holds(2));
        note(&mut queue, 2, 70_000, &key);
        assert_eq!(queue.queued_bytes, per_entry, "segment 2's entries freed");
        let chunk = queue.take().unwrap();
        assert_eq!(
            (chunk.segment, chunk.entries, chunk.last),
            (1, 1, true),
            "the sealed one still streams"
        );
        assert_eq!(queue.queued_bytes, 0);
        queue.seal(2);
        assert!(queue.take().is_none(), "segment 2 is left to a scan");
        assert!(!queue.holds(2));
    }

    #[test]
    fn the_streamer_is_woken_once_per_mebibyte_queued() {
        let mut queue = HintQueue::default();
        let key = [0u8; 224];
        let per_entry = HINT_ENTRY_BYTES + key.len();
        let wakes = (0..3 * HINT_QUEUE_WAKE_BYTES / per_entry)
            .filter(|&i| note(&mut queue, 1, i as u64, &key))
            .count();
        assert_eq!(wakes, 3);
    }
}
