//! One log record: its fixed header, its encoding into a write buffer, and its
//! validation when read back.
//!
//! A record is `RecordHeader | key | value`, packed back to back in a segment
//! with no alignment between records. Two checksums protect it:
//! - the *body checksum* (xxh3-64 over `key ++ value`, seeded by the flags) is
//!   also the object's identity in the Merkle tree, so it is computed once;
//! - the *header checksum* covers the header itself, so that after a corrupt
//!   body the scanner can still trust the lengths and skip exactly one record.
//!
//! The layout is specified in `docs/storage-format.md`. This module never does
//! I/O.

use bytemuck::{Pod, Zeroable};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// `b"DKVR"` read as a little-endian u32; a record header starts with it.
pub(crate) const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"DKVR");
/// Version of the record layout; a reader refuses records of another version.
pub(crate) const RECORD_FORMAT: u8 = 1;
/// Size of [`RecordHeader`] on disk.
pub(crate) const RECORD_HEADER_BYTES: usize = std::mem::size_of::<RecordHeader>();

/// Flag bit: the record is a tombstone. Its value holds the delete's context.
pub(crate) const FLAG_TOMBSTONE: u8 = 0b0000_0001;
/// A value the caller marked when writing it (dynkv marks versions whose
/// every sibling is a delete, so that anti-entropy finds the tombstones
/// it may reap without reading every value). Not part of the body
/// checksum (the header checksum covers it).
pub(crate) const FLAG_MARKED: u8 = 0b0000_0010;
/// All flag bits this version defines; any other bit set means corruption.
const FLAGS_KNOWN: u8 = FLAG_TOMBSTONE | FLAG_MARKED;

/// The fixed header in front of every record. Little-endian, no implicit
/// padding (bytemuck's `Pod` derive rejects padding at compile time).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct RecordHeader {
    pub(crate) magic: u32,
    pub(crate) key_len: u16,
    pub(crate) flags: u8,
    pub(crate) format: u8,
    pub(crate) value_len: u32,
    pub(crate) partition: u32,
    pub(crate) seq: u64,
    /// xxh3-64 of `key ++ value`, seeded with `flags`.
    pub(crate) body_checksum: u64,
    /// Low 32 bits of xxh3-64 over the header bytes before this field.
    pub(crate) header_checksum: u32,
    pub(crate) reserved: u32,
}

const _: () = assert!(RECORD_HEADER_BYTES == 40);
const HEADER_CHECKSUM_OFFSET: usize = 32;

/// Why a byte range is not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordFault {
    /// Fewer bytes remain than the header or the record needs.
    Truncated,
    /// The header's magic, format, flags or checksum is wrong: its lengths
    /// cannot be trusted.
    BadHeader,
    /// The header is valid but the key or value bytes do not match its
    /// checksum. The record's length is known, so it can be skipped exactly.
    BadBody { record_bytes: usize },
}

/// A record that passed both checksums, borrowing from the buffer it was
/// parsed from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordView<'a> {
    pub(crate) header: RecordHeader,
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
}

impl RecordView<'_> {
    pub(crate) fn record_bytes(&self) -> usize {
        record_bytes(self.key.len(), self.value.len())
    }
}

/// Total on-disk size of a record with these lengths.
pub(crate) fn record_bytes(key_len: usize, value_len: usize) -> usize {
    RECORD_HEADER_BYTES + key_len + value_len
}

/// The body checksum, which is also the object's Merkle contribution.
pub(crate) fn body_checksum(flags: u8, key: &[u8], value: &[u8]) -> u64 {
    // The caller's mark is derived from the value; leaving it out keeps the
    // checksum (a Merkle leaf contribution) of one value the same whether a
    // writer marked it or not.
    let flags = flags & !FLAG_MARKED;
    // Hash key and value as one stream without concatenating them: hash the
    // value seeded by the key's hash and the flags.
    let key_hash = xxh3_64_with_seed(key, u64::from(flags));
    xxh3_64_with_seed(value, key_hash ^ (key.len() as u64).rotate_left(32))
}

fn header_checksum(header: &RecordHeader) -> u32 {
    let bytes = bytemuck::bytes_of(header);
    // Truncation is intended: 32 bits guard 40 bytes of header.
    xxh3_64_with_seed(&bytes[..HEADER_CHECKSUM_OFFSET], 0) as u32
}

/// Builds the header for a record. `body_checksum` is passed in because a
/// compaction copy reuses the checksum that was already verified.
pub(crate) fn header_for(
    partition: u32,
    seq: u64,
    flags: u8,
    key_len: u16,
    value_len: u32,
    body_checksum: u64,
) -> RecordHeader {
    debug_assert_eq!(flags & !FLAGS_KNOWN, 0, "unknown record flags {flags:#x}");
    let mut header = RecordHeader {
        magic: RECORD_MAGIC,
        key_len,
        flags,
        format: RECORD_FORMAT,
        value_len,
        partition,
        seq,
        body_checksum,
        header_checksum: 0,
        reserved: 0,
    };
    header.header_checksum = header_checksum(&header);
    header
}

