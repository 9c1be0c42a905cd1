//! The harness: a real etcd per test, the real `hound` binary, and small blocking HTTP, WebSocket
//! and etcd clients that every wait bounds with a deadline.

#![allow(dead_code)] // Not every test module uses every helper.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// How long a test may run before the watchdog aborts the whole test binary.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);
/// How long hound may take to log its listening address.
pub const HOUND_START: Duration = Duration::from_secs(10);
/// The default wait for something that should happen promptly.
pub const PROMPT: Duration = Duration::from_secs(5);
/// The bounded wait of "nothing more arrives" checks.
pub const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Watchdog, polling, names
// ---------------------------------------------------------------------------------------------

/// Aborts the test binary if the test that armed it runs longer than [`TEST_LIMIT`]: a hung test
/// must fail, not hang CI. Dropping it (also while unwinding from a panic) disarms it.
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
}

/// Arms a [`Watchdog`] for the current test with the usual [`TEST_LIMIT`].
pub fn watchdog() -> Watchdog {
    watchdog_for(TEST_LIMIT)
}

/// Arms a [`Watchdog`] for the current test that fires after `limit`.
pub fn watchdog_for(limit: Duration) -> Watchdog {
    let name = thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    let (disarm, armed) = mpsc::channel::<()>();
    thread::Builder::new()
        .name(format!("watchdog {name}"))
        .spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = armed.recv_timeout(limit) {
                eprintln!("watchdog: test {name} ran longer than {limit:?}; aborting");
                std::process::abort();
            }
        })
        .expect("spawn watchdog thread");
    Watchdog {
        disarm: Some(disarm),
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm.take();
    }
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `within`.
pub fn poll_until(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `probe` every 20 ms until it returns `Some`; panics with `what` after `within`.
pub fn poll_for<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A name unique within this test run, usable as a namespace or a service name.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` so that it dies with the test binary, however the binary ends.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so every child is
/// forked by one thread that lives as long as the test binary: an aborted or killed test run
/// takes its etcd and hound processes with it instead of leaving orphans.
pub fn spawn_child(mut command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("child spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawn the child spawner thread");
        Mutex::new(requests)
    });
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply))
        .expect("child spawner thread is gone");
    answer.recv().expect("child spawner thread is gone")
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        io::Error::last_os_error()
    );
}

/// Waits for `child` to exit, at most `within`.
pub fn wait_with_deadline(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------------------------------

/// A real single-member etcd on free loopback ports with its own data dir, killed on drop.
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// The etcd binary: `$HOUND_TEST_ETCD`, else `etcd` on PATH.
    fn binary() -> PathBuf {
        std::env::var_os("HOUND_TEST_ETCD")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("etcd"))
    }

    /// Starts etcd and waits until it answers `/health`.
    pub fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("hound-test-etcd-")
            .tempdir()
            .expect("create etcd temp dir");
        let mut etcd = Etcd {
            child: None,
            client_port: 0,
            peer_port: 0,
            dir,
        };
        let mut last_log = String::new();
        for _attempt in 0..5 {
            etcd.client_port = free_port();
            etcd.peer_port = free_port();
            if etcd.client_port != etcd.peer_port && etcd.launch() {
                return etcd;
            }
            // The ports were probably taken in the meantime: try again with new ones.
            last_log = etcd.log();
            etcd.kill();
            let _ = std::fs::remove_dir_all(etcd.data_dir());
        }
        panic!("etcd did not come up after 5 attempts; last log:\n{last_log}");
    }

    /// Spawns etcd on this instance's ports and data dir; true once it is healthy.
    fn launch(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("open etcd log");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(Self::binary());
        command
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            // A single member need not wait a full second before electing itself.
            .args(["--heartbeat-interval", "25", "--election-timeout", "250"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = spawn_child(command)
            .unwrap_or_else(|err| panic!("cannot run {:?}: {err}", Self::binary()));
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(15))
    }

    /// Polls `/health` until etcd says it is healthy; false if it exits or the deadline passes.
    fn wait_healthy(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let addr: SocketAddr = ([127, 0, 0, 1], self.client_port).into();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().expect("try_wait etcd").is_some()
            {
                return false;
            }
            if let Ok(response) = try_request(addr, "GET", "/health", &[], b"")
                && response.status == 200
                && response.text().contains("true")
            {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The process id of the running etcd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd is not running").id()
    }

    /// What etcd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// A blocking client to change etcd behind hound's back.
    pub fn client(&self) -> EtcdClient {
        EtcdClient::connect(&self.url())
    }

    /// Stops etcd abruptly (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Same as [`Etcd::kill`]: fault tests want etcd gone at once.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Freezes etcd (SIGSTOP): its sockets stay open but nothing answers.
    pub fn pause(&self) {
        send_signal(self.pid(), libc::SIGSTOP);
    }

    /// Thaws a paused etcd (SIGCONT).
    pub fn resume(&self) {
        send_signal(self.pid(), libc::SIGCONT);
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.launch(),
            "etcd did not come back on its ports; log:\n{}",
            self.log()
        );
    }

    /// Starts etcd again on the same ports with an empty data dir: a cluster that forgot
    /// everything, leases included.
    pub fn restart_empty(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.data_dir()).expect("wipe etcd data dir");
        assert!(
            self.launch(),
            "etcd did not come back on its ports; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A paused etcd still dies of SIGKILL, but resume it anyway so nothing lingers.
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
        }
        self.kill();
        if thread::panicking() {
            eprintln!(
                "--- log of etcd on {} (last 10 lines) ---\n{}",
                self.url(),
                tail(&self.log(), 10)
            );
        }
        // The TempDir field removes the data dir after this.
    }
}

/// A key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub lease: i64,
}

/// What `Status` says about the member we are connected to.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub version: String,
    pub leader: u64,
    pub member_id: u64,
}

/// A blocking etcd client over a private current-thread runtime, to change etcd behind hound's
/// back and to check what hound wrote.
pub struct EtcdClient {
    runtime: tokio::runtime::Runtime,
    client: etcd_client::Client,
}

impl EtcdClient {
    /// How long one etcd call may take.
    const CALL: Duration = Duration::from_secs(5);

    pub fn connect(url: &str) -> EtcdClient {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build tokio runtime");
        let client = runtime
            .block_on(async {
                tokio::time::timeout(
                    Self::CALL,
                    etcd_client::Client::connect([url.to_owned()], None),
                )
                .await
            })
            .unwrap_or_else(|_| panic!("connecting to etcd at {url} timed out"))
            .unwrap_or_else(|err| panic!("cannot connect to etcd at {url}: {err}"));
        EtcdClient { runtime, client }
    }

    fn call<T, F>(&mut self, what: &str, call: impl FnOnce(etcd_client::Client) -> F) -> T
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client.clone();
        self.runtime
            .block_on(async { tokio::time::timeout(Self::CALL, call(client)).await })
            .unwrap_or_else(|_| panic!("etcd {what} timed out"))
            .unwrap_or_else(|err| panic!("etcd {what} failed: {err}"))
    }

    pub fn put(&mut self, key: &str, value: &str) {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call("put", |mut c| async move { c.put(key, value, None).await });
    }

    pub fn put_with_lease(&mut self, key: &str, value: &str, lease: i64) {
        let (key, value) = (key.to_owned(), value.to_owned());
        let options = etcd_client::PutOptions::new().with_lease(lease);
        self.call("put", |mut c| async move {
            c.put(key, value, Some(options)).await
        });
    }

    pub fn delete(&mut self, key: &str) {
        let key = key.to_owned();
        self.call("delete", |mut c| async move { c.delete(key, None).await });
    }

    pub fn get(&mut self, key: &str) -> Option<Entry> {
        let key = key.to_owned();
        let response = self.call("get", |mut c| async move { c.get(key, None).await });
        response.kvs().first().map(entry)
    }

    /// Every key under `prefix`, in key order.
    pub fn get_prefix(&mut self, prefix: &str) -> Vec<Entry> {
        let prefix = prefix.to_owned();
        let options = etcd_client::GetOptions::new().with_prefix();
        let response = self.call(
            "get",
            |mut c| async move { c.get(prefix, Some(options)).await },
        );
        response.kvs().iter().map(entry).collect()
    }

    pub fn lease_grant(&mut self, ttl: i64) -> i64 {
        self.call("lease grant", |mut c| async move {
            c.lease_grant(ttl, None).await
        })
        .id()
    }

    pub fn lease_revoke(&mut self, id: i64) {
        self.call(
            "lease revoke",
            |mut c| async move { c.lease_revoke(id).await },
        );
    }

    /// The TTL the lease was granted with, or `None` if it no longer exists.
    pub fn lease_granted_ttl(&mut self, id: i64) -> Option<i64> {
        let response = self.call("lease time-to-live", |mut c| async move {
            c.lease_time_to_live(id, None).await
        });
        (response.ttl() > 0).then(|| response.granted_ttl())
    }

    pub fn status(&mut self) -> MemberStatus {
        let response = self.call("status", |mut c| async move { c.status().await });
        MemberStatus {
            version: response.version().to_owned(),
            leader: response.leader(),
            member_id: response.header().expect("status has a header").member_id(),
        }
    }
}

fn entry(kv: &etcd_client::KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        lease: kv.lease(),
    }
}

// ---------------------------------------------------------------------------------------------
// hound
// ---------------------------------------------------------------------------------------------

/// The environment variables hound reads; cleared for every child so the caller's shell cannot
/// leak into a test.
const HOUND_ENV: &[&str] = &[
    "HOUND_BIND",
    "HOUND_PORT",
    "HOUND_ETCD",
    "HOUND_TTL",
    "HOUND_NAMESPACE",
    "HOUND_EVENT_NAMESPACE",
    "HOUND_LOG",
    "HOUND_ALLOW_ORIGIN",
    "HOUND_TOKEN",
    "HOUND_ETCD_PASSWORD",
    "HOUND_PING_INTERVAL",
];

/// A `Command` for the hound binary with a clean hound environment.
pub fn hound_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hound"));
    for name in HOUND_ENV {
        command.env_remove(name);
    }
    command.stdin(Stdio::null());
    command
}

/// Runs hound to completion (for flags that exit at once), killing it after 10 s.
pub fn run_hound(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = hound_command();
    command
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_child(command).expect("run hound");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let status = match wait_with_deadline(&mut child, Duration::from_secs(10)) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hound {args:?} did not exit within 10 s");
        }
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// How to start a hound; see [`Hound::builder`].
pub struct HoundBuilder {
    etcd_url: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    port_flag: bool,
    etcd_flag: bool,
    namespace_flags: bool,
    namespace: String,
    event_namespace: String,
    wait_healthy: bool,
}

impl HoundBuilder {
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.envs.push((name.to_owned(), value.into()));
        self
    }

    /// Leaves out `-p 0` (to test `HOUND_PORT` or the default).
    pub fn without_port_flag(mut self) -> Self {
        self.port_flag = false;
        self
    }

    /// Leaves out `--etcd` (to test `HOUND_ETCD`).
    pub fn without_etcd_flag(mut self) -> Self {
        self.etcd_flag = false;
        self
    }

    /// Leaves out `--namespace` and `--event-namespace` (to test their env variables).
    pub fn without_namespace_flags(mut self) -> Self {
        self.namespace_flags = false;
        self
    }

    /// Uses the same namespaces as `other`, so both hounds serve one set of services.
    pub fn namespaces_of(mut self, other: &Hound) -> Self {
        self.namespace = other.namespace.clone();
        self.event_namespace = other.event_namespace.clone();
        self
    }

    /// Sets the namespace the [`Hound`] handle reports (for tests that set it through env).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// Returns from [`HoundBuilder::start`] as soon as hound logs its address, without waiting
    /// for `/healthz` to turn 200.
    pub fn without_waiting_healthy(mut self) -> Self {
        self.wait_healthy = false;
        self
    }

    /// Spawns hound, waits until it logs its listening address and then (unless told not to)
    /// until `/healthz` answers 200, as an orchestrator's readiness probe would: hound may answer
    /// 503 for the moment between listening and its first read of etcd.
    pub fn start(self) -> Hound {
        let mut command = hound_command();
        if self.port_flag {
            command.args(["-p", "0"]);
        }
        if self.etcd_flag {
            command.args(["--etcd", &self.etcd_url]);
        }
        if self.namespace_flags {
            command.args(["--namespace", &self.namespace]);
            command.args(["--event-namespace", &self.event_namespace]);
        }
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_child(command).expect("spawn hound");
        let stderr = child.stderr.take().expect("hound stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (found, listening) = mpsc::channel();
        let collected = Arc::clone(&log);
        thread::Builder::new()
            .name("hound stderr".into())
            .spawn(move || collect_stderr(stderr, collected, found))
            .expect("spawn stderr reader");
        let addr = match listening.recv_timeout(HOUND_START) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                // Give the reader a moment to drain what the process wrote before dying.
                let _ = listening.recv_timeout(Duration::from_millis(200));
                panic!(
                    "hound did not log `listening on http://…` within {HOUND_START:?} \
                     (exit: {status:?}); stderr:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let hound = Hound {
            child,
            addr,
            log,
            namespace: self.namespace,
            event_namespace: self.event_namespace,
        };
        if self.wait_healthy {
            hound.wait_healthy();
        }
        hound
    }
}

