//! Sequential scan of one segment file: yields every valid record and
//! reports the byte ranges that are not valid records.
//!
//! Recovery, hint-file generation and compaction all read segments through
//! this one scanner, so they agree on what a segment contains. The scanner
//! reads in bounded chunks; its memory is one chunk plus one record.
//!
//! After a bad header the scanner resynchronises by searching for the next
//! offset that holds a fully valid record (magic, header checksum and body
//! checksum). A trailing run of zero bytes is padding, not corruption.

use std::path::Path;

use glommio::io::DmaFile;

use crate::error::{EngineError, Result};
use crate::record::{self, RecordFault, RecordView, RECORD_HEADER_BYTES, RECORD_MAGIC};
use crate::segment::{SegmentHeader, SEGMENT_HEADER_BYTES};

/// Bytes read from disk per scan step.
const SCAN_CHUNK_BYTES: usize = 4 << 20;

/// A byte range of a segment that holds no valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorruptRange {
    pub segment: u32,
    pub start: u64,
    pub end: u64,
}

/// What a scan found.
#[derive(Debug, Default)]
pub(crate) struct ScanReport {
    /// End offset of the last valid record (the header size if none).
    pub(crate) valid_end: u64,
    /// Invalid ranges, in file order. Those at or past `valid_end` form the
    /// torn tail.
    pub(crate) corrupt: Vec<CorruptRange>,
    pub(crate) records: u64,
}

/// A read-ahead window over a file.
struct Window<'f> {
    file: &'f DmaFile,
    path: &'f Path,
    file_bytes: u64,
    base: u64,
    bytes: Vec<u8>,
}

impl Window<'_> {
    /// Bytes already made available by [`Window::ensure`].
    fn slice(&self, pos: u64, len: usize) -> &[u8] {
        let start = (pos - self.base) as usize;
        &self.bytes[start..start + len]
    }

    /// Makes `[pos, pos + len)` available (clipped at end of file) and
    /// returns it.
    async fn ensure(&mut self, pos: u64, len: usize) -> Result<&[u8]> {
        debug_assert!(pos >= self.base, "scanner moved backwards");
        let want_end = (pos + len as u64).min(self.file_bytes);
        let have_end = self.base + self.bytes.len() as u64;
        if want_end > have_end {
            let consumed = (pos - self.base) as usize;
            self.bytes.drain(..consumed);
            self.base = pos;
            let mut next = self.base + self.bytes.len() as u64;
            while next < want_end {
                let step = SCAN_CHUNK_BYTES.max((want_end - next) as usize);
                let step = step.min((self.file_bytes - next) as usize);
                let read = self
                    .file
                    .read_at(next, step)
                    .await
                    .map_err(|e| EngineError::glommio("reading segment", self.path, e))?;
                if read.is_empty() {
                    break;
                }
                self.bytes.extend_from_slice(&read);
                next += read.len() as u64;
            }
        }
        let start = (pos - self.base) as usize;
        let end = ((want_end - self.base) as usize).max(start).min(self.bytes.len());
        Ok(&self.bytes[start..end])
    }
}

/// Reads one segment front to back, record by record.
pub(crate) struct SegmentCursor<'f> {
    window: Window<'f>,
    id: u32,
    record_max_bytes: usize,
    pos: u64,
    report: ScanReport,
}

