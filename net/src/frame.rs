//! Frames: the fixed header and the key | context | value body, shared by
//! client and internode traffic. Specified in `docs/wire-format.md`.
//!
//! The decoder never copies: a decoded [`Frame`] borrows its key, context
//! and value from the receive buffer. It validates the header (magic,
//! version, checksum) before trusting any length, and checks every length
//! against [`FrameLimits`] before the caller allocates or reads a byte of
//! the body.

use bytemuck::{Pod, Zeroable};
use xxhash_rust::xxh3::xxh3_64;

use crate::opcode::{Opcode, Status};

/// `b"DKVF"` as a little-endian u32.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"DKVF");
/// Protocol version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Size of [`FrameHeader`] on the wire.
pub const FRAME_HEADER_BYTES: usize = std::mem::size_of::<FrameHeader>();

/// Flag: the frame is a response (its `request_id` names the request).
pub const FLAG_RESPONSE: u8 = 0b0000_0001;
/// Flag on Put and Delete: supersede whatever the coordinator holds for
/// the key (Redis-style overwrite) instead of a given context.
pub const FLAG_SUPERSEDE_LOCAL: u8 = 0b0000_0010;
/// Flag on internode requests made by background work (anti-entropy,
/// partition transfers): the receiver runs them in its low-share task
/// queue, behind client requests.
pub const FLAG_BACKGROUND: u8 = 0b0000_0100;
/// Flag on internode requests when every primary of the key is
/// unreachable from the sender: a Get, Put or Delete is to be coordinated
/// by the receiver as a fallback, and a ReplicaPut's hint holds a version
/// no primary may have, so it must not expire.
pub const FLAG_FALLBACK: u8 = 0b0000_1000;
const FLAGS_KNOWN: u8 = FLAG_RESPONSE | FLAG_SUPERSEDE_LOCAL | FLAG_BACKGROUND | FLAG_FALLBACK;

/// The fixed header. Little-endian, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FrameHeader {
    pub magic: u32,
    pub version: u8,
    pub opcode: u8,
    pub flags: u8,
    pub status: u8,
    pub request_id: u64,
    pub key_len: u32,
    pub context_len: u32,
    pub value_len: u32,
    /// Per-request timeout; 0 means the server default.
    pub timeout_ms: u32,
    /// R for reads, W for writes; 0 means the configured default.
    pub quorum: u8,
    /// PR / PW: replies that must come from primary owners; 0 means none.
    pub primary_quorum: u8,
    pub reserved: u16,
    /// Low 32 bits of xxh3-64 over the 36 bytes before it.
    pub header_checksum: u32,
}

const _: () = assert!(FRAME_HEADER_BYTES == 40);
const HEADER_CHECKSUM_OFFSET: usize = 36;

/// Bounds on every section, checked before the body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    pub key_max_bytes: u32,
    pub context_max_bytes: u32,
    pub value_max_bytes: u32,
}

impl FrameLimits {
    /// The wire's own ceilings. A server narrows them to its configured key
    /// and value limits plus room to answer "too large" with a status.
    pub const DEFAULT: FrameLimits = FrameLimits {
        key_max_bytes: 64 << 10,
        context_max_bytes: 64 << 10,
        value_max_bytes: 64 << 20,
    };

    pub fn body_max_bytes(&self) -> usize {
        self.key_max_bytes as usize + self.context_max_bytes as usize + self.value_max_bytes as usize
    }
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits::DEFAULT
    }
}

/// Why bytes are not a frame. All are fatal for the connection: after a bad
/// header the stream cannot be resynchronised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad frame magic {0:#010x} (is this a dynkv native-protocol port?)")]
    BadMagic(u32),
    #[error("unsupported protocol version {0} (this build speaks {FRAME_VERSION})")]
    BadVersion(u8),
    #[error("frame header checksum mismatch")]
    BadChecksum,
    #[error("unknown frame flags {0:#04x}")]
    BadFlags(u8),
    #[error("{section} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { section: &'static str, len: u32, max: u32 },
}

/// A decoded frame, borrowing its body from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub key: &'a [u8],
    pub context: &'a [u8],
    pub value: &'a [u8],
}

impl Frame<'_> {
    /// The opcode, if this build knows it.
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.header.opcode)
    }

    pub fn status(&self) -> Option<Status> {
        Status::from_u8(self.header.status)
    }

    pub fn is_response(&self) -> bool {
        self.header.flags & FLAG_RESPONSE != 0
    }

    /// Bytes the frame occupies on the wire.
    pub fn wire_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.key.len() + self.context.len() + self.value.len()
    }
}

/// Result of trying to decode from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame and how many bytes it used.
    Frame(Frame<'a>, usize),
    /// At least this many bytes in total are needed; read more.
    NeedBytes(usize),
}

