//! Coordination by a fallback, when every primary of a key is unreachable
//! (Dynamo's sloppy quorum taken all the way: the key stays writable and
//! readable on this side of a network partition).
//!
//! The coordinating fallback runs on the shard that keeps the partition's
//! hints. A write makes its version from what this shard's hints hold for
//! the key, stamps it with the hint store's fallback writer id for the
//! partition, keeps it as a hint for the first primary, and sends it to the
//! next fallbacks as hints for the other primaries; every copy is a hint
//! that does not expire, since no primary may have the version. Hinted
//! handoff delivers them once the primaries answer again, where they merge
//! (as siblings of anything written there meanwhile). A read asks the same
//! fallbacks for whatever they hold for the key's primaries.

use std::rc::Rc;

use dynkv_net::Status;
use dynkv_ring::NodeId;

use crate::server::shard::{Op, Outcome, RequestOptions, Shard};
use dynkv::cluster::{GetPlan, PutPlan, Send};

impl Shard {
    /// The primaries whose hints a fallback read of `partition` merges:
    /// `target` and every current primary.
    pub(crate) fn hint_targets(&self, partition: u32, target: NodeId) -> Vec<NodeId> {
        let mut targets: Vec<NodeId> = self.view().primaries(partition).iter().map(|o| o.node).collect();
        if !targets.contains(&target) {
            targets.push(target);
        }
        targets
    }

    /// Runs a client request as the fallback coordinator of its key.
    pub(crate) async fn coordinate_as_fallback(
        self: &Rc<Self>,
        op: Op,
        partition: u32,
        key: &[u8],
        context: &[u8],
        value: &[u8],
        options: RequestOptions,
    ) -> Outcome {
        let view = self.view();
        let primaries: Vec<NodeId> = view.primaries(partition).iter().map(|o| o.node).collect();
        let (Some(&stand_in), Some(pref)) = (primaries.first(), view.preference(partition, |n| self.is_down(n))) else {
            return Outcome::failed(Status::Unavailable, "cluster is forming");
        };
        let fallbacks: Vec<NodeId> = pref
            .fallbacks
            .iter()
            .map(|o| o.node)
            .filter(|node| *node != self.me)
            .collect();
        if options.primary_quorum > 0 {
            // Refused before anything is stored: no primary takes part.
            return Outcome::failed(
                Status::Unavailable,
                format!(
                    "pw/pr = {} counts primaries, and no primary of partition {partition} is reachable",
                    options.primary_quorum
                ),
            );
        }
        let timeout_ms = self.request_timeout(&options).as_millis() as u64;
        self.counters
            .fallback_coordinated
            .set(self.counters.fallback_coordinated.get() + 1);
        match op {
            Op::Get => {
                // The fallbacks a write would use, this node first.
                let mut targets = vec![Send {
                    to: self.me,
                    hint_for: Some(stand_in),
                }];
                targets.extend(fallbacks.iter().zip(&primaries[1..]).map(|(fallback, primary)| Send {
                    to: *fallback,
                    hint_for: Some(*primary),
                }));
                let plan = GetPlan {
                    targets,
                    fallbacks: fallbacks.iter().skip(primaries.len() - 1).copied().collect(),
                    quorum: self.quorum(options.quorum, self.config.r, options.primary_quorum, primaries.len()),
                    timeout_ms,
                };
                self.run_get(plan, partition, key).await
            }
            Op::Put | Op::Delete => {
                let (write_context, sibling) = match self.write_request(op, context, value, &options) {
                    Ok(request) => request,
                    Err(outcome) => return outcome,
                };
                let object = {
                    let _guard = self.key_locks.lock(key).await;
                    let local = match self.hints.read_any(&primaries, partition, key).await {
                        Ok(clock) => clock,
                        Err(message) => return Outcome::failed(Status::Internal, message),
                    };
                    // Right after the read: see `HintStore::fallback_writer`.
                    let writer = match self.hints.fallback_writer(partition, stand_in) {
                        Ok(writer) => writer,
                        Err(message) => return Outcome::failed(Status::Internal, message),
                    };
                    let object = match self.new_version(&local, &write_context, writer, sibling) {
                        Ok(object) => object,
                        Err(outcome) => return outcome,
                    };
                    if let Err(message) = self.hints.store(stand_in, partition, key, &object, true).await {
                        return Outcome::failed(Status::Overloaded, message);
                    }
                    object
                };
                let plan = PutPlan {
                    down: primaries.clone(),
                    quorum: self.quorum(options.quorum, self.config.w, options.primary_quorum, primaries.len()),
                    primaries,
                    fallbacks,
                    coordinator: self.me,
                    stands_in_for: Some(stand_in),
                    replica_timeout_ms: self.config.replica_timeout_ms,
                    timeout_ms,
                };
                self.run_put(plan, partition, key, object).await
            }
            _ => Outcome::failed(Status::BadRequest, format!("{op:?} is not a client request")),
        }
    }
}
