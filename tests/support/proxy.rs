//! A fault-injecting TCP proxy for tests: it forwards every connection to
//! an upstream address, holding each chunk for a random delay. Order within
//! a connection is kept (TCP could not deliver otherwise), so what it
//! reorders is traffic *across* connections: a node's links per shard, its
//! gossip and its replica messages arrive interleaved differently from how
//! they were sent.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest chunk a pump forwards at once.
const CHUNK_BYTES: usize = 16 << 10;

/// A running proxy; it stops accepting when dropped (open connections end
/// with their peers).
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Chunks forwarded, in both directions.
    pub chunks: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on `listen` and forwards to `upstream`, delaying each chunk
    /// by 0..=`delay_max_ms` (drawn from a per-connection xorshift seeded
    /// by `seed`).
    pub fn start(listen: SocketAddr, upstream: SocketAddr, delay_max_ms: u64, seed: u64) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let chunks = Arc::new(AtomicU64::new(0));
        let proxy = Proxy {
            addr: listener.local_addr()?,
            stop: stop.clone(),
            chunks: chunks.clone(),
        };
        std::thread::spawn(move || {
            let mut connection = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        connection += 1;
                        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
                            continue;
                        };
                        let _ = client.set_nonblocking(false);
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let seed = seed ^ connection.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        for (from, to, seed) in [
                            (client.try_clone(), server.try_clone(), seed),
                            (server.try_clone(), client.try_clone(), seed.rotate_left(17)),
                        ] {
                            let (Ok(from), Ok(to)) = (from, to) else { continue };
                            let chunks = chunks.clone();
                            std::thread::spawn(move || pump(from, to, delay_max_ms, seed | 1, &chunks));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(proxy)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` a chunk at a time, each after a random delay,
/// until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream, delay_max_ms: u64, mut state: u64, chunks: &AtomicU64) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        std::thread::sleep(Duration::from_millis(state % (delay_max_ms + 1)));
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        chunks.fetch_add(1, Ordering::Relaxed);
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
