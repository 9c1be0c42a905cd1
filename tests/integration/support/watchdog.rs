//! Time limits, the per-test watchdog, polling with deadlines, and unique names and ports.

use std::net::TcpListener;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a test may run before the watchdog aborts the whole test binary.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);
/// How long hound may take to log its listening address.
pub const HOUND_START: Duration = Duration::from_secs(10);
/// The default wait for something that should happen promptly.
pub const PROMPT: Duration = Duration::from_secs(5);
/// The bounded wait of "nothing more arrives" checks.
pub const QUIET: Duration = Duration::from_millis(300);

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
