//! The engine handle: the public API of one shard's store, and the state its
//! tasks share.
//!
//! All state lives in one `RefCell` owned by the shard's executor. No borrow
//! is ever held across an `.await`; every method takes the borrow, does its
//! in-memory work, and releases it before any I/O.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::Directory;
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;

use crate::cache::ReadCache;
use crate::config::{EngineConfig, SyncMode};
use crate::error::{EngineError, Result};
use crate::hint::{HintQueue, HintWriter};
use crate::keydir::{Applied, KeyEntry, Keydir};
use crate::merkle::{leaf_of, MerkleTree};
use crate::record::{self, RecordHeader, FLAG_TOMBSTONE};
use crate::recovery::RecoveryReport;
use crate::segment::Segment;
use crate::signal::Signal;
use crate::stats::{Counters, EngineStats};
use crate::writer::{AppendError, Appended, LogWriter};

/// What [`Engine::get_now`] found.
pub enum GetNow {
    /// The answer, from memory: the key is absent, or its value is cached
    /// or still in the write buffer.
    Answered(Option<Record>),
    /// Only a disk read can answer: pass this to [`Engine::read_from_disk`].
    OnDisk(DiskRead),
}

/// Where a record [`Engine::get_now`] could not find in memory is on disk.
pub struct DiskRead {
    entry: KeyEntry,
    file: Rc<glommio::io::DmaFile>,
}

/// One key's newest record as returned by [`Engine::get`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The engine-local sequence number of the write.
    pub seq: u64,
    /// A tombstone's value is the context its delete carried.
    pub tombstone: bool,
    pub value: Bytes,
}

/// A key of a partition with its metadata, for handoff and anti-entropy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub key: Bytes,
    pub seq: u64,
    pub tombstone: bool,
    /// Written with [`Engine::put_staged_marked`] and `marked`.
    pub marked: bool,
    /// The object's Merkle contribution (its body checksum).
    pub object_hash: u64,
}

/// Why the log stopped accepting writes.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    DiskFull { op: &'static str, path: std::path::PathBuf },
    Other(String),
}

impl Failure {
    pub(crate) fn from_error(err: &EngineError) -> Failure {
        match err {
            EngineError::DiskFull { op, path } => Failure::DiskFull { op, path: path.clone() },
            other => Failure::Other(other.to_string()),
        }
    }

    pub(crate) fn to_error(&self) -> EngineError {
        match self {
            Failure::DiskFull { op, path } => EngineError::DiskFull { op, path: path.clone() },
            Failure::Other(cause) => EngineError::Failed { cause: cause.clone() },
        }
    }
}

/// Mutable state of one engine.
pub(crate) struct State {
    pub(crate) keydir: Keydir,
    pub(crate) segments: BTreeMap<u32, Segment>,
    pub(crate) writer: LogWriter,
    pub(crate) cache: ReadCache,
    pub(crate) next_seq: u64,
    pub(crate) next_segment_id: u32,
    /// The segment the next roll switches to, made ahead of time by
    /// `flush::run_preparer` (header written and synced, name durable), so
    /// that a roll waits for one sync, not three.
    pub(crate) next_writer: Option<LogWriter>,
    /// `run_preparer` is making `next_writer`.
    pub(crate) preparing: bool,
    /// A put found the segment full: the flusher must seal it.
    pub(crate) roll_requested: bool,
    /// A put found the buffer full: the flusher should write now.
    pub(crate) space_wanted: bool,
    /// Someone waits for everything up to this LSN to be durable.
    pub(crate) sync_requested_lsn: u64,
    pub(crate) closing: bool,
    pub(crate) failure: Option<Failure>,
    pub(crate) counters: Counters,
    pub(crate) recovery: RecoveryReport,
    /// Hint entries of appended records, waiting to be streamed out.
    pub(crate) hints: HintQueue,
}

