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
    decode_hashes, decode_key_hashes, differing, encode_hashes, encode_key_hashes, keys_to_repair, LEAF_KEYS_MAX,
};
use dynkv::cluster::Send;
use dynkv::object::{decode_object, object_bytes};
use dynkv::version::Clock;
use dynkv_engine::merkle::{leaf_of, MERKLE_BRANCHES, MERKLE_LEAVES_PER_BRANCH};
use dynkv_net::{Head, Opcode, Status, FLAG_BACKGROUND};
use dynkv_ring::NodeId;

use crate::server::hints::unix_ms;
use crate::server::shard::{Op, Outcome, RequestOptions, Shard};

/// What a MerkleExchange request asks for (its key: partition u32 LE |
/// what u8 | index u16 LE): the tree's top, a branch's leaf hashes, or a
/// branch's keys.
const WHAT_TOP: u8 = 0;
const WHAT_LEAVES: u8 = 1;
const WHAT_KEYS: u8 = 2;

/// Keys merged at once by one comparison.
const REPAIR_BATCH: usize = 16;

/// The other side of a comparison: a replica on another node, or (while a
/// partition moves between the shards of this node) another shard.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Peer {
    Node(NodeId),
    Shard(u16),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Node(node) => write!(f, "node {node}"),
            Peer::Shard(shard) => write!(f, "local shard {shard}"),
        }
    }
}

