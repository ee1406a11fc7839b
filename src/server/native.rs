//! The native protocol, on client and (authenticated) internode
//! connections.
//!
//! Frames are decoded in place from the receive buffer. All complete frames
//! of one read (up to the in-flight limit) run concurrently, each writing
//! its response as it completes, so responses leave in completion order and
//! carry their request id. A put's key and value are handed to the engine
//! as slices of the receive buffer: the engine's log buffer is their first
//! copy.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use dynkv_net::{
    decode, encode, encode_siblings, encode_with, Decoded, Frame, FrameLimits, Head, Opcode, Sibling, Status,
    FLAG_BACKGROUND, FLAG_FALLBACK, FLAG_SUPERSEDE_LOCAL,
};
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use dynkv_engine::Staged;
use dynkv_ring::NodeId;

use crate::server::auth;
use crate::server::batch::{join_in_waves, Access, KeyConflicts};
use crate::server::recv::{RecvBuf, READ_CHUNK_BYTES};
use crate::server::shard::{Op, Outcome, RequestOptions, Shard};
use dynkv::object::{object_bytes, ObjectView};

/// Section limits on a client port: generous enough to answer an oversized
/// key or value with a status, small enough to bound the buffer.
pub(crate) fn client_limits(shard: &Shard) -> FrameLimits {
    FrameLimits {
        key_max_bytes: 64 << 10,
        context_max_bytes: 64 << 10,
        value_max_bytes: (shard.config.value_max_bytes.saturating_mul(2)).min(u32::MAX as usize) as u32,
    }
}

/// Which port a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Port {
    /// Clients: get answers are sibling lists with a context.
    Client,
    /// Authenticated peers: replica messages, membership, and client
    /// requests forwarded to this node as coordinator; get answers are
    /// whole objects.
    Internode,
}

/// Encodes the response to `frame` for `outcome`.
fn respond(shard: &Shard, out: &mut Vec<u8>, frame: &Frame<'_>, outcome: Outcome, port: Port) {
    let (opcode, id) = (frame.header.opcode, frame.header.request_id);
    match outcome {
        Outcome::Done => encode(out, &Head::response(opcode, id, Status::Ok), &[], &[], &[]),
        Outcome::Object(clock) if port == Port::Internode => {
            encode(
                out,
                &Head::response(opcode, id, Status::Ok),
                &[],
                &[],
                &object_bytes(&clock),
            );
        }
        Outcome::Object(clock) => {
            let context = if clock.is_empty() {
                Vec::new()
            } else {
                shard.seal.seal(&clock.context())
            };
            if clock.is_deleted() {
                // Absent, but the context lets a later put supersede the
                // tombstone instead of becoming its sibling.
                encode(out, &Head::response(opcode, id, Status::NotFound), &[], &context, &[]);
                return;
            }
            let siblings = clock.siblings().map(|s| Sibling {
                tombstone: s.is_tombstone(),
                value: s.value.as_deref().unwrap_or(&[]),
            });
            encode_with(out, &Head::response(opcode, id, Status::Ok), &[], &context, |out| {
                encode_siblings(out, siblings)
            });
        }
        Outcome::Bytes(bytes) => encode(out, &Head::response(opcode, id, Status::Ok), &[], &[], &bytes),
        Outcome::Stats(report) => {
            let text = format!("{report:#?}\n");
            encode(out, &Head::response(opcode, id, Status::Ok), &[], &[], text.as_bytes());
        }
        Outcome::Failed(status, message) => {
            encode(out, &Head::response(opcode, id, status), &[], &[], message.as_bytes())
        }
    }
}

