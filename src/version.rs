//! Versions: dotted version vector sets (DVVSet; Preguiça, Baquero et al.,
//! as in Riak 2.x), keyed by the node that coordinated each write.
//!
//! A [`Clock`] is everything a replica knows about one key: for each writer
//! that ever coordinated a write to it, a counter (how many writes that
//! writer made) and the values of the newest of those writes that nothing
//! has superseded yet. A write is identified by its *dot* `(writer,
//! counter)`. A writer is a store that keeps every dot it made, as Riak's
//! vnodes are: the server gives each shard a writer id, renewed whenever
//! the shard's store may have lost dots it made (see `src/server/actor.rs`),
//! since a reused dot would make replicas drop a new write as already seen.
//! The values still held are the siblings; more than one means writes were
//! truly concurrent.
//!
//! Why node ids and not client ids: the number of entries is bounded by the
//! nodes that coordinate writes, not by the clients, so clocks stay small
//! however many clients write, and one client doing read-modify-write in a
//! loop never creates a sibling (its context always covers what it replaces).
//!
//! A [`VersionVector`] (the clock's join) is what a client gets as the
//! *context* of a read and hands back with its next write.
//!
//! Everything here is pure. Clocks have one canonical form (entries sorted
//! by node, values newest first), so replicas that know the same writes hold
//! byte-identical objects, and Merkle trees never see a difference that isn't
//! there.

use bytes::Bytes;
use dynkv_ring::NodeId;

/// One value a write stored: a client's bytes, or a deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    /// Coordinator's wall clock at the write. Causality never depends on it;
    /// only RESP's last-writer-wins rule for reducing siblings reads it.
    pub timestamp_ms: u64,
    /// The value, or `None` for a tombstone (a delete). `Bytes`, so that a
    /// value decoded from a stored object is a slice of it, not a copy, and
    /// merging clocks shares values instead of copying them.
    pub value: Option<Bytes>,
}

impl Sibling {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// Bounds on what a clock may hold, checked when a write is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionLimits {
    /// Most siblings a write may leave. Past it the client must read and
    /// write back with the context, which resolves them.
    pub siblings_max: usize,
    /// Most nodes a context (and a clock) may name.
    pub context_nodes_max: usize,
}

impl Default for VersionLimits {
    fn default() -> Self {
        VersionLimits {
            siblings_max: 32,
            context_nodes_max: 64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("the write would leave {siblings} siblings (limit {limit}); read the key and write back with its context to resolve them")]
    TooManySiblings { siblings: usize, limit: usize },
    #[error("the context names {nodes} nodes (limit {limit})")]
    ContextTooLarge { nodes: usize, limit: usize },
    #[error("the write counter of {node} is exhausted for this key")]
    CounterExhausted { node: NodeId },
}

/// How far a node's writes to a key have been seen: `(node, counter)`
/// pairs sorted by node, each counter at least 1.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionVector {
    entries: Vec<(NodeId, u64)>,
}

impl VersionVector {
    /// Builds a vector from pairs in any order; a node named twice keeps its
    /// larger counter and zero counters are dropped.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (NodeId, u64)>) -> VersionVector {
        let mut entries: Vec<(NodeId, u64)> = pairs.into_iter().filter(|(_, c)| *c > 0).collect();
        entries.sort_unstable();
        // Sorted ascending, so the last of equal nodes has the largest counter.
        entries.reverse();
        entries.dedup_by_key(|(node, _)| *node);
        entries.reverse();
        VersionVector { entries }
    }

    pub fn entries(&self) -> &[(NodeId, u64)] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The counter for `node`, 0 if absent.
    pub fn get(&self, node: NodeId) -> u64 {
        self.entries
            .binary_search_by_key(&node, |(n, _)| *n)
            .map_or(0, |i| self.entries[i].1)
    }

    /// True if this vector has seen everything `other` has.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|(node, counter)| self.get(*node) >= *counter)
    }

    /// True if the dot `(node, counter)` is covered.
    pub fn contains_dot(&self, node: NodeId, counter: u64) -> bool {
        self.get(node) >= counter
    }
}

/// One node's entry in a clock.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    node: NodeId,
    /// Writes this node has coordinated for the key (its newest dot).
    counter: u64,
    /// Values of dots `counter, counter - 1, …` still alive, newest first.
    values: Vec<Sibling>,
}

impl Entry {
    fn check(&self) {
        assert!(self.counter >= 1, "entry for {} has counter 0", self.node);
        assert!(
            self.values.len() as u64 <= self.counter,
            "entry for {} holds {} values for counter {}",
            self.node,
            self.values.len(),
            self.counter
        );
    }
}

/// A key's causal history and live values (a DVVSet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    entries: Vec<Entry>,
}

