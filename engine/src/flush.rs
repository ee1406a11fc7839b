//! The flusher: the one task that writes and syncs the active segment, and
//! seals it when full.
//!
//! Group commit falls out of its shape. While one batch is being written and
//! synced, puts keep appending to the next buffer; the next batch takes all
//! of them, so one write and one `fdatasync` cover every put that arrived
//! during the previous sync.

use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::io::OpenOptions;

use crate::config::SyncMode;
use crate::engine::{Failure, Inner};
use crate::error::{EngineError, Result};
use crate::segment::{segment_path, Segment, SegmentHeader};
use crate::writer::LogWriter;

/// Under `sync=never`, buffered data is written at least this often.
const LAZY_WRITE_DELAY: Duration = Duration::from_millis(10);

enum Step {
    Exit,
    Wait(Option<Duration>),
    Flush { sync: bool, roll: bool },
}

fn decide(inner: &Inner, last_sync: Instant, last_write: Instant) -> Step {
    let st = inner.state.borrow();
    if st.failure.is_some() {
        return Step::Exit;
    }
    let writer = &st.writer;
    let unwritten = writer.has_unwritten();
    let unsynced = unwritten || writer.written_lsn > writer.durable_lsn;
    if st.roll_requested {
        return Step::Flush { sync: true, roll: true };
    }
    if unsynced && (st.closing || st.sync_requested_lsn > writer.durable_lsn) {
        return Step::Flush {
            sync: true,
            roll: false,
        };
    }
    if st.closing {
        return Step::Exit;
    }
    let eager = st.space_wanted || writer.unwritten_bytes() >= writer.capacity() / 2;
    match inner.config.sync {
        SyncMode::Always if unwritten => Step::Flush {
            sync: true,
            roll: false,
        },
        SyncMode::Always => Step::Wait(None),
        SyncMode::Interval(interval) => {
            let since = last_sync.elapsed();
            if unsynced && since >= interval {
                Step::Flush {
                    sync: true,
                    roll: false,
                }
            } else if unwritten && eager {
                Step::Flush {
                    sync: false,
                    roll: false,
                }
            } else if unsynced {
                Step::Wait(Some(interval - since))
            } else {
                Step::Wait(None)
            }
        }
        SyncMode::Never => {
            let since = last_write.elapsed();
            if unwritten && (eager || since >= LAZY_WRITE_DELAY) {
                Step::Flush {
                    sync: false,
                    roll: false,
                }
            } else if unwritten {
                Step::Wait(Some(LAZY_WRITE_DELAY - since))
            } else {
                Step::Wait(None)
            }
        }
    }
}

/// The flusher task's body. Exits on close (after a final flush and sync)
/// or on the first I/O failure, which it records for every waiter.
pub(crate) async fn run_flusher(inner: Rc<Inner>) {
    let mut last_sync = Instant::now();
    let mut last_write = Instant::now();
    loop {
        match decide(&inner, last_sync, last_write) {
            Step::Exit => return,
            Step::Wait(timeout) => {
                let wake = inner.work.wait();
                match timeout {
                    None => wake.await,
                    Some(t) => futures_lite::future::or(wake, glommio::timer::sleep(t)).await,
                }
            }
            Step::Flush { sync, roll } => {
                let mut result = flush_once(&inner, sync).await;
                last_write = Instant::now();
                if sync {
                    last_sync = last_write;
                }
                let flushed_all = !inner.state.borrow().writer.has_unwritten();
                if roll && flushed_all && result.is_ok() {
                    result = roll_segment(&inner).await;
                }
                if let Err(err) = result {
                    fail(&inner, &err);
                    return;
                }
            }
        }
    }
}

/// Records a failure and wakes everyone who waits on the log.
pub(crate) fn fail(inner: &Inner, err: &EngineError) {
    tracing::error!(dir = %inner.config.dir.display(), "log write failed, refusing writes until reopened: {err}");
    inner.state.borrow_mut().failure = Some(Failure::from_error(err));
    inner.durable.notify();
    inner.space.notify();
    inner.work.notify();
}

/// Writes the pending batch, then syncs if asked.
async fn flush_once(inner: &Inner, sync: bool) -> Result<()> {
    let batch = inner.state.borrow_mut().writer.take_batch();
    if let Some(batch) = batch {
        let expected = batch.buf.len();
        let path = || segment_path(&inner.config.dir, inner.state.borrow().writer.segment_id);
        let written = batch
            .file
            .write_rc_at(batch.buf.clone(), batch.file_offset)
            .await
            .map_err(|e| EngineError::glommio("writing segment", path(), e))?;
        // The path is built only for an error.
        if written != expected {
            EngineError::check_written("writing segment", path(), written, expected)?;
        }
        {
            let mut st = inner.state.borrow_mut();
            st.writer.batch_written(batch.lsn);
            st.space_wanted = false;
            st.counters.batches += 1;
            st.counters.bytes_written += expected as u64;
        }
        inner.space.notify();
    }
    if sync {
        let (file, lsn, id) = {
            let st = inner.state.borrow();
            (st.writer.file.clone(), st.writer.written_lsn, st.writer.segment_id)
        };
        file.fdatasync()
            .await
            .map_err(|e| EngineError::glommio("syncing segment", segment_path(&inner.config.dir, id), e))?;
        let mut st = inner.state.borrow_mut();
        st.writer.synced(lsn);
        st.counters.syncs += 1;
        drop(st);
        inner.durable.notify();
    }
    Ok(())
}

