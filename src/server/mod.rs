//! `dynkv serve`: one glommio executor per shard, each with its own engine,
//! native-protocol port, a share of the RESP port (SO_REUSEPORT), and
//! channels to every other shard. Shard 0 also serves metrics.

mod actor;
mod anti_entropy;
mod auth;
mod batch;
mod context_seal;
mod coordinator;
mod eager;
mod fallback;
mod hints;
mod host;
mod identity;
mod key_locks;
mod link;
mod members;
pub(crate) mod metrics;
mod native;
mod recv;
mod relay;
mod replica;
mod resp;
pub(crate) mod shard;
pub(crate) mod shutdown;
mod transfer;
mod view;

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynkv_engine::Engine;
use dynkv_ring::{NodeId, PartitionCount};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::ServeConfig;
use shard::{Shard, ShardMsg, ShardParts};
use view::ClusterView;

/// Requests one shard may queue for another before the sender waits.
const MESH_CHANNEL_CAPACITY: usize = 4096;
/// Task-queue shares of background work (handoff) against 1000 for
/// requests.
const BACKGROUND_SHARES: usize = 50;
/// How long shutdown waits for open connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener shared by every shard (SO_REUSEPORT, as glommio's own
/// `bind`) that also binds while connections of an earlier process on the
/// port are in TIME_WAIT (SO_REUSEADDR), as after a crash.
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::unix::io::{FromRawFd, IntoRawFd};
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    // SAFETY: the descriptor is a bound, listening TCP socket that nothing
    // else owns after `into_raw_fd`.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Fails early, with the address, if a port is taken.
fn preflight(config: &ServeConfig) -> Result<(), String> {
    let mut ports: Vec<u16> = (0..config.shards as u16)
        .flat_map(|s| [config.base_port + s, config.internode_base_port + s])
        .collect();
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
    let me = identity::load_or_create(&config.data_dir, config.node_id)?;
    let q = PartitionCount::default();
    let members = members::Members::open(&config, me, q)?;
    let seal = context_seal::ContextSeal::new(&config.cluster_secret, &config.data_dir)?;
    let view = Arc::new(members.view()?);
    if let Some(table) = &view.table {
        if table.replicas_short() > 0 {
            println!(
                "dynkv: n = {} but the cluster has {} node(s): each key is kept {} time(s) until more join",
                config.n,
                view.membership.records().count(),
                table.replicas()
            );
        }
    }
    let mut members = Some(members);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mesh: MeshBuilder<ShardMsg, _> = MeshBuilder::full(config.shards, MESH_CHANNEL_CAPACITY);
    let open_connections = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..config.shards)
        .map(|id| {
            let (config, view, mesh, open) = (config.clone(), view.clone(), mesh.clone(), open_connections.clone());
            let seal = seal.clone();
            let members = if id == 0 { members.take() } else { None };
            let placement = if config.shards <= cores {
                Placement::Fixed(id)
            } else {
                Placement::Unbound
            };
            LocalExecutorBuilder::new(placement)
                .name(&format!("dynkv-shard-{id}"))
                .spawn(move || async move {
                    let boot = Boot {
                        id,
                        me,
                        seal,
                        config,
                        q,
                        view,
                        members,
                    };
                    let result = shard_main(boot, mesh, open).await;
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

/// What a shard starts from.
struct Boot {
    id: usize,
    me: NodeId,
    seal: context_seal::ContextSeal,
    config: ServeConfig,
    q: PartitionCount,
    view: Arc<ClusterView>,
    members: Option<members::Members>,
}

async fn shard_main(
    boot: Boot,
    mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    open: Arc<AtomicUsize>,
) -> Result<(), String> {
    let Boot {
        id,
        me,
        seal,
        config,
        q,
        view,
        members,
    } = boot;
    let engine_dir = config.engine_config(id).dir;
    let engine = Engine::open(config.engine_config(id))
        .await
        .map_err(|e| e.to_string())?;
    let sync_always = config.sync_always();
    let actor = match actor::open(&engine_dir, sync_always) {
        Ok(actor) => actor,
        Err(err) => {
            let _ = engine.close().await;
            return Err(err);
        }
    };
    let hint_engine = match Engine::open(config.hint_engine_config(id)).await {
        Ok(engine) => engine,
        Err(err) => {
            let _ = engine.close().await;
            return Err(format!("opening the hint store: {err}"));
        }
    };
    let bind = |port: u16| {
        let addr = SocketAddr::new(config.listen, port);
        bind_listener(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
    };
    let native = bind(config.base_port + id as u16)?;
    let internode = bind(config.internode_base_port + id as u16)?;
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
        let _ = hint_engine.close().await;
        return Err("shutdown before all shards started".into());
    };
    let members = members.map(Rc::new);
    let hints = hints::HintStore::new(hint_engine, config.hints_max_mib << 20, config.hint_age_max_ms);
    // Handoff, anti-entropy and transfers (this node's, and peers' requests
    // for theirs) are background work: a low share of the shard's time.
    let background = glommio::executor().create_task_queue(
        glommio::Shares::Static(BACKGROUND_SHARES),
        glommio::Latency::NotImportant,
        "background",
    );
    let shard = Rc::new(Shard::new(ShardParts {
        id,
        me,
        actor,
        seal,
        engine,
        hints,
        config: config.clone(),
        q,
        view,
        senders,
        members: members.clone(),
        background,
    }));
    shard.serve_peers(receivers);
    if let Some(members) = members {
        announce(&config, me);
        glommio::spawn_local(members::run(shard.clone(), members)).detach();
    }
    let handoff = glommio::spawn_local_into(hints::handoff_loop(shard.clone()), background)
        .map_err(|e| format!("cannot start hinted handoff: {e}"))?;
    let repair = glommio::spawn_local_into(anti_entropy::anti_entropy_loop(shard.clone()), background)
        .map_err(|e| format!("cannot start anti-entropy: {e}"))?;
    let transfers = glommio::spawn_local_into(transfer::transfer_loop(shard.clone()), background)
        .map_err(|e| format!("cannot start partition transfers: {e}"))?;
    let mut accept_loops = vec![
        glommio::spawn_local(accept_loop(shard.clone(), native, open.clone(), native::serve_client)),
        glommio::spawn_local(accept_loop(
            shard.clone(),
            internode,
            open.clone(),
            native::serve_internode,
        )),
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
    handoff.await;
    repair.await;
    transfers.await;
    // Every shard waits for every connection of the node, since requests
    // read anywhere may still be forwarded here.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while open.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let hints_closed = shard.hints.engine.close().await;
    shard
        .engine
        .close()
        .await
        .map_err(|e| format!("closing the engine: {e}"))?;
    actor::mark_clean(&engine_dir)?;
    hints_closed.map_err(|e| format!("closing the hint store: {e}"))
}

fn announce(config: &ServeConfig, me: NodeId) {
    let last = config.base_port + config.shards as u16 - 1;
    let cluster = match (config.peers.is_empty(), config.join.is_empty()) {
        (true, true) => "one-node cluster".to_string(),
        (false, true) => format!("peers {}", config.peers.join(",")),
        (_, false) => format!("joining through {}", config.join.join(",")),
    };
    println!(
        "dynkv: node {me} serving {} shard(s): native {ip}:{}-{last}, internode {ip}:{}, RESP {ip}:{}, \
         metrics http://{ip}:{}/metrics; data in {}; sync={}; n={} r={} w={}; {cluster}",
        config.shards,
        config.base_port,
        config.internode_base_port,
        config.resp_port,
        config.metrics_port,
        config.data_dir.display(),
        config.sync,
        config.n,
        config.r,
        config.w,
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