/// Reads hound's stderr line by line: reports the listening address once, keeps everything.
fn collect_stderr(stderr: impl Read, log: Arc<Mutex<String>>, found: mpsc::Sender<SocketAddr>) {
    let mut reader = BufReader::new(stderr);
    let mut reported = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        log.lock().unwrap().push_str(&text);
        if !reported && let Some(addr) = parse_listening(&text) {
            reported = true;
            let _ = found.send(addr);
        }
    }
}

/// Finds `listening on http://ADDR` in a log line.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    const MARK: &str = "listening on http://";
    let start = line.find(MARK)? + MARK.len();
    let rest = &line[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, '/' | ',' | ')' | '"' | '\x1b'))
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches('.').parse().ok()
}

/// A running hound, killed on drop.
pub struct Hound {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    namespace: String,
    event_namespace: String,
}

impl Hound {
    /// Starts hound on `etcd` with `-p 0`, unique namespaces and `extra_args`.
    pub fn start(etcd: &Etcd, extra_args: &[&str]) -> Hound {
        Hound::builder(etcd)
            .args(extra_args.iter().copied())
            .start()
    }

    pub fn builder(etcd: &Etcd) -> HoundBuilder {
        Hound::builder_for_url(&etcd.url())
    }

    pub fn builder_for_url(etcd_url: &str) -> HoundBuilder {
        HoundBuilder {
            etcd_url: etcd_url.to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            port_flag: true,
            etcd_flag: true,
            namespace_flags: true,
            namespace: unique("svc"),
            event_namespace: unique("evt"),
            wait_healthy: true,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn event_namespace(&self) -> &str {
        &self.event_namespace
    }

    /// The registration key of `host_port` (e.g. `10.0.0.1:80`, `[::1]:8080`) under `service`.
    pub fn key(&self, service: &str, host_port: &str) -> String {
        format!("{}/{service}/{host_port}", self.namespace)
    }

    /// The prefix every registration of this hound's namespace lives under.
    pub fn prefix(&self) -> String {
        format!("{}/", self.namespace)
    }

    /// Everything hound wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait hound").is_none()
    }

    pub fn signal(&self, signal: libc::c_int) {
        send_signal(self.pid(), signal);
    }

    /// Freezes hound (SIGSTOP): it stops keeping its leases alive.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Sends SIGTERM and waits up to `within` for the exit; returns the status and how long it
    /// took. Panics (after killing hound) if it did not exit in time.
    pub fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        self.stop_with(libc::SIGTERM, within)
    }

