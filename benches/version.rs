//! Versions and anti-entropy building blocks (criterion).
//!
//! - `version/sync`: merging two replicas' clocks for one key (three
//!   writers, two concurrent siblings), what every replica write and read
//!   repair does;
//! - `version/update`: a coordinator making a new version from a context;
//! - `version/encode` and `version/decode`: the stored object, 100-byte value;
//! - `merkle/diff`: comparing two partitions' Merkle trees that differ in
//!   ten keys (roots, then branches, then leaves).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dynkv::object::{decode_object, object_bytes};
use dynkv::version::{Clock, Sibling, VersionLimits};
use dynkv_engine::{Engine, EngineConfig, MerkleTree, SyncMode};
use dynkv_ring::NodeId;

fn sibling(value: &[u8]) -> Sibling {
    Sibling {
        timestamp_ms: 1_764_000_000_000,
        value: Some(bytes::Bytes::copy_from_slice(value)),
    }
}

/// Two replicas' clocks: shared history from three writers, then one
/// concurrent write on each side.
fn diverged() -> (Clock, Clock) {
    let limits = VersionLimits::default();
    let value = [7u8; 100];
    let mut shared = Clock::new();
    for (i, writer) in [1, 2, 3, 1, 2].iter().enumerate() {
        let ctx = shared.context();
        shared = shared
            .update(Some(&ctx), NodeId(*writer), sibling(&value[..50 + i]), limits)
            .unwrap();
    }
    let ctx = shared.context();
    let a = shared.update(Some(&ctx), NodeId(1), sibling(&value), limits).unwrap();
    let b = shared.update(Some(&ctx), NodeId(3), sibling(&value), limits).unwrap();
    (a, b)
}

fn bench_version(c: &mut Criterion) {
    let (a, b) = diverged();
    let merged = a.sync(&b);
    assert_eq!(merged.sibling_count(), 2);
    let mut group = c.benchmark_group("version");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sync", |bench| bench.iter(|| black_box(&a).sync(black_box(&b))));
    let ctx = merged.context();
    group.bench_function("update", |bench| {
        bench.iter(|| {
            black_box(&merged)
                .update(Some(&ctx), NodeId(2), sibling(&[1u8; 100]), VersionLimits::default())
                .unwrap()
        })
    });
    let bytes = object_bytes(&a);
    group.bench_function("encode", |bench| bench.iter(|| object_bytes(black_box(&a))));
    group.bench_function("decode", |bench| {
        bench.iter(|| decode_object(black_box(&bytes)).unwrap())
    });
    group.finish();
}

/// Two partitions with the same 10,000 keys but for ten values.
fn two_trees() -> (MerkleTree, MerkleTree) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let paths: Vec<_> = dirs.iter().map(|d| d.path().canonicalize().unwrap()).collect();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let mut trees = Vec::new();
            for (side, path) in paths.into_iter().enumerate() {
                let mut config = EngineConfig::new(path);
                config.sync = SyncMode::Never;
                let engine = Engine::open(config).await.unwrap();
                for i in 0..10_000u32 {
                    let value: &[u8] = if side == 1 && i % 1000 == 0 {
                        b"changed"
                    } else {
                        b"original"
                    };
                    engine.put(0, format!("key-{i}").as_bytes(), value).await.unwrap();
                }
                trees.push(engine.merkle_tree(0));
                engine.close().await.unwrap();
            }
            let b = trees.pop().unwrap();
            (trees.pop().unwrap(), b)
        })
        .unwrap()
        .join()
        .unwrap()
}

fn bench_merkle(c: &mut Criterion) {
    let (a, b) = two_trees();
    assert_eq!(a.diff(&b).len(), 10);
    let mut group = c.benchmark_group("merkle");
    group.bench_function("diff/10_of_10000_keys", |bench| {
        bench.iter(|| black_box(&a).diff(black_box(&b)))
    });
    group.bench_function("diff/equal", |bench| bench.iter(|| black_box(&a).diff(black_box(&a))));
    group.finish();
}

criterion_group!(benches, bench_version, bench_merkle);
criterion_main!(benches);
