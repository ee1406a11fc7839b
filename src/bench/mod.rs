//! `dynkv bench`: the load generator. It drives a running node or cluster
//! through the native, shard-aware client from several glommio executors
//! (`--threads`), closed-loop or open-loop, optionally after a load phase,
//! and reports throughput, latency percentiles per operation, errors by
//! kind and reads that saw siblings; it writes a JSON report and an SVG
//! chart of throughput and p99 over time.

mod driver;
mod report;
mod workload;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynkv_net::{CallOptions, ClientOptions};

use driver::{Plan, Shared};
use report::{Recorder, Summary};
use workload::{KeyChoice, KeyChooser, Mix, ValueSize};

/// Longest run a benchmark may ask for.
const DURATION_MAX_S: u64 = 86_400;
/// Most concurrent requests per thread.
const CONCURRENCY_MAX: usize = 100_000;
/// Most operations a worker pipelines at once.
const PIPELINE_MAX: usize = 10_000;
/// Largest value a benchmark writes (the server's default value limit).
const VALUE_MAX_BYTES: usize = 1 << 20;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Native-protocol addresses of the nodes to drive (any shard of each),
    /// comma-separated. Every thread connects to each; a request goes to the
    /// node its key hashes to, so every node coordinates an equal share.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7600")]
    addr: Vec<SocketAddr>,
    /// YCSB workload: A (50/50 read/update), B (95/5), C (read only),
    /// D (read latest, 5% inserts), F (read-modify-write), or custom.
    #[arg(long, default_value = "A")]
    workload: String,
    /// Custom mix weights (with --workload custom).
    #[arg(long, default_value_t = 0)]
    read: u32,
    #[arg(long, default_value_t = 0)]
    update: u32,
    #[arg(long, default_value_t = 0)]
    insert: u32,
    #[arg(long, default_value_t = 0)]
    delete: u32,
    #[arg(long, default_value_t = 0)]
    rmw: u32,
    /// Key choice: uniform, zipfian or latest [default: zipfian, or latest for D].
    #[arg(long)]
    distribution: Option<String>,
    /// Zipfian constant.
    #[arg(long, default_value_t = 0.99)]
    theta: f64,
    /// Keys in the key space.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Value size in bytes, or an inclusive range like 100..1000.
    #[arg(long, default_value = "100")]
    value_size: String,
    /// Write every key once before measuring.
    #[arg(long)]
    load: bool,
    /// Concurrent requests per thread (closed loop), or the most in flight
    /// per thread (open loop).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Closed loop: operations each of the --concurrency workers sends at
    /// once, as one pipeline per node, waiting for all their answers before
    /// the next batch (as `redis-benchmark -P` does). Each records the
    /// batch's latency. 1: each worker sends one at a time.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Open loop: operations per second in all, due at fixed times whatever
    /// the server does (latency counts from when each was due).
    #[arg(long)]
    rate: Option<u64>,
    /// Run for this long [default: 10 s unless --ops is given].
    #[arg(long)]
    duration_s: Option<u64>,
    /// Stop after this many operations.
    #[arg(long)]
    ops: Option<u64>,
    /// Per-request read and write quorums (default: the node's).
    #[arg(long)]
    r: Option<u8>,
    #[arg(long)]
    w: Option<u8>,
    /// Per-request timeout.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Load-generator threads (glommio executors).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Where to write the JSON report and the SVG chart.
    #[arg(long, default_value = "dynkv-bench.json")]
    json: PathBuf,
    #[arg(long, default_value = "dynkv-bench.svg")]
    svg: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

/// The checked settings of a run.
struct Settings {
    mix: Mix,
    keys: Arc<KeyChooser>,
    value_size: ValueSize,
    duration: Option<Duration>,
    ops: Option<u64>,
    read: CallOptions,
    write: CallOptions,
    client: ClientOptions,
}

