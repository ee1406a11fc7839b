//! Typed errors of the storage engine. Each variant carries the value or path
//! that caused it, so the message a user sees names the problem.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The key is longer than the configured limit. Nothing was written.
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    /// The value is longer than the configured limit. Nothing was written.
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    /// The store was closed; reopen it to use it again.
    #[error("the store is closed")]
    Closed,
    /// An earlier write or sync failed, so the log's tail is not trusted.
    /// Writes are refused until the store is reopened; recovery restores
    /// every acknowledged write.
    #[error("the store refuses writes after an earlier I/O failure: {cause}")]
    Failed { cause: String },
    /// The data directory cannot be created or written.
    #[error("data directory {path} is not writable: {source}")]
    DataDirNotWritable { path: PathBuf, source: io::Error },
    /// Another process (or engine) holds the directory's lock.
    #[error("data directory {path} is in use by another dynkv process")]
    Locked { path: PathBuf },
    /// A file in the data directory is not a dynkv segment of a format this
    /// build understands. Nothing is modified.
    #[error("{path} is not a dynkv segment: {reason}")]
    NotOurs { path: PathBuf, reason: String },
    /// The disk is full. The failed write was not acknowledged.
    #[error("disk full while {op} {path}")]
    DiskFull { op: &'static str, path: PathBuf },
    /// A stored record failed its checksum when read.
    #[error("corrupt record in segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        segment: u32,
        offset: u64,
        reason: &'static str,
    },
    /// The configuration is invalid.
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// Any other I/O error, with the operation and path.
    #[error("I/O error while {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Shorthand used across the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// Wraps an I/O error, turning ENOSPC into [`EngineError::DiskFull`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        // glommio's error wrapper keeps the kind but not always the errno.
        if source.raw_os_error() == Some(libc_enospc()) || source.kind() == io::ErrorKind::StorageFull {
            return EngineError::DiskFull { op, path };
        }
        EngineError::Io { op, path, source }
    }

    /// A short write to a regular file means the filesystem ran out of
    /// space part-way (the kernel reports ENOSPC only on the next call):
    /// [`EngineError::DiskFull`] unless all `expected` bytes were written.
    pub(crate) fn check_written(
        op: &'static str,
        path: impl Into<PathBuf>,
        written: usize,
        expected: usize,
    ) -> Result<()> {
        if written == expected {
            return Ok(());
        }
        let short = io::Error::new(
            io::ErrorKind::StorageFull,
            format!("short write: {written} of {expected} bytes"),
        );
        Err(Self::io(op, path, short))
    }

    /// Converts a glommio error into an engine error.
    pub(crate) fn glommio(op: &'static str, path: impl Into<PathBuf>, err: glommio::GlommioError<()>) -> Self {
        Self::io(op, path, io::Error::from(err))
    }
}

/// ENOSPC on Linux, the only platform glommio runs on.
const fn libc_enospc() -> i32 {
    28
}
