//! Relaying a client request that reached a node which is not a primary of
//! its key to the node that coordinates it: a primary, tried in preference
//! order; or, when no primary can be reached, the first healthy fallback
//! (sloppy quorum: the key stays writable and readable on this side of a
//! network partition).
//!
//! A request that was never sent (the link is down, or the node has no
//! known address) may go to the next candidate. A read may also go on after
//! a timeout, but a write whose fate is unknown must not be retried
//! elsewhere: it could be applied twice, and a blind write would then show
//! up as two siblings.

use std::rc::Rc;
use std::time::Instant;

use dynkv_net::{Head, Opcode, Status, FLAG_FALLBACK, FLAG_SUPERSEDE_LOCAL};
use dynkv_ring::NodeId;

use crate::server::link::LinkError;
use crate::server::shard::{Op, Outcome, RequestOptions, Shard};
use dynkv::object::decode_object;

/// How relaying to a list of candidates ended.
enum Relay {
    /// A candidate took the request; its answer.
    Answered(Outcome),
    /// None took it. `refused`: some answered that it does not coordinate
    /// the key (another view of ownership); `sent`: a read reached one but
    /// got no answer in time; `last`: the last reason.
    Untaken { refused: bool, sent: bool, last: String },
}

/// The internode header of a relayed client request.
fn relay_head(op: Op, options: &RequestOptions, timeout_ms: u32) -> Head {
    let opcode = match op {
        Op::Get => Opcode::Get,
        Op::Put => Opcode::Put,
        Op::Delete => Opcode::Delete,
        _ => unreachable!("only client requests are relayed"),
    };
    Head {
        flags: if options.supersede_local {
            FLAG_SUPERSEDE_LOCAL
        } else {
            0
        },
        quorum: options.quorum,
        primary_quorum: options.primary_quorum,
        timeout_ms,
        ..Head::request(opcode, 0)
    }
}

impl Shard {
    /// The deadline of a client request about to be relayed, and its
    /// internode header.
    fn relay_start(&self, op: Op, options: &RequestOptions) -> (Instant, Head) {
        let timeout = self.request_timeout(options);
        (
            Instant::now() + timeout,
            relay_head(op, options, timeout.as_millis() as u32),
        )
    }

    /// Sends a client request to the node that coordinates it and returns
    /// that node's answer.
    pub(crate) async fn forward_to_primary(
        self: &Rc<Self>,
        op: Op,
        partition: u32,
        key: &[u8],
        context: &[u8],
        value: &[u8],
        options: RequestOptions,
    ) -> Outcome {
        let (deadline, head) = self.relay_start(op, &options);
        let sections = (key, context, value);
        if let Some(outcome) = self.relay_to_primaries(op, partition, head, sections, deadline).await {
            return outcome;
        }
        // No primary can be reached: the first healthy fallback coordinates.
        let view = self.view();
        let Some(pref) = view.preference(partition, |n| self.is_down(n)) else {
            return Outcome::failed(Status::Unavailable, "cluster is forming");
        };
        let fallbacks: Vec<(NodeId, u16)> = pref
            .fallbacks
            .iter()
            .map(|o| o.node)
            .take_while(|node| *node != self.me)
            .map(|node| (node, view.shard_of(node, partition)))
            .collect();
        let head = Head {
            flags: head.flags | FLAG_FALLBACK,
            ..head
        };
        if let Relay::Answered(outcome) = self.relay(op, &fallbacks, head, sections, deadline).await {
            return outcome;
        }
        // This node is the first fallback that can be reached (or none in
        // the list can): it coordinates, on the shard that keeps the
        // partition's hints.
        let options = RequestOptions {
            as_fallback: true,
            ..options
        };
        let shard = view.shard_of(self.me, partition);
        if usize::from(shard) == self.id {
            Box::pin(self.coordinate_as_fallback(op, partition, key, context, value, options)).await
        } else {
            self.forward(usize::from(shard), op, key, context, value, options).await
        }
    }

