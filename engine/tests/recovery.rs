//! Torn tails, mid-segment corruption, and hint files.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{run, segment_files, small_config};
use dynkv_engine::{Engine, EngineError};

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i:05}-").repeat(8).into_bytes()
}

/// Writes `n` keys, closes, and returns the newest segment file.
fn write_and_close(dir: &Path, n: u32) -> std::path::PathBuf {
    run(async {
        let engine = Engine::open(small_config(dir)).await.unwrap();
        for i in 0..n {
            engine.put(i % 4, &key(i), &value(i)).await.unwrap();
        }
        engine.close().await.unwrap();
    });
    segment_files(dir).pop().unwrap()
}

fn remove_hints(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "hint") {
            std::fs::remove_file(path).unwrap();
        }
    }
}

/// Appends part of a record to `segment`, as a crash mid-write leaves.
fn tear_tail(segment: &Path) {
    let mut file = std::fs::OpenOptions::new().append(true).open(segment).unwrap();
    file.write_all(b"DKVR\x05\x00\x00\x01partial record, torn by a crash")
        .unwrap();
}

/// Offset of the first byte of `needle` in `file`.
fn find(file: &Path, needle: &[u8]) -> u64 {
    let bytes = std::fs::read(file).unwrap();
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in file") as u64
}

#[test]
fn torn_tail_is_truncated_and_everything_before_it_survives() {
    let dir = tempfile::tempdir().unwrap();
    let newest = write_and_close(dir.path(), 300);
    remove_hints(dir.path());
    // A crash mid-write leaves part of a record after the last valid one.
    let valid_len = std::fs::metadata(&newest).unwrap().len();
    tear_tail(&newest);
    run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        let report = engine.recovery_report();
        let tail = report.torn_tail.expect("torn tail reported");
        assert!(
            tail.start <= valid_len,
            "tail starts at or before the garbage: {tail:?}"
        );
        assert!(report.corrupt.is_empty(), "{report:?}");
        for i in 0..300 {
            let got = engine.get(i % 4, &key(i)).await.unwrap().unwrap();
            assert_eq!(got.value, value(i), "key {i}");
        }
        engine.put(0, b"after", b"recovery").await.unwrap();
        engine.close().await.unwrap();
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        assert!(
            engine.recovery_report().torn_tail.is_none(),
            "the tail was cut for good"
        );
        assert_eq!(&engine.get(0, b"after").await.unwrap().unwrap().value[..], b"recovery");
        engine.close().await.unwrap();
    });
}

#[test]
fn mid_segment_corruption_is_reported_skipped_and_the_rest_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let newest = write_and_close(dir.path(), 300);
    remove_hints(dir.path());
    // Damage key 100's value in the middle of the segment.
    let victim = 100u32;
    let at = find(&newest, &value(victim)) + 3;
    let mut file = std::fs::OpenOptions::new().write(true).open(&newest).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(b"XX").unwrap();
    drop(file);
    // And a header in the middle, so the scanner must resynchronise.
    let victim2 = 200u32;
    let at2 = find(&newest, &key(victim2)) - 20;
    let mut file = std::fs::OpenOptions::new().write(true).open(&newest).unwrap();
    file.seek(SeekFrom::Start(at2)).unwrap();
    file.write_all(&[0xff; 4]).unwrap();
    drop(file);
    run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        let report = engine.recovery_report();
        assert_eq!(report.corrupt.len(), 2, "two damaged records reported: {report:?}");
        assert!(report.corrupt.iter().any(|r| r.start <= at && at < r.end), "{report:?}");
        assert!(
            report.corrupt.iter().any(|r| r.start <= at2 && at2 < r.end),
            "{report:?}"
        );
        assert!(report.torn_tail.is_none(), "mid-segment damage is not a torn tail");
        for i in 0..300 {
            let got = engine.get(i % 4, &key(i)).await.unwrap();
            if i == victim || i == victim2 {
                assert!(got.is_none(), "damaged key {i} is skipped, not returned wrong");
            } else {
                assert_eq!(got.unwrap().value, value(i), "key {i}");
            }
        }
        engine.close().await.unwrap();
    });
}