    /// Like [`Hound::terminate`] with any signal.
    pub fn stop_with(&mut self, signal: libc::c_int, within: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        self.signal(signal);
        match wait_with_deadline(&mut self.child, within) {
            Some(status) => (status, started.elapsed()),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "hound did not exit within {within:?} of signal {signal}; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// Waits until `/healthz` answers 200: etcd answers and the watches run.
    pub fn wait_healthy(&self) {
        poll_until(
            Duration::from_secs(10),
            "hound /healthz to answer 200",
            || {
                try_request(self.addr, "GET", "/healthz", &[], b"")
                    .map(|r| r.status == 200)
                    .unwrap_or(false)
            },
        );
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        get(self.addr, path)
    }

    /// `POST /etcd/event` with `Content-Type: application/json`.
    pub fn post_event(&self, body: &Value) -> HttpResponse {
        request(
            self.addr,
            "POST",
            "/etcd/event",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// The nodes `/etcd/services/<service>` lists, as (ip, port).
    pub fn nodes(&self, service: &str) -> Vec<(String, u16)> {
        let response = self.get(&format!("/etcd/services/{service}"));
        assert_eq!(
            response.status, 200,
            "GET /etcd/services/{service}: {response:?}"
        );
        nodes_of(&response.json()["services"])
    }

    /// The services `/etcd/services` lists.
    pub fn services(&self) -> Vec<String> {
        let response = self.get("/etcd/services");
        assert_eq!(response.status, 200, "GET /etcd/services: {response:?}");
        response.json()["services"]
            .as_array()
            .unwrap_or_else(|| panic!("`services` is not an array: {response:?}"))
            .iter()
            .map(|s| s.as_str().expect("service name is a string").to_owned())
            .collect()
    }
}

impl Drop for Hound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- stderr of hound on {} (last 40 lines) ---\n{}",
                self.addr,
                tail(&self.stderr(), 40)
            );
        }
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Turns a JSON `services` list of `{"ip","port"}` objects into (ip, port) pairs.
pub fn nodes_of(services: &Value) -> Vec<(String, u16)> {
    services
        .as_array()
        .unwrap_or_else(|| panic!("`services` is not an array: {services}"))
        .iter()
        .map(|node| {
            let ip = node["ip"]
                .as_str()
                .unwrap_or_else(|| panic!("bad node {node}"));
            let port = node["port"]
                .as_u64()
                .unwrap_or_else(|| panic!("bad node {node}"));
            (ip.to_owned(), u16::try_from(port).expect("port fits u16"))
        })
        .collect()
}

/// Owned (ip, port) pairs from borrowed ones, for comparisons.
pub fn pairs(nodes: &[(&str, u16)]) -> Vec<(String, u16)> {
    nodes
        .iter()
        .map(|(ip, port)| ((*ip).to_owned(), *port))
        .collect()
}

/// Asserts that the process exited with `code` and printed exactly one line on stderr.
pub fn assert_usage_error(output: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{what}: expected exit 2, got {:?} (signal {:?}); stderr:\n{stderr}",
        output.status.code(),
        output.status.signal()
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one line on stderr, got:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// An HTTP response as read off the wire.
#[derive(Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {:?} {}", self.status, self.headers, self.text())
    }
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {self:?}"))
    }

