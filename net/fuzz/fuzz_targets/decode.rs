//! Fuzzes the frame and sibling decoders with arbitrary bytes, as a hostile
//! peer could send them. Run: `cd net/fuzz && cargo +nightly fuzz run decode`.
#![no_main]

use dynkv_net::{decode, decode_siblings, Decoded, FrameLimits, FRAME_HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = FrameLimits {
        key_max_bytes: 1024,
        context_max_bytes: 1024,
        value_max_bytes: 1 << 16,
    };
    let mut rest = data;
    // Decode a pipelined stream until it ends or turns bad.
    while let Ok(Decoded::Frame(frame, used)) = decode(rest, &limits) {
        assert!(used >= FRAME_HEADER_BYTES && used <= rest.len());
        assert_eq!(frame.wire_bytes(), used);
        assert!(frame.key.len() <= 1024 && frame.context.len() <= 1024);
        let _ = decode_siblings(frame.value);
        rest = &rest[used..];
    }
    let _ = decode_siblings(data);
});
