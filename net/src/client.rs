//! The Rust client, for glommio executors.
//!
//! Shard-aware: on connect it asks the node for its partition → shard map
//! and shard ports, opens one pipelined connection per shard, and sends each
//! request straight to the shard that owns the key, so the server never has
//! to forward. Requests on a connection are pipelined and matched by request
//! id; each has a timeout, and requests in flight are bounded.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use dynkv_ring::PartitionCount;
use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;

use crate::frame::{decode, encode, Decoded, FrameLimits, Head, FLAG_SUPERSEDE_LOCAL, FRAME_HEADER_BYTES};
use crate::inflight::{Inflight, Outcome};
use crate::opcode::{Opcode, Status};
use crate::siblings::{decode_siblings, for_each_sibling};

/// Client settings.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Per-request timeout, also sent to the server.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Requests in flight per shard connection before callers wait.
    pub inflight_max: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            inflight_max: 1024,
        }
    }
}

/// Per-request settings; `None` leaves the server's (or client's) default.
///
/// ```
/// use dynkv_net::CallOptions;
/// use std::time::Duration;
///
/// // A read that needs 3 replies, 2 of them from primary owners, within 200 ms.
/// let strict = CallOptions {
///     quorum: Some(3),
///     primary_quorum: Some(2),
///     timeout: Some(Duration::from_millis(200)),
///     ..CallOptions::default()
/// };
/// assert_eq!(CallOptions::default().quorum, None);
/// # let _ = strict;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// R for reads, W for writes (capped by the server at the key's
    /// replica count).
    pub quorum: Option<u8>,
    /// pr / pw: how many of those must be primary owners (not fallbacks).
    pub primary_quorum: Option<u8>,
    /// Overrides [`ClientOptions::timeout`] for this request.
    pub timeout: Option<Duration>,
    /// Put and delete: supersede whatever the coordinating replica holds,
    /// as Redis's SET does, instead of a context (versions the coordinator
    /// has not seen still survive as siblings).
    pub overwrite: bool,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection to {0} closed")]
    Disconnected(SocketAddr),
    #[error("server answered {status:?}: {message}")]
    Server { status: Status, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// A get's answer: every sibling value (one unless writes were concurrent;
/// none if the key is absent) and the context to pass to a later put.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetResult {
    pub values: Vec<Vec<u8>>,
    pub context: Vec<u8>,
}

/// A response frame's status and sections, copied out of the receive
/// buffer.
#[derive(Debug)]
pub struct Response {
    pub status: u8,
    pub context: Vec<u8>,
    pub value: Vec<u8>,
}

/// Bytes the reader asks the socket for at a time; a frame larger than
/// this grows the buffer to fit it (frame lengths are bounded by
/// `FrameLimits::DEFAULT`, checked before the buffer grows).
const READ_BUFFER_BYTES: usize = 64 << 10;

/// The longest a request waits, whatever timeout it was given (a year).
const TIMEOUT_CEILING: Duration = Duration::from_secs(365 * 24 * 3600);

/// One pipelined connection: requests are written as they come and matched
/// to responses by request id. The shard-aware [`Client`] keeps one per
/// shard; the server keeps one per peer shard for internode traffic.
pub struct Connection {
    pub(crate) addr: SocketAddr,
    pub(crate) inflight: RefCell<Inflight<Response>>,
    pub(crate) outbox: RefCell<Vec<u8>>,
    pub(crate) doorbell: LocalSender<()>,
    /// Tells the reaper of a deadline earlier than the one it sleeps until.
    pub(crate) reaper_bell: LocalSender<()>,
    /// One per request in flight, so `inflight` never refuses a start.
    pub(crate) permits: Semaphore,
    tasks: RefCell<Vec<JoinHandle<()>>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in self.tasks.borrow_mut().drain(..) {
            task.cancel();
        }
    }
}

impl Connection {
    /// Ends every request in flight with "disconnected".
    fn close(&self) {
        let mut wake = Vec::new();
        self.inflight.borrow_mut().close(&mut wake);
        wake.into_iter().for_each(Waker::wake);
    }
}

