//! One load-generator thread: a glommio executor with its own shard-aware
//! client, running closed-loop workers (each waits for its answer before
//! the next request) or an open-loop schedule (requests are due at fixed
//! times whatever the server does; latency counts from when a request was
//! due, so a stalled server cannot hide behind a waiting client).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use dynkv_net::{CallOptions, Client, ClientError, ClientOptions, Pipeline, Response};
use rand::SeedableRng;
use rand_xorshift::XorShiftRng;

use crate::bench::report::{Recorder, Seen};
use crate::bench::workload::{KeyChooser, KeyName, Mix, OpKind, ValueSize};

/// Requests an open-loop thread lets wait for a free slot before it counts
/// further ones as `backlog_full` errors instead of queueing them.
const OPEN_LOOP_BACKLOG_MAX: usize = 100_000;

/// The budget of a run limited by time, not by a count.
const BUDGET_UNLIMITED: u64 = u64::MAX;

/// What every thread shares: progress counters and the stop signal. What
/// threads write often sits on cache lines of its own: one thread's
/// counting must not take a line every other thread reads on each
/// operation.
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    /// Measurement window: when the first thread was ready to send (ns
    /// after the start) and when the last one finished.
    pub(crate) ready_ns: AtomicU64,
    pub(crate) done_ns: AtomicU64,
    /// Operations left to start (`BUDGET_UNLIMITED` without a count limit).
    pub(crate) budget: CachePadded<AtomicU64>,
    /// One past the newest key whose write was acknowledged: reads choose
    /// below it, as YCSB's acknowledged-insert counter does.
    pub(crate) newest_key: CachePadded<AtomicU64>,
    /// The next key an insert writes.
    pub(crate) next_insert: CachePadded<AtomicU64>,
    /// Per thread: operations done and failed so far, for the progress bar.
    counts: Vec<CachePadded<Counts>>,
}

#[derive(Default)]
struct Counts {
    ops: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    pub(crate) fn new(threads: usize) -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            ready_ns: AtomicU64::new(u64::MAX),
            done_ns: AtomicU64::new(0),
            budget: CachePadded::new(AtomicU64::new(BUDGET_UNLIMITED)),
            newest_key: CachePadded::default(),
            next_insert: CachePadded::default(),
            counts: (0..threads).map(|_| CachePadded::default()).collect(),
        }
    }

    /// Claims one operation of the budget; false when the run is over.
    fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        self.budget.load(Ordering::Relaxed) == BUDGET_UNLIMITED
            || self
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                .is_ok()
    }

    /// Counts `n` operations of `thread`, done or failed.
    fn count(&self, thread: u64, ok: bool, n: u64) {
        let counts = &self.counts[thread as usize];
        let counter = if ok { &counts.ops } else { &counts.errors };
        // Only this thread writes its counters: a load and a store, no
        // locked read-modify-write.
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// Operations done and failed so far, over every thread.
    pub(crate) fn progress(&self) -> (u64, u64) {
        self.counts.iter().fold((0, 0), |(ops, errors), c| {
            (
                ops + c.ops.load(Ordering::Relaxed),
                errors + c.errors.load(Ordering::Relaxed),
            )
        })
    }
}

/// How one thread generates load.
#[derive(Clone)]
pub(crate) struct Plan {
    /// The nodes to drive; each request goes to one, chosen by its key.
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) mix: Mix,
    pub(crate) keys: Arc<KeyChooser>,
    pub(crate) value_size: ValueSize,
    /// Concurrent requests (closed loop), or the most in flight (open loop).
    pub(crate) concurrency: usize,
    /// Closed loop: operations each worker sends at once (1: one at a time).
    pub(crate) pipeline: usize,
    /// Operations per second for this thread; `None` for closed loop.
    pub(crate) rate: Option<f64>,
    pub(crate) read: CallOptions,
    pub(crate) write: CallOptions,
    pub(crate) client: ClientOptions,
    pub(crate) seed: u64,
    pub(crate) thread: u64,
}

fn error_kind(err: &ClientError) -> String {
    match err {
        ClientError::Connect { .. } => "connect".into(),
        ClientError::Timeout(_) => "timeout".into(),
        ClientError::Disconnected(_) => "disconnected".into(),
        ClientError::Server { status, .. } => format!("{status:?}").to_ascii_lowercase(),
        ClientError::Protocol(_) => "protocol".into(),
    }
}

fn seen(values: usize) -> Seen {
    match values {
        0 => Seen::Nothing,
        1 => Seen::Value,
        _ => Seen::Siblings,
    }
}

/// What a read's response saw.
fn seen_in(response: &Response) -> Result<Seen, ClientError> {
    Ok(seen(response.value_count()?))
}