impl BenchArgs {
    fn check(&self) -> Result<Settings, String> {
        let (mix, implied) = if self.workload.eq_ignore_ascii_case("custom") {
            let mix = Mix::new([self.read, self.update, self.insert, self.delete, self.rmw])?;
            (mix, None)
        } else {
            workload::ycsb(&self.workload)?
        };
        let choice = match self.distribution.as_deref() {
            None => implied.unwrap_or(KeyChoice::Zipfian { theta: self.theta }),
            Some("uniform") => KeyChoice::Uniform,
            Some("zipfian") => KeyChoice::Zipfian { theta: self.theta },
            Some("latest") => KeyChoice::Latest { theta: self.theta },
            Some(other) => {
                return Err(format!(
                    "unknown distribution {other:?}: use uniform, zipfian or latest"
                ))
            }
        };
        let value_size = ValueSize::parse(&self.value_size)?;
        if value_size.max_bytes > VALUE_MAX_BYTES {
            return Err(format!("values of up to {VALUE_MAX_BYTES} bytes"));
        }
        if self.threads == 0 || self.threads > 256 {
            return Err(format!("--threads {} must be between 1 and 256", self.threads));
        }
        if self.concurrency == 0 || self.concurrency > CONCURRENCY_MAX {
            return Err(format!(
                "--concurrency {} must be between 1 and {CONCURRENCY_MAX}",
                self.concurrency
            ));
        }
        if self.pipeline == 0 || self.pipeline > PIPELINE_MAX {
            return Err(format!(
                "--pipeline {} must be between 1 and {PIPELINE_MAX}",
                self.pipeline
            ));
        }
        if self.pipeline > 1 && self.rate.is_some() {
            return Err(
                "--pipeline is for the closed loop; the open loop (--rate) sends each request when it is due".into(),
            );
        }
        if self.rate == Some(0) {
            return Err("--rate must be positive".into());
        }
        if self.addr.is_empty() {
            return Err("give at least one --addr".into());
        }
        let duration = match (self.duration_s, self.ops) {
            (Some(0), _) | (_, Some(0)) => return Err("--duration-s and --ops must be positive".into()),
            (Some(s), _) if s > DURATION_MAX_S => return Err(format!("--duration-s is at most {DURATION_MAX_S}")),
            (Some(s), _) => Some(Duration::from_secs(s)),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        };
        if self.timeout_ms == 0 {
            return Err("--timeout-ms must be positive".into());
        }
        let timeout = Duration::from_millis(self.timeout_ms);
        Ok(Settings {
            mix,
            keys: Arc::new(KeyChooser::new(choice, self.keys)?),
            value_size,
            duration,
            ops: self.ops,
            read: CallOptions {
                quorum: self.r,
                ..CallOptions::default()
            },
            write: CallOptions {
                quorum: self.w,
                ..CallOptions::default()
            },
            client: ClientOptions {
                timeout,
                connect_timeout: timeout.min(Duration::from_secs(3)),
                inflight_max: self.concurrency.saturating_mul(self.pipeline).max(1),
            },
        })
    }

    fn plan(&self, settings: &Settings, thread: usize, mix: Mix, rate: Option<f64>) -> Plan {
        Plan {
            addrs: self.addr.clone(),
            mix,
            keys: settings.keys.clone(),
            value_size: settings.value_size,
            concurrency: self.concurrency,
            pipeline: self.pipeline,
            rate,
            read: settings.read,
            write: settings.write,
            client: settings.client,
            seed: self.seed,
            thread: thread as u64,
        }
    }
}

