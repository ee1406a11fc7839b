//! Ownership ("claim"): which N nodes own each partition, and which shard of
//! each node serves it.
//!
//! Two requirements pull against each other. Balance wants every node to own
//! replicas in proportion to its capacity weight; stability wants a join or
//! a leave to move only the joining or leaving node's share, and never to
//! move a replica between two nodes that did not change. No memoryless
//! function of the member set gives both (rendezvous hashing is stable but
//! unbalanced by ±30% at Q = 1024; bounded-load variants cascade). So, as in
//! Dynamo's strategy 3 and Riak's claim, the table is computed from the
//! membership *and the previous table*:
//! - with no previous table, [`claim`] builds a balanced table from the
//!   membership alone;
//! - with one, it keeps every surviving assignment, gives the holes of
//!   departed nodes to the most under-loaded nodes, and rebalances by moves
//!   that each involve an *affected* node (joined, or with a changed weight,
//!   zone or shard count).
//!
//! One exception: a node whose share covers most partitions (in practice
//! more than half; at most one replica per partition fits on a node) is
//! absent from few rows, so after a leave it may be unable to gain its new
//! share from the leaver's replicas alone. Then balance wins, because
//! capacity is a hard limit, and some replicas move between unaffected
//! nodes. Clusters where every node owns at most half the partitions (for
//! N = 3: no node above about a sixth of the total weight) never see it in
//! the property tests.
//!
//! The result is a pure function of its inputs: every node computes the same
//! table, byte for byte (see [`PartitionTable::to_bytes`]). The cluster
//! gossips the table with the membership; the claimant that computes it is
//! chosen by the membership layer.

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::error::RingError;
use crate::node::{ClaimNode, NodeId, ZoneId, SHARDS_MAX, WEIGHT_MAX};
use crate::partition::PartitionCount;

/// Splits `N` bytes off the front of `bytes`.
pub(crate) fn take<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], RingError> {
    if bytes.len() < N {
        return Err(RingError::Malformed("truncated"));
    }
    let (head, rest) = bytes.split_at(N);
    *bytes = rest;
    Ok(head.try_into().expect("split at N"))
}

/// Largest replication factor.
pub const REPLICAS_MAX: usize = 8;
/// Largest cluster the claim accepts.
pub const NODES_MAX: usize = 4096;

/// One replica of a partition: the node and the shard on it that serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub node: NodeId,
    pub shard: u16,
}

/// For each partition, its owners in preference order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    q: PartitionCount,
    replicas_wanted: usize,
    replicas: usize,
    /// Sorted by id.
    members: Vec<ClaimNode>,
    /// Row-major: partition p's owners are `owners[p * replicas..][..replicas]`.
    owners: Vec<Owner>,
}

impl PartitionTable {
    pub fn partition_count(&self) -> PartitionCount {
        self.q
    }

    /// Owners per partition: N, or fewer if the cluster has fewer nodes.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The replication factor N the table was computed for.
    pub fn replicas_wanted(&self) -> usize {
        self.replicas_wanted
    }

    /// How many replicas per partition the table lacks because the cluster
    /// has fewer than N nodes (zero when healthy). The node should warn.
    pub fn replicas_short(&self) -> usize {
        self.replicas_wanted - self.replicas
    }

    pub fn members(&self) -> &[ClaimNode] {
        &self.members
    }

    /// The owners of `partition`, first preference first.
    #[inline]
    pub fn owners(&self, partition: u32) -> &[Owner] {
        let start = partition as usize * self.replicas;
        &self.owners[start..start + self.replicas]
    }

    /// The partition of `key` and its owners. This is on every request.
    #[inline]
    pub fn owners_of_key(&self, key: &[u8]) -> (u32, &[Owner]) {
        let partition = self.q.partition_of(key);
        (partition, self.owners(partition))
    }

    /// Replicas owned by `node`.
    pub fn load(&self, node: NodeId) -> usize {
        self.owners.iter().filter(|o| o.node == node).count()
    }

