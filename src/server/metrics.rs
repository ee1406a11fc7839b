//! Per-shard counters and the Prometheus text endpoint.
//!
//! Counters live in `Cell`s of their shard (no atomics on the data path).
//! The metrics listener, on shard 0, asks every shard for a snapshot over
//! the mesh when scraped.

use std::cell::Cell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::server::shard::{Op, Outcome, Shard, ShardReport, OP_COUNT};

/// Upper bounds of the request latency histogram buckets, in µs.
const LATENCY_BUCKETS_US: [u64; 10] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000];
/// A scrape request larger than this is refused.
const HTTP_REQUEST_MAX_BYTES: usize = 8 << 10;

#[derive(Default)]
pub(crate) struct ShardCounters {
    ops: [Cell<u64>; OP_COUNT],
    errors: Cell<u64>,
    pub(crate) forwarded: Cell<u64>,
    pub(crate) read_repairs: Cell<u64>,
    /// Client requests this shard coordinated as a fallback, every primary
    /// of the key being unreachable.
    pub(crate) fallback_coordinated: Cell<u64>,
    /// Anti-entropy: partition comparisons with a peer, those whose roots
    /// differed, keys repaired, and passes over the shard's partitions.
    pub(crate) ae_compared: Cell<u64>,
    pub(crate) ae_differing: Cell<u64>,
    pub(crate) ae_repaired: Cell<u64>,
    pub(crate) ae_passes: Cell<u64>,
    pub(crate) ae_failed: Cell<u64>,
    pub(crate) ae_reaped: Cell<u64>,
    /// Ownership changes: keys copied into partitions this shard receives,
    /// partitions it confirmed, and partitions (and their keys) it dropped
    /// after they moved away.
    pub(crate) transfer_keys: Cell<u64>,
    pub(crate) transfers_confirmed: Cell<u64>,
    pub(crate) dropped_partitions: Cell<u64>,
    pub(crate) dropped_keys: Cell<u64>,
    /// Bytes received from peers by partition comparisons (Merkle hashes,
    /// key listings, objects): anti-entropy, transfers and hand-offs.
    pub(crate) sync_bytes_received: Cell<u64>,
    latency: [Cell<u64>; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: Cell<u64>,
}

/// A `Send` copy of a shard's counters.
#[derive(Clone, Debug, Default)]
pub(crate) struct CountersSnapshot {
    pub(crate) ops: [u64; OP_COUNT],
    pub(crate) errors: u64,
    pub(crate) forwarded: u64,
    pub(crate) read_repairs: u64,
    pub(crate) fallback_coordinated: u64,
    pub(crate) ae: [u64; 6],
    pub(crate) moves: [u64; 5],
    pub(crate) latency: [u64; LATENCY_BUCKETS_US.len() + 1],
    pub(crate) latency_sum_us: u64,
    pub(crate) connections: usize,
}

const OP_NAMES: [&str; OP_COUNT] = [
    "get",
    "put",
    "delete",
    "stats",
    "replica_get",
    "replica_put",
    "merkle",
    "admin",
];

/// A `Send` copy of a shard's hint figures.
#[derive(Clone, Debug, Default)]
pub(crate) struct HintSnapshot {
    pub(crate) pending: u64,
    pub(crate) pending_bytes: u64,
    pub(crate) stored: u64,
    pub(crate) delivered: u64,
    pub(crate) dropped_full: u64,
    pub(crate) expired: u64,
}

impl ShardCounters {
    pub(crate) fn record(&self, op: Op, outcome: &Outcome, elapsed: Duration) {
        self.count(op, matches!(outcome, Outcome::Failed(..)));
        self.add_latency(elapsed, 1);
    }

    /// Counts a request answered while a batch is decoded; its latency is
    /// recorded by the batch's [`ShardCounters::stamp_batch`]. A batch's
    /// answers leave together, when it ends, so one clock read serves them
    /// all (a read per request was 5% of a shard's CPU under pipelined
    /// reads).
    pub(crate) fn record_in_batch(&self, op: Op, outcome: &Outcome) {
        self.count(op, matches!(outcome, Outcome::Failed(..)));
    }

