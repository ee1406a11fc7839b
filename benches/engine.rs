//! Storage engine benchmarks (criterion).
//!
//! Every figure is per operation on one shard (one glommio executor). Puts
//! run W concurrent writer tasks on that shard, so under `sync=always` one
//! fdatasync covers up to W puts (group commit). With `--features peers`,
//! the same workloads run on RocksDB and fjall with matched durability (a
//! synced WAL per write batch) and equal concurrency (W OS threads, since
//! neither is async).
//!
//! Run: `cargo bench --bench engine` (add `--features peers` for peers).
//! Select with a filter, e.g. `cargo bench --bench engine -- put/100B`.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dynkv_engine::{Engine, EngineConfig, SyncMode};
use glommio::LocalExecutor;

const WRITERS: [u32; 3] = [1, 16, 256];
const VALUE_SIZES: [(usize, &str); 2] = [(100, "100B"), (1024, "1KiB")];

fn executor() -> LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .make()
        .expect("glommio executor")
}

fn config(dir: &Path, sync: SyncMode) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.sync = sync;
    config
}

/// Runs `total` puts split over `writers` tasks; returns the elapsed time.
async fn put_many(
    engine: &Rc<Engine>,
    next_key: &Rc<Cell<u64>>,
    total: u64,
    writers: u32,
    value: &Rc<Vec<u8>>,
) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..u64::from(writers))
        .map(|w| {
            let n = total / u64::from(writers) + u64::from(w < total % u64::from(writers));
            let (engine, next_key, value) = (engine.clone(), next_key.clone(), value.clone());
            glommio::spawn_local(async move {
                for _ in 0..n {
                    let k = next_key.get();
                    next_key.set(k + 1);
                    engine.put((k % 64) as u32, &k.to_be_bytes(), &value).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    started.elapsed()
}

fn bench_put(c: &mut Criterion) {
    let mut group = c.benchmark_group("put");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    let modes: [(SyncMode, &str, &[u32]); 2] = [
        (SyncMode::Always, "always", &WRITERS),
        (SyncMode::Never, "never", &[256]),
    ];
    for (size, size_name) in VALUE_SIZES {
        for (sync, sync_name, writers) in modes {
            for &w in writers {
                let dir = tempfile::tempdir().unwrap();
                let ex = executor();
                let engine = Rc::new(ex.run(Engine::open(config(dir.path(), sync))).unwrap());
                let next_key = Rc::new(Cell::new(0u64));
                let value = Rc::new(vec![0xa5u8; size]);
                let id = BenchmarkId::new(format!("dynkv/{size_name}/{sync_name}"), format!("{w}w"));
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| ex.run(put_many(&engine, &next_key, iters, w, &value)))
                });
                ex.run(engine.close()).unwrap();
                #[cfg(feature = "peers")]
                peers::bench_put(&mut group, size_name, size, sync_name, w);
            }
        }
    }
    group.finish();
}

/// Fills an engine with `keys` keys of `size` bytes using sync=never.
async fn fill(engine: &Rc<Engine>, keys: u64, size: usize) {
    let value = Rc::new(vec![0x5au8; size]);
    put_many(engine, &Rc::new(Cell::new(0)), keys, 256, &value).await;
    engine.sync().await.unwrap();
}

async fn get_many(engine: &Rc<Engine>, keyspace: u64, total: u64, readers: u32, seed: u64) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..u64::from(readers))
        .map(|r| {
            let n = total / u64::from(readers) + u64::from(r < total % u64::from(readers));
            let engine = engine.clone();
            glommio::spawn_local(async move {
                let mut x = seed ^ (r + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                for _ in 0..n {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = x % keyspace;
                    let got = engine.get((k % 64) as u32, &k.to_be_bytes()).await.unwrap();
                    assert!(got.is_some(), "key {k} present");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    started.elapsed()
}

fn bench_get(c: &mut Criterion) {
    let mut group = c.benchmark_group("get");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    // Hot: 10k keys, all in cache after the first touch.
    {
        let dir = tempfile::tempdir().unwrap();
        let ex = executor();
        let mut cfg = config(dir.path(), SyncMode::Never);
        cfg.cache_capacity_bytes = 64 << 20;
        let engine = Rc::new(ex.run(Engine::open(cfg)).unwrap());
        ex.run(fill(&engine, 10_000, 100));
        ex.run(get_many(&engine, 10_000, 20_000, 1, 7));
        group.bench_function(BenchmarkId::new("dynkv/hot/100B", "1r"), |b| {
            b.iter_custom(|iters| ex.run(get_many(&engine, 10_000, iters, 1, iters)))
        });
        ex.run(engine.close()).unwrap();
        #[cfg(feature = "peers")]
        peers::bench_get_hot(&mut group);
    }
    // Cold: 1M keys of 1 KiB (about 1 GiB), cache off: every get reads disk.
    {
        let dir = tempfile::tempdir().unwrap();
        let ex = executor();
        let mut cfg = config(dir.path(), SyncMode::Never);
        cfg.cache_capacity_bytes = 0;
        let engine = Rc::new(ex.run(Engine::open(cfg)).unwrap());
        ex.run(fill(&engine, 1_000_000, 1024));
        for readers in [1u32, 32] {
            group.bench_function(BenchmarkId::new("dynkv/cold/1KiB", format!("{readers}r")), |b| {
                b.iter_custom(|iters| ex.run(get_many(&engine, 1_000_000, iters, readers, iters)))
            });
        }
        ex.run(engine.close()).unwrap();
    }
    group.finish();
}

fn remove_hints(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "hint") {
            std::fs::remove_file(path).unwrap();
        }
    }
}

fn bench_reopen(c: &mut Criterion) {
    let mut group = c.benchmark_group("reopen");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let ex = executor();
    let engine = Rc::new(ex.run(Engine::open(config(dir.path(), SyncMode::Never))).unwrap());
    ex.run(fill(&engine, 1_000_000, 100));
    ex.run(engine.close()).unwrap();
    drop(engine);
    for (name, hints) in [("with_hints", true), ("without_hints", false)] {
        group.bench_function(BenchmarkId::new("dynkv/1M_keys", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if !hints {
                        remove_hints(dir.path());
                    }
                    let started = Instant::now();
                    let engine = ex.run(Engine::open(config(dir.path(), SyncMode::Never))).unwrap();
                    total += started.elapsed();
                    assert_eq!(engine.stats().keys, 1_000_000);
                    // Closing writes a hint for the (empty) new segment only.
                    ex.run(engine.close()).unwrap();
                }
                total
            })
        });
    }
    group.finish();
}

fn bench_compaction(c: &mut Criterion) {
    let mut group = c.benchmark_group("compaction");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    // 100k live keys of 1 KiB, each overwritten twice: two thirds dead.
    let live_keys = 100_000u64;
    let record_bytes = 40 + 8 + 1024;
    group.throughput(Throughput::Bytes(3 * live_keys * record_bytes));
    group.bench_function(BenchmarkId::new("dynkv", "1KiB_two_thirds_dead"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                let ex = executor();
                let mut cfg = config(dir.path(), SyncMode::Never);
                cfg.compaction_auto = false;
                let engine = Rc::new(ex.run(Engine::open(cfg)).unwrap());
                for _ in 0..3 {
                    ex.run(fill(&engine, live_keys, 1024));
                }
                let started = Instant::now();
                let report = ex.run(engine.compact()).unwrap();
                total += started.elapsed();
                assert!(report.segments_compacted >= 3, "{report:?}");
                ex.run(engine.close()).unwrap();
            }
            total
        })
    });
    group.finish();
}

#[cfg(feature = "peers")]
#[path = "support/peers.rs"]
mod peers;

criterion_group!(benches, bench_put, bench_get, bench_reopen, bench_compaction);
criterion_main!(benches);
