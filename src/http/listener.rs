//! The listening socket. hound owns it and lends tiny_http a clone; when tiny_http's accept
//! thread dies, a new tiny_http server is built on another clone.
//!
//! tiny_http 0.12 ends its accept thread on the first accept error (EMFILE included) and reports
//! it through `recv`; when a descriptor runs out just after an accept instead, the thread panics
//! inside tiny_http and reports nothing. Either way the port would accept nothing ever again. So
//! besides reacting to the reported error, an accept check connects to the port every
//! `CHECK_INTERVAL` and looks for that connection among our descriptors; if two in a row were
//! not accepted, the server is replaced. A replaced server is retired, not dropped at once: its
//! connections may still deliver requests, and the workers keep taking them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tiny_http::{Request, Server};

use crate::fds;

/// How long a worker waits for a request before checking whether hound is stopping.
const RECV_WAIT: Duration = Duration::from_millis(250);
/// Restarts come at most this often, so a descriptor shortage does not spin.
const REVIVE_INTERVAL: Duration = Duration::from_millis(500);
/// How often the accept check runs, and how long it waits to see its connection accepted.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
const CHECK_WAIT: Duration = Duration::from_secs(2);
/// Checks that must fail in a row before the server is replaced: under a burst of connections
/// one check can wait behind thousands of others.
const CHECK_FAILURES: u32 = 2;
/// How long a replaced server's connections are still served.
const RETIREMENT: Duration = Duration::from_secs(60);

struct Generation {
    number: u64,
    server: Arc<Server>,
}

/// The port hound listens on and the tiny_http server currently accepting on it.
pub struct Listener {
    socket: TcpListener,
    local_addr: SocketAddr,
    current: RwLock<Generation>,
    retired: Mutex<Vec<(Arc<Server>, Instant)>>,
    last_revival: Mutex<Instant>,
    stopping: AtomicBool,
}

impl Listener {
    pub fn bind(addr: SocketAddr) -> std::io::Result<Listener> {
        let socket = TcpListener::bind(addr)?;
        fds::set_nodelay(&socket)?;
        let local_addr = socket.local_addr()?;
        let server = serve_clone(&socket)?;
        Ok(Listener {
            socket,
            local_addr,
            current: RwLock::new(Generation { number: 0, server }),
            retired: Mutex::new(Vec::new()),
            last_revival: Mutex::new(Instant::now()),
            stopping: AtomicBool::new(false),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts the thread that checks the port still accepts.
    pub fn start_accept_check(self: &Arc<Self>) -> std::io::Result<()> {
        let listener = self.clone();
        std::thread::Builder::new()
            .name("accept-check".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut failures = 0;
                while !listener.stopping.load(Ordering::Relaxed) {
                    // After a failed check, check again at once.
                    if failures == 0 {
                        std::thread::sleep(CHECK_INTERVAL);
                    }
                    let number = listener.generation();
                    if listener.accepts() {
                        failures = 0;
                    } else {
                        failures += 1;
                        if failures >= CHECK_FAILURES {
                            failures = 0;
                            let why = "test connections were not accepted";
                            listener.revive(number, why);
                        }
                    }
                }
            })
            .map(|_| ())
    }

    /// The next request, or `None` once [`Listener::stop`] was called.
    pub fn next_request(&self) -> Option<Request> {
        while !self.stopping.load(Ordering::Relaxed) {
            let (number, server) = {
                let current = self.current.read().unwrap_or_else(|p| p.into_inner());
                (current.number, current.server.clone())
            };
            match server.recv_timeout(RECV_WAIT) {
                Ok(Some(request)) => return Some(request),
                Ok(None) => {}
                Err(err) => self.revive(number, &err.to_string()),
            }
            if let Some(request) = self.retired_request() {
                return Some(request);
            }
        }
        None
    }

    /// A request still arriving on a replaced server's connections, if any.
    fn retired_request(&self) -> Option<Request> {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|(_, since)| since.elapsed() < RETIREMENT);
        retired
            .iter()
            .find_map(|(server, _)| server.try_recv().ok().flatten())
    }

    /// Makes [`Listener::next_request`] return `None` within `RECV_WAIT`.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn generation(&self) -> u64 {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .number
    }

    /// Connects to the port and looks for the connection among ours: false if tiny_http did
    /// not accept it in time (its accept thread may be gone). True when nothing can be judged.
    fn accepts(&self) -> bool {
        let target = SocketAddr::new(reachable(self.local_addr.ip()), self.local_addr.port());
        // Out of descriptors (or the backlog is full): nothing can be judged now.
        let Ok(probe) = TcpStream::connect_timeout(&target, CHECK_WAIT) else {
            return true;
        };
        let Ok(probe_addr) = probe.local_addr() else {
            return true;
        };
        let deadline = Instant::now() + CHECK_WAIT;
        while Instant::now() < deadline {
            let mut accepted = false;
            let _ = fds::for_each_connection(self.local_addr.port(), |_, stream| {
                if stream.peer_addr().is_ok_and(|peer| peer == probe_addr) {
                    accepted = true;
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            });
            if accepted {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Replaces generation `dead` unless another thread already did, retiring it. Retries until
    /// it works or hound stops.
    fn revive(&self, dead: u64, why: &str) {
        let mut last_revival = self.last_revival.lock().unwrap_or_else(|p| p.into_inner());
        if self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .number
            != dead
        {
            return;
        }
        log::error!("the HTTP accept thread stopped ({why}); starting a new one");
        while !self.stopping.load(Ordering::Relaxed) {
            std::thread::sleep(REVIVE_INTERVAL.saturating_sub(last_revival.elapsed()));
            *last_revival = Instant::now();
            match serve_clone(&self.socket) {
                Ok(server) => {
                    let replaced = std::mem::replace(
                        &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
                        Generation {
                            number: dead + 1,
                            server,
                        },
                    );
                    self.retired
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((replaced.server, Instant::now()));
                    return;
                }
                Err(err) => log::warn!("cannot start an HTTP accept thread yet: {err}"),
            }
        }
    }
}

/// An address that reaches a socket bound to `bound` from this host.
fn reachable(bound: IpAddr) -> IpAddr {
    match bound {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

fn serve_clone(socket: &TcpListener) -> std::io::Result<Arc<Server>> {
    let clone = socket.try_clone()?;
    Server::from_listener(clone, None)
        .map(Arc::new)
        .map_err(std::io::Error::other)
}
