//! One shard: its engine, its share of the partitions, and the bounded
//! channels to its peers.
//!
//! A request is executed on the shard that owns its key's partition. If it
//! arrived elsewhere, it is forwarded over the channel mesh (bounded, one
//! single-producer channel per pair of shards) and the answer comes back on
//! a one-shot channel, so a full request queue can only make a sender wait,
//! never deadlock a reply. With one node, the owning shard's coordinator
//! writes locally; replication will slot in here.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use dynkv_engine::{Engine, EngineError, EngineStats};
use dynkv_net::Status;
use dynkv_ring::PartitionCount;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};

use crate::config::ServeConfig;
use crate::server::metrics::ShardCounters;

/// What a request asks of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Get,
    Put,
    Delete,
    Stats,
}

/// The answer to a request; `Send`, so it can cross shards.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done,
    Value(Bytes),
    NotFound,
    Stats(Box<ShardReport>),
    Failed(Status, String),
}

/// One shard's figures, for `stats` and metrics.
#[derive(Clone, Debug)]
pub(crate) struct ShardReport {
    pub(crate) shard: usize,
    pub(crate) engine: EngineStats,
    pub(crate) counters: crate::server::metrics::CountersSnapshot,
}

/// A request forwarded from another shard.
pub(crate) struct ShardMsg {
    op: Op,
    partition: u32,
    key: Vec<u8>,
    context: Vec<u8>,
    value: Vec<u8>,
    reply: oneshot::Sender<Outcome>,
}

pub(crate) struct Shard {
    pub(crate) id: usize,
    pub(crate) engine: Engine,
    pub(crate) config: ServeConfig,
    pub(crate) q: PartitionCount,
    /// Partition → owning shard of this node.
    pub(crate) shard_of: Vec<u16>,
    senders: Senders<ShardMsg>,
    pub(crate) counters: ShardCounters,
    /// Open client connections on this shard.
    pub(crate) connections: Cell<usize>,
    /// Closed when the node shuts down.
    pub(crate) stopping: Rc<crate::server::shutdown::Gate>,
}

fn failed(err: EngineError) -> Outcome {
    let status = match err {
        EngineError::KeyTooLarge { .. } => Status::KeyTooLarge,
        EngineError::ValueTooLarge { .. } => Status::ValueTooLarge,
        EngineError::Closed => Status::ShuttingDown,
        _ => Status::Internal,
    };
    Outcome::Failed(status, err.to_string())
}

impl Shard {
    pub(crate) fn new(
        id: usize,
        engine: Engine,
        config: ServeConfig,
        q: PartitionCount,
        shard_of: Vec<u16>,
        senders: Senders<ShardMsg>,
    ) -> Shard {
        Shard {
            id,
            engine,
            config,
            q,
            shard_of,
            senders,
            counters: ShardCounters::default(),
            connections: Cell::new(0),
            stopping: crate::server::shutdown::Gate::new(),
        }
    }

    /// Executes a request wherever its key lives.
    pub(crate) async fn execute(&self, op: Op, key: &[u8], context: &[u8], value: &[u8]) -> Outcome {
        let started = Instant::now();
        let partition = self.q.partition_of(key);
        let owner = usize::from(self.shard_of[partition as usize]);
        let outcome = if owner == self.id {
            self.execute_local(op, partition, key, context, value).await
        } else {
            self.counters.forwarded.set(self.counters.forwarded.get() + 1);
            self.forward(owner, op, partition, key, context, value).await
        };
        self.counters.record(op, &outcome, started.elapsed());
        outcome
    }

    async fn forward(&self, owner: usize, op: Op, partition: u32, key: &[u8], context: &[u8], value: &[u8]) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let msg = ShardMsg {
            op,
            partition,
            key: key.to_vec(),
            context: context.to_vec(),
            value: value.to_vec(),
            reply,
        };
        if self.senders.send_to(owner, msg).await.is_err() {
            return Outcome::Failed(Status::ShuttingDown, format!("shard {owner} is not accepting requests"));
        }
        answer
            .await
            .unwrap_or_else(|_| Outcome::Failed(Status::ShuttingDown, format!("shard {owner} dropped the request")))
    }

    async fn execute_local(&self, op: Op, partition: u32, key: &[u8], context: &[u8], value: &[u8]) -> Outcome {
        match op {
            Op::Get => match self.engine.get(partition, key).await {
                Ok(Some(record)) if !record.tombstone => Outcome::Value(record.value),
                Ok(_) => Outcome::NotFound,
                Err(err) => failed(err),
            },
            Op::Put => self
                .engine
                .put(partition, key, value)
                .await
                .map_or_else(failed, |_| Outcome::Done),
            Op::Delete => self
                .engine
                .delete(partition, key, context)
                .await
                .map_or_else(failed, |_| Outcome::Done),
            Op::Stats => Outcome::Stats(Box::new(self.report())),
        }
    }

    pub(crate) fn report(&self) -> ShardReport {
        ShardReport {
            shard: self.id,
            engine: self.engine.stats(),
            counters: self.counters.snapshot(self.connections.get()),
        }
    }

    /// Every shard's report, this one's included (asks peers over the mesh).
    pub(crate) async fn all_reports(&self) -> Vec<ShardReport> {
        let mut reports = vec![self.report()];
        for peer in (0..self.shard_of_count()).filter(|&s| s != self.id) {
            if let Outcome::Stats(report) = self.forward(peer, Op::Stats, 0, &[], &[], &[]).await {
                reports.push(*report);
            }
        }
        reports.sort_by_key(|r| r.shard);
        reports
    }

    fn shard_of_count(&self) -> usize {
        self.senders.nr_consumers()
    }

    /// Serves requests forwarded by peers until their channels close.
    pub(crate) fn serve_peers(self: &Rc<Self>, mut receivers: Receivers<ShardMsg>) {
        for (_, receiver) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = receiver.recv().await {
                    let shard = shard.clone();
                    glommio::spawn_local(async move {
                        let outcome = shard
                            .execute_local(msg.op, msg.partition, &msg.key, &msg.context, &msg.value)
                            .await;
                        // The requester may have given up; that is fine.
                        let _ = msg.reply.send(outcome);
                    })
                    .detach();
                }
            })
            .detach();
        }
    }
}