impl Clock {
    /// The empty clock: no writes seen.
    pub fn new() -> Clock {
        Clock::default()
    }

    /// True if no write was ever seen.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The context: what this clock has seen.
    pub fn context(&self) -> VersionVector {
        VersionVector {
            entries: self.entries.iter().map(|e| (e.node, e.counter)).collect(),
        }
    }

    /// Live values in canonical order (by node, newest first).
    pub fn siblings(&self) -> impl Iterator<Item = &Sibling> + '_ {
        self.entries.iter().flat_map(|e| e.values.iter())
    }

    /// Live values with their dots.
    pub fn dotted_siblings(&self) -> impl Iterator<Item = (NodeId, u64, &Sibling)> + '_ {
        self.entries.iter().flat_map(|e| {
            e.values
                .iter()
                .enumerate()
                .map(move |(age, s)| (e.node, e.counter - age as u64, s))
        })
    }

    pub fn sibling_count(&self) -> usize {
        self.entries.iter().map(|e| e.values.len()).sum()
    }

    /// True if the clock fits the object codec's bounds (merges of many
    /// diverged replicas can outgrow what one write may make).
    pub fn fits(&self, nodes_max: usize, siblings_max: usize) -> bool {
        self.entries.len() <= nodes_max && self.sibling_count() <= siblings_max
    }

    /// Number of nodes named.
    pub fn node_count(&self) -> usize {
        self.entries.len()
    }

    /// True if every live value is a tombstone (or there is none): the key
    /// reads as absent.
    pub fn is_deleted(&self) -> bool {
        self.siblings().all(Sibling::is_tombstone)
    }

    /// The rule RESP uses to reduce siblings to one value, since Redis
    /// clients cannot handle several: the sibling with the latest
    /// coordinator timestamp, ties broken by the larger dot (node id, then
    /// counter). If a tombstone wins, the key reads as absent. Every replica
    /// applies the same rule to the same siblings, so all agree.
    pub fn last_writer(&self) -> Option<&Sibling> {
        self.dotted_siblings()
            .max_by_key(|(node, counter, s)| (s.timestamp_ms, *node, *counter))
            .map(|(_, _, s)| s)
    }

    /// True if this clock has seen every write `other` has.
    pub fn descends(&self, other: &Clock) -> bool {
        self.context().descends(&other.context())
    }

    /// A new write made at `node` by a client that had read `context`
    /// (`None` for a blind write, concurrent with everything). `self` is the
    /// coordinating replica's current clock for the key. Values the context
    /// covers are superseded; the rest stay as siblings of the new value.
    pub fn update(
        &self,
        context: Option<&VersionVector>,
        node: NodeId,
        sibling: Sibling,
        limits: VersionLimits,
    ) -> Result<Clock, VersionError> {
        let empty = VersionVector::default();
        let context = context.unwrap_or(&empty);
        if context.entries.len() > limits.context_nodes_max {
            return Err(VersionError::ContextTooLarge {
                nodes: context.entries.len(),
                limit: limits.context_nodes_max,
            });
        }
        let mut entries = Vec::with_capacity(self.entries.len() + 1);
        let mut local = self.entries.iter().peekable();
        let mut seen = context.entries.iter().peekable();
        // Merge the local entries with the context, both sorted by node.
        loop {
            let next = match (local.peek(), seen.peek()) {
                (None, None) => break,
                (Some(e), Some((n, _))) if e.node < *n => Some(Ordering3::Local),
                (Some(e), Some((n, _))) if e.node > *n => Some(Ordering3::Context),
                (Some(_), Some(_)) => Some(Ordering3::Both),
                (Some(_), None) => Some(Ordering3::Local),
                (None, Some(_)) => Some(Ordering3::Context),
            };
            match next.expect("one side is non-empty") {
                Ordering3::Local => entries.push(local.next().expect("peeked").clone()),
                Ordering3::Context => {
                    let (node, counter) = *seen.next().expect("peeked");
                    entries.push(Entry {
                        node,
                        counter,
                        values: Vec::new(),
                    });
                }
                Ordering3::Both => {
                    let e = local.next().expect("peeked");
                    let (_, covered) = *seen.next().expect("peeked");
                    // Values of dots above `covered` were not seen by the
                    // client, so they survive.
                    let unseen = e.counter.saturating_sub(covered).min(e.values.len() as u64) as usize;
                    entries.push(Entry {
                        node: e.node,
                        counter: e.counter.max(covered),
                        values: e.values[..unseen].to_vec(),
                    });
                }
            }
        }
        // The new event: the node's counter moves past anything seen, so a
        // dot is never reused even if this replica lost data. A first dot
        // of this writer on the key starts at the write's time in µs (see
        // below); so does one whose entry comes only from the client's
        // context: this replica no longer holds the writer's history (it
        // reaped a delete the context predates), and a replica that has
        // not reaped yet may hold a dot just past the context's.
        let floor = sibling.timestamp_ms.saturating_mul(1000).max(1);
        let held_locally = self.entries.iter().any(|e| e.node == node);
        match entries.binary_search_by_key(&node, |e| e.node) {
            Ok(i) => {
                let next = entries[i]
                    .counter
                    .checked_add(1)
                    .ok_or(VersionError::CounterExhausted { node })?;
                entries[i].counter = if held_locally { next } else { next.max(floor) };
                entries[i].values.insert(0, sibling);
            }
            // A writer's first dot on a key starts at the write's time in
            // microseconds, not at 1. The key's history may have been
            // reaped (a tombstone every replica held was removed), and a
            // replica that has not reaped yet still holds the old dots: a
            // counter restarting at 1 could equal one of them, and the new
            // write would be taken for known and lost (Riak's kv679). A
            // writer's counter on a key advances by one per write, far
            // slower than a microsecond clock, so a new history starts
            // above any old one.
            Err(i) => entries.insert(
                i,
                Entry {
                    node,
                    counter: floor,
                    values: vec![sibling],
                },
            ),
        }
        let clock = Clock { entries };
        clock.check();
        let siblings = clock.sibling_count();
        if siblings > limits.siblings_max {
            return Err(VersionError::TooManySiblings {
                siblings,
                limit: limits.siblings_max,
            });
        }
        if clock.entries.len() > limits.context_nodes_max {
            return Err(VersionError::ContextTooLarge {
                nodes: clock.entries.len(),
                limit: limits.context_nodes_max,
            });
        }
        Ok(clock)
    }

    /// Merges what two replicas know: a value survives if either side holds
    /// it and the other has either not seen its dot or holds it too.
    /// Commutative, associative and idempotent.
    pub fn sync(&self, other: &Clock) -> Clock {
        let mut entries = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let (mut a, mut b) = (self.entries.iter().peekable(), other.entries.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(x), Some(y)) if x.node == y.node => {
                    entries.push(merge_entry(x, y));
                    a.next();
                    b.next();
                }
                (Some(x), Some(y)) if x.node < y.node => entries.push(a.next().expect("peeked").clone()),
                (Some(_), Some(_)) | (None, Some(_)) => entries.push(b.next().expect("peeked").clone()),
                (Some(_), None) => entries.push(a.next().expect("peeked").clone()),
            }
        }
        let clock = Clock { entries };
        clock.check();
        clock
    }

    /// Asserts the canonical form: entries strictly sorted by node, counters
    /// positive, no more values than dots.
    pub fn check(&self) {
        for pair in self.entries.windows(2) {
            assert!(pair[0].node < pair[1].node, "clock entries out of order");
        }
        for e in &self.entries {
            e.check();
        }
    }

    /// Builds a clock from raw parts, checking the canonical form. For the
    /// object codec.
    pub(crate) fn from_parts(parts: Vec<(NodeId, u64, Vec<Sibling>)>) -> Result<Clock, &'static str> {
        for pair in parts.windows(2) {
            if pair[0].0 >= pair[1].0 {
                return Err("clock entries not strictly sorted by node");
            }
        }
        if parts.iter().any(|(_, c, v)| *c == 0 || v.len() as u64 > *c) {
            return Err("clock entry with a zero counter or more values than writes");
        }
        Ok(Clock {
            entries: parts
                .into_iter()
                .map(|(node, counter, values)| Entry { node, counter, values })
                .collect(),
        })
    }

    /// Raw parts in canonical order: `(node, counter, values newest first)`.
    pub(crate) fn parts(&self) -> impl Iterator<Item = (NodeId, u64, &[Sibling])> + '_ {
        self.entries.iter().map(|e| (e.node, e.counter, e.values.as_slice()))
    }
}

