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
//! shard drops what it holds of partitions it does not own.
//!
//! Everything here runs in the low-share background queue and is
//! throttled by `transfer_keys_per_second_max`.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynkv_ring::{Lifecycle, NodeId, Owner};

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
        self.counters
            .transfers_confirmed
            .set(self.counters.transfers_confirmed.get() + 1);
        match &self.members {
            Some(members) => members.confirm(partition),
            None => {
                let _ = self.senders.send_to(0, ShardMsg::Confirm(partition)).await;
            }
        }
    }

    /// Copies `partition` from its live current owners (another shard of
    /// this node among them, when the partition moves between shards);
    /// true if every key they hold differently was merged, `None` at
    /// shutdown.
    async fn receive_partition(&self, view: &ClusterView, partition: u32) -> Option<bool> {
        let gone = |node: NodeId| view.membership.get(node).is_none_or(|r| r.lifecycle == Lifecycle::Left);
        let sources: Vec<Peer> = view
            .primaries(partition)
            .iter()
            .filter(|o| !gone(o.node))
            .map(|o| match o.node == self.me {
                true => Peer::Shard(o.shard),
                false => Peer::Node(o.node),
            })
            .collect();
        if sources.is_empty() {
            tracing::warn!(
                partition,
                "every current owner of this partition is gone: it starts empty here"
            );
            return Some(true);
        }
        let live: Vec<Peer> = sources
            .into_iter()
            .filter(|p| !matches!(p, Peer::Node(n) if self.is_down(*n)))
            .collect();
        if live.is_empty() {
            return Some(false);
        }
        let mut complete = true;
        for source in live {
            let rate = self.config.transfer_keys_per_second_max;
            match self.sync_partition(partition, source, rate).await {
                Ok(report) => {
                    let c = &self.counters.transfer_keys;
                    c.set(c.get() + report.repaired);
                    complete &= report.failed == 0;
                }
                Err(_) if crate::server::shutdown::requested() => return None,
                Err(err) => {
                    tracing::debug!(partition, %source, "transfer stopped: {err}");
                    complete = false;
                }
            }
        }
        Some(complete)
    }

    /// Drops this shard's copy of `partition`; false at shutdown.
    async fn drop_partition(&self, partition: u32) -> bool {
        let keys = self.engine.partition_keys(partition);
        let mut dropped = 0u64;
        for batch in keys.chunks(DROP_BATCH) {
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

/// Receives incoming partitions and drops moved ones until shutdown; run it
/// in a low-share task queue.
pub(crate) async fn transfer_loop(shard: Rc<Shard>) {
    // Partitions received under the pending table of an epoch.
    let mut received: BTreeSet<(u64, u32)> = BTreeSet::new();
    let mut settled_since: Option<(u64, Instant)> = None;
    let me = Owner {
        node: shard.me,
        shard: shard.id as u16,
    };
    loop {
        if shard.stopping.sleep(Duration::from_millis(PASS_PAUSE_MS)).await {
            return;
        }
        let view = shard.view();
        let Some(ownership) = &view.ownership else {
            continue;
        };
        let epoch = ownership.epoch();
        if ownership.pending().is_some() {
            settled_since = None;
            received.retain(|(e, _)| *e == epoch);
            for partition in 0..shard.q.get() {
                let wanted = ownership.incoming(partition).any(|o| o == me)
                    && !ownership.is_confirmed(partition, shard.me)
                    && !received.contains(&(epoch, partition));
                if !wanted {
                    continue;
                }
                match shard.receive_partition(&view, partition).await {
                    None => return,
                    Some(false) => {}
                    Some(true) => {
                        received.insert((epoch, partition));
                        shard.confirm_transfer(partition).await;
                    }
                }
                if shard.view().epoch() != epoch {
                    break;
                }
            }
            continue;
        }
        received.clear();
        let since = match settled_since {
            Some((e, since)) if e == epoch => since,
            _ => {
                settled_since = Some((epoch, Instant::now()));
                continue;
            }
        };
        if since.elapsed() < Duration::from_millis(shard.config.ownership_drop_delay_ms) {
            continue;
        }
        let table = ownership.current();
        for partition in shard.engine.partition_ids() {
            if table.owners(partition).contains(&me) {
                continue;
            }
            if shard.view().epoch() != epoch {
                break;
            }
            if !shard.drop_partition(partition).await {
                return;
            }
        }
    }
}