    /// Replicas per shard of `node`.
    pub fn shard_loads(&self, node: NodeId) -> Vec<usize> {
        let shards = self.members.iter().find(|m| m.id == node).map_or(0, |m| m.shards);
        let mut loads = vec![0; usize::from(shards)];
        for owner in self.owners.iter().filter(|o| o.node == node) {
            loads[usize::from(owner.shard)] += 1;
        }
        loads
    }

    /// Replicas in `next` that `self` does not hold on the same node: the
    /// data that must be streamed to move from `self` to `next`.
    pub fn replicas_moved_to(&self, next: &PartitionTable) -> usize {
        if self.q != next.q {
            return next.owners.len();
        }
        (0..self.q.get())
            .map(|p| {
                let before = self.owners(p);
                next.owners(p)
                    .iter()
                    .filter(|o| !before.iter().any(|b| b.node == o.node))
                    .count()
            })
            .sum()
    }

    /// Canonical encoding; equal tables have equal bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.members.len() * 18 + self.owners.len() * 10);
        out.extend_from_slice(b"DKVRING1");
        out.extend_from_slice(&self.q.get().to_le_bytes());
        out.push(self.replicas_wanted as u8);
        out.push(self.replicas as u8);
        out.extend_from_slice(&(self.members.len() as u32).to_le_bytes());
        for m in &self.members {
            out.extend_from_slice(&m.id.0.to_le_bytes());
            out.extend_from_slice(&m.weight.to_le_bytes());
            out.extend_from_slice(&m.zone.0.to_le_bytes());
            out.extend_from_slice(&m.shards.to_le_bytes());
        }
        for o in &self.owners {
            out.extend_from_slice(&o.node.0.to_le_bytes());
            out.extend_from_slice(&o.shard.to_le_bytes());
        }
        out
    }

    /// Decodes [`PartitionTable::to_bytes`], checking every invariant a
    /// computed table has: a valid partition count and replication factor,
    /// valid members, and for each partition `replicas` owners on distinct
    /// members, each on a shard its node has. A table from a peer is
    /// trusted no further than this.
    pub fn from_bytes(bytes: &[u8]) -> Result<PartitionTable, RingError> {
        let mut r = bytes;
        if take::<8>(&mut r)? != *b"DKVRING1" {
            return Err(RingError::Malformed("not a partition table"));
        }
        let q = PartitionCount::new(u64::from(u32::from_le_bytes(take(&mut r)?)))?;
        let [replicas_wanted, replicas] = take::<2>(&mut r)?.map(usize::from);
        let count = u32::from_le_bytes(take(&mut r)?) as usize;
        if count == 0 || count > NODES_MAX {
            return Err(RingError::Malformed("member count out of range"));
        }
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            members.push(ClaimNode {
                id: NodeId(u64::from_le_bytes(take(&mut r)?)),
                weight: u32::from_le_bytes(take(&mut r)?),
                zone: ZoneId(u32::from_le_bytes(take(&mut r)?)),
                shards: u16::from_le_bytes(take(&mut r)?),
            });
        }
        let sorted = validate(&members, replicas_wanted)?;
        if sorted != members || replicas != replicas_wanted.min(members.len()) {
            return Err(RingError::Malformed("members unsorted or replica count inconsistent"));
        }
        let slots = q.get() as usize * replicas;
        if r.len() != slots * 10 {
            return Err(RingError::Malformed("owner rows truncated or followed by junk"));
        }
        let mut owners = Vec::with_capacity(slots);
        for _ in 0..slots {
            let node = NodeId(u64::from_le_bytes(take(&mut r)?));
            let shard = u16::from_le_bytes(take(&mut r)?);
            match members.binary_search_by_key(&node, |m| m.id) {
                Ok(i) if shard < members[i].shards => owners.push(Owner { node, shard }),
                _ => return Err(RingError::Malformed("an owner is not a member, or lacks that shard")),
            }
        }
        for row in owners.chunks(replicas) {
            if (1..row.len()).any(|i| row[..i].iter().any(|o| o.node == row[i].node)) {
                return Err(RingError::Malformed("a partition has two replicas on one node"));
            }
        }
        Ok(PartitionTable {
            q,
            replicas_wanted,
            replicas,
            members,
            owners,
        })
    }
}

