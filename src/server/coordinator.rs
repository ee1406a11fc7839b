//! The coordinator's I/O: runs [`PutRound`] and [`GetRound`] against the
//! engine and the internode links.
//!
//! A put makes the new version under the key's lock, stores it locally,
//! then sends it to the other replicas; the client is answered as soon as
//! the round has its quorum, while the round goes on in the background
//! until every copy is placed (on a primary, or on a fallback as a hint).
//! A get asks the healthy replicas (itself included), answers at R, and
//! afterwards writes the merged version to every replica that answered
//! with less (read repair).

use std::rc::Rc;
use std::time::Duration;

use dynkv_engine::Staged;
use dynkv_net::{Head, Opcode, Status, FLAG_FALLBACK};
use dynkv_ring::{NodeId, Owner};
use futures::channel::oneshot;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::server::hints::unix_ms;
use crate::server::shard::{engine_failure, Op, Outcome, RequestOptions, Shard};
use dynkv::cluster::replica::{coordinate, WriteContext};
use dynkv::cluster::{GetPlan, GetRound, PutPlan, PutRound, Quorum, QuorumError, Send};
use dynkv::object::{decode_object, encode_superseding, encoded_len, object_bytes, ObjectView};
use dynkv::version::{Clock, Sibling, VersionError};

/// A write staged at once: done (and, under `sync=always`, to wait for),
/// or why not.
fn staged_outcome(staged: dynkv_engine::Result<Staged>) -> (Outcome, Option<Staged>) {
    match staged {
        Ok(staged) => (Outcome::Done, Some(staged)),
        Err(err) => (engine_failure(err), None),
    }
}

fn quorum_failure(err: QuorumError) -> Outcome {
    let status = match err {
        QuorumError::Timeout { .. } => Status::Timeout,
        QuorumError::Unavailable { .. } => Status::Unavailable,
    };
    Outcome::failed(status, err.to_string())
}

fn version_failure(err: VersionError) -> Outcome {
    let status = match err {
        VersionError::TooManySiblings { .. } => Status::TooManySiblings,
        VersionError::ContextTooLarge { .. } => Status::ContextTooLarge,
        VersionError::CounterExhausted { .. } => Status::BadRequest,
    };
    Outcome::failed(status, err.to_string())
}

impl Shard {
    /// The quorum for a request: the asked-for (or default) count, capped
    /// by the replicas the partition has.
    pub(crate) fn quorum(&self, asked: u8, default: usize, primary: u8, replicas: usize) -> Quorum {
        let total = if asked == 0 { default } else { usize::from(asked) };
        let total = total.clamp(1, replicas.max(1));
        Quorum {
            total,
            primaries: usize::from(primary).min(total),
        }
    }

    /// Runs a client request on this shard, which owns `partition` on a
    /// primary node.
    pub(crate) async fn coordinate(
        self: &Rc<Self>,
        op: Op,
        partition: u32,
        key: &[u8],
        context: &[u8],
        value: &[u8],
        options: RequestOptions,
    ) -> Outcome {
        match op {
            Op::Get => self.coordinate_get(partition, key, options).await,
            Op::Put | Op::Delete => match self.write_request(op, context, value, &options) {
                Ok((write_context, sibling)) => {
                    self.coordinate_put(partition, key, write_context, sibling, options)
                        .await
                }
                Err(outcome) => outcome,
            },
            Op::Stats | Op::ReplicaGet | Op::ReplicaPut | Op::Merkle | Op::Admin => unreachable!("routed elsewhere"),
        }
    }

