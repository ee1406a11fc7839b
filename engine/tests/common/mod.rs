//! Helpers shared by the engine's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use dynkv_engine::{EngineConfig, SyncMode};

/// Runs `fut` on a fresh glommio executor, as a shard would.
pub fn run<T>(fut: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("glommio executor (needs io_uring and 512 KiB of locked memory)")
        .run(fut)
}

/// A configuration with small limits so tests roll segments often.
pub fn small_config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.key_len_max_bytes = 64;
    config.value_len_max_bytes = 4096;
    config.segment_size_max_bytes = 256 << 10;
    config.cache_capacity_bytes = 64 << 10;
    config.compaction_interval = Duration::from_millis(20);
    config.sync = SyncMode::Always;
    config
}

/// SplitMix64: a tiny seeded generator, so failures replay from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A seed from `DYNKV_SEED`, or a fresh one; printed so a failure replays.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("DYNKV_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (replay with DYNKV_SEED={seed})");
    seed
}

/// Bytes of all files in `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Paths of segment files in `dir`, sorted by id.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}