impl State {
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.closing {
            return Err(EngineError::Closed);
        }
        match &self.failure {
            Some(failure) => Err(failure.to_error()),
            None => Ok(()),
        }
    }

    /// The id of a segment about to be made: ids grow with the log.
    pub(crate) fn take_segment_id(&mut self) -> u32 {
        self.next_segment_id += 1;
        self.next_segment_id - 1
    }

    /// Accounts `bytes` of segment `id` as no longer live.
    pub(crate) fn mark_dead(&mut self, id: u32, bytes: usize) {
        if let Some(segment) = self.segments.get_mut(&id) {
            segment.dead_bytes += bytes as u64;
            debug_assert!(
                segment.dead_bytes <= segment.record_bytes,
                "segment {id} has more dead than written bytes"
            );
        }
    }

    /// Makes a freshly appended record the key's newest version.
    fn install(&mut self, header: &RecordHeader, key: &[u8], value: &[u8], at: Appended) {
        let bytes = record::record_bytes(key.len(), header.value_len as usize);
        self.segments
            .get_mut(&at.segment)
            .expect("the active segment is registered")
            .note_record(bytes, header.seq, header.flags & record::FLAG_TOMBSTONE != 0);
        let entry = KeyEntry::at(header, at.segment, at.offset);
        // A tombstone's value is its causal context, which reads get from
        // the record itself; only live values are worth caching.
        let cached = (!entry.is_tombstone()).then_some(value);
        let cache = &mut self.cache;
        let slot_for = |old: Option<&KeyEntry>| {
            let old = old.map(|o| (o.cache_slot, (o.segment, o.offset)));
            cache.write(old, (at.segment, at.offset), cached)
        };
        let old = match self.keydir.apply(header.partition, key, entry, slot_for) {
            Applied::Newer(old) => old,
            Applied::Stale => unreachable!("a fresh sequence number is always the newest"),
        };
        if let Some(old) = old {
            self.mark_dead(old.segment, old.record_bytes());
        }
    }
}

/// What the engine's tasks share.
pub(crate) struct Inner {
    pub(crate) config: EngineConfig,
    pub(crate) state: RefCell<State>,
    pub(crate) dir: Directory,
    /// `durable_lsn` advanced, or the log failed.
    pub(crate) durable: Signal,
    /// Buffer space was freed or the segment rolled.
    pub(crate) space: Signal,
    /// Wakes the flusher.
    pub(crate) work: Signal,
    /// Wakes the background task (hints, compaction).
    pub(crate) background: Signal,
    /// Wakes the preparer (a roll took `next_writer`, or closing), and
    /// tells a roll that a preparation ended.
    pub(crate) prepare: Signal,
    /// One compaction at a time.
    pub(crate) compaction_permit: Semaphore,
    pub(crate) tasks: RefCell<Vec<JoinHandle<()>>>,
    /// Held from open until close completes.
    pub(crate) lock: RefCell<Option<crate::recovery::DirLock>>,
    /// The hint file of the segment being appended, fed by the background
    /// task from `State::hints`; taken out while in use.
    pub(crate) hint_stream: RefCell<Option<HintWriter>>,
    /// A task is streaming hints (see `compaction::stream_hints`).
    pub(crate) hint_streaming: std::cell::Cell<bool>,
}

impl Inner {
    /// Waits until everything up to `lsn` is durable, or the log fails.
    pub(crate) async fn wait_durable(&self, lsn: u64) -> Result<()> {
        loop {
            let wait = {
                let st = self.state.borrow();
                if let Some(failure) = &st.failure {
                    return Err(failure.to_error());
                }
                if st.writer.durable_lsn >= lsn {
                    return Ok(());
                }
                self.durable.wait()
            };
            wait.await;
        }
    }

