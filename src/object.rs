//! The canonical byte encodings of a stored object (a [`Clock`]) and of a
//! client context (a [`VersionVector`]). Both are specified in
//! `docs/wire-format.md` ("Objects and contexts").
//!
//! The engine stores the object encoding as a key's value, replicas exchange
//! it, and Merkle trees hash it; since a clock has one canonical form, equal
//! knowledge gives equal bytes. Decoding checks every length against what
//! remains and rejects anything not canonical, so a corrupt or hostile
//! object is an error, never a panic or an allocation sized by the input.

use bytes::Bytes;
use dynkv_ring::NodeId;

use crate::version::{Clock, Sibling, VersionLimits, VersionVector};

/// Format byte leading every object and context.
const FORMAT_V1: u8 = 1;
/// Sibling flag: a tombstone.
const FLAG_TOMBSTONE: u8 = 1;
/// Most entries (nodes) any clock or context may hold on the wire or disk.
pub const CLOCK_NODES_MAX: usize = 1024;
/// Most siblings an object may hold on the wire or disk. Writes are limited
/// far lower ([`crate::version::VersionLimits`]); replicas merging
/// concurrent writes may go past that limit, never past this one.
pub const OBJECT_SIBLINGS_MAX: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("{what} is truncated")]
    Truncated { what: &'static str },
    #[error("{what} has unknown format {format}")]
    UnknownFormat { what: &'static str, format: u8 },
    #[error("{what} has {count} entries (limit {limit})")]
    TooLarge {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("{what} has {trailing} trailing bytes")]
    Trailing { what: &'static str, trailing: usize },
    #[error("{what} is not canonical: {reason}")]
    NotCanonical { what: &'static str, reason: &'static str },
    #[error("sibling has unknown flags {0:#04x}")]
    BadFlags(u8),
}

/// Appends the encoding of `clock` to `out`:
/// `format u8 | nodes u16 | (node u64 | counter u64 | values u16 |
/// (timestamp_ms u64 | flags u8 | len u32 | bytes)*)*`.
pub fn encode_object(clock: &Clock, out: &mut Vec<u8>) {
    clock.check();
    out.push(FORMAT_V1);
    let nodes = u16::try_from(clock.node_count()).expect("clocks name at most CLOCK_NODES_MAX nodes");
    out.extend_from_slice(&nodes.to_le_bytes());
    for (node, counter, values) in clock.parts() {
        out.extend_from_slice(&node.0.to_le_bytes());
        out.extend_from_slice(&counter.to_le_bytes());
        let count = u16::try_from(values.len()).expect("entries hold at most OBJECT_SIBLINGS_MAX values");
        out.extend_from_slice(&count.to_le_bytes());
        for s in values {
            out.extend_from_slice(&s.timestamp_ms.to_le_bytes());
            out.push(if s.is_tombstone() { FLAG_TOMBSTONE } else { 0 });
            let bytes = s.value.as_deref().unwrap_or(&[]);
            let len = u32::try_from(bytes.len()).expect("values are bounded far below 4 GiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
}

/// The encoding of `clock` as a new buffer.
pub fn object_bytes(clock: &Clock) -> Vec<u8> {
    // Sized exactly up front: growing from empty reallocated (and copied)
    // the buffer four or five times per write.
    let mut out = Vec::with_capacity(encoded_len(clock));
    encode_object(clock, &mut out);
    debug_assert_eq!(out.len(), out.capacity());
    out
}

/// The length of `clock`'s encoding, without making it.
pub fn encoded_len(clock: &Clock) -> usize {
    let siblings: usize = clock
        .parts()
        .map(|(_, _, values)| {
            values
                .iter()
                .map(|s| 8 + 1 + 4 + s.value.as_deref().map_or(0, <[u8]>::len))
                .sum::<usize>()
        })
        .sum();
    1 + 2 + clock.node_count() * (8 + 8 + 2) + siblings
}

/// Parses an object, checking it is canonical.
pub fn decode_object(bytes: &[u8]) -> Result<Clock, ObjectError> {
    decode_object_in(bytes, None)
}

/// [`decode_object`] of an object held in `bytes`: the values are slices of
/// it (a read of a stored object copies no value).
pub fn decode_object_shared(bytes: &Bytes) -> Result<Clock, ObjectError> {
    decode_object_in(bytes, Some(bytes))
}

/// Decodes `bytes`; values are slices of `owner` if given (which must hold
/// `bytes`), copies otherwise.
fn decode_object_in(mut bytes: &[u8], owner: Option<&Bytes>) -> Result<Clock, ObjectError> {
    const WHAT: &str = "object";
    let r = &mut bytes;
    let nodes = take_header(r, WHAT)?;
    let mut parts = Vec::with_capacity(nodes);
    let mut siblings_total = 0usize;
    for _ in 0..nodes {
        let (node, counter, count) = take_entry_head(r)?;
        let count = usize::from(count);
        siblings_total += count;
        if siblings_total > OBJECT_SIBLINGS_MAX {
            return Err(ObjectError::TooLarge {
                what: "object's sibling list",
                count: siblings_total,
                limit: OBJECT_SIBLINGS_MAX,
            });
        }
        let mut values = Vec::with_capacity(count.min(r.len() / 13));
        for _ in 0..count {
            let (timestamp_ms, tombstone, value) = take_sibling(r)?;
            let value = if tombstone {
                if !value.is_empty() {
                    return Err(ObjectError::NotCanonical {
                        what: WHAT,
                        reason: "a tombstone carries bytes",
                    });
                }
                None
            } else {
                Some(owner.map_or_else(|| Bytes::copy_from_slice(value), |owner| owner.slice_ref(value)))
            };
            values.push(Sibling { timestamp_ms, value });
        }
        parts.push((node, counter, values));
    }
    if !r.is_empty() {
        return Err(ObjectError::Trailing {
            what: WHAT,
            trailing: r.len(),
        });
    }
    Clock::from_parts(parts).map_err(|reason| ObjectError::NotCanonical { what: WHAT, reason })
}

/// A stored object read in place, for the read path: its context and
/// sibling values are borrowed from the stored bytes, with no [`Clock`]
/// built, no value copied and no reference count touched.
///
/// [`ObjectView::parse`] checks every length and flag (nothing is read out
/// of bounds, whatever the bytes) but not the canonical rules
/// [`decode_object`] checks: the bytes are ones this node stored,
/// checksummed at the disk boundary. A caller that gets an error goes the
/// decoding way, which reports exactly what is wrong.
#[derive(Clone, Copy, Debug)]
pub struct ObjectView<'a> {
    /// The bytes after the header.
    parts: &'a [u8],
    nodes: usize,
}

/// One sibling of an [`ObjectView`]: its dot, timestamp and value (`None`
/// for a tombstone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiblingView<'a> {
    pub node: NodeId,
    pub counter: u64,
    pub timestamp_ms: u64,
    pub value: Option<&'a [u8]>,
}

impl<'a> ObjectView<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<ObjectView<'a>, ObjectError> {
        const WHAT: &str = "object";
        let mut r = bytes;
        let nodes = take_header(&mut r, WHAT)?;
        let view = ObjectView { parts: r, nodes };
        let mut siblings = 0usize;
        let rest = view.walk(|_| siblings += 1)?;
        if siblings > OBJECT_SIBLINGS_MAX {
            return Err(ObjectError::TooLarge {
                what: "object's sibling list",
                count: siblings,
                limit: OBJECT_SIBLINGS_MAX,
            });
        }
        if !rest.is_empty() {
            return Err(ObjectError::Trailing {
                what: WHAT,
                trailing: rest.len(),
            });
        }
        Ok(view)
    }

    /// Hands every sibling to `f` in canonical order (by node, newest
    /// first); returns the bytes after the last part.
    fn walk(&self, mut f: impl FnMut(SiblingView<'a>)) -> Result<&'a [u8], ObjectError> {
        let r = &mut { self.parts };
        for _ in 0..self.nodes {
            let (node, counter, count) = take_entry_head(r)?;
            for age in 0..u64::from(count) {
                let (timestamp_ms, tombstone, value) = take_sibling(r)?;
                f(SiblingView {
                    node,
                    counter: counter.wrapping_sub(age),
                    timestamp_ms,
                    value: (!tombstone).then_some(value),
                });
            }
        }
        Ok(r)
    }

    /// True if no write was ever seen ([`Clock::is_empty`]).
    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    /// Every sibling, in canonical order (by node, newest first).
    pub fn siblings(&self) -> SiblingViews<'a> {
        SiblingViews {
            rest: self.parts,
            nodes_left: self.nodes,
            node: NodeId(0),
            counter: 0,
            values_left: 0,
        }
    }

    /// True if every sibling is a tombstone ([`Clock::is_deleted`]).
    pub fn is_deleted(&self) -> bool {
        self.siblings().all(|s| s.value.is_none())
    }

    /// The sibling RESP shows ([`Clock::last_writer`]'s rule).
    pub fn last_writer(&self) -> Option<SiblingView<'a>> {
        self.siblings().max_by_key(|s| (s.timestamp_ms, s.node, s.counter))
    }

    /// Appends the encoding of this object's context, exactly as
    /// `encode_context(&clock.context(), out)` would.
    pub fn encode_context(&self, out: &mut Vec<u8>) {
        out.push(FORMAT_V1);
        out.extend_from_slice(&(self.nodes as u16).to_le_bytes());
        for (node, counter) in self.entries() {
            out.extend_from_slice(&node.0.to_le_bytes());
            out.extend_from_slice(&counter.to_le_bytes());
        }
    }

    /// Each writer's node and counter, in stored order.
    fn entries(&self) -> impl Iterator<Item = (NodeId, u64)> + 'a {
        // `ObjectView::parse` checked every length, so no take fails.
        const CHECKED: &str = "ObjectView::parse checked every length";
        let mut r = self.parts;
        (0..self.nodes).map(move |_| {
            let (node, counter, count) = take_entry_head(&mut r).expect(CHECKED);
            for _ in 0..count {
                take_sibling(&mut r).expect(CHECKED);
            }
            (node, counter)
        })
    }

    /// Bytes `encode_context` appends.
    pub fn context_len(&self) -> usize {
        3 + 16 * self.nodes
    }
}

/// Appends the object a write makes at `node` that supersedes everything
/// `local` holds (`WriteContext::Local`: RESP's SET, a client's overwrite,
/// a delete without a context), with one sibling: `value`, or a tombstone
/// if `None`. The bytes are exactly `object_bytes` of what
/// `Clock::update(Some(&local.context()), ..)` makes, without building
/// either clock. `None` (and `out` as it was) where that general path must
/// decide: a limit passed, a counter exhausted, or `local` not canonical
/// in its node order.
pub fn encode_superseding(
    local: Option<ObjectView<'_>>,
    node: NodeId,
    timestamp_ms: u64,
    value: Option<&[u8]>,
    limits: &VersionLimits,
    out: &mut Vec<u8>,
) -> Option<()> {
    let start = out.len();
    let done = superseding(local, (node, timestamp_ms, value), limits, out);
    if done.is_none() {
        out.truncate(start);
    }
    done
}

/// `encode_superseding` of the write (writer, timestamp, value), leaving
/// `out` as it got so far if it gives up.
fn superseding(
    local: Option<ObjectView<'_>>,
    (node, timestamp_ms, value): (NodeId, u64, Option<&[u8]>),
    limits: &VersionLimits,
    out: &mut Vec<u8>,
) -> Option<()> {
    let held = local.map_or(0, |view| view.nodes);
    if held > limits.context_nodes_max || limits.siblings_max == 0 {
        return None;
    }
    let bytes = value.unwrap_or(&[]);
    let len = u32::try_from(bytes.len()).ok()?;
    let mut written = false;
    let write_new = |out: &mut Vec<u8>, counter: u64| {
        out.extend_from_slice(&node.0.to_le_bytes());
        out.extend_from_slice(&counter.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&timestamp_ms.to_le_bytes());
        out.push(if value.is_none() { FLAG_TOMBSTONE } else { 0 });
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
    };
    out.push(FORMAT_V1);
    let count_at = out.len();
    out.extend_from_slice(&[0, 0]);
    let mut nodes = 0usize;
    let mut last: Option<NodeId> = None;
    for (n, counter) in local.into_iter().flat_map(|view| view.entries()) {
        if last.is_some_and(|l| l >= n) || counter == 0 {
            return None;
        }
        last = Some(n);
        if !written && n > node {
            // A writer's first dot on a key starts at the write's time in
            // microseconds (see `Clock::update`).
            write_new(out, timestamp_ms.saturating_mul(1000).max(1));
            written = true;
            nodes += 1;
        }
        if n == node {
            write_new(out, counter.checked_add(1)?);
            written = true;
        } else {
            out.extend_from_slice(&n.0.to_le_bytes());
            out.extend_from_slice(&counter.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
        }
        nodes += 1;
    }
    if !written {
        write_new(out, timestamp_ms.saturating_mul(1000).max(1));
        nodes += 1;
    }
    if nodes > limits.context_nodes_max {
        return None;
    }
    out[count_at..count_at + 2].copy_from_slice(&u16::try_from(nodes).ok()?.to_le_bytes());
    Some(())
}

/// The siblings of a parsed [`ObjectView`], read as they are iterated.
pub struct SiblingViews<'a> {
    rest: &'a [u8],
    nodes_left: usize,
    node: NodeId,
    counter: u64,
    /// Values of `node` not yet read; the next one's counter is `counter`.
    values_left: u16,
}

impl<'a> Iterator for SiblingViews<'a> {
    type Item = SiblingView<'a>;

    fn next(&mut self) -> Option<SiblingView<'a>> {
        // `ObjectView::parse` checked every length, so no take fails.
        const CHECKED: &str = "ObjectView::parse checked every length";
        let r = &mut self.rest;
        while self.values_left == 0 {
            if self.nodes_left == 0 {
                return None;
            }
            self.nodes_left -= 1;
            (self.node, self.counter, self.values_left) = take_entry_head(r).expect(CHECKED);
        }
        let (timestamp_ms, tombstone, value) = take_sibling(r).expect(CHECKED);
        let sibling = SiblingView {
            node: self.node,
            counter: self.counter,
            timestamp_ms,
            value: (!tombstone).then_some(value),
        };
        self.values_left -= 1;
        self.counter = self.counter.wrapping_sub(1);
        Some(sibling)
    }
}

