//! The listening socket. hound owns it and lends tiny_http a clone; when tiny_http's accept
//! thread dies (tiny_http 0.12 ends it on the first accept error, EMFILE included, after which
//! the port would accept nothing ever again), a new tiny_http server is built on another clone.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tiny_http::{Request, Server};

/// How long a worker waits for a request before checking whether hound is stopping.
const RECV_WAIT: Duration = Duration::from_millis(250);
/// Restarts come at most this often, so a descriptor shortage does not spin.
const REVIVE_INTERVAL: Duration = Duration::from_millis(500);

struct Generation {
    number: u64,
    server: Arc<Server>,
}

/// The port hound listens on and the tiny_http server currently accepting on it.
pub struct Listener {
    socket: TcpListener,
    local_addr: SocketAddr,
    current: RwLock<Generation>,
    last_revival: Mutex<Instant>,
    stopping: AtomicBool,
}

impl Listener {
    pub fn bind(addr: SocketAddr) -> std::io::Result<Listener> {
        let socket = TcpListener::bind(addr)?;
        let local_addr = socket.local_addr()?;
        let server = serve_clone(&socket)?;
        Ok(Listener {
            socket,
            local_addr,
            current: RwLock::new(Generation { number: 0, server }),
            last_revival: Mutex::new(Instant::now()),
            stopping: AtomicBool::new(false),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
                Err(err) => self.revive(number, &err),
            }
        }
        None
    }

    /// Makes [`Listener::next_request`] return `None` within `RECV_WAIT`.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Replaces generation `dead`, whose accept thread ended with `err`, unless another worker
    /// already did. Retries until it works or hound stops.
    fn revive(&self, dead: u64, err: &std::io::Error) {
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
        log::error!("the HTTP accept thread stopped ({err}); starting a new one");
        while !self.stopping.load(Ordering::Relaxed) {
            std::thread::sleep(REVIVE_INTERVAL.saturating_sub(last_revival.elapsed()));
            *last_revival = Instant::now();
            match serve_clone(&self.socket) {
                Ok(server) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Generation {
                        number: dead + 1,
                        server,
                    };
                    return;
                }
                Err(err) => log::warn!("cannot start an HTTP accept thread yet: {err}"),
            }
        }
    }
}

fn serve_clone(socket: &TcpListener) -> std::io::Result<Arc<Server>> {
    let clone = socket.try_clone()?;
    Server::from_listener(clone, None)
        .map(Arc::new)
        .map_err(std::io::Error::other)
}
