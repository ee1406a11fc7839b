//! A node's permanent id, kept in its data directory.
//!
//! The id is drawn at random when the data directory is first used and
//! never changes after; versions name their writes by it, so a node that
//! lost its data must come back under a new id (a new directory), never
//! reuse the old one. A configured `node_id` must match the stored one.

use std::path::Path;

use dynkv_ring::NodeId;

const NODE_ID_FILE: &str = "NODE_ID";

/// Reads the node id stored in `data_dir`, or stores a new one (`configured`
/// if non-zero, else random).
pub(crate) fn load_or_create(data_dir: &Path, configured: u64) -> Result<NodeId, String> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored = u64::from_str_radix(text.trim(), 16)
                .ok()
                .filter(|id| *id != 0)
                .ok_or_else(|| format!("{} does not hold a node id: {:?}", path.display(), text.trim()))?;
            if configured != 0 && configured != stored {
                return Err(format!(
                    "node_id = {configured:016x} but {} belongs to node {stored:016x}; \
                     a node's id never changes (use a new data directory for a new node)",
                    data_dir.display()
                ));
            }
            Ok(NodeId(stored))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let id = if configured != 0 { configured } else { random_id()? };
            std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
            let tmp = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
            std::fs::write(&tmp, format!("{id:016x}\n"))
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| format!("cannot store the node id in {}: {e}", path.display()))?;
            Ok(NodeId(id))
        }
        Err(err) => Err(format!("cannot read {}: {err}", path.display())),
    }
}

fn random_id() -> Result<u64, String> {
    loop {
        let id = getrandom::u64().map_err(|e| format!("no randomness for a node id: {e}"))?;
        if id != 0 {
            return Ok(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_created_once_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), 0).unwrap();
        assert_eq!(load_or_create(dir.path(), 0).unwrap(), first);
        assert_eq!(load_or_create(dir.path(), first.0).unwrap(), first);
        let err = load_or_create(dir.path(), first.0 ^ 1).unwrap_err();
        assert!(err.contains("never changes"), "{err}");
        let fixed = tempfile::tempdir().unwrap();
        assert_eq!(load_or_create(fixed.path(), 42).unwrap(), NodeId(42));
    }
}
