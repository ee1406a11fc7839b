//! Put, get, delete, reopen, limits and typed errors.

mod common;

use common::{run, small_config};
use dynkv_engine::{Engine, EngineConfig, EngineError, GetNow, SyncMode};

#[test]
fn put_get_delete_round_trip_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        let s1 = engine.put(3, b"alpha", b"one").await.unwrap();
        let s2 = engine.put(3, b"alpha", b"two").await.unwrap();
        assert!(s2 > s1, "sequence numbers increase");
        engine.put(4, b"alpha", b"other partition").await.unwrap();
        engine.put(3, b"beta", b"b").await.unwrap();
        engine.delete(3, b"beta", b"ctx").await.unwrap();
        let got = engine.get(3, b"alpha").await.unwrap().unwrap();
        assert_eq!((&got.value[..], got.tombstone), (&b"two"[..], false));
        let tomb = engine.get(3, b"beta").await.unwrap().unwrap();
        assert!(tomb.tombstone);
        assert_eq!(&tomb.value[..], b"ctx");
        assert!(engine.get(3, b"missing").await.unwrap().is_none());
        engine.close().await.unwrap();

        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        assert_eq!(&engine.get(3, b"alpha").await.unwrap().unwrap().value[..], b"two");
        assert_eq!(
            &engine.get(4, b"alpha").await.unwrap().unwrap().value[..],
            b"other partition"
        );
        assert!(engine.get(3, b"beta").await.unwrap().unwrap().tombstone);
        let s3 = engine.put(3, b"alpha", b"three").await.unwrap();
        assert!(s3 > s2, "sequence numbers keep increasing across reopen");
        assert_eq!(engine.partition_ids(), vec![3, 4]);
        assert_eq!(engine.stats().keys, 3);
        engine.close().await.unwrap();
    });
}

#[test]
fn oversized_key_or_value_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        let err = engine.put(0, &[1u8; 65], b"v").await.unwrap_err();
        assert!(matches!(err, EngineError::KeyTooLarge { len: 65, max: 64 }), "{err}");
        let err = engine.put(0, b"k", &vec![0u8; 4097]).await.unwrap_err();
        assert!(
            matches!(err, EngineError::ValueTooLarge { len: 4097, max: 4096 }),
            "{err}"
        );
        assert!(err.to_string().contains("4097"));
        let err = engine.delete(0, b"k", &vec![0u8; 5000]).await.unwrap_err();
        assert!(matches!(err, EngineError::ValueTooLarge { .. }));
        assert_eq!(engine.stats().puts, 0);
        assert!(engine.get(0, b"k").await.unwrap().is_none());
        // Limits at the edge are accepted.
        engine.put(0, &[1u8; 64], &vec![7u8; 4096]).await.unwrap();
        engine.close().await.unwrap();
    });
}

#[test]
fn operations_on_a_closed_store_get_a_closed_error() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        engine.put(0, b"k", b"v").await.unwrap();
        engine.close().await.unwrap();
        assert!(matches!(engine.put(0, b"k", b"v").await, Err(EngineError::Closed)));
        assert!(matches!(engine.get(0, b"k").await, Err(EngineError::Closed)));
        assert!(matches!(engine.close().await, Err(EngineError::Closed)));
    });
}

#[test]
fn a_data_dir_that_cannot_be_created_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    run(async {
        let err = Engine::open(small_config(&file.join("sub")))
            .await
            .err()
            .expect("must fail");
        assert!(matches!(err, EngineError::DataDirNotWritable { .. }), "{err}");
        assert!(err.to_string().contains("plain-file"), "{err}");
    });
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        let err = Engine::open(small_config(dir.path())).await.err().expect("must fail");
        assert!(matches!(err, EngineError::Locked { .. }), "{err}");
        engine.close().await.unwrap();
    });
}

#[test]
fn a_segment_that_is_not_ours_is_refused_without_modification() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("seg-0000000001.log");
    let junk = b"this is somebody else's file, not a dynkv segment at all......".repeat(10);
    std::fs::write(&foreign, &junk).unwrap();
    run(async {
        let err = Engine::open(small_config(dir.path())).await.err().expect("must fail");
        assert!(matches!(err, EngineError::NotOurs { .. }), "{err}");
        assert!(err.to_string().contains("seg-0000000001.log"), "{err}");
    });
    assert_eq!(std::fs::read(&foreign).unwrap(), junk, "the foreign file is untouched");
}

#[test]
fn invalid_configuration_names_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.segment_size_max_bytes = 1000;
    run(async {
        let err = Engine::open(config).await.err().expect("must fail");
        assert!(err.to_string().contains("1000"), "{err}");
    });
}

