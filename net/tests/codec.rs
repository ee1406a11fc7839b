//! Codec laws: round trips, byte-at-a-time arrival, pipelined streams,
//! and rejection of every kind of bad header before any allocation.

use dynkv_net::{
    decode, decode_siblings, encode, encode_siblings, encode_with, Decoded, FrameError, FrameLimits, Head, Opcode,
    Sibling, SiblingsError, Status, FRAME_HEADER_BYTES, SIBLINGS_MAX,
};
use proptest::prelude::*;

fn head_strategy() -> impl Strategy<Value = Head> {
    (
        any::<u8>(),
        0u8..2,
        any::<u8>(),
        any::<u64>(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(
            |(opcode, flags, status, request_id, timeout_ms, quorum, primary_quorum)| Head {
                opcode,
                flags,
                status,
                request_id,
                timeout_ms,
                quorum,
                primary_quorum,
            },
        )
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..300)
}

proptest! {
    #[test]
    fn frames_round_trip(head in head_strategy(), key in body(), context in body(), value in body()) {
        let mut wire = Vec::new();
        encode(&mut wire, &head, &key, &context, &value);
        let Decoded::Frame(frame, used) = decode(&wire, &FrameLimits::DEFAULT).unwrap() else {
            panic!("a whole frame must decode");
        };
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!((frame.key, frame.context, frame.value), (&key[..], &context[..], &value[..]));
        prop_assert_eq!(frame.header.request_id, head.request_id);
        prop_assert_eq!(frame.header.opcode, head.opcode);
        prop_assert_eq!(frame.header.status, head.status);
        prop_assert_eq!((frame.header.timeout_ms, frame.header.quorum, frame.header.primary_quorum), (head.timeout_ms, head.quorum, head.primary_quorum));
        prop_assert_eq!(frame.is_response(), head.flags == 1);
    }

    #[test]
    fn a_pipelined_stream_decodes_in_order_whatever_the_split(
        frames in proptest::collection::vec((head_strategy(), body(), body()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut wire = Vec::new();
        for (head, key, value) in &frames {
            encode(&mut wire, head, key, b"", value);
        }
        // Deliver the stream in two parts split anywhere, as a socket might.
        let cut = cut.index(wire.len() + 1);
        let mut buf = wire[..cut].to_vec();
        let mut decoded = Vec::new();
        let mut consumed = 0;
        loop {
            match decode(&buf[consumed..], &FrameLimits::DEFAULT).unwrap() {
                Decoded::Frame(frame, used) => {
                    decoded.push((frame.header.request_id, frame.key.to_vec(), frame.value.to_vec()));
                    consumed += used;
                }
                Decoded::NeedBytes(_) if buf.len() < wire.len() => buf.extend_from_slice(&wire[cut..]),
                Decoded::NeedBytes(_) => break,
            }
        }
        prop_assert_eq!(consumed, wire.len());
        let expected: Vec<_> = frames.iter().map(|(h, k, v)| (h.request_id, k.clone(), v.clone())).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn any_single_bit_flip_in_the_header_is_rejected(bit in 0usize..FRAME_HEADER_BYTES * 8) {
        let mut wire = Vec::new();
        encode(&mut wire, &Head::request(Opcode::Get, 42), b"key", b"", b"");
        wire[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(decode(&wire, &FrameLimits::DEFAULT).is_err(), "flip of header bit {} accepted", bit);
    }

    #[test]
    fn siblings_round_trip(values in proptest::collection::vec((any::<bool>(), body()), 0..10)) {
        let siblings: Vec<Sibling<'_>> = values.iter().map(|(t, v)| Sibling { tombstone: *t, value: v }).collect();
        let mut wire = Vec::new();
        encode_siblings(&mut wire, siblings.iter().copied());
        prop_assert_eq!(decode_siblings(&wire).unwrap(), siblings.clone());
        // Streamed into a frame, as a server answers a read: the same bytes
        // as a frame around the sibling list built apart.
        let head = Head::response(Opcode::Get as u8, 9, Status::Ok);
        let mut apart = vec![1, 2, 3];
        encode(&mut apart, &head, b"k", b"ctx", &wire);
        let mut streamed = vec![1, 2, 3];
        encode_with(&mut streamed, &head, b"k", b"ctx", |out| encode_siblings(out, siblings.iter().copied()));
        prop_assert_eq!(streamed, apart);
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&bytes, &FrameLimits::DEFAULT);
        let _ = decode_siblings(&bytes);
    }
}

#[test]
fn partial_frames_report_how_many_bytes_are_needed() {
    let mut wire = Vec::new();
    encode(&mut wire, &Head::request(Opcode::Put, 1), b"k", b"ctx", b"value");
    assert_eq!(
        decode(&wire[..10], &FrameLimits::DEFAULT),
        Ok(Decoded::NeedBytes(FRAME_HEADER_BYTES))
    );
    assert_eq!(
        decode(&wire[..FRAME_HEADER_BYTES + 2], &FrameLimits::DEFAULT),
        Ok(Decoded::NeedBytes(wire.len()))
    );
}

#[test]
fn oversized_sections_are_rejected_from_the_header_alone() {
    let limits = FrameLimits {
        key_max_bytes: 16,
        context_max_bytes: 16,
        value_max_bytes: 1024,
    };
    let mut wire = Vec::new();
    encode(&mut wire, &Head::request(Opcode::Put, 1), b"k", b"", &[0u8; 2000]);
    // Only the header is present: the limit is enforced before the body.
    let err = decode(&wire[..FRAME_HEADER_BYTES], &limits).unwrap_err();
    assert_eq!(
        err,
        FrameError::TooLarge {
            section: "value",
            len: 2000,
            max: 1024
        }
    );
    assert!(err.to_string().contains("2000"), "{err}");
}

#[test]
fn wrong_magic_and_version_are_named() {
    let mut wire = Vec::new();
    encode(&mut wire, &Head::request(Opcode::Ping, 1), b"", b"", b"");
    let mut http = wire.clone();
    http[..4].copy_from_slice(b"GET ");
    assert!(matches!(
        decode(&http, &FrameLimits::DEFAULT),
        Err(FrameError::BadMagic(_))
    ));
    let err = decode(&http, &FrameLimits::DEFAULT).unwrap_err().to_string();
    assert!(err.contains("native-protocol port"), "{err}");
}

#[test]
fn malformed_sibling_lists_are_errors() {
    assert_eq!(decode_siblings(&[]), Err(SiblingsError::Truncated));
    let too_many = SIBLINGS_MAX + 1;
    assert_eq!(
        decode_siblings(&too_many.to_le_bytes()),
        Err(SiblingsError::TooMany(too_many))
    );
    let mut wire = Vec::new();
    encode_siblings(
        &mut wire,
        [Sibling {
            tombstone: false,
            value: b"v",
        }],
    );
    wire.push(0);
    assert_eq!(decode_siblings(&wire), Err(SiblingsError::Trailing(1)));
    let response = Head::response(Opcode::Get as u8, 3, Status::NotFound);
    assert_eq!(response.status, Status::NotFound as u8);
}
