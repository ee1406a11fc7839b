//! Running real `dynkv serve` processes on loopback for tests. Every
//! process is stopped by PID: on `terminate`, `kill`, or drop.

#![allow(dead_code)] // Each test binary uses a different part.
#![allow(unreachable_pub)] // A module of each test crate, not a library.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dynkv_net::ClientOptions;

pub const SHARDS: u16 = 2;

/// The ports of one node.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// Native port of shard 0; shard N is `native + N`.
    pub native: u16,
    pub resp: u16,
    pub metrics: u16,
    /// Internode port of shard 0.
    pub internode: u16,
}

impl Ports {
    pub fn args(&self) -> Vec<String> {
        [
            ("--base-port", self.native),
            ("--resp-port", self.resp),
            ("--metrics-port", self.metrics),
            ("--internode-base-port", self.internode),
        ]
        .iter()
        .flat_map(|(flag, port)| [flag.to_string(), port.to_string()])
        .collect()
    }

    pub fn internode_addr(&self) -> String {
        format!("127.0.0.1:{}", self.internode)
    }
}

fn ports_free(ports: &[u16]) -> bool {
    ports
        .iter()
        .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// Picks a free block of ports. Each call in this process gets a distinct
/// block (tests run in parallel, and glommio listeners use SO_REUSEPORT,
/// so two nodes on one port would silently share connections).
pub fn free_ports() -> Ports {
    // Blocks of 10 ports from 20000 up to 31999: below Linux's default
    // ephemeral range (32768-60999), so that an outgoing connection of
    // another test cannot take a port between the check below and the
    // node's bind (which made a node exit at start now and then).
    const BLOCKS: u64 = 1200;
    static NEXT_BLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // One starting block per process, so that blocks handed out within the
    // process never repeat.
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (u64::from(std::process::id()) * 131 + clock / 1000) % BLOCKS
    });
    for _ in 0..200 {
        let block = (start + NEXT_BLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) % BLOCKS;
        let base = 20_000 + (block * 10) as u16;
        let ports: Vec<u16> = (base..base + 2 * SHARDS + 2).collect();
        if ports_free(&ports) {
            return Ports {
                native: base,
                resp: base + SHARDS,
                metrics: base + SHARDS + 1,
                internode: base + SHARDS + 2,
            };
        }
    }
    panic!("no free port block on loopback");
}

/// A running node; killed by PID if a test ends without stopping it.
pub struct Node {
    child: Option<Child>,
    pub ports: Ports,
    pub dir: PathBuf,
    log_path: PathBuf,
}

impl Node {
    /// Starts a node with its working directory in `dir` (so the default
    /// relative `./dynkv-data` is used) on `ports`, without waiting.
    pub fn spawn(dir: &Path, ports: Ports, extra: &[String]) -> Node {
        let log_path = dir.join(format!("node-{}.log", ports.native));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dynkv"))
            .current_dir(dir)
            .args(["serve", "--shards", &SHARDS.to_string()])
            .args(ports.args())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dynkv");
        Node {
            child: Some(child),
            ports,
            dir: dir.to_path_buf(),
            log_path,
        }
    }

    /// Waits until the node accepts on its native and RESP ports. An early
    /// exit returns the log.
    pub fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up =
                TcpStream::connect(self.addr()).is_ok() && TcpStream::connect(("127.0.0.1", self.ports.resp)).is_ok();
            if up {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                self.child = None;
                return Err(format!("node exited early ({status}):\n{}", self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "node did not start listening on {}:\n{}",
                self.addr(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a lone node on free ports, retrying on another block if a
    /// port was taken meanwhile.
    pub fn start(dir: &Path, extra: &[&str]) -> Node {
        let extra: Vec<String> = extra.iter().map(ToString::to_string).collect();
        for _attempt in 0..5 {
            let mut node = Node::spawn(dir, free_ports(), &extra);
            match node.wait_listening() {
                Ok(()) => return node,
                Err(log) => assert!(log.contains("cannot listen"), "{log}"),
            }
        }
        panic!("could not find free ports for a node in 5 attempts");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.native))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends SIGTERM and returns the exit status (within 30 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node ignored SIGTERM for 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the node to exit by itself.
    pub fn wait_exit(mut self) -> std::process::ExitStatus {
        self.child.take().expect("running").wait().unwrap()
    }

    /// Waits up to `limit` for the node to exit by itself; on time out the
    /// node keeps running (and is killed when dropped).
    pub fn wait_exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL our own child");
        child.wait().expect("reap");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(fut)
}

pub fn client_options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

/// Seeds of a seeded simulation: `DYNKV_SIM_SEED=<seed>` replays one,
/// `DYNKV_SIM_SEEDS=<n>` runs `n` (default `count`).
pub fn seeds(count: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("DYNKV_SIM_SEED") {
        return vec![seed.parse().expect("DYNKV_SIM_SEED is a u64")];
    }
    let count: u64 = std::env::var("DYNKV_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(count);
    (0..count).collect()
}

/// Opens a stopped node's engines (its working directory `dir`, data in
/// `dir/dynkv-data`) and reads `key`'s live values.
pub fn stored_values(dir: &Path, key: &[u8]) -> Vec<Vec<u8>> {
    let partition = dynkv_ring::PartitionCount::default().partition_of(key);
    let data = dir.join("dynkv-data");
    let key = key.to_vec();
    run(async move {
        let mut found = Vec::new();
        for shard in 0..SHARDS {
            let mut config =
                dynkv_engine::EngineConfig::new(data.join(format!("shard-{shard}")).canonicalize().unwrap());
            config.value_len_max_bytes = 8 << 20;
            let engine = dynkv_engine::Engine::open(config).await.unwrap();
            if let Some(record) = engine.get(partition, &key).await.unwrap() {
                if !record.tombstone {
                    let clock = dynkv::object::decode_object(&record.value).unwrap();
                    found.extend(clock.siblings().filter_map(|s| s.value.as_deref().map(<[u8]>::to_vec)));
                }
            }
            engine.close().await.unwrap();
        }
        found
    })
}
/// Sums metric `name` over the series (one per shard) of a Prometheus text.
pub fn sum_metric(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Sums metric `name` over the shards of the node at `addr`.
pub fn node_metric(addr: SocketAddr, name: &str) -> u64 {
    let text = run(async move { dynkv_net::Client::connect(addr, client_options()).await?.stats().await }).unwrap();
    sum_metric(&text, name)
}

pub mod proxy;
