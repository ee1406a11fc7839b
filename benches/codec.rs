//! Native protocol codec benchmarks (criterion): what framing costs per
//! request, next to the network and storage costs measured elsewhere.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dynkv_net::{decode, decode_siblings, encode, encode_siblings, Decoded, FrameLimits, Head, Opcode, Sibling};

fn bench_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    let key = b"user:0000001234";
    let value = vec![0xa5u8; 100];
    let mut out = Vec::with_capacity(4096);
    group.bench_function("encode/put_100B", |b| {
        b.iter(|| {
            out.clear();
            encode(
                &mut out,
                &Head::request(Opcode::Put, 42),
                black_box(key),
                &[],
                black_box(&value),
            );
            black_box(out.len())
        })
    });
    let mut wire = Vec::new();
    encode(&mut wire, &Head::request(Opcode::Put, 42), key, &[], &value);
    group.bench_function("decode/put_100B", |b| {
        b.iter(|| match decode(black_box(&wire), &FrameLimits::DEFAULT) {
            Ok(Decoded::Frame(frame, used)) => black_box((frame.value.len(), used)),
            _ => unreachable!("a valid frame"),
        })
    });
    // 16 pipelined frames in one buffer, as a server sees them at -P 16.
    let mut pipelined = Vec::new();
    for id in 0..16 {
        encode(&mut pipelined, &Head::request(Opcode::Get, id), key, &[], &[]);
    }
    group.throughput(Throughput::Elements(16));
    group.bench_function("decode/16_pipelined_gets", |b| {
        b.iter(|| {
            let mut at = 0;
            while let Ok(Decoded::Frame(_, used)) = decode(&pipelined[at..], &FrameLimits::DEFAULT) {
                at += used;
            }
            black_box(at)
        })
    });
    group.throughput(Throughput::Elements(1));
    let mut siblings = Vec::new();
    encode_siblings(
        &mut siblings,
        [Sibling {
            tombstone: false,
            value: &value,
        }],
    );
    group.bench_function("decode/siblings_1x100B", |b| {
        b.iter(|| black_box(decode_siblings(black_box(&siblings)).map(|s| s.len())))
    });
    group.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
