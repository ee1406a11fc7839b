//! What the node checks about its host at start: kernel, cores, locked
//! memory and O_DIRECT on the data directory. It prints what it found and
//! refuses to start only when it truly cannot run.

use std::path::Path;

/// glommio needs this much locked memory per executor (its io_uring rings).
const MEMLOCK_PER_SHARD_BYTES: u64 = 512 << 10;

/// The facts found, for the startup line.
pub(crate) struct HostReport {
    pub(crate) kernel: String,
    pub(crate) cores: usize,
    /// `None` means unlimited.
    pub(crate) memlock_bytes: Option<u64>,
    pub(crate) o_direct: bool,
}

/// Whether `shards` executors fit the locked-memory limit. Root (or any
/// process with CAP_IPC_LOCK) is not bound by the limit.
pub(crate) fn memlock_enough(memlock_bytes: Option<u64>, shards: usize, privileged: bool) -> bool {
    privileged || memlock_bytes.is_none_or(|limit| limit >= MEMLOCK_PER_SHARD_BYTES * shards as u64)
}

fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(limit.rlim_cur)
}

/// Whether files in `dir` can be opened with O_DIRECT (tmpfs cannot; the
/// engine then runs through the page cache).
fn o_direct_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".o_direct_probe");
    let opened = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    opened
}

/// Inspects the host, creating `data_dir` if needed. Fails with a clear
/// message when the node cannot run.
pub(crate) fn inspect(data_dir: &Path, shards: usize) -> Result<HostReport, String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", data_dir.display()))?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memlock_bytes = memlock_limit();
    // SAFETY: geteuid has no preconditions.
    let privileged = unsafe { libc::geteuid() } == 0;
    if !memlock_enough(memlock_bytes, shards, privileged) {
        return Err(format!(
            "the locked-memory limit is {} KiB but {shards} shard(s) need {} KiB; raise it (ulimit -l, or \
             LimitMEMLOCK= in a systemd unit) or run fewer shards with --shards",
            memlock_bytes.unwrap_or(0) >> 10,
            (MEMLOCK_PER_SHARD_BYTES * shards as u64) >> 10
        ));
    }
    Ok(HostReport {
        kernel,
        cores,
        memlock_bytes,
        o_direct: o_direct_works(data_dir),
    })
}

impl HostReport {
    pub(crate) fn describe(&self, shards: usize) -> String {
        let memlock = self
            .memlock_bytes
            .map_or("unlimited".to_string(), |b| format!("{} KiB", b >> 10));
        let io = if self.o_direct {
            "O_DIRECT"
        } else {
            "buffered (no O_DIRECT on this filesystem)"
        };
        format!(
            "host: Linux {}, {} core(s), locked memory {memlock}; chose {shards} shard(s), {io} I/O",
            self.kernel, self.cores
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_memory_requirement_scales_with_shards() {
        assert!(memlock_enough(None, 64, false), "unlimited is enough");
        assert!(memlock_enough(Some(8 << 20), 16, false));
        assert!(!memlock_enough(Some(8 << 20), 17, false));
        assert!(memlock_enough(Some(0), 4, true), "root is not bound by the limit");
    }

    #[test]
    fn inspecting_a_writable_directory_succeeds_and_describes_it() {
        let dir = tempfile::tempdir().unwrap();
        let report = inspect(&dir.path().join("data"), 2).unwrap();
        let line = report.describe(2);
        assert!(line.contains("chose 2 shard(s)"), "{line}");
        assert!(report.cores >= 1);
    }
}
