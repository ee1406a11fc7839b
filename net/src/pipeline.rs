//! Pipelines: many requests sent at once and waited for together.
//!
//! A lone request (`Connection::call`) costs its caller a future and a
//! wake-up per request. A [`Pipeline`] sends its requests to their shards'
//! connections in one go and waits once per connection: each connection's
//! share is one group of the in-flight table (`inflight.rs`), woken when its
//! last request ends. This is how `redis-benchmark -P` drives Redis, and how
//! a client with many independent keys (a bulk load, a multi-get) should
//! drive dynkv.
//!
//! Every request keeps its own timeout and its own result; requests on one
//! key keep the order they were added in (one connection, and the server
//! answers a connection's requests on one key in the order sent).

use std::ops::Range;
use std::time::Instant;

use glommio::sync::Permit;

use crate::client::{deadline_after, expect_ok, request_head, timeout_ms, CallOptions, Client, ClientError, Response};
use crate::frame::encode;
use crate::inflight::GroupId;
use crate::opcode::Opcode;
use crate::Connection;

/// Requests to send together with [`Client::pipeline`]. Reusable: sending
/// empties it and keeps its buffers.
///
/// ```no_run
/// # async fn demo(client: &dynkv_net::Client) -> Result<(), dynkv_net::ClientError> {
/// use dynkv_net::{CallOptions, Pipeline};
///
/// let mut pipeline = Pipeline::new();
/// for i in 0..100u32 {
///     pipeline.put(format!("user:{i}").as_bytes(), b"hello", None, &CallOptions::default());
/// }
/// pipeline.get(b"user:7", &CallOptions::default());
/// let results = client.pipeline(&mut pipeline).await;
/// let read = results.into_iter().last().expect("one result per request")?;
/// assert_eq!(read.values()?, vec![&b"hello"[..]]);
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct Pipeline {
    requests: Vec<Request>,
    /// Every request's key, context and value, back to back.
    bytes: Vec<u8>,
}

struct Request {
    opcode: Opcode,
    call: CallOptions,
    key: Range<usize>,
    context: Range<usize>,
    value: Range<usize>,
}

impl Pipeline {
    pub fn new() -> Pipeline {
        Pipeline::default()
    }

    /// Requests added and not sent yet.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Drops every request not sent yet.
    pub fn clear(&mut self) {
        self.requests.clear();
        self.bytes.clear();
    }

    fn stash(&mut self, section: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(section);
        start..self.bytes.len()
    }

    fn add(&mut self, opcode: Opcode, call: &CallOptions, key: &[u8], context: &[u8], value: &[u8]) {
        let (key, context, value) = (self.stash(key), self.stash(context), self.stash(value));
        self.requests.push(Request {
            opcode,
            call: *call,
            key,
            context,
            value,
        });
    }

    /// A read of `key`, as [`Client::get_with`]; its response's
    /// [`Response::values`] and context are the answer.
    pub fn get(&mut self, key: &[u8], call: &CallOptions) {
        self.add(Opcode::Get, call, key, &[], &[]);
    }

    /// A write, as [`Client::put_with`].
    pub fn put(&mut self, key: &[u8], value: &[u8], context: Option<&[u8]>, call: &CallOptions) {
        self.add(Opcode::Put, call, key, context.unwrap_or(&[]), value);
    }

    /// A delete, as [`Client::delete_with`].
    pub fn delete(&mut self, key: &[u8], context: &[u8], call: &CallOptions) {
        self.add(Opcode::Delete, call, key, context, &[]);
    }
}

/// One connection's share of a round: its group and which request each of
/// the group's ids is. Dropped before its outcomes are taken (the caller
/// gave up), it abandons them so that their slots are freed.
struct Sent<'a> {
    conn: &'a Connection,
    group: GroupId,
    /// (index into the pipeline, request id).
    ids: Vec<(usize, u64)>,
    _permit: Permit<'a>,
}

impl Drop for Sent<'_> {
    fn drop(&mut self) {
        let mut inflight = self.conn.inflight.borrow_mut();
        for &(_, id) in &self.ids {
            inflight.abandon(id);
        }
        inflight.close_group(self.group);
    }
}