    /// Flushes and syncs everything appended so far.
    pub(crate) async fn sync_all(&self) -> Result<()> {
        let lsn = {
            let mut st = self.state.borrow_mut();
            if let Some(failure) = &st.failure {
                return Err(failure.to_error());
            }
            let lsn = st.writer.appended_lsn;
            st.sync_requested_lsn = st.sync_requested_lsn.max(lsn);
            lsn
        };
        self.work.notify();
        self.wait_durable(lsn).await
    }

    /// Appends a record whose header is complete, waiting for buffer space
    /// or a segment roll as needed. Returns where it landed. `on_append`
    /// runs under the same borrow as the append, so no other task observes
    /// the log and the keydir out of step.
    pub(crate) async fn append_with<T>(
        &self,
        mut make_header: impl FnMut(&mut State) -> Result<RecordHeader>,
        key: &[u8],
        value: &[u8],
        mut on_append: impl FnMut(&mut State, &RecordHeader, Appended) -> T,
    ) -> Result<(Appended, T)> {
        loop {
            if let Some(done) = self.try_append_with(&mut make_header, key, value, &mut on_append) {
                return done;
            }
            // No await since the attempt (which told the flusher): no
            // notify can have been missed.
            self.space.wait().await;
        }
    }

    /// One attempt of `append_with`: `None` if the append must wait for
    /// buffer space or a segment roll (the flusher is told to make it).
    pub(crate) fn try_append_with<T>(
        &self,
        make_header: &mut impl FnMut(&mut State) -> Result<RecordHeader>,
        key: &[u8],
        value: &[u8],
        on_append: &mut impl FnMut(&mut State, &RecordHeader, Appended) -> T,
    ) -> Option<Result<(Appended, T)>> {
        let mut st = self.state.borrow_mut();
        let header = match make_header(&mut st) {
            Ok(header) => header,
            Err(err) => return Some(Err(err)),
        };
        // While a roll is pending nothing may join the old segment: the
        // roll seals exactly what the flusher last wrote.
        let appended = if st.roll_requested {
            Err(AppendError::SegmentFull)
        } else {
            st.writer.try_append(&header, key, value)
        };
        match appended {
            Ok(at) => {
                let out = on_append(&mut st, &header, at);
                let wake_streamer = st.hints.note(at.segment, at.offset, &header, key);
                drop(st);
                if wake_streamer {
                    self.background.notify();
                }
                self.work.notify();
                Some(Ok((at, out)))
            }
            Err(full) => {
                match full {
                    AppendError::BufferFull => st.space_wanted = true,
                    AppendError::SegmentFull => st.roll_requested = true,
                }
                drop(st);
                self.work.notify();
                None
            }
        }
    }
}

/// A write that is visible but maybe not yet durable; see
/// [`Engine::put_staged`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a staged write is acknowledged only after wait_staged"]
pub struct Staged {
    pub seq: u64,
    lsn: u64,
}

impl Staged {
    /// The later of two staged writes of one engine: waiting for it waits
    /// for both, since writes become durable in log order.
    pub fn later(self, other: Staged) -> Staged {
        if other.lsn > self.lsn {
            other
        } else {
            self
        }
    }
}

/// One shard's durable key-value store. Create it inside the shard's glommio
/// executor; share it within the shard through `Rc<Engine>`.
pub struct Engine {
    pub(crate) inner: Rc<Inner>,
}

impl Engine {
    /// Opens (or creates) the store in `config.dir`, recovering whatever a
    /// crash left. See [`Engine::recovery_report`] for what was found.
    pub async fn open(config: EngineConfig) -> Result<Engine> {
        crate::recovery::open(config).await
    }

    fn check_limits(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let config = &self.inner.config;
        if key.len() > config.key_len_max_bytes {
            return Err(EngineError::KeyTooLarge {
                len: key.len(),
                max: config.key_len_max_bytes,
            });
        }
        if value.len() > config.value_len_max_bytes {
            return Err(EngineError::ValueTooLarge {
                len: value.len(),
                max: config.value_len_max_bytes,
            });
        }
        Ok(())
    }

