//! The native protocol on a client connection.
//!
//! Frames are decoded in place from the receive buffer. All complete frames
//! of one read (up to the in-flight limit) run concurrently, each writing
//! its response as it completes, so responses leave in completion order and
//! carry their request id. A put's key and value are handed to the engine
//! as slices of the receive buffer: the engine's log buffer is their first
//! copy.

use std::cell::RefCell;
use std::rc::Rc;

use dynkv_net::{decode, encode, encode_siblings, Decoded, Frame, FrameLimits, Head, Opcode, Sibling, Status};
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::server::recv::{RecvBuf, READ_CHUNK_BYTES};
use crate::server::shard::{Op, Outcome, Shard};

/// Section limits on a client port: generous enough to answer an oversized
/// key or value with a status, small enough to bound the buffer.
pub(crate) fn client_limits(shard: &Shard) -> FrameLimits {
    FrameLimits {
        key_max_bytes: 64 << 10,
        context_max_bytes: 64 << 10,
        value_max_bytes: (shard.config.value_max_bytes.saturating_mul(2)).min(u32::MAX as usize) as u32,
    }
}

/// Encodes the response to `frame` for `outcome`.
fn respond(out: &mut Vec<u8>, frame: &Frame<'_>, outcome: Outcome) {
    let (opcode, id) = (frame.header.opcode, frame.header.request_id);
    match outcome {
        Outcome::Done => encode(out, &Head::response(opcode, id, Status::Ok), &[], &[], &[]),
        Outcome::NotFound => encode(out, &Head::response(opcode, id, Status::NotFound), &[], &[], &[]),
        Outcome::Value(value) => {
            let mut siblings = Vec::with_capacity(value.len() + 9);
            encode_siblings(
                &mut siblings,
                [Sibling {
                    tombstone: false,
                    value: &value,
                }]
                .into_iter(),
            );
            encode(out, &Head::response(opcode, id, Status::Ok), &[], &[], &siblings);
        }
        Outcome::Stats(report) => {
            let text = format!("{report:#?}\n");
            encode(out, &Head::response(opcode, id, Status::Ok), &[], &[], text.as_bytes());
        }
        Outcome::Failed(status, message) => {
            encode(out, &Head::response(opcode, id, status), &[], &[], message.as_bytes())
        }
    }
}

/// The shard map: `q: u32 | shards: u16 | port: u16 * shards | shard: u16 * q`.
fn shard_map(shard: &Shard) -> Vec<u8> {
    let shards = shard.config.shards as u16;
    let mut out = Vec::with_capacity(6 + 2 * (usize::from(shards) + shard.shard_of.len()));
    out.extend_from_slice(&shard.q.get().to_le_bytes());
    out.extend_from_slice(&shards.to_le_bytes());
    for s in 0..shards {
        out.extend_from_slice(&(shard.config.base_port + s).to_le_bytes());
    }
    for owner in &shard.shard_of {
        out.extend_from_slice(&owner.to_le_bytes());
    }
    out
}

async fn handle(shard: &Shard, frame: &Frame<'_>, out: &RefCell<Vec<u8>>) {
    let op = match frame.opcode() {
        Some(Opcode::Get) => Op::Get,
        Some(Opcode::Put) => Op::Put,
        Some(Opcode::Delete) => Op::Delete,
        Some(Opcode::Ping) => {
            encode(
                &mut out.borrow_mut(),
                &Head::response(frame.header.opcode, frame.header.request_id, Status::Ok),
                &[],
                &[],
                &[],
            );
            return;
        }
        Some(Opcode::Stats) => {
            let text = crate::server::metrics::render(&shard.all_reports().await);
            let head = Head::response(frame.header.opcode, frame.header.request_id, Status::Ok);
            encode(&mut out.borrow_mut(), &head, &[], &[], text.as_bytes());
            return;
        }
        Some(Opcode::ShardMap) => {
            let head = Head::response(frame.header.opcode, frame.header.request_id, Status::Ok);
            encode(&mut out.borrow_mut(), &head, &[], &[], &shard_map(shard));
            return;
        }
        _ => {
            let message = format!("opcode {:#04x} is not served on a client port", frame.header.opcode);
            respond(
                &mut out.borrow_mut(),
                frame,
                Outcome::Failed(Status::UnknownOpcode, message),
            );
            return;
        }
    };
    if frame.is_response() {
        let message = "a response frame was sent to the server".to_string();
        respond(
            &mut out.borrow_mut(),
            frame,
            Outcome::Failed(Status::BadRequest, message),
        );
        return;
    }
    let outcome = shard.execute(op, frame.key, frame.context, frame.value).await;
    respond(&mut out.borrow_mut(), frame, outcome);
}

/// Serves one client connection until it closes, errs, or the node shuts
/// down (after answering every request already read).
pub(crate) async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let limits = client_limits(&shard);
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
            futures::future::join_all(frames.iter().map(|f| handle(&shard, f, &out))).await;
            drop(frames);
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
            continue;
        }
        if !buf.read_unless_stopping(&mut stream, &shard.stopping).await {
            return;
        }
    }
}