    /// Records `elapsed` as the latency of `requests` a batch counted with
    /// `record_in_batch`, once their answers are ready to leave.
    pub(crate) fn stamp_batch(&self, elapsed: Duration, requests: u64) {
        if requests > 0 {
            self.add_latency(elapsed, requests);
        }
    }

    /// Counts a request of `op` that `failed` or not, without its latency
    /// (`record_in_batch` of a request whose outcome is not an `Outcome`).
    pub(crate) fn count(&self, op: Op, failed: bool) {
        let bump = |c: &Cell<u64>| c.set(c.get() + 1);
        bump(&self.ops[op as usize]);
        if failed {
            bump(&self.errors);
        }
    }

    fn add_latency(&self, elapsed: Duration, requests: u64) {
        let us = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.latency[bucket].set(self.latency[bucket].get() + requests);
        self.latency_sum_us
            .set(self.latency_sum_us.get().saturating_add(us.saturating_mul(requests)));
    }

    pub(crate) fn snapshot(&self, connections: usize) -> CountersSnapshot {
        CountersSnapshot {
            ops: std::array::from_fn(|i| self.ops[i].get()),
            errors: self.errors.get(),
            forwarded: self.forwarded.get(),
            read_repairs: self.read_repairs.get(),
            fallback_coordinated: self.fallback_coordinated.get(),
            ae: [
                self.ae_compared.get(),
                self.ae_differing.get(),
                self.ae_repaired.get(),
                self.ae_passes.get(),
                self.ae_failed.get(),
                self.ae_reaped.get(),
            ],
            moves: [
                self.transfer_keys.get(),
                self.transfers_confirmed.get(),
                self.dropped_partitions.get(),
                self.dropped_keys.get(),
                self.sync_bytes_received.get(),
            ],
            latency: std::array::from_fn(|i| self.latency[i].get()),
            latency_sum_us: self.latency_sum_us.get(),
            connections,
        }
    }
}

/// Reads one hint figure.
type HintGauge = fn(&HintSnapshot) -> u64;

/// Reads one engine figure for a gauge.
type EngineGauge = fn(&dynkv_engine::EngineStats) -> u64;

/// Renders reports in the Prometheus text exposition format.
pub(crate) fn render(reports: &[ShardReport]) -> String {
    let mut out = String::new();
    fn metric(out: &mut String, name: &str, kind: &str, help: &str, values: &mut dyn Iterator<Item = (String, u64)>) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in values {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
    let shard = |r: &ShardReport| format!("shard=\"{}\"", r.shard);
    metric(
        &mut out,
        "dynkv_requests_total",
        "counter",
        "Requests executed, by operation.",
        &mut reports.iter().flat_map(|r| {
            OP_NAMES
                .iter()
                .enumerate()
                .map(move |(i, op)| (format!("{},op=\"{op}\"", shard(r)), r.counters.ops[i]))
        }),
    );
    metric(
        &mut out,
        "dynkv_request_errors_total",
        "counter",
        "Requests that failed.",
        &mut reports.iter().map(|r| (shard(r), r.counters.errors)),
    );
    metric(
        &mut out,
        "dynkv_forwarded_total",
        "counter",
        "Requests forwarded to the owning shard.",
        &mut reports.iter().map(|r| (shard(r), r.counters.forwarded)),
    );
    metric(
        &mut out,
        "dynkv_read_repairs_total",
        "counter",
        "Replicas sent the merged version after a read found them behind.",
        &mut reports.iter().map(|r| (shard(r), r.counters.read_repairs)),
    );
    metric(
        &mut out,
        "dynkv_fallback_coordinated_total",
        "counter",
        "Client requests coordinated by this shard as a fallback, every primary of the key being unreachable.",
        &mut reports.iter().map(|r| (shard(r), r.counters.fallback_coordinated)),
    );
    let anti_entropy = [
        (
            "dynkv_anti_entropy_compared_total",
            "Partition comparisons with a peer replica.",
        ),
        (
            "dynkv_anti_entropy_differing_total",
            "Comparisons whose Merkle roots differed.",
        ),
        (
            "dynkv_anti_entropy_repaired_total",
            "Keys merged by anti-entropy (either side changed).",
        ),
        (
            "dynkv_anti_entropy_passes_total",
            "Completed passes over the shard's partitions.",
        ),
        (
            "dynkv_anti_entropy_failed_total",
            "Keys anti-entropy could not merge (a refusal, a limit); retried next pass.",
        ),
        (
            "dynkv_tombstones_reaped_total",
            "Deleted keys removed once every replica held the delete (or had removed it).",
        ),
    ];
    for (i, (name, help)) in anti_entropy.iter().enumerate() {
        metric(
            &mut out,
            name,
            "counter",
            help,
            &mut reports.iter().map(|r| (shard(r), r.counters.ae[i])),
        );
    }
    let moves = [
        (
            "dynkv_transfer_keys_total",
            "Keys copied into partitions this shard is receiving (join, leave, remove).",
        ),
        (
            "dynkv_transfers_confirmed_total",
            "Partitions this shard received in full and confirmed.",
        ),
        (
            "dynkv_dropped_partitions_total",
            "Partitions whose local copy was dropped after moving to their new owners.",
        ),
        ("dynkv_dropped_keys_total", "Keys removed with those copies."),
        (
            "dynkv_sync_bytes_received_total",
            "Bytes received by partition comparisons (anti-entropy, transfers, hand-offs): hashes, key listings, objects.",
        ),
    ];
    for (i, (name, help)) in moves.iter().enumerate() {
        metric(
            &mut out,
            name,
            "counter",
            help,
            &mut reports.iter().map(|r| (shard(r), r.counters.moves[i])),
        );
    }
    let ownership = [
        (
            "dynkv_ownership_epoch",
            "Ownership epoch this shard sees; it rises with every planned or committed change.",
        ),
        (
            "dynkv_partitions_owned",
            "Partitions this shard owns in the current table.",
        ),
        (
            "dynkv_partitions_receiving",
            "Partitions this shard is to own once they are copied, not yet confirmed.",
        ),
        (
            "dynkv_ownership_transfers_pending",
            "Incoming replicas of the cluster's pending table not yet confirmed (0 when settled).",
        ),
        ("dynkv_ownership_settled", "1 when no ownership change is in progress."),
    ];
    for (i, (name, help)) in ownership.iter().enumerate() {
        metric(
            &mut out,
            name,
            "gauge",
            help,
            &mut reports.iter().map(|r| (shard(r), r.ownership[i])),
        );
    }
    let hints: [(&str, &str, &str, HintGauge); 6] = [
        (
            "dynkv_hints_pending",
            "gauge",
            "Hints held for unreachable replicas.",
            |h| h.pending,
        ),
        ("dynkv_hints_pending_bytes", "gauge", "Bytes of hints held.", |h| {
            h.pending_bytes
        }),
        (
            "dynkv_hints_stored_total",
            "counter",
            "Hints stored (or merged into one held).",
            |h| h.stored,
        ),
        (
            "dynkv_hints_delivered_total",
            "counter",
            "Hints acknowledged by their primary and deleted.",
            |h| h.delivered,
        ),
        (
            "dynkv_hints_dropped_full_total",
            "counter",
            "Hints refused because the hint store was full.",
            |h| h.dropped_full,
        ),
        (
            "dynkv_hints_expired_total",
            "counter",
            "Hints dropped for age (hint_age_max_ms).",
            |h| h.expired,
        ),
    ];
    for (name, kind, help, get) in hints {
        metric(
            &mut out,
            name,
            kind,
            help,
            &mut reports.iter().map(|r| (shard(r), get(&r.hints))),
        );
    }
    metric(
        &mut out,
        "dynkv_cluster_members",
        "gauge",
        "Nodes in the membership this shard sees.",
        &mut reports.iter().map(|r| (shard(r), r.members)),
    );
    metric(
        &mut out,
        "dynkv_cluster_members_down",
        "gauge",
        "Members the failure detector holds down (no heartbeat of theirs heard, directly or relayed).",
        &mut reports.iter().map(|r| (shard(r), r.down)),
    );
    metric(
        &mut out,
        "dynkv_cluster_ready",
        "gauge",
        "1 once every configured peer was heard from and partitions are placed; 0 while forming.",
        &mut reports.iter().map(|r| (shard(r), u64::from(r.ready))),
    );
    metric(
        &mut out,
        "dynkv_connections",
        "gauge",
        "Open client connections.",
        &mut reports.iter().map(|r| (shard(r), r.counters.connections as u64)),
    );
    let _ = writeln!(out, "# HELP dynkv_request_duration_us Request latency on the owning shard path, microseconds.\n# TYPE dynkv_request_duration_us histogram");
    for r in reports {
        let mut cumulative = 0;
        for (i, count) in r.counters.latency.iter().enumerate() {
            cumulative += count;
            let le = LATENCY_BUCKETS_US.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "dynkv_request_duration_us_bucket{{{},le=\"{le}\"}} {cumulative}",
                shard(r)
            );
        }
        let _ = writeln!(
            out,
            "dynkv_request_duration_us_sum{{{}}} {}",
            shard(r),
            r.counters.latency_sum_us
        );
        let _ = writeln!(out, "dynkv_request_duration_us_count{{{}}} {cumulative}", shard(r));
    }
    let engine: [(&str, &str, EngineGauge); 12] = [
        ("dynkv_engine_keys", "Keys stored, tombstones included.", |e| e.keys),
        ("dynkv_engine_live_bytes", "Bytes of newest records.", |e| e.live_bytes),
        ("dynkv_engine_dead_bytes", "Bytes awaiting compaction.", |e| {
            e.dead_bytes
        }),
        ("dynkv_engine_segments", "Segment files.", |e| e.segments),
        (
            "dynkv_engine_syncs_total",
            "fdatasync calls (each covers a group of puts).",
            |e| e.syncs,
        ),
        (
            "dynkv_engine_cache_hits_total",
            "Reads served by the value cache.",
            |e| e.cache_hits,
        ),
        ("dynkv_engine_disk_reads_total", "Reads that went to disk.", |e| {
            e.disk_reads
        }),
        (
            "dynkv_engine_segments_compacted_total",
            "Segments rewritten by compaction.",
            |e| e.segments_compacted,
        ),
        (
            "dynkv_engine_segments_compacted_from_keydir_total",
            "Of those, segments whose few live records were found in the keydir instead of by a scan.",
            |e| e.segments_compacted_from_keydir,
        ),
        (
            "dynkv_engine_hints_streamed_total",
            "Hint files written from entries queued as their segment was appended.",
            |e| e.hints_streamed,
        ),
        (
            "dynkv_engine_hints_scanned_total",
            "Hint files written by reading their segment back.",
            |e| e.hints_scanned,
        ),
        ("dynkv_engine_bytes_written_total", "Bytes written to segments.", |e| {
            e.bytes_written
        }),
    ];
    for (name, help, get) in engine {
        metric(
            &mut out,
            name,
            "gauge",
            help,
            &mut reports.iter().map(|r| (shard(r), get(&r.engine))),
        );
    }
    out
}

/// Serves one HTTP/1.1 scrape and closes the connection.
pub(crate) async fn serve_scrape(shard: Rc<Shard>, mut stream: TcpStream) {
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = glommio::timer::timeout(Duration::from_secs(5), async { Ok(stream.read(&mut chunk).await) }).await;
        match read {
            Ok(Ok(n)) if n > 0 && request.len() + n <= HTTP_REQUEST_MAX_BYTES => request.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    let (status, body) = if request.starts_with(b"GET /metrics ") || request.starts_with(b"GET / ") {
        ("200 OK", render(&shard.all_reports().await))
    } else {
        ("404 Not Found", "try GET /metrics\n".to_string())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.close().await;
}