/// Encodes a client's get response from the stored object in place: what
/// `respond` encodes for `Outcome::Object` of the decoded clock.
fn respond_view(shard: &Shard, out: &mut Vec<u8>, frame: &Frame<'_>, view: Option<ObjectView<'_>>) {
    let (opcode, id) = (frame.header.opcode, frame.header.request_id);
    let Some(view) = view.filter(|v| !v.is_empty()) else {
        encode(out, &Head::response(opcode, id, Status::NotFound), &[], &[], &[]);
        return;
    };
    let context = shard.seal.seal_with(view.context_len(), |out| view.encode_context(out));
    if view.is_deleted() {
        // Absent, but the context lets a later put supersede the
        // tombstone instead of becoming its sibling.
        encode(out, &Head::response(opcode, id, Status::NotFound), &[], &context, &[]);
        return;
    }
    let siblings = view.siblings().map(|s| Sibling {
        tombstone: s.value.is_none(),
        value: s.value.unwrap_or(&[]),
    });
    encode_with(out, &Head::response(opcode, id, Status::Ok), &[], &context, |out| {
        encode_siblings(out, siblings)
    });
}

/// The shard map: `q: u32 | shards: u16 | port: u16 * shards | shard: u16 * q`.
fn shard_map(shard: &Shard) -> Vec<u8> {
    let view = shard.view();
    let shards = shard.config.shards as u16;
    let mut out = Vec::with_capacity(6 + 2 * (usize::from(shards) + shard.q.get() as usize));
    out.extend_from_slice(&shard.q.get().to_le_bytes());
    out.extend_from_slice(&shards.to_le_bytes());
    for s in 0..shards {
        out.extend_from_slice(&(shard.config.base_port + s).to_le_bytes());
    }
    for partition in 0..shard.q.get() {
        out.extend_from_slice(&view.client_shard(partition).to_le_bytes());
    }
    out
}

/// How a frame touches its key, and the key.
fn access<'f>(frame: &Frame<'f>) -> (Access, std::iter::Once<&'f [u8]>) {
    let access = match frame.opcode() {
        _ if frame.is_response() => Access::None,
        Some(Opcode::Get) => Access::Read,
        Some(Opcode::Put | Opcode::Delete) => Access::Write,
        _ => Access::None,
    };
    (access, std::iter::once(frame.key))
}

/// Does a client's put or delete frame at once, answering into `out`, if
/// the shard can without waiting (see `Shard::write_now`); false if it
/// must take the usual path.
fn write_now(shard: &Shard, frame: &Frame<'_>, out: &mut Vec<u8>, durable: &mut Option<Staged>) -> bool {
    let op = if frame.opcode() == Some(Opcode::Put) {
        Op::Put
    } else {
        Op::Delete
    };
    let Ok(options) = options(frame, Port::Client) else {
        return false;
    };
    match shard.write_now(op, frame.key, (frame.context, frame.value), &options, durable) {
        Some(outcome) => {
            respond(shard, out, frame, outcome, Port::Client);
            true
        }
        None => false,
    }
}

/// Answers a client's get frame into `out` if the shard can without
/// waiting (see `Shard::get_now`); false if it must take the usual path.
fn answer_now(shard: &Shard, frame: &Frame<'_>, out: &mut Vec<u8>) -> bool {
    // In place if the object is cached; else decoded, if memory has it.
    match shard.peek_now(frame.key, |view| respond_view(shard, out, frame, view)) {
        Some(Ok(())) => return true,
        Some(Err(outcome)) => {
            respond(shard, out, frame, outcome, Port::Client);
            return true;
        }
        None => {}
    }
    match shard.get_now(frame.key) {
        Some(outcome) => {
            respond(shard, out, frame, outcome, Port::Client);
            true
        }
        None => false,
    }
}