/// Which side of a sorted merge comes next.
enum Ordering3 {
    Local,
    Context,
    Both,
}

/// Merges two entries for the same node. With `x.counter >= y.counter`, x
/// holds the newest dots; of those, a value seen by y survives only if y
/// still holds it too.
fn merge_entry(x: &Entry, y: &Entry) -> Entry {
    let (hi, lo) = if x.counter >= y.counter { (x, y) } else { (y, x) };
    let keep = (hi.counter - lo.counter + lo.values.len() as u64).min(hi.values.len() as u64) as usize;
    Entry {
        node: hi.node,
        counter: hi.counter,
        values: hi.values[..keep].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Sibling {
        Sibling {
            timestamp_ms: 0,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
        }
    }

    fn values(c: &Clock) -> Vec<String> {
        c.siblings()
            .map(|s| String::from_utf8(s.value.as_deref().unwrap_or_default().to_vec()).unwrap())
            .collect()
    }

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    #[test]
    fn read_modify_write_never_makes_siblings() {
        let limits = VersionLimits::default();
        let mut clock = Clock::new();
        for i in 0..100 {
            let ctx = clock.context();
            clock = clock.update(Some(&ctx), A, s(&i.to_string()), limits).unwrap();
            assert_eq!(values(&clock), vec![i.to_string()]);
        }
    }

    #[test]
    fn blind_writes_are_concurrent_and_a_context_resolves_them() {
        let limits = VersionLimits::default();
        let one = Clock::new().update(None, A, s("one"), limits).unwrap();
        let two = one.update(None, A, s("two"), limits).unwrap();
        assert_eq!(values(&two), vec!["two", "one"]);
        // The same at another coordinator, then merged.
        let three = Clock::new().update(None, B, s("three"), limits).unwrap();
        let merged = two.sync(&three);
        assert_eq!(values(&merged), vec!["two", "one", "three"]);
        let resolved = merged.update(Some(&merged.context()), B, s("final"), limits).unwrap();
        assert_eq!(values(&resolved), vec!["final"]);
        // A replica that only had `two` learns that everything was superseded.
        assert_eq!(values(&two.sync(&resolved)), vec!["final"]);
    }

    #[test]
    fn a_stale_context_keeps_unseen_values() {
        let limits = VersionLimits::default();
        let v1 = Clock::new().update(None, A, s("v1"), limits).unwrap();
        let ctx1 = v1.context();
        let v2 = v1.update(Some(&ctx1), A, s("v2"), limits).unwrap();
        // A second client also read v1 and writes: concurrent with v2.
        let v3 = v2.update(Some(&ctx1), A, s("v3"), limits).unwrap();
        assert_eq!(values(&v3), vec!["v3", "v2"]);
    }

    #[test]
    fn sibling_limit_is_a_clear_error() {
        let limits = VersionLimits {
            siblings_max: 3,
            context_nodes_max: 64,
        };
        let mut clock = Clock::new();
        for i in 0..3 {
            clock = clock.update(None, A, s(&i.to_string()), limits).unwrap();
        }
        let err = clock.update(None, A, s("x"), limits).unwrap_err();
        assert_eq!(err, VersionError::TooManySiblings { siblings: 4, limit: 3 });
        assert!(err.to_string().contains("context"));
    }

    #[test]
    fn last_writer_takes_the_latest_timestamp_then_the_larger_dot() {
        let limits = VersionLimits::default();
        let at = |ts: u64, v: Option<&str>| Sibling {
            timestamp_ms: ts,
            value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        };
        let a = Clock::new().update(None, A, at(5, Some("a")), limits).unwrap();
        let b = Clock::new().update(None, B, at(5, Some("b")), limits).unwrap();
        let merged = a.sync(&b);
        assert_eq!(
            merged.last_writer().unwrap().value.as_deref(),
            Some(&b"b"[..]),
            "tie: larger node"
        );
        let deleted = merged.update(None, A, at(9, None), limits).unwrap();
        assert!(deleted.last_writer().unwrap().is_tombstone());
        assert_eq!(Clock::new().last_writer(), None);
    }

    #[test]
    fn a_writer_absent_locally_starts_past_its_context_at_the_write_time() {
        let w = NodeId(7);
        let limits = VersionLimits::default();
        let stale = VersionVector::from_pairs([(w, 5)]);
        let at = |timestamp_ms, value: Option<&[u8]>| Sibling {
            timestamp_ms,
            value: value.map(Bytes::copy_from_slice),
        };
        // The context names w, but this replica holds nothing of w (its
        // history was reaped): the dot jumps to the write time in µs.
        let clock = Clock::new()
            .update(Some(&stale), w, at(1_000, Some(b"v")), limits)
            .unwrap();
        assert_eq!(clock.context().get(w), 1_000_000);
        // Held locally: counters go on by one.
        let next = clock
            .update(Some(&clock.context()), w, at(2_000, None), limits)
            .unwrap();
        assert_eq!(next.context().get(w), 1_000_001);
    }

    #[test]
    fn an_exhausted_counter_is_an_error_not_a_panic() {
        let forged = VersionVector::from_pairs([(A, u64::MAX)]);
        let err = Clock::new()
            .update(Some(&forged), A, s("x"), VersionLimits::default())
            .unwrap_err();
        assert_eq!(err, VersionError::CounterExhausted { node: A });
    }

    #[test]
    fn version_vector_from_pairs_is_canonical() {
        let vv = VersionVector::from_pairs([(B, 3), (A, 1), (B, 5), (NodeId(9), 0)]);
        assert_eq!(vv.entries(), &[(A, 1), (B, 5)]);
        assert_eq!(vv.get(B), 5);
        assert_eq!(vv.get(NodeId(9)), 0);
    }
}