impl Client {
    /// Sends every request of `pipeline` and waits for all of them; returns
    /// one result per request, in the order they were added, and leaves the
    /// pipeline empty. Requests go straight to their shards, at most
    /// [`ClientOptions::inflight_max`](crate::ClientOptions) per connection
    /// at a time: a longer pipeline is sent in rounds.
    pub async fn pipeline(&self, pipeline: &mut Pipeline) -> Vec<Result<Response, ClientError>> {
        let mut results: Vec<Option<Result<Response, ClientError>>> = Vec::new();
        results.resize_with(pipeline.requests.len(), || None);
        let mut by_conn: Vec<Vec<usize>> = vec![Vec::new(); self.conns.len()];
        for (index, request) in pipeline.requests.iter().enumerate() {
            by_conn[self.shard_for(&pipeline.bytes[request.key.clone()])].push(index);
        }
        let round_max = self.options.inflight_max.max(1);
        let mut done = vec![0usize; self.conns.len()];
        loop {
            // Permits are taken in connection order, so that two pipelines
            // each holding some never wait for each other's.
            let mut sent = Vec::new();
            for (shard, indexes) in by_conn.iter().enumerate() {
                let round = &indexes[done[shard]..indexes.len().min(done[shard] + round_max)];
                if round.is_empty() {
                    continue;
                }
                done[shard] += round.len();
                match self.send_round(&self.conns[shard], pipeline, round).await {
                    Ok(group) => sent.push(group),
                    Err(e) => round.iter().for_each(|&i| results[i] = Some(Err(e.clone()))),
                }
            }
            if sent.is_empty() {
                break;
            }
            for group in sent {
                self.collect(group, pipeline, &mut results).await;
            }
        }
        pipeline.clear();
        results
            .into_iter()
            .map(|r| r.expect("every request was sent or failed"))
            .collect()
    }

    /// Sends the requests `round` of `pipeline` on `conn` as one group.
    async fn send_round<'a>(
        &self,
        conn: &'a Connection,
        pipeline: &Pipeline,
        round: &[usize],
    ) -> Result<Sent<'a>, ClientError> {
        let disconnected = || ClientError::Disconnected(conn.addr);
        let permit = conn
            .permits
            .acquire_permit(round.len() as u64)
            .await
            .map_err(|_| disconnected())?;
        let group = conn.inflight.borrow_mut().open_group().ok_or_else(disconnected)?;
        // Declared before the borrows below, so that on an early return it
        // is dropped (and borrows the table) after they are released.
        let mut sent = Sent {
            conn,
            group,
            ids: Vec::with_capacity(round.len()),
            _permit: permit,
        };
        let mut inflight = conn.inflight.borrow_mut();
        let mut outbox = conn.outbox.borrow_mut();
        let mut tell_reaper = false;
        // One clock read for the round: its requests leave together.
        let now = Instant::now();
        for &index in round {
            let request = &pipeline.requests[index];
            let timeout = request.call.timeout.unwrap_or(self.options.timeout);
            // Permits guarantee slots, so `None` means the connection closed.
            let Some((id, tell)) = inflight.start_in(group, deadline_after(now, timeout)) else {
                drop((inflight, outbox));
                return Err(disconnected());
            };
            tell_reaper |= tell;
            sent.ids.push((index, id));
            let mut head = request_head(request.opcode, &request.call);
            head.request_id = id;
            head.timeout_ms = timeout_ms(timeout);
            let bytes = &pipeline.bytes;
            encode(
                &mut outbox,
                &head,
                &bytes[request.key.clone()],
                &bytes[request.context.clone()],
                &bytes[request.value.clone()],
            );
        }
        drop((inflight, outbox));
        if tell_reaper {
            conn.ring_reaper();
        }
        conn.ring_writer();
        Ok(sent)
    }

    /// Waits for every request of `sent` and files their results.
    async fn collect(
        &self,
        mut sent: Sent<'_>,
        pipeline: &Pipeline,
        results: &mut [Option<Result<Response, ClientError>>],
    ) {
        let (conn, group) = (sent.conn, sent.group);
        std::future::poll_fn(|cx| conn.inflight.borrow_mut().poll_group(group, cx)).await;
        for (index, id) in std::mem::take(&mut sent.ids) {
            let outcome = conn.inflight.borrow_mut().take(id);
            let timeout = pipeline.requests[index].call.timeout.unwrap_or(self.options.timeout);
            results[index] = Some(conn.result_of(outcome, timeout).and_then(expect_ok));
        }
    }
}
