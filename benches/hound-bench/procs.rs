//! The processes under test: a private etcd and hound instances on free loopback ports, the
//! descriptor limit, and what `/proc` says about a process.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind a free loopback port")
}

/// Spawns `command` so that it dies with the bench (`PR_SET_PDEATHSIG`), however the bench ends.
///
/// The death signal fires when the *thread* that forked the child exits, so only the main thread
/// (which lives as long as the process) calls this.
pub fn spawn(mut command: Command) -> io::Result<Child> {
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// The descriptor limits before and after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy)]
pub struct FdLimit {
    pub soft_before: u64,
    pub hard_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises `RLIMIT_NOFILE`: the soft limit to the hard one, and both to `wanted` if the hard
/// limit is lower and the process may raise it (root). Children (etcd, hound) inherit it.
pub fn raise_fd_limit(wanted: u64) -> FdLimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return FdLimit {
            soft_before: 0,
            hard_before: 0,
            soft: 0,
            hard: 0,
        };
    }
    let (soft_before, hard_before) = (limit.rlim_cur, limit.rlim_max);
    if limit.rlim_max < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted,
        };
        // SAFETY: a valid rlimit; raising the hard limit simply fails without privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: a valid rlimit; the soft limit may always rise to the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            limit.rlim_cur = soft_before;
        }
    }
    FdLimit {
        soft_before,
        hard_before,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    }
}

/// What `/proc/<pid>/status` says about memory and threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStatus {
    pub rss_bytes: u64,
    pub threads: u64,
}

