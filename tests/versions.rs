//! Property tests for versions (DVVSet) and their encodings.
//!
//! The model: every write has an id and a *past*, the set of writes its
//! context covered. A replica knows a set of writes; its live values must be
//! exactly the known writes that no known write has in its past. That one
//! law says siblings appear only for concurrent writes, a context
//! supersedes what it saw and nothing else, and merging loses nothing.

use std::collections::BTreeSet;

use dynkv::cluster::replica::{coordinate, WriteContext};
use dynkv::object::{
    context_bytes, context_len, decode_context, decode_object, decode_object_shared, encode_superseding, encoded_len,
    object_bytes, ObjectView,
};
use dynkv::version::{Clock, Sibling, VersionLimits, VersionVector};
use dynkv_ring::NodeId;
use proptest::prelude::*;

const REPLICAS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    /// A write coordinated at `at`, by a client that read replica `read`
    /// first (or wrote blind); a tombstone if `delete`.
    Write {
        at: usize,
        read: Option<usize>,
        delete: bool,
    },
    /// Replica `to` merges what `from` holds.
    Sync { to: usize, from: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0..REPLICAS,
            proptest::option::of(0..REPLICAS),
            proptest::bool::weighted(0.2)
        )
            .prop_map(|(at, read, delete)| Op::Write { at, read, delete }),
        (0..REPLICAS, 0..REPLICAS).prop_map(|(to, from)| Op::Sync { to, from }),
    ]
}

struct Model {
    clocks: Vec<Clock>,
    known: Vec<BTreeSet<u64>>,
    /// `past[id]`: the writes write `id` superseded.
    past: Vec<BTreeSet<u64>>,
}

impl Model {
    fn new() -> Model {
        Model {
            clocks: vec![Clock::new(); REPLICAS],
            known: vec![BTreeSet::new(); REPLICAS],
            past: Vec::new(),
        }
    }

    fn apply(&mut self, op: &Op) {
        let limits = VersionLimits {
            siblings_max: 10_000,
            context_nodes_max: 64,
        };
        match *op {
            Op::Write { at, read, delete } => {
                let id = self.past.len() as u64;
                let (context, past) = match read {
                    Some(r) => (Some(self.clocks[r].context()), self.known[r].clone()),
                    None => (None, BTreeSet::new()),
                };
                let value = (!delete).then(|| bytes::Bytes::copy_from_slice(&id.to_le_bytes()));
                let sibling = Sibling {
                    timestamp_ms: id,
                    value,
                };
                let node = NodeId(at as u64 + 1);
                self.clocks[at] = self.clocks[at].update(context.as_ref(), node, sibling, limits).unwrap();
                self.known[at].extend(past.iter().copied());
                self.known[at].insert(id);
                self.past.push(past);
            }
            Op::Sync { to, from } => {
                self.clocks[to] = self.clocks[to].sync(&self.clocks[from]);
                let theirs = self.known[from].clone();
                self.known[to].extend(theirs);
            }
        }
    }

    fn expected_live(&self, replica: usize) -> BTreeSet<u64> {
        let known = &self.known[replica];
        known
            .iter()
            .copied()
            .filter(|w| !known.iter().any(|k| self.past[*k as usize].contains(w)))
            .collect()
    }

