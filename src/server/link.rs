//! Outgoing internode connections of one shard: one persistent, pipelined,
//! authenticated connection per (peer node, peer shard), opened on first
//! use and reopened with exponential backoff after a failure.
//!
//! While a link is backing off, calls fail at once, so a coordinator treats
//! the node as down and goes to a fallback without waiting for a timeout;
//! [`Links::is_down`] tells planners the same.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dynkv_net::{ClientError, ClientOptions, Connection, Head, Response};
use dynkv_ring::NodeId;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;

use crate::server::auth;

/// First and largest pause before reconnecting to a failed peer.
const BACKOFF_MIN_MS: u64 = 50;
const BACKOFF_MAX_MS: u64 = 5_000;
/// Requests in flight on one link before callers wait.
const LINK_INFLIGHT_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("node {node} is unreachable (retrying in {retry_ms} ms): {reason}")]
    Down {
        node: NodeId,
        retry_ms: u64,
        reason: String,
    },
    #[error("node {node} has no known address")]
    NoAddress { node: NodeId },
    #[error("node {node}: {source}")]
    Call { node: NodeId, source: ClientError },
}

struct Link {
    node: NodeId,
    addr: SocketAddr,
    conn: RefCell<Option<Rc<Connection>>>,
    /// Serializes connecting, so concurrent callers share one attempt.
    connecting: Semaphore,
    down_until: Cell<Option<Instant>>,
    backoff_ms: Cell<u64>,
    last_error: RefCell<String>,
}

impl Link {
    /// The link's connection, if it is open.
    fn open(&self) -> Option<Rc<Connection>> {
        self.conn.borrow().as_ref().filter(|c| !c.is_closed()).cloned()
    }

    fn new(node: NodeId, addr: SocketAddr) -> Rc<Link> {
        Rc::new(Link {
            node,
            addr,
            conn: RefCell::new(None),
            connecting: Semaphore::new(1),
            down_until: Cell::new(None),
            backoff_ms: Cell::new(BACKOFF_MIN_MS),
            last_error: RefCell::new(String::new()),
        })
    }
}

/// A shard's links, keyed by peer node and shard.
pub(crate) struct Links {
    me: NodeId,
    secret: Vec<u8>,
    links: RefCell<HashMap<(NodeId, u16), Rc<Link>>>,
    /// Per node, until when some link to it backs off: what planners ask
    /// on every request, so one lookup answers it.
    down_until: RefCell<HashMap<NodeId, Instant>>,
}

impl Links {
    pub(crate) fn new(me: NodeId, secret: &str) -> Links {
        Links {
            me,
            secret: secret.as_bytes().to_vec(),
            links: RefCell::new(HashMap::new()),
            down_until: RefCell::new(HashMap::new()),
        }
    }

    /// Ends the backoff of every link to `node`: the failure detector heard
    /// from it again, so the next call dials at once instead of waiting out
    /// a pause that grew while it was away (up to `BACKOFF_MAX_MS`), which
    /// would hold back its hints and repairs.
    pub(crate) fn node_is_back(&self, node: NodeId) {
        for ((peer, _), link) in self.links.borrow().iter() {
            if *peer == node {
                link.down_until.set(None);
                link.backoff_ms.set(BACKOFF_MIN_MS);
            }
        }
        self.down_until.borrow_mut().remove(&node);
    }

    /// True if a link to `node` is backing off after a failure.
    pub(crate) fn is_down(&self, node: NodeId) -> bool {
        let down = self.down_until.borrow();
        !down.is_empty() && down.get(&node).is_some_and(|t| *t > Instant::now())
    }

