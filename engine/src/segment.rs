//! Segment files: naming, the fixed file header, and per-segment accounting.
//!
//! A segment is `SegmentHeader | record | record | ...` followed by zero
//! padding up to the O_DIRECT alignment. Segments are append-only; once
//! sealed they are immutable until compaction deletes them whole.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytemuck::{Pod, Zeroable};
use glommio::io::DmaFile;
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{EngineError, Result};

/// `b"DYNKVSEG"` as a little-endian u64.
const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"DYNKVSEG");
const SEGMENT_FORMAT: u32 = 1;
/// Records start right after this header.
pub(crate) const SEGMENT_HEADER_BYTES: usize = std::mem::size_of::<SegmentHeader>();

/// The first bytes of every segment file.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct SegmentHeader {
    magic: u64,
    format: u32,
    segment_id: u32,
    reserved: [u64; 5],
    /// xxh3-64 over the bytes before this field.
    checksum: u64,
}

const _: () = assert!(SEGMENT_HEADER_BYTES == 64);

impl SegmentHeader {
    pub(crate) fn new(segment_id: u32) -> SegmentHeader {
        let mut header = SegmentHeader {
            magic: SEGMENT_MAGIC,
            format: SEGMENT_FORMAT,
            segment_id,
            reserved: [0; 5],
            checksum: 0,
        };
        header.checksum = header.compute_checksum();
        header
    }

    fn compute_checksum(&self) -> u64 {
        xxh3_64(&bytemuck::bytes_of(self)[..SEGMENT_HEADER_BYTES - 8])
    }

    /// Validates a header read from `path`, which is named as `expected_id`.
    pub(crate) fn check(bytes: &[u8], path: &Path, expected_id: u32) -> Result<()> {
        let not_ours = |reason: String| EngineError::NotOurs {
            path: path.to_path_buf(),
            reason,
        };
        let Some(raw) = bytes.get(..SEGMENT_HEADER_BYTES) else {
            return Err(not_ours(format!("file is only {} bytes long", bytes.len())));
        };
        let header: SegmentHeader = bytemuck::pod_read_unaligned(raw);
        if header.magic != SEGMENT_MAGIC {
            return Err(not_ours(format!("bad magic {:#018x}", header.magic)));
        }
        if header.checksum != header.compute_checksum() {
            return Err(not_ours("header checksum mismatch".into()));
        }
        if header.format != SEGMENT_FORMAT {
            return Err(not_ours(format!("unsupported format version {}", header.format)));
        }
        if header.segment_id != expected_id {
            return Err(not_ours(format!(
                "header names segment {} but the file name says {expected_id}",
                header.segment_id
            )));
        }
        Ok(())
    }
}

pub(crate) fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("seg-{id:010}.log"))
}

pub(crate) fn hint_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("seg-{id:010}.hint"))
}

pub(crate) fn hint_tmp_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("seg-{id:010}.hint.tmp"))
}

/// What kind of engine file a directory entry is, by name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Segment(u32),
    Hint(u32),
    HintTmp(u32),
    Other,
}

pub(crate) fn classify(name: &str) -> FileKind {
    let Some(rest) = name.strip_prefix("seg-") else {
        return FileKind::Other;
    };
    let parse = |digits: &str| digits.parse::<u32>().ok().filter(|_| digits.len() == 10);
    if let Some(id) = rest.strip_suffix(".log").and_then(parse) {
        FileKind::Segment(id)
    } else if let Some(id) = rest.strip_suffix(".hint").and_then(parse) {
        FileKind::Hint(id)
    } else if let Some(id) = rest.strip_suffix(".hint.tmp").and_then(parse) {
        FileKind::HintTmp(id)
    } else {
        FileKind::Other
    }
}

/// One segment known to the engine, with the counters compaction uses.
pub(crate) struct Segment {
    pub(crate) id: u32,
    pub(crate) file: Rc<DmaFile>,
    /// Bytes of records in the file (excluding header and padding).
    pub(crate) record_bytes: u64,
    /// Bytes of records that are no longer the newest for their key.
    pub(crate) dead_bytes: u64,
    /// Smallest sequence number of any record in the segment (u64::MAX if
    /// none). Compaction uses it to prove no older version of a key survives.
    pub(crate) seq_min: u64,
    /// Records in the file, and how many of them are tombstones.
    pub(crate) records: u64,
    pub(crate) tombstones: u64,
    pub(crate) sealed: bool,
    pub(crate) has_hint: bool,
}

impl Segment {
    pub(crate) fn new(id: u32, file: Rc<DmaFile>) -> Segment {
        Segment {
            id,
            file,
            record_bytes: 0,
            dead_bytes: 0,
            seq_min: u64::MAX,
            records: 0,
            tombstones: 0,
            sealed: false,
            has_hint: false,
        }
    }

    pub(crate) fn note_record(&mut self, bytes: usize, seq: u64, tombstone: bool) {
        self.record_bytes += bytes as u64;
        self.seq_min = self.seq_min.min(seq);
        self.records += 1;
        self.tombstones += u64::from(tombstone);
    }

    pub(crate) fn dead_fraction(&self) -> f64 {
        if self.record_bytes == 0 {
            return 0.0;
        }
        self.dead_bytes as f64 / self.record_bytes as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let dir = Path::new("/d");
        let seg = segment_path(dir, 42);
        let name = seg.file_name().unwrap().to_str().unwrap();
        assert_eq!(classify(name), FileKind::Segment(42));
        let hint = hint_path(dir, 7);
        assert_eq!(classify(hint.file_name().unwrap().to_str().unwrap()), FileKind::Hint(7));
        assert_eq!(classify("seg-12.log"), FileKind::Other);
        assert_eq!(classify("LOCK"), FileKind::Other);
    }

    #[test]
    fn header_check_names_the_problem() {
        let header = SegmentHeader::new(3);
        let bytes = bytemuck::bytes_of(&header).to_vec();
        SegmentHeader::check(&bytes, Path::new("x"), 3).unwrap();
        let err = SegmentHeader::check(&bytes, Path::new("x"), 4).unwrap_err().to_string();
        assert!(err.contains("names segment 3"), "{err}");
        let err = SegmentHeader::check(&[b'g'; 64], Path::new("x"), 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad magic"), "{err}");
    }
}