async fn read_loop(conn: Weak<Connection>, mut reader: ReadHalf<TcpStream>) {
    // Frames are decoded in place: bytes `start..end` of `buf` are received
    // and not yet decoded.
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let (mut start, mut end) = (0, 0);
    let mut needed = FRAME_HEADER_BYTES;
    'read: loop {
        if start + needed > buf.len() {
            // The next frame does not fit behind `start`: move what was
            // received of it to the front, and grow if it is larger than
            // the buffer.
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
            if needed > buf.len() {
                buf.resize(needed, 0);
            }
        }
        let n = match reader.read(&mut buf[end..]).await {
            Ok(n) if n > 0 => n,
            _ => break,
        };
        end += n;
        let Some(conn) = conn.upgrade() else { return };
        loop {
            match decode(&buf[start..end], &FrameLimits::DEFAULT) {
                Ok(Decoded::Frame(frame, used)) => {
                    let response = Response {
                        status: frame.header.status,
                        context: frame.context.to_vec(),
                        value: frame.value.to_vec(),
                    };
                    let waker = conn.inflight.borrow_mut().answer(frame.header.request_id, response);
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                    start += used;
                }
                Ok(Decoded::NeedBytes(total)) => {
                    needed = total;
                    break;
                }
                Err(_) => break 'read,
            }
        }
        if start == end {
            (start, end) = (0, 0);
        }
    }
    if let Some(conn) = conn.upgrade() {
        conn.close();
    }
}

async fn write_loop(
    conn: Weak<Connection>,
    mut writer: WriteHalf<TcpStream>,
    doorbell: local_channel::LocalReceiver<()>,
) {
    let mut out = Vec::new();
    while doorbell.recv().await.is_some() {
        let Some(strong) = conn.upgrade() else { return };
        // Swap buffers, so both keep their capacity.
        std::mem::swap(&mut out, &mut *strong.outbox.borrow_mut());
        drop(strong);
        if out.is_empty() {
            continue;
        }
        if writer.write_all(&out).await.is_err() {
            break;
        }
        out.clear();
    }
    if let Some(conn) = conn.upgrade() {
        conn.close();
    }
}

/// Times requests out: sleeps until the earliest deadline in flight (or
/// until told of an earlier one), then ends every request past its own.
async fn reap_loop(conn: Weak<Connection>, bell: local_channel::LocalReceiver<()>) {
    let mut wake = Vec::new();
    loop {
        let next = {
            let Some(conn) = conn.upgrade() else { return };
            let mut inflight = conn.inflight.borrow_mut();
            if inflight.is_closed() {
                return;
            }
            inflight.expire(Instant::now(), &mut wake)
        };
        wake.drain(..).for_each(Waker::wake);
        match next {
            None => {
                if bell.recv().await.is_none() {
                    return;
                }
            }
            Some(deadline) => {
                let sleep = glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()));
                futures_lite::future::or(sleep, async {
                    let _ = bell.recv().await;
                })
                .await;
            }
        }
    }
}

/// Frees a request's slot if its caller stops waiting before the outcome.
struct SlotGuard<'a> {
    conn: &'a Connection,
    id: u64,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.conn.inflight.borrow_mut().abandon(self.id);
    }
}

impl Connection {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr, options: &ClientOptions) -> Result<Rc<Connection>, ClientError> {
        let stream = TcpStream::connect_timeout(addr, options.connect_timeout)
            .await
            .map_err(|e| ClientError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        Ok(Connection::from_stream(stream, addr, options))
    }

    /// Pipelines requests over a stream that is already set up (say, after
    /// an authentication handshake).
    pub fn from_stream(stream: TcpStream, addr: SocketAddr, options: &ClientOptions) -> Rc<Connection> {
        let (reader, writer) = futures_lite::io::split(stream);
        let (doorbell, ring) = local_channel::new_bounded(1);
        let (reaper_bell, reaper_ring) = local_channel::new_bounded(1);
        let inflight_max = options.inflight_max.max(1);
        let conn = Rc::new(Connection {
            addr,
            inflight: RefCell::new(Inflight::new(inflight_max)),
            outbox: RefCell::new(Vec::new()),
            doorbell,
            reaper_bell,
            permits: Semaphore::new(inflight_max as u64),
            tasks: RefCell::new(Vec::new()),
        });
        let read = glommio::spawn_local(read_loop(Rc::downgrade(&conn), reader)).detach();
        let write = glommio::spawn_local(write_loop(Rc::downgrade(&conn), writer, ring)).detach();
        let reap = glommio::spawn_local(reap_loop(Rc::downgrade(&conn), reaper_ring)).detach();
        conn.tasks.borrow_mut().extend([read, write, reap]);
        conn
    }