    /// What a client's put or delete asks for: the versions it supersedes,
    /// and the new sibling.
    pub(crate) fn write_request(
        &self,
        op: Op,
        context: &[u8],
        value: &[u8],
        options: &RequestOptions,
    ) -> Result<(WriteContext, Sibling), Outcome> {
        if op == Op::Put && value.len() > self.config.value_max_bytes {
            let message = format!("value of {} bytes exceeds {}", value.len(), self.config.value_max_bytes);
            return Err(Outcome::failed(Status::ValueTooLarge, message));
        }
        let write_context = match self.seal.open(context) {
            Err(message) => return Err(Outcome::failed(Status::BadRequest, message)),
            Ok(_) if options.supersede_local => WriteContext::Local,
            Ok(Some(vv)) => WriteContext::Given(vv),
            // A delete without a context removes what the coordinator
            // holds; a blind put is concurrent.
            Ok(None) if op == Op::Delete => WriteContext::Local,
            Ok(None) => WriteContext::Blind,
        };
        let sibling = Sibling {
            timestamp_ms: unix_ms(),
            value: (op == Op::Put).then(|| bytes::Bytes::copy_from_slice(value)),
        };
        Ok((write_context, sibling))
    }

    /// The coordinator's new version of a key from what it holds (`local`),
    /// written as `writer`, or why the client cannot have it.
    pub(crate) fn new_version(
        &self,
        local: &Clock,
        context: &WriteContext,
        writer: NodeId,
        sibling: Sibling,
    ) -> Result<Clock, Outcome> {
        let object = coordinate(local, context, writer, sibling, self.limits).map_err(version_failure)?;
        // Half the stored limit, so that the merge of two replicas'
        // diverged versions still fits.
        let limit = self.config.object_max_bytes() / 2;
        let bytes = encoded_len(&object);
        if bytes > limit {
            let message = format!(
                "the key's {} siblings with this value take {bytes} bytes, more than {limit}; read the key and \
                 write back with its context to resolve them",
                object.sibling_count(),
            );
            return Err(Outcome::failed(Status::ValueTooLarge, message));
        }
        Ok(object)
    }

    /// A client's put or delete done at once, without a future, when it
    /// can be: this shard is the key's only replica, the key is free, its
    /// stored version is in memory and the log has room. Then it is exactly
    /// what `coordinate_put` would do, except for the wait for durability:
    /// under `sync=always` the write is folded into `durable`, and the
    /// caller must wait for it (`Engine::wait_staged`) before it answers.
    /// `None` (nothing was written) sends the request the usual way.
    /// Counted like `execute`; the caller stamps the latency.
    pub(crate) fn write_now(
        &self,
        op: Op,
        key: &[u8],
        sections: (&[u8], &[u8]),
        options: &RequestOptions,
        durable: &mut Option<Staged>,
    ) -> Option<Outcome> {
        if options.hint_for.is_some() {
            return None;
        }
        let partition = self.sole_replica_of(key)?;
        let (context, value) = sections;
        // An overwrite (or a delete) without a context needs no clock.
        let superseding = context.is_empty() && (options.supersede_local || op == Op::Delete);
        let fast = superseding
            .then(|| self.supersede_now(op, partition, key, value))
            .flatten();
        let (outcome, staged) = match fast {
            Some(done) => done,
            // In the order `coordinate` checks: the request itself first.
            None => match self.write_request(op, context, value, options) {
                Ok((write_context, sibling)) => self.put_now(partition, key, write_context, sibling)?,
                Err(outcome) => (outcome, None),
            },
        };
        if let Some(staged) = staged.filter(|_| !self.engine.acknowledges_when_staged()) {
            *durable = Some(durable.map_or(staged, |d| d.later(staged)));
        }
        self.counters.record_in_batch(op, &outcome);
        Some(outcome)
    }

    /// `put_now` of a write that supersedes everything this shard holds for
    /// the key (`WriteContext::Local`), encoded from the stored object in
    /// place (`encode_superseding`): no clock is decoded or built. `None`,
    /// with nothing written, whenever the general path must decide: a limit
    /// or error to report, the stored object not in memory, the log full.
    fn supersede_now(&self, op: Op, partition: u32, key: &[u8], value: &[u8]) -> Option<(Outcome, Option<Staged>)> {
        let value = match op {
            Op::Put if value.len() <= self.config.value_max_bytes => Some(value),
            Op::Delete => None,
            _ => return None,
        };
        let _guard = self.key_locks.try_lock(key)?;
        let timestamp_ms = unix_ms();
        let mut object = Vec::new();
        let encoded = self.engine.peek_now(partition, key, |stored| {
            let local = match stored {
                None => None,
                Some(bytes) => Some(ObjectView::parse(bytes).ok()?),
            };
            object.reserve(local.map_or(0, |v| v.context_len()) + value.map_or(0, <[u8]>::len) + 64);
            encode_superseding(local, self.actor, timestamp_ms, value, &self.limits, &mut object)
        });
        match encoded {
            Ok(Some(Some(()))) => {}
            Ok(_) => return None,
            Err(err) => return Some((engine_failure(err), None)),
        }
        // Half the stored limit, as `new_version` checks.
        if object.len() > self.config.object_max_bytes() / 2 {
            return None;
        }
        let staged = self
            .engine
            .put_staged_marked_now(partition, key, &object, value.is_none())?;
        Some(staged_outcome(staged))
    }

