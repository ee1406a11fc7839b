//! Ownership changes on one shard: copying in the partitions it is to own,
//! and dropping its copies of partitions it no longer owns.
//!
//! While a pending table exists (`dynkv_ring::Ownership`), each shard looks
//! for partitions where its node is an *incoming* replica on this shard.
//! It copies each from every live current owner with the anti-entropy
//! comparison (Merkle roots, then differing branches and keys), which makes
//! the copy resumable for free: after a crash of either side, the next
//! comparison sends only what is still missing. Writes made meanwhile
//! reach it from the coordinators (see `copy_to_incoming`). When a pass
//! over every live source merged every key, the shard confirms the
//! partition to shard 0, whose gossip carries the confirmation to the
//! claimant.
//!
//! A partition that moves between two shards of one node is copied the same
//! way, from the old shard over the shard mesh.
//!
//! Once ownership has been settled for `ownership_drop_delay_ms` (time
//! for every node to hear of the commit and stop reading old copies), the
//! shard drops what it holds of partitions it does not own, each only
//! after a final comparison with every owner has merged every key: so a
//! drop never loses what only this copy holds, whatever happened to the
//! ownership state meanwhile. Any change of plan stops a drop.
//!
//! Everything here runs in the low-share background queue and is
//! throttled by `transfer_keys_per_second_max`.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynkv_ring::{Lifecycle, Owner};

use crate::server::anti_entropy::Peer;
use crate::server::shard::{Shard, ShardMsg};
use crate::server::view::ClusterView;

/// Pause between passes over the partitions.
const PASS_PAUSE_MS: u64 = 500;
/// Keys dropped between pauses.
const DROP_BATCH: usize = 256;

impl Shard {
    /// Tells shard 0 (which gossips ownership) that this node now holds
    /// `partition`.
    async fn confirm_transfer(&self, partition: u32) {
        match &self.members {
            Some(members) => members.confirm(partition),
            None => {
                let _ = self.senders.send_to(0, ShardMsg::Confirm(partition)).await;
            }
        }
    }

    /// The replicas of `partition` other than this shard in `peers`
    /// (current owners, or every replica holding data), as comparison
    /// peers; `None` if one is not known to the membership (views out of
    /// step: try later).
    fn peers_of(&self, view: &ClusterView, owners: &[Owner]) -> Option<Vec<Peer>> {
        let me = self.owner();
        let mut peers = Vec::new();
        for owner in owners.iter().filter(|o| **o != me) {
            match view.membership.get(owner.node).map(|r| r.lifecycle) {
                None => return None,
                Some(Lifecycle::Left) => {}
                Some(_) if owner.node == self.me => peers.push(Peer::Shard(owner.shard)),
                Some(_) => peers.push(Peer::Node(owner.node)),
            }
        }
        Some(peers)
    }

    /// Compares `partition` with every peer; `None` at shutdown, else how
    /// many were compared and whether every key was merged.
    async fn sync_with_all(&self, partition: u32, peers: &[Peer], hand_off: bool) -> Option<(usize, bool)> {
        let (mut compared, mut complete) = (0, true);
        for &peer in peers {
            if matches!(peer, Peer::Node(n) if self.is_down(n)) {
                complete = false;
                continue;
            }
            let rate = self.config.transfer_keys_per_second_max;
            match self.sync_partition(partition, peer, rate, hand_off).await {
                Ok(report) => {
                    let c = &self.counters.transfer_keys;
                    c.set(c.get() + report.repaired);
                    compared += 1;
                    complete &= report.failed == 0;
                }
                Err(_) if crate::server::shutdown::requested() => return None,
                Err(err) => {
                    tracing::debug!(partition, %peer, "transfer stopped: {err}");
                    complete = false;
                }
            }
        }
        Some((compared, complete))
    }

    /// Copies `partition` from the live replicas that hold it (current
    /// owners, and incoming replicas that already confirmed; another shard
    /// of this node among them, when the partition moves between shards).
    async fn receive_partition(&self, view: &ClusterView, partition: u32) -> Option<Received> {
        let ownership = view.ownership.as_ref()?;
        let Some(sources) = self.peers_of(view, &ownership.sources(partition)) else {
            return Some(Received::Retry);
        };
        if sources.is_empty() {
            tracing::warn!(
                partition,
                "every replica holding this partition is gone: it starts empty here"
            );
            return Some(Received::Complete);
        }
        let (compared, complete) = self.sync_with_all(partition, &sources, false).await?;
        Some(match (compared, complete) {
            (0, _) => Received::Retry,
            (_, true) => Received::Complete,
            (_, false) => Received::Partial,
        })
    }

