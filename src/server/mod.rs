//! `dynkv serve`: one glommio executor per shard, each with its own engine,
//! native-protocol port, a share of the RESP port (SO_REUSEPORT), and
//! channels to every other shard. Shard 0 also serves metrics.

mod host;
pub(crate) mod metrics;
mod native;
mod recv;
mod resp;
pub(crate) mod shard;
pub(crate) mod shutdown;

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynkv_engine::Engine;
use dynkv_ring::{claim, ClaimNode, NodeId, PartitionCount, ZoneId};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::ServeConfig;
use shard::{Shard, ShardMsg};

/// Requests one shard may queue for another before the sender waits.
const MESH_CHANNEL_CAPACITY: usize = 4096;
/// How long shutdown waits for open connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Partition → shard for a one-node cluster, from the ring's claim (so the
/// split is the same one a cluster would compute for this node).
fn shard_map(shards: usize) -> Result<(PartitionCount, Vec<u16>), String> {
    let shards_u16 = u16::try_from(shards).map_err(|_| format!("{shards} shards is too many"))?;
    let node = ClaimNode {
        id: NodeId(1),
        weight: u32::from(shards_u16),
        zone: ZoneId(0),
        shards: shards_u16,
    };
    let q = PartitionCount::default();
    let table = claim(None, &[node], q, 1).map_err(|e| e.to_string())?;
    Ok((q, (0..q.get()).map(|p| table.owners(p)[0].shard).collect()))
}

/// Fails early, with the address, if a port is taken.
fn preflight(config: &ServeConfig) -> Result<(), String> {
    let mut ports: Vec<u16> = (0..config.shards as u16).map(|s| config.base_port + s).collect();
    ports.extend([config.resp_port, config.metrics_port]);
    for port in ports {
        let addr = SocketAddr::new(config.listen, port);
        std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    }
    Ok(())
}

/// Runs the node until SIGINT or SIGTERM, then shuts down gracefully.
pub(crate) fn run(config: ServeConfig) -> Result<(), String> {
    shutdown::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    preflight(&config)?;
    let host = host::inspect(&config.data_dir, config.shards)?;
    println!("dynkv: {}", host.describe(config.shards));
    let (q, shard_of) = shard_map(config.shards)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mesh: MeshBuilder<ShardMsg, _> = MeshBuilder::full(config.shards, MESH_CHANNEL_CAPACITY);
    let open_connections = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..config.shards)
        .map(|id| {
            let (config, shard_of, mesh, open) =
                (config.clone(), shard_of.clone(), mesh.clone(), open_connections.clone());
            let placement = if config.shards <= cores {
                Placement::Fixed(id)
            } else {
                Placement::Unbound
            };
            LocalExecutorBuilder::new(placement)
                .name(&format!("dynkv-shard-{id}"))
                .spawn(move || async move {
                    let result = shard_main(id, config, q, shard_of, mesh, open).await;
                    if let Err(err) = &result {
                        eprintln!("dynkv: shard {id}: {err}");
                        shutdown::request();
                    }
                    result
                })
                .map_err(|e| format!("cannot start shard {id}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut first_error = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => first_error = first_error.or(Some(err)),
            Err(err) => first_error = first_error.or(Some(format!("shard thread failed: {err}"))),
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => {
            println!("dynkv: stopped cleanly; every acknowledged write is durable");
            Ok(())
        }
    }
}

async fn shard_main(
    id: usize,
    config: ServeConfig,
    q: PartitionCount,
    shard_of: Vec<u16>,
    mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    open: Arc<AtomicUsize>,
) -> Result<(), String> {
    let engine = Engine::open(config.engine_config(id))
        .await
        .map_err(|e| e.to_string())?;
    let bind = |port: u16| {
        let addr = SocketAddr::new(config.listen, port);
        TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
    };
    let native = bind(config.base_port + id as u16)?;
    let resp = bind(config.resp_port)?;
    let metrics = if id == 0 {
        Some(bind(config.metrics_port)?)
    } else {
        None
    };
    let joined = futures_lite::future::or(async { Some(mesh.join().await) }, async {
        shutdown::wait().await;
        None
    })
    .await;
    let Some(Ok((senders, receivers))) = joined else {
        let _ = engine.close().await;
        return Err("shutdown before all shards started".into());
    };
    let shard = Rc::new(Shard::new(id, engine, config.clone(), q, shard_of, senders));
    shard.serve_peers(receivers);
    if id == 0 {
        announce(&config);
    }
    let mut accept_loops = vec![
        glommio::spawn_local(accept_loop(shard.clone(), native, open.clone(), native::serve)),
        glommio::spawn_local(accept_loop(shard.clone(), resp, open.clone(), resp::serve)),
    ];
    if let Some(metrics) = metrics {
        accept_loops.push(glommio::spawn_local(accept_loop(
            shard.clone(),
            metrics,
            open.clone(),
            metrics::serve_scrape,
        )));
    }
    for task in accept_loops {
        task.await;
    }
    // Every shard waits for every connection of the node, since requests
    // read anywhere may still be forwarded here.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while open.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    shard
        .engine
        .close()
        .await
        .map_err(|e| format!("closing the engine: {e}"))
}

fn announce(config: &ServeConfig) {
    let last = config.base_port + config.shards as u16 - 1;
    println!(
        "dynkv: serving {} shard(s): native {ip}:{}-{last}, RESP {ip}:{}, metrics http://{ip}:{}/metrics; \
         data in {}; sync={}",
        config.shards,
        config.base_port,
        config.resp_port,
        config.metrics_port,
        config.data_dir.display(),
        config.sync,
        ip = config.listen,
    );
}

/// Accepts connections until shutdown, serving each in its own task.
async fn accept_loop<F, Fut>(shard: Rc<Shard>, listener: TcpListener, open: Arc<AtomicUsize>, serve: F)
where
    F: Fn(Rc<Shard>, TcpStream) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let serve = Rc::new(serve);
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.stopping.closed().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(err)) => {
                tracing::warn!(shard = shard.id, "accept failed: {err}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.connections.get() >= shard.config.connections_per_shard_max {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        shard.connections.set(shard.connections.get() + 1);
        open.fetch_add(1, Ordering::AcqRel);
        let (shard, open, serve) = (shard.clone(), open.clone(), serve.clone());
        glommio::spawn_local(async move {
            serve(shard.clone(), stream).await;
            shard.connections.set(shard.connections.get() - 1);
            open.fetch_sub(1, Ordering::AcqRel);
        })
        .detach();
    }
}