    /// Asserts a JSON response: `Content-Type: application/json` and a JSON body.
    pub fn assert_json(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status: {self:?}");
        let content_type = self.header("Content-Type").unwrap_or("");
        assert!(
            content_type.starts_with("application/json"),
            "Content-Type is {content_type:?}, not application/json: {self:?}"
        );
        self.json()
    }

    /// Asserts the contract's error shape: `status`, JSON, `{"error": "<non-empty sentence>"}`.
    pub fn assert_error(&self, status: u16) {
        let body = self.assert_json(status);
        let message = body["error"].as_str().unwrap_or("");
        assert!(
            !message.trim().is_empty(),
            "error body has no `error` sentence: {self:?}"
        );
    }
}

/// `GET path`; panics on an I/O error.
pub fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, "GET", path, &[], b"")
}

/// One HTTP/1.1 request on a fresh connection; panics on an I/O error.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|err| panic!("{method} {path} on {addr}: {err}"))
}

/// One HTTP/1.1 request on a fresh connection, with `Connection: close` and a 10 s timeout.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    try_request_within(addr, method, path, headers, body, Duration::from_secs(10))
}

/// Like [`try_request`] with its own read and write timeout.
pub fn try_request_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    // A server may answer (413, 415) and close before reading the whole body; the answer is what
    // counts, so a failed write is not an error by itself.
    let write_result = stream.write_all(&bytes);
    match read_response(&mut stream) {
        Ok(response) => Ok(response),
        Err(err) => Err(write_result.err().unwrap_or(err)),
    }
}