#[test]
fn a_record_damaged_after_open_is_a_corrupt_error_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let newest = write_and_close(dir.path(), 50);
    // The hint stays, so the keydir trusts the location; the read must not.
    let at = find(&newest, &value(7)) + 1;
    let mut file = std::fs::OpenOptions::new().write(true).open(&newest).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(b"Z").unwrap();
    drop(file);
    run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        assert_eq!(engine.recovery_report().segments_scanned, 0, "hints were used");
        let err = engine.get(7 % 4, &key(7)).await.unwrap_err();
        assert!(matches!(err, EngineError::Corrupt { .. }), "{err}");
        assert_eq!(engine.get(8 % 4, &key(8)).await.unwrap().unwrap().value, value(8));
        engine.close().await.unwrap();
    });
}

#[test]
fn reopening_with_hint_files_reads_no_values() {
    let dir = tempfile::tempdir().unwrap();
    write_and_close(dir.path(), 2000);
    // Overwrite every value byte on disk. If recovery read values it would
    // see checksum failures; with hints it must not notice.
    for segment in segment_files(dir.path()) {
        let mut bytes = std::fs::read(&segment).unwrap();
        for i in 0..2000 {
            let v = value(i);
            if let Some(pos) = bytes.windows(v.len()).position(|w| w == v) {
                bytes[pos..pos + v.len()].fill(b'#');
            }
        }
        std::fs::write(&segment, bytes).unwrap();
    }
    run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        let report = engine.recovery_report();
        assert_eq!(report.segments_scanned, 0, "{report:?}");
        assert_eq!(report.segments_from_hints, report.segments, "{report:?}");
        assert!(report.corrupt.is_empty());
        assert_eq!(report.keys, 2000);
        // The damage is real: reads catch it.
        assert!(engine.get(0, &key(0)).await.is_err());
        engine.close().await.unwrap();
    });
}

#[test]
fn a_hint_larger_than_its_write_chunk_reopens_every_key() {
    // 40,000 entries of 41 bytes: the hint streams out in more than one
    // 1 MiB chunk, and its header is written last.
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(dir.path());
    config.segment_size_max_bytes = 16 << 20;
    config.sync = dynkv_engine::SyncMode::Never;
    let n = 40_000;
    run(async {
        let engine = Engine::open(config.clone()).await.unwrap();
        for i in 0..n {
            engine.put(i % 4, &key(i), &i.to_le_bytes()).await.unwrap();
        }
        engine.close().await.unwrap();
    });
    let hints: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hint"))
        .collect();
    assert_eq!(hints.len(), 1, "one segment, one hint: {hints:?}");
    let payload_bytes = u64::from(n) * (32 + 9);
    let size = std::fs::metadata(&hints[0]).unwrap().len();
    assert!(
        size >= 64 + payload_bytes && size < 64 + payload_bytes + 4096,
        "header, payload and padding to one block: {size}"
    );
    run(async {
        let engine = Engine::open(config).await.unwrap();
        let report = engine.recovery_report();
        assert_eq!(
            (report.segments_scanned, report.segments_from_hints),
            (0, 1),
            "{report:?}"
        );
        assert_eq!(report.keys, u64::from(n));
        for i in (0..n).step_by(997).chain([n - 1]) {
            let got = engine.get(i % 4, &key(i)).await.unwrap().unwrap();
            assert_eq!(got.value[..], i.to_le_bytes());
        }
        engine.close().await.unwrap();
    });
}

#[test]
fn a_damaged_hint_file_falls_back_to_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let newest = write_and_close(dir.path(), 100);
    let hint = newest.with_extension("hint");
    let mut bytes = std::fs::read(&hint).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&hint, bytes).unwrap();
    run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        assert!(engine.recovery_report().segments_scanned >= 1);
        for i in 0..100 {
            assert_eq!(engine.get(i % 4, &key(i)).await.unwrap().unwrap().value, value(i));
        }
        engine.close().await.unwrap();
    });
}

