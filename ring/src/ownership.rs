//! Ownership over time: the partition table the cluster serves from, the
//! table it is moving to, and which new replicas already hold their data.
//!
//! A membership change never switches ownership at once, since the new
//! owners hold nothing yet. Instead one node, the *claimant* (the lowest id
//! among live members, chosen by the caller), computes a *pending* table
//! from the current one (sticky: [`claim`] with the current table as
//! previous) and gossips it. While it is pending:
//! - reads and write quorums use the current table, whose owners keep the
//!   data;
//! - every write is also sent to the *incoming* replicas (owners in
//!   pending that are not owners in current), so they miss nothing;
//! - each incoming replica copies its partition from the current owners
//!   and then *confirms* it.
//!
//! When every incoming replica has confirmed, the claimant *commits*: the
//! pending table becomes current. Only then may a node that owns nothing
//! of a partition any more drop its copy, so every partition has at least
//! its current owners' copies at every moment.
//!
//! The state is a join-semilattice, so gossip converges whatever order it
//! arrives in: a state with a greater `(epoch, table digest)` replaces a
//! lesser one, and equal ones merge (the greater claimant id, the union of
//! confirmations).

use std::collections::BTreeSet;

use xxhash_rust::xxh3::xxh3_64;

use crate::claim::{claim, take, Owner, PartitionTable};
use crate::error::RingError;
use crate::membership::{Lifecycle, Membership};
use crate::node::{ClaimNode, NodeId};

/// The member that may plan and commit ownership changes, as one node sees
/// it: the lowest id not gone. `None` while any member that is not gone is
/// down (`down`, from this node's failure detector): changes wait until
/// every member is reachable, as Riak's claimant does, so the two sides of
/// a network partition never both change ownership, and an incoming
/// replica can always reach its sources. A dead node is removed first
/// (which makes it gone).
pub fn claimant(membership: &Membership, down: &[NodeId]) -> Option<NodeId> {
    let members: Vec<NodeId> = membership
        .records()
        .filter(|r| r.lifecycle != Lifecycle::Left)
        .map(|r| r.id)
        .collect();
    if members.iter().any(|id| down.contains(id)) {
        return None;
    }
    members.into_iter().min()
}

/// Claimant of the first table: every node forming a cluster from the same
/// configured members computes it alike, so none claims it.
pub const GENESIS_CLAIMANT: NodeId = NodeId(0);

/// Who owns what, now and next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    epoch: u64,
    claimant: NodeId,
    current: PartitionTable,
    pending: Option<PartitionTable>,
    /// Incoming replicas `(partition, node)` of `pending` that hold their
    /// partition's data.
    confirmed: BTreeSet<(u32, NodeId)>,
}

impl Ownership {
    /// The first ownership of a cluster.
    pub fn genesis(table: PartitionTable) -> Ownership {
        Ownership {
            epoch: 1,
            claimant: GENESIS_CLAIMANT,
            current: table,
            pending: None,
            confirmed: BTreeSet::new(),
        }
    }

