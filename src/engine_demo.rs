//! `dynkv demo`: one glommio executor per core, each with its own engine,
//! writing, reading, reopening and reporting, with no network in the way.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynkv_engine::{Engine, EngineConfig, EngineStats, SyncMode};
use glommio::{LocalExecutorBuilder, Placement};

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct DemoArgs {
    /// Data directory; each shard uses `<dir>/shard-<n>`.
    #[arg(long, default_value_os_t = crate::default_data_dir())]
    data_dir: PathBuf,
    /// Shards (executors, one per core). Default: every core.
    #[arg(long)]
    shards: Option<usize>,
    /// Keys each shard writes.
    #[arg(long, default_value_t = 100_000)]
    keys: u32,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Concurrent writers per shard (they share group commits).
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Durability: always | never | interval_ms=N.
    #[arg(long, default_value = "always")]
    sync: String,
}

struct ShardReport {
    shard: usize,
    write: Duration,
    read: Duration,
    reopen: Duration,
    stats: EngineStats,
    keys_after_reopen: u64,
}

pub(crate) fn run(args: DemoArgs) -> Result<(), String> {
    let sync = SyncMode::parse(&args.sync).map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = args.shards.unwrap_or(cores);
    if shards == 0 || shards > 1024 {
        return Err(format!("--shards {shards} must be between 1 and 1024"));
    }
    if args.concurrency == 0 || args.concurrency > 4096 {
        return Err(format!("--concurrency {} must be between 1 and 4096", args.concurrency));
    }
    println!(
        "dynkv demo: the storage engine alone on {shards} shard(s) ({cores} cores), data in {}",
        args.data_dir.display()
    );
    let handles: Vec<_> = (0..shards)
        .map(|shard| {
            let args = args.clone();
            let placement = if shards <= cores {
                Placement::Fixed(shard)
            } else {
                Placement::Unbound
            };
            LocalExecutorBuilder::new(placement)
                .name(&format!("shard-{shard}"))
                .spawn(move || async move { shard_demo(shard, args, sync).await })
                .map_err(|e| format!("cannot start shard {shard}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut failed = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(report)) => print_report(&report, &args),
            Ok(Err(err)) => failed = Some(err),
            Err(err) => failed = Some(format!("shard thread failed: {err}")),
        }
    }
    failed.map_or(Ok(()), Err)
}

async fn shard_demo(shard: usize, args: DemoArgs, sync: SyncMode) -> Result<ShardReport, String> {
    let mut config = EngineConfig::new(args.data_dir.join(format!("shard-{shard}")));
    config.sync = sync;
    let err = |e: dynkv_engine::EngineError| format!("shard {shard}: {e}");
    let engine = Rc::new(Engine::open(config.clone()).await.map_err(err)?);
    let value = vec![b'v'; args.value_bytes];
    let started = Instant::now();
    let writers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (engine, value, args) = (engine.clone(), value.clone(), args.clone());
            glommio::spawn_local(async move {
                for i in (w..args.keys).step_by(args.concurrency as usize) {
                    engine.put(i % 64, format!("key-{i:010}").as_bytes(), &value).await?;
                }
                Ok::<_, dynkv_engine::EngineError>(())
            })
        })
        .collect();
    for writer in writers {
        writer.await.map_err(err)?;
    }
    let write = started.elapsed();
    let started = Instant::now();
    let readers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (engine, args) = (engine.clone(), args.clone());
            glommio::spawn_local(async move {
                for i in (w..args.keys).step_by(args.concurrency as usize) {
                    let got = engine.get(i % 64, format!("key-{i:010}").as_bytes()).await;
                    match got {
                        Ok(Some(r)) if r.value.len() == args.value_bytes => {}
                        Ok(_) => return Err(format!("shard {shard}: key {i} did not read back")),
                        Err(e) => return Err(format!("shard {shard}: {e}")),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for reader in readers {
        reader.await?;
    }
    let read = started.elapsed();
    let stats = engine.stats();
    engine.close().await.map_err(err)?;
    drop(engine);
    let started = Instant::now();
    let engine = Engine::open(config).await.map_err(err)?;
    let reopen = started.elapsed();
    let keys_after_reopen = engine.stats().keys;
    engine.close().await.map_err(err)?;
    Ok(ShardReport {
        shard,
        write,
        read,
        reopen,
        stats,
        keys_after_reopen,
    })
}

fn print_report(r: &ShardReport, args: &DemoArgs) {
    let per_sec = |n: u32, d: Duration| f64::from(n) / d.as_secs_f64().max(1e-9);
    println!(
        "shard {}: put {} keys x {} B in {:.2?} ({:.0} puts/s, {} syncs, {:.1} puts per sync); \
         get in {:.2?} ({:.0} gets/s, {} cache hits); reopen in {:.2?} found {} keys; {} segments, {} live bytes",
        r.shard,
        args.keys,
        args.value_bytes,
        r.write,
        per_sec(args.keys, r.write),
        r.stats.syncs,
        r.stats.puts as f64 / r.stats.syncs.max(1) as f64,
        r.read,
        per_sec(args.keys, r.read),
        r.stats.cache_hits,
        r.reopen,
        r.keys_after_reopen,
        r.stats.segments,
        r.stats.live_bytes,
    );
}