/// Writes `header | key | value` into `out`, which must be exactly the
/// record's size. This is the only place records are serialised.
pub(crate) fn encode_into(out: &mut [u8], header: &RecordHeader, key: &[u8], value: &[u8]) {
    assert_eq!(
        out.len(),
        record_bytes(key.len(), value.len()),
        "record buffer size mismatch"
    );
    assert_eq!(usize::from(header.key_len), key.len(), "header key_len mismatch");
    assert_eq!(header.value_len as usize, value.len(), "header value_len mismatch");
    let (head, body) = out.split_at_mut(RECORD_HEADER_BYTES);
    head.copy_from_slice(bytemuck::bytes_of(header));
    body[..key.len()].copy_from_slice(key);
    body[key.len()..].copy_from_slice(value);
}

/// Parses and validates only the header at the start of `bytes`.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<RecordHeader, RecordFault> {
    let Some(raw) = bytes.get(..RECORD_HEADER_BYTES) else {
        return Err(RecordFault::Truncated);
    };
    let header: RecordHeader = bytemuck::pod_read_unaligned(raw);
    let sane = header.magic == RECORD_MAGIC
        && header.format == RECORD_FORMAT
        && header.flags & !FLAGS_KNOWN == 0
        && header.reserved == 0;
    if !sane || header_checksum(&header) != header.header_checksum {
        return Err(RecordFault::BadHeader);
    }
    Ok(header)
}

/// Parses and fully validates the record at the start of `bytes`.
pub(crate) fn decode(bytes: &[u8]) -> Result<RecordView<'_>, RecordFault> {
    let header = decode_header(bytes)?;
    let key_len = usize::from(header.key_len);
    let total = record_bytes(key_len, header.value_len as usize);
    let Some(body) = bytes.get(RECORD_HEADER_BYTES..total) else {
        return Err(RecordFault::Truncated);
    };
    let (key, value) = body.split_at(key_len);
    if body_checksum(header.flags, key, value) != header.body_checksum {
        return Err(RecordFault::BadBody { record_bytes: total });
    }
    Ok(RecordView { header, key, value })
}

/// Splits bytes that [`decode`] already accepted, without re-hashing.
pub(crate) fn view_validated(bytes: &[u8]) -> RecordView<'_> {
    let header: RecordHeader = bytemuck::pod_read_unaligned(&bytes[..RECORD_HEADER_BYTES]);
    let key_len = usize::from(header.key_len);
    debug_assert_eq!(bytes.len(), record_bytes(key_len, header.value_len as usize));
    let (key, value) = bytes[RECORD_HEADER_BYTES..].split_at(key_len);
    RecordView { header, key, value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(partition: u32, seq: u64, flags: u8, key: &[u8], value: &[u8]) -> Vec<u8> {
        let sum = body_checksum(flags, key, value);
        let header = header_for(partition, seq, flags, key.len() as u16, value.len() as u32, sum);
        let mut out = vec![0u8; record_bytes(key.len(), value.len())];
        encode_into(&mut out, &header, key, value);
        out
    }

    #[test]
    fn round_trip_preserves_every_field() {
        let bytes = encode(7, 42, FLAG_TOMBSTONE, b"key", b"ctx");
        let view = decode(&bytes).expect("valid record");
        assert_eq!(view.header.partition, 7);
        assert_eq!(view.header.seq, 42);
        assert_eq!(view.header.flags, FLAG_TOMBSTONE);
        assert_eq!(view.key, b"key");
        assert_eq!(view.value, b"ctx");
        assert_eq!(view.record_bytes(), bytes.len());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(1, 9, 0, b"some-key", b"some value bytes");
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad).is_err(), "flip of bit {bit} went undetected");
        }
    }

    #[test]
    fn corrupt_body_reports_exact_length() {
        let mut bytes = encode(1, 9, 0, b"k", b"value");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert_eq!(
            decode(&bytes).unwrap_err(),
            RecordFault::BadBody {
                record_bytes: bytes.len()
            }
        );
    }

    #[test]
    fn checksum_distinguishes_tombstone_from_value_and_key_from_value() {
        assert_ne!(body_checksum(0, b"k", b"v"), body_checksum(FLAG_TOMBSTONE, b"k", b"v"));
        assert_ne!(body_checksum(0, b"ab", b"c"), body_checksum(0, b"a", b"bc"));
    }

    #[test]
    fn truncated_input_is_reported_not_panicking() {
        let bytes = encode(1, 1, 0, b"key", b"value");
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err());
        }
    }
}