    /// Increases with every table change the claimant makes.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn claimant(&self) -> NodeId {
        self.claimant
    }

    /// The table reads and quorums use.
    pub fn current(&self) -> &PartitionTable {
        &self.current
    }

    /// The table the cluster is moving to, if any.
    pub fn pending(&self) -> Option<&PartitionTable> {
        self.pending.as_ref()
    }

    /// Owners of `partition` in the pending table that do not own it now:
    /// the replicas that must receive its data. Most are on nodes new to
    /// the partition; a few are another shard of a node that keeps it (the
    /// claim evens out each node's shards), and copy from that shard.
    pub fn incoming(&self, partition: u32) -> impl Iterator<Item = Owner> + '_ {
        let now = self.current.owners(partition);
        self.pending
            .iter()
            .flat_map(move |p| p.owners(partition).iter().copied())
            .filter(move |o| !now.contains(o))
    }

    /// Every incoming replica, by partition.
    pub fn transfers(&self) -> Vec<(u32, Owner)> {
        if self.pending.is_none() {
            return Vec::new();
        }
        (0..self.current.partition_count().get())
            .flat_map(|p| self.incoming(p).map(move |o| (p, o)))
            .collect()
    }

    /// Replicas that hold `partition`'s data: its current owners, then the
    /// incoming replicas that confirmed. An incoming replica copies from
    /// all of them (those reachable and not gone).
    pub fn sources(&self, partition: u32) -> Vec<Owner> {
        let mut sources = self.current.owners(partition).to_vec();
        sources.extend(
            self.incoming(partition)
                .filter(|o| self.is_confirmed(partition, o.node)),
        );
        sources
    }

    pub fn is_confirmed(&self, partition: u32, node: NodeId) -> bool {
        self.confirmed.contains(&(partition, node))
    }

    /// Records that `node` holds `partition`'s data. False (and nothing
    /// changes) unless it is an unconfirmed incoming replica.
    pub fn confirm(&mut self, partition: u32, node: NodeId) -> bool {
        if partition >= self.current.partition_count().get() || !self.incoming(partition).any(|o| o.node == node) {
            return false;
        }
        self.confirmed.insert((partition, node))
    }

    /// `(confirmed, total)` incoming replicas of the pending table.
    pub fn progress(&self) -> (usize, usize) {
        (self.confirmed.len(), self.transfers().len())
    }

    /// Identifies the plan, `(epoch, digest of the tables)`: the order of
    /// merge. States equal in both are one plan (two claimants may reach it
    /// at once): they combine.
    pub fn plan(&self) -> (u64, u64) {
        (self.epoch, self.tables_digest())
    }

    fn tables_digest(&self) -> u64 {
        let mut bytes = self.current.to_bytes();
        if let Some(pending) = &self.pending {
            bytes.extend_from_slice(&pending.to_bytes());
        }
        xxh3_64(&bytes)
    }

    /// Merges a peer's state; true if ours changed. The greater rank wins
    /// whole; at an equal rank the claimant is the greater id and the
    /// confirmations are the union, so a confirmation made under either
    /// claimant's copy of one plan is never lost.
    pub fn merge(&mut self, other: &Ownership) -> bool {
        match self.plan().cmp(&other.plan()) {
            std::cmp::Ordering::Less => {
                *self = other.clone();
                true
            }
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => {
                let before = (self.claimant, self.confirmed.len());
                self.claimant = self.claimant.max(other.claimant);
                self.confirmed.extend(other.confirmed.iter().copied());
                (self.claimant, self.confirmed.len()) != before
            }
        }
    }

    /// A compact fingerprint for gossip: equal states have equal digests.
    pub fn digest(&self) -> u64 {
        xxh3_64(&self.encode())
    }

    /// The claimant's step: the next state for placement members `nodes`
    /// and replication factor `n`, or `None` if nothing is to change.
    /// - members changed: a new pending table, moving as little as
    ///   possible from current (or no pending table, if they changed back);
    /// - every incoming replica confirmed: commit.
    ///
    /// A pending table that moves no data commits at once.
    pub fn next(&self, nodes: &[ClaimNode], n: usize, claimant: NodeId) -> Result<Option<Ownership>, RingError> {
        let mut target = nodes.to_vec();
        target.sort_by_key(|m| m.id);
        let placed = |t: &PartitionTable| t.members() == target && t.replicas_wanted() == n;
        let step = |current: PartitionTable, pending: Option<PartitionTable>| {
            let mut next = Ownership {
                epoch: self.epoch + 1,
                claimant,
                current,
                pending,
                confirmed: BTreeSet::new(),
            };
            if next.pending.is_some() && next.transfers().is_empty() {
                next.current = next.pending.take().expect("checked");
            }
            next
        };
        match &self.pending {
            Some(pending) if placed(pending) => {
                let (done, total) = self.progress();
                Ok((done == total).then(|| step(pending.clone(), None)))
            }
            _ if placed(&self.current) => Ok(self.pending.is_some().then(|| step(self.current.clone(), None))),
            // Every member is leaving: nothing to move to, so the leaves
            // wait (the nodes keep serving); a complete plan still commits.
            Some(pending) if target.is_empty() => {
                let (done, total) = self.progress();
                Ok((done == total).then(|| step(pending.clone(), None)))
            }
            _ if target.is_empty() => Ok(None),
            _ => {
                let table = claim(Some(&self.current), &target, self.current.partition_count(), n)?;
                let mut next = step(self.current.clone(), Some(table));
                // A replica that already holds a partition it still
                // receives under the new plan keeps its confirmation.
                for &(partition, node) in &self.confirmed {
                    next.confirm(partition, node);
                }
                Ok(Some(next))
            }
        }
    }

    /// Canonical encoding: `"DKVOWN01" | epoch u64 | claimant u64 |
    /// current (u32 length | table) | pending flag u8 [| u32 length |
    /// table] | confirmed count u32 | (partition u32 | node u64)*`, all
    /// little-endian, confirmations sorted.
    pub fn encode(&self) -> Vec<u8> {
        let current = self.current.to_bytes();
        let mut out = Vec::with_capacity(64 + 2 * current.len() + 12 * self.confirmed.len());
        out.extend_from_slice(b"DKVOWN01");
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.claimant.0.to_le_bytes());
        out.extend_from_slice(&(current.len() as u32).to_le_bytes());
        out.extend_from_slice(&current);
        match &self.pending {
            None => out.push(0),
            Some(pending) => {
                let pending = pending.to_bytes();
                out.push(1);
                out.extend_from_slice(&(pending.len() as u32).to_le_bytes());
                out.extend_from_slice(&pending);
            }
        }
        out.extend_from_slice(&(self.confirmed.len() as u32).to_le_bytes());
        for (partition, node) in &self.confirmed {
            out.extend_from_slice(&partition.to_le_bytes());
            out.extend_from_slice(&node.0.to_le_bytes());
        }
        out
    }

    /// Decodes [`Ownership::encode`], checking the tables and that every
    /// confirmation names an incoming replica.
    pub fn decode(bytes: &[u8]) -> Result<Ownership, RingError> {
        fn table(r: &mut &[u8]) -> Result<PartitionTable, RingError> {
            let len = u32::from_le_bytes(take(r)?) as usize;
            if r.len() < len {
                return Err(RingError::Malformed("table truncated"));
            }
            let (bytes, rest) = r.split_at(len);
            *r = rest;
            PartitionTable::from_bytes(bytes)
        }
        let mut r = bytes;
        if take::<8>(&mut r)? != *b"DKVOWN01" {
            return Err(RingError::Malformed("not an ownership state"));
        }
        let epoch = u64::from_le_bytes(take(&mut r)?);
        let claimant = NodeId(u64::from_le_bytes(take(&mut r)?));
        let current = table(&mut r)?;
        let pending = match take::<1>(&mut r)?[0] {
            0 => None,
            1 => Some(table(&mut r)?),
            _ => return Err(RingError::Malformed("bad pending flag")),
        };
        if pending
            .as_ref()
            .is_some_and(|p| p.partition_count() != current.partition_count())
        {
            return Err(RingError::Malformed("pending table has another partition count"));
        }
        let mut state = Ownership {
            epoch,
            claimant,
            current,
            pending,
            confirmed: BTreeSet::new(),
        };
        let count = u32::from_le_bytes(take(&mut r)?) as usize;
        if r.len() != count * 12 {
            return Err(RingError::Malformed("confirmations truncated or followed by junk"));
        }
        for _ in 0..count {
            let partition = u32::from_le_bytes(take(&mut r)?);
            let node = NodeId(u64::from_le_bytes(take(&mut r)?));
            if !state.confirm(partition, node) {
                return Err(RingError::Malformed("a confirmation names no incoming replica"));
            }
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::PartitionCount;

    fn nodes(ids: &[u64]) -> Vec<ClaimNode> {
        ids.iter().map(|&id| ClaimNode::new(id, 2)).collect()
    }

    fn genesis(ids: &[u64], n: usize) -> Ownership {
        let q = PartitionCount::new(64).unwrap();
        Ownership::genesis(claim(None, &nodes(ids), q, n).unwrap())
    }

    /// Confirms every transfer, as the incoming replicas would.
    fn confirm_all(state: &mut Ownership) {
        for (p, owner) in state.transfers() {
            state.confirm(p, owner.node);
        }
        assert_eq!(state.progress().0, state.progress().1);
    }

    #[test]
    fn a_join_is_pending_until_every_incoming_replica_confirms() {
        let start = genesis(&[1, 2, 3], 2);
        assert_eq!(start.next(&nodes(&[1, 2, 3]), 2, NodeId(1)).unwrap(), None);
        let mut moving = start.next(&nodes(&[1, 2, 3, 4]), 2, NodeId(1)).unwrap().unwrap();
        assert_eq!(moving.epoch(), 2);
        assert_eq!(moving.current(), start.current(), "reads stay on the old owners");
        let transfers = moving.transfers();
        assert!(!transfers.is_empty());
        // The joiner receives; other nodes only move partitions they keep
        // between their shards.
        for (p, o) in &transfers {
            let now = moving.current().owners(*p);
            assert!(
                o.node == NodeId(4) || now.iter().any(|c| c.node == o.node),
                "{p}: {o:?}"
            );
        }
        let joiner = transfers.iter().filter(|(_, o)| o.node == NodeId(4)).count();
        // Half the confirmations: still waiting.
        let (p, o) = transfers[0];
        assert!(moving.confirm(p, o.node));
        let stranger = (1..=4)
            .map(NodeId)
            .find(|n| !moving.incoming(p).any(|i| i.node == *n))
            .unwrap();
        assert!(!moving.confirm(p, o.node), "a second confirmation changes nothing");
        assert!(!moving.confirm(p, stranger), "{stranger} is not incoming there");
        assert_eq!(moving.next(&nodes(&[1, 2, 3, 4]), 2, NodeId(1)).unwrap(), None);
        confirm_all(&mut moving);
        let done = moving.next(&nodes(&[1, 2, 3, 4]), 2, NodeId(1)).unwrap().unwrap();
        assert_eq!(done.epoch(), 3);
        assert!(done.pending().is_none());
        assert_eq!(Some(done.current()), moving.pending());
        // Sticky: only the joiner's share moved between nodes.
        assert_eq!(start.current().replicas_moved_to(done.current()), joiner);
    }

    #[test]
    fn a_change_back_cancels_and_a_further_change_replans() {
        let start = genesis(&[1, 2, 3], 2);
        let moving = start.next(&nodes(&[1, 2, 3, 4]), 2, NodeId(1)).unwrap().unwrap();
        let replanned = moving.next(&nodes(&[1, 2, 3, 4, 5]), 2, NodeId(1)).unwrap().unwrap();
        assert!(replanned.transfers().iter().any(|(_, o)| o.node == NodeId(5)));
        let cancelled = replanned.next(&nodes(&[1, 2, 3]), 2, NodeId(1)).unwrap().unwrap();
        assert!(cancelled.pending().is_none());
        assert_eq!(cancelled.current(), start.current());
    }

    #[test]
    fn a_leave_moves_the_leavers_share_to_the_others() {
        let start = genesis(&[1, 2, 3, 4], 2);
        let mut moving = start.next(&nodes(&[1, 2, 3]), 2, NodeId(1)).unwrap().unwrap();
        for p in 0..64 {
            assert!(moving.pending().unwrap().owners(p).iter().all(|o| o.node != NodeId(4)));
        }
        confirm_all(&mut moving);
        let done = moving.next(&nodes(&[1, 2, 3]), 2, NodeId(1)).unwrap().unwrap();
        assert_eq!(done.current().load(NodeId(4)), 0);
    }

    #[test]
    fn merge_is_a_semilattice_and_unions_confirmations() {
        let start = genesis(&[1, 2, 3], 2);
        let moving = start.next(&nodes(&[1, 2, 3, 4]), 2, NodeId(1)).unwrap().unwrap();
        let transfers = moving.transfers();
        let (mut a, mut b) = (moving.clone(), moving.clone());
        a.confirm(transfers[0].0, NodeId(4));
        b.confirm(transfers[1].0, NodeId(4));
        let mut ab = a.clone();
        assert!(ab.merge(&b));
        let mut ba = b.clone();
        assert!(ba.merge(&a));
        assert_eq!(ab, ba, "commutative");
        assert!(!ab.clone().merge(&ab), "idempotent");
        assert_eq!(ab.progress().0, 2);
        // The newer epoch wins over confirmations of the older.
        let mut old = start.clone();
        assert!(old.merge(&ab));
        assert_eq!(old, ab);
        assert!(!ab.merge(&start));
    }

    #[test]
    fn two_claimants_of_one_plan_keep_both_confirmations() {
        let start = genesis(&[1, 2, 3], 2);
        let mut by_1 = start.next(&nodes(&[1, 2, 3, 4]), 2, NodeId(1)).unwrap().unwrap();
        let mut by_2 = start.next(&nodes(&[1, 2, 3, 4]), 2, NodeId(2)).unwrap().unwrap();
        let transfers = by_1.transfers();
        by_1.confirm(transfers[0].0, transfers[0].1.node);
        by_2.confirm(transfers[1].0, transfers[1].1.node);
        let mut merged = by_1.clone();
        assert!(merged.merge(&by_2));
        let mut other = by_2.clone();
        assert!(other.merge(&by_1));
        assert_eq!(merged, other);
        assert_eq!((merged.claimant(), merged.progress().0), (NodeId(2), 2));
    }

    #[test]
    fn encoding_round_trips_and_rejects_damage() {
        let start = genesis(&[1, 2, 3], 2);
        let mut moving = start.next(&nodes(&[1, 2, 3, 4]), 2, NodeId(2)).unwrap().unwrap();
        let (p, _) = moving.transfers()[3];
        moving.confirm(p, NodeId(4));
        for state in [&start, &moving] {
            let bytes = state.encode();
            assert_eq!(&Ownership::decode(&bytes).unwrap(), state);
            for cut in [0, 7, 20, bytes.len() / 2, bytes.len() - 1] {
                assert!(Ownership::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut junk = bytes.clone();
            junk.push(0);
            assert!(Ownership::decode(&junk).is_err());
        }
        // A confirmation for a node that is not incoming is refused.
        let mut bytes = moving.encode();
        let at = bytes.len() - 8;
        bytes[at..].copy_from_slice(&1u64.to_le_bytes());
        assert!(Ownership::decode(&bytes).is_err());
        // An owner row naming a non-member is refused.
        let mut bytes = start.encode();
        let at = bytes.len() - 4 - 10;
        bytes[at..at + 8].copy_from_slice(&77u64.to_le_bytes());
        assert!(Ownership::decode(&bytes).is_err());
    }
}