impl<'f> SegmentCursor<'f> {
    /// Opens segment `id` in `file`, checking its header.
    pub(crate) async fn open(
        file: &'f DmaFile,
        path: &'f Path,
        id: u32,
        record_max_bytes: usize,
    ) -> Result<SegmentCursor<'f>> {
        let file_bytes = file
            .file_size()
            .await
            .map_err(|e| EngineError::glommio("sizing segment", path, e))?;
        let mut window = Window {
            file,
            path,
            file_bytes,
            base: 0,
            bytes: Vec::new(),
        };
        let head = window.ensure(0, SEGMENT_HEADER_BYTES).await?;
        SegmentHeader::check(head, path, id)?;
        Ok(SegmentCursor {
            window,
            id,
            record_max_bytes,
            pos: SEGMENT_HEADER_BYTES as u64,
            report: ScanReport {
                valid_end: SEGMENT_HEADER_BYTES as u64,
                ..ScanReport::default()
            },
        })
    }

    /// The next valid record and its offset, or `None` at the end. Invalid
    /// ranges on the way are recorded in the report.
    pub(crate) async fn next(&mut self) -> Result<Option<(u64, RecordView<'_>)>> {
        while self.pos < self.window.file_bytes {
            let pos = self.pos;
            let bytes = self.window.ensure(pos, RECORD_HEADER_BYTES).await?;
            let fault = match record::decode_header(bytes) {
                Ok(header) => {
                    let total = record::record_bytes(usize::from(header.key_len), header.value_len as usize);
                    let bytes = self.window.ensure(pos, total).await?;
                    match record::decode(bytes) {
                        Ok(_) => {
                            self.pos = pos + total as u64;
                            self.report.records += 1;
                            self.report.valid_end = self.pos;
                            // Re-slice without I/O: returning the borrow from
                            // inside this loop is beyond today's borrow checker.
                            let view = record::view_validated(self.window.slice(pos, total));
                            return Ok(Some((pos, view)));
                        }
                        Err(fault) => fault,
                    }
                }
                Err(fault) => fault,
            };
            let next = match fault {
                RecordFault::BadBody { record_bytes } => pos + record_bytes as u64,
                RecordFault::Truncated | RecordFault::BadHeader => {
                    match resync(&mut self.window, pos, self.record_max_bytes).await? {
                        Resync::Padding => {
                            self.pos = self.window.file_bytes;
                            break;
                        }
                        Resync::At(next) => next,
                        Resync::EndOfFile => self.window.file_bytes,
                    }
                }
            };
            self.report.corrupt.push(CorruptRange {
                segment: self.id,
                start: pos,
                end: next,
            });
            self.pos = next;
        }
        Ok(None)
    }

    pub(crate) fn finish(self) -> ScanReport {
        self.report
    }
}

enum Resync {
    /// Only zero bytes remain: the segment ends cleanly here.
    Padding,
    /// The next valid record starts here.
    At(u64),
    /// Non-zero bytes remain but no valid record: a torn tail.
    EndOfFile,
}

/// Finds where valid data resumes after an invalid header at `bad`.
async fn resync(window: &mut Window<'_>, bad: u64, record_max_bytes: usize) -> Result<Resync> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut saw_nonzero = false;
    let mut pos = bad;
    let mut candidate = bad + 1;
    loop {
        // Anchor the window at `pos` (only moves forward) and look ahead.
        let chunk = window.ensure(pos, SCAN_CHUNK_BYTES).await?;
        if chunk.is_empty() {
            return Ok(if saw_nonzero {
                Resync::EndOfFile
            } else {
                Resync::Padding
            });
        }
        let chunk_end = pos + chunk.len() as u64;
        saw_nonzero |= chunk.iter().any(|&b| b != 0);
        let from = (candidate - pos) as usize;
        let found = chunk
            .get(from..)
            .unwrap_or(&[])
            .windows(magic.len())
            .position(|w| w == magic)
            .map(|i| candidate + i as u64);
        let Some(at) = found else {
            // Keep the last 3 bytes: a magic may straddle chunks.
            let next = chunk_end.saturating_sub(3).max(candidate);
            if chunk_end >= window.file_bytes {
                return Ok(if saw_nonzero {
                    Resync::EndOfFile
                } else {
                    Resync::Padding
                });
            }
            pos = next;
            candidate = next;
            continue;
        };
        let bytes = window.ensure(at, record_max_bytes.max(RECORD_HEADER_BYTES)).await?;
        if record::decode(bytes).is_ok() {
            return Ok(Resync::At(at));
        }
        pos = at;
        candidate = at + 1;
    }
}
