//! A WebSocket client that opens and holds thousands of sockets on one or two threads: every
//! connect and handshake of a batch is in flight at once (non-blocking sockets, tungstenite's
//! handshake resumed under epoll), each socket's first message must be its `SYNC`, and later
//! messages are timestamped as they arrive.
//!
//! One source file, included with `#[path]` by the integration tests (`tests/integration/
//! support/mod.rs`) and by the bench (`benches/hound-bench/main.rs`), so both drive hound with
//! the same client. It uses only std, libc, crossbeam-channel and tungstenite, which both crates
//! have.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::{ClientHandshake, Response};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes, WebSocket};

/// The pool promises to run on at most this many threads: a client process that holds 10,000
/// sockets must not need a thread per socket, or a handful of threads per hundred.
pub const MAX_POOL_THREADS: usize = 2;

/// Small buffers: a process holds up to 10,000 of these and hound's messages are small.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// A failed client handshake in one line: `HTTP 503: <body>` for a refusal, else the error.
pub fn handshake_failure(err: &tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Http(response) => format!(
            "HTTP {}: {}",
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
        ),
        err => format!("handshake: {err}"),
    }
}

/// The `"key_event"` of a service event, without a JSON parser: hound's messages are compact
/// JSON whose shape the API fixes.
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
// Raw sockets: what std cannot do before a connect
// ---------------------------------------------------------------------------------------------

/// An unconnected IPv4 TCP socket, owned by a `TcpStream` (which only closes it on drop until
/// it is connected). std offers no non-blocking connect, no `SO_REUSEADDR` or `bind` before a
/// connect, and no receive buffer fixed before the handshake.
pub fn tcp_socket_v4(nonblocking: bool) -> io::Result<TcpStream> {
    let flags =
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: socket(2) has no memory-safety preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns; the stream closes it on every path.
    Ok(unsafe { TcpStream::from_raw_fd(fd) })
}

