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

/// A loopback port for an etcd member: free a moment ago, never handed out before in this
/// test run, and below the kernel's ephemeral range.
///
/// Tests kill and restart etcd members and run in parallel. A port taken from the ephemeral
/// range (`bind(0)`) can, once its member is killed, be handed by the kernel to another test's
/// hound (`-p 0`) or to an outgoing connection, and a port handed out twice can be squatted by
/// another test's etcd: the dead member would then seem to answer again, as a stranger.
pub fn free_port() -> u16 {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16;
    assert!(
        ephemeral_low > low + 1_000,
        "the ephemeral port range starts at {ephemeral_low}, leaving no room below it"
    );
    let mut next = NEXT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Start at a place that depends on the process, so two test binaries running at once
    // (say, tests and a benchmark) are unlikely to walk the same ports.
    let mut port =
        next.unwrap_or_else(|| low + (std::process::id() % u32::from(ephemeral_low - low)) as u16);
    for _ in low..ephemeral_low {
        let candidate = port;
        port = if port + 1 >= ephemeral_low {
            low
        } else {
            port + 1
        };
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            *next = Some(port);
            return candidate;
        }
    }
    panic!("no free loopback port between {low} and {ephemeral_low}");
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

/// A real etcd member on free loopback ports with its own data dir, killed on drop: a
/// single-member cluster from [`Etcd::start`], or one member of an [`EtcdCluster`].
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    /// The member's name and, for a member of a larger cluster, its `--initial-cluster` list
    /// and token (a single member lists only itself).
    name: String,
    cluster: Option<(String, String)>,
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
        Etcd::start_with(None)
    }

    /// Starts a new single-member cluster on `client_port` (the address of a killed member,
    /// say) and waits until it answers `/health`.
    pub fn start_on(client_port: u16) -> Etcd {
        Etcd::start_with(Some(client_port))
    }

    fn start_with(client_port: Option<u16>) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("hound-test-etcd-")
            .tempdir()
            .expect("create etcd temp dir");
        let mut etcd = Etcd {
            child: None,
            client_port: 0,
            peer_port: 0,
            dir,
            name: "default".to_owned(),
            cluster: None,
        };
        let mut last_log = String::new();
        for _attempt in 0..5 {
            etcd.client_port = client_port.unwrap_or_else(free_port);
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
        self.spawn();
        self.wait_healthy(Duration::from_secs(15))
    }

    /// Spawns etcd on this instance's ports and data dir without waiting for it.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("open etcd log");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(Self::binary());
        let (initial_cluster, token, timing) = match &self.cluster {
            Some((members, token)) => (members.clone(), token.as_str(), ["50", "500"]),
            // A single member need not wait a full second before electing itself. Its token
            // stays etcd's default, so a wiped member comes back with the same cluster id.
            None => (
                format!("{}={peer}", self.name),
                "etcd-cluster",
                ["25", "250"],
            ),
        };
        command
            .arg("--name")
            .arg(&self.name)
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
            .arg(initial_cluster)
            .args(["--initial-cluster-state", "new"])
            .arg("--initial-cluster-token")
            .arg(token)
            .args([
                "--heartbeat-interval",
                timing[0],
                "--election-timeout",
                timing[1],
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = spawn_child(command)
            .unwrap_or_else(|err| panic!("cannot run {:?}: {err}", Self::binary()));
        self.child = Some(child);
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

    /// The member's name (`default` for a single member).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port clients connect to.
    pub fn client_port(&self) -> u16 {
        self.client_port
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

/// A real etcd cluster of several members on loopback, each with its own ports and data dir;
/// every member is killed on drop.
pub struct EtcdCluster {
    members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts `size` members (`m0`, `m1`, …) as one new cluster and waits until each answers
    /// `/health` (which needs an elected leader).
    pub fn start(size: usize) -> EtcdCluster {
        let mut last_logs = String::new();
        for _attempt in 0..3 {
            let token = unique("hound-test-cluster");
            let mut members: Vec<Etcd> = (0..size)
                .map(|n| Etcd {
                    child: None,
                    client_port: free_port(),
                    peer_port: free_port(),
                    dir: tempfile::Builder::new()
                        .prefix("hound-test-etcd-")
                        .tempdir()
                        .expect("create etcd temp dir"),
                    name: format!("m{n}"),
                    cluster: None,
                })
                .collect();
            let mut ports: Vec<u16> = members
                .iter()
                .flat_map(|m| [m.client_port, m.peer_port])
                .collect();
            ports.sort_unstable();
            ports.dedup();
            if ports.len() != 2 * size {
                continue;
            }
            let initial_cluster = members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            for member in &mut members {
                member.cluster = Some((initial_cluster.clone(), token.clone()));
                member.spawn();
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            let healthy = members.iter_mut().all(|member| {
                member.wait_healthy(deadline.saturating_duration_since(Instant::now()))
            });
            if healthy {
                return EtcdCluster { members };
            }
            // A port was probably taken in the meantime: try again with new ones.
            last_logs = members
                .iter()
                .map(|m| format!("--- {} ---\n{}", m.name, tail(&m.log(), 10)))
                .collect::<Vec<_>>()
                .join("\n");
        }
        panic!("the etcd cluster did not come up after 3 attempts; last logs:\n{last_logs}");
    }

    /// Every member's client URL, comma-separated, as `--etcd` takes them.
    pub fn urls(&self) -> String {
        self.members
            .iter()
            .map(Etcd::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn member(&self, index: usize) -> &Etcd {
        &self.members[index]
    }

    pub fn member_mut(&mut self, index: usize) -> &mut Etcd {
        &mut self.members[index]
    }

    /// The index of the member etcd knows by `id`, asking member `via`.
    pub fn index_of(&self, id: u64, via: usize) -> usize {
        let name = self.members[via]
            .client()
            .member_list()
            .into_iter()
            .find(|(member, _)| *member == id)
            .map(|(_, name)| name)
            .unwrap_or_else(|| panic!("no member with id {id:x}"));
        self.members
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("member {name} is not one of ours"))
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
        EtcdClient::connect_with(url, etcd_client::ConnectOptions::new())
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

    /// Runs `ops` as one transaction (one revision; events in the order of `ops`).
    pub fn txn(&mut self, ops: Vec<etcd_client::TxnOp>) {
        let txn = etcd_client::Txn::new().and_then(ops);
        self.call("txn", |mut c| async move { c.txn(txn).await });
    }

    /// The store's current revision.
    pub fn revision(&mut self) -> i64 {
        let options = etcd_client::GetOptions::new().with_count_only();
        let response = self.call(
            "get",
            |mut c| async move { c.get("\0", Some(options)).await },
        );
        response.header().expect("get has a header").revision()
    }

    /// Compacts the history up to `revision` and waits until it is physically gone.
    pub fn compact(&mut self, revision: i64) {
        let options = etcd_client::CompactionOptions::new().with_physical();
        self.call("compact", |mut c| async move {
            c.compact(revision, Some(options)).await
        });
    }

    /// `(id, name)` of every member.
    pub fn member_list(&mut self) -> Vec<(u64, String)> {
        let response = self.call("member list", |mut c| async move { c.member_list().await });
        response
            .members()
            .iter()
            .map(|m| (m.id(), m.name().to_owned()))
            .collect()
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

/// One event a [`PrefixWatch`] saw, or the end of its watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    Put { key: String, revision: i64 },
    Delete { key: String, revision: i64 },
    Broken(String),
}

/// A direct etcd watch on a key prefix, on a thread of its own, that records every event: to
/// see what any watcher of the cluster sees, independently of hound.
pub struct PrefixWatch {
    events: mpsc::Receiver<Watched>,
}

impl PrefixWatch {
    /// Watches `prefix` on the etcd at `url` from `from_revision` (so nothing written since is
    /// missed); returns once etcd has accepted the watch.
    pub fn start(url: &str, prefix: &str, from_revision: i64) -> PrefixWatch {
        let (events, received) = mpsc::channel();
        let (ready, accepted) = mpsc::channel();
        let (url, prefix) = (url.to_owned(), prefix.to_owned());
        thread::Builder::new()
            .name(format!("watch {prefix}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build tokio runtime");
                runtime.block_on(async move {
                    let options = etcd_client::WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(from_revision);
                    let started = async {
                        let mut client = etcd_client::Client::connect([url], None).await?;
                        client.watch(prefix, Some(options)).await
                    };
                    let mut stream = match tokio::time::timeout(EtcdClient::CALL, started).await {
                        Ok(Ok(stream)) => {
                            let _ = ready.send(Ok(()));
                            stream
                        }
                        Ok(Err(err)) => return drop(ready.send(Err(err.to_string()))),
                        Err(_) => return drop(ready.send(Err("timed out".to_owned()))),
                    };
                    loop {
                        let notes = match stream.message().await {
                            Ok(Some(response)) => response
                                .events()
                                .iter()
                                .filter_map(|event| {
                                    let kv = event.kv()?;
                                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                                    let revision = kv.mod_revision();
                                    Some(match event.event_type() {
                                        etcd_client::EventType::Put => {
                                            Watched::Put { key, revision }
                                        }
                                        etcd_client::EventType::Delete => {
                                            Watched::Delete { key, revision }
                                        }
                                    })
                                })
                                .collect(),
                            Ok(None) => vec![Watched::Broken("the stream ended".to_owned())],
                            Err(err) => vec![Watched::Broken(err.to_string())],
                        };
                        let broken = notes.iter().any(|n| matches!(n, Watched::Broken(_)));
                        for note in notes {
                            if events.send(note).is_err() {
                                return;
                            }
                        }
                        if broken {
                            return;
                        }
                    }
                });
            })
            .expect("spawn watch thread");
        match accepted.recv_timeout(EtcdClient::CALL + Duration::from_secs(1)) {
            Ok(Ok(())) => PrefixWatch { events: received },
            Ok(Err(err)) => panic!("cannot watch the prefix: {err}"),
            Err(_) => panic!("the watch thread did not start"),
        }
    }

    /// Everything seen since the last call.
    pub fn seen(&self) -> Vec<Watched> {
        self.events.try_iter().collect()
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
    "HOUND_EMBEDDED",
    "HOUND_ETCD",
    "HOUND_ETCD_CA",
    "HOUND_ETCD_CERT",
    "HOUND_ETCD_KEY",
    "HOUND_ETCD_USER",
    "HOUND_ETCD_PASSWORD",
    "HOUND_TTL",
    "HOUND_NAMESPACE",
    "HOUND_EVENT_NAMESPACE",
    "HOUND_PING_INTERVAL",
    "HOUND_IDLE_TIMEOUT",
    "HOUND_MAX_CONNECTIONS",
    "HOUND_TOKEN",
    "HOUND_ALLOW_ORIGIN",
    "HOUND_LOG",
    "HOUND_LOG_FORMAT",
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
    fd_limit: Option<u64>,
}

impl HoundBuilder {
    /// Starts hound with both the soft and the hard `RLIMIT_NOFILE` at `limit`, so it cannot
    /// raise its descriptor limit.
    pub fn fd_limit(mut self, limit: u64) -> Self {
        self.fd_limit = Some(limit);
        self
    }

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
        if let Some(limit) = self.fd_limit {
            let limit = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            // SAFETY: the closure only calls setrlimit(2), which is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
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
            fd_limit: None,
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

    /// `GET /metrics`, parsed strictly (see [`Metrics::parse`]).
    pub fn metrics(&self) -> Metrics {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "GET /metrics: {response:?}");
        Metrics::parse(&response.text())
    }

    /// One sample of `GET /metrics`, e.g. `hound_sockets{kind="monitor"}`; 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics().value(series).unwrap_or(0.0)
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

/// A Prometheus text exposition, checked line by line: `# HELP name text`, `# TYPE name kind`
/// (before the family's samples, once each), and samples `name{label="value",…} value` with
/// no timestamp, no duplicate series and no sample outside a declared family.
#[derive(Debug, Clone)]
pub struct Metrics {
    samples: std::collections::BTreeMap<String, f64>,
    text: String,
}

impl Metrics {
    /// Parses `text`; panics naming the first line that breaks the grammar.
    pub fn parse(text: &str) -> Metrics {
        Metrics::try_parse(text).unwrap_or_else(|why| panic!("{why}\n{text}"))
    }

    /// Parses `text`, or says which line breaks the grammar and how.
    pub fn try_parse(text: &str) -> Result<Metrics, String> {
        use std::collections::{BTreeMap, BTreeSet};
        let mut samples = BTreeMap::new();
        let mut helped = BTreeSet::new();
        let mut typed: BTreeMap<String, String> = BTreeMap::new();
        if !text.ends_with('\n') {
            return Err("the exposition does not end with a newline".to_owned());
        }
        for (n, line) in text.lines().enumerate() {
            let bad = |why: &str| format!("/metrics line {}: {why}: {line:?}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest
                    .split_once(' ')
                    .ok_or_else(|| bad("HELP without text"))?;
                if !is_metric_name(name) || help.trim().is_empty() {
                    return Err(bad("bad HELP line"));
                }
                if !helped.insert(name.to_owned()) {
                    return Err(bad("second HELP for one family"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| bad("TYPE without kind"))?;
                if !is_metric_name(name)
                    || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                {
                    return Err(bad("bad TYPE line"));
                }
                if typed.insert(name.to_owned(), kind.to_owned()).is_some() {
                    return Err(bad("second TYPE for one family"));
                }
                continue;
            }
            if line.starts_with('#') {
                return Err(bad("a comment that is neither HELP nor TYPE"));
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().map_err(|_| bad("value is not a number"))?,
            };
            let name = series.split('{').next().unwrap_or("");
            if !is_metric_name(name) {
                return Err(bad("bad metric name"));
            }
            if let Some(labels) = series[name.len()..].strip_prefix('{') {
                let labels = labels
                    .strip_suffix('}')
                    .ok_or_else(|| bad("unclosed labels"))?;
                if !is_label_list(labels) {
                    return Err(bad("bad label list"));
                }
            } else if series.len() != name.len() {
                return Err(bad("junk after the metric name"));
            }
            // Histogram and summary samples carry a suffix their family name lacks.
            let family = ["_count", "_sum", "_bucket"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix).filter(|base| {
                        typed
                            .get(*base)
                            .is_some_and(|kind| kind == "histogram" || kind == "summary")
                    })
                })
                .unwrap_or(name);
            match typed.get(family).map(String::as_str) {
                None => return Err(bad("sample before its TYPE line")),
                Some("counter") if value.is_nan() || value < 0.0 => {
                    return Err(bad("a negative counter"));
                }
                Some(_) => {}
            }
            if samples.insert(series.to_owned(), value).is_some() {
                return Err(bad("the same series twice"));
            }
        }
        Ok(Metrics {
            samples,
            text: text.to_owned(),
        })
    }

    /// The value of `series` exactly as written, e.g. `hound_sockets{kind="monitor"}`.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The value of `series`, which must be present.
    pub fn get(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", self.text))
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name="value",name="value"` with Prometheus escapes (`\\`, `\"`, `\n`) in values.
fn is_label_list(mut rest: &str) -> bool {
    let mut names = std::collections::BTreeSet::new();
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once("=\"") else {
            return false;
        };
        let mut chars = name.chars();
        let name_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok || !names.insert(name) {
            return false;
        }
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, '\\' | '"' | 'n') => escaped = false,
                (true, _) => return false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, '\n') => return false,
                (false, _) => {}
            }
        }
        let Some(end) = end else { return false };
        rest = &after[end + 1..];
        if let Some(next) = rest.strip_prefix(',') {
            rest = next;
            if rest.is_empty() {
                return false;
            }
        } else if !rest.is_empty() {
            return false;
        }
    }
    true
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
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    ws_handshake(stream, addr, path_and_query, headers)
}

/// Like [`ws_connect`] over a connection whose receive buffer is fixed at `rcvbuf` bytes (the
/// kernel doubles it) before connecting, so a client that stops reading backs up quickly.
pub fn ws_connect_small_buffer(
    addr: SocketAddr,
    path_and_query: &str,
    rcvbuf: usize,
) -> Result<Ws, HttpResponse> {
    let stream = connect_with_rcvbuf(addr, rcvbuf).expect("connect with a small buffer");
    ws_handshake(stream, addr, path_and_query, &[])
}

/// A TCP connection to the IPv4 `addr` whose `SO_RCVBUF` was set before the handshake (which
/// is when the window scale is agreed), and so never grows by autotuning.
pub fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("connect_with_rcvbuf supports IPv4 only, not {addr}");
    };
    // SAFETY: socket(2) has no memory-safety preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns; the stream closes it on every path.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let size = libc::c_int::try_from(rcvbuf).expect("buffer size fits a c_int");
    // SAFETY: `size` is a valid c_int for the duration of the call and its length is given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in for the duration of the call and its length is given.
    let rc = unsafe {
        libc::connect(
            fd,
            (&raw const sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// The client side of the WebSocket handshake over `stream`.
fn ws_handshake(
    stream: TcpStream,
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

// ---------------------------------------------------------------------------------------------
// Secure etcd (helpers for `secure_etcd.rs`: TLS and user/password clients, enabling auth)
// ---------------------------------------------------------------------------------------------

impl EtcdClient {
    /// Like [`EtcdClient::connect`], with TLS material or credentials in `options`. With a user
    /// this authenticates at once, so etcd must be up and accept the password.
    pub fn connect_with(url: &str, options: etcd_client::ConnectOptions) -> EtcdClient {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build tokio runtime");
        let client = runtime
            .block_on(async {
                tokio::time::timeout(
                    Self::CALL,
                    etcd_client::Client::connect([url.to_owned()], Some(options)),
                )
                .await
            })
            .unwrap_or_else(|_| panic!("connecting to etcd at {url} timed out"))
            .unwrap_or_else(|err| panic!("cannot connect to etcd at {url}: {err}"));
        EtcdClient { runtime, client }
    }

    /// etcd's version, or why it did not answer within `within` (for polls that must not panic).
    pub fn try_version(&mut self, within: Duration) -> Result<String, String> {
        let mut client = self.client.clone();
        match self
            .runtime
            .block_on(async { tokio::time::timeout(within, client.status()).await })
        {
            Ok(Ok(status)) => Ok(status.version().to_owned()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {within:?}")),
        }
    }

    /// Creates user `root` with `password` and the root role, then turns authentication on:
    /// from then on every client must log in.
    pub fn enable_auth(&mut self, password: &str) {
        let password = password.to_owned();
        self.call("role add", |mut c| async move { c.role_add("root").await });
        self.call("user add", |mut c| async move {
            c.user_add("root", password, None).await
        });
        self.call("user grant-role", |mut c| async move {
            c.user_grant_role("root", "root").await
        });
        self.call("auth enable", |mut c| async move { c.auth_enable().await });
    }
}

// =============================================================================================
// BACKENDS (appended for `scenarios.rs`; self-contained, nothing above uses it)
//
// One scenario runs against both stores: `Backend::Etcd` (a per-test etcd and a hound on it)
// and `Backend::Embedded` (`hound --embedded -p 0`, no etcd). Both hand back a `BackendHound`,
// which derefs to `Hound`, so every helper taking `&Hound` takes it.
// =============================================================================================

/// The store a hound runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A per-test etcd and `hound --etcd URL` on it.
    Etcd,
    /// `hound --embedded`: registrations live in the hound process; no etcd at all.
    Embedded,
}

impl Backend {
    /// Starts a hound on this backend with `-p 0` and `extra_args`, and waits until it is
    /// healthy. On etcd it gets its own etcd and unique namespaces, as [`Hound::start`] does.
    pub fn start(self, extra_args: &[&str]) -> BackendHound {
        match self {
            Backend::Etcd => {
                let etcd = Etcd::start();
                let hound = Hound::builder(&etcd)
                    // Cleared already (HOUND_ENV); set anyway, so `--etcd` is never refused.
                    .env("HOUND_EMBEDDED", "0")
                    .args(extra_args.iter().copied())
                    .start();
                BackendHound {
                    hound,
                    etcd: Some(etcd),
                    backend: self,
                }
            }
            Backend::Embedded => {
                let hound = Hound::builder_for_url("")
                    .without_etcd_flag()
                    .without_namespace_flags()
                    .namespace("service")
                    .arg("--embedded")
                    .args(extra_args.iter().copied())
                    .start();
                BackendHound {
                    hound,
                    etcd: None,
                    backend: self,
                }
            }
        }
    }
}

/// A hound started by [`Backend::start`], with the etcd it uses (if any); both killed on drop.
pub struct BackendHound {
    // Fields drop in order: the hound goes before its etcd.
    hound: Hound,
    etcd: Option<Etcd>,
    backend: Backend,
}

impl BackendHound {
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The etcd behind this hound; `None` on the embedded backend.
    pub fn etcd(&self) -> Option<&Etcd> {
        self.etcd.as_ref()
    }

    /// A second hound serving the same registrations and events (same etcd, same namespaces),
    /// started with `extra_args`. `None` on the embedded backend: its store lives inside this
    /// one process, so no other hound can share it.
    pub fn peer(&self, extra_args: &[&str]) -> Option<Hound> {
        let etcd = self.etcd.as_ref()?;
        Some(
            Hound::builder(etcd)
                .namespaces_of(&self.hound)
                .env("HOUND_EMBEDDED", "0")
                .args(extra_args.iter().copied())
                .start(),
        )
    }
}

impl std::ops::Deref for BackendHound {
    type Target = Hound;

    fn deref(&self) -> &Hound {
        &self.hound
    }
}

impl std::ops::DerefMut for BackendHound {
    fn deref_mut(&mut self) -> &mut Hound {
        &mut self.hound
    }
}

// ---- end of BACKENDS --------------------------------------------------------------------------