    /// `coordinate_put` on this shard alone, if nothing makes it wait.
    fn put_now(
        &self,
        partition: u32,
        key: &[u8],
        context: WriteContext,
        sibling: Sibling,
    ) -> Option<(Outcome, Option<Staged>)> {
        let _guard = self.key_locks.try_lock(key)?;
        let local = match self.stored_version_now(partition, key)? {
            Ok(clock) => clock,
            Err(outcome) => return Some((outcome, None)),
        };
        let object = match self.new_version(&local, &context, self.actor, sibling) {
            Ok(object) => object,
            Err(outcome) => return Some((outcome, None)),
        };
        let bytes = object_bytes(&object);
        let staged = self
            .engine
            .put_staged_marked_now(partition, key, &bytes, object.is_deleted())?;
        Some(staged_outcome(staged))
    }

    async fn coordinate_put(
        self: &Rc<Self>,
        partition: u32,
        key: &[u8],
        context: WriteContext,
        sibling: Sibling,
        options: RequestOptions,
    ) -> Outcome {
        let object = {
            let guard = self.key_locks.lock(key).await;
            let local = match self.read_local(partition, key).await {
                Ok(clock) => clock,
                Err(outcome) => return outcome,
            };
            let object = match self.new_version(&local, &context, self.actor, sibling) {
                Ok(object) => object,
                Err(outcome) => return outcome,
            };
            let bytes = object_bytes(&object);
            let staged = match self
                .engine
                .put_staged_marked(partition, key, &bytes, object.is_deleted())
                .await
            {
                Ok(staged) => staged,
                Err(err) => return engine_failure(err),
            };
            drop(guard);
            if let Err(err) = self.engine.wait_staged(staged).await {
                return engine_failure(err);
            }
            object
        };
        let view = self.view();
        let incoming = view.incoming(partition);
        if !incoming.is_empty() {
            match self.incoming_copies.try_acquire_static_permit(1) {
                Ok(permit) => {
                    let (shard, key, object) = (self.clone(), key.to_vec(), object.clone());
                    glommio::spawn_local(async move {
                        shard.copy_to_incoming(partition, &key, &object, &incoming).await;
                        drop(permit);
                    })
                    .detach();
                }
                // Too many copies in flight: hints, which handoff delivers
                // (a shard of this node gets the copy over the mesh).
                Err(_) => {
                    for owner in &incoming {
                        if owner.node == self.me {
                            let (op, options) = (Op::ReplicaPut, RequestOptions::default());
                            let bytes = object_bytes(&object);
                            let _ = self
                                .forward(usize::from(owner.shard), op, key, &[], &bytes, options)
                                .await;
                        } else {
                            let _ = self.hints.store(owner.node, partition, key, &object, false).await;
                        }
                    }
                }
            }
        }
        if view.primaries(partition).len() == 1 {
            // The only replica: the local write was the whole round.
            return Outcome::Done;
        }
        let Some(pref) = view.preference(partition, |n| self.is_down(n)) else {
            return Outcome::failed(Status::Unavailable, "cluster is forming");
        };
        let primaries: Vec<NodeId> = pref.primaries.iter().map(|o| o.node).collect();
        let plan = PutPlan {
            down: primaries.iter().copied().filter(|n| self.is_down(*n)).collect(),
            fallbacks: pref.fallbacks.iter().map(|o| o.node).collect(),
            quorum: self.quorum(options.quorum, self.config.w, options.primary_quorum, primaries.len()),
            primaries,
            coordinator: self.me,
            stands_in_for: None,
            replica_timeout_ms: self.config.replica_timeout_ms,
            timeout_ms: self.request_timeout(&options).as_millis() as u64,
        };
        self.run_put(plan, partition, key, object).await
    }