fn header_checksum(header: &FrameHeader) -> u32 {
    // Truncation is intended: 32 bits guard a 36-byte header.
    xxh3_64(&bytemuck::bytes_of(header)[..HEADER_CHECKSUM_OFFSET]) as u32
}

/// Validates a header and its lengths against `limits`.
pub fn check_header(bytes: &[u8; FRAME_HEADER_BYTES], limits: &FrameLimits) -> Result<FrameHeader, FrameError> {
    let header: FrameHeader = bytemuck::pod_read_unaligned(bytes);
    if header.magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(header.magic));
    }
    if header.version != FRAME_VERSION {
        return Err(FrameError::BadVersion(header.version));
    }
    if header_checksum(&header) != header.header_checksum {
        return Err(FrameError::BadChecksum);
    }
    if header.flags & !FLAGS_KNOWN != 0 {
        return Err(FrameError::BadFlags(header.flags));
    }
    let check = |section, len: u32, max: u32| {
        if len > max {
            Err(FrameError::TooLarge { section, len, max })
        } else {
            Ok(())
        }
    };
    check("key", header.key_len, limits.key_max_bytes)?;
    check("context", header.context_len, limits.context_max_bytes)?;
    check("value", header.value_len, limits.value_max_bytes)?;
    Ok(header)
}

/// Decodes one frame from the front of `buf`, without copying.
pub fn decode<'a>(buf: &'a [u8], limits: &FrameLimits) -> Result<Decoded<'a>, FrameError> {
    let Some(head) = buf.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Ok(Decoded::NeedBytes(FRAME_HEADER_BYTES));
    };
    let header = check_header(head, limits)?;
    let key_end = FRAME_HEADER_BYTES + header.key_len as usize;
    let context_end = key_end + header.context_len as usize;
    let total = context_end + header.value_len as usize;
    if buf.len() < total {
        return Ok(Decoded::NeedBytes(total));
    }
    let frame = Frame {
        header,
        key: &buf[FRAME_HEADER_BYTES..key_end],
        context: &buf[key_end..context_end],
        value: &buf[context_end..total],
    };
    Ok(Decoded::Frame(frame, total))
}

/// The logical fields of a header; lengths and checksum are derived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub opcode: u8,
    pub flags: u8,
    pub status: u8,
    pub request_id: u64,
    pub timeout_ms: u32,
    pub quorum: u8,
    pub primary_quorum: u8,
}

impl Head {
    pub fn request(opcode: Opcode, request_id: u64) -> Head {
        Head {
            opcode: opcode as u8,
            request_id,
            ..Head::default()
        }
    }

    pub fn response(opcode: u8, request_id: u64, status: Status) -> Head {
        Head {
            opcode,
            flags: FLAG_RESPONSE,
            status: status as u8,
            request_id,
            ..Head::default()
        }
    }
}

/// Appends one frame to `out`.
///
/// # Panics
/// If a section is longer than `u32::MAX` bytes; callers bound sections by
/// their limits long before that.
pub fn encode(out: &mut Vec<u8>, head: &Head, key: &[u8], context: &[u8], value: &[u8]) {
    let len = |s: &[u8]| u32::try_from(s.len()).expect("frame sections are bounded far below 4 GiB");
    let mut header = FrameHeader {
        magic: FRAME_MAGIC,
        version: FRAME_VERSION,
        opcode: head.opcode,
        flags: head.flags,
        status: head.status,
        request_id: head.request_id,
        key_len: len(key),
        context_len: len(context),
        value_len: len(value),
        timeout_ms: head.timeout_ms,
        quorum: head.quorum,
        primary_quorum: head.primary_quorum,
        reserved: 0,
        header_checksum: 0,
    };
    header.header_checksum = header_checksum(&header);
    out.reserve(FRAME_HEADER_BYTES + key.len() + context.len() + value.len());
    out.extend_from_slice(bytemuck::bytes_of(&header));
    out.extend_from_slice(key);
    out.extend_from_slice(context);
    out.extend_from_slice(value);
}

/// Like [`encode`], with the value section appended to `out` by
/// `write_value`: a value built from parts (a sibling list) needs no
/// buffer of its own. The header's value length and checksum are patched
/// once the value is written.
pub fn encode_with(out: &mut Vec<u8>, head: &Head, key: &[u8], context: &[u8], write_value: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    encode(out, head, key, context, &[]);
    let value_start = out.len();
    write_value(out);
    let mut header: FrameHeader = bytemuck::pod_read_unaligned(&out[start..start + FRAME_HEADER_BYTES]);
    header.value_len = u32::try_from(out.len() - value_start).expect("frame sections are bounded far below 4 GiB");
    header.header_checksum = header_checksum(&header);
    out[start..start + FRAME_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&header));
}
