//! The replica side of internode traffic on the engine: store an incoming
//! version by merging it with what is held (under the key's lock, so two
//! merges never start from the same stale read), or read what is held. A
//! message naming a primary (`hint_for`) goes to the hint store instead.

use dynkv_net::Status;

use crate::server::shard::{engine_failure, Op, Outcome, RequestOptions, Shard};
use dynkv::cluster::replica::absorb;
use dynkv::object::{decode_object, object_bytes, CLOCK_NODES_MAX, OBJECT_SIBLINGS_MAX};
use dynkv::version::Clock;

impl Shard {
    /// Serves a replica message on this shard.
    pub(crate) async fn replica_local(
        &self,
        op: Op,
        partition: u32,
        key: &[u8],
        value: &[u8],
        options: RequestOptions,
    ) -> Outcome {
        match (op, options.hint_for) {
            (Op::ReplicaGet, None) => match self.read_local(partition, key).await {
                Ok(clock) => Outcome::Object(clock),
                Err(outcome) => outcome,
            },
            // Everything held for the key's primaries: a fallback round's
            // copies are spread over them in whatever order its coordinator
            // saw the fallbacks.
            (Op::ReplicaGet, Some(target)) => match self
                .hints
                .read_any(&self.hint_targets(partition, target), partition, key)
                .await
            {
                Ok(clock) => Outcome::Object(clock),
                Err(message) => Outcome::failed(Status::Internal, message),
            },
            (Op::ReplicaPut, hint_for) => {
                let incoming = match decode_object(value) {
                    Ok(clock) => clock,
                    Err(err) => return Outcome::failed(Status::BadRequest, format!("bad object: {err}")),
                };
                match hint_for {
                    None => self.absorb_local(partition, key, &incoming).await,
                    Some(target) => match self
                        .hints
                        .store(target, partition, key, &incoming, options.as_fallback)
                        .await
                    {
                        Ok(()) => Outcome::Done,
                        Err(message) => Outcome::failed(Status::Overloaded, message),
                    },
                }
            }
            _ => Outcome::failed(Status::BadRequest, format!("{op:?} is not a replica message")),
        }
    }

    /// Refuses (and logs) a merged version past the codec's bounds, which
    /// only diverged replicas with many large siblings can reach.
    pub(crate) fn check_object(&self, object: &Clock) -> Result<(), Outcome> {
        if object.fits(CLOCK_NODES_MAX, OBJECT_SIBLINGS_MAX) {
            return Ok(());
        }
        let message = format!(
            "a merged version would hold {} siblings from {} writers, past the limits ({OBJECT_SIBLINGS_MAX}, \
             {CLOCK_NODES_MAX}); read the key and write it back with the context to resolve its siblings",
            object.sibling_count(),
            object.node_count()
        );
        tracing::warn!("{message}");
        Err(Outcome::failed(Status::TooManySiblings, message))
    }

    /// Merges `incoming` into this shard's version of `key`; durable (per
    /// the sync mode) when it returns `Done`.
    pub(crate) async fn absorb_local(&self, partition: u32, key: &[u8], incoming: &Clock) -> Outcome {
        let guard = self.key_locks.lock(key).await;
        let local = match self.read_local(partition, key).await {
            Ok(clock) => clock,
            // A stored version that cannot be read back is lost either way;
            // the incoming one (from a replica, a repair or anti-entropy)
            // takes its place, which is how such a key heals.
            Err(Outcome::Failed(Status::Internal, message)) => {
                tracing::warn!(partition, "replacing an unreadable stored version: {message}");
                Clock::new()
            }
            Err(outcome) => return outcome,
        };
        let merged = absorb(&local, incoming);
        if let Some(merged) = &merged {
            if let Err(outcome) = self.check_object(merged) {
                return outcome;
            }
        }
        let Some(merged) = merged else {
            drop(guard);
            // Already known, but perhaps only staged by a write still
            // waiting for its sync: the ack must not promise more than disk.
            if self.sync_always {
                if let Err(err) = self.engine.sync().await {
                    return engine_failure(err);
                }
            }
            return Outcome::Done;
        };
        let bytes = object_bytes(&merged);
        let staged = match self
            .engine
            .put_staged_marked(partition, key, &bytes, merged.is_deleted())
            .await
        {
            Ok(staged) => staged,
            Err(err) => return engine_failure(err),
        };
        drop(guard);
        match self.engine.wait_staged(staged).await {
            Ok(_) => Outcome::Done,
            Err(err) => engine_failure(err),
        }
    }
}
