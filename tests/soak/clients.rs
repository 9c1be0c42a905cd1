//! The soak's WebSocket clients: one thread per socket that opens it, records every message
//! with the time it arrived, answers pings (tungstenite does, on every read) and closes it
//! cleanly or drops it when told. A socket is a handful of KiB and one sleeping thread; the
//! soak holds a few dozen.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// A service's membership: its nodes as (ip, port).
pub type Members = BTreeSet<(String, u16)>;

/// One service event a socket received.
#[derive(Debug, Clone)]
pub struct Msg {
    pub at: Instant,
    pub service: String,
    pub event: String,
    pub members: Members,
}

/// What a socket is for.
#[derive(Debug, Clone)]
pub enum Role {
    /// Registers `node` (`ip:port`) under `service`, and may monitor other services too.
    Register {
        service: String,
        node: String,
        monitors: Vec<String>,
    },
    /// Monitors `services`, or every service (`*`).
    Monitor { services: Vec<String>, star: bool },
}

/// How a socket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// We sent a close frame (the time is when we sent it).
    ClosedByUs,
    /// We shut the connection down without a close frame (as a crashed client does).
    VanishedByUs,
    /// hound sent a close frame with this code.
    ClosedByServer(Option<u16>),
    /// The connection broke (hound died, say).
    Broken(String),
}

enum Command {
    Close,
    Vanish,
}

/// One open (or ended) socket and everything it received.
pub struct Sock {
    pub id: usize,
    pub role: Role,
    pub hound: usize,
    /// Which run of that hound (it is restarted after a kill).
    pub incarnation: usize,
    /// When the handshake completed: a register socket's node is in etcd from then on.
    pub opened: Instant,
    messages: Mutex<Vec<Msg>>,
    customs: AtomicUsize,
    end: Mutex<Option<(Instant, End)>>,
    commands: Mutex<mpsc::Sender<Command>>,
}

impl Sock {
    /// The services it was subscribed to by name (a `*` monitor: none by name).
    pub fn named_services(&self) -> Vec<String> {
        match &self.role {
            Role::Register {
                service, monitors, ..
            } => {
                let mut all = vec![service.clone()];
                all.extend(monitors.iter().filter(|m| *m != service).cloned());
                all
            }
            Role::Monitor { services, .. } => services.clone(),
        }
    }

    pub fn star(&self) -> bool {
        matches!(self.role, Role::Monitor { star: true, .. })
    }

    pub fn subscribes(&self, service: &str) -> bool {
        self.star() || self.named_services().iter().any(|s| s == service)
    }

    pub fn node(&self) -> Option<(&str, &str)> {
        match &self.role {
            Role::Register { service, node, .. } => Some((service, node)),
            Role::Monitor { .. } => None,
        }
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.messages.lock().unwrap().clone()
    }

    pub fn customs(&self) -> usize {
        self.customs.load(Ordering::Relaxed)
    }

    pub fn end(&self) -> Option<(Instant, End)> {
        self.end.lock().unwrap().clone()
    }

    pub fn is_live(&self) -> bool {
        self.end.lock().unwrap().is_none()
    }

    /// The last membership it was told of, per service.
    pub fn view(&self) -> BTreeMap<String, Members> {
        let mut view = BTreeMap::new();
        for msg in self.messages.lock().unwrap().iter() {
            view.insert(msg.service.clone(), msg.members.clone());
        }
        view
    }

    /// Sends a close frame (the thread completes the close handshake).
    pub fn close(&self) {
        let _ = self.commands.lock().unwrap().send(Command::Close);
    }

    /// Drops the connection without a close frame.
    pub fn vanish(&self) {
        let _ = self.commands.lock().unwrap().send(Command::Vanish);
    }

    fn finish(&self, at: Instant, how: End) {
        let mut end = self.end.lock().unwrap();
        if end.is_none() {
            *end = Some((at, how));
        }
    }
}

/// The path and query that open a socket of `role`.
pub fn path(role: &Role) -> String {
    match role {
        Role::Register {
            service,
            node,
            monitors,
        } => {
            let (ip, port) = node.rsplit_once(':').expect("node is ip:port");
            let mut path = format!("/etcd/register?service={service}&ip={ip}&port={port}");
            if !monitors.is_empty() {
                path.push_str(&format!("&monitor={}", monitors.join(",")));
            }
            if crate::leaders::campaigns(service) {
                path.push_str("&campaign=1");
            }
            path
        }
        Role::Monitor { services, star } => {
            if *star {
                "/etcd/monitor?monitor=*".to_owned()
            } else {
                format!("/etcd/monitor?monitor={}", services.join(","))
            }
        }
    }
}

/// How long a handshake may take: hound waits up to 3 s for etcd and 5 s for its mirror.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How often the socket thread looks for commands between reads.
const TICK: Duration = Duration::from_millis(100);

