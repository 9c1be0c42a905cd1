//! WebSocket clients: blocking ones for registrations, and a [`Pool`] that holds thousands of
//! monitor sockets on a few threads (non-blocking sockets under epoll) and timestamps when each
//! receives a probe message.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes, WebSocket};

pub type Ws = WebSocket<TcpStream>;

/// Small buffers: the bench holds up to 10,000 of these and the messages are small.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// Opens a WebSocket (blocking handshake); a refusal comes back as `Err("HTTP 503: …")`.
pub fn connect(addr: SocketAddr, path_and_query: &str, timeout: Duration) -> Result<Ws, String> {
    let request = format!("ws://{addr}{path_and_query}")
        .into_client_request()
        .map_err(|err| format!("bad request: {err}"))?;
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|err| format!("connect: {err}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|err| format!("socket options: {err}"))?;
    match tungstenite::client::client_with_config(request, stream, Some(client_config())) {
        Ok((ws, _)) => Ok(ws),
        Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => Err(format!(
            "HTTP {}: {}",
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
        )),
        Err(HandshakeError::Failure(err)) => Err(format!("handshake: {err}")),
        Err(HandshakeError::Interrupted(_)) => Err("handshake timed out".into()),
    }
}

/// The next text frame within `within` (pings are answered by tungstenite on the way).
pub fn read_text(ws: &mut Ws, within: Duration) -> Result<Utf8Bytes, String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no message within {within:?}"));
        }
        let _ = ws.get_mut().set_read_timeout(Some(left));
        match ws.read() {
            Ok(Message::Text(text)) => return Ok(text),
            Ok(Message::Close(frame)) => return Err(format!("closed by hound: {frame:?}")),
            Ok(_) => {}
            Err(tungstenite::Error::Io(err))
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(err) => return Err(format!("read: {err}")),
        }
    }
}

/// Sends a normal close frame without waiting for anything.
pub fn send_close(ws: &mut Ws) {
    let _ = ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bench".into(),
    }));
    let _ = ws.flush();
}

/// Reads until hound's close echo (or the end of the connection), at most `within`.
pub fn finish_close(mut ws: Ws, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = ws
            .get_mut()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))));
        if ws.read().is_err() {
            return;
        }
    }
}

/// The `"key_event"` of a service event, and its ports, without a JSON parser: hound's
/// messages are compact JSON whose shape the API fixes.
pub fn key_event(text: &str) -> Option<&str> {
    let start = text.find("\"key_event\":\"")? + "\"key_event\":\"".len();
    let end = text[start..].find('"')?;
    Some(&text[start..start + end])
}