    /// True once the peer closed the connection or it failed; every later
    /// call fails at once with [`ClientError::Disconnected`].
    pub fn is_closed(&self) -> bool {
        self.inflight.borrow().is_closed()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request and waits up to `timeout` for its response. The
    /// request id and timeout fields of `head` are filled in here.
    pub async fn call(
        &self,
        mut head: Head,
        key: &[u8],
        context: &[u8],
        value: &[u8],
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let _permit = self
            .permits
            .acquire_permit(1)
            .await
            .map_err(|_| ClientError::Disconnected(self.addr))?;
        // A permit guarantees a slot (one of each per request), so `None`
        // here means the connection is closed.
        let started = self
            .inflight
            .borrow_mut()
            .start(deadline_after(Instant::now(), timeout));
        let Some((id, tell_reaper)) = started else {
            return Err(ClientError::Disconnected(self.addr));
        };
        let slot = SlotGuard { conn: self, id };
        if tell_reaper {
            self.ring_reaper();
        }
        head.request_id = id;
        head.timeout_ms = timeout_ms(timeout);
        encode(&mut self.outbox.borrow_mut(), &head, key, context, value);
        self.ring_writer();
        let outcome = std::future::poll_fn(|cx| self.inflight.borrow_mut().poll(id, cx)).await;
        drop(slot);
        self.result_of(outcome, timeout)
    }

    /// What a caller is told of a request's outcome.
    pub(crate) fn result_of(&self, outcome: Outcome<Response>, timeout: Duration) -> Result<Response, ClientError> {
        match outcome {
            Outcome::Answered(response) => Ok(response),
            Outcome::TimedOut => Err(ClientError::Timeout(timeout)),
            Outcome::Disconnected => Err(ClientError::Disconnected(self.addr)),
        }
    }

    /// Tells the reaper of a deadline earlier than the one it sleeps until.
    pub(crate) fn ring_reaper(&self) {
        // A full bell means the reaper will look anyway.
        let _ = self.reaper_bell.try_send(());
    }

    /// Tells the writer the outbox has frames.
    pub(crate) fn ring_writer(&self) {
        // A full doorbell means the writer will run anyway.
        let _ = self.doorbell.try_send(());
    }
}

/// When a request sent at `now` with `timeout` is due; a timeout past the
/// clock's range waits as long as it can.
pub(crate) fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout).unwrap_or(now + TIMEOUT_CEILING)
}

/// A timeout as the frame header carries it.
pub(crate) fn timeout_ms(timeout: Duration) -> u32 {
    u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX)
}

/// A connection to one node, shard-aware.
pub struct Client {
    pub(crate) options: ClientOptions,
    q: PartitionCount,
    shard_of: Vec<u16>,
    pub(crate) conns: Vec<Rc<Connection>>,
}

fn server_error(response: &Response) -> ClientError {
    match Status::from_u8(response.status) {
        Some(status) => ClientError::Server {
            status,
            message: String::from_utf8_lossy(&response.value).into_owned(),
        },
        None => ClientError::Protocol(format!("unknown status {}", response.status)),
    }
}

/// The header of a get, put or delete sent with `call`.
pub(crate) fn request_head(op: Opcode, call: &CallOptions) -> Head {
    Head {
        quorum: call.quorum.unwrap_or(0),
        primary_quorum: call.primary_quorum.unwrap_or(0),
        flags: if call.overwrite { FLAG_SUPERSEDE_LOCAL } else { 0 },
        ..Head::request(op, 0)
    }
}

/// A get, put or delete's response if it succeeded (a get of an absent key
/// did), its error if not.
pub(crate) fn expect_ok(response: Response) -> Result<Response, ClientError> {
    match Status::from_u8(response.status) {
        Some(Status::Ok) | Some(Status::NotFound) => Ok(response),
        _ => Err(server_error(&response)),
    }
}

impl Response {
    /// A get's live sibling values, borrowed (none if the key is absent or
    /// only tombstones remain).
    pub fn values(&self) -> Result<Vec<&[u8]>, ClientError> {
        if self.status == Status::NotFound as u8 {
            return Ok(Vec::new());
        }
        let siblings = decode_siblings(&self.value).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(siblings.iter().filter(|s| !s.tombstone).map(|s| s.value).collect())
    }

    /// How many live sibling values a get's answer holds, without copying
    /// or collecting them.
    pub fn value_count(&self) -> Result<usize, ClientError> {
        if self.status == Status::NotFound as u8 {
            return Ok(0);
        }
        let mut live = 0;
        for_each_sibling(&self.value, |s| live += usize::from(!s.tombstone))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(live)
    }

    /// A get's answer, copied out: values and the context for a later put.
    pub fn into_get_result(self) -> Result<GetResult, ClientError> {
        let values = self.values()?.into_iter().map(<[u8]>::to_vec).collect();
        Ok(GetResult {
            values,
            context: self.context,
        })
    }
}