fn validate(nodes: &[ClaimNode], n: usize) -> Result<Vec<ClaimNode>, RingError> {
    if n == 0 || n > REPLICAS_MAX {
        return Err(RingError::Replicas(n));
    }
    if nodes.is_empty() {
        return Err(RingError::NoNodes);
    }
    if nodes.len() > NODES_MAX {
        return Err(RingError::TooManyNodes { count: nodes.len() });
    }
    for node in nodes {
        if node.weight == 0 || node.weight > WEIGHT_MAX {
            return Err(RingError::Weight {
                node: node.id,
                weight: node.weight,
            });
        }
        if node.shards == 0 || node.shards > SHARDS_MAX {
            return Err(RingError::Shards {
                node: node.id,
                shards: node.shards,
            });
        }
    }
    let mut members = nodes.to_vec();
    members.sort_by_key(|m| m.id);
    if let Some(pair) = members.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(RingError::DuplicateId { node: pair[0].id });
    }
    Ok(members)
}

/// Splits `total` in proportion to `weights`, no share above `cap`.
fn water_fill(total: f64, weights: &[f64], cap: f64) -> Vec<f64> {
    let mut shares = vec![0.0; weights.len()];
    let mut capped = vec![false; weights.len()];
    let mut remaining = total;
    loop {
        let active: f64 = (0..weights.len()).filter(|&i| !capped[i]).map(|i| weights[i]).sum();
        if active <= 0.0 {
            return shares;
        }
        let mut newly_capped = false;
        for i in 0..weights.len() {
            if !capped[i] && remaining * weights[i] / active > cap {
                capped[i] = true;
                shares[i] = cap;
                remaining -= cap;
                newly_capped = true;
            }
        }
        if !newly_capped {
            for i in (0..weights.len()).filter(|&i| !capped[i]) {
                shares[i] = remaining * weights[i] / active;
            }
            return shares;
        }
    }
}

/// The zones present, sorted. Replicas spread over zones when there are at
/// least as many zones as replicas.
fn distinct_zones(members: &[ClaimNode]) -> Vec<ZoneId> {
    let mut zones: Vec<ZoneId> = members.iter().map(|m| m.zone).collect();
    zones.sort_unstable();
    zones.dedup();
    zones
}

/// Each node's ideal (real-valued) replica count: proportional to weight,
/// at most one replica per partition per node, and at most one per zone
/// when zones are spread.
fn ideal_loads(members: &[ClaimNode], q: u32, replicas: usize, zone_spread: bool) -> Vec<f64> {
    let total = f64::from(q) * replicas as f64;
    let zones = distinct_zones(members);
    let zone_weights: Vec<f64> = zones
        .iter()
        .map(|z| {
            members
                .iter()
                .filter(|m| m.zone == *z)
                .map(|m| f64::from(m.weight))
                .sum()
        })
        .collect();
    let zone_cap = if zone_spread { f64::from(q) } else { f64::INFINITY };
    let zone_shares = water_fill(total, &zone_weights, zone_cap);
    let mut ideal = vec![0.0; members.len()];
    for (z, zone) in zones.iter().enumerate() {
        let in_zone: Vec<usize> = (0..members.len()).filter(|&i| members[i].zone == *zone).collect();
        let weights: Vec<f64> = in_zone.iter().map(|&i| f64::from(members[i].weight)).collect();
        for (share, &i) in water_fill(zone_shares[z], &weights, f64::from(q))
            .into_iter()
            .zip(&in_zone)
        {
            ideal[i] = share;
        }
    }
    ideal
}