pub fn proc_status(pid: u32) -> io::Result<ProcStatus> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut status = ProcStatus::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("VmRSS:") => {
                status.rss_bytes = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0) * 1024;
            }
            Some("Threads:") => {
                status.threads = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
            _ => {}
        }
    }
    Ok(status)
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Connections the kernel dropped because a listening socket's accept queue was full
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`), counted for the whole machine.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if names.starts_with("TcpExt:") {
            let at = names
                .split_whitespace()
                .position(|name| name == "ListenOverflows")?;
            return values.split_whitespace().nth(at)?.parse().ok();
        }
    }
    None
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no memory-safety preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// One HTTP/1.1 request on a fresh connection with `Connection: close`: status and body.
pub fn http_once(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut body = Vec::new();
    let status = crate::http::read_response(&mut reader, &mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------------------------------

/// A single-member etcd on free loopback ports with a private data dir, killed on drop.
pub struct Etcd {
    child: Child,
    client_port: u16,
    /// The data dir, removed on drop (after etcd is killed: fields drop after `drop`).
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// `$HOUND_TEST_ETCD`, else `/usr/bin/etcd` (Debian's etcd-server), else `etcd` on PATH.
    pub fn binary() -> PathBuf {
        if let Some(path) = std::env::var_os("HOUND_TEST_ETCD") {
            return PathBuf::from(path);
        }
        let debian = Path::new("/usr/bin/etcd");
        if debian.exists() {
            debian.to_path_buf()
        } else {
            PathBuf::from("etcd")
        }
    }

    /// The first line of `etcd --version`.
    pub fn version() -> String {
        Command::new(Self::binary())
            .arg("--version")
            .output()
            .ok()
            .and_then(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "etcd (version unknown)".into())
    }

    /// Where the data dir goes: tmpfs (`/dev/shm`) when there is one, so the floor the
    /// baselines measure is etcd itself and not the disk's fsync.
    pub fn data_parent() -> PathBuf {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    }

    /// Starts etcd and waits until `/health` says true; tries new ports up to five times.
    pub fn start() -> Result<Etcd, String> {
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("hound-bench-etcd-")
                .tempdir_in(Self::data_parent())
                .map_err(|err| format!("cannot create the etcd data dir: {err}"))?;
            let (client_port, peer_port) = (free_port(), free_port());
            if client_port == peer_port {
                continue;
            }
            let log_path = dir.path().join("etcd.log");
            let log = std::fs::File::create(&log_path)
                .map_err(|err| format!("cannot create {}: {err}", log_path.display()))?;
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let mut command = Command::new(Self::binary());
            command
                .args(["--name", "bench", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("bench={peer}")])
                .args(["--heartbeat-interval", "25", "--election-timeout", "250"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|err| err.to_string())?)
                .stderr(log);
            let child = spawn(command)
                .map_err(|err| format!("cannot run {}: {err}", Self::binary().display()))?;
            let mut etcd = Etcd {
                child,
                client_port,
                _dir: dir,
            };
            if etcd.wait_healthy(Duration::from_secs(15)) {
                return Ok(etcd);
            }
            last_log = tail(&std::fs::read_to_string(&log_path).unwrap_or_default(), 10);
        }
        Err(format!(
            "etcd did not come up after 5 attempts; log:\n{last_log}"
        ))
    }

    fn wait_healthy(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if let Ok((200, body)) =
                http_once(self.addr(), "GET", "/health", "", Duration::from_secs(1))
                && body.contains("true")
            {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.client_port).into()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// hound
// ---------------------------------------------------------------------------------------------

/// The hound under test: the release binary Cargo built for this bench.
pub fn hound_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hound"))
}

/// The environment variables hound reads; cleared so the caller's shell cannot change the run.
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
    "HOUND_ETCD_USER",
    "HOUND_ETCD_CA",
    "HOUND_ETCD_CERT",
    "HOUND_ETCD_KEY",
    "HOUND_PING_INTERVAL",
    "HOUND_IDLE_TIMEOUT",
    "HOUND_MAX_CONNECTIONS",
    "HOUND_DNS_PORT",
    "HOUND_DNS_DOMAIN",
];

/// A running hound, stopped on drop.
pub struct Hound {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Hound {
    /// Starts hound on `port` (0: any) against `etcd_url` and waits for `/healthz` 200.
    /// Returns it with the time from spawn to the first healthy answer.
    pub fn start(etcd_url: &str, namespace: &str, port: u16) -> Result<(Hound, Duration), String> {
        Hound::start_with(etcd_url, namespace, port, &[])
    }

    /// Like [`Hound::start`], with `extra` flags.
    pub fn start_with(
        etcd_url: &str,
        namespace: &str,
        port: u16,
        extra: &[&str],
    ) -> Result<(Hound, Duration), String> {
        let mut command = Command::new(hound_binary());
        for name in HOUND_ENV {
            command.env_remove(name);
        }
        command
            .args(["-p", &port.to_string(), "--etcd", etcd_url])
            .args(["--namespace", namespace])
            .args(["--event-namespace", &format!("{namespace}-events")])
            .args(["--log-level", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = spawn(command).map_err(|err| format!("cannot run hound: {err}"))?;
        let stderr = child.stderr.take().expect("hound stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (found, listening) = mpsc::channel();
        let collected = log.clone();
        thread::Builder::new()
            .name("hound stderr".into())
            .spawn(move || collect_stderr(stderr, collected, found))
            .map_err(|err| err.to_string())?;
        let addr = if port != 0 {
            (Ipv4Addr::LOCALHOST, port).into()
        } else {
            match listening.recv_timeout(Duration::from_secs(10)) {
                Ok(addr) => addr,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "hound did not log its address within 10 s; stderr:\n{}",
                        tail(&log.lock().unwrap(), 20)
                    ));
                }
            }
        };
        let mut hound = Hound { child, addr, log };
        // Poll /healthz as an orchestrator's readiness probe would, every millisecond.
        let deadline = started + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = http_once(addr, "GET", "/healthz", "", Duration::from_secs(3)) {
                return Ok((hound, started.elapsed()));
            }
            if Instant::now() >= deadline || !hound.is_running() {
                return Err(format!(
                    "hound on {addr} was not healthy within 10 s; stderr:\n{}",
                    tail(&hound.stderr(), 20)
                ));
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn status(&self) -> ProcStatus {
        proc_status(self.pid()).unwrap_or_default()
    }

    /// Waits (bounded) until the thread count is at most `threads`: sockets that were closed
    /// have finished their threads.
    pub fn wait_threads_at_most(&self, threads: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.status().threads <= threads {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGTERM, then SIGKILL if it has not exited within 6 s.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hound {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Keeps hound's stderr; reports the `listening on http://ADDR` address once.
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
        {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            // Keep the last ~1 MB: the churn logs two lines per registration.
            if log.len() > 1 << 20 {
                let cut = log.len() - (1 << 19);
                let cut = (cut..log.len())
                    .find(|&i| log.is_char_boundary(i))
                    .unwrap_or(0);
                log.drain(..cut);
            }
            log.push_str(&text);
        }
        if !reported && let Some(addr) = parse_listening(&text) {
            reported = true;
            let _ = found.send(addr);
        }
    }
}

fn parse_listening(line: &str) -> Option<SocketAddr> {
    const MARK: &str = "listening on http://";
    let start = line.find(MARK)? + MARK.len();
    let rest = &line[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, '/' | ',' | ')'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The warnings and errors hound logged (lines with `[WARN]` or `[ERROR]`), grouped by their
/// text with numbers masked: (count, example) for each kind, most frequent first.
pub fn log_problems(log: &str) -> Vec<(usize, String)> {
    let mut kinds: Vec<(String, usize, String)> = Vec::new();
    for line in log.lines() {
        if !(line.contains("[WARN]") || line.contains("[ERROR]")) {
            continue;
        }
        // Drop the `HH:MM:SS` stamp, mask every run of digits.
        let text = line.split_once(' ').map_or(line, |(_, rest)| rest);
        let mut kind = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                if !kind.ends_with('#') {
                    kind.push('#');
                }
            } else {
                kind.push(c);
            }
        }
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, count, _)) => *count += 1,
            None => kinds.push((kind, 1, text.to_owned())),
        }
    }
    kinds.sort_by_key(|kind| std::cmp::Reverse(kind.1));
    kinds
        .into_iter()
        .map(|(_, count, example)| (count, example))
        .collect()
}