/// What one comparison of a partition with a peer did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SyncReport {
    /// The roots differed.
    pub(crate) differing: bool,
    /// Keys held differently, merged or not.
    pub(crate) compared: u64,
    /// Keys where either side changed.
    pub(crate) repaired: u64,
    /// Keys that could not be merged.
    pub(crate) failed: u64,
}

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
    /// Answers a MerkleExchange for a partition this shard holds.
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
    async fn merkle_ask(&self, peer: Peer, partition: u32, what: u8, index: u16) -> Result<Vec<u8>, String> {
        let key = request_key(partition, what, index);
        let peer = match peer {
            Peer::Shard(shard) => {
                return match self
                    .forward(
                        usize::from(shard),
                        Op::Merkle,
                        &key,
                        &[],
                        &[],
                        RequestOptions::default(),
                    )
                    .await
                {
                    Outcome::Bytes(bytes) => Ok(bytes),
                    Outcome::Failed(_, message) => Err(message),
                    _ => Err("a shard answered a Merkle request with something else".into()),
                };
            }
            Peer::Node(node) => node,
        };
        let view = self.view();
        let shard = view.shard_of(peer, partition);
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let head = Head {
            flags: FLAG_BACKGROUND,
            timeout_ms: self.config.request_timeout_ms as u32,
            ..Head::request(Opcode::MerkleExchange, 0)
        };
        let answer = self
            .links
            .call_for_value(
                peer,
                shard,
                view.internode_addr(peer, shard),
                head,
                (&key, &[], &[]),
                timeout,
            )
            .await?;
        self.count_sync_bytes(answer.len());
        Ok(answer)
    }

    fn count_sync_bytes(&self, bytes: usize) {
        let c = &self.counters.sync_bytes_received;
        c.set(c.get() + bytes as u64);
    }

    /// `peer`'s stored version of `key`.
    async fn peer_version(&self, peer: Peer, partition: u32, key: &[u8]) -> Result<Clock, String> {
        match peer {
            Peer::Shard(shard) => {
                match self
                    .forward(
                        usize::from(shard),
                        Op::ReplicaGet,
                        key,
                        &[],
                        &[],
                        RequestOptions::default(),
                    )
                    .await
                {
                    Outcome::Object(clock) => Ok(clock),
                    Outcome::Failed(_, message) => Err(message),
                    _ => Err("a shard answered a replica read with something else".into()),
                }
            }
            Peer::Node(node) => {
                let send = Send {
                    to: node,
                    hint_for: None,
                };
                let response = self
                    .call_replica_flagged(Opcode::ReplicaGet, send, partition, key, &[], FLAG_BACKGROUND)
                    .await
                    .map_err(|e| e.to_string())?;
                self.count_sync_bytes(response.value.len());
                match response.status {
                    s if s != Status::Ok as u8 => Err(String::from_utf8_lossy(&response.value).into_owned()),
                    _ if response.value.is_empty() => Ok(Clock::new()),
                    _ => decode_object(&response.value).map_err(|e| e.to_string()),
                }
            }
        }
    }

    /// Merges `object` into `peer`'s version of `key`.
    async fn peer_absorb(&self, peer: Peer, partition: u32, key: &[u8], object: &Clock) -> Result<(), String> {
        let bytes = object_bytes(object);
        let stored = match peer {
            Peer::Shard(shard) => matches!(
                self.forward(
                    usize::from(shard),
                    Op::ReplicaPut,
                    key,
                    &[],
                    &bytes,
                    RequestOptions::default()
                )
                .await,
                Outcome::Done
            ),
            Peer::Node(node) => {
                let send = Send {
                    to: node,
                    hint_for: None,
                };
                self.call_replica_flagged(Opcode::ReplicaPut, send, partition, key, &bytes, FLAG_BACKGROUND)
                    .await
                    .is_ok_and(|r| r.status == Status::Ok as u8)
            }
        };
        if stored {
            Ok(())
        } else {
            Err(format!("{peer} refused a repair"))
        }
    }

    /// Brings this shard's and `peer`'s copies of `partition` into
    /// agreement, merging at most `keys_per_second` keys a second.
    pub(crate) async fn sync_partition(
        &self,
        partition: u32,
        peer: Peer,
        keys_per_second: u64,
        hand_off: bool,
    ) -> Result<SyncReport, String> {
        let mut report = SyncReport::default();
        let local = self.engine.merkle_tree(partition);
        let top = decode_hashes(
            &self.merkle_ask(peer, partition, WHAT_TOP, 0).await?,
            1 + MERKLE_BRANCHES,
        )
        .map_err(|e| e.to_string())?;
        if top[0] == local.root() {
            return Ok(report);
        }
        report.differing = true;
        let started = std::time::Instant::now();
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
            let keys = keys_to_repair(&ours, &theirs);
            // A few keys at once, so that a transfer is not one round trip
            // per key; the rate still holds on average.
            for batch in keys.chunks(REPAIR_BATCH) {
                let merged =
                    futures::future::join_all(batch.iter().map(|key| self.repair_key(partition, peer, key, hand_off)))
                        .await;
                for result in merged {
                    // One key that cannot be merged (a refusal, a limit)
                    // must not keep the rest of the partition from
                    // converging.
                    match result {
                        Ok(changed) => report.repaired += u64::from(changed),
                        Err(err) => {
                            report.failed += 1;
                            tracing::debug!(partition, %peer, "could not merge a key: {err}");
                        }
                    }
                }
                report.compared += batch.len() as u64;
                let due = Duration::from_secs_f64(report.compared as f64 / keys_per_second.max(1) as f64);
                if self.stopping.sleep(due.saturating_sub(started.elapsed())).await {
                    return Err("shutting down".into());
                }
            }
        }
        Ok(report)
    }

    /// Merges one key between this shard and `peer`; true if either side
    /// changed.
    ///
    /// `hand_off`: this shard's copy is a former owner's, about to be
    /// dropped. A live version older than `tombstone_reap_after_ms` is not
    /// pushed to an owner that lacks the key: the owners may have reaped
    /// its delete while this copy was away, and any write that old that
    /// only a former owner still held would have reached the owners long
    /// before (anti-entropy ran among them all along).
    async fn repair_key(&self, partition: u32, peer: Peer, key: &[u8], hand_off: bool) -> Result<bool, String> {
        let theirs = self.peer_version(peer, partition, key).await?;
        let ours = self
            .read_local(partition, key)
            .await
            .map_err(|_| "cannot read the local version")?;
        // A side without the key reads as deleted already: a reapable
        // tombstone is not copied to it (it may have reaped it), and the
        // side holding it reaps it in turn.
        if (ours.is_empty() && self.reapable(&theirs)) || (theirs.is_empty() && self.reapable(&ours)) {
            return Ok(false);
        }
        if hand_off && theirs.is_empty() && self.older_than_reap_age(&ours) {
            return Ok(false);
        }
        let merged = ours.sync(&theirs);
        let mut changed = false;
        if merged != ours {
            if let Outcome::Failed(_, message) = self.absorb_local(partition, key, &theirs).await {
                return Err(message);
            }
            changed = true;
        }
        if merged != theirs {
            self.peer_absorb(peer, partition, key, &merged).await?;
            changed = true;
        }
        Ok(changed)
    }
}

impl Shard {
    /// A delete every sibling of which is older than
    /// `tombstone_reap_after_ms`.
    pub(crate) fn reapable(&self, clock: &Clock) -> bool {
        clock.is_deleted() && self.older_than_reap_age(clock)
    }