/// Reads one HTTP response: head, then a body by Content-Length, chunked, or to EOF.
pub fn read_response(stream: &mut impl Read) -> io::Result<HttpResponse> {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without a response",
        ));
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size_text = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {size_line:?}"),
                )
            })?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = String::new();
            reader.read_line(&mut crlf)?;
        }
    } else if let Some(length) = header("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else if status != 204 && status != 304 && !(100..200).contains(&status) {
        reader.read_to_end(&mut body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Percent-encodes a query value (everything but unreserved characters and `:`).
pub fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A query string from pairs, values percent-encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

/// A client WebSocket over a plain TCP stream, so read timeouts can be set on it.
pub type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket to `path_and_query` (e.g. `/etcd/monitor?monitor=a`); a non-101 answer
/// comes back as `Err` with its status and body.
pub fn ws_connect(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, HttpResponse> {
    let mut request = format!("ws://{addr}{path_and_query}")
        .into_client_request()
        .expect("build WebSocket request");
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            tungstenite::http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("set write timeout");
    match tungstenite::client(request, stream) {
        Ok((ws, _response)) => Ok(ws),
        Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => Err(HttpResponse {
            status: response.status().as_u16(),
            headers: response
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: response.body().clone().unwrap_or_default(),
        }),
        Err(HandshakeError::Failure(err)) => {
            panic!("WebSocket handshake to {path_and_query} failed: {err}")
        }
        Err(HandshakeError::Interrupted(_)) => {
            panic!("WebSocket handshake to {path_and_query} timed out")
        }
    }
}

/// Opens `path_and_query` and panics unless the upgrade succeeds.
pub fn ws_open(hound: &Hound, path_and_query: &str) -> Ws {
    ws_connect(hound.addr(), path_and_query, &[])
        .unwrap_or_else(|response| panic!("upgrade of {path_and_query} refused: {response:?}"))
}

/// The `/etcd/register` path for a node.
pub fn register_path(service: &str, ip: &str, port: u16) -> String {
    format!(
        "/etcd/register?{}",
        query(&[
            ("service", service),
            ("ip", ip),
            ("port", &port.to_string())
        ])
    )
}

/// Registers `service` at `ip:port`; panics unless the upgrade succeeds.
pub fn register(hound: &Hound, service: &str, ip: &str, port: u16) -> Ws {
    ws_open(hound, &register_path(service, ip, port))
}

/// Registers `service` at `ip:port` and also monitors `monitored`.
pub fn register_monitoring(
    hound: &Hound,
    service: &str,
    ip: &str,
    port: u16,
    monitored: &[&str],
) -> Ws {
    let path = format!(
        "{}&monitor={}",
        register_path(service, ip, port),
        encode(&monitored.join(","))
    );
    ws_open(hound, &path)
}

/// The `/etcd/monitor` path for `services`.
pub fn monitor_path(services: &[&str]) -> String {
    format!("/etcd/monitor?monitor={}", encode(&services.join(",")))
}

/// Monitors `services`; panics unless the upgrade succeeds.
pub fn monitor(hound: &Hound, services: &[&str]) -> Ws {
    ws_open(hound, &monitor_path(services))
}

/// Monitors `services` and reads the one `SYNC` each gets first, checking it against `nodes_of`.
pub fn monitor_synced(hound: &Hound, services: &[&str]) -> Ws {
    let mut ws = monitor(hound, services);
    let mut seen = Vec::new();
    for _ in services {
        let message = next_json(&mut ws, PROMPT);
        assert_eq!(
            message["body"]["key_event"], "SYNC",
            "expected SYNC first: {message}"
        );
        seen.push(message["namespace"].as_str().unwrap_or("").to_owned());
    }
    seen.sort();
    let mut expected: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(seen, expected, "one SYNC per monitored service");
    ws
}

/// What one read of a socket produced.
#[derive(Debug)]
pub enum Received {
    Json(Value),
    Closed(Option<(u16, String)>),
    TimedOut,
}

/// Reads the next text frame (skipping ping/pong) within `within`.
pub fn receive(ws: &mut Ws, within: Duration) -> Received {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Received::TimedOut;
        }
        ws.get_mut()
            .set_read_timeout(Some(left))
            .expect("set read timeout");
        match ws.read() {
            Ok(Message::Text(text)) => {
                let value = serde_json::from_str(text.as_str())
                    .unwrap_or_else(|err| panic!("text frame is not JSON ({err}): {text}"));
                return Received::Json(value);
            }
            Ok(Message::Binary(bytes)) => panic!("unexpected binary frame: {bytes:?}"),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Ok(Message::Close(frame)) => {
                return Received::Closed(
                    frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                );
            }
            Err(tungstenite::Error::Io(err))
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Received::TimedOut;
            }
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(_),
            ) => return Received::Closed(None),
            Err(tungstenite::Error::Io(_)) => return Received::Closed(None),
            Err(err) => panic!("reading the socket failed: {err}"),
        }
    }
}

