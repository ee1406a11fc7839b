//! `dynkv-net`: the native wire protocol (and, as the server grows, its
//! connections and the Rust client).
//!
//! Frames are little-endian and length-prefixed: a fixed 40-byte header,
//! then key | context | value. Many requests may be in flight on one
//! connection; responses carry the request id they answer. The decoder
//! returns borrowed slices of the receive buffer, so a put's value goes from
//! the socket buffer to the storage engine's log buffer without an
//! intermediate copy. The format is specified in `docs/wire-format.md`.
//!
//! ```
//! use dynkv_net::{decode, encode, Decoded, FrameLimits, Head, Opcode};
//!
//! let mut wire = Vec::new();
//! encode(&mut wire, &Head::request(Opcode::Put, 7), b"key", b"", b"value");
//! let Ok(Decoded::Frame(frame, used)) = decode(&wire, &FrameLimits::DEFAULT) else { panic!() };
//! assert_eq!((frame.key, frame.value, used), (&b"key"[..], &b"value"[..], wire.len()));
//! ```

mod client;
mod frame;
mod inflight;
mod opcode;
mod pipeline;
mod siblings;

pub use client::{CallOptions, Client, ClientError, ClientOptions, Connection, GetResult, Response};
pub use frame::{
    check_header, decode, encode, encode_with, Decoded, Frame, FrameError, FrameHeader, FrameLimits, Head,
    FLAG_BACKGROUND, FLAG_FALLBACK, FLAG_RESPONSE, FLAG_SUPERSEDE_LOCAL, FRAME_HEADER_BYTES, FRAME_MAGIC,
    FRAME_VERSION,
};
pub use opcode::{Opcode, Status};
pub use pipeline::Pipeline;
pub use siblings::{
    decode_siblings, encode_siblings, for_each_sibling, Sibling, SiblingsError, SIBLINGS_MAX, SIBLING_TOMBSTONE,
};
