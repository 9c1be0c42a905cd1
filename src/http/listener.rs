//! The HTTP front door, and all hound does about tiny_http: the listening socket, the limits
//! every connection gets, the connection count behind `--max-connections`, and the hand-over
//! of an upgraded connection to its socket thread.
//!
//! tiny_http 0.12 is carried with a small patch (vendor/README.md) that does the rest where it
//! belongs, in tiny_http: an upgrade hands the `TcpStream` over and frees tiny_http's thread and
//! descriptor, the accept thread survives errors (EMFILE included), connections get read and
//! write timeouts and a request-head limit, and it counts its open connections.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketFlags, SocketType, bind, socket_with, sockopt};
use tiny_http::{ConnectionLimits, Header, Request, Response, Server};

use crate::error::{Error, Result};
use crate::reply::error_json;

/// How long a worker waits for a request before checking whether hound is stopping.
const RECV_WAIT: Duration = Duration::from_millis(250);
/// Largest request line plus headers hound reads; tiny_http itself sets no limit.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Connections the kernel may hold for hound before it accepts them (capped by
/// `net.core.somaxconn`). Std's 128 overflows when thousands of clients connect at once, and
/// each overflow costs a client a SYN retransmission: a second or more.
const LISTEN_BACKLOG: i32 = 4096;

/// Connections past `--max-connections` still answered, so that `/healthz` and `/metrics` work
/// at the cap; past these too, tiny_http answers 503 at accept, without spending a thread.
fn headroom(max_connections: usize) -> usize {
    32 + max_connections / 32
}

/// How many connections hound serves: `requests` for every route, `accepted` (more) for
/// `/healthz` and `/metrics`; past `accepted`, tiny_http answers 503 at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub requests: usize,
    pub accepted: usize,
}

impl ConnectionCaps {
    /// From `--max-connections` if given, else from the descriptors hound may spend on
    /// connections (one each); either way what is accepted fits in those descriptors, so
    /// hound refuses at accept before it runs out of them.
    pub fn new(max_connections: Option<usize>, fd_budget: usize) -> ConnectionCaps {
        let fd_budget = fd_budget.max(1);
        let requests = max_connections
            .unwrap_or_else(|| fd_budget.saturating_sub(headroom(fd_budget)))
            .max(1);
        let accepted = requests
            .saturating_add(headroom(requests))
            .min(fd_budget.max(requests));
        ConnectionCaps { requests, accepted }
    }
}

/// An upgraded connection, handed over by tiny_http: the socket, and whatever the client sent
/// after its request head that tiny_http had already read.
#[derive(Debug)]
pub struct HandedOver {
    pub stream: TcpStream,
    pub early_bytes: Vec<u8>,
}

/// The port hound listens on and the tiny_http server accepting on it.
pub struct Listener {
    server: Server,
    local_addr: SocketAddr,
    max_connections: usize,
    /// WebSockets taken over from tiny_http and still open.
    sockets: Arc<AtomicUsize>,
    stopping: AtomicBool,
}