/// The `"port":N` values of a message, in order.
pub fn ports(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"port\":") {
        rest = &rest[at + "\"port\":".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(port) = digits.parse() {
            out.push(port);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Pool
// ---------------------------------------------------------------------------------------------

enum Command {
    Add(Box<Ws>),
    /// Send every socket's last text frame (or `None`) to the reply channel.
    Snapshot(Sender<Vec<Option<Utf8Bytes>>>),
    /// Close every socket (close frame, then drop) and end the thread.
    CloseAll,
}

/// What the workers share with the pool's owner.
struct Shared {
    /// Reference point of the `*_ns` timestamps.
    base: Instant,
    /// The probe being waited for: a port that appears in the message; 0 = none.
    probe: AtomicU64,
    expected: AtomicUsize,
    hits: AtomicUsize,
    last_hit_ns: AtomicU64,
    done: Sender<()>,
    /// Sockets that hound closed or that broke, ever.
    lost: AtomicUsize,
    first_loss: std::sync::Mutex<Option<String>>,
    stop: AtomicBool,
}

impl Shared {
    fn on_text(&self, text: &str, at: Instant) {
        let probe = self.probe.load(Ordering::Acquire);
        if probe == 0 || !ports(text).iter().any(|&p| u64::from(p) == probe) {
            return;
        }
        let ns = at.duration_since(self.base).as_nanos() as u64;
        self.last_hit_ns.fetch_max(ns, Ordering::AcqRel);
        let hits = self.hits.fetch_add(1, Ordering::AcqRel) + 1;
        if hits == self.expected.load(Ordering::Acquire) {
            let _ = self.done.send(());
        }
    }

    fn on_lost(&self, why: String) {
        self.lost.fetch_add(1, Ordering::AcqRel);
        let mut first = self.first_loss.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(why);
        }
    }
}

struct Worker {
    commands: Sender<Command>,
    /// eventfd that wakes the worker's epoll_wait when a command is queued.
    wake: i32,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn send(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a valid buffer to our own eventfd.
            unsafe { libc::write(self.wake, one.as_ptr().cast(), one.len()) };
        }
    }
}

/// The outcome of [`Pool::open`].
#[derive(Debug, Clone)]
pub struct Opened {
    pub opened: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// [`Pool::open`] stops trying after this many failures in a row (hound refuses more).
const GIVE_UP_AFTER: usize = 50;

/// Result of one probe: when the last expected socket received it, or how many did.
#[derive(Debug, Clone, Copy)]
pub enum ProbeResult {
    AllAt(Instant),
    Partial { received: usize, expected: usize },
}

/// Many client WebSockets served by a few epoll threads.
pub struct Pool {
    shared: Arc<Shared>,
    done: Receiver<()>,
    workers: Vec<Worker>,
    next: usize,
    len: usize,
}

impl Pool {
    pub fn new(threads: usize) -> Pool {
        let (done_tx, done) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            base: Instant::now(),
            probe: AtomicU64::new(0),
            expected: AtomicUsize::new(usize::MAX),
            hits: AtomicUsize::new(0),
            last_hit_ns: AtomicU64::new(0),
            done: done_tx,
            lost: AtomicUsize::new(0),
            first_loss: std::sync::Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let workers = (0..threads)
            .map(|n| {
                let (commands, incoming) = crossbeam_channel::unbounded();
                // SAFETY: eventfd takes no pointers; the descriptor is closed by the worker.
                let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
                assert!(wake >= 0, "eventfd: {}", io::Error::last_os_error());
                let shared = shared.clone();
                let thread = thread::Builder::new()
                    .name(format!("ws-pool-{n}"))
                    .spawn(move || worker_loop(&incoming, wake, &shared))
                    .expect("spawn a pool thread");
                Worker {
                    commands,
                    wake,
                    thread: Some(thread),
                }
            })
            .collect();
        Pool {
            shared,
            done,
            workers,
            next: 0,
            len: 0,
        }
    }

    /// Sockets handed to the pool (including any that were lost since).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Sockets hound closed or that broke since the pool started.
    pub fn lost(&self) -> usize {
        self.shared.lost.load(Ordering::Acquire)
    }

    pub fn first_loss(&self) -> Option<String> {
        self.shared
            .first_loss
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hands a socket (blocking, already past its first message) to a worker.
    pub fn add(&mut self, ws: Ws) {
        let worker = &self.workers[self.next % self.workers.len()];
        self.next += 1;
        self.len += 1;
        worker.send(Command::Add(Box::new(ws)));
    }

    /// Opens `count` sockets to `path` with `openers` threads in parallel; each reads its first
    /// message (the SYNC) before it joins the pool. Stops at `deadline`.
    pub fn open(
        &mut self,
        addr: SocketAddr,
        path: &str,
        count: usize,
        openers: usize,
        deadline: Instant,
    ) -> Opened {
        let started = Instant::now();
        let (sockets_tx, sockets) = crossbeam_channel::bounded::<Result<Ws, String>>(256);
        let next = Arc::new(AtomicUsize::new(0));
        let give_up = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..openers.max(1))
            .map(|n| {
                let (sockets_tx, next, path) = (sockets_tx.clone(), next.clone(), path.to_owned());
                let give_up = give_up.clone();
                thread::Builder::new()
                    .name(format!("ws-open-{n}"))
                    .spawn(move || {
                        while next.fetch_add(1, Ordering::AcqRel) < count {
                            if Instant::now() >= deadline {
                                let _ = sockets_tx.send(Err("opening deadline passed".into()));
                                continue;
                            }
                            if give_up.load(Ordering::Acquire) {
                                let _ = sockets_tx.send(Err(format!(
                                    "not tried after {GIVE_UP_AFTER} failures in a row"
                                )));
                                continue;
                            }
                            let result = connect(addr, &path, Duration::from_secs(5))
                                .and_then(|mut ws| {
                                    read_text(&mut ws, Duration::from_secs(5)).map(|_| ws)
                                })
                                .and_then(|ws| {
                                    ws.get_ref()
                                        .set_nonblocking(true)
                                        .map(|()| ws)
                                        .map_err(|err| err.to_string())
                                });
                            if sockets_tx.send(result).is_err() {
                                return;
                            }
                        }
                    })
                    .expect("spawn an opener thread")
            })
            .collect();
        drop(sockets_tx);
        let mut opened = Opened {
            opened: 0,
            failed: 0,
            first_error: None,
            elapsed: Duration::ZERO,
        };
        let mut failures_in_a_row = 0;
        for result in sockets {
            match result {
                Ok(ws) => {
                    self.add(ws);
                    opened.opened += 1;
                    failures_in_a_row = 0;
                }
                Err(err) => {
                    opened.failed += 1;
                    opened.first_error.get_or_insert(err);
                    failures_in_a_row += 1;
                    if failures_in_a_row >= GIVE_UP_AFTER {
                        give_up.store(true, Ordering::Release);
                    }
                }
            }
        }
        for thread in threads {
            let _ = thread.join();
        }
        opened.elapsed = started.elapsed();
        opened
    }

    /// [`Pool::open`], then again for the sockets that failed, up to `retries` times, as long as
    /// only a few (< 5 %) failed: a client reconnects after a transient refusal, but not into a
    /// hound that refuses everything. `failed` counts every failed attempt.
    pub fn open_retrying(
        &mut self,
        addr: SocketAddr,
        path: &str,
        count: usize,
        openers: usize,
        deadline: Instant,
        retries: usize,
    ) -> Opened {
        let mut total = self.open(addr, path, count, openers, deadline);
        let mut missing = count - total.opened;
        for _ in 0..retries {
            if missing == 0 || missing * 20 > count {
                break;
            }
            let again = self.open(addr, path, missing, openers, deadline);
            total.opened += again.opened;
            total.failed += again.failed;
            total.elapsed += again.elapsed;
            missing -= again.opened;
        }
        total
    }

    /// Arms a probe: from now on, a message containing `"port":probe` counts as received, and
    /// [`Pool::wait`] returns once `expected` sockets have received one.
    pub fn arm(&self, probe: u16, expected: usize) {
        while self.done.try_recv().is_ok() {}
        self.shared.probe.store(0, Ordering::Release);
        self.shared.hits.store(0, Ordering::Release);
        self.shared.last_hit_ns.store(0, Ordering::Release);
        self.shared.expected.store(expected, Ordering::Release);
        self.shared.probe.store(u64::from(probe), Ordering::Release);
    }

    /// Waits for the armed probe to reach every expected socket.
    pub fn wait(&self, within: Duration) -> ProbeResult {
        let all = self.done.recv_timeout(within).is_ok();
        self.shared.probe.store(0, Ordering::Release);
        let last = Duration::from_nanos(self.shared.last_hit_ns.load(Ordering::Acquire));
        if all {
            ProbeResult::AllAt(self.shared.base + last)
        } else {
            ProbeResult::Partial {
                received: self.shared.hits.load(Ordering::Acquire),
                expected: self.shared.expected.load(Ordering::Acquire),
            }
        }
    }

    /// Every socket's last text frame.
    pub fn last_messages(&self) -> Vec<Option<Utf8Bytes>> {
        let mut all = Vec::new();
        for worker in &self.workers {
            let (reply, answer) = crossbeam_channel::bounded(1);
            worker.send(Command::Snapshot(reply));
            if let Ok(part) = answer.recv_timeout(Duration::from_secs(10)) {
                all.extend(part);
            }
        }
        all
    }

    /// Closes every socket (close frame, then the connection) and stops the threads.
    pub fn close_all(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for worker in &self.workers {
            worker.send(Command::CloseAll);
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
            // SAFETY: the worker has ended; nothing else uses its eventfd.
            unsafe { libc::close(worker.wake) };
        }
        self.workers.clear();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Slot {
    ws: Ws,
    last: Option<Utf8Bytes>,
}

const WAKE_TOKEN: u64 = u64::MAX;

fn worker_loop(commands: &Receiver<Command>, wake: i32, shared: &Shared) {
    // SAFETY: epoll_create1 takes no pointers.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1: {}", io::Error::last_os_error());
    let add = |fd: i32, token: u64| {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
    };
    add(wake, WAKE_TOKEN);
    let mut slots: Vec<Option<Slot>> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        // SAFETY: `events` is a valid buffer of `events.len()` entries.
        let ready =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 1000) };
        let ready = usize::try_from(ready).unwrap_or(0);
        for event in &events[..ready] {
            let token = event.u64;
            if token == WAKE_TOKEN {
                let mut counter = [0u8; 8];
                // SAFETY: reads 8 bytes into a valid buffer from our own eventfd.
                unsafe { libc::read(wake, counter.as_mut_ptr().cast(), counter.len()) };
                continue;
            }
            let index = token as usize;
            let Some(slot) = slots.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            if let Err(why) = service(slot, shared) {
                let fd = slot.ws.get_ref().as_raw_fd();
                // SAFETY: removing a descriptor we added; no event pointer is needed.
                unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
                slots[index] = None;
                if !shared.stop.load(Ordering::Acquire) {
                    shared.on_lost(why);
                }
            }
        }
        loop {
            match commands.try_recv() {
                Ok(Command::Add(ws)) => {
                    let fd = ws.get_ref().as_raw_fd();
                    slots.push(Some(Slot {
                        ws: *ws,
                        last: None,
                    }));
                    add(fd, (slots.len() - 1) as u64);
                }
                Ok(Command::Snapshot(reply)) => {
                    let _ = reply.send(
                        slots
                            .iter()
                            .flatten()
                            .map(|slot| slot.last.clone())
                            .collect(),
                    );
                }
                Ok(Command::CloseAll) | Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    for slot in slots.iter_mut().flatten() {
                        send_close(&mut slot.ws);
                    }
                    slots.clear();
                    // SAFETY: our own epoll descriptor, no longer used.
                    unsafe { libc::close(epoll) };
                    return;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
            }
        }
    }
}

/// Reads everything a socket has; `Err` once it is closed or broken.
fn service(slot: &mut Slot, shared: &Shared) -> Result<(), String> {
    loop {
        match slot.ws.read() {
            Ok(Message::Text(text)) => {
                shared.on_text(text.as_str(), Instant::now());
                slot.last = Some(text);
            }
            Ok(Message::Close(frame)) => {
                return Err(format!(
                    "closed by hound: {}",
                    frame.map_or_else(
                        || "no close frame".to_owned(),
                        |f| format!("{} {}", u16::from(f.code), f.reason)
                    )
                ));
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) => return Err(format!("read: {err}")),
        }
    }
    // Pongs tungstenite queued while reading pings.
    match slot.ws.flush() {
        Ok(()) => Ok(()),
        Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(err) => Err(format!("flush: {err}")),
    }
}