#[test]
fn every_sync_mode_reads_its_own_writes_and_persists_after_close() {
    for sync in [
        SyncMode::Always,
        SyncMode::Never,
        SyncMode::Interval(std::time::Duration::from_millis(5)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        run(async {
            let mut config = small_config(dir.path());
            config.sync = sync;
            let engine = Engine::open(config.clone()).await.unwrap();
            for i in 0..2000u32 {
                engine.put(i % 8, &i.to_le_bytes(), &[i as u8; 100]).await.unwrap();
                // Reads hit the write buffer, the in-flight batch, or disk.
                let got = engine.get(i % 8, &i.to_le_bytes()).await.unwrap().unwrap();
                assert_eq!(&got.value[..], &[i as u8; 100], "{sync:?} key {i}");
            }
            engine.close().await.unwrap();
            let engine = Engine::open(config).await.unwrap();
            for i in 0..2000u32 {
                let got = engine.get(i % 8, &i.to_le_bytes()).await.unwrap().unwrap();
                assert_eq!(&got.value[..], &[i as u8; 100], "{sync:?} key {i} after reopen");
            }
            assert!(engine.stats().segments > 1, "small segments must have rolled");
            engine.close().await.unwrap();
        });
    }
}

#[test]
fn concurrent_puts_share_syncs_under_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let engine = std::rc::Rc::new(Engine::open(small_config(dir.path())).await.unwrap());
        let tasks: Vec<_> = (0..64u32)
            .map(|t| {
                let engine = engine.clone();
                glommio::spawn_local(async move {
                    for i in 0..50u32 {
                        engine.put(t, &i.to_le_bytes(), b"value").await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let stats = engine.stats();
        assert_eq!(stats.puts, 64 * 50);
        assert!(
            stats.syncs * 4 < stats.puts,
            "group commit must share syncs: {} syncs for {} puts",
            stats.syncs,
            stats.puts
        );
        engine.close().await.unwrap();
    });
}

#[test]
fn written_values_are_read_from_the_cache_and_a_delete_uncaches_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(dir.path());
    // No compaction: the overwrites below leave a segment a third dead,
    // and a compaction moving records during a read makes the disk-read
    // count below depend on timing.
    config.compaction_auto = false;
    let keys = |from: u32| (from..from + 24).map(|i| i.to_le_bytes());
    run(async {
        let engine = Engine::open(config.clone()).await.unwrap();
        for key in keys(0) {
            engine.put(1, &key, &[1; 1000]).await.unwrap();
        }
        for key in keys(0) {
            engine.put(1, &key, &[2; 1000]).await.unwrap();
        }
        // Push the writes out of the write buffer so that only the cache
        // can answer without the disk.
        for key in keys(1000) {
            engine.put(1, &key, &[3; 1000]).await.unwrap();
        }
        for key in keys(0) {
            assert_eq!(&engine.get(1, &key).await.unwrap().unwrap().value[..], &[2; 1000]);
        }
        assert_eq!(engine.stats().disk_reads, 0, "written values are cached");
        engine.close().await.unwrap();

        // A fresh open: nothing cached. Reads fill the cache, and the same
        // reads again cost no disk read.
        let engine = Engine::open(config).await.unwrap();
        assert_eq!(engine.stats().cache_bytes, 0);
        for _ in 0..2 {
            for key in keys(0) {
                assert_eq!(&engine.get(1, &key).await.unwrap().unwrap().value[..], &[2; 1000]);
            }
        }
        let stats = engine.stats();
        assert!(stats.disk_reads <= 24, "{stats:?}");
        assert!(stats.cache_bytes > 0, "{stats:?}");
        for key in keys(0) {
            engine.delete(1, &key, b"ctx").await.unwrap();
        }
        assert_eq!(
            engine.stats().cache_bytes,
            0,
            "deleted values leave the cache; tombstones do not enter it"
        );
        for key in keys(0) {
            assert!(engine.get(1, &key).await.unwrap().unwrap().tombstone);
        }
        engine.close().await.unwrap();
    });
}

#[test]
fn get_now_answers_from_memory_and_a_read_it_gives_up_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let config = EngineConfig {
            cache_capacity_bytes: 0,
            ..small_config(dir.path())
        };
        let engine = Engine::open(config).await.unwrap();
        engine.put(1, b"k", b"value").await.unwrap();
        // Still in the write buffer (or just written): memory may answer.
        assert!(matches!(engine.get_now(1, b"absent").unwrap(), GetNow::Answered(None)));
        engine.sync().await.unwrap();
        // Enough after it that its block is no longer the buffer's tail.
        for i in 0..32u32 {
            engine.put(1, &i.to_le_bytes(), &[7u8; 4000]).await.unwrap();
        }
        engine.sync().await.unwrap();
        let before = engine.stats();
        let GetNow::OnDisk(read) = engine.get_now(1, b"k").unwrap() else {
            panic!("no cache, written out: only the disk has it")
        };
        let gave_up = engine.stats();
        assert_eq!(
            (gave_up.gets, gave_up.cache_misses, gave_up.disk_reads),
            (before.gets, before.cache_misses, before.disk_reads),
            "a lookup given up counts nothing"
        );
        let got = engine.read_from_disk(1, b"k", read).await.unwrap().unwrap();
        assert_eq!(&got.value[..], b"value");
        let after = engine.stats();
        assert_eq!(
            (after.gets, after.cache_misses, after.disk_reads),
            (before.gets + 1, before.cache_misses + 1, before.disk_reads + 1)
        );
        engine.close().await.unwrap();
    });
}