/// Appends the encoding of a context: `format u8 | nodes u16 | (node u64 |
/// counter u64)*`, nodes strictly ascending, counters positive.
pub fn encode_context(context: &VersionVector, out: &mut Vec<u8>) {
    out.push(FORMAT_V1);
    let nodes = u16::try_from(context.entries().len()).expect("contexts name at most CLOCK_NODES_MAX nodes");
    out.extend_from_slice(&nodes.to_le_bytes());
    for (node, counter) in context.entries() {
        out.extend_from_slice(&node.0.to_le_bytes());
        out.extend_from_slice(&counter.to_le_bytes());
    }
}

/// Bytes `encode_context` appends for `context`.
pub fn context_len(context: &VersionVector) -> usize {
    3 + 16 * context.entries().len()
}

/// The encoding of `context` as a new buffer.
pub fn context_bytes(context: &VersionVector) -> Vec<u8> {
    let mut out = Vec::with_capacity(context_len(context));
    encode_context(context, &mut out);
    out
}

/// Parses a context a client sent back. An empty slice means "no context"
/// (a blind write) and gives `None`.
pub fn decode_context(mut bytes: &[u8]) -> Result<Option<VersionVector>, ObjectError> {
    const WHAT: &str = "context";
    if bytes.is_empty() {
        return Ok(None);
    }
    let r = &mut bytes;
    let nodes = take_header(r, WHAT)?;
    if r.len() != nodes * 16 {
        return Err(if r.len() < nodes * 16 {
            ObjectError::Truncated { what: WHAT }
        } else {
            ObjectError::Trailing {
                what: WHAT,
                trailing: r.len() - nodes * 16,
            }
        });
    }
    let mut pairs = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let node = NodeId(u64::from_le_bytes(take(r, WHAT)?));
        let counter = u64::from_le_bytes(take(r, WHAT)?);
        if counter == 0 || pairs.last().is_some_and(|(last, _)| *last >= node) {
            return Err(ObjectError::NotCanonical {
                what: WHAT,
                reason: "nodes must ascend strictly with positive counters",
            });
        }
        pairs.push((node, counter));
    }
    Ok(Some(VersionVector::from_pairs(pairs)))
}

