//! Hint files: a compact index of one sealed segment, so that reopening a
//! store reads keys and locations but never values.
//!
//! A hint file is `HintFileHeader | (HintEntry | key)*`. It is written to a
//! temporary name, synced, and renamed into place, so it is either whole or
//! absent. A hint whose checksum fails is ignored and its segment scanned
//! instead: hints are an optimisation, never the source of truth.

use std::path::Path;

use bytemuck::{Pod, Zeroable};
use glommio::io::{DmaFile, OpenOptions};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{EngineError, Result};

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

impl HintFileHeader {
    fn checksum(&self) -> u64 {
        xxh3_64(&bytemuck::bytes_of(self)[..HINT_HEADER_BYTES - 8])
    }
}

/// Accumulates entries in memory, then writes the file.
pub(crate) struct HintWriter {
    segment_id: u32,
    entries: u64,
    payload: Vec<u8>,
}

impl HintWriter {
    pub(crate) fn new(segment_id: u32) -> HintWriter {
        HintWriter {
            segment_id,
            entries: 0,
            payload: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, entry: &HintEntry, key: &[u8]) {
        assert_eq!(usize::from(entry.key_len), key.len(), "hint key length mismatch");
        self.payload.extend_from_slice(bytemuck::bytes_of(entry));
        self.payload.extend_from_slice(key);
        self.entries += 1;
    }

    /// Writes the hint durably as `final_path` via `tmp_path`.
    pub(crate) async fn write(self, tmp_path: &Path, final_path: &Path) -> Result<()> {
        let mut header = HintFileHeader {
            magic: HINT_MAGIC,
            format: HINT_FORMAT,
            segment_id: self.segment_id,
            entry_count: self.entries,
            payload_bytes: self.payload.len() as u64,
            payload_checksum: xxh3_64(&self.payload),
            reserved: [0; 2],
            header_checksum: 0,
        };
        header.header_checksum = header.checksum();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(tmp_path)
            .await
            .map_err(|e| EngineError::glommio("creating hint file", tmp_path, e))?;
        let logical = HINT_HEADER_BYTES + self.payload.len();
        let physical = file.align_up(logical as u64) as usize;
        let mut buf = file.alloc_dma_buffer(physical);
        let bytes = buf.as_bytes_mut();
        bytes[..HINT_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&header));
        bytes[HINT_HEADER_BYTES..logical].copy_from_slice(&self.payload);
        bytes[logical..].fill(0);
        let io = |e| EngineError::glommio("writing hint file", tmp_path, e);
        let written = file.write_at(buf, 0).await.map_err(io)?;
        if written != physical {
            return Err(EngineError::io(
                "writing hint file",
                tmp_path,
                std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("short write: {written} of {physical}"),
                ),
            ));
        }
        file.fdatasync().await.map_err(io)?;
        file.rename(final_path).await.map_err(io)?;
        file.close().await.map_err(io)?;
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
