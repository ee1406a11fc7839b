//! Engine configuration: where the data lives, how durable a put is, and the
//! limits that bound every key, value, buffer and cache.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{EngineError, Result};
use crate::record::RECORD_HEADER_BYTES;

/// Hard ceiling on key length: the record header stores it in a u16.
pub const KEY_LEN_CEILING_BYTES: usize = u16::MAX as usize;
/// Hard ceiling on value length, so a record always fits one write buffer.
pub const VALUE_LEN_CEILING_BYTES: usize = 64 << 20;
/// Segment offsets are stored as u32.
pub const SEGMENT_SIZE_CEILING_BYTES: u64 = u32::MAX as u64;

/// When a put is acknowledged relative to its data reaching stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Group commit: the put returns only after its data and an `fdatasync`
    /// covering it completed. Concurrent puts share one write and one sync.
    Always,
    /// The put returns once its record is in the write buffer. The log is
    /// written and synced at least once per interval, so a crash loses at
    /// most about one interval of acknowledged writes.
    Interval(Duration),
    /// The put returns once buffered. The log is written in the background
    /// and synced only when a segment is sealed or the store is closed.
    Never,
}

impl SyncMode {
    /// Parses `always`, `never`, or `interval_ms=N` / `N` milliseconds.
    pub fn parse(text: &str) -> Result<SyncMode> {
        let text = text.trim();
        match text {
            "always" => return Ok(SyncMode::Always),
            "never" => return Ok(SyncMode::Never),
            _ => {}
        }
        let millis = text
            .strip_prefix("interval_ms=")
            .or_else(|| text.strip_prefix("interval="))
            .unwrap_or(text)
            .trim_end_matches("ms");
        match millis.parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(SyncMode::Interval(Duration::from_millis(ms))),
            _ => Err(EngineError::Config(format!(
                "sync mode {text:?} is not one of: always, never, interval_ms=N (N > 0)"
            ))),
        }
    }
}

/// Everything an engine needs to open.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Directory holding this engine's segments and hint files.
    pub dir: PathBuf,
    pub sync: SyncMode,
    /// A segment is sealed and a new one started past this size.
    pub segment_size_max_bytes: u64,
    pub key_len_max_bytes: usize,
    pub value_len_max_bytes: usize,
    /// Bytes of values kept in the read cache.
    pub cache_capacity_bytes: u64,
    /// A sealed segment whose dead bytes reach this fraction of its size may
    /// be compacted. [`crate::Engine::compact`] rewrites every such segment;
    /// the background task waits until dead bytes are this fraction of the
    /// whole store's, then rewrites the deadest first (and any segment 80%
    /// dead at once), which bounds disk use the same way at far less copying.
    pub compaction_dead_fraction: f64,
    /// How often the background compactor looks for work.
    pub compaction_interval: Duration,
    /// Whether the background task compacts on its own. When false, only
    /// [`crate::Engine::compact`] compacts (hint files are still written).
    pub compaction_auto: bool,
    /// Glommio shares of the background (compaction, hint) task queue,
    /// against 1000 for foreground work.
    pub background_shares: usize,
}

impl EngineConfig {
    /// Defaults: `sync=always`, 64 MiB segments, 1 KiB keys, 1 MiB values,
    /// 64 MiB cache, compaction at 30% dead.
    pub fn new(dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            dir: dir.into(),
            sync: SyncMode::Always,
            segment_size_max_bytes: 64 << 20,
            key_len_max_bytes: 1024,
            value_len_max_bytes: 1 << 20,
            cache_capacity_bytes: 64 << 20,
            compaction_dead_fraction: 0.3,
            compaction_interval: Duration::from_secs(5),
            compaction_auto: true,
            background_shares: 50,
        }
    }

    /// Checks every bound without opening anything; `Engine::open` calls
    /// it first.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(EngineError::Config(msg));
        if self.key_len_max_bytes == 0 || self.key_len_max_bytes > KEY_LEN_CEILING_BYTES {
            return fail(format!(
                "key_len_max_bytes = {} must be in 1..={KEY_LEN_CEILING_BYTES}",
                self.key_len_max_bytes
            ));
        }
        if self.value_len_max_bytes > VALUE_LEN_CEILING_BYTES {
            return fail(format!(
                "value_len_max_bytes = {} must be at most {VALUE_LEN_CEILING_BYTES}",
                self.value_len_max_bytes
            ));
        }
        let record_max = (RECORD_HEADER_BYTES + self.key_len_max_bytes + self.value_len_max_bytes) as u64;
        if self.segment_size_max_bytes > SEGMENT_SIZE_CEILING_BYTES
            || self.segment_size_max_bytes < 4 * record_max.max(1 << 16)
        {
            return fail(format!(
                "segment_size_max_bytes = {} must be at least 4x the largest record ({record_max} bytes), \
                 at least 256 KiB, and at most {SEGMENT_SIZE_CEILING_BYTES}",
                self.segment_size_max_bytes
            ));
        }
        if !(0.05..=0.95).contains(&self.compaction_dead_fraction) {
            return fail(format!(
                "compaction_dead_fraction = {} must be in 0.05..=0.95",
                self.compaction_dead_fraction
            ));
        }
        if !(1..=1000).contains(&self.background_shares) {
            return fail(format!(
                "background_shares = {} must be in 1..=1000",
                self.background_shares
            ));
        }
        Ok(())
    }

    /// Largest record this configuration admits.
    pub(crate) fn record_max_bytes(&self) -> usize {
        RECORD_HEADER_BYTES + self.key_len_max_bytes + self.value_len_max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_mode_parses_documented_spellings() {
        assert_eq!(SyncMode::parse("always").unwrap(), SyncMode::Always);
        assert_eq!(SyncMode::parse("never").unwrap(), SyncMode::Never);
        assert_eq!(
            SyncMode::parse("interval_ms=5").unwrap(),
            SyncMode::Interval(Duration::from_millis(5))
        );
        assert_eq!(
            SyncMode::parse("20ms").unwrap(),
            SyncMode::Interval(Duration::from_millis(20))
        );
        let err = SyncMode::parse("sometimes").unwrap_err().to_string();
        assert!(err.contains("sometimes"), "{err}");
        assert!(SyncMode::parse("interval_ms=0").is_err());
    }

    #[test]
    fn defaults_validate_and_bad_limits_are_named() {
        EngineConfig::new("/tmp/x").validate().unwrap();
        let mut config = EngineConfig::new("/tmp/x");
        config.key_len_max_bytes = 70_000;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("70000"), "{err}");
    }
}