/// Request options from a frame's header (and, for replica messages, the
/// hint target in its context section).
fn options(frame: &Frame<'_>, port: Port) -> Result<RequestOptions, String> {
    let hint_for = match (frame.opcode(), frame.context.len()) {
        (Some(Opcode::ReplicaGet | Opcode::ReplicaPut), 0) => None,
        (Some(Opcode::ReplicaGet | Opcode::ReplicaPut), 8) => {
            Some(NodeId(u64::from_le_bytes(frame.context.try_into().expect("8 bytes"))))
        }
        (Some(Opcode::ReplicaGet | Opcode::ReplicaPut), n) => {
            return Err(format!(
                "a replica message's context is a hint target (8 bytes), not {n} bytes"
            ))
        }
        _ => None,
    };
    Ok(RequestOptions {
        quorum: frame.header.quorum,
        primary_quorum: frame.header.primary_quorum,
        timeout_ms: frame.header.timeout_ms,
        supersede_local: frame.header.flags & FLAG_SUPERSEDE_LOCAL != 0,
        hint_for,
        from_peer: port == Port::Internode,
        // Only a peer may ask for fallback coordination.
        as_fallback: port == Port::Internode && frame.header.flags & FLAG_FALLBACK != 0,
    })
}

fn reply(out: &RefCell<Vec<u8>>, frame: &Frame<'_>, status: Status, value: &[u8]) {
    let head = Head::response(frame.header.opcode, frame.header.request_id, status);
    encode(&mut out.borrow_mut(), &head, &[], &[], value);
}

/// Whether a connection may change membership (`leave`, `remove`): peers,
/// and clients on this machine (`dynkv ctl` run on a node). Client ports
/// have no authentication, so a remote client may only ask for status.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admin {
    Allowed,
    StatusOnly,
}

async fn handle(shard: &Rc<Shard>, frame: &Frame<'_>, out: &RefCell<Vec<u8>>, port: Port, admin: Admin) {
    if frame.is_response() {
        reply(
            out,
            frame,
            Status::BadRequest,
            b"a response frame was sent to the server",
        );
        return;
    }
    let op = match (frame.opcode(), port) {
        (Some(Opcode::Get), _) => Op::Get,
        (Some(Opcode::Put), _) => Op::Put,
        (Some(Opcode::Delete), _) => Op::Delete,
        (Some(Opcode::ReplicaGet), Port::Internode) => Op::ReplicaGet,
        (Some(Opcode::ReplicaPut), Port::Internode) => Op::ReplicaPut,
        (Some(Opcode::MerkleExchange), Port::Internode) => Op::Merkle,
        (Some(Opcode::Admin), _) if admin == Admin::Allowed || frame.key == b"status" => Op::Admin,
        (Some(Opcode::Admin), _) => {
            let message = b"membership changes are accepted only from the node's own machine (run dynkv ctl there)";
            return reply(out, frame, Status::Unauthorized, message);
        }
        (Some(Opcode::Ping), _) => return reply(out, frame, Status::Ok, &[]),
        (Some(Opcode::Stats), _) => {
            // Boxed, like the other rare paths, to keep every request's
            // future small (see `batch`).
            let text = crate::server::metrics::render(&Box::pin(shard.all_reports()).await);
            return reply(out, frame, Status::Ok, text.as_bytes());
        }
        (Some(Opcode::ShardMap), Port::Client) => return reply(out, frame, Status::Ok, &shard_map(shard)),
        (Some(Opcode::Gossip), Port::Internode) => return Box::pin(gossip(shard, frame, out)).await,
        _ => {
            let message = format!("opcode {:#04x} is not served on this port", frame.header.opcode);
            return reply(out, frame, Status::UnknownOpcode, message.as_bytes());
        }
    };
    let options = match options(frame, port) {
        Ok(options) => options,
        Err(message) => return reply(out, frame, Status::BadRequest, message.as_bytes()),
    };
    let outcome = shard.execute(op, frame.key, frame.context, frame.value, options).await;
    respond(shard, &mut out.borrow_mut(), frame, outcome, port);
}