/// Creates segment `id` with its header written and synced, and its name
/// made durable in the directory.
pub(crate) async fn create_segment(
    dir: &glommio::io::Directory,
    dir_path: &std::path::Path,
    id: u32,
    record_max_bytes: usize,
    segment_size_max: u64,
    lsn: u64,
) -> Result<LogWriter> {
    let path = segment_path(dir_path, id);
    let io = |op| {
        let path = path.clone();
        move |e| EngineError::glommio(op, path, e)
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .dma_open(&path)
        .await
        .map_err(io("creating segment"))?;
    let file = Rc::new(file);
    let header = SegmentHeader::new(id);
    let mut writer = LogWriter::new(
        id,
        file.clone(),
        bytemuck::bytes_of(&header),
        record_max_bytes,
        segment_size_max,
        lsn,
    );
    let batch = writer.take_batch().expect("a new segment has its header to write");
    let expected = batch.buf.len();
    let written = file
        .write_rc_at(batch.buf.clone(), 0)
        .await
        .map_err(io("writing segment header"))?;
    EngineError::check_written("writing segment header", &path, written, expected)?;
    writer.batch_written(batch.lsn);
    file.fdatasync().await.map_err(io("syncing segment header"))?;
    writer.synced(batch.lsn);
    dir.sync().await.map_err(io("syncing data directory for"))?;
    Ok(writer)
}

/// `create_segment` with this engine's directory and limits.
async fn make_segment(inner: &Inner, id: u32, lsn: u64) -> Result<LogWriter> {
    let config = &inner.config;
    create_segment(
        &inner.dir,
        &config.dir,
        id,
        config.record_max_bytes(),
        config.segment_size_max_bytes,
        lsn,
    )
    .await
}

/// Seals the active segment (already flushed and synced) and starts the
/// next one: the one `run_preparer` made, if it did (waiting for it if it
/// is making it), else one made now.
async fn roll_segment(inner: &Inner) -> Result<()> {
    loop {
        let wait = {
            let st = inner.state.borrow();
            if !st.preparing {
                break;
            }
            inner.prepare.wait()
        };
        wait.await;
    }
    let (prepared, lsn) = {
        let mut st = inner.state.borrow_mut();
        assert!(!st.writer.has_unwritten(), "a roll seals only fully written segments");
        (st.next_writer.take(), st.writer.durable_lsn)
    };
    let writer = match prepared {
        Some(mut writer) => {
            // As if made now: `create_segment` leaves a writer one LSN on
            // (its header's batch).
            writer.rebase_lsn(lsn + 1);
            writer
        }
        None => {
            let id = inner.state.borrow_mut().take_segment_id();
            make_segment(inner, id, lsn).await?
        }
    };
    {
        let mut st = inner.state.borrow_mut();
        let id = writer.segment_id;
        assert!(id > st.writer.segment_id, "segments are made in log order");
        let file = writer.file.clone();
        let old = std::mem::replace(&mut st.writer, writer);
        st.segments
            .get_mut(&old.segment_id)
            .expect("the active segment is registered")
            .sealed = true;
        st.hints.seal(old.segment_id);
        st.segments.insert(id, Segment::new(id, file));
        st.roll_requested = false;
        st.counters.segments_sealed += 1;
    }
    inner.space.notify();
    inner.background.notify();
    inner.prepare.notify();
    Ok(())
}

/// The preparer task: keeps the next segment made ahead of time
/// (`State::next_writer`), so that a roll does not wait to create a file,
/// write and sync its header, and sync the directory while puts wait.
/// Recovery tells a segment made ahead of time and never used by its lack
/// of records (see `recovery::open`).
pub(crate) async fn run_preparer(inner: Rc<Inner>) {
    loop {
        let wake = inner.prepare.wait();
        let id = {
            let mut st = inner.state.borrow_mut();
            if st.closing || st.failure.is_some() {
                return;
            }
            (st.next_writer.is_none()).then(|| {
                st.preparing = true;
                st.take_segment_id()
            })
        };
        let Some(id) = id else {
            wake.await;
            continue;
        };
        let made = make_segment(&inner, id, 0).await;
        let failed = match made {
            Ok(writer) => {
                inner.state.borrow_mut().next_writer = Some(writer);
                false
            }
            Err(err) => {
                // The roll makes its segment itself, and fails the log if
                // it cannot. A half-made file must not stay between two
                // segments: recovery would take it for damage.
                tracing::warn!(segment = id, "making the next segment ahead of time failed: {err}");
                let path = segment_path(&inner.config.dir, id);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => fail(&inner, &EngineError::io("removing unfinished segment", &path, e)),
                }
                true
            }
        };
        inner.state.borrow_mut().preparing = false;
        inner.prepare.notify();
        if failed {
            // Tried again after the next roll (or at close, to exit), not
            // in a loop: a wait begun after the notify just above.
            inner.prepare.wait().await;
        }
    }
}

/// At close: deletes the segment made ahead of time, which holds nothing.
pub(crate) async fn discard_prepared(inner: &Inner) {
    let prepared = inner.state.borrow_mut().next_writer.take();
    if let Some(writer) = prepared {
        if let Err(err) = writer.file.remove().await {
            let path = segment_path(&inner.config.dir, writer.segment_id);
            tracing::warn!(path = %path.display(), "cannot delete the unused next segment: {err}");
        }
    }
}
