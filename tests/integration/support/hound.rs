//! hound: the builder, the running process, its REST helpers, and node-list helpers.

use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    Etcd, HOUND_START, HttpResponse, Metrics, get, poll_until, request, send_signal, spawn_child,
    try_request, unique, wait_with_deadline,
};

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
    "HOUND_ELECTION_NAMESPACE",
    "HOUND_PING_INTERVAL",
    "HOUND_IDLE_TIMEOUT",
    "HOUND_MAX_CONNECTIONS",
    "HOUND_TOKEN",
    "HOUND_ALLOW_ORIGIN",
    "HOUND_LOG",
    "HOUND_LOG_FORMAT",
    "HOUND_DNS_PORT",
    "HOUND_DNS_DOMAIN",
    "HOUND_TEST_HOLD_PUT_BACK",
];

/// A `Command` for the hound binary with a clean hound environment.
pub fn hound_command() -> Command {
    hound_command_under(&[])
}

/// Like [`hound_command`], run by `wrapper` (a command that ends by running its arguments, such
/// as `ip netns exec NAME`) when that is not empty. `$HOUND_TEST_HOUND` names another hound
/// binary than this build's (to run the tests against another build).
pub fn hound_command_under(wrapper: &[String]) -> Command {
    let hound =
        std::env::var_os("HOUND_TEST_HOUND").unwrap_or_else(|| env!("CARGO_BIN_EXE_hound").into());
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(&hound);
            command
        }
        None => Command::new(&hound),
    };
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
    wrapper: Vec<String>,
}

impl HoundBuilder {
    /// Starts hound with both the soft and the hard `RLIMIT_NOFILE` at `limit`, so it cannot
    /// raise its descriptor limit.
    pub fn fd_limit(mut self, limit: u64) -> Self {
        self.fd_limit = Some(limit);
        self
    }

    /// Runs hound through `wrapper` (see [`hound_command_under`]); its pid is still hound's
    /// as long as the wrapper execs its command.
    pub fn run_under<S: Into<String>>(mut self, wrapper: impl IntoIterator<Item = S>) -> Self {
        self.wrapper = wrapper.into_iter().map(Into::into).collect();
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
        let mut command = hound_command_under(&self.wrapper);
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
            wrapper: Vec::new(),
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

/// Asserts that hound still answers promptly.
pub fn assert_responsive(hound: &mut Hound) {
    assert!(
        hound.is_running(),
        "hound died; stderr:\n{}",
        hound.stderr()
    );
    let limit = Duration::from_secs(2);
    let started = Instant::now();
    let response = super::http::try_request_within(
        hound.addr(),
        "GET",
        "/version",
        &[],
        b"",
        limit,
    )
    .unwrap_or_else(|err| {
        panic!(
            "GET /version got no answer within {limit:?} ({err}): hound is stalled after {:?}",
            started.elapsed()
        )
    });
    assert_eq!(response.status, 200, "{response:?}");
}