/// A deterministic pseudo-random number in [0, 1) for (partition, node),
/// used to break ties so that replica sets are varied rather than striped.
fn jitter(partition: u32, node: NodeId) -> f64 {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&partition.to_le_bytes());
    bytes[4..].copy_from_slice(&node.0.to_le_bytes());
    (xxh3_64_with_seed(&bytes, 0x0063_6c61_696d) >> 11) as f64 / (1u64 << 53) as f64
}

/// Working state of one claim computation, over member indices.
struct Claim<'a> {
    members: &'a [ClaimNode],
    q: u32,
    replicas: usize,
    zone_spread: bool,
    ideal: Vec<f64>,
    /// Row-major member indices; `None` is a hole to fill.
    slots: Vec<Option<usize>>,
    counts: Vec<usize>,
    /// Moves must involve an affected node; `None` means no restriction.
    affected: Option<Vec<bool>>,
    /// Slots filled by this claim (holes of departed nodes, or new replica
    /// slots). Their replica is moving anyway, so passing it on to another
    /// node still moves it only away from an affected node.
    fresh: Vec<bool>,
}

const EPSILON: f64 = 1e-9;

/// How far (in replicas) the greedy fill may stray from the neediest node.
/// Without it, nodes of equal weight track identical deficits and end up
/// sharing most of their partitions, which concentrates a failed node's
/// load on a few peers and can leave no way to rebalance a later leave
/// without moving replicas between unaffected nodes. The rebalance pass
/// restores exact balance afterwards.
const FILL_JITTER: f64 = 4.0;