/// A peer's membership exchange: merge theirs, answer with ours.
async fn gossip(shard: &Rc<Shard>, frame: &Frame<'_>, out: &RefCell<Vec<u8>>) {
    let Some(members) = shard.members.clone() else {
        return reply(out, frame, Status::BadRequest, b"membership is kept by shard 0");
    };
    match members.answer(shard, frame.value).await {
        Ok(answer) => reply(out, frame, Status::Ok, &answer),
        Err(err) => reply(out, frame, Status::BadRequest, err.as_bytes()),
    }
}

/// Serves an internode connection: authenticate, then serve frames.
pub(crate) async fn serve_internode(shard: Rc<Shard>, mut stream: TcpStream) {
    let timeout = std::time::Duration::from_secs(5);
    match auth::accept(&mut stream, shard.config.cluster_secret.as_bytes(), shard.me, timeout).await {
        Ok(_) => serve_peer(shard, stream).await,
        Err(err) => {
            let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
            tracing::warn!(shard = shard.id, %peer, "refused an internode connection: {err}");
        }
    }
}

/// Requests in flight on one internode connection before it stops reading.
const PEER_INFLIGHT_MAX: usize = 4096;

/// Serves an authenticated internode connection. Unlike a client
/// connection, every frame runs as its own task and its response leaves as
/// soon as it is ready: a forwarded client request waiting for its quorum
/// must never hold back the replica traffic behind it, or two nodes
/// forwarding to each other could wait on each other until their timeouts.
async fn serve_peer(shard: Rc<Shard>, stream: TcpStream) {
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let outbox = Rc::new(RefCell::new(Vec::<u8>::with_capacity(READ_CHUNK_BYTES)));
    let (doorbell, ring) = glommio::channels::local_channel::new_bounded::<()>(1);
    let flusher = {
        let outbox = outbox.clone();
        glommio::spawn_local(async move {
            while ring.recv().await.is_some() {
                let pending = std::mem::take(&mut *outbox.borrow_mut());
                if !pending.is_empty() && writer.write_all(&pending).await.is_err() {
                    return;
                }
            }
        })
    };
    let permits = Rc::new(glommio::sync::Semaphore::new(PEER_INFLIGHT_MAX as u64));
    let doorbell = Rc::new(doorbell);
    let mut buf = RecvBuf::new();
    'read: loop {
        let mut consumed = 0;
        loop {
            match decode(&buf.data()[consumed..], &FrameLimits::DEFAULT) {
                Ok(Decoded::Frame(frame, used)) => {
                    let background = frame.header.flags & FLAG_BACKGROUND != 0;
                    let Ok(permit) = permits.acquire_static_permit(1).await else {
                        break 'read;
                    };
                    let raw = buf.data()[consumed..consumed + used].to_vec();
                    consumed += used;
                    let (shard, outbox, doorbell) = (shard.clone(), outbox.clone(), doorbell.clone());
                    let owner = shard.clone();
                    let task = async move {
                        let Ok(Decoded::Frame(frame, _)) = decode(&raw, &FrameLimits::DEFAULT) else {
                            unreachable!("the frame decoded once already")
                        };
                        handle(&shard, &frame, &outbox, Port::Internode, Admin::Allowed).await;
                        // A full doorbell means the flusher will run anyway.
                        let _ = doorbell.try_send(());
                        drop(permit);
                    };
                    // Another node's background work runs in this shard's
                    // low-share queue too, so that it yields to clients.
                    if background {
                        owner.spawn_background(task);
                    } else {
                        super::eager::run_or_spawn(task).await;
                    }
                }
                Ok(Decoded::NeedBytes(_)) => break,
                Err(err) => {
                    tracing::debug!(shard = shard.id, "closing an internode connection: {err}");
                    break 'read;
                }
            }
        }
        buf.consume(consumed);
        if !buf.read_unless_stopping(&mut reader, &shard.stopping).await {
            break;
        }
    }
    // Let the requests already read finish and their answers leave.
    let _ = permits.acquire(PEER_INFLIGHT_MAX as u64).await;
    drop(doorbell);
    flusher.await;
}