/// One operation of a pipelined batch, chosen before it is sent.
struct Planned {
    kind: OpKind,
    key: KeyName,
    /// The fresh key of an insert.
    inserted: Option<u64>,
    /// A read-modify-write whose read is done: what it saw.
    read: Option<Seen>,
    /// How it ended, once it has.
    result: Option<Result<Seen, ClientError>>,
}

/// A worker's requests for one node during a pipelined batch.
#[derive(Default)]
struct Lane {
    pipeline: Pipeline,
    /// Indexes into the batch of the operations in `pipeline`, in order.
    planned: Vec<usize>,
}

/// A worker's random stream: a hash of the run's seed, the thread and the
/// worker, so no two workers ever share one.
fn worker_rng(seed: u64, thread: u64, worker: u64) -> XorShiftRng {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&thread.to_le_bytes());
    bytes[16..].copy_from_slice(&worker.to_le_bytes());
    XorShiftRng::seed_from_u64(xxhash_rust::xxh3::xxh3_64(&bytes))
}

/// Everything a worker needs, shared within the thread.
struct Worker {
    /// One per node of `plan.addrs`, in that order.
    clients: Vec<Client>,
    plan: Plan,
    shared: Arc<Shared>,
    recorder: RefCell<Recorder>,
    values: Vec<u8>,
}

impl Worker {
    /// The node that coordinates `key`: by the key's hash, so that the
    /// nodes share the load evenly and every request for one key (the read
    /// and write of a read-modify-write) goes to the same coordinator.
    fn client(&self, key: &[u8]) -> &Client {
        &self.clients[self.client_index(key)]
    }

    /// The index of [`Worker::client`] in `clients`.
    fn client_index(&self, key: &[u8]) -> usize {
        // Seeded apart from the servers' partition hash, so that a node's
        // share is not tied to particular partitions or shards.
        const NODE_CHOICE_SEED: u64 = 0x6e6f_6465;
        let n = self.clients.len() as u64;
        if n == 1 {
            return 0;
        }
        (xxhash_rust::xxh3::xxh3_64_with_seed(key, NODE_CHOICE_SEED) % n) as usize
    }

    /// Writes without a context supersede what the coordinator holds, as a
    /// benchmark's blind writes should.
    fn overwrite(&self) -> CallOptions {
        CallOptions {
            overwrite: true,
            ..self.plan.write
        }
    }

