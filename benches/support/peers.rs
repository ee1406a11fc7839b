//! The engine workloads on RocksDB and fjall, for ratios measured in the
//! same run. Durability is matched: every put is acknowledged after its WAL
//! write is synced (RocksDB `WriteOptions::set_sync(true)`, which group-
//! commits concurrent writers; fjall `persist(SyncData)` after the insert).
//! Concurrency is matched with one OS thread per writer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId};

trait Store: Sync {
    fn put(&self, key: &[u8], value: &[u8], sync: bool);
    fn get(&self, key: &[u8]) -> bool;
}

struct Rocks(rocksdb::DB);

impl Store for Rocks {
    fn put(&self, key: &[u8], value: &[u8], sync: bool) {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(sync);
        self.0.put_opt(key, value, &opts).unwrap();
    }

    fn get(&self, key: &[u8]) -> bool {
        self.0.get_pinned(key).unwrap().is_some()
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    partition: fjall::PartitionHandle,
}

impl Store for Fjall {
    fn put(&self, key: &[u8], value: &[u8], sync: bool) {
        self.partition.insert(key, value).unwrap();
        if sync {
            self.keyspace.persist(fjall::PersistMode::SyncData).unwrap();
        }
    }

    fn get(&self, key: &[u8]) -> bool {
        self.partition.get(key).unwrap().is_some()
    }
}

fn open_rocks(dir: &std::path::Path) -> Rocks {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.set_enable_pipelined_write(true);
    Rocks(rocksdb::DB::open(&opts, dir).unwrap())
}

fn open_fjall(dir: &std::path::Path) -> Fjall {
    let keyspace = fjall::Config::new(dir).open().unwrap();
    let partition = keyspace
        .open_partition("bench", fjall::PartitionCreateOptions::default())
        .unwrap();
    Fjall { keyspace, partition }
}

fn put_many(store: &dyn Store, next_key: &AtomicU64, total: u64, writers: u32, value: &[u8], sync: bool) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for w in 0..u64::from(writers) {
            let n = total / u64::from(writers) + u64::from(w < total % u64::from(writers));
            scope.spawn(move || {
                for _ in 0..n {
                    let k = next_key.fetch_add(1, Ordering::Relaxed);
                    store.put(&k.to_be_bytes(), value, sync);
                }
            });
        }
    });
    started.elapsed()
}

pub(crate) fn bench_put(
    group: &mut BenchmarkGroup<'_, WallTime>,
    size_name: &str,
    size: usize,
    sync_name: &str,
    writers: u32,
) {
    let sync = sync_name == "always";
    let value = vec![0xa5u8; size];
    for peer in ["rocksdb", "fjall"] {
        let dir = tempfile::tempdir().unwrap();
        let store: Box<dyn Store> = match peer {
            "rocksdb" => Box::new(open_rocks(dir.path())),
            _ => Box::new(open_fjall(dir.path())),
        };
        let next_key = AtomicU64::new(0);
        let id = BenchmarkId::new(format!("{peer}/{size_name}/{sync_name}"), format!("{writers}w"));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| put_many(store.as_ref(), &next_key, iters, writers, &value, sync))
        });
    }
}

pub(crate) fn bench_get_hot(group: &mut BenchmarkGroup<'_, WallTime>) {
    let value = vec![0x5au8; 100];
    for peer in ["rocksdb", "fjall"] {
        let dir = tempfile::tempdir().unwrap();
        let store: Box<dyn Store> = match peer {
            "rocksdb" => Box::new(open_rocks(dir.path())),
            _ => Box::new(open_fjall(dir.path())),
        };
        put_many(store.as_ref(), &AtomicU64::new(0), 10_000, 16, &value, false);
        group.bench_function(BenchmarkId::new(format!("{peer}/hot/100B"), "1r"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                let mut x = iters | 1;
                for _ in 0..iters {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    assert!(store.get(&(x % 10_000).to_be_bytes()));
                }
                started.elapsed()
            })
        });
    }
}