/// The next message as JSON; panics on a timeout or a close.
pub fn next_json(ws: &mut Ws, within: Duration) -> Value {
    match receive(ws, within) {
        Received::Json(value) => value,
        Received::Closed(frame) => panic!("socket closed ({frame:?}) while waiting for a message"),
        Received::TimedOut => panic!("no message within {within:?}"),
    }
}

/// Asserts that no message arrives within `within` (keep it short: [`QUIET`]).
pub fn expect_no_message(ws: &mut Ws, within: Duration) {
    match receive(ws, within) {
        Received::TimedOut => {}
        Received::Json(value) => panic!("unexpected message: {value}"),
        Received::Closed(frame) => panic!("socket closed unexpectedly: {frame:?}"),
    }
}

/// Reads until the server's close frame; returns its code and reason (`None` if the connection
/// ended without one). Messages before it are skipped.
pub fn read_close(ws: &mut Ws, within: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive(ws, left) {
            Received::Json(_) => continue,
            Received::Closed(frame) => return frame,
            Received::TimedOut => panic!("socket was not closed within {within:?}"),
        }
    }
}

/// Closes the socket from our side with a normal close frame and waits for the server's echo.
pub fn close(mut ws: Ws) {
    let _ = ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }));
    let deadline = Instant::now() + PROMPT;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = ws.get_mut().set_read_timeout(Some(left));
        match ws.read() {
            Ok(_) => continue,
            Err(_) => break,
        }
    }
}