/// Counts one open WebSocket against the connection cap for as long as it lives.
#[derive(Debug)]
pub struct SocketSlot(Arc<AtomicUsize>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Listens on `addr`. Each HTTP connection may wait `idle_timeout` for a read or a write
    /// and must deliver a request head within `idle_timeout` of its first byte.
    pub fn bind(
        addr: SocketAddr,
        idle_timeout: Duration,
        caps: ConnectionCaps,
    ) -> io::Result<Listener> {
        let socket = listen(addr)?;
        let local_addr = socket.local_addr()?;
        let sockets = Arc::new(AtomicUsize::new(0));
        let (max_connections, hard_cap) = (caps.requests, caps.accepted);
        let over_capacity = Error::Overloaded(format!(
            "too many open connections (limit {max_connections}, and {hard_cap} for /healthz \
             and /metrics)"
        ));
        let limits = ConnectionLimits {
            timeout: Some(idle_timeout),
            max_head: Some(MAX_REQUEST_HEAD),
            head_too_large_json: Some(Arc::from(error_json(&Error::HeadTooLarge(
                MAX_REQUEST_HEAD,
            )))),
            max_connections: Some(hard_cap),
            connections_elsewhere: Some(sockets.clone()),
            over_capacity_json: Some(Arc::from(error_json(&over_capacity))),
        };
        let server =
            Server::from_listener_with_limits(socket, None, limits).map_err(io::Error::other)?;
        Ok(Listener {
            server,
            local_addr,
            max_connections,
            sockets,
            stopping: AtomicBool::new(false),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next request, or `None` once [`Listener::stop`] was called.
    pub fn next_request(&self) -> Option<Request> {
        while !self.stopping.load(Ordering::Relaxed) {
            match self.server.recv_timeout(RECV_WAIT) {
                Ok(Some(request)) => return Some(request),
                Ok(None) => {}
                // The patched accept thread reports no errors; should one come, say so and
                // go on rather than stop serving.
                Err(err) => log::warn!("tiny_http: {err}"),
            }
        }
        None
    }

    /// Makes [`Listener::next_request`] return `None` within `RECV_WAIT`.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Refuses a request while more than `--max-connections` connections are open: the HTTP
    /// connections tiny_http holds (this request's own among them) plus the open WebSockets.
    pub fn admit(&self) -> Result<()> {
        let open = self.server.num_connections().max(1) + self.sockets.load(Ordering::Relaxed);
        if open > self.max_connections {
            return Err(Error::Overloaded(format!(
                "too many open connections ({open}, limit {})",
                self.max_connections
            )));
        }
        Ok(())
    }

    /// Counts a WebSocket against the cap until the slot is dropped. Taken before the hand-over,
    /// so that a connection never drops out of the count between tiny_http and its socket.
    pub fn socket_slot(&self) -> SocketSlot {
        self.sockets.fetch_add(1, Ordering::Relaxed);
        SocketSlot(self.sockets.clone())
    }

    /// Answers `request` with `101 Switching Protocols` and takes its connection from
    /// tiny_http, which keeps no thread or descriptor of it.
    pub fn hand_over(request: Request, accept_key: &str) -> io::Result<HandedOver> {
        let accept = Header::from_bytes(&b"Sec-WebSocket-Accept"[..], accept_key.as_bytes())
            .map_err(|()| io::Error::other("the accept key is not a valid header value"))?;
        let response = Response::empty(101).with_header(accept);
        let (stream, early_bytes) = request.upgrade_into_tcp("websocket", response)?;
        Ok(HandedOver {
            stream,
            early_bytes,
        })
    }
}

impl Listener {
    /// Answers `request` with the head of a `text/event-stream` response whose body lasts as
    /// long as the connection, and takes the connection from tiny_http as [`Listener::hand_over`]
    /// does.
    pub fn hand_over_event_stream(request: Request) -> io::Result<HandedOver> {
        let header = |name: &str, value: &str| {
            Header::from_bytes(name.as_bytes(), value.as_bytes())
                .map_err(|()| io::Error::other("not a valid header"))
        };
        let response = Response::empty(200)
            .with_header(header("Content-Type", "text/event-stream; charset=utf-8")?)
            // Events are live: no cache or proxy may hold them back.
            .with_header(header("Cache-Control", "no-cache")?)
            .with_header(header("X-Accel-Buffering", "no")?);
        let (stream, early_bytes) = request.respond_head_and_hand_over(response)?;
        Ok(HandedOver {
            stream,
            early_bytes,
        })
    }
}

/// A listening socket on `addr`, with a deep backlog and TCP_NODELAY for every connection.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let socket = socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    // As std does: a restarted hound can bind while old connections linger in TIME_WAIT.
    sockopt::set_socket_reuseaddr(&socket, true)?;
    // Linux gives TCP_NODELAY to every connection accepted from this socket. Without it, a
    // large answer written in pieces waits on the client's delayed ACK (up to 40 ms each).
    sockopt::set_tcp_nodelay(&socket, true)?;
    bind(&socket, &addr)?;
    rustix::net::listen(&socket, LISTEN_BACKLOG)?;
    Ok(TcpListener::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_accepted_fits_in_the_descriptors() {
        let by_descriptors = ConnectionCaps::new(None, 19_744);
        assert_eq!(by_descriptors.requests, 19_744 - 649);
        assert!(by_descriptors.accepted <= 19_744);
        assert!(by_descriptors.accepted > by_descriptors.requests);
        let given = ConnectionCaps::new(Some(100), 19_744);
        assert_eq!((given.requests, given.accepted), (100, 135));
        // A cap above the descriptors: at least the cap itself is accepted.
        let above = ConnectionCaps::new(Some(50_000), 19_744);
        assert_eq!((above.requests, above.accepted), (50_000, 50_000));
        assert_eq!(ConnectionCaps::new(None, 0).requests, 1);
    }
}