    /// Runs a put round (in a task of its own, which goes on placing copies
    /// after the client is answered) and returns the client's answer.
    pub(crate) async fn run_put(self: &Rc<Self>, plan: PutPlan, partition: u32, key: &[u8], object: Clock) -> Outcome {
        let (answer, outcome) = oneshot::channel();
        let shard = self.clone();
        let key = key.to_vec();
        glommio::spawn_local(async move { shard.drive_put(plan, partition, key, object, answer).await }).detach();
        match outcome.await {
            Ok(Ok(())) => Outcome::Done,
            Ok(Err(err)) => quorum_failure(err),
            Err(_) => Outcome::failed(Status::ShuttingDown, "the write's round was dropped"),
        }
    }

    /// The next reply of a round's calls, waiting at most `left_ms` (the
    /// round's deadline). Every call carries its own timeout of
    /// `replica_timeout_ms`, so a timer is armed only when the deadline
    /// comes first: most requests never create one. `Some(None)`: nothing
    /// is in flight (then this waits out the deadline); `None`: the
    /// deadline passed.
    async fn next_reply<T>(
        &self,
        inflight: &mut FuturesUnordered<impl std::future::Future<Output = T>>,
        left_ms: u64,
    ) -> Option<Option<T>> {
        if inflight.is_empty() {
            glommio::timer::sleep(Duration::from_millis(left_ms)).await;
            return Some(None);
        }
        if left_ms > self.config.replica_timeout_ms {
            return Some(inflight.next().await);
        }
        glommio::timer::timeout(Duration::from_millis(left_ms), async { Ok(inflight.next().await) })
            .await
            .ok()
    }

    /// Runs a put round to its end, answering `answer` when it decides.
    async fn drive_put(
        self: Rc<Self>,
        plan: PutPlan,
        partition: u32,
        key: Vec<u8>,
        object: Clock,
        answer: oneshot::Sender<Result<(), QuorumError>>,
    ) {
        let bytes = object_bytes(&object);
        // A fallback's round: no primary may get this version for a while,
        // so every copy is a hint that must not expire.
        let fallback_round = plan.stands_in_for.is_some();
        let flags = if fallback_round { FLAG_FALLBACK } else { 0 };
        let (mut round, sends) = PutRound::start(&plan, self.now_ms());
        let mut answer = Some(answer);
        let mut inflight = FuturesUnordered::new();
        for send in sends {
            inflight.push(self.replica_put_flagged(send, partition, &key, &bytes, flags));
        }
        loop {
            if let Some(outcome) = round.poll_outcome() {
                if let Some(answer) = answer.take() {
                    let _ = answer.send(outcome);
                }
            }
            let now = self.now_ms();
            if round.is_finished(now) {
                break;
            }
            let sends = match self
                .next_reply(&mut inflight, round.deadline_ms().saturating_sub(now))
                .await
            {
                Some(Some((node, ok))) => round.handle_reply(node, ok, self.now_ms()),
                // Nothing in flight can answer any more, or the deadline
                // came first.
                Some(None) | None => round.handle_tick(self.now_ms()),
            };
            for send in sends {
                inflight.push(self.replica_put_flagged(send, partition, &key, &bytes, flags));
            }
        }
        drop(inflight);
        for primary in round.unplaced() {
            // Refusal (a full store) is counted and logged by the store;
            // anti-entropy repairs what a lost hint carried.
            let _ = self
                .hints
                .store(primary, partition, &key, &object, fallback_round)
                .await;
        }
    }

