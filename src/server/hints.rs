//! Hinted handoff: versions a fallback holds for a primary that did not
//! answer, kept durably in a second engine per shard, and delivered back
//! once the primary answers again.
//!
//! A hint is stored under `target node id (u64 BE) | key` in the key's
//! partition; its value is `stored (u64 LE) | object`, where `stored` is
//! the Unix time in ms with bit 63 set for a *kept* hint (below). Hints for
//! one target and key merge (DVV sync), so a fallback holds at most one per
//! key and target. Bounds: the store refuses new hints past `hints_max_mib`
//! of live data, and delivery drops hints older than `hint_age_max_ms`;
//! both are counted and logged, and anti-entropy repairs what they carried.
//! A kept hint holds a version written while every primary was
//! unreachable, which no primary may have, so it is never dropped for its
//! age: anti-entropy could not repair it.
//!
//! Delivery runs in a low-share task queue: a pass every
//! `handoff_interval_ms` walks the hints, skips targets that are down, sends
//! each to its primary, and deletes it only after the primary acknowledged
//! it and only if no newer version joined the hint meanwhile. A crash at
//! any point leaves the hint in place, so delivery resumes where it stopped.
//!
//! When every primary of a key is unreachable, a fallback coordinates its
//! writes (`src/server/fallback.rs`) and keeps its copy here, as a hint for
//! the first primary. Such versions need a writer id of their own: a
//! writer's new dot covers all its earlier dots on the key, which is only
//! true while the writer holds them, and a fallback deletes its hints after
//! delivery. So the store hands out a fresh random writer id per partition
//! and forgets it (before deleting) whenever it deletes a hint of that
//! partition holding versions of that writer; a restart forgets them all.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dynkv_engine::Engine;
use dynkv_ring::NodeId;

use crate::server::key_locks::KeyLocks;
use crate::server::shard::{Op, Outcome, RequestOptions, Shard};
use dynkv::object::{decode_object, object_bytes, CLOCK_NODES_MAX, OBJECT_SIBLINGS_MAX};
use dynkv::version::Clock;

/// Counters an operator watches.
#[derive(Default)]
pub(crate) struct HintCounters {
    pub(crate) stored: Cell<u64>,
    pub(crate) delivered: Cell<u64>,
    pub(crate) dropped_full: Cell<u64>,
    pub(crate) expired: Cell<u64>,
}

pub(crate) struct HintStore {
    pub(crate) engine: Engine,
    locks: KeyLocks,
    bytes_max: u64,
    pub(crate) age_max_ms: u64,
    pub(crate) counters: HintCounters,
    /// Where the next delivery pass starts, so hints that keep failing at
    /// the front cannot starve the rest.
    next_partition: Cell<u32>,
    /// Per partition: the primary whose hints hold the versions this shard
    /// coordinated as a fallback, and the writer id it stamped on them.
    fallback_writers: RefCell<HashMap<u32, (NodeId, NodeId)>>,
}

/// One stored hint, as delivery sees it.
pub(crate) struct Hint {
    pub(crate) target: NodeId,
    pub(crate) partition: u32,
    pub(crate) key: Vec<u8>,
    pub(crate) stored_unix_ms: u64,
    /// Never expires (it holds a write no primary may have).
    pub(crate) keep: bool,
    /// The stored bytes (timestamp and object), to tell whether the hint
    /// changed while it was being delivered.
    pub(crate) raw: bytes::Bytes,
}

impl Hint {
    pub(crate) fn object(&self) -> &[u8] {
        &self.raw[8..]
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// Bit 63 of a hint's stored time: the hint is kept whatever its age.
const KEEP_BIT: u64 = 1 << 63;

/// A stored hint value's time (Unix ms) and keep flag.
fn stored_time(value: &[u8]) -> (u64, bool) {
    let stored = u64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
    (stored & !KEEP_BIT, stored & KEEP_BIT != 0)
}

fn hint_key(target: NodeId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&target.0.to_be_bytes());
    out.extend_from_slice(key);
    out
}

impl HintStore {
    pub(crate) fn new(engine: Engine, bytes_max: u64, age_max_ms: u64) -> HintStore {
        HintStore {
            engine,
            locks: KeyLocks::default(),
            bytes_max,
            age_max_ms,
            counters: HintCounters::default(),
            next_partition: Cell::new(0),
            fallback_writers: RefCell::new(HashMap::new()),
        }
    }

    /// Hints pending and their bytes.
    pub(crate) fn pending(&self) -> (u64, u64) {
        let stats = self.engine.stats();
        (stats.keys, stats.live_bytes)
    }

    /// The version held for `target` of `key` (empty if none).
    pub(crate) async fn read(&self, target: NodeId, partition: u32, key: &[u8]) -> Result<Clock, String> {
        Ok(self.read_stored(target, partition, key).await?.0)
    }

