//! Opening a store: lock the directory, rebuild the keydir from hint files
//! (or by scanning segments that have none), cut a torn tail, and start a
//! fresh active segment.
//!
//! Recovery trusts checksums, not file sizes. A torn tail (invalid bytes
//! after the last valid record of the newest segment) is what a crash during
//! a write leaves; it held no acknowledged write, and is truncated. Invalid
//! bytes anywhere else are corruption: reported with their location,
//! skipped, never silently repaired.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::rc::Rc;

use glommio::io::{Directory, OpenOptions};
use glommio::sync::Semaphore;
use glommio::{Latency, Shares};

use crate::cache::ReadCache;
use crate::cache::NO_SLOT;
use crate::config::EngineConfig;
use crate::engine::{Engine, Inner, State};
use crate::error::{EngineError, Result};
use crate::flush::{create_segment, run_flusher, run_preparer};
use crate::hint;
use crate::keydir::{Applied, KeyEntry, Keydir};
use crate::scan::{CorruptRange, SegmentCursor};
use crate::segment::{classify, hint_path, segment_path, FileKind, Segment, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::signal::Signal;
use crate::stats::Counters;

/// What opening the store found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: u32,
    pub segments_from_hints: u32,
    pub segments_scanned: u32,
    pub records: u64,
    pub keys: u64,
    /// Invalid byte ranges inside segments, skipped.
    pub corrupt: Vec<CorruptRange>,
    /// The torn tail cut from the newest segment, if any.
    pub torn_tail: Option<CorruptRange>,
}

/// An exclusive `flock` on `<dir>/LOCK`, held while the engine is open, so
/// two processes never write one store.
pub(crate) struct DirLock {
    _file: std::fs::File,
}

/// Size of the lock file's content; see [`prime_iopoll_probe`].
const LOCK_FILE_BYTES: usize = 4096;

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join("LOCK");
        let not_writable = |source| EngineError::DataDirNotWritable {
            path: dir.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(not_writable)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(EngineError::Locked {
                path: dir.to_path_buf(),
            });
        }
        let mut content = format!("dynkv data directory lock, held by pid {}\n", std::process::id()).into_bytes();
        content.resize(LOCK_FILE_BYTES, b' ');
        use std::io::{Seek, Write};
        file.seek(std::io::SeekFrom::Start(0))
            .and_then(|_| file.write_all(&content))
            .and_then(|_| file.sync_data())
            .map_err(not_writable)?;
        Ok(DirLock { _file: file })
    }
}

/// glommio decides once per block device and process whether to use its
/// IOPOLL ring, by reading the first bytes of the first file opened there
/// with O_DIRECT. If that file is empty (a fresh segment), the read returns
/// at end-of-file without reaching the device, the probe wrongly succeeds,
/// and every later read on a device without poll queues fails with
/// EOPNOTSUPP. Opening the (non-empty, synced) lock file first makes the
/// probe ask the device for real.
async fn prime_iopoll_probe(dir: &Path) -> Result<()> {
    let path = dir.join("LOCK");
    let file = glommio::io::DmaFile::open(&path)
        .await
        .map_err(|e| EngineError::glommio("probing O_DIRECT support with", &path, e))?;
    file.read_at(0, 512)
        .await
        .map_err(|e| EngineError::glommio("probing O_DIRECT reads with", &path, e))?;
    file.close()
        .await
        .map_err(|e| EngineError::glommio("closing", &path, e))?;
    Ok(())
}

/// Builds the keydir and segment table from the files on disk.
struct Loader {
    keydir: Keydir,
    segments: BTreeMap<u32, Segment>,
    seq_max: u64,
    report: RecoveryReport,
}

impl Loader {
    fn apply(&mut self, segment: u32, partition: u32, key: &[u8], entry: KeyEntry) {
        let bytes = entry.record_bytes();
        self.segments
            .get_mut(&segment)
            .expect("segment registered before its records")
            .note_record(bytes, entry.seq, entry.is_tombstone());
        self.seq_max = self.seq_max.max(entry.seq);
        self.report.records += 1;
        let dead = match self.keydir.apply(partition, key, entry, |_| NO_SLOT) {
            Applied::Newer(Some(old)) => Some((old.segment, old.record_bytes())),
            Applied::Newer(None) => None,
            Applied::Stale => Some((segment, bytes)),
        };
        if let Some((id, bytes)) = dead {
            if let Some(seg) = self.segments.get_mut(&id) {
                seg.dead_bytes += bytes as u64;
            }
        }
    }