    async fn write(&self, partition: u32, flags: u8, key: &[u8], value: &[u8]) -> Result<u64> {
        let staged = self.stage(partition, flags, key, value).await?;
        self.wait_staged(staged).await
    }

    /// Appends a record and makes it visible to gets, without waiting for
    /// durability.
    async fn stage(&self, partition: u32, flags: u8, key: &[u8], value: &[u8]) -> Result<Staged> {
        self.check_limits(key, value)?;
        let (make_header, install) = self.staging(partition, flags, key, value);
        let (at, seq) = self.inner.append_with(make_header, key, value, install).await?;
        Ok(Staged { seq, lsn: at.lsn })
    }

    /// `stage` without waiting: `None` if the log must first make room.
    fn stage_now(&self, partition: u32, flags: u8, key: &[u8], value: &[u8]) -> Option<Result<Staged>> {
        if let Err(err) = self.check_limits(key, value) {
            return Some(Err(err));
        }
        let (mut make_header, mut install) = self.staging(partition, flags, key, value);
        let appended = self.inner.try_append_with(&mut make_header, key, value, &mut install)?;
        Some(appended.map(|(at, seq)| Staged { seq, lsn: at.lsn }))
    }

    /// A staged write's header, and what installs it in the keydir once
    /// appended (returning its sequence number). The limits are checked.
    fn staging<'a>(
        &self,
        partition: u32,
        flags: u8,
        key: &'a [u8],
        value: &'a [u8],
    ) -> (
        impl FnMut(&mut State) -> Result<RecordHeader> + 'a,
        impl FnMut(&mut State, &RecordHeader, Appended) -> u64 + 'a,
    ) {
        let sum = record::body_checksum(flags, key, value);
        let key_len = u16::try_from(key.len()).expect("key length is bounded by key_len_max_bytes");
        let value_len = u32::try_from(value.len()).expect("value length is bounded by value_len_max_bytes");
        let make_header = move |st: &mut State| {
            st.check_writable()?;
            Ok(record::header_for(
                partition,
                st.next_seq,
                flags,
                key_len,
                value_len,
                sum,
            ))
        };
        let install = move |st: &mut State, header: &RecordHeader, at: Appended| {
            st.next_seq += 1;
            st.install(header, key, value, at);
            st.counters.note_write(flags, value.len());
            header.seq
        };
        (make_header, install)
    }

    /// [`Engine::put_staged_marked`] without waiting: `None` if the log
    /// must first make room (a full buffer, a segment being sealed), and
    /// nothing was written. A server does most writes this way without
    /// making a future for them.
    pub fn put_staged_marked_now(
        &self,
        partition: u32,
        key: &[u8],
        value: &[u8],
        marked: bool,
    ) -> Option<Result<Staged>> {
        let flags = if marked { crate::record::FLAG_MARKED } else { 0 };
        self.stage_now(partition, flags, key, value)
    }

    /// Whether [`Engine::wait_staged`] returns at once for every staged
    /// write: the sync mode does not wait for `fdatasync`.
    pub fn acknowledges_when_staged(&self) -> bool {
        self.inner.config.sync != SyncMode::Always
    }

    /// Like [`Engine::put`] in two steps: this returns as soon as the value
    /// is visible to gets, and [`Engine::wait_staged`] then waits until it
    /// is as durable as the sync mode promises. A caller that serializes a
    /// read-modify-write of one key can release the key after the first
    /// step, since any later write lands later in the log and cannot become
    /// durable before this one.
    pub async fn put_staged(&self, partition: u32, key: &[u8], value: &[u8]) -> Result<Staged> {
        self.stage(partition, 0, key, value).await
    }

    /// [`Engine::put_staged`], with the value *marked* or not: a bit the
    /// caller reads back in [`KeyInfo::marked`] without reading the value.
    pub async fn put_staged_marked(&self, partition: u32, key: &[u8], value: &[u8], marked: bool) -> Result<Staged> {
        let flags = if marked { crate::record::FLAG_MARKED } else { 0 };
        self.stage(partition, flags, key, value).await
    }

    /// Waits until a staged write is as durable as the sync mode promises;
    /// returns its sequence number.
    pub async fn wait_staged(&self, staged: Staged) -> Result<u64> {
        if self.inner.config.sync == SyncMode::Always {
            self.inner.wait_durable(staged.lsn).await?;
        }
        Ok(staged.seq)
    }

    /// Stores `value` under `key` in `partition`. Returns the write's
    /// sequence number once the write is as durable as the sync mode
    /// promises. Nothing is written if the key or value is over its limit.
    pub async fn put(&self, partition: u32, key: &[u8], value: &[u8]) -> Result<u64> {
        self.write(partition, 0, key, value).await
    }

    /// Writes a tombstone for `key`. `context` is stored as the tombstone's
    /// value (the causal context of the delete). The tombstone stays until
    /// [`Engine::reap_tombstone`] removes it.
    pub async fn delete(&self, partition: u32, key: &[u8], context: &[u8]) -> Result<u64> {
        self.write(partition, FLAG_TOMBSTONE, key, context).await
    }

    /// Touches what a get of `key` would read (its keydir slot and cached
    /// value) so that it is in the CPU cache when the get comes, and
    /// nothing else. A server calls it for every key of a pipelined batch
    /// before serving the batch: these lookups do not depend on each other,
    /// so the CPU overlaps their memory misses, where the gets themselves,
    /// one after another, would wait for each miss in turn.
    pub fn prefetch(&self, partition: u32, key: &[u8]) {
        let Ok(st) = self.inner.state.try_borrow() else { return };
        if let Some(entry) = st.keydir.get(partition, key) {
            st.cache.prefetch(entry.cache_slot);
        }
    }

    /// [`Engine::get_now`] for a caller that only looks at the value: `f`
    /// is given it in place, with no copy and no reference count touched
    /// (`None`: the key is absent, or its latest record is a tombstone).
    /// `Ok(None)` when the value is not in the cache: then `get_now`.
    /// `f` runs while the engine is borrowed, so it must not call it.
    pub fn peek_now<T>(&self, partition: u32, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> T) -> Result<Option<T>> {
        let mut st = self.inner.state.borrow_mut();
        if st.closing {
            return Err(EngineError::Closed);
        }
        let st = &mut *st;
        let entry = match st.keydir.get(partition, key) {
            None => None,
            Some(entry) if entry.is_tombstone() => None,
            Some(&entry) => Some(entry),
        };
        let Some(entry) = entry else {
            st.counters.gets += 1;
            return Ok(Some(f(None)));
        };
        match st.cache.hit(entry.cache_slot, (entry.segment, entry.offset)) {
            Some(value) => {
                st.counters.gets += 1;
                Ok(Some(f(Some(value))))
            }
            None => Ok(None),
        }
    }

    /// [`Engine::get`] without waiting, as far as memory answers. A server
    /// answers most reads this way without making a future for them. An
    /// `OnDisk` answer counts nothing in the statistics: the read is
    /// counted once, by [`Engine::read_from_disk`] or by a later `get`.
    pub fn get_now(&self, partition: u32, key: &[u8]) -> Result<GetNow> {
        let mut st = self.inner.state.borrow_mut();
        if st.closing {
            return Err(EngineError::Closed);
        }
        // A get is counted where it is answered: a caller may give up on
        // `OnDisk` and ask again the waiting way.
        let Some(&entry) = st.keydir.get(partition, key) else {
            st.counters.gets += 1;
            return Ok(GetNow::Answered(None));
        };
        // The cache first: a put caches its value (while there is room), so
        // a value still in the write buffer is usually cached too, and the
        // cache hands it out without a copy.
        if let Some(value) = st.cache.get(entry.cache_slot, (entry.segment, entry.offset)) {
            st.counters.gets += 1;
            return Ok(GetNow::Answered(Some(to_record(&entry, value))));
        }
        let record_bytes = entry.record_bytes();
        if entry.segment == st.writer.segment_id {
            if let Some(bytes) = st.writer.read_unwritten(u64::from(entry.offset), record_bytes) {
                let value = Bytes::copy_from_slice(&bytes[record_bytes - entry.value_len as usize..]);
                st.counters.gets += 1;
                st.cache.note_miss();
                return Ok(GetNow::Answered(Some(to_record(&entry, value))));
            }
        }
        let file = st
            .segments
            .get(&entry.segment)
            .expect("the keydir only names registered segments")
            .file
            .clone();
        Ok(GetNow::OnDisk(DiskRead { entry, file }))
    }

    /// The newest record of `key`: a value, a tombstone, or `None`. Costs at
    /// most one disk read; recently read values come from the cache.
    pub async fn get(&self, partition: u32, key: &[u8]) -> Result<Option<Record>> {
        match self.get_now(partition, key)? {
            GetNow::Answered(found) => Ok(found),
            GetNow::OnDisk(read) => self.read_from_disk(partition, key, read).await,
        }
    }

    /// Finishes a [`Engine::get_now`] that memory could not answer: reads
    /// the record from disk, and caches its value.
    pub async fn read_from_disk(&self, partition: u32, key: &[u8], read: DiskRead) -> Result<Option<Record>> {
        let DiskRead { entry, file } = read;
        let read = file
            .read_at(u64::from(entry.offset), entry.record_bytes())
            .await
            .map_err(|e| EngineError::glommio("reading record", self.inner.config.dir.clone(), e))?;
        let corrupt = |reason| EngineError::Corrupt {
            segment: entry.segment,
            offset: u64::from(entry.offset),
            reason,
        };
        let view = record::decode(&read).map_err(|_| corrupt("checksum mismatch on read"))?;
        if view.key != key || view.header.seq != entry.seq {
            return Err(corrupt("record does not match the keydir"));
        }
        let value = Bytes::copy_from_slice(view.value);
        let mut st = self.inner.state.borrow_mut();
        st.counters.gets += 1;
        st.counters.disk_reads += 1;
        st.cache.note_miss();
        // Compaction or a put may have moved the key on during the read, and
        // a concurrent read of the key may have cached it already.
        let State { keydir, cache, .. } = &mut *st;
        let location = (entry.segment, entry.offset);
        if let Some(current) = keydir.get_mut(partition, key) {
            if (current.segment, current.offset) == location && !cache.holds(current.cache_slot, location) {
                current.cache_slot = cache.insert(location, value.clone());
            }
        }
        Ok(Some(to_record(&entry, value)))
    }

    /// Makes every write so far durable, whatever the sync mode.
    pub async fn sync(&self) -> Result<()> {
        self.inner.sync_all().await
    }

    /// Removes `key`'s tombstone if it is still the newest record and has
    /// sequence number `seq`. Anti-entropy calls this once every replica
    /// holds the tombstone. Returns whether it was removed.
    ///
    /// The removal lives in memory: after a restart a reaped tombstone can
    /// reappear (never the value it deleted), and is reaped again.
    pub fn reap_tombstone(&self, partition: u32, key: &[u8], seq: u64) -> bool {
        let mut st = self.inner.state.borrow_mut();
        let Some(entry) = st.keydir.remove_tombstone(partition, key, seq) else {
            return false;
        };
        st.mark_dead(entry.segment, entry.record_bytes());
        true
    }

    /// Compacts now: seals the active segment if it holds dead bytes, then
    /// rewrites every sealed segment past the dead-fraction threshold.
    pub async fn compact(&self) -> Result<crate::compaction::CompactionReport> {
        crate::compaction::compact_now(&self.inner).await
    }

    /// Partitions that hold at least one key.
    pub fn partition_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.inner.state.borrow().keydir.partition_ids().collect();
        ids.sort_unstable();
        ids
    }

    /// Every key of `partition` (values and tombstones) with its metadata.
    pub fn partition_keys(&self, partition: u32) -> Vec<KeyInfo> {
        self.keys_where(partition, |_| true)
    }

    /// Keys of `partition` that fall in Merkle leaf `leaf`.
    pub fn keys_in_leaf(&self, partition: u32, leaf: usize) -> Vec<KeyInfo> {
        self.keys_where(partition, |key| leaf_of(key) == leaf)
    }

    /// Values of `partition` written marked (not tombstones), found from
    /// the keydir without copying the others.
    pub fn marked_keys(&self, partition: u32) -> Vec<KeyInfo> {
        self.entries_where(partition, |_, entry| {
            entry.flags & crate::record::FLAG_MARKED != 0 && !entry.is_tombstone()
        })
    }

    fn keys_where(&self, partition: u32, keep: impl Fn(&[u8]) -> bool) -> Vec<KeyInfo> {
        self.entries_where(partition, |key, _| keep(key))
    }

    fn entries_where(&self, partition: u32, keep: impl Fn(&[u8], &crate::keydir::KeyEntry) -> bool) -> Vec<KeyInfo> {
        let st = self.inner.state.borrow();
        let Some(index) = st.keydir.partition(partition) else {
            return Vec::new();
        };
        index
            .keys
            .iter()
            .filter(|(key, entry)| keep(key, entry))
            .map(|(key, entry)| KeyInfo {
                key: Bytes::copy_from_slice(key),
                seq: entry.seq,
                tombstone: entry.is_tombstone(),
                marked: entry.flags & crate::record::FLAG_MARKED != 0,
                object_hash: entry.body_checksum,
            })
            .collect()
    }

    /// A copy of `partition`'s Merkle tree (empty if it has no keys).
    pub fn merkle_tree(&self, partition: u32) -> MerkleTree {
        let st = self.inner.state.borrow();
        st.keydir
            .partition(partition)
            .map(|p| p.merkle.clone())
            .unwrap_or_default()
    }

    /// Counters and sizes, for metrics.
    pub fn stats(&self) -> EngineStats {
        EngineStats::collect(&self.inner.state.borrow())
    }

    /// What recovery found when the store was opened.
    pub fn recovery_report(&self) -> RecoveryReport {
        self.inner.state.borrow().recovery.clone()
    }

    /// Stops accepting operations, makes the log durable, writes the active
    /// segment's hint file, and waits for background tasks to stop.
    pub async fn close(&self) -> Result<()> {
        {
            let mut st = self.inner.state.borrow_mut();
            if st.closing {
                return Err(EngineError::Closed);
            }
            st.closing = true;
        }
        self.inner.work.notify();
        self.inner.background.notify();
        self.inner.space.notify();
        self.inner.prepare.notify();
        let tasks = std::mem::take(&mut *self.inner.tasks.borrow_mut());
        for task in tasks {
            task.await;
        }
        crate::flush::discard_prepared(&self.inner).await;
        let failure = self.inner.state.borrow().failure.clone();
        let result = match failure {
            Some(failure) => Err(failure.to_error()),
            None => crate::compaction::write_active_hint(&self.inner).await,
        };
        self.inner.lock.borrow_mut().take();
        result
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Without an explicit close, let the background tasks flush what is
        // buffered and exit on their own.
        if let Ok(mut st) = self.inner.state.try_borrow_mut() {
            st.closing = true;
        }
        self.inner.work.notify();
        self.inner.background.notify();
        self.inner.space.notify();
        self.inner.prepare.notify();
    }
}

fn to_record(entry: &KeyEntry, value: Bytes) -> Record {
    Record {
        seq: entry.seq,
        tombstone: entry.is_tombstone(),
        value,
    }
}