/// Sets an integer `SOL_SOCKET` option (`SO_REUSEADDR`, `SO_RCVBUF`, …).
pub fn set_socket_option(stream: &TcpStream, name: libc::c_int, value: i32) -> io::Result<()> {
    let value: libc::c_int = value;
    // SAFETY: `value` is a valid c_int for the duration of the call and its length is given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr_v4(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_IN_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as _;

/// Binds an unconnected socket to a local address (port 0: the kernel picks one).
pub fn bind_v4(stream: &TcpStream, addr: SocketAddrV4) -> io::Result<()> {
    let sin = sockaddr_v4(addr);
    // SAFETY: `sin` is a valid sockaddr_in for the duration of the call and its length is given.
    if unsafe { libc::bind(stream.as_raw_fd(), (&raw const sin).cast(), SOCKADDR_IN_LEN) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connects to `addr`: `Ok(true)` once connected, `Ok(false)` while a non-blocking connect is
/// still in progress (writable under epoll when it ends; `take_error` then tells how).
pub fn connect_v4(stream: &TcpStream, addr: SocketAddrV4) -> io::Result<bool> {
    let sin = sockaddr_v4(addr);
    // SAFETY: `sin` is a valid sockaddr_in for the duration of the call and its length is given.
    if unsafe { libc::connect(stream.as_raw_fd(), (&raw const sin).cast(), SOCKADDR_IN_LEN) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok(false)
    } else {
        Err(err)
    }
}

// ---------------------------------------------------------------------------------------------
// Pool
// ---------------------------------------------------------------------------------------------

/// Sockets that one [`Pool::open`] asks one worker to open.
struct Batch {
    addr: SocketAddrV4,
    /// `ws://addr/path?query`, parsed again per socket (a request is not `Clone`).
    url: Arc<str>,
    count: usize,
    deadline: Instant,
    /// One answer per socket: the time from its connect to its SYNC, or why it failed.
    results: Sender<Result<Duration, String>>,
}

enum Command {
    /// A socket opened elsewhere (non-blocking, past its first message) to hold and read.
    Add(Box<WebSocket<TcpStream>>),
    Open(Batch),
    /// Send every open socket's last text frame (or `None`) to the reply channel.
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
    /// Open sockets that hound closed or that broke, ever.
    lost: AtomicUsize,
    first_loss: Mutex<Option<String>>,
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
    wake: RawFd,
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
#[derive(Debug, Clone, Default)]
pub struct Opened {
    pub requested: usize,
    /// Sockets that received their SYNC and are now held by the pool.
    pub opened: usize,
    pub failed: usize,
    /// The failures in the order they came, at most [`FIRST_ERRORS`].
    pub first_errors: Vec<String>,
    /// Failures by kind (the message with its numbers masked): how many, and one example.
    pub kinds: BTreeMap<String, (usize, String)>,
    /// From the first connect until the last socket had its SYNC or failed.
    pub elapsed: Duration,
    /// Each opened socket's time from its connect to its SYNC, in arrival order.
    pub sync_times: Vec<Duration>,
}

/// How many failures [`Opened::first_errors`] keeps.
pub const FIRST_ERRORS: usize = 5;

impl Opened {
    fn record_failure(&mut self, why: String) {
        self.failed += 1;
        let kind: String = why
            .split(|c: char| c.is_ascii_digit())
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join("#");
        self.kinds.entry(kind).or_insert_with(|| (0, why.clone())).0 += 1;
        if self.first_errors.len() < FIRST_ERRORS {
            self.first_errors.push(why);
        }
    }

    fn merge(&mut self, other: Opened) {
        self.opened += other.opened;
        self.failed += other.failed;
        for why in other.first_errors {
            if self.first_errors.len() < FIRST_ERRORS {
                self.first_errors.push(why);
            }
        }
        for (kind, (count, example)) in other.kinds {
            self.kinds.entry(kind).or_insert((0, example)).0 += count;
        }
        self.elapsed += other.elapsed;
        self.sync_times.extend(other.sync_times);
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_errors.first().cloned()
    }

    /// `"12 × handshake: Handshake not finished; 3 × HTTP 503: …"`, most frequent first.
    pub fn failure_summary(&self) -> String {
        let mut kinds: Vec<&(usize, String)> = self.kinds.values().collect();
        kinds.sort_by_key(|kind| std::cmp::Reverse(kind.0));
        kinds
            .iter()
            .map(|(count, example)| format!("{count} × {example}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Result of one probe: when the last expected socket received it, or how many did.
#[derive(Debug, Clone, Copy)]
pub enum ProbeResult {
    AllAt(Instant),
    Partial { received: usize, expected: usize },
}

/// Many client WebSockets served by one or two epoll threads, which also open them.
pub struct Pool {
    shared: Arc<Shared>,
    done: Receiver<()>,
    workers: Vec<Worker>,
    next: usize,
    len: usize,
}

impl Pool {
    /// A pool on `threads` threads (1 or 2).
    pub fn new(threads: usize) -> Pool {
        assert!(
            (1..=MAX_POOL_THREADS).contains(&threads),
            "a pool runs on 1 to {MAX_POOL_THREADS} threads, not {threads}"
        );
        let (done_tx, done) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            base: Instant::now(),
            probe: AtomicU64::new(0),
            expected: AtomicUsize::new(usize::MAX),
            hits: AtomicUsize::new(0),
            last_hit_ns: AtomicU64::new(0),
            done: done_tx,
            lost: AtomicUsize::new(0),
            first_loss: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let workers = (0..threads)
            .map(|n| {
                let (commands, incoming) = crossbeam_channel::unbounded();
                // SAFETY: eventfd takes no pointers; the descriptor is closed in `shutdown`.
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

    /// Sockets the pool holds or held (including any that were lost since).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Open sockets that hound closed or that broke since the pool started.
    pub fn lost(&self) -> usize {
        self.shared.lost.load(Ordering::Acquire)
    }

    /// Sockets held and not lost.
    pub fn live(&self) -> usize {
        self.len - self.lost()
    }

    pub fn first_loss(&self) -> Option<String> {
        self.shared
            .first_loss
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hands over a socket opened elsewhere (non-blocking, already past its first message).
    pub fn add(&mut self, ws: WebSocket<TcpStream>) {
        let worker = &self.workers[self.next % self.workers.len()];
        self.next += 1;
        self.len += 1;
        worker.send(Command::Add(Box::new(ws)));
    }

    /// Opens `count` WebSockets to `path` (e.g. `/etcd/monitor?monitor=a`) all at once: the
    /// pool's threads start every connect before waiting for any, and drive the connects,
    /// handshakes and first reads together under epoll. A socket counts as opened once its
    /// first message, which must be a `SYNC`, has arrived; it then stays in the pool. Sockets
    /// without their SYNC `within` the call fail. Returns when every socket has an answer.
    pub fn open(&mut self, addr: SocketAddr, path: &str, count: usize, within: Duration) -> Opened {
        let started = Instant::now();
        let deadline = started + within;
        let mut opened = Opened {
            requested: count,
            ..Opened::default()
        };
        let SocketAddr::V4(v4) = addr else {
            for _ in 0..count {
                opened.record_failure(format!("the pool connects to IPv4 only, not {addr}"));
            }
            return opened;
        };
        let url: Arc<str> = format!("ws://{addr}{path}").into();
        let (results_tx, results) = crossbeam_channel::unbounded();
        let threads = self.workers.len();
        for (n, worker) in self.workers.iter().enumerate() {
            let share = count / threads + usize::from(n < count % threads);
            if share > 0 {
                worker.send(Command::Open(Batch {
                    addr: v4,
                    url: url.clone(),
                    count: share,
                    deadline,
                    results: results_tx.clone(),
                }));
            }
        }
        drop(results_tx);
        // The workers answer for every socket by the deadline; the grace covers a worker busy
        // with a long epoll round when it passes.
        let give_up = deadline + Duration::from_secs(5);
        let mut answered = 0;
        while answered < count {
            match results.recv_deadline(give_up) {
                Ok(Ok(took)) => {
                    opened.opened += 1;
                    opened.sync_times.push(took);
                }
                Ok(Err(why)) => opened.record_failure(why),
                Err(_) => break,
            }
            answered += 1;
        }
        for _ in answered..count {
            opened.record_failure("no answer from the pool's threads".to_owned());
        }
        opened.elapsed = started.elapsed();
        self.len += opened.opened;
        opened
    }

    /// [`Pool::open`], then again for the sockets that failed, up to `retries` times within
    /// `within` in all, as a client reconnects after a refusal. `failed` counts every failed
    /// attempt, `elapsed` adds up the attempts.
    pub fn open_retrying(
        &mut self,
        addr: SocketAddr,
        path: &str,
        count: usize,
        within: Duration,
        retries: usize,
    ) -> Opened {
        let deadline = Instant::now() + within;
        let mut total = self.open(addr, path, count, within);
        for _ in 0..retries {
            let missing = count - total.opened;
            let left = deadline.saturating_duration_since(Instant::now());
            if missing == 0 || left.is_zero() {
                break;
            }
            let again = self.open(addr, path, missing, left);
            total.merge(again);
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

    /// Every open socket's last text frame.
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

// ---------------------------------------------------------------------------------------------
// The worker: one epoll loop that opens, holds and reads its share of the sockets
// ---------------------------------------------------------------------------------------------

/// Where a socket is in its life.
enum Stage {
    Connecting(TcpStream),
    Handshaking(MidHandshake<ClientHandshake<TcpStream>>),
    AwaitingSync(WebSocket<TcpStream>),
    Open(WebSocket<TcpStream>),
}

impl Stage {
    fn name(&self) -> &'static str {
        match self {
            Stage::Connecting(_) => "still connecting",
            Stage::Handshaking(_) => "handshake unfinished",
            Stage::AwaitingSync(_) => "upgraded, no message yet",
            Stage::Open(_) => "open",
        }
    }
}

/// A socket being opened: where its answer goes, and by when.
struct Opening {
    url: Arc<str>,
    started: Instant,
    deadline: Instant,
    results: Sender<Result<Duration, String>>,
}

struct Slot {
    fd: RawFd,
    /// `None` only while [`drive`] moves the socket from one stage to the next.
    stage: Option<Stage>,
    opening: Option<Opening>,
    last: Option<Utf8Bytes>,
}

const WAKE_TOKEN: u64 = u64::MAX;
/// How often a worker with sockets still opening checks their deadlines.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

struct Epoll(RawFd);

impl Epoll {
    fn new() -> Epoll {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(fd >= 0, "epoll_create1: {}", io::Error::last_os_error());
        Epoll(fd)
    }

    fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn remove(&self, fd: RawFd) {
        // SAFETY: removing a descriptor we added; no event pointer is needed.
        unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> usize {
        let timeout = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `events` is a valid buffer of `events.len()` entries.
        let ready =
            unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, timeout) };
        usize::try_from(ready).unwrap_or(0)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: our own epoll descriptor, no longer used.
        unsafe { libc::close(self.0) };
    }
}

/// Sockets are edge-triggered: [`drive`] always goes on until the socket would block, and an
/// edge on writability resumes a handshake (or a pong) that could not be written at once
/// without a level-triggered `EPOLLOUT` spinning while the socket waits to read.
const SOCKET_EVENTS: u32 =
    (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

struct WorkerState<'a> {
    epoll: Epoll,
    slots: Vec<Option<Slot>>,
    /// Slots whose socket has not had its SYNC yet.
    opening: usize,
    shared: &'a Shared,
}

impl WorkerState<'_> {
    /// Adds a socket in `stage` and moves it on as far as it goes now.
    fn insert(&mut self, fd: RawFd, stage: Stage, opening: Option<Opening>) {
        let index = self.slots.len();
        if opening.is_some() {
            self.opening += 1;
        }
        self.slots.push(Some(Slot {
            fd,
            stage: Some(stage),
            opening,
            last: None,
        }));
        if let Err(err) = self.epoll.add(fd, SOCKET_EVENTS, index as u64) {
            self.fail(index, format!("epoll_ctl: {err}"));
            return;
        }
        self.drive(index);
    }

    /// Starts every connect of a batch before returning to epoll.
    fn open(&mut self, batch: &Batch) {
        for _ in 0..batch.count {
            let opening = Opening {
                url: batch.url.clone(),
                started: Instant::now(),
                deadline: batch.deadline,
                results: batch.results.clone(),
            };
            let connected = tcp_socket_v4(true).and_then(|stream| {
                let _ = stream.set_nodelay(true);
                connect_v4(&stream, batch.addr).map(|_| stream)
            });
            match connected {
                Ok(stream) => {
                    let fd = stream.as_raw_fd();
                    self.insert(fd, Stage::Connecting(stream), Some(opening));
                }
                Err(err) => {
                    let _ = opening.results.send(Err(format!("connect: {err}")));
                }
            }
        }
    }

    fn drive(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let was_opening = slot.opening.is_some();
        let result = drive(slot, self.shared);
        // Its SYNC came (even if the socket failed right after, which then counts as a loss).
        if was_opening && slot.opening.is_none() {
            self.opening -= 1;
        }
        if let Err(why) = result {
            self.fail(index, why);
        }
    }

    /// Drops a socket: an opening one answers with `why`, an open one counts as lost.
    fn fail(&mut self, index: usize, why: String) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        self.epoll.remove(slot.fd);
        if let Some(opening) = slot.opening {
            self.opening -= 1;
            let _ = opening.results.send(Err(why));
        } else if !self.shared.stop.load(Ordering::Acquire) {
            self.shared.on_lost(why);
        }
    }

    /// Fails the sockets whose opening deadline has passed, saying how far they got.
    fn sweep(&mut self, now: Instant) {
        let late: Vec<(usize, String)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let slot = slot.as_ref()?;
                let opening = slot.opening.as_ref()?;
                (now >= opening.deadline).then(|| {
                    let stage = slot.stage.as_ref().map_or("gone", Stage::name);
                    let waited = now.duration_since(opening.started);
                    (index, format!("no SYNC after {waited:.1?} ({stage})"))
                })
            })
            .collect();
        for (index, why) in late {
            self.fail(index, why);
        }
    }

    fn close_all(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            if let Some(Stage::Open(ws) | Stage::AwaitingSync(ws)) = slot.stage.as_mut() {
                let _ = ws.close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "done".into(),
                }));
                let _ = ws.flush();
            }
        }
        self.slots.clear();
    }
}

fn worker_loop(commands: &Receiver<Command>, wake: RawFd, shared: &Shared) {
    let mut state = WorkerState {
        epoll: Epoll::new(),
        slots: Vec::new(),
        opening: 0,
        shared,
    };
    state
        .epoll
        .add(wake, libc::EPOLLIN as u32, WAKE_TOKEN)
        .expect("watch the pool's eventfd");
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    loop {
        let timeout = if state.opening > 0 {
            SWEEP_EVERY
        } else {
            Duration::from_secs(1)
        };
        let ready = state.epoll.wait(&mut events, timeout);
        for event in &events[..ready] {
            if event.u64 == WAKE_TOKEN {
                let mut counter = [0u8; 8];
                // SAFETY: reads 8 bytes into a valid buffer from our own eventfd.
                unsafe { libc::read(wake, counter.as_mut_ptr().cast(), counter.len()) };
            } else {
                state.drive(event.u64 as usize);
            }
        }
        loop {
            match commands.try_recv() {
                Ok(Command::Add(ws)) => {
                    let fd = ws.get_ref().as_raw_fd();
                    state.insert(fd, Stage::Open(*ws), None);
                }
                Ok(Command::Open(batch)) => state.open(&batch),
                Ok(Command::Snapshot(reply)) => {
                    let _ = reply.send(
                        state
                            .slots
                            .iter()
                            .flatten()
                            .filter(|slot| matches!(slot.stage, Some(Stage::Open(_))))
                            .map(|slot| slot.last.clone())
                            .collect(),
                    );
                }
                Ok(Command::CloseAll) | Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    state.close_all();
                    return;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
            }
        }
        let now = Instant::now();
        if state.opening > 0 && now >= next_sweep {
            state.sweep(now);
            next_sweep = now + SWEEP_EVERY;
        }
    }
}

/// What starting or resuming a client handshake returns.
type HandshakeStep =
    Result<(WebSocket<TcpStream>, Response), HandshakeError<ClientHandshake<TcpStream>>>;

fn after_handshake(step: HandshakeStep) -> Result<Stage, String> {
    match step {
        Ok((ws, _response)) => Ok(Stage::AwaitingSync(ws)),
        Err(HandshakeError::Interrupted(mid)) => Ok(Stage::Handshaking(mid)),
        Err(HandshakeError::Failure(err)) => Err(handshake_failure(&err)),
    }
}

/// Moves a socket on until it would block: connect, handshake, first message (which must be a
/// `SYNC`, and answers the opener), then every later message. `Err`: the socket failed.
fn drive(slot: &mut Slot, shared: &Shared) -> Result<(), String> {
    loop {
        let stage = slot
            .stage
            .take()
            .expect("a slot has a stage between events");
        let next = match stage {
            Stage::Connecting(stream) => {
                if let Some(err) = stream.take_error().map_err(|err| err.to_string())? {
                    return Err(format!("connect: {err}"));
                }
                // Not connected yet (no edge, or an edge for something else): wait for the next.
                if stream.peer_addr().is_err() {
                    Stage::Connecting(stream)
                } else {
                    // Only sockets being opened connect, and each knows its request.
                    let Some(url) = slot.opening.as_ref().map(|o| o.url.clone()) else {
                        return Err("a connecting socket without a request".to_owned());
                    };
                    let request = url
                        .as_ref()
                        .into_client_request()
                        .map_err(|err| format!("bad request: {err}"))?;
                    after_handshake(tungstenite::client::client_with_config(
                        request,
                        stream,
                        Some(client_config()),
                    ))?
                }
            }
            Stage::Handshaking(mid) => after_handshake(mid.handshake())?,
            Stage::AwaitingSync(mut ws) => match ws.read() {
                Ok(Message::Text(text)) => {
                    if key_event(text.as_str()) != Some("SYNC") {
                        return Err(format!("first message is not a SYNC: {text}"));
                    }
                    if let Some(opening) = slot.opening.take() {
                        let _ = opening.results.send(Ok(opening.started.elapsed()));
                    }
                    slot.last = Some(text);
                    Stage::Open(ws)
                }
                Ok(Message::Close(frame)) => {
                    return Err(format!("closed before its SYNC: {}", close_reason(frame)));
                }
                Ok(_) => Stage::AwaitingSync(ws),
                Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                    slot.stage = Some(Stage::AwaitingSync(ws));
                    return flush(slot);
                }
                Err(err) => return Err(format!("read before its SYNC: {err}")),
            },
            Stage::Open(mut ws) => {
                let result = read_open(&mut ws, slot, shared);
                slot.stage = Some(Stage::Open(ws));
                return result.and_then(|()| flush(slot));
            }
        };
        let blocked = matches!(next, Stage::Connecting(_) | Stage::Handshaking(_));
        slot.stage = Some(next);
        if blocked {
            return Ok(());
        }
    }
}

/// Reads everything an open socket has, timestamping each text frame.
fn read_open(
    ws: &mut WebSocket<TcpStream>,
    slot: &mut Slot,
    shared: &Shared,
) -> Result<(), String> {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                shared.on_text(text.as_str(), Instant::now());
                slot.last = Some(text);
            }
            Ok(Message::Close(frame)) => {
                return Err(format!("closed by hound: {}", close_reason(frame)));
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                return Ok(());
            }
            Err(err) => return Err(format!("read: {err}")),
        }
    }
}

/// Sends the pongs tungstenite queued while reading pings; the rest goes on the next edge.
fn flush(slot: &mut Slot) -> Result<(), String> {
    let Some(Stage::Open(ws) | Stage::AwaitingSync(ws)) = slot.stage.as_mut() else {
        return Ok(());
    };
    match ws.flush() {
        Ok(()) => Ok(()),
        Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(err) => Err(format!("flush: {err}")),
    }
}

fn close_reason(frame: Option<CloseFrame>) -> String {
    frame.map_or_else(
        || "no close frame".to_owned(),
        |f| format!("{} {}", u16::from(f.code), f.reason),
    )
}