    fn live(&self, replica: usize) -> BTreeSet<u64> {
        self.clocks[replica].siblings().map(|s| s.timestamp_ms).collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn live_values_are_exactly_the_unsuperseded_known_writes(ops in proptest::collection::vec(op(), 1..60)) {
        let mut model = Model::new();
        for (step, op) in ops.iter().enumerate() {
            model.apply(op);
            for r in 0..REPLICAS {
                prop_assert_eq!(model.live(r), model.expected_live(r), "replica {} after step {} ({:?})", r, step, op);
                let clock = &model.clocks[r];
                prop_assert_eq!(&decode_object(&object_bytes(clock)).unwrap(), clock);
                prop_assert_eq!(encoded_len(clock), object_bytes(clock).len(), "the size limit's measure");
                let stored = bytes::Bytes::from(object_bytes(clock));
                prop_assert_eq!(&decode_object_shared(&stored).unwrap(), clock, "values sliced from the stored object");
                let ctx = clock.context();
                let decoded = decode_context(&context_bytes(&ctx)).unwrap().unwrap_or_default();
                prop_assert_eq!(&decoded, &ctx);
                // The read path's in-place view answers exactly as the clock.
                let stored = object_bytes(clock);
                let view = ObjectView::parse(&stored).unwrap();
                prop_assert_eq!(view.is_empty(), clock.is_empty());
                prop_assert_eq!(view.is_deleted(), clock.is_deleted());
                let mut view_context = Vec::new();
                view.encode_context(&mut view_context);
                prop_assert_eq!(view.context_len(), view_context.len());
                prop_assert_eq!(view_context, context_bytes(&ctx));
                let siblings: Vec<_> = view.siblings().map(|s| (s.node, s.counter, s.timestamp_ms, s.value.map(<[u8]>::to_vec))).collect();
                let expected: Vec<_> = clock
                    .dotted_siblings()
                    .map(|(node, counter, s)| (node, counter, s.timestamp_ms, s.value.as_deref().map(<[u8]>::to_vec)))
                    .collect();
                prop_assert_eq!(siblings, expected);
                prop_assert_eq!(
                    view.last_writer().and_then(|s| s.value),
                    clock.last_writer().and_then(|s| s.value.as_deref())
                );
                // An overwrite (or a delete) encoded from the view is the
                // object the general path stores, at every writer.
                for writer in 0..=REPLICAS as u64 + 1 {
                    for value in [Some(&b"over"[..]), None] {
                        let sibling = Sibling { timestamp_ms: 1_000 + step as u64, value: value.map(bytes::Bytes::copy_from_slice) };
                        let limits = VersionLimits::default();
                        let general = coordinate(clock, &WriteContext::Local, NodeId(writer), sibling, limits).map(|c| object_bytes(&c));
                        let mut fast = Vec::new();
                        let done = encode_superseding(Some(view), NodeId(writer), 1_000 + step as u64, value, &limits, &mut fast);
                        prop_assert_eq!(done.map(|()| fast), general.ok(), "writer {} over {:?}", writer, clock);
                    }
                }
            }
        }
    }

    #[test]
    fn sync_is_a_semilattice(ops in proptest::collection::vec(op(), 1..40)) {
        let mut model = Model::new();
        for op in &ops {
            model.apply(op);
        }
        let [a, b, c] = [&model.clocks[0], &model.clocks[1], &model.clocks[2]];
        prop_assert_eq!(a.sync(b), b.sync(a), "commutative");
        prop_assert_eq!(a.sync(&b.sync(c)), a.sync(b).sync(c), "associative");
        prop_assert_eq!(a.sync(a), a.clone(), "idempotent");
        let ab = a.sync(b);
        prop_assert!(ab.descends(a) && ab.descends(b), "the merge has seen both");
        prop_assert_eq!(ab.context(), VersionVector::from_pairs(
            a.context().entries().iter().chain(b.context().entries()).copied()), "the merge's context is the join");
    }

    #[test]
    fn a_context_covering_everything_leaves_one_value(ops in proptest::collection::vec(op(), 1..40), at in 0..REPLICAS) {
        let mut model = Model::new();
        for op in &ops {
            model.apply(op);
        }
        let all = model.clocks.iter().fold(Clock::new(), |acc, c| acc.sync(c));
        let s = Sibling { timestamp_ms: 0, value: Some(bytes::Bytes::from_static(b"final")) };
        let next = model.clocks[at].update(Some(&all.context()), NodeId(at as u64 + 1), s, VersionLimits::default()).unwrap();
        prop_assert_eq!(all.sync(&next).sibling_count(), 1);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(clock) = decode_object(&bytes) {
            prop_assert_eq!(object_bytes(&clock), bytes.clone(), "only canonical encodings decode");
        }
        if let Ok(Some(ctx)) = decode_context(&bytes) {
            prop_assert_eq!(context_len(&ctx), bytes.len());
            prop_assert_eq!(context_bytes(&ctx), bytes.clone());
        }
        view_never_panics(&bytes);
    }

    #[test]
    fn a_view_of_a_damaged_object_never_panics(at in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
        let limits = VersionLimits::default();
        let s = |v: &str| Sibling { timestamp_ms: 7, value: Some(bytes::Bytes::copy_from_slice(v.as_bytes())) };
        let clock = Clock::new().update(None, NodeId(2), s("first"), limits).unwrap();
        let clock = clock.sync(&Clock::new().update(None, NodeId(1), s("second"), limits).unwrap());
        let mut bytes = object_bytes(&clock);
        let at = at % bytes.len();
        bytes[at] = byte;
        bytes.truncate(bytes.len() - cut % bytes.len());
        view_never_panics(&bytes);
    }
}

/// Parses `bytes` as an `ObjectView` and, if that works, uses every part
/// of it: none of it may panic, whatever the bytes.
fn view_never_panics(bytes: &[u8]) {
    if let Ok(view) = ObjectView::parse(bytes) {
        let mut context = Vec::new();
        view.encode_context(&mut context);
        assert_eq!(context.len(), view.context_len());
        let _ = (view.siblings().count(), view.is_deleted(), view.last_writer());
    }
}

#[test]
fn non_canonical_objects_are_rejected() {
    let limits = VersionLimits::default();
    let s = |v: &str| Sibling {
        timestamp_ms: 1,
        value: Some(bytes::Bytes::copy_from_slice(v.as_bytes())),
    };
    let clock = Clock::new().update(None, NodeId(2), s("x"), limits).unwrap();
    let clock = clock.sync(&Clock::new().update(None, NodeId(1), s("y"), limits).unwrap());
    let bytes = object_bytes(&clock);
    assert_eq!(decode_object(&bytes).unwrap(), clock);
    // Swap the two entries' node ids: no longer sorted.
    let mut swapped = bytes.clone();
    swapped[3..11].copy_from_slice(&2u64.to_le_bytes());
    let second = 3 + 8 + 8 + 2 + 8 + 1 + 4 + 1;
    swapped[second..second + 8].copy_from_slice(&1u64.to_le_bytes());
    let err = decode_object(&swapped).unwrap_err();
    assert!(err.to_string().contains("not canonical"), "{err}");
    // Truncation at every byte is an error, never a panic.
    for cut in 0..bytes.len() {
        assert!(decode_object(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    assert_eq!(decode_context(&[]).unwrap(), None, "an empty context is a blind write");
}