    async fn load_from_hint(&mut self, id: u32, dir: &Path) -> Result<bool> {
        let Some(payload) = hint::read_hint(&hint_path(dir, id), id).await? else {
            tracing::warn!(segment = id, "hint file is damaged; scanning the segment instead");
            return Ok(false);
        };
        for (e, key) in hint::entries(&payload) {
            let entry = KeyEntry {
                seq: e.seq,
                body_checksum: e.body_checksum,
                segment: id,
                offset: e.offset,
                value_len: e.value_len,
                key_len: e.key_len,
                flags: e.flags,
                cache_slot: NO_SLOT,
            };
            self.apply(id, e.partition, key, entry);
        }
        self.report.segments_from_hints += 1;
        Ok(true)
    }

    async fn load_by_scan(&mut self, id: u32, dir: &Path, newest: bool, record_max: usize) -> Result<()> {
        let path = segment_path(dir, id);
        let file = self.segments[&id].file.clone();
        let mut cursor = SegmentCursor::open(&file, &path, id, record_max).await?;
        while let Some((offset, view)) = cursor.next().await? {
            let entry = KeyEntry::at(
                &view.header,
                id,
                u32::try_from(offset).expect("segments are at most 4 GiB"),
            );
            let (partition, key) = (view.header.partition, view.key.to_vec());
            self.apply(id, partition, &key, entry);
        }
        let scan = cursor.finish();
        self.report.segments_scanned += 1;
        for range in &scan.corrupt {
            let is_tail = range.start >= scan.valid_end;
            if is_tail && newest {
                tracing::warn!(
                    segment = id,
                    offset = range.start,
                    bytes = range.end - range.start,
                    "truncating torn tail"
                );
                file.truncate(scan.valid_end)
                    .await
                    .map_err(|e| EngineError::glommio("truncating torn tail of", &path, e))?;
                file.fdatasync()
                    .await
                    .map_err(|e| EngineError::glommio("syncing", &path, e))?;
                self.report.torn_tail = Some(*range);
            } else {
                tracing::error!(
                    segment = id,
                    start = range.start,
                    end = range.end,
                    "corrupt range in segment skipped; anti-entropy must repair its keys from replicas"
                );
                self.report.corrupt.push(*range);
            }
        }
        Ok(())
    }
}

impl Loader {
    /// Deletes segments with no records and no damage (a store opened and
    /// closed without writes leaves one), so restarts do not pile them up.
    async fn remove_empty_segments(&mut self, dir: &Path) -> Result<()> {
        let damaged: BTreeSet<u32> = self.report.corrupt.iter().map(|r| r.segment).collect();
        let empty: Vec<u32> = self
            .segments
            .values()
            .filter(|s| s.record_bytes == 0 && !damaged.contains(&s.id))
            .map(|s| s.id)
            .collect();
        for id in empty {
            let segment = self.segments.remove(&id).expect("listed above");
            let path = segment_path(dir, id);
            segment
                .file
                .remove()
                .await
                .map_err(|e| EngineError::glommio("removing empty segment", &path, e))?;
            let hint = hint_path(dir, id);
            if segment.has_hint {
                std::fs::remove_file(&hint).map_err(|e| EngineError::io("removing hint", &hint, e))?;
            }
        }
        Ok(())
    }
}

/// Lists segment ids and hint ids, and removes half-written hint files.
fn list_dir(dir: &Path) -> Result<(Vec<u32>, BTreeSet<u32>)> {
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io("listing", dir, e))?;
    let mut segments = Vec::new();
    let mut hints = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::io("listing", dir, e))?;
        let name = entry.file_name();
        match classify(&name.to_string_lossy()) {
            FileKind::Segment(id) => segments.push(id),
            FileKind::Hint(id) => {
                hints.insert(id);
            }
            FileKind::HintTmp(_) => {
                std::fs::remove_file(entry.path()).map_err(|e| EngineError::io("removing", entry.path(), e))?;
            }
            FileKind::Other => {}
        }
    }
    segments.sort_unstable();
    Ok((segments, hints))
}

