//! A full disk: typed errors, no panic, and nothing acknowledged is lost.

mod common;

use std::process::Command;

use common::{run, small_config};
use dynkv_engine::{Engine, EngineError};

/// Unmounts the test's tmpfs even if an assertion fails.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_a_typed_error_and_acknowledged_writes_survive() {
    let root = tempfile::tempdir().unwrap();
    let mnt = root.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1536k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        // CI runs as root and mounts; a developer without root sees why.
        eprintln!(
            "SKIPPED a_full_disk_is_a_typed_error_and_acknowledged_writes_survive: cannot mount tmpfs (needs root)"
        );
        return;
    }
    let _mount = Mount(mnt.clone());
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![0u8; 256 << 10]).unwrap();
    let data = mnt.join("data");
    let acked = run(async {
        let engine = Engine::open(small_config(&data)).await.unwrap();
        let mut acked = Vec::new();
        let mut error = None;
        for i in 0..10_000u32 {
            match engine.put(i % 4, &i.to_le_bytes(), &[i as u8; 1000]).await {
                Ok(_) => acked.push(i),
                Err(err) => {
                    error = Some(err);
                    break;
                }
            }
        }
        let err = error.expect("a 1.5 MiB disk fills up");
        assert!(matches!(err, EngineError::DiskFull { .. }), "typed error, got: {err}");
        assert!(err.to_string().contains("disk full"), "{err}");
        // Further writes are refused with the same typed error, not a panic.
        let again = engine.put(0, b"more", b"data").await.unwrap_err();
        assert!(matches!(again, EngineError::DiskFull { .. }), "{again}");
        let _ = engine.close().await;
        acked
    });
    assert!(acked.len() > 100, "some writes succeeded before the disk filled");
    std::fs::remove_file(&ballast).unwrap();
    run(async {
        let engine = Engine::open(small_config(&data)).await.unwrap();
        for &i in &acked {
            let got = engine.get(i % 4, &i.to_le_bytes()).await.unwrap();
            assert_eq!(
                got.map(|r| r.value.to_vec()),
                Some(vec![i as u8; 1000]),
                "acknowledged key {i} lost"
            );
        }
        engine.close().await.unwrap();
    });
}