    /// [`HintStore::read`], with whether the hint is kept.
    async fn read_stored(&self, target: NodeId, partition: u32, key: &[u8]) -> Result<(Clock, bool), String> {
        match self.engine.get(partition, &hint_key(target, key)).await {
            Ok(Some(record)) if !record.tombstone && record.value.len() >= 8 => {
                let clock = decode_object(&record.value[8..]).map_err(|e| format!("stored hint is corrupt: {e}"))?;
                Ok((clock, stored_time(&record.value).1))
            }
            Ok(_) => Ok((Clock::new(), false)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The merge of the hints for `key` held for any of `targets`: what this
    /// shard, as a fallback, knows of the key.
    pub(crate) async fn read_any(&self, targets: &[NodeId], partition: u32, key: &[u8]) -> Result<Clock, String> {
        let mut merged = Clock::new();
        for target in targets {
            let hint = self.read(*target, partition, key).await?;
            if !hint.is_empty() {
                merged = merged.sync(&hint);
            }
        }
        Ok(merged)
    }

    /// The writer id for a version of `partition` this shard coordinates as
    /// a fallback and keeps in its hint for `target`. Read it after reading
    /// the key's hint (with no await in between): a hint deleted before that
    /// read ended has already retired the id.
    pub(crate) fn fallback_writer(&self, partition: u32, target: NodeId) -> Result<NodeId, String> {
        let mut writers = self.fallback_writers.borrow_mut();
        if let Some((t, writer)) = writers.get(&partition) {
            if *t == target {
                return Ok(*writer);
            }
        }
        let writer = crate::server::actor::random_id()?;
        writers.insert(partition, (target, writer));
        Ok(writer)
    }

    /// Merges `object` into the hint for `target`; `keep` (which sticks)
    /// exempts the hint from expiry. Refused (and counted) when the store is
    /// full.
    pub(crate) async fn store(
        &self,
        target: NodeId,
        partition: u32,
        key: &[u8],
        object: &Clock,
        keep: bool,
    ) -> Result<(), String> {
        let (_, bytes) = self.pending();
        if bytes >= self.bytes_max {
            let dropped = self.counters.dropped_full.get() + 1;
            self.counters.dropped_full.set(dropped);
            if dropped.is_power_of_two() {
                tracing::warn!(
                    %target,
                    "hint store full ({bytes} bytes, limit {}); {dropped} hints refused so far",
                    self.bytes_max
                );
            }
            return Err(format!("hint store full ({bytes} bytes)"));
        }
        let hkey = hint_key(target, key);
        let _guard = self.locks.lock(&hkey).await;
        let (held, kept) = self.read_stored(target, partition, key).await?;
        let merged = held.sync(object);
        if !merged.fits(CLOCK_NODES_MAX, OBJECT_SIBLINGS_MAX) {
            return Err(format!(
                "the hint would hold {} siblings, past the limit {OBJECT_SIBLINGS_MAX}",
                merged.sibling_count()
            ));
        }
        let mut value = Vec::with_capacity(8 + 64);
        let stored = if keep || kept { unix_ms() | KEEP_BIT } else { unix_ms() };
        value.extend_from_slice(&stored.to_le_bytes());
        value.extend_from_slice(&object_bytes(&merged));
        let staged = self
            .engine
            .put_staged(partition, &hkey, &value)
            .await
            .map_err(|e| e.to_string())?;
        drop(_guard);
        self.engine.wait_staged(staged).await.map_err(|e| e.to_string())?;
        self.counters.stored.set(self.counters.stored.get() + 1);
        Ok(())
    }

    /// Up to `max` hints, skipping those for targets `skip` names. Each call
    /// starts at the partition after where the last one stopped.
    pub(crate) async fn batch(&self, max: usize, skip: impl Fn(NodeId) -> bool) -> Vec<Hint> {
        let mut hints = Vec::new();
        let mut partitions = self.engine.partition_ids();
        partitions.sort_unstable();
        let start = partitions.partition_point(|p| *p < self.next_partition.get());
        partitions.rotate_left(start);
        for partition in partitions {
            self.next_partition.set(partition.wrapping_add(1));
            for info in self.engine.partition_keys(partition) {
                if hints.len() >= max {
                    return hints;
                }
                if info.tombstone || info.key.len() < 8 {
                    continue;
                }
                if skip(NodeId(u64::from_be_bytes(info.key[..8].try_into().expect("8 bytes")))) {
                    continue;
                }
                let Ok(Some(record)) = self.engine.get(partition, &info.key).await else {
                    continue;
                };
                if record.tombstone || record.value.len() < 8 {
                    continue;
                }
                hints.push(Hint {
                    target: NodeId(u64::from_be_bytes(info.key[..8].try_into().expect("8 bytes"))),
                    partition,
                    key: info.key[8..].to_vec(),
                    stored_unix_ms: stored_time(&record.value).0,
                    keep: stored_time(&record.value).1,
                    raw: record.value,
                });
            }
        }
        hints
    }

    /// Deletes `hint` unless it changed since it was read. Returns whether
    /// it was deleted.
    pub(crate) async fn remove_if_unchanged(&self, hint: &Hint) -> Result<bool, String> {
        let hkey = hint_key(hint.target, &hint.key);
        let _guard = self.locks.lock(&hkey).await;
        match self.engine.get(hint.partition, &hkey).await {
            Ok(Some(record)) if !record.tombstone && record.value == hint.raw => {}
            Ok(_) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        }
        // Before the delete: a fallback write that reads the key after it
        // must not continue a writer id whose versions it no longer holds.
        // A hint without that writer's versions loses none of them, and
        // keeping the id then keeps clocks from growing an entry per
        // delivery.
        let retire = self
            .fallback_writers
            .borrow()
            .get(&hint.partition)
            .is_some_and(|(_, writer)| decode_object(hint.object()).map_or(true, |c| c.context().get(*writer) > 0));
        if retire {
            self.fallback_writers.borrow_mut().remove(&hint.partition);
        }
        let seq = self
            .engine
            .delete(hint.partition, &hkey, &[])
            .await
            .map_err(|e| e.to_string())?;
        // A hint's tombstone protects nothing: a hint that came back would
        // only be delivered again, and delivery is idempotent.
        self.engine.reap_tombstone(hint.partition, &hkey, seq);
        Ok(true)
    }
}

/// Hints one delivery pass takes at most.
const HANDOFF_BATCH_MAX: usize = 1024;

/// Delivers hints until shutdown; run it in a low-share task queue.
pub(crate) async fn handoff_loop(shard: Rc<Shard>) {
    let pause = Duration::from_micros(1_000_000 / shard.config.handoff_per_second_max.max(1));
    let interval = Duration::from_millis(shard.config.handoff_interval_ms);
    loop {
        if shard.stopping.sleep(interval).await {
            return;
        }
        let batch = shard
            .hints
            .batch(HANDOFF_BATCH_MAX, |target| shard.is_down(target))
            .await;
        for hint in batch {
            if crate::server::shutdown::requested() {
                return;
            }
            deliver(&shard, &hint).await;
            glommio::timer::sleep(pause).await;
        }
    }
}

/// Delivers (or expires) one hint. Returns false if its target failed.
async fn deliver(shard: &Rc<Shard>, hint: &Hint) -> bool {
    let hints = &shard.hints;
    let age_ms = unix_ms().saturating_sub(hint.stored_unix_ms);
    if age_ms > hints.age_max_ms && !hint.keep {
        if let Ok(true) = hints.remove_if_unchanged(hint).await {
            let expired = hints.counters.expired.get() + 1;
            hints.counters.expired.set(expired);
            tracing::warn!(
                target_node = %hint.target,
                "dropped a hint {age_ms} ms old (hint_age_max_ms = {}); {expired} expired so far",
                hints.age_max_ms
            );
        }
        return true;
    }
    let view = shard.view();
    let primaries: Vec<NodeId> = view.primaries(hint.partition).iter().map(|o| o.node).collect();
    let incoming = view.incoming(hint.partition).iter().any(|o| o.node == hint.target);
    // Normally the hint goes to the replica it names (a primary, or one
    // receiving the partition during an ownership change). If ownership
    // moved away from that node, every current primary gets it.
    let targets = if primaries.is_empty() || primaries.contains(&hint.target) || incoming {
        vec![hint.target]
    } else {
        primaries
    };
    for target in targets {
        let delivered = if target == shard.me {
            // This node's owning shard (perhaps another one) merges it.
            let outcome = shard
                .execute(Op::ReplicaPut, &hint.key, &[], hint.object(), RequestOptions::default())
                .await;
            matches!(outcome, Outcome::Done)
        } else {
            let send = dynkv::cluster::Send {
                to: target,
                hint_for: None,
            };
            shard
                .replica_put(send, hint.partition, &hint.key, hint.object())
                .await
                .1
        };
        if !delivered {
            return false;
        }
    }
    match hints.remove_if_unchanged(hint).await {
        Ok(true) => hints.counters.delivered.set(hints.counters.delivered.get() + 1),
        // A newer version joined the hint; the next pass sends it.
        Ok(false) => {}
        Err(err) => tracing::warn!("cannot delete a delivered hint: {err}"),
    }
    true
}