/// Whether a segment file is empty or all zeros in its first block (what a
/// crash during creation leaves: the header is one sector, written and
/// synced before any record).
async fn is_blank(file: &glommio::io::DmaFile, path: &Path) -> Result<bool> {
    let size = file
        .file_size()
        .await
        .map_err(|e| EngineError::glommio("sizing segment", path, e))?;
    if size > 64 << 10 {
        return Ok(false);
    }
    let head = file
        .read_at(0, size as usize)
        .await
        .map_err(|e| EngineError::glommio("reading segment", path, e))?;
    Ok(head.iter().all(|&b| b == 0))
}

/// Whether segment `id` holds no valid record (or not even a valid header).
async fn holds_no_record(dir: &Path, id: u32, record_max: usize) -> Result<bool> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .read(true)
        .dma_open(&path)
        .await
        .map_err(|e| EngineError::glommio("opening segment", &path, e))?;
    let empty = match check_segment_header(&file, &path, id).await {
        Err(_) => true,
        Ok(()) => {
            let mut cursor = SegmentCursor::open(&file, &path, id, record_max).await?;
            cursor.next().await?.is_none()
        }
    };
    file.close()
        .await
        .map_err(|e| EngineError::glommio("closing", &path, e))?;
    Ok(empty)
}

async fn check_segment_header(file: &glommio::io::DmaFile, path: &Path, id: u32) -> Result<()> {
    let head = file
        .read_at(0, SEGMENT_HEADER_BYTES)
        .await
        .map_err(|e| EngineError::glommio("reading segment header", path, e))?;
    SegmentHeader::check(&head, path, id)
}

