//! The membership state every node gossips, as a join-semilattice.
//!
//! Each node's record is owned by that node: only it changes its addresses,
//! capacity or lifecycle, bumping its incarnation when it does. Others may
//! only raise its liveness (alive → suspect → dead) at the incarnation they
//! saw. A node refutes a rumour of its own death by publishing a higher
//! incarnation. `Left` is terminal and wins over everything.
//!
//! Merge takes, per node id, the greater record under one total order, so it
//! is commutative, associative and idempotent: replicas of the state converge
//! whatever order gossip arrives in.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64;

use crate::claim::{take, NODES_MAX};
use crate::error::RingError;
use crate::node::{ClaimNode, NodeId, ZoneId, SHARDS_MAX, WEIGHT_MAX};

/// Longest internode address a record may carry.
pub const ADDRESS_MAX_BYTES: usize = 256;

/// A node's lifecycle, in the order it moves through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lifecycle {
    Joining,
    Up,
    Leaving,
    /// Gone for good (left, or removed by an operator).
    Left,
}

/// What others believe about a node's liveness at an incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Liveness {
    Alive,
    Suspect,
    Dead,
}

/// One node's entry in the membership.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeRecord {
    pub id: NodeId,
    pub incarnation: u64,
    pub lifecycle: Lifecycle,
    pub liveness: Liveness,
    /// Internode address, `host:port` of shard 0.
    pub address: String,
    /// Native-protocol port of each shard; shard count is its length.
    pub shard_ports: Vec<u16>,
    pub weight: u32,
    pub zone: ZoneId,
}

impl NodeRecord {
    /// The total order merge uses: terminal `Left` first, then incarnation,
    /// lifecycle, liveness, and finally the content (only a buggy or
    /// malicious node publishes two contents at one version).
    fn precedence(&self, other: &NodeRecord) -> Ordering {
        let left = |r: &NodeRecord| r.lifecycle == Lifecycle::Left;
        left(self)
            .cmp(&left(other))
            .then(self.incarnation.cmp(&other.incarnation))
            .then(self.lifecycle.cmp(&other.lifecycle))
            .then(self.liveness.cmp(&other.liveness))
            .then_with(|| {
                if self == other {
                    Ordering::Equal
                } else {
                    self.encode().cmp(&other.encode())
                }
            })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.address.len() + 2 * self.shard_ports.len());
        out.extend_from_slice(&self.id.0.to_le_bytes());
        out.extend_from_slice(&self.incarnation.to_le_bytes());
        out.push(self.lifecycle as u8);
        out.push(self.liveness as u8);
        out.extend_from_slice(&(self.address.len() as u32).to_le_bytes());
        out.extend_from_slice(self.address.as_bytes());
        out.extend_from_slice(&(self.shard_ports.len() as u32).to_le_bytes());
        for port in &self.shard_ports {
            out.extend_from_slice(&port.to_le_bytes());
        }
        out.extend_from_slice(&self.weight.to_le_bytes());
        out.extend_from_slice(&self.zone.0.to_le_bytes());
        out
    }

    fn decode(r: &mut &[u8]) -> Result<NodeRecord, RingError> {
        let id = NodeId(u64::from_le_bytes(take(r)?));
        let incarnation = u64::from_le_bytes(take(r)?);
        let lifecycle = match take::<1>(r)?[0] {
            0 => Lifecycle::Joining,
            1 => Lifecycle::Up,
            2 => Lifecycle::Leaving,
            3 => Lifecycle::Left,
            _ => return Err(RingError::Malformed("unknown lifecycle")),
        };
        let liveness = match take::<1>(r)?[0] {
            0 => Liveness::Alive,
            1 => Liveness::Suspect,
            2 => Liveness::Dead,
            _ => return Err(RingError::Malformed("unknown liveness")),
        };
        let address_len = u32::from_le_bytes(take(r)?) as usize;
        if address_len > ADDRESS_MAX_BYTES || r.len() < address_len {
            return Err(RingError::Malformed("address too long or truncated"));
        }
        let (address, rest) = r.split_at(address_len);
        let address = std::str::from_utf8(address)
            .map_err(|_| RingError::Malformed("address is not UTF-8"))?
            .to_owned();
        *r = rest;
        let shards = u32::from_le_bytes(take(r)?) as usize;
        if shards == 0 || shards > usize::from(SHARDS_MAX) || r.len() < 2 * shards {
            return Err(RingError::Malformed("shard count out of range or truncated"));
        }
        let shard_ports = (0..shards)
            .map(|_| take(r).map(u16::from_le_bytes))
            .collect::<Result<Vec<u16>, _>>()?;
        let weight = u32::from_le_bytes(take(r)?);
        if weight == 0 || weight > WEIGHT_MAX {
            return Err(RingError::Weight { node: id, weight });
        }
        let zone = ZoneId(u32::from_le_bytes(take(r)?));
        Ok(NodeRecord {
            id,
            incarnation,
            lifecycle,
            liveness,
            address,
            shard_ports,
            weight,
            zone,
        })
    }

    /// The node as placement sees it.
    pub fn claim_node(&self) -> ClaimNode {
        ClaimNode {
            id: self.id,
            weight: self.weight,
            zone: self.zone,
            shards: self.shard_ports.len().min(usize::from(u16::MAX)) as u16,
        }
    }
}

