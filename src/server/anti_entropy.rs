//! Anti-entropy: replicas of each partition compare Merkle trees and merge
//! the keys they hold differently, so that replicas that missed writes
//! (down past the hint window, a refused hint, a lost disk) converge
//! without any read touching those keys.
//!
//! Each shard walks the partitions it owns, one every
//! `anti_entropy_partition_pause_ms`, in a low-share task queue. For each
//! other primary of the partition it asks for the tree's top (root and
//! branches), then only the differing branches' leaves, then only the
//! differing leaves' keys with their object hashes; every key held
//! differently is read from the peer, merged with the local version, and
//! written back to whichever side lacked something. Repairs are throttled
//! to `anti_entropy_keys_per_second_max`.
//!
//! The comparison itself is pure (`dynkv::cluster::merkle_sync`); this is
//! its I/O.

use std::rc::Rc;
use std::time::Duration;

use dynkv::cluster::merkle_sync::{
    decode_hashes, decode_key_hashes, differing, encode_hashes, encode_key_hashes, keys_to_repair,
};
use dynkv::cluster::Send;
use dynkv::object::{decode_object, object_bytes};
use dynkv_engine::merkle::{leaf_of, MERKLE_BRANCHES, MERKLE_LEAVES_PER_BRANCH};
use dynkv_net::{Head, Opcode, Status};
use dynkv_ring::NodeId;

use crate::server::shard::{Outcome, Shard};

/// What a MerkleExchange request asks for (its key: partition u32 LE |
/// what u8 | index u16 LE): the tree's top, a branch's leaf hashes, or a
/// branch's keys.
const WHAT_TOP: u8 = 0;
const WHAT_LEAVES: u8 = 1;
const WHAT_KEYS: u8 = 2;

/// The request key of a MerkleExchange.
pub(crate) fn request_key(partition: u32, what: u8, index: u16) -> [u8; 7] {
    let mut key = [0u8; 7];
    key[..4].copy_from_slice(&partition.to_le_bytes());
    key[4] = what;
    key[5..].copy_from_slice(&index.to_le_bytes());
    key
}

/// Parses a MerkleExchange request key: `(partition, what, index)`.
pub(crate) fn parse_request(key: &[u8]) -> Option<(u32, u8, u16)> {
    if key.len() != 7 {
        return None;
    }
    Some((
        u32::from_le_bytes(key[..4].try_into().expect("4 bytes")),
        key[4],
        u16::from_le_bytes(key[5..].try_into().expect("2 bytes")),
    ))
}

impl Shard {
    /// Answers a MerkleExchange for a partition this shard owns.
    pub(crate) fn merkle_answer(&self, partition: u32, what: u8, index: u16) -> Outcome {
        let tree = self.engine.merkle_tree(partition);
        match what {
            WHAT_TOP => {
                let mut hashes = Vec::with_capacity(1 + MERKLE_BRANCHES);
                hashes.push(tree.root());
                hashes.extend_from_slice(tree.branches());
                Outcome::Bytes(encode_hashes(&hashes))
            }
            WHAT_LEAVES if usize::from(index) < MERKLE_BRANCHES => {
                Outcome::Bytes(encode_hashes(tree.leaves_of_branch(usize::from(index))))
            }
            WHAT_KEYS if usize::from(index) < MERKLE_BRANCHES => {
                Outcome::Bytes(encode_key_hashes(&self.branch_keys(partition, usize::from(index))))
            }
            _ => Outcome::failed(Status::BadRequest, format!("bad Merkle request {what}/{index}")),
        }
    }

    /// The keys (with object hashes) of one Merkle branch of `partition`:
    /// one scan of the partition's keydir answers for all 32 of its leaves.
    fn branch_keys(&self, partition: u32, branch: usize) -> Vec<(Vec<u8>, u64)> {
        self.engine
            .partition_keys(partition)
            .into_iter()
            .filter(|k| !k.tombstone && leaf_of(&k.key) / MERKLE_LEAVES_PER_BRANCH == branch)
            .map(|k| (k.key.to_vec(), k.object_hash))
            .collect()
    }

    /// Asks `peer` about its copy of `partition`.
    async fn merkle_ask(&self, peer: NodeId, partition: u32, what: u8, index: u16) -> Result<Vec<u8>, String> {
        let view = self.view();
        let shard = view.shard_of(peer, partition);
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let head = Head {
            timeout_ms: self.config.request_timeout_ms as u32,
            ..Head::request(Opcode::MerkleExchange, 0)
        };
        let key = request_key(partition, what, index);
        self.links
            .call_for_value(
                peer,
                shard,
                view.internode_addr(peer, shard),
                head,
                (&key, &[], &[]),
                timeout,
            )
            .await
    }

