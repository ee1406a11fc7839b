//! `dynkv-engine`: one shard's durable key-value store.
//!
//! A log-structured hash store in the Bitcask family, on glommio and
//! io_uring with O_DIRECT:
//! - writes append records to the active segment through an aligned buffer;
//!   concurrent puts share one write and one `fdatasync` (group commit);
//! - an in-memory keydir per partition maps each key to its newest record,
//!   so a get costs at most one disk read, and a bounded cache absorbs hot
//!   reads (O_DIRECT bypasses the page cache);
//! - sealed segments get hint files, so reopening reads keys, not values;
//! - background compaction rewrites segments that are mostly dead;
//! - each partition keeps an incrementally updated Merkle tree for
//!   anti-entropy.
//!
//! An engine belongs to one executor (shard) and is `!Send`: nothing on its
//! data path is shared between threads. The on-disk format is specified in
//! `docs/storage-format.md`.
//!
//! ```no_run
//! use dynkv_engine::{Engine, EngineConfig};
//!
//! glommio::LocalExecutor::default().run(async {
//!     let engine = Engine::open(EngineConfig::new("/tmp/dynkv-doc")).await.unwrap();
//!     engine.put(0, b"hello", b"world").await.unwrap();
//!     let record = engine.get(0, b"hello").await.unwrap().unwrap();
//!     assert_eq!(&record.value[..], b"world");
//!     engine.close().await.unwrap();
//! });
//! ```

mod cache;
mod compaction;
mod config;
mod engine;
mod error;
mod flush;
mod hint;
mod keydir;
pub mod merkle;
mod record;
mod recovery;
mod scan;
mod segment;
mod signal;
mod stats;
mod writer;

pub use compaction::CompactionReport;
pub use config::{EngineConfig, SyncMode, KEY_LEN_CEILING_BYTES, SEGMENT_SIZE_CEILING_BYTES, VALUE_LEN_CEILING_BYTES};
pub use engine::{DiskRead, Engine, GetNow, KeyInfo, Record, Staged};
pub use error::{EngineError, Result};
pub use merkle::MerkleTree;
pub use recovery::RecoveryReport;
pub use scan::CorruptRange;
pub use stats::EngineStats;