    /// Sends one request to `node`'s shard at `addr` and waits for the
    /// response.
    pub(crate) async fn call(
        &self,
        node: NodeId,
        shard: u16,
        addr: Option<SocketAddr>,
        head: Head,
        sections: (&[u8], &[u8], &[u8]),
        timeout: Duration,
    ) -> Result<Response, LinkError> {
        let link = self.link(node, shard, addr)?;
        // Boxed: dialing (connect, then the authentication handshake) is
        // rare, and its future is most of this one's size otherwise, which
        // every replica call of every quorum round then moves.
        let conn = match link.open() {
            Some(conn) => conn,
            None => Box::pin(self.connection(&link, timeout)).await?,
        };
        let (key, context, value) = sections;
        conn.call(head, key, context, value, timeout).await.map_err(|source| {
            if matches!(source, ClientError::Disconnected(_)) {
                link.conn.borrow_mut().take();
            }
            LinkError::Call { node, source }
        })
    }

    /// [`Links::call`] for requests whose answer is a value: the value on
    /// `Ok`, else the failure (or the peer's message) as text.
    pub(crate) async fn call_for_value(
        &self,
        node: NodeId,
        shard: u16,
        addr: Option<SocketAddr>,
        head: Head,
        sections: (&[u8], &[u8], &[u8]),
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let response = self
            .call(node, shard, addr, head, sections, timeout)
            .await
            .map_err(|e| e.to_string())?;
        if response.status != dynkv_net::Status::Ok as u8 {
            return Err(String::from_utf8_lossy(&response.value).into_owned());
        }
        Ok(response.value)
    }

    fn link(&self, node: NodeId, shard: u16, addr: Option<SocketAddr>) -> Result<Rc<Link>, LinkError> {
        let addr = addr.ok_or(LinkError::NoAddress { node })?;
        let mut links = self.links.borrow_mut();
        let link = links.entry((node, shard)).or_insert_with(|| Link::new(node, addr));
        if link.addr != addr {
            // The node moved; start over at its new address.
            *link = Link::new(node, addr);
        }
        Ok(link.clone())
    }

    /// Dials `link`, which had no open connection when its caller looked,
    /// unless it is held down or a concurrent caller's dial got there first.
    async fn connection(&self, link: &Link, timeout: Duration) -> Result<Rc<Connection>, LinkError> {
        let down = |link: &Link| LinkError::Down {
            node: link.node,
            retry_ms: link
                .down_until
                .get()
                .map_or(0, |t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            reason: link.last_error.borrow().clone(),
        };
        if link.down_until.get().is_some_and(|t| t > Instant::now()) {
            return Err(down(link));
        }
        let _turn = link.connecting.acquire_permit(1).await.map_err(|_| down(link))?;
        if let Some(conn) = link.open() {
            return Ok(conn);
        }
        match self.dial(link.node, link.addr, timeout).await {
            Ok(conn) => {
                link.down_until.set(None);
                link.backoff_ms.set(BACKOFF_MIN_MS);
                self.down_until.borrow_mut().remove(&link.node);
                *link.conn.borrow_mut() = Some(conn.clone());
                Ok(conn)
            }
            Err(reason) => {
                let backoff = link.backoff_ms.get();
                link.down_until
                    .set(Some(Instant::now() + Duration::from_millis(backoff)));
                link.backoff_ms.set((backoff * 2).min(BACKOFF_MAX_MS));
                tracing::debug!(node = %link.node, addr = %link.addr, "link down: {reason}");
                *link.last_error.borrow_mut() = reason;
                Err(down(link))
            }
        }
    }

    async fn dial(&self, node: NodeId, addr: SocketAddr, timeout: Duration) -> Result<Rc<Connection>, String> {
        let connect_timeout = timeout.min(Duration::from_secs(1));
        let mut stream = TcpStream::connect_timeout(addr, connect_timeout)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        auth::dial(&mut stream, &self.secret, self.me, Some(node), connect_timeout)
            .await
            .map_err(|e| format!("handshake with {addr}: {e}"))?;
        let options = ClientOptions {
            timeout,
            connect_timeout,
            inflight_max: LINK_INFLIGHT_MAX,
        };
        Ok(Connection::from_stream(stream, addr, &options))
    }
}