    /// Brings this shard's and `peer`'s copies of `partition` into
    /// agreement. Returns the keys repaired.
    async fn sync_partition(&self, partition: u32, peer: NodeId) -> Result<u64, String> {
        let local = self.engine.merkle_tree(partition);
        let top = decode_hashes(
            &self.merkle_ask(peer, partition, WHAT_TOP, 0).await?,
            1 + MERKLE_BRANCHES,
        )
        .map_err(|e| e.to_string())?;
        if top[0] == local.root() {
            return Ok(0);
        }
        self.counters.ae_differing.set(self.counters.ae_differing.get() + 1);
        let mut repaired = 0;
        for branch in differing(local.branches(), &top[1..]) {
            let theirs = self.merkle_ask(peer, partition, WHAT_LEAVES, branch as u16).await?;
            let theirs = decode_hashes(&theirs, MERKLE_LEAVES_PER_BRANCH).map_err(|e| e.to_string())?;
            let ours = self.engine.merkle_tree(partition);
            let leaves: Vec<usize> = differing(ours.leaves_of_branch(branch), &theirs)
                .into_iter()
                .map(|offset| branch * MERKLE_LEAVES_PER_BRANCH + offset)
                .collect();
            if leaves.is_empty() {
                continue;
            }
            // Keys come a branch at a time (one scan on each side); only
            // those in differing leaves are compared.
            let in_differing_leaf = |key: &[u8]| leaves.contains(&leaf_of(key));
            let theirs = self.merkle_ask(peer, partition, WHAT_KEYS, branch as u16).await?;
            let theirs: Vec<(Vec<u8>, u64)> = decode_key_hashes(&theirs)
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|(key, _)| in_differing_leaf(key))
                .collect();
            let ours: Vec<(Vec<u8>, u64)> = self
                .branch_keys(partition, branch)
                .into_iter()
                .filter(|(key, _)| in_differing_leaf(key))
                .collect();
            for key in keys_to_repair(&ours, &theirs) {
                // One key that cannot be merged (a refusal, a limit) must
                // not keep the rest of the partition from converging.
                match self.repair_key(partition, peer, &key).await {
                    Ok(changed) => repaired += u64::from(changed),
                    Err(err) => {
                        self.counters.ae_failed.set(self.counters.ae_failed.get() + 1);
                        tracing::debug!(partition, peer = %peer, "anti-entropy could not repair a key: {err}");
                    }
                }
                let pause = Duration::from_micros(1_000_000 / self.config.anti_entropy_keys_per_second_max.max(1));
                if self.stopping.sleep(pause).await {
                    return Err("shutting down".into());
                }
            }
        }
        Ok(repaired)
    }

    /// Merges one key between this shard and `peer`; true if either side
    /// changed.
    async fn repair_key(&self, partition: u32, peer: NodeId, key: &[u8]) -> Result<bool, String> {
        let send = Send {
            to: peer,
            hint_for: None,
        };
        let response = self
            .call_replica(Opcode::ReplicaGet, send, partition, key, &[])
            .await
            .map_err(|e| e.to_string())?;
        if response.status != Status::Ok as u8 {
            return Err(String::from_utf8_lossy(&response.value).into_owned());
        }
        let theirs = decode_object(&response.value).map_err(|e| e.to_string())?;
        let ours = self
            .read_local(partition, key)
            .await
            .map_err(|_| "cannot read the local version")?;
        let merged = ours.sync(&theirs);
        let mut changed = false;
        if merged != ours {
            if let Outcome::Failed(_, message) = self.absorb_local(partition, key, &theirs).await {
                return Err(message);
            }
            changed = true;
        }
        if merged != theirs {
            if !self.replica_put(send, partition, key, &object_bytes(&merged)).await.1 {
                return Err(format!("node {peer} refused a repair"));
            }
            changed = true;
        }
        if changed {
            self.counters.ae_repaired.set(self.counters.ae_repaired.get() + 1);
        }
        Ok(changed)
    }
}

/// Walks this shard's partitions against their other replicas until
/// shutdown; run it in a low-share task queue.
pub(crate) async fn anti_entropy_loop(shard: Rc<Shard>) {
    let pause = Duration::from_millis(shard.config.anti_entropy_partition_pause_ms);
    let mut next = 0u32;
    let mut last: Option<u32> = None;
    loop {
        if shard.stopping.sleep(pause).await {
            return;
        }
        let view = shard.view();
        if view.table.is_none() {
            continue;
        }
        let q = shard.q.get();
        // The next partition this shard owns, after the last one compared.
        let Some(partition) = (0..q)
            .map(|i| (next + i) % q)
            .find(|p| view.local_owner_shard(*p) == Some(shard.id as u16))
        else {
            continue;
        };
        next = (partition + 1) % q;
        // Back at or before the previous partition: a pass is complete.
        if last.is_some_and(|l| partition <= l) {
            shard.counters.ae_passes.set(shard.counters.ae_passes.get() + 1);
        }
        last = Some(partition);
        for owner in view.primaries(partition) {
            if owner.node == shard.me || shard.is_down(owner.node) {
                continue;
            }
            shard.counters.ae_compared.set(shard.counters.ae_compared.get() + 1);
            let synced = futures_lite::future::or(
                async { Some(shard.sync_partition(partition, owner.node).await) },
                async {
                    shard.stopping.closed().await;
                    None
                },
            )
            .await;
            match synced {
                None => return,
                Some(Err(err)) => tracing::debug!(partition, peer = %owner.node, "anti-entropy stopped: {err}"),
                Some(Ok(_)) => {}
            }
        }
    }
}