    /// Sends a new version to the replicas receiving `partition` during an
    /// ownership change, so that they miss no write made while they copy
    /// it: a replica on another node that does not take it gets a hint.
    /// Their acks do not count toward W, since reads do not ask them yet.
    async fn copy_to_incoming(&self, partition: u32, key: &[u8], object: &Clock, incoming: &[Owner]) {
        let bytes = object_bytes(object);
        for owner in incoming {
            if owner.node == self.me {
                let options = RequestOptions::default();
                let op = Op::ReplicaPut;
                let _ = self
                    .forward(usize::from(owner.shard), op, key, &[], &bytes, options)
                    .await;
                continue;
            }
            let head = Head {
                timeout_ms: self.config.replica_timeout_ms as u32,
                ..Head::request(Opcode::ReplicaPut, 0)
            };
            let addr = self.view().internode_addr(owner.node, owner.shard);
            let timeout = Duration::from_millis(self.config.replica_timeout_ms);
            let stored = self
                .links
                .call(owner.node, owner.shard, addr, head, (key, &[], &bytes), timeout)
                .await
                .is_ok_and(|r| r.status == Status::Ok as u8);
            if !stored {
                let _ = self.hints.store(owner.node, partition, key, object, false).await;
            }
        }
    }

    /// Sends a version to one replica (or fallback); true if it stored it.
    pub(crate) async fn replica_put(&self, send: Send, partition: u32, key: &[u8], object: &[u8]) -> (NodeId, bool) {
        self.replica_put_flagged(send, partition, key, object, 0).await
    }

    /// [`Shard::replica_put`] with header flags.
    async fn replica_put_flagged(
        &self,
        send: Send,
        partition: u32,
        key: &[u8],
        object: &[u8],
        flags: u8,
    ) -> (NodeId, bool) {
        let ok = self
            .call_replica_flagged(Opcode::ReplicaPut, send, partition, key, object, flags)
            .await
            .is_ok_and(|r| r.status == Status::Ok as u8);
        (send.to, ok)
    }