#[test]
fn a_torn_tail_before_a_segment_made_ahead_of_time_is_still_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    // Enough to roll the 256 KiB segments a few times; the engine then
    // keeps the next segment made ahead of time, holding only its header.
    let prepared = run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        for i in 0..3000 {
            engine.put(i % 4, &key(i), &value(i)).await.unwrap();
        }
        let active = engine.stats().segments;
        let mut prepared = None;
        for _ in 0..200 {
            let files = segment_files(dir.path());
            if files.len() > active as usize {
                let last = files.last().unwrap().clone();
                prepared = Some((last.clone(), std::fs::read(&last).unwrap()));
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        engine.close().await.unwrap();
        prepared.expect("a segment made ahead of time")
    });
    let (path, bytes) = prepared;
    assert!(!path.exists(), "close deletes the unused segment");
    // A crash leaves it, and part of a record after the active segment's
    // last valid one.
    let active = segment_files(dir.path()).pop().unwrap();
    std::fs::write(&path, &bytes).unwrap();
    remove_hints(dir.path());
    tear_tail(&active);
    run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        let report = engine.recovery_report();
        assert!(report.torn_tail.is_some(), "{report:?}");
        assert!(report.corrupt.is_empty(), "not damage mid-log: {report:?}");
        for i in 0..3000 {
            let got = engine.get(i % 4, &key(i)).await.unwrap().unwrap();
            assert_eq!(got.value, value(i), "key {i}");
        }
        engine.close().await.unwrap();
    });
    assert!(!path.exists(), "the empty segment was removed at open");
}

#[test]
fn a_segment_cut_short_at_creation_is_removed_and_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let newest = write_and_close(dir.path(), 50);
    // What a crash between creating the next segment and syncing its header
    // leaves: an empty file, or one block of zeros.
    let id: u32 = newest.file_stem().unwrap().to_str().unwrap()[4..].parse().unwrap();
    for (n, content) in [(1, vec![]), (2, vec![0u8; 4096])] {
        let blank = dir.path().join(format!("seg-{:010}.log", id + n));
        std::fs::write(&blank, content).unwrap();
        run(async {
            let engine = Engine::open(small_config(dir.path())).await.unwrap();
            for i in 0..50 {
                assert_eq!(engine.get(i % 4, &key(i)).await.unwrap().unwrap().value, value(i));
            }
            engine.close().await.unwrap();
        });
        assert!(!blank.exists(), "the unfinished segment was removed");
    }
}

#[test]
fn the_caller_mark_survives_reopening_from_hints_and_from_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let marked_of = |engine: &Engine| -> Vec<(Vec<u8>, bool)> {
        let mut keys: Vec<(Vec<u8>, bool)> = (0..4)
            .flat_map(|p| engine.partition_keys(p))
            .map(|k| (k.key.to_vec(), k.marked))
            .collect();
        keys.sort();
        keys
    };
    let written = run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        for i in 0..600 {
            let staged = engine
                .put_staged_marked(i % 4, &key(i), &value(i), i % 3 == 0)
                .await
                .unwrap();
            engine.wait_staged(staged).await.unwrap();
        }
        let keys = marked_of(&engine);
        let marked: usize = (0..4).map(|p| engine.marked_keys(p).len()).sum();
        assert_eq!(marked, 200, "marked_keys lists exactly the marked values");
        engine.close().await.unwrap();
        keys
    });
    assert_eq!(written.iter().filter(|(_, m)| *m).count(), 200);
    for from_scan in [false, true] {
        if from_scan {
            remove_hints(dir.path());
        }
        run(async {
            let engine = Engine::open(small_config(dir.path())).await.unwrap();
            assert_eq!(marked_of(&engine), written, "from a scan: {from_scan}");
            engine.close().await.unwrap();
        });
    }
}