/// Process CPU seconds (user + system) so far.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs `plans` on one thread each until `limit` passes or the budget is
/// spent, showing progress, and merges what they recorded.
fn run_phase(
    label: &str,
    plans: Vec<Plan>,
    shared: Arc<Shared>,
    limit: Option<Duration>,
    quiet: bool,
) -> Result<Summary, String> {
    let threads = plans.len();
    let start = Instant::now();
    let cpu_before = process_cpu_s();
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles: Vec<_> = plans
        .into_iter()
        .enumerate()
        .map(|(i, plan)| {
            let (shared, finished) = (shared.clone(), finished.clone());
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .name(&format!("dynkv-bench-{i}"))
                .spawn(move || async move {
                    // Counted as finished even if the thread panics.
                    let _done = Finished(finished);
                    let result = driver::run_thread(plan, shared.clone(), start).await;
                    if result.is_err() {
                        // Without this thread the run means little: stop all.
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                    result
                })
                .map_err(|e| format!("cannot start load thread {i}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let progress = Progress::new(label, limit, quiet);
    let mut last = (start, 0u64);
    while finished.load(Ordering::Acquire) < threads {
        std::thread::sleep(Duration::from_millis(10));
        let now = Instant::now();
        if limit.is_some_and(|l| now - start >= l) {
            shared.stop.store(true, Ordering::Relaxed);
        }
        if now - last.0 >= Duration::from_secs(1) {
            let (ops, errors) = shared.progress();
            let rate = (ops - last.1) as f64 / (now - last.0).as_secs_f64();
            progress.tick(now - start, rate, errors);
            last = (now, ops);
        }
    }
    progress.finish();
    // The window from the first thread ready to send to the last one done:
    // connecting is not part of the run.
    let ready = Duration::from_nanos(shared.ready_ns.load(Ordering::Relaxed));
    let done = Duration::from_nanos(shared.done_ns.load(Ordering::Relaxed));
    let elapsed = done.saturating_sub(ready).max(Duration::from_micros(1));
    let mut merged = Recorder::new(start);
    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(recorder)) => merged.merge(recorder),
            Ok(Err(err)) => failure = failure.or(Some(err)),
            Err(err) => failure = failure.or(Some(format!("a load thread failed: {err}"))),
        }
    }
    if let Some(err) = failure {
        return Err(format!("cannot reach the cluster: {err}"));
    }
    Ok(Summary {
        recorder: merged,
        elapsed,
        client_cpu_s: process_cpu_s() - cpu_before,
        threads,
    })
}

/// Counts a load thread as finished when dropped, panic or not.
struct Finished(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// A progress bar on a terminal, a line every few seconds elsewhere.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    quiet: bool,
}

impl Progress {
    fn new(label: &str, limit: Option<Duration>, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = match limit {
                Some(limit) => indicatif::ProgressBar::new(limit.as_secs()),
                None => indicatif::ProgressBar::new_spinner(),
            };
            let style = indicatif::ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(label.to_string());
            bar
        });
        Progress {
            bar,
            label: label.to_string(),
            quiet,
        }
    }

    fn tick(&self, elapsed: Duration, rate: f64, errors: u64) {
        let message = format!("{rate:.0} ops/s, {errors} errors");
        match &self.bar {
            Some(bar) => {
                bar.set_position(elapsed.as_secs());
                bar.set_message(message);
            }
            None if !self.quiet && elapsed.as_secs().is_multiple_of(5) => {
                eprintln!("{} [{:>4} s] {message}", self.label, elapsed.as_secs())
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub(crate) fn run(args: BenchArgs) -> Result<(), String> {
    let settings = args.check()?;
    let shared = Arc::new(Shared::new(args.threads));
    shared.newest_key.store(args.keys, Ordering::Relaxed);
    shared.next_insert.store(args.keys, Ordering::Relaxed);
    if args.load {
        let load_mix = Mix::new([0, 1, 0, 0, 0]).expect("not empty");
        let loader = Arc::new(Shared::new(args.threads));
        loader.budget.store(args.keys, Ordering::Relaxed);
        // The load phase walks the keys in order: insert from 0.
        loader.next_insert.store(0, Ordering::Relaxed);
        let plans = (0..args.threads)
            .map(|t| Plan {
                mix: Mix::new([0, 0, 1, 0, 0]).expect("not empty"),
                ..args.plan(&settings, t, load_mix, None)
            })
            .collect();
        let summary = run_phase("load", plans, loader, None, args.quiet)?;
        println!(
            "load: {} keys in {:.2} s ({:.0} ops/s, {} errors)",
            summary.recorder.ops(),
            summary.elapsed.as_secs_f64(),
            summary.throughput(),
            summary.recorder.error_count()
        );
    }
    shared.budget.store(settings.ops.unwrap_or(u64::MAX), Ordering::Relaxed);
    let rate = args.rate.map(|r| r as f64 / args.threads as f64);
    let plans = (0..args.threads)
        .map(|t| args.plan(&settings, t, settings.mix, rate))
        .collect();
    let label = format!("workload {}", args.workload);
    let summary = run_phase(&label, plans, shared, settings.duration, args.quiet)?;
    print!("{}", summary.text());
    let settings_json = serde_json::json!({
        "addr": args.addr.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "workload": args.workload,
        "distribution": args.distribution,
        "theta": args.theta,
        "keys": args.keys,
        "value_size": args.value_size,
        "concurrency": args.concurrency,
        "pipeline": args.pipeline,
        "rate": args.rate,
        "threads": args.threads,
        "r": args.r,
        "w": args.w,
        "timeout_ms": args.timeout_ms,
        "seed": args.seed,
    });
    let report = serde_json::to_string_pretty(&summary.json(settings_json)).expect("a JSON value serializes");
    std::fs::write(&args.json, report).map_err(|e| format!("cannot write {}: {e}", args.json.display()))?;
    summary.svg(&args.svg, &label)?;
    println!("wrote {} and {}", args.json.display(), args.svg.display());
    Ok(())
}