fn parse_shard_map(bytes: &[u8]) -> Result<(PartitionCount, Vec<u16>, Vec<u16>), ClientError> {
    let bad = |what: &str| ClientError::Protocol(format!("bad shard map: {what}"));
    let q = u32::from_le_bytes(bytes.get(..4).ok_or_else(|| bad("short"))?.try_into().expect("4 bytes"));
    let q = PartitionCount::new(u64::from(q)).map_err(|e| bad(&e.to_string()))?;
    let shards = u16::from_le_bytes(
        bytes
            .get(4..6)
            .ok_or_else(|| bad("short"))?
            .try_into()
            .expect("2 bytes"),
    );
    let u16s = |from: usize, count: usize| -> Result<Vec<u16>, ClientError> {
        let raw = bytes.get(from..from + 2 * count).ok_or_else(|| bad("truncated"))?;
        Ok(raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
    };
    let ports = u16s(6, usize::from(shards))?;
    let map = u16s(6 + 2 * usize::from(shards), q.get() as usize)?;
    if map.iter().any(|&s| s >= shards) || shards == 0 {
        return Err(bad("shard out of range"));
    }
    Ok((q, ports, map))
}

impl Client {
    /// Connects to the node whose shard 0 (or any shard) listens at `addr`.
    pub async fn connect(addr: SocketAddr, options: ClientOptions) -> Result<Client, ClientError> {
        let first = Connection::open(addr, &options).await?;
        let response = first
            .call(Head::request(Opcode::ShardMap, 0), &[], &[], &[], options.timeout)
            .await?;
        if response.status != Status::Ok as u8 {
            return Err(server_error(&response));
        }
        let (q, ports, shard_of) = parse_shard_map(&response.value)?;
        let mut conns = Vec::with_capacity(ports.len());
        for port in ports {
            let shard_addr = SocketAddr::new(addr.ip(), port);
            conns.push(if shard_addr == addr {
                first.clone()
            } else {
                Connection::open(shard_addr, &options).await?
            });
        }
        Ok(Client {
            options,
            q,
            shard_of,
            conns,
        })
    }

    /// The index in `conns` of the shard that owns `key`.
    pub(crate) fn shard_for(&self, key: &[u8]) -> usize {
        usize::from(self.shard_of[self.q.partition_of(key) as usize])
    }

    async fn expect_ok(
        &self,
        op: Opcode,
        sections: (&[u8], &[u8], &[u8]),
        call: &CallOptions,
    ) -> Result<Response, ClientError> {
        let (key, context, value) = sections;
        let timeout = call.timeout.unwrap_or(self.options.timeout);
        let conn = &self.conns[self.shard_for(key)];
        expect_ok(conn.call(request_head(op, call), key, context, value, timeout).await?)
    }

    /// Reads `key`: its sibling values (empty if absent) and a context.
    pub async fn get(&self, key: &[u8]) -> Result<GetResult, ClientError> {
        self.get_with(key, &CallOptions::default()).await
    }

    /// [`Client::get`] with per-request R, pr and timeout.
    pub async fn get_with(&self, key: &[u8], call: &CallOptions) -> Result<GetResult, ClientError> {
        self.expect_ok(Opcode::Get, (key, &[], &[]), call)
            .await?
            .into_get_result()
    }

    /// Writes `value`; with the context of a get it supersedes what that get
    /// saw, without one it is concurrent with whatever exists.
    pub async fn put(&self, key: &[u8], value: &[u8], context: Option<&[u8]>) -> Result<(), ClientError> {
        self.put_with(key, value, context, &CallOptions::default()).await
    }

    /// [`Client::put`] with per-request W, pw and timeout.
    pub async fn put_with(
        &self,
        key: &[u8],
        value: &[u8],
        context: Option<&[u8]>,
        call: &CallOptions,
    ) -> Result<(), ClientError> {
        self.expect_ok(Opcode::Put, (key, context.unwrap_or(&[]), value), call)
            .await
            .map(|_| ())
    }

    /// Deletes `key` (writes a tombstone carrying `context`; an empty
    /// context deletes whatever the coordinating replica holds).
    pub async fn delete(&self, key: &[u8], context: &[u8]) -> Result<(), ClientError> {
        self.delete_with(key, context, &CallOptions::default()).await
    }

    /// [`Client::delete`] with per-request W, pw and timeout.
    pub async fn delete_with(&self, key: &[u8], context: &[u8], call: &CallOptions) -> Result<(), ClientError> {
        self.expect_ok(Opcode::Delete, (key, context, &[]), call)
            .await
            .map(|_| ())
    }

    /// The node's statistics, as Prometheus text.
    pub async fn stats(&self) -> Result<String, ClientError> {
        let response = self.conns[0]
            .call(Head::request(Opcode::Stats, 0), &[], &[], &[], self.options.timeout)
            .await?;
        if response.status != Status::Ok as u8 {
            return Err(server_error(&response));
        }
        Ok(String::from_utf8_lossy(&response.value).into_owned())
    }

    /// Round trip to shard 0.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.conns[0]
            .call(Head::request(Opcode::Ping, 0), &[], &[], &[], self.options.timeout)
            .await
            .map(|_| ())
    }

    /// Shards of the node and their native-protocol addresses.
    pub fn shard_addresses(&self) -> Vec<SocketAddr> {
        self.conns.iter().map(|c| c.addr).collect()
    }
}