    /// How a read-modify-write writes back after a read that returned
    /// `context`: with it, superseding what the read saw; without one (the
    /// key was never written), as an overwrite.
    fn write_back<'c>(&self, context: &'c [u8]) -> (Option<&'c [u8]>, CallOptions) {
        if context.is_empty() {
            (None, self.overwrite())
        } else {
            (Some(context), self.plan.write)
        }
    }

    /// The key of an operation of `kind`: an insert takes the next fresh
    /// key (returned too), every other kind picks one.
    fn key_for(&self, kind: OpKind, rng: &mut XorShiftRng) -> (KeyName, Option<u64>) {
        let newest = self.shared.newest_key.load(Ordering::Relaxed);
        let inserted = (kind == OpKind::Insert).then(|| self.shared.next_insert.fetch_add(1, Ordering::Relaxed));
        (
            KeyName::of(inserted.unwrap_or_else(|| self.plan.keys.pick(rng, newest))),
            inserted,
        )
    }

    /// An insert of key `index` was acknowledged: reads may choose it.
    fn acknowledged(&self, inserted: Option<u64>) {
        if let Some(index) = inserted {
            self.shared.newest_key.fetch_max(index + 1, Ordering::Relaxed);
        }
    }

    /// Runs one operation; says what a read saw.
    async fn op(&self, kind: OpKind, rng: &mut XorShiftRng) -> Result<Seen, ClientError> {
        let value = &self.values[..self.plan.value_size.pick(rng)];
        let overwrite = self.overwrite();
        let (key, inserted) = self.key_for(kind, rng);
        let key = key.as_bytes();
        let client = self.client(key);
        match kind {
            OpKind::Read => Ok(seen(client.get_with(key, &self.plan.read).await?.values.len())),
            OpKind::Update | OpKind::Insert => {
                client.put_with(key, value, None, &overwrite).await?;
                self.acknowledged(inserted);
                Ok(Seen::Value)
            }
            OpKind::Delete => {
                client.delete_with(key, &[], &overwrite).await?;
                Ok(Seen::Value)
            }
            OpKind::ReadModifyWrite => {
                let got = client.get_with(key, &self.plan.read).await?;
                let (context, call) = self.write_back(&got.context);
                client.put_with(key, value, context, &call).await?;
                Ok(seen(got.values.len()))
            }
        }
    }

    /// Runs `count` operations as one pipeline per node, sent at once, and
    /// records each with the batch's latency (from when it was sent to when
    /// its last answer arrived, as `redis-benchmark -P` counts). A
    /// read-modify-write's write goes in a second round, with the context
    /// its read returned. Returns when the batch ended.
    async fn run_pipelined(&self, count: usize, start: Instant, rng: &mut XorShiftRng, lanes: &mut [Lane]) -> Instant {
        let overwrite = self.overwrite();
        let mut batch = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = self.plan.mix.pick(rng);
            let (key, inserted) = self.key_for(kind, rng);
            let lane = &mut lanes[self.client_index(key.as_bytes())];
            let value = &self.values[..self.plan.value_size.pick(rng)];
            match kind {
                OpKind::Read | OpKind::ReadModifyWrite => lane.pipeline.get(key.as_bytes(), &self.plan.read),
                OpKind::Update | OpKind::Insert => lane.pipeline.put(key.as_bytes(), value, None, &overwrite),
                OpKind::Delete => lane.pipeline.delete(key.as_bytes(), &[], &overwrite),
            }
            lane.planned.push(batch.len());
            batch.push(Planned {
                kind,
                key,
                inserted,
                read: None,
                result: None,
            });
        }
        // The first round queues the writes of read-modify-writes.
        while lanes.iter().any(|lane| !lane.pipeline.is_empty()) {
            self.send_round(lanes, &mut batch, rng).await;
        }
        let now = Instant::now();
        let latency = now - start;
        let mut recorder = self.recorder.borrow_mut();
        let mut failed = 0;
        // Grouped by kind, so each kind's histograms are updated once.
        let mut seen: [Vec<Seen>; OpKind::COUNT] = Default::default();
        for op in batch {
            match op.result.expect("every planned operation got a result") {
                Ok(s) => seen[op.kind as usize].push(s),
                Err(e) => {
                    failed += 1;
                    recorder.record(op.kind, latency, Err(error_kind(&e)), now);
                }
            }
        }
        for kind in OpKind::ALL {
            recorder.record_done(kind, latency, now, &seen[kind as usize]);
        }
        self.shared.count(self.plan.thread, true, count as u64 - failed);
        self.shared.count(self.plan.thread, false, failed);
        now
    }

    /// Sends every lane's pipeline at once and files each answer in
    /// `batch`; a read-modify-write's read queues its write.
    async fn send_round(&self, lanes: &mut [Lane], batch: &mut [Planned], rng: &mut XorShiftRng) {
        let answers = match (&self.clients[..], &mut lanes[..]) {
            // One node: no join to poll through.
            ([client], [lane]) => vec![client.pipeline(&mut lane.pipeline).await],
            _ => {
                let sends = self
                    .clients
                    .iter()
                    .zip(lanes.iter_mut())
                    .map(|(client, lane)| client.pipeline(&mut lane.pipeline));
                futures::future::join_all(sends).await
            }
        };
        for (lane, answers) in lanes.iter_mut().zip(answers) {
            let planned = std::mem::take(&mut lane.planned);
            for (&index, answer) in planned.iter().zip(answers) {
                let op = &mut batch[index];
                let response = match answer {
                    Ok(response) => response,
                    Err(e) => {
                        op.result = Some(Err(e));
                        continue;
                    }
                };
                op.result = match (op.kind, op.read) {
                    (OpKind::Read, _) => Some(seen_in(&response)),
                    (OpKind::ReadModifyWrite, None) => match seen_in(&response) {
                        Ok(seen) => {
                            op.read = Some(seen);
                            let value = &self.values[..self.plan.value_size.pick(rng)];
                            let (context, call) = self.write_back(&response.context);
                            lane.pipeline.put(op.key.as_bytes(), value, context, &call);
                            lane.planned.push(index);
                            None
                        }
                        Err(e) => Some(Err(e)),
                    },
                    (OpKind::ReadModifyWrite, Some(seen)) => Some(Ok(seen)),
                    _ => {
                        self.acknowledged(op.inserted);
                        Some(Ok(Seen::Value))
                    }
                };
            }
        }
    }

    /// Runs one operation due at `due` and records it. Returns when it
    /// ended.
    async fn run_one(&self, kind: OpKind, due: Instant, rng: &mut XorShiftRng) -> Instant {
        let result = self.op(kind, rng).await.map_err(|e| error_kind(&e));
        let now = Instant::now();
        self.shared.count(self.plan.thread, result.is_ok(), 1);
        self.recorder.borrow_mut().record(kind, now - due, result, now);
        now
    }

    /// Counts `count` requests that failed with `error` by `at`.
    fn fail(&self, error: &str, count: u64, at: Instant) {
        if count > 0 {
            self.shared.count(self.plan.thread, false, count);
            self.recorder.borrow_mut().record_errors(error, count, at);
        }
    }
}