/// Splits the head of an object's entry off the front: its writer, counter
/// and number of siblings.
fn take_entry_head(r: &mut &[u8]) -> Result<(NodeId, u64, u16), ObjectError> {
    const WHAT: &str = "object";
    let node = NodeId(u64::from_le_bytes(take(r, WHAT)?));
    let counter = u64::from_le_bytes(take(r, WHAT)?);
    let count = u16::from_le_bytes(take(r, WHAT)?);
    Ok((node, counter, count))
}

/// Splits one sibling off the front of an object's entry: its timestamp,
/// whether it is a tombstone, and its bytes.
fn take_sibling<'a>(r: &mut &'a [u8]) -> Result<(u64, bool, &'a [u8]), ObjectError> {
    const WHAT: &str = "object";
    let timestamp_ms = u64::from_le_bytes(take(r, WHAT)?);
    let flags = take::<1>(r, WHAT)?[0];
    if flags & !FLAG_TOMBSTONE != 0 {
        return Err(ObjectError::BadFlags(flags));
    }
    let len = u32::from_le_bytes(take(r, WHAT)?) as usize;
    if r.len() < len {
        return Err(ObjectError::Truncated { what: WHAT });
    }
    let (value, rest) = r.split_at(len);
    *r = rest;
    Ok((timestamp_ms, flags & FLAG_TOMBSTONE != 0, value))
}

/// Reads the format byte and the writer count both encodings start with.
fn take_header(r: &mut &[u8], what: &'static str) -> Result<usize, ObjectError> {
    let format = take::<1>(r, what)?[0];
    if format != FORMAT_V1 {
        return Err(ObjectError::UnknownFormat { what, format });
    }
    let nodes = usize::from(u16::from_le_bytes(take(r, what)?));
    if nodes > CLOCK_NODES_MAX {
        return Err(ObjectError::TooLarge {
            what,
            count: nodes,
            limit: CLOCK_NODES_MAX,
        });
    }
    Ok(nodes)
}

/// Splits `N` bytes off the front of `bytes`.
fn take<const N: usize>(bytes: &mut &[u8], what: &'static str) -> Result<[u8; N], ObjectError> {
    if bytes.len() < N {
        return Err(ObjectError::Truncated { what });
    }
    let (head, rest) = bytes.split_at(N);
    *bytes = rest;
    Ok(head.try_into().expect("split at N"))
}