pub(crate) async fn open(mut config: EngineConfig) -> Result<Engine> {
    config.validate()?;
    std::fs::create_dir_all(&config.dir).map_err(|source| EngineError::DataDirNotWritable {
        path: config.dir.clone(),
        source,
    })?;
    // glommio opens paths relative to no directory (dirfd -1), so a relative
    // path fails with EBADF; resolve it once here.
    config.dir = std::fs::canonicalize(&config.dir).map_err(|e| EngineError::io("resolving", &config.dir, e))?;
    let lock = DirLock::acquire(&config.dir)?;
    prime_iopoll_probe(&config.dir).await?;
    let dir = Directory::open(&config.dir)
        .await
        .map_err(|e| EngineError::glommio("opening data directory", &config.dir, e))?;
    let (ids, hints) = list_dir(&config.dir)?;
    for &orphan in hints.iter().filter(|id| ids.binary_search(id).is_err()) {
        // A crash after compaction deleted a segment and before its hint
        // went too: a hint naming no segment must not outlive it, or a
        // later segment given the same id would be read through it.
        let path = hint_path(&config.dir, orphan);
        tracing::warn!(segment = orphan, "removing a hint file whose segment is gone");
        std::fs::remove_file(&path).map_err(|e| EngineError::io("removing", &path, e))?;
    }
    let mut loader = Loader {
        keydir: Keydir::default(),
        segments: BTreeMap::new(),
        seq_max: 0,
        report: RecoveryReport::default(),
    };
    let record_max = config.record_max_bytes();
    // A torn tail can only be in the last segment written to. That is the
    // newest, unless the newest holds no record: then it may be one the
    // preparer made ahead of time (`flush::run_preparer`) and the one
    // before it was the active segment.
    let tail_from = match ids.as_slice() {
        [.., _, last] if holds_no_record(&config.dir, *last, record_max).await? => ids.len() - 2,
        _ => ids.len().saturating_sub(1),
    };
    for (i, &id) in ids.iter().enumerate() {
        let path = segment_path(&config.dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&path)
            .await
            .map_err(|e| EngineError::glommio("opening segment", &path, e))?;
        if let Err(err) = check_segment_header(&file, &path, id).await {
            if i + 1 == ids.len() && is_blank(&file, &path).await? {
                // A crash while creating this segment, before its header was
                // durable: it never held a record.
                tracing::warn!(segment = id, "removing a segment whose creation was cut short");
                file.remove()
                    .await
                    .map_err(|e| EngineError::glommio("removing unfinished segment", &path, e))?;
                continue;
            }
            return Err(err);
        }
        let mut segment = Segment::new(id, Rc::new(file));
        segment.sealed = true;
        loader.segments.insert(id, segment);
        let from_hint = hints.contains(&id) && loader.load_from_hint(id, &config.dir).await?;
        if from_hint {
            loader.segments.get_mut(&id).expect("just inserted").has_hint = true;
        } else {
            loader.load_by_scan(id, &config.dir, i >= tail_from, record_max).await?;
        }
    }
    loader.remove_empty_segments(&config.dir).await?;
    loader.report.segments = loader.segments.len() as u32;
    loader.report.keys = loader.keydir.key_count();

    let active_id = ids.last().map_or(1, |id| id + 1);
    let writer = create_segment(
        &dir,
        &config.dir,
        active_id,
        record_max,
        config.segment_size_max_bytes,
        0,
    )
    .await?;
    loader
        .segments
        .insert(active_id, Segment::new(active_id, writer.file.clone()));
    let state = State {
        keydir: loader.keydir,
        segments: loader.segments,
        writer,
        cache: ReadCache::new(config.cache_capacity_bytes),
        next_seq: loader.seq_max + 1,
        next_segment_id: active_id + 1,
        next_writer: None,
        preparing: false,
        roll_requested: false,
        space_wanted: false,
        sync_requested_lsn: 0,
        closing: false,
        failure: None,
        counters: Counters::default(),
        recovery: loader.report,
        hints: hint::HintQueue::default(),
    };
    let background_shares = config.background_shares;
    let inner = Rc::new(Inner {
        config,
        state: RefCell::new(state),
        dir,
        durable: Signal::default(),
        space: Signal::default(),
        work: Signal::default(),
        background: Signal::default(),
        prepare: Signal::default(),
        compaction_permit: Semaphore::new(1),
        tasks: RefCell::new(Vec::new()),
        lock: RefCell::new(Some(lock)),
        hint_stream: RefCell::new(None),
        hint_streaming: std::cell::Cell::new(false),
    });
    spawn_tasks(&inner, background_shares)?;
    Ok(Engine { inner })
}

fn spawn_tasks(inner: &Rc<Inner>, background_shares: usize) -> Result<()> {
    let executor = glommio::executor();
    // The flusher mostly awaits I/O, so full shares suffice; it does not ask
    // for Latency::Matters. A latency queue arms glommio 0.9's preemption
    // timer every millisecond, and glommio 0.9.0 can park an executor for
    // good when the timer fires just before a run (it treats "preempted
    // before running anything" as "nothing to run"). Seen as a rare hang in
    // our compaction test; the vendored glommio now fixes it (change 5 of
    // vendor/glommio/DYNKV-PATCH.md), and the flusher needs no latency
    // queue anyway.
    let flush_queue = executor.create_task_queue(Shares::Static(1000), Latency::NotImportant, "dynkv-flush");
    let background_queue = executor.create_task_queue(
        Shares::Static(background_shares),
        Latency::NotImportant,
        "dynkv-background",
    );
    let spawn_error = |e: glommio::GlommioError<()>| EngineError::Config(format!("cannot spawn engine task: {e}"));
    let flusher = glommio::spawn_local_into(run_flusher(inner.clone()), flush_queue).map_err(spawn_error)?;
    let preparer = glommio::spawn_local_into(run_preparer(inner.clone()), flush_queue).map_err(spawn_error)?;
    let background = glommio::spawn_local_into(crate::compaction::run_background(inner.clone()), background_queue)
        .map_err(spawn_error)?;
    inner
        .tasks
        .borrow_mut()
        .extend([flusher.detach(), preparer.detach(), background.detach()]);
    Ok(())
}