    /// Sends a replica message to `send.to`'s shard for `partition` over
    /// its link; the context section names the primary a hint is for.
    pub(crate) async fn call_replica(
        &self,
        opcode: Opcode,
        send: Send,
        partition: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<dynkv_net::Response, crate::server::link::LinkError> {
        self.call_replica_flagged(opcode, send, partition, key, value, 0).await
    }

    /// [`Shard::call_replica`] with header flags (`FLAG_BACKGROUND` for
    /// anti-entropy and transfers).
    pub(crate) async fn call_replica_flagged(
        &self,
        opcode: Opcode,
        send: Send,
        partition: u32,
        key: &[u8],
        value: &[u8],
        flags: u8,
    ) -> Result<dynkv_net::Response, crate::server::link::LinkError> {
        let hint = send.hint_for.map(|p| p.0.to_le_bytes());
        let head = Head {
            flags,
            timeout_ms: self.config.replica_timeout_ms as u32,
            ..Head::request(opcode, 0)
        };
        let view = self.view();
        let shard = view.shard_of(send.to, partition);
        let timeout = Duration::from_millis(self.config.replica_timeout_ms);
        let sections = (key, hint.as_ref().map_or(&[][..], |h| &h[..]), value);
        self.links
            .call(
                send.to,
                shard,
                view.internode_addr(send.to, shard),
                head,
                sections,
                timeout,
            )
            .await
    }

    async fn coordinate_get(self: &Rc<Self>, partition: u32, key: &[u8], options: RequestOptions) -> Outcome {
        let view = self.view();
        if view.primaries(partition).len() == 1 {
            // The only replica is this shard: no round, no repair.
            return match self.read_local(partition, key).await {
                Ok(clock) => Outcome::Object(clock),
                Err(outcome) => outcome,
            };
        }
        let Some(pref) = view.preference(partition, |n| self.is_down(n)) else {
            return Outcome::failed(Status::Unavailable, "cluster is forming");
        };
        let mut fallbacks = pref.fallbacks.iter().map(|o| o.node);
        let mut targets = Vec::with_capacity(pref.primaries.len());
        for primary in &pref.primaries {
            if primary.node == self.me || !self.is_down(primary.node) {
                targets.push(Send {
                    to: primary.node,
                    hint_for: None,
                });
            } else if let Some(fallback) = fallbacks.next() {
                targets.push(Send {
                    to: fallback,
                    hint_for: Some(primary.node),
                });
            }
        }
        let plan = GetPlan {
            targets,
            fallbacks: fallbacks.collect(),
            quorum: self.quorum(
                options.quorum,
                self.config.r,
                options.primary_quorum,
                pref.primaries.len(),
            ),
            timeout_ms: self.request_timeout(&options).as_millis() as u64,
        };
        self.run_get(plan, partition, key).await
    }

    /// Runs a get round (in a task of its own, which goes on to read repair
    /// after the client is answered) and returns the client's answer.
    pub(crate) async fn run_get(self: &Rc<Self>, plan: GetPlan, partition: u32, key: &[u8]) -> Outcome {
        let (answer, outcome) = oneshot::channel();
        let shard = self.clone();
        let key = key.to_vec();
        glommio::spawn_local(async move { shard.drive_get(plan, partition, key, answer).await }).detach();
        match outcome.await {
            Ok(Ok(clock)) => Outcome::Object(clock),
            Ok(Err(err)) => quorum_failure(err),
            Err(_) => Outcome::failed(Status::ShuttingDown, "the read's round was dropped"),
        }
    }

    async fn drive_get(
        self: Rc<Self>,
        plan: GetPlan,
        partition: u32,
        key: Vec<u8>,
        answer: oneshot::Sender<Result<Clock, QuorumError>>,
    ) {
        let (mut round, sends) = GetRound::start(&plan, self.now_ms());
        let mut answer = Some(answer);
        let mut inflight = FuturesUnordered::new();
        for send in sends {
            inflight.push(self.replica_get(send, partition, &key));
        }
        loop {
            if let Some(outcome) = round.poll_outcome() {
                if let Some(answer) = answer.take() {
                    let _ = answer.send(outcome);
                }
            }
            if round.is_finished(self.now_ms()) {
                break;
            }
            let left_ms = round.next_timeout_ms().saturating_sub(self.now_ms());
            match self.next_reply(&mut inflight, left_ms).await {
                Some(Some((node, reply))) => {
                    if let Some(send) = round.handle_reply(node, reply, self.now_ms()) {
                        inflight.push(self.replica_get(send, partition, &key));
                    }
                }
                Some(None) | None => round.handle_tick(self.now_ms()),
            }
        }
        let repairs = round.repairs_except_absent(self.reapable(round.merged()));
        if repairs.is_empty() {
            return;
        }
        let bytes = object_bytes(round.merged());
        for send in repairs {
            self.counters.read_repairs.set(self.counters.read_repairs.get() + 1);
            if send.to == self.me {
                match send.hint_for {
                    None => {
                        let _ = self.absorb_local(partition, &key, round.merged()).await;
                    }
                    // A fallback round: this shard holds the hints.
                    Some(target) => {
                        let _ = self.hints.store(target, partition, &key, round.merged(), false).await;
                    }
                }
            } else {
                let _ = self.replica_put(send, partition, &key, &bytes).await;
            }
        }
    }

    /// Reads one replica's version: `None` if it failed.
    async fn replica_get(&self, send: Send, partition: u32, key: &[u8]) -> (NodeId, Option<Clock>) {
        if send.to == self.me {
            // A primary's round reads its store; a fallback's, its hints.
            let options = RequestOptions {
                hint_for: send.hint_for,
                ..RequestOptions::default()
            };
            let clock = match self.replica_local(Op::ReplicaGet, partition, key, &[], options).await {
                Outcome::Object(clock) => Some(clock),
                _ => None,
            };
            return (send.to, clock);
        }
        let reply = self.call_replica(Opcode::ReplicaGet, send, partition, key, &[]).await;
        let clock = match reply {
            Ok(r) if r.status == Status::Ok as u8 && r.value.is_empty() => Some(Clock::new()),
            Ok(r) if r.status == Status::Ok as u8 => decode_object(&r.value).ok(),
            _ => None,
        };
        (send.to, clock)
    }
}