/// Serves a client connection.
pub(crate) async fn serve_client(shard: Rc<Shard>, stream: TcpStream) {
    serve(shard, stream, Port::Client).await
}

/// Serves one connection until it closes, errs, or the node shuts down
/// (after answering every request already read).
async fn serve(shard: Rc<Shard>, mut stream: TcpStream, port: Port) {
    let local = stream.peer_addr().is_ok_and(|a| a.ip().is_loopback());
    let admin = if port == Port::Internode || local {
        Admin::Allowed
    } else {
        Admin::StatusOnly
    };
    let limits = match port {
        Port::Client => client_limits(&shard),
        Port::Internode => FrameLimits::DEFAULT,
    };
    let batch_max = shard.config.inflight_per_connection_max;
    let mut buf = RecvBuf::new();
    let out = RefCell::new(Vec::with_capacity(READ_CHUNK_BYTES));
    loop {
        // First answer every complete frame already buffered (a batch at a
        // time), and only then wait for the socket.
        let mut consumed = 0;
        let mut frames = Vec::new();
        let mut fatal = None;
        while frames.len() < batch_max {
            match decode(&buf.data()[consumed..], &limits) {
                Ok(Decoded::Frame(frame, used)) => {
                    frames.push(frame);
                    consumed += used;
                }
                Ok(Decoded::NeedBytes(_)) => break,
                Err(err) => {
                    fatal = Some(err);
                    break;
                }
            }
        }
        if !frames.is_empty() || fatal.is_some() {
            if frames.len() > 1 {
                for frame in &frames {
                    shard.prefetch(frame.key);
                }
            }
            let started = Instant::now();
            // Writes answered at once under `sync=always`: their answers
            // wait for this before they leave.
            let mut durable = None;
            let mut answered_now = 0;
            if port == Port::Client {
                // Requests the shard can finish without waiting need no
                // future: answer them here, and run only the rest. None
                // may overtake a request sent before it that runs later
                // and touches its key.
                let mut out = out.borrow_mut();
                let mut later = KeyConflicts::default();
                let before = frames.len();
                frames.retain(|frame| {
                    let (access, key) = access(frame);
                    let done = !later.conflicts(access, key.clone())
                        && match access {
                            Access::Read => answer_now(&shard, frame, &mut out),
                            Access::Write => write_now(&shard, frame, &mut out, &mut durable),
                            Access::None => false,
                        };
                    if !done {
                        later.note(access, key);
                    }
                    !done
                });
                answered_now = (before - frames.len()) as u64;
            }
            // Frames that touch a key an earlier one of the batch touches
            // behave as if run in order (see `join_in_waves`).
            let deferred: Vec<&Frame<'_>> = frames.iter().collect();
            join_in_waves(&deferred, access, |frame| handle(&shard, frame, &out, port, admin)).await;
            drop(deferred);
            drop(frames);
            if let Some(staged) = durable {
                // The log failed: whether those writes are durable is
                // unknown, so they get no answer, and the connection ends.
                if shard.engine.wait_staged(staged).await.is_err() {
                    return;
                }
            }
            shard.counters.stamp_batch(started.elapsed(), answered_now);
            let mut pending = std::mem::take(&mut *out.borrow_mut());
            if !pending.is_empty() && stream.write_all(&pending).await.is_err() {
                return;
            }
            pending.clear();
            *out.borrow_mut() = pending;
            if let Some(err) = fatal {
                tracing::debug!(shard = shard.id, "closing connection: {err}");
                return;
            }
            buf.consume(consumed);
            // A client that keeps its pipeline full may find every batch
            // answered without a wait: let the shard's other tasks run.
            glommio::yield_if_needed().await;
            continue;
        }
        if !buf.read_unless_stopping(&mut stream, &shard.stopping).await {
            return;
        }
    }
}