/// The gossiped membership: one record per node id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    records: BTreeMap<NodeId, NodeRecord>,
}

impl Membership {
    pub fn get(&self, id: NodeId) -> Option<&NodeRecord> {
        self.records.get(&id)
    }

    pub fn records(&self) -> impl Iterator<Item = &NodeRecord> {
        self.records.values()
    }

    /// Adds a node's own record, as given at startup or from a seed list.
    /// A second record for the same id with a different address at the same
    /// incarnation is a configuration error, named in the result.
    pub fn insert(&mut self, record: NodeRecord) -> Result<(), RingError> {
        if let Some(existing) = self.records.get(&record.id) {
            if existing.incarnation == record.incarnation && existing.address != record.address {
                return Err(RingError::DuplicateNode {
                    node: record.id,
                    first: existing.address.clone(),
                    second: record.address,
                });
            }
        }
        self.merge_record(record);
        Ok(())
    }

    /// Merges one record (least upper bound). Returns whether it changed
    /// anything.
    pub fn merge_record(&mut self, record: NodeRecord) -> bool {
        match self.records.get_mut(&record.id) {
            Some(existing) if record.precedence(existing) != Ordering::Greater => false,
            Some(existing) => {
                *existing = record;
                true
            }
            None => {
                self.records.insert(record.id, record);
                true
            }
        }
    }

    /// Merges another membership into this one. Returns whether anything
    /// changed.
    pub fn merge(&mut self, other: &Membership) -> bool {
        let mut changed = false;
        for record in other.records.values() {
            changed |= self.merge_record(record.clone());
        }
        changed
    }

    /// Raises what this node believes about `id`'s liveness at the
    /// incarnation it knows. No effect on a newer incarnation.
    pub fn suspect(&mut self, id: NodeId, incarnation: u64, liveness: Liveness) -> bool {
        let Some(record) = self.records.get(&id) else {
            return false;
        };
        if record.incarnation != incarnation || record.liveness >= liveness || record.lifecycle == Lifecycle::Left {
            return false;
        }
        let mut rumour = record.clone();
        rumour.liveness = liveness;
        self.merge_record(rumour)
    }

    /// Called by node `id` itself when it hears a rumour of its death (or
    /// changes its own record): publishes a newer incarnation that is alive.
    pub fn refute(&mut self, id: NodeId) -> Option<u64> {
        let record = self.records.get_mut(&id)?;
        if record.lifecycle == Lifecycle::Left {
            return None;
        }
        record.incarnation += 1;
        record.liveness = Liveness::Alive;
        Some(record.incarnation)
    }

    /// The wire and disk encoding: `count u32 | record*`, records in node
    /// order (see `docs/wire-format.md`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.records.len() * 64);
        out.extend_from_slice(&(self.records.len() as u32).to_le_bytes());
        for record in self.records.values() {
            out.extend_from_slice(&record.encode());
        }
        out
    }

    /// Parses [`Membership::encode`]'s output, checking every bound.
    pub fn decode(mut bytes: &[u8]) -> Result<Membership, RingError> {
        let r = &mut bytes;
        let count = u32::from_le_bytes(take(r)?) as usize;
        if count > NODES_MAX {
            return Err(RingError::TooManyNodes { count });
        }
        let mut membership = Membership::default();
        for _ in 0..count {
            let record = NodeRecord::decode(r)?;
            if membership.records.insert(record.id, record.clone()).is_some() {
                return Err(RingError::DuplicateId { node: record.id });
            }
        }
        if !r.is_empty() {
            return Err(RingError::Malformed("trailing bytes"));
        }
        Ok(membership)
    }

    /// A compact fingerprint for "anything new?" gossip: equal states have
    /// equal digests.
    pub fn digest(&self) -> u64 {
        let mut bytes = Vec::with_capacity(self.records.len() * 64);
        for record in self.records.values() {
            bytes.extend_from_slice(&record.encode());
        }
        xxh3_64(&bytes)
    }

    /// Nodes that should own partitions: those joining or up. A leaving
    /// node keeps what it owns until its partitions have moved (see
    /// [`crate::Ownership`]), but is no longer placed.
    pub fn placement_nodes(&self) -> Vec<ClaimNode> {
        self.records
            .values()
            .filter(|r| matches!(r.lifecycle, Lifecycle::Joining | Lifecycle::Up))
            .map(NodeRecord::claim_node)
            .collect()
    }
}