impl Claim<'_> {
    fn row(&self, p: u32) -> &[Option<usize>] {
        let start = p as usize * self.replicas;
        &self.slots[start..start + self.replicas]
    }

    /// Whether node `c` may take slot `s` of row `p` (replacing whatever is
    /// there): distinct nodes, and distinct zones when spread.
    fn may_take(&self, p: u32, s: usize, c: usize) -> bool {
        self.row(p).iter().enumerate().all(|(i, other)| match other {
            Some(o) if i != s => *o != c && !(self.zone_spread && self.members[*o].zone == self.members[c].zone),
            _ => true,
        })
    }

    fn excess(&self, i: usize) -> f64 {
        self.counts[i] as f64 - self.ideal[i]
    }

    /// Fills every hole with the valid node furthest below its ideal.
    fn fill_holes(&mut self) {
        for p in 0..self.q {
            for s in 0..self.replicas {
                let slot = p as usize * self.replicas + s;
                if self.slots[slot].is_some() {
                    continue;
                }
                let best = (0..self.members.len())
                    .filter(|&c| self.may_take(p, s, c))
                    .max_by(|&a, &b| {
                        let score = |c: usize| -self.excess(c) + FILL_JITTER * jitter(p, self.members[c].id);
                        score(a).total_cmp(&score(b)).then(b.cmp(&a))
                    })
                    .expect("with replicas <= nodes (and <= zones when spread) a valid node exists");
                self.slots[slot] = Some(best);
                self.fresh[slot] = true;
                self.counts[best] += 1;
            }
        }
    }

    /// Evicts the later of two replicas that share a zone, when zones must
    /// be spread (the zone layout or count changed).
    fn repair_zones(&mut self) {
        if !self.zone_spread {
            return;
        }
        for p in 0..self.q {
            for s in 1..self.replicas {
                let slot = p as usize * self.replicas + s;
                let Some(c) = self.slots[slot] else { continue };
                let clash = self.row(p)[..s]
                    .iter()
                    .flatten()
                    .any(|&o| self.members[o].zone == self.members[c].zone);
                if clash {
                    self.slots[slot] = None;
                    self.counts[c] -= 1;
                }
            }
        }
    }

    fn allowed(&self, donor: usize, recipient: usize) -> bool {
        self.affected.as_ref().is_none_or(|a| a[donor] || a[recipient])
    }

    /// A slot of `donor` that `recipient` may take (only a fresh one if
    /// `fresh_only`); the choice among several is pseudo-random but
    /// deterministic, for varied replica sets.
    fn find_slot(&self, donor: usize, recipient: usize, fresh_only: bool) -> Option<usize> {
        let rid = self.members[recipient].id;
        (0..self.q)
            .filter_map(|p| {
                let s = self.row(p).iter().position(|o| *o == Some(donor))?;
                let fresh_ok = !fresh_only || self.fresh[p as usize * self.replicas + s];
                (fresh_ok && self.may_take(p, s, recipient)).then_some((p, s))
            })
            .max_by(|a, b| jitter(a.0, rid).total_cmp(&jitter(b.0, rid)).then(b.0.cmp(&a.0)))
            .map(|(p, s)| p as usize * self.replicas + s)
    }

    /// Moves replicas from over- to under-loaded nodes while a move strictly
    /// reduces the squared distance from the ideal loads.
    fn rebalance(&mut self) {
        let by_id = |a: &usize, b: &usize, key: &dyn Fn(usize) -> f64| key(*b).total_cmp(&key(*a)).then(a.cmp(b));
        for _ in 0..self.slots.len() * 2 {
            // Any node may donate to one at least one replica further below
            // its ideal (not only nodes above theirs): a capped node can
            // otherwise miss the last rows it needs, held only by nodes at or
            // just below ideal. Each move still cuts the squared distance.
            let mut donors: Vec<usize> = (0..self.members.len()).collect();
            let mut recipients: Vec<usize> = (0..self.members.len()).filter(|&i| self.excess(i) < -EPSILON).collect();
            donors.sort_by(|a, b| by_id(a, b, &|i| self.excess(i)));
            recipients.sort_by(|a, b| by_id(a, b, &|i| -self.excess(i)));
            let mut chosen = None;
            'search: for &d in &donors {
                for &r in &recipients {
                    if self.excess(d) - self.excess(r) <= 1.0 + EPSILON {
                        break;
                    }
                    if let Some(slot) = self.find_slot(d, r, !self.allowed(d, r)) {
                        chosen = Some((d, r, slot));
                        break 'search;
                    }
                }
            }
            let Some((d, r, slot)) = chosen else { return };
            self.slots[slot] = Some(r);
            self.counts[d] -= 1;
            self.counts[r] += 1;
        }
        unreachable!("rebalance strictly decreases a bounded potential, so it ends");
    }
}

/// Computes the partition table for `nodes` with replication factor `n`,
/// moving as little as possible from `prev` if given.
///
/// If there are fewer than `n` nodes, each partition gets one replica per
/// node and [`PartitionTable::replicas_short`] reports the shortfall.
pub fn claim(
    prev: Option<&PartitionTable>,
    nodes: &[ClaimNode],
    q: PartitionCount,
    n: usize,
) -> Result<PartitionTable, RingError> {
    let members = validate(nodes, n)?;
    let replicas = n.min(members.len());
    let zone_spread = distinct_zones(&members).len() >= replicas;
    let ideal = ideal_loads(&members, q.get(), replicas, zone_spread);
    let index: HashMap<NodeId, usize> = members.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
    let mut state = Claim {
        members: &members,
        q: q.get(),
        replicas,
        zone_spread,
        ideal,
        slots: vec![None; q.get() as usize * replicas],
        counts: vec![0; members.len()],
        affected: None,
        fresh: vec![false; q.get() as usize * replicas],
    };
    let prev = prev.filter(|t| t.q == q);
    if let Some(prev) = prev {
        state.affected = Some(
            members
                .iter()
                .map(|m| prev.members.iter().find(|old| old.id == m.id) != Some(m))
                .collect(),
        );
        for p in 0..q.get() {
            let survivors = prev.owners(p).iter().filter_map(|o| index.get(&o.node).copied());
            for (s, i) in survivors.take(replicas).enumerate() {
                state.slots[p as usize * replicas + s] = Some(i);
                state.counts[i] += 1;
            }
        }
        state.repair_zones();
    }
    state.fill_holes();
    state.rebalance();
    // Balance can be out of reach without moving replicas between
    // unaffected nodes only when some node's share is capped at one replica
    // per partition (it outweighs 1/N of the cluster). Then balance wins.
    let off = (0..members.len()).any(|i| state.excess(i).abs() >= 1.0 + EPSILON);
    if off && state.affected.is_some() {
        state.affected = None;
        state.rebalance();
    }
    let owners = assign_shards(&state, prev, &index);
    Ok(PartitionTable {
        q,
        replicas_wanted: n,
        replicas,
        members,
        owners,
    })
}