    /// Drops this shard's copy of `partition` while ownership stays at
    /// `plan`; false at shutdown.
    async fn drop_partition(&self, partition: u32, plan: (u64, u64)) -> bool {
        let keys = self.engine.partition_keys(partition);
        let mut dropped = 0u64;
        for batch in keys.chunks(DROP_BATCH) {
            if self.view().plan() != Some(plan) {
                return true;
            }
            for info in batch {
                let _guard = self.key_locks.lock(&info.key).await;
                let seq = if info.tombstone {
                    Some(info.seq)
                } else {
                    self.engine.delete(partition, &info.key, &[]).await.ok()
                };
                // The engine tombstone is written (so a restart does not
                // bring the key back from older segments) and then taken
                // out of the keydir, so the partition holds nothing.
                if let Some(seq) = seq {
                    self.engine.reap_tombstone(partition, &info.key, seq);
                    dropped += 1;
                }
            }
            let pause_us = batch.len() as u64 * 1_000_000 / self.config.transfer_keys_per_second_max.max(1);
            if self.stopping.sleep(Duration::from_micros(pause_us)).await {
                return false;
            }
        }
        let c = &self.counters;
        c.dropped_partitions.set(c.dropped_partitions.get() + 1);
        c.dropped_keys.set(c.dropped_keys.get() + dropped);
        tracing::info!(
            shard = self.id,
            partition,
            keys = dropped,
            "dropped a partition that moved away"
        );
        true
    }
}

/// What copying an incoming partition achieved.
enum Received {
    /// Every key every live source holds differently was merged.
    Complete,
    /// Compared, but some keys could not be merged (or a source was down).
    Partial,
    /// Nothing compared: no source reachable.
    Retry,
}

/// Passes in a row that ended `Partial` before a partition is confirmed
/// anyway: keys that can never be merged (past a sibling or size limit)
/// must not hold a join or leave up for ever; anti-entropy keeps trying
/// them.
const PARTIAL_PASSES_MAX: u32 = 3;

/// Receives incoming partitions and drops moved ones until shutdown; run it
/// in a low-share task queue.
pub(crate) async fn transfer_loop(shard: Rc<Shard>) {
    // Partitions received under a plan, and partial passes per partition.
    let mut received: BTreeSet<u32> = BTreeSet::new();
    let mut partial: BTreeMap<u32, u32> = BTreeMap::new();
    let mut plan = (0, 0);
    let mut settled_since: Option<Instant> = None;
    let me = shard.owner();
    loop {
        if shard.stopping.sleep(Duration::from_millis(PASS_PAUSE_MS)).await {
            return;
        }
        let view = shard.view();
        let Some(ownership) = &view.ownership else {
            continue;
        };
        if let Some(current) = view.plan().filter(|p| *p != plan) {
            plan = current;
            received.clear();
            partial.clear();
            settled_since = None;
        }
        if ownership.pending().is_some() {
            for partition in 0..shard.q.get() {
                if !ownership.incoming(partition).any(|o| o == me) || ownership.is_confirmed(partition, shard.me) {
                    continue;
                }
                // Confirmed before, but not in the view yet (or the
                // confirmation was lost): confirming again is harmless.
                if received.contains(&partition) {
                    shard.confirm_transfer(partition).await;
                    continue;
                }
                let done = match shard.receive_partition(&view, partition).await {
                    None => return,
                    Some(Received::Retry) => false,
                    Some(Received::Complete) => true,
                    Some(Received::Partial) => {
                        let passes = partial.entry(partition).or_default();
                        *passes += 1;
                        if *passes >= PARTIAL_PASSES_MAX {
                            tracing::warn!(
                                partition,
                                "confirming a partition with keys that could not be merged; anti-entropy retries them"
                            );
                        }
                        *passes >= PARTIAL_PASSES_MAX
                    }
                };
                if done {
                    // What was copied is durable before anyone may drop it.
                    if shard.engine.sync().await.is_err() {
                        continue;
                    }
                    received.insert(partition);
                    let confirmed = &shard.counters.transfers_confirmed;
                    confirmed.set(confirmed.get() + 1);
                    shard.confirm_transfer(partition).await;
                }
                if shard.view().plan() != Some(plan) {
                    break;
                }
            }
            continue;
        }
        let since = *settled_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_millis(shard.config.ownership_drop_delay_ms) {
            continue;
        }
        for partition in shard.engine.partition_ids() {
            if ownership.current().owners(partition).contains(&me) {
                continue;
            }
            // Hand off before dropping: whatever this copy holds that the
            // owners lack (a write only it took, a table that changed
            // under it) reaches every owner first.
            let Some(owners) = shard.peers_of(&view, ownership.current().owners(partition)) else {
                continue;
            };
            match shard.sync_with_all(partition, &owners, true).await {
                None => return,
                Some((compared, true)) if compared == owners.len() && compared > 0 => {}
                Some(_) => continue,
            }
            if shard.view().plan() != Some(plan) {
                break;
            }
            if !shard.drop_partition(partition, plan).await {
                return;
            }
        }
    }
}