/// Runs one thread's share of the load until the run stops.
pub(crate) async fn run_thread(plan: Plan, shared: Arc<Shared>, start: Instant) -> Result<Recorder, String> {
    let mut clients = Vec::with_capacity(plan.addrs.len());
    for &addr in &plan.addrs {
        clients.push(
            Client::connect(addr, plan.client)
                .await
                .map_err(|e| format!("{addr}: {e}"))?,
        );
    }
    let ready = start.elapsed().as_nanos() as u64;
    shared.ready_ns.fetch_min(ready, Ordering::Relaxed);
    let mut values = vec![0u8; plan.value_size.max_bytes];
    let mut fill = XorShiftRng::seed_from_u64(plan.seed ^ 0x5eed);
    rand::Rng::fill_bytes(&mut fill, &mut values);
    let worker = Rc::new(Worker {
        clients,
        plan: plan.clone(),
        shared,
        recorder: RefCell::new(Recorder::new(start)),
        values,
    });
    match plan.rate {
        None => closed_loop(&worker).await,
        Some(rate) => open_loop(&worker, rate).await,
    }
    worker
        .shared
        .done_ns
        .fetch_max(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let worker = Rc::try_unwrap(worker).map_err(|_| "a worker outlived its thread".to_string())?;
    Ok(worker.recorder.into_inner())
}

async fn closed_loop(worker: &Rc<Worker>) {
    let tasks: Vec<_> = (0..worker.plan.concurrency)
        .map(|i| {
            let worker = worker.clone();
            glommio::spawn_local(async move {
                let mut rng = worker_rng(worker.plan.seed, worker.plan.thread, i as u64);
                // Each request is sent as soon as the one before it ended,
                // so that end is this one's start: one clock read per
                // operation, not two.
                let mut start = Instant::now();
                if worker.plan.pipeline > 1 {
                    let mut lanes: Vec<Lane> = worker.clients.iter().map(|_| Lane::default()).collect();
                    loop {
                        let count = (0..worker.plan.pipeline).take_while(|_| worker.shared.claim()).count();
                        if count == 0 {
                            break;
                        }
                        start = worker.run_pipelined(count, start, &mut rng, &mut lanes).await;
                    }
                    return;
                }
                while worker.shared.claim() {
                    let kind = worker.plan.mix.pick(&mut rng);
                    start = worker.run_one(kind, start, &mut rng).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

/// The requests an open-loop thread has made due and not yet sent, in due
/// order, and a permit for each.
struct Due {
    times: RefCell<VecDeque<Instant>>,
    ready: glommio::sync::Semaphore,
}

/// Makes requests due at `rate` per second whatever the server does, and
/// sends each with the first of `concurrency` workers free; latency counts
/// from the due time. Requests due and not yet sent wait in a queue of at
/// most `OPEN_LOOP_BACKLOG_MAX`; past that, further ones are counted as
/// `backlog_full` errors and not queued, so that an overloaded server costs
/// the load generator a counter, not a task, per request.
async fn open_loop(worker: &Rc<Worker>, rate: f64) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let due = Rc::new(Due {
        times: RefCell::new(VecDeque::new()),
        ready: glommio::sync::Semaphore::new(0),
    });
    let senders: Vec<_> = (0..worker.plan.concurrency)
        .map(|i| {
            let (worker, due) = (worker.clone(), due.clone());
            glommio::spawn_local(async move {
                let mut rng = worker_rng(worker.plan.seed, worker.plan.thread, i as u64);
                // A closed semaphore (the run is over) fails the wait.
                while due.ready.acquire(1).await.is_ok() {
                    let intended = due.times.borrow_mut().pop_front().expect("a permit per queued request");
                    let kind = worker.plan.mix.pick(&mut rng);
                    worker.run_one(kind, intended, &mut rng).await;
                }
            })
        })
        .collect();
    let mut next_due = Instant::now();
    loop {
        let now = Instant::now();
        let (mut queued, mut overflow) = (0u64, 0u64);
        let mut over = false;
        while next_due <= now {
            if !worker.shared.claim() {
                over = true;
                break;
            }
            let mut times = due.times.borrow_mut();
            if times.len() >= OPEN_LOOP_BACKLOG_MAX {
                overflow += 1;
            } else {
                times.push_back(next_due);
                queued += 1;
            }
            next_due += interval;
        }
        due.ready.signal(queued);
        worker.fail("backlog_full", overflow, now);
        if over {
            break;
        }
        // Sleep until the next request is due, at least 1 ms at a time.
        let wait = next_due
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        glommio::timer::sleep(wait).await;
    }
    // Requests still queued when the run ends were due inside it but never
    // sent: they count as failed ("not_sent"); those in flight get their
    // answer (each has a timeout).
    due.ready.close();
    for sender in senders {
        sender.await;
    }
    let unsent = due.times.borrow_mut().drain(..).count() as u64;
    worker.fail("not_sent", unsent, Instant::now());
}