    /// Every sibling older than `tombstone_reap_after_ms`.
    fn older_than_reap_age(&self, clock: &Clock) -> bool {
        let newest = clock.siblings().map(|s| s.timestamp_ms).max();
        newest.is_some_and(|t| t.saturating_add(self.config.tombstone_reap_after_ms) < unix_ms())
    }

    /// Removes this shard's reapable tombstones of `partition` that every
    /// other current owner holds identically or no longer holds. Only with
    /// ownership settled and every owner up: an owner that cannot answer
    /// may hold an older value the tombstone must still supersede. Returns
    /// the keys reaped.
    async fn reap_tombstones(&self, partition: u32) -> Result<u64, String> {
        let view = self.view();
        let Some(ownership) = &view.ownership else {
            return Ok(0);
        };
        let owners = ownership.current().owners(partition);
        if ownership.pending().is_some() || !owners.contains(&self.owner()) {
            return Ok(0);
        }
        let others: Vec<NodeId> = owners.iter().map(|o| o.node).filter(|&n| n != self.me).collect();
        if others.iter().any(|&n| self.is_down(n)) {
            return Ok(0);
        }
        let mut candidates: Vec<(Vec<u8>, u64, u64)> = Vec::new();
        for info in self.engine.marked_keys(partition) {
            if matches!(self.read_local(partition, &info.key).await, Ok(clock) if self.reapable(&clock)) {
                candidates.push((info.key.to_vec(), info.seq, info.object_hash));
            }
        }
        let mut branches: Vec<usize> = candidates
            .iter()
            .map(|(key, _, _)| leaf_of(key) / MERKLE_LEAVES_PER_BRANCH)
            .collect();
        branches.sort_unstable();
        branches.dedup();
        let mut reaped = 0;
        for branch in branches {
            let mut agreed: Vec<&(Vec<u8>, u64, u64)> = candidates
                .iter()
                .filter(|(key, _, _)| leaf_of(key) / MERKLE_LEAVES_PER_BRANCH == branch)
                .collect();
            for &peer in &others {
                let listing = self
                    .merkle_ask(Peer::Node(peer), partition, WHAT_KEYS, branch as u16)
                    .await?;
                let theirs: std::collections::HashMap<Vec<u8>, u64> = decode_key_hashes(&listing)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .collect();
                // A listing cut at its bound may leave out a key the peer
                // holds: absent from it proves nothing.
                if theirs.len() >= LEAF_KEYS_MAX {
                    agreed.clear();
                    break;
                }
                agreed.retain(|(key, _, hash)| theirs.get(key).is_none_or(|h| h == hash));
            }
            for (key, seq, _) in agreed {
                let _guard = self.key_locks.lock(key).await;
                // Unchanged since it was listed (no write landed meanwhile).
                let unchanged = matches!(
                    self.engine.get(partition, key).await,
                    Ok(Some(record)) if record.seq == *seq && !record.tombstone
                );
                if !unchanged {
                    continue;
                }
                // An engine tombstone keeps the old object from coming back
                // from its segment after a restart; it is taken out of the
                // keydir at once, so the key is simply absent.
                let deleted = self
                    .engine
                    .delete(partition, key, &[])
                    .await
                    .map_err(|e| e.to_string())?;
                self.engine.reap_tombstone(partition, key, deleted);
                reaped += 1;
            }
        }
        Ok(reaped)
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
            let rate = shard.config.anti_entropy_keys_per_second_max;
            let synced = futures_lite::future::or(
                async {
                    Some(
                        shard
                            .sync_partition(partition, Peer::Node(owner.node), rate, false)
                            .await,
                    )
                },
                async {
                    shard.stopping.closed().await;
                    None
                },
            )
            .await;
            match synced {
                None => return,
                Some(Err(err)) => tracing::debug!(partition, peer = %owner.node, "anti-entropy stopped: {err}"),
                Some(Ok(report)) => {
                    let c = &shard.counters;
                    c.ae_differing.set(c.ae_differing.get() + u64::from(report.differing));
                    c.ae_repaired.set(c.ae_repaired.get() + report.repaired);
                    c.ae_failed.set(c.ae_failed.get() + report.failed);
                }
            }
        }
        match shard.reap_tombstones(partition).await {
            Ok(reaped) => shard.counters.ae_reaped.set(shard.counters.ae_reaped.get() + reaped),
            Err(err) => tracing::debug!(partition, "tombstone reaping stopped: {err}"),
        }
    }
}
