//! The active segment's write buffer: appends, batches for group commit, and
//! reads of records that are not on disk yet.
//!
//! This module holds state only and never awaits; the flusher task
//! (`flush.rs`) drives the I/O. The invariants:
//! - `buf` holds file bytes `[buf_base, buf_base + buf_len)`, and `buf_base`
//!   is aligned. Bytes before `buf_base` are written, or in `inflight`.
//! - A batch writes whole aligned blocks. The last block is partial; its
//!   bytes are carried into the next buffer and rewritten, identically in
//!   their prefix, by the next batch. A torn rewrite therefore never damages
//!   an acknowledged record.
//! - Log sequence numbers (LSNs) count appends. A put waits for
//!   `durable_lsn >= its lsn`. They are distinct from record sequence
//!   numbers, which compaction copies unchanged.

use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile};

use crate::record::{self, RecordHeader};

/// Minimum size of one write buffer.
const WRITE_BUFFER_MIN_BYTES: usize = 2 << 20;

/// Where an appended record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Appended {
    pub(crate) segment: u32,
    pub(crate) offset: u32,
    pub(crate) lsn: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AppendError {
    /// The buffer has no room until the flusher takes a batch.
    BufferFull,
    /// The segment would pass its size limit; it must be rolled first.
    SegmentFull,
}

/// A batch handed to the flusher: whole aligned blocks at `file_offset`.
pub(crate) struct Batch {
    pub(crate) file: Rc<DmaFile>,
    pub(crate) file_offset: u64,
    pub(crate) buf: Rc<DmaBuffer>,
    pub(crate) lsn: u64,
}

pub(crate) struct LogWriter {
    pub(crate) segment_id: u32,
    pub(crate) file: Rc<DmaFile>,
    alignment: usize,
    capacity: usize,
    segment_size_max: u64,
    buf: DmaBuffer,
    buf_base: u64,
    buf_len: usize,
    /// Prefix of `buf` that is already on disk (the carried partial block).
    buf_written: usize,
    /// The batch being written: readable until its write completes.
    inflight: Option<(u64, Rc<DmaBuffer>, usize)>,
    pub(crate) appended_lsn: u64,
    pub(crate) written_lsn: u64,
    pub(crate) durable_lsn: u64,
}

impl LogWriter {
    /// A writer for a fresh segment whose header (`header_bytes`) is not yet
    /// written.
    pub(crate) fn new(
        segment_id: u32,
        file: Rc<DmaFile>,
        header_bytes: &[u8],
        record_max_bytes: usize,
        segment_size_max: u64,
        lsn: u64,
    ) -> LogWriter {
        let alignment = file.alignment() as usize;
        assert!(
            alignment.is_power_of_two() && alignment >= 512,
            "O_DIRECT alignment {alignment}"
        );
        let capacity = (record_max_bytes + 2 * alignment)
            .max(WRITE_BUFFER_MIN_BYTES)
            .next_multiple_of(alignment);
        let mut buf = file.alloc_dma_buffer(capacity);
        buf.as_bytes_mut()[..header_bytes.len()].copy_from_slice(header_bytes);
        LogWriter {
            segment_id,
            file,
            alignment,
            capacity,
            segment_size_max,
            buf,
            buf_base: 0,
            buf_len: header_bytes.len(),
            buf_written: 0,
            inflight: None,
            appended_lsn: lsn,
            written_lsn: lsn,
            durable_lsn: lsn,
        }
    }

    /// File offset just past the last appended byte.
    pub(crate) fn end_offset(&self) -> u64 {
        self.buf_base + self.buf_len as u64
    }

    /// Whether appended bytes await a write.
    pub(crate) fn has_unwritten(&self) -> bool {
        self.buf_len > self.buf_written
    }

