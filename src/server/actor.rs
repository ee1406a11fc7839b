//! The writer id ("actor") a shard stamps on the versions it coordinates.
//!
//! A version's dot `(actor, counter)` must never be issued twice, or
//! replicas that saw the first would drop the second as already known. The
//! counter continues from the shard's stored version of the key, so an
//! actor is safe exactly as long as its store keeps every version it wrote.
//! The actor id is therefore kept *inside* the shard's engine directory
//! (lost with it), and renewed at start when the previous run ended
//! uncleanly under a sync mode that may lose acknowledged local writes
//! (`interval_ms`, `never`): those writes may have reached other replicas.
//! A clean shutdown leaves a `CLEAN` marker, removed (durably) at start.
//!
//! A shard that gains a partition it does not fully hold must also renew
//! it; partitions only move with membership changes, which come with
//! partition handoff.

use std::path::Path;

use dynkv_ring::NodeId;

const ACTOR_FILE: &str = "ACTOR";
const CLEAN_FILE: &str = "CLEAN";

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A fresh random writer id (never 0).
pub(crate) fn random_id() -> Result<NodeId, String> {
    loop {
        let id = getrandom::u64().map_err(|e| format!("no randomness for a writer id: {e}"))?;
        if id != 0 {
            return Ok(NodeId(id));
        }
    }
}

/// The shard's actor id for this run. `dir` is the shard's engine
/// directory, which exists (the engine is open).
pub(crate) fn open(dir: &Path, sync_always: bool) -> Result<NodeId, String> {
    let path = dir.join(ACTOR_FILE);
    let clean_path = dir.join(CLEAN_FILE);
    let clean = clean_path.exists();
    if clean {
        std::fs::remove_file(&clean_path)
            .and_then(|()| fsync_dir(dir))
            .map_err(|e| format!("cannot remove {}: {e}", clean_path.display()))?;
    }
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            u64::from_str_radix(text.trim(), 16)
                .ok()
                .filter(|id| *id != 0)
                .ok_or_else(|| format!("{} does not hold an actor id", path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    match stored {
        Some(id) if clean || sync_always => Ok(NodeId(id)),
        previous => {
            let NodeId(id) = random_id()?;
            if let Some(previous) = previous {
                tracing::info!(
                    "previous run ended uncleanly without sync=always: versions are now written as actor \
                     {id:016x} (was {previous:016x}), so no write counter is reused"
                );
            }
            let tmp = dir.join(format!("{ACTOR_FILE}.tmp"));
            std::fs::write(&tmp, format!("{id:016x}\n"))
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .and_then(|()| fsync_dir(dir))
                .map_err(|e| format!("cannot store the actor id in {}: {e}", path.display()))?;
            Ok(NodeId(id))
        }
    }
}

/// Records a clean shutdown; call after the engine closed.
pub(crate) fn mark_clean(dir: &Path) -> Result<(), String> {
    let path = dir.join(CLEAN_FILE);
    std::fs::write(&path, b"")
        .and_then(|()| std::fs::File::open(&path)?.sync_all())
        .and_then(|()| fsync_dir(dir))
        .map_err(|e| format!("cannot mark {} clean: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_survives_clean_restarts_and_is_renewed_after_unclean_ones() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path(), false).unwrap();
        mark_clean(dir.path()).unwrap();
        assert_eq!(open(dir.path(), false).unwrap(), first, "clean restart keeps it");
        // No CLEAN marker now: an unclean end.
        let second = open(dir.path(), false).unwrap();
        assert_ne!(second, first, "unclean restart without sync=always renews it");
        assert_eq!(
            open(dir.path(), true).unwrap(),
            second,
            "sync=always never loses a write"
        );
    }
}
