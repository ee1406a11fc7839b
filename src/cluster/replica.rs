//! What a replica does with the versions it is sent. Pure functions over the
//! stored clock; the caller reads and writes the store.

use dynkv_ring::NodeId;

use crate::version::{Clock, Sibling, VersionError, VersionLimits, VersionVector};

/// Which writes a new version supersedes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteContext {
    /// No context: concurrent with every existing version (native clients
    /// that write without reading first). Existing values become siblings.
    Blind,
    /// The context of a client's earlier read: supersedes what it saw.
    Given(VersionVector),
    /// Supersedes whatever the coordinating replica holds. RESP's SET uses
    /// it, since Redis clients expect a write to replace the value; versions
    /// the coordinator has not seen still survive as siblings.
    Local,
}

/// The coordinator's step: the new version of `key` made at `node` from
/// what it holds locally (`local`, empty if nothing). The caller stores the
/// result and replicates it.
pub fn coordinate(
    local: &Clock,
    context: &WriteContext,
    node: NodeId,
    sibling: Sibling,
    limits: VersionLimits,
) -> Result<Clock, VersionError> {
    match context {
        WriteContext::Blind => local.update(None, node, sibling, limits),
        WriteContext::Given(vv) => local.update(Some(vv), node, sibling, limits),
        WriteContext::Local => local.update(Some(&local.context()), node, sibling, limits),
    }
}

/// A replica's step for an incoming version: the merge to store, or `None`
/// if `local` already knows everything `incoming` does (nothing to write).
pub fn absorb(local: &Clock, incoming: &Clock) -> Option<Clock> {
    let merged = local.sync(incoming);
    (merged != *local).then_some(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Sibling {
        Sibling {
            timestamp_ms: 0,
            value: Some(bytes::Bytes::copy_from_slice(v.as_bytes())),
        }
    }

    #[test]
    fn absorbing_known_versions_writes_nothing() {
        let limits = VersionLimits::default();
        let a = coordinate(&Clock::new(), &WriteContext::Blind, NodeId(1), s("a"), limits).unwrap();
        assert_eq!(absorb(&Clock::new(), &a), Some(a.clone()));
        assert_eq!(absorb(&a, &a), None);
        let b = coordinate(&a, &WriteContext::Local, NodeId(1), s("b"), limits).unwrap();
        assert_eq!(absorb(&b, &a), None, "b supersedes a");
        assert_eq!(absorb(&a, &b), Some(b.clone()));
        assert_eq!(b.sibling_count(), 1);
    }
}