    /// A client request another node relayed here to coordinate as a
    /// fallback (on the shard that keeps the partition's hints). A primary
    /// this node can reach takes it after all: the sender's view may be
    /// stale, or the cut asymmetric, and every fallback write adds a writer
    /// to the key's clock.
    pub(crate) async fn take_as_fallback(
        self: &Rc<Self>,
        op: Op,
        partition: u32,
        key: &[u8],
        context: &[u8],
        value: &[u8],
        options: RequestOptions,
    ) -> Outcome {
        let (deadline, head) = self.relay_start(op, &options);
        if let Some(outcome) = self
            .relay_to_primaries(op, partition, head, (key, context, value), deadline)
            .await
        {
            return outcome;
        }
        Box::pin(self.coordinate_as_fallback(op, partition, key, context, value, options)).await
    }

    /// Offers a request to the key's primaries, those held down last (a
    /// write sent to one that does not answer cannot be retried
    /// elsewhere). `None` when none could be reached, so that a fallback
    /// may coordinate: every primary is held down, or no request was sent.
    async fn relay_to_primaries(
        &self,
        op: Op,
        partition: u32,
        head: Head,
        sections: (&[u8], &[u8], &[u8]),
        deadline: Instant,
    ) -> Option<Outcome> {
        let mut primaries: Vec<(NodeId, u16)> = self
            .view()
            .primaries(partition)
            .iter()
            .map(|o| (o.node, o.shard))
            .collect();
        if primaries.is_empty() {
            return Some(Outcome::failed(Status::Unavailable, "cluster is forming"));
        }
        if primaries.iter().all(|(node, _)| self.is_down(*node)) {
            return None;
        }
        primaries.sort_by_key(|(node, _)| self.is_down(*node));
        match self.relay(op, &primaries, head, sections, deadline).await {
            Relay::Answered(outcome) => Some(outcome),
            Relay::Untaken {
                refused: false,
                sent: false,
                ..
            } => None,
            // Ownership is moving (the next try finds the owner), or a
            // primary is up but slow: a fallback, holding only what was
            // written through fallbacks, would answer a read wrongly.
            Relay::Untaken { last, .. } => Some(Outcome::failed(
                Status::Unavailable,
                format!("no primary of partition {partition} answered: {last}"),
            )),
        }
    }

    /// Offers a request to `candidates` (node, shard) in order, until one
    /// takes it or `deadline` passes.
    async fn relay(
        &self,
        op: Op,
        candidates: &[(NodeId, u16)],
        head: Head,
        sections: (&[u8], &[u8], &[u8]),
        deadline: Instant,
    ) -> Relay {
        let view = self.view();
        let (mut refused, mut sent) = (false, false);
        let mut last = String::from("nobody to ask");
        for &(node, shard) in candidates {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                last = String::from("the request's deadline passed");
                break;
            }
            let addr = view.internode_addr(node, shard);
            match self.links.call(node, shard, addr, head, sections, remaining).await {
                // Another view of ownership: nothing was done, try the next.
                Ok(r) if r.status == Status::NotPrimary as u8 => {
                    refused = true;
                    last = String::from_utf8_lossy(&r.value).into_owned();
                }
                Ok(r) => return Relay::Answered(relayed(op, r)),
                // Not sent at all: safe to try the next.
                Err(err @ (LinkError::Down { .. } | LinkError::NoAddress { .. })) => last = err.to_string(),
                Err(err) if op == Op::Get => {
                    sent = true;
                    last = err.to_string();
                }
                Err(err) => {
                    return Relay::Answered(Outcome::failed(
                        Status::Timeout,
                        format!("the coordinator did not answer: {err}"),
                    ));
                }
            }
        }
        Relay::Untaken { refused, sent, last }
    }
}

/// The outcome a coordinator sent back for a relayed request.
fn relayed(op: Op, response: dynkv_net::Response) -> Outcome {
    match Status::from_u8(response.status) {
        Some(Status::Ok) if op == Op::Get => match decode_object(&response.value) {
            Ok(clock) => Outcome::Object(clock),
            Err(err) => Outcome::failed(Status::Internal, format!("a coordinator sent a bad object: {err}")),
        },
        Some(Status::Ok) => Outcome::Done,
        Some(status) => Outcome::failed(status, String::from_utf8_lossy(&response.value)),
        None => Outcome::failed(
            Status::Internal,
            format!("a coordinator answered status {}", response.status),
        ),
    }
}