/// Everything reopening rebuilds from hints or scans: each key's metadata,
/// its value, and each partition's Merkle root.
/// One line per key (and per partition's root), so a difference prints
/// short.
async fn rebuilt_state(engine: &Engine) -> Vec<String> {
    use std::hash::{Hash, Hasher};
    let mut state = Vec::new();
    for p in engine.partition_ids() {
        for k in engine.partition_keys(p) {
            let value = engine.get(p, &k.key).await.unwrap().map(|r| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                r.value.hash(&mut h);
                (r.value.len(), h.finish())
            });
            let key = String::from_utf8_lossy(&k.key);
            state.push(format!(
                "{p} {key} seq {} tombstone {} marked {} object {:x} value {value:?}",
                k.seq, k.tombstone, k.marked, k.object_hash
            ));
        }
        state.push(format!("{p} merkle root {:x}", engine.merkle_tree(p).root()));
    }
    state.sort();
    state
}

#[test]
fn hints_built_while_appending_rebuild_what_a_scan_rebuilds() {
    // Puts, overwrites, deletes and compaction copies over many small
    // segments: every sealed segment's hint is streamed out by the
    // background task as records are appended, the active one's at close.
    let dir = tempfile::tempdir().unwrap();
    let seed = common::seed("hints_built_while_appending_rebuild_what_a_scan_rebuilds");
    let mut config = small_config(dir.path());
    config.sync = dynkv_engine::SyncMode::Never;
    // Compaction only when asked, so that segments remain to be reopened.
    config.compaction_auto = false;
    run(async {
        let engine = Engine::open(config.clone()).await.unwrap();
        let mut rng = common::Rng(seed);
        for op in 0..8000u32 {
            let i = rng.below(400) as u32;
            let p = i % 4;
            if rng.below(10) == 0 {
                engine.delete(p, &key(i), b"ctx").await.unwrap();
            } else {
                let len = 50 + rng.below(700) as usize;
                let staged = engine
                    .put_staged_marked(p, &key(i), &value(op).repeat(8)[..len], op % 5 == 0)
                    .await
                    .unwrap();
                engine.wait_staged(staged).await.unwrap();
            }
            if op == 1999 || op == 3999 {
                engine.compact().await.unwrap();
            }
            if op % 64 == 0 {
                // Let the background task stream hints and compact.
                glommio::timer::sleep(std::time::Duration::from_micros(200)).await;
            }
        }
        let stats = engine.stats();
        assert!(stats.hints_streamed > 0, "{stats:?}");
        assert_eq!(
            stats.hints_scanned, 0,
            "no segment was read back for its hint: {stats:?}"
        );
        engine.close().await.unwrap();
    });
    let from_hints = run(async {
        let engine = Engine::open(config.clone()).await.unwrap();
        let report = engine.recovery_report();
        assert!(report.segments > 5, "{report:?}");
        assert_eq!(
            (report.segments_scanned, report.segments_from_hints),
            (0, report.segments),
            "{report:?}"
        );
        let state = rebuilt_state(&engine).await;
        engine.close().await.unwrap();
        state
    });
    let hint_files = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "hint"))
        .count();
    assert_eq!(
        hint_files,
        segment_files(dir.path()).len(),
        "no hint outlives its segment"
    );
    remove_hints(dir.path());
    let from_scan = run(async {
        let engine = Engine::open(config).await.unwrap();
        assert_eq!(engine.recovery_report().segments_from_hints, 0);
        let state = rebuilt_state(&engine).await;
        engine.close().await.unwrap();
        state
    });
    let differ: Vec<_> = from_hints
        .iter()
        .zip(&from_scan)
        .filter(|(a, b)| a != b)
        .take(3)
        .collect();
    assert!(differ.is_empty(), "from hints vs from a scan: {differ:?}");
    assert_eq!(from_hints.len(), from_scan.len());
}

#[test]
fn a_hint_whose_segment_is_gone_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    write_and_close(dir.path(), 300);
    let hint = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "hint"))
        .expect("a hint was written");
    // What a crash between compaction deleting a segment and its hint
    // would leave.
    let orphan = dir.path().join("seg-0000099999.hint");
    std::fs::copy(&hint, &orphan).unwrap();
    run(async {
        let engine = Engine::open(small_config(dir.path())).await.unwrap();
        assert_eq!(engine.recovery_report().keys, 300);
        engine.close().await.unwrap();
    });
    assert!(!orphan.exists(), "the orphan hint was removed");
    assert!(hint.exists(), "hints of existing segments stay");
}