/// Splits each node's replicas evenly over its shards, keeping the shard of
/// every replica the node already had.
fn assign_shards(state: &Claim<'_>, prev: Option<&PartitionTable>, index: &HashMap<NodeId, usize>) -> Vec<Owner> {
    let members = state.members;
    let mut shard_of: Vec<Option<u16>> = vec![None; state.slots.len()];
    let mut loads: Vec<Vec<usize>> = members.iter().map(|m| vec![0; usize::from(m.shards)]).collect();
    let node_at = |slot: usize| state.slots[slot].expect("every hole was filled");
    if let Some(prev) = prev {
        for (slot, shard) in shard_of.iter_mut().enumerate() {
            let (p, i) = ((slot / state.replicas) as u32, node_at(slot));
            let kept = prev.owners(p).iter().find(|o| index.get(&o.node) == Some(&i));
            if let Some(o) = kept.filter(|o| o.shard < members[i].shards) {
                *shard = Some(o.shard);
                loads[i][usize::from(o.shard)] += 1;
            }
        }
    }
    for (slot, shard) in shard_of.iter_mut().enumerate() {
        if shard.is_some() {
            continue;
        }
        let i = node_at(slot);
        let least = (0..loads[i].len())
            .min_by_key(|&s| (loads[i][s], s))
            .expect("shards >= 1");
        *shard = Some(least as u16);
        loads[i][least] += 1;
    }
    // Even out shards of a node (only possible after a shard-count change
    // or uneven losses): move the highest partitions off the fullest shard.
    let mut slots_of: Vec<Vec<usize>> = vec![Vec::new(); members.len()];
    for slot in 0..state.slots.len() {
        slots_of[node_at(slot)].push(slot);
    }
    for (i, slots) in slots_of.iter().enumerate() {
        loop {
            let (max, min) = {
                let l = &loads[i];
                let max = (0..l.len())
                    .max_by_key(|&s| (l[s], std::cmp::Reverse(s)))
                    .expect("shards >= 1");
                let min = (0..l.len()).min_by_key(|&s| (l[s], s)).expect("shards >= 1");
                (max, min)
            };
            if loads[i][max] <= loads[i][min] + 1 {
                break;
            }
            let slot = *slots
                .iter()
                .rev()
                .find(|&&slot| shard_of[slot] == Some(max as u16))
                .expect("the fullest shard holds a replica");
            shard_of[slot] = Some(min as u16);
            loads[i][max] -= 1;
            loads[i][min] += 1;
        }
    }
    state
        .slots
        .iter()
        .zip(shard_of)
        .map(|(node, shard)| Owner {
            node: members[node.expect("filled")].id,
            shard: shard.expect("assigned"),
        })
        .collect()
}

/// Each node's ideal replica count under `table`'s membership (for tests,
/// tools and the load-balance report).
pub fn ideal_load(table: &PartitionTable, node: NodeId) -> f64 {
    let members = &table.members;
    let zone_spread = distinct_zones(members).len() >= table.replicas;
    let ideal = ideal_loads(members, table.q.get(), table.replicas, zone_spread);
    members.iter().position(|m| m.id == node).map_or(0.0, |i| ideal[i])
}