/// Opens a socket of `role` to hound `hound` at `addr` on a thread of its own; `opened` gets
/// the socket once its handshake completed (before any message is read), or why it failed.
pub fn open(
    id: usize,
    addr: SocketAddr,
    role: Role,
    hound: usize,
    incarnation: usize,
    opened: impl FnOnce(Result<Arc<Sock>, String>) + Send + 'static,
) {
    thread::Builder::new()
        .name(format!("sock-{id}"))
        .stack_size(256 * 1024)
        .spawn(move || {
            let ws = match handshake(addr, &role) {
                Ok(ws) => ws,
                Err(err) => return opened(Err(err)),
            };
            let (commands, incoming) = mpsc::channel();
            let sock = Arc::new(Sock {
                id,
                role,
                hound,
                incarnation,
                opened: Instant::now(),
                messages: Mutex::new(Vec::new()),
                customs: AtomicUsize::new(0),
                end: Mutex::new(None),
                commands: Mutex::new(commands),
            });
            opened(Ok(Arc::clone(&sock)));
            serve(ws, &sock, &incoming);
        })
        .expect("spawn a socket thread");
}

fn handshake(addr: SocketAddr, role: &Role) -> Result<WebSocket<TcpStream>, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|err| format!("connect {addr}: {err}"))?;
    stream
        .set_read_timeout(Some(HANDSHAKE))
        .and_then(|()| stream.set_write_timeout(Some(HANDSHAKE)))
        .map_err(|err| format!("socket options: {err}"))?;
    let url = format!("ws://{addr}{}", path(role));
    match tungstenite::client(url.as_str(), stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::handshake::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            let body = r.body().as_deref().unwrap_or_default();
            Err(format!(
                "HTTP {}: {}",
                r.status(),
                String::from_utf8_lossy(body)
            ))
        }
        Err(tungstenite::handshake::HandshakeError::Failure(err)) => Err(err.to_string()),
        Err(err) => Err(format!("handshake: {err}")),
    }
}

fn serve(mut ws: WebSocket<TcpStream>, sock: &Sock, commands: &mpsc::Receiver<Command>) {
    let _ = ws.get_mut().set_read_timeout(Some(TICK));
    let mut closing: Option<Instant> = None;
    loop {
        match commands.try_recv() {
            Ok(Command::Close) if closing.is_none() => {
                let at = Instant::now();
                closing = Some(at);
                sock.finish(at, End::ClosedByUs);
                let _ = ws.close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "soak".into(),
                }));
            }
            Ok(Command::Vanish) => {
                sock.finish(Instant::now(), End::VanishedByUs);
                let _ = ws.get_ref().shutdown(Shutdown::Both);
                return;
            }
            _ => {}
        }
        if closing.is_some_and(|at| at.elapsed() > Duration::from_secs(3)) {
            // hound never echoed our close: the socket is over for us either way.
            return;
        }
        match ws.read() {
            Ok(Message::Text(text)) => record(sock, text.as_str()),
            Ok(Message::Close(frame)) => {
                sock.finish(
                    Instant::now(),
                    End::ClosedByServer(frame.map(|f| u16::from(f.code))),
                );
            }
            Ok(_) => {}
            Err(err) if quiet(&err) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                sock.finish(
                    Instant::now(),
                    End::Broken("closed without a close frame".into()),
                );
                return;
            }
            Err(err) => {
                sock.finish(Instant::now(), End::Broken(err.to_string()));
                return;
            }
        }
    }
}

/// A read that found nothing within the tick: not an error.
fn quiet(err: &tungstenite::Error) -> bool {
    let tungstenite::Error::Io(err) = err else {
        return false;
    };
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn record(sock: &Sock, text: &str) {
    let at = Instant::now();
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        // Kept as a message the checker cannot match, so it is reported with the rest.
        sock.messages.lock().unwrap().push(Msg {
            at,
            service: "?".to_owned(),
            event: format!("NOT JSON: {text}"),
            members: Members::new(),
        });
        return;
    };
    let body = &value["body"];
    let Some(event) = body["key_event"].as_str() else {
        if body["event_type"].is_string() {
            sock.customs.fetch_add(1, Ordering::Relaxed);
        }
        return;
    };
    if event == "LEADER" {
        crate::leaders::record(sock.id, sock.hound, &value);
        return;
    }
    let members = body["services"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| {
                    (
                        n["ip"].as_str().unwrap_or("?").to_owned(),
                        n["port"].as_u64().unwrap_or(0) as u16,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    sock.messages.lock().unwrap().push(Msg {
        at,
        service: value["namespace"].as_str().unwrap_or("?").to_owned(),
        event: event.to_owned(),
        members,
    });
}