    /// Unwritten bytes, for deciding when a lazy mode should write.
    pub(crate) fn unwritten_bytes(&self) -> usize {
        self.buf_len - self.buf_written
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends one record. Never awaits; fails without side effects.
    pub(crate) fn try_append(
        &mut self,
        header: &RecordHeader,
        key: &[u8],
        value: &[u8],
    ) -> Result<Appended, AppendError> {
        let size = record::record_bytes(key.len(), value.len());
        let offset = self.end_offset();
        if offset + size as u64 > self.segment_size_max {
            return Err(AppendError::SegmentFull);
        }
        if self.buf_len + size > self.capacity {
            return Err(AppendError::BufferFull);
        }
        let slot = &mut self.buf.as_bytes_mut()[self.buf_len..self.buf_len + size];
        record::encode_into(slot, header, key, value);
        self.buf_len += size;
        self.appended_lsn += 1;
        Ok(Appended {
            segment: self.segment_id,
            offset: u32::try_from(offset).expect("segment_size_max is validated to fit u32"),
            lsn: self.appended_lsn,
        })
    }

    /// Copies `len` bytes at `offset` of the active segment if they are still
    /// in memory. `None` means they are on disk.
    pub(crate) fn read_unwritten(&self, offset: u64, len: usize) -> Option<&[u8]> {
        if offset >= self.buf_base {
            let start = (offset - self.buf_base) as usize;
            assert!(start + len <= self.buf_len, "read past the end of the log");
            return Some(&self.buf.as_bytes()[start..start + len]);
        }
        let (base, buf, valid) = self.inflight.as_ref()?;
        let start = offset.checked_sub(*base)? as usize;
        (start + len <= *valid).then(|| &buf.as_bytes()[start..start + len])
    }

    /// Takes everything appended so far as one batch, leaving a fresh buffer
    /// that carries the partial last block.
    pub(crate) fn take_batch(&mut self) -> Option<Batch> {
        if !self.has_unwritten() {
            return None;
        }
        assert!(self.inflight.is_none(), "one batch in flight at a time");
        let write_len = self.buf_len.next_multiple_of(self.alignment);
        let carry_from = self.buf_len - self.buf_len % self.alignment;
        let mut next = self.file.alloc_dma_buffer(self.capacity);
        next.as_bytes_mut()[..self.buf_len - carry_from]
            .copy_from_slice(&self.buf.as_bytes()[carry_from..self.buf_len]);
        let mut full = std::mem::replace(&mut self.buf, next);
        full.as_bytes_mut()[self.buf_len..write_len].fill(0);
        full.trim_to_size(write_len);
        let full = Rc::new(full);
        let batch = Batch {
            file: self.file.clone(),
            file_offset: self.buf_base,
            buf: full.clone(),
            lsn: self.appended_lsn,
        };
        self.inflight = Some((self.buf_base, full, self.buf_len));
        self.buf_base += carry_from as u64;
        self.buf_len -= carry_from;
        self.buf_written = self.buf_len;
        Some(batch)
    }

    /// Moves a writer made ahead of time (its header written and synced,
    /// nothing else appended) to the log's current LSN, as if made now.
    pub(crate) fn rebase_lsn(&mut self, lsn: u64) {
        assert!(
            !self.has_unwritten() && self.inflight.is_none() && self.durable_lsn == self.appended_lsn,
            "only an idle writer is rebased"
        );
        self.appended_lsn = lsn;
        self.written_lsn = lsn;
        self.durable_lsn = lsn;
    }

    /// Records that a batch's write completed.
    pub(crate) fn batch_written(&mut self, lsn: u64) {
        assert!(lsn >= self.written_lsn, "batches complete in order");
        self.inflight = None;
        self.written_lsn = lsn;
    }

    /// Records that an fdatasync covering `lsn` completed.
    pub(crate) fn synced(&mut self, lsn: u64) {
        assert!(lsn <= self.written_lsn, "cannot sync what was not written");
        self.durable_lsn = self.durable_lsn.max(lsn);
    }
}