/// Drops the connection without a close frame (as a crashed client would).
pub fn vanish(ws: Ws) {
    let _ = ws.get_ref().shutdown(Shutdown::Both);
}

/// A service event as the contract shapes it.
pub fn key_event(service: &str, event: &str, nodes: &[(&str, u16)]) -> Value {
    let services: Vec<Value> = nodes
        .iter()
        .map(|(ip, port)| json!({"ip": ip, "port": port}))
        .collect();
    json!({"namespace": service, "body": {"key_event": event, "services": services}})
}

/// A custom event as the contract shapes it.
pub fn custom_event(namespace: &str, event_type: &str, event_body: &str) -> Value {
    json!({"namespace": namespace, "body": {"event_type": event_type, "event_body": event_body}})
}

/// Reads the next message and asserts it equals `expected`.
pub fn expect_message(ws: &mut Ws, expected: &Value) {
    let message = next_json(ws, PROMPT);
    assert_eq!(&message, expected, "unexpected message");
}

/// Reads messages until one has `key_event` == `event` for `service`; panics on anything that
/// is not a `PUT` or `SYNC` of that service on the way, and after `within`.
pub fn wait_for_event(ws: &mut Ws, service: &str, event: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive(ws, left) {
            Received::Json(message) => {
                if message["namespace"] == service && message["body"]["key_event"] == event {
                    return message;
                }
                let kind = message["body"]["key_event"].as_str().unwrap_or("");
                assert!(
                    message["namespace"] == service && (kind == "PUT" || kind == "SYNC"),
                    "unexpected message while waiting for {event} of {service}: {message}"
                );
            }
            Received::Closed(frame) => {
                panic!("socket closed ({frame:?}) while waiting for {event} of {service}")
            }
            Received::TimedOut => panic!("no {event} of {service} within {within:?}"),
        }
    }
}

/// A masked client frame with any opcode and payload, for frames tungstenite will not build
/// (invalid UTF-8 text) or lengths we announce but never send.
pub fn raw_frame(opcode: u8, payload: &[u8], announced_len: Option<u64>) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let len = announced_len.unwrap_or(payload.len() as u64);
    let mut frame = vec![0x80 | (opcode & 0x0f)];
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&len.to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Writes raw bytes under the socket (ignoring a peer that already hung up).
pub fn write_raw(ws: &mut Ws, bytes: &[u8]) {
    let stream = ws.get_mut();
    let _ = stream.write_all(bytes);
    let _ = stream.flush();
}

/// Whether hound's registration of `host_port` under `service` is in etcd.
pub fn registered(etcd: &mut EtcdClient, hound: &Hound, service: &str, host_port: &str) -> bool {
    etcd.get(&hound.key(service, host_port)).is_some()
}

/// Asserts that nothing at all is stored under hound's namespace.
pub fn assert_namespace_empty(etcd: &mut EtcdClient, hound: &Hound, what: &str) {
    let entries = etcd.get_prefix(&hound.prefix());
    assert!(
        entries.is_empty(),
        "{what}: expected nothing under {}, found {entries:?}",
        hound.prefix()
    );
}
