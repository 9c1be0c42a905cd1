//! What the soak's threads share: the hounds, every socket ever opened, the registrations the
//! churn made, the faults injected and what was measured; and the hounds' start-up.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::check::{CleanClose, FaultWindow, Violation};
use crate::clients::Sock;
use crate::netns::Topology;
use crate::support::{Hound, tail, try_request_within};

/// The lease TTL hounds run with: short, so that expiries happen within a run.
pub const TTL: Duration = Duration::from_secs(3);

/// One of the three hounds, restarted under the same slot after a kill.
pub struct Slot {
    pub hound: Option<Hound>,
    /// Counts the runs of this hound; a socket belongs to one.
    pub incarnation: usize,
    /// Whether the churn may use it (it is running and healthy, or merely cut off).
    pub up: bool,
    /// Frozen with SIGSTOP: the churn leaves it alone.
    pub stopped: bool,
    /// Its threads when it first ran idle, with no socket yet.
    pub baseline_threads: usize,
}

/// A registration the churn made: which socket holds it now.
pub struct Node {
    pub holder: Option<usize>,
    /// A takeover or the first registration is under way: not to be closed meanwhile.
    pub busy: bool,
}

#[derive(Default)]
pub struct World {
    pub slots: Vec<Slot>,
    pub socks: Vec<Arc<Sock>>,
    /// The sockets not known to have ended, by id: the churn picks from these, and a long
    /// run opens thousands.
    pub live: BTreeMap<usize, Arc<Sock>>,
    /// By `service/node`.
    pub nodes: BTreeMap<String, Node>,
    pub closes: Vec<CleanClose>,
    pub faults: Vec<FaultWindow>,
    /// Each compaction: when it was asked for, and up to which revision.
    pub compactions: Vec<(Instant, i64)>,
    pub violations: Vec<Violation>,
    /// Recovery times in seconds, by what recovered after which fault.
    pub recoveries: BTreeMap<String, Vec<f64>>,
    /// Registrations refused (503 and the like): a known defect can leave one behind.
    pub refused: BTreeSet<String>,
    pub pending: usize,
    pub next_id: usize,
    pub counts: BTreeMap<String, usize>,
}

impl World {
    pub fn count(&mut self, what: &str) {
        *self.counts.entry(what.to_owned()).or_default() += 1;
    }

    pub fn id(&mut self) -> usize {
        self.next_id += 1;
        self.next_id
    }

    /// The hounds the churn may use: (index, address, incarnation).
    pub fn usable(&self) -> Vec<(usize, SocketAddr, usize)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.up && !s.stopped)
            .filter_map(|(h, s)| Some((h, s.hound.as_ref()?.addr(), s.incarnation)))
            .collect()
    }

    pub fn usable_addrs(&self) -> Vec<SocketAddr> {
        self.usable().into_iter().map(|(_, addr, _)| addr).collect()
    }

    pub fn add(&mut self, sock: Arc<Sock>) {
        self.live.insert(sock.id, Arc::clone(&sock));
        self.socks.push(sock);
    }

    /// Forgets the sockets that ended.
    pub fn prune(&mut self) {
        self.live.retain(|_, s| s.is_live());
    }

    /// Live register sockets that hold their node and are not being taken over.
    pub fn holders(&self) -> Vec<Arc<Sock>> {
        self.live
            .values()
            .filter(|s| s.is_live())
            .filter(|s| {
                let (service, node) = s.node().unwrap_or_default();
                self.nodes
                    .get(&format!("{service}/{node}"))
                    .is_some_and(|n| !n.busy && n.holder == Some(s.id))
            })
            .cloned()
            .collect()
    }

    pub fn live_monitors(&self) -> Vec<Arc<Sock>> {
        self.live
            .values()
            .filter(|s| s.node().is_none() && s.is_live())
            .cloned()
            .collect()
    }
}

/// Everything the soak's threads share.
pub struct Shared {
    pub world: Mutex<World>,
    pub start: Instant,
    pub stop: AtomicBool,
    pub namespace: String,
    pub event_namespace: String,
    /// The `--etcd` list of each hound (through its namespace's links, or loopback).
    pub hound_etcd: Vec<String>,
    /// The etcd members' loopback URLs, for the checker's own calls.
    pub etcd_urls: Vec<String>,
}

impl Shared {
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Seconds since the soak started, for log lines.
    pub fn t(&self) -> String {
        format!("t={:.3}s", self.start.elapsed().as_secs_f64())
    }

    pub fn log(&self, line: &str) {
        println!("soak: {} {line}", self.t());
    }

    /// With `SOAK_LOG_DIR` set, keeps what hound `h` wrote to stderr in
    /// `<dir>/hound<h>.<incarnation>.log`, for replaying a seed's violation against hound's own
    /// account of it (its log lines carry wall-clock times; the soak prints its start's).
    pub fn keep_log(&self, h: usize, hound: &Hound) {
        let Some(dir) = std::env::var_os("SOAK_LOG_DIR") else {
            return;
        };
        let incarnation = self.world().slots[h].incarnation;
        let path = std::path::Path::new(&dir).join(format!("hound{h}.{incarnation}.log"));
        if let Err(err) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, hound.stderr()))
        {
            self.log(&format!(
                "could not keep hound {h}'s log in {}: {err}",
                path.display()
            ));
        }
    }

    pub fn violation(&self, check: &'static str, subject: String, detail: String) {
        self.log(&format!("VIOLATION ({check}) {subject}: {detail}"));
        self.world().violations.push(Violation {
            check,
            subject,
            detail,
        });
    }

    pub fn recovered(&self, what: &str, took: Duration) {
        self.log(&format!("recovered: {what} in {:.2} s", took.as_secs_f64()));
        self.world()
            .recoveries
            .entry(what.to_owned())
            .or_default()
            .push(took.as_secs_f64());
    }

    /// Starts hound `h` (not yet waiting for it to be healthy).
    pub fn start_hound(&self, h: usize, topology: Option<&Topology>) -> Result<Hound, String> {
        let mut builder = Hound::builder_for_url(&self.hound_etcd[h])
            .without_namespace_flags()
            .namespace(&self.namespace)
            .args([
                "--namespace",
                &self.namespace,
                "--event-namespace",
                &self.event_namespace,
                "--ttl",
                &TTL.as_secs().to_string(),
            ])
            .without_waiting_healthy();
        if let Ok(level) = std::env::var("SOAK_HOUND_LOG") {
            builder = builder.args(["--log-level".to_owned(), level]);
        }
        if let Some(topology) = topology {
            builder = builder
                .run_under(topology.wrapper(h))
                .args(["-b".to_owned(), topology.bind_addr(h).to_string()]);
        }
        std::panic::catch_unwind(AssertUnwindSafe(|| builder.start())).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "hound did not start".to_owned())
        })
    }

    /// Starts hound `h`, waits until it is healthy, notes its threads and hands it to the
    /// churn. Returns how long it took to become healthy.
    pub fn bring_up(&self, h: usize, topology: Option<&Topology>) -> Result<Duration, String> {
        let started = Instant::now();
        let hound = self.start_hound(h, topology)?;
        let addr = hound.addr();
        let pid = hound.pid();
        {
            let mut world = self.world();
            let slot = &mut world.slots[h];
            slot.hound = Some(hound);
            slot.incarnation += 1;
            slot.stopped = false;
        }
        if !wait_healthy(addr, Duration::from_secs(20)) {
            let log = self.world().slots[h]
                .hound
                .as_ref()
                .map(|h| tail(&h.stderr(), 20))
                .unwrap_or_default();
            return Err(format!("hound {h} not healthy within 20 s; log:\n{log}"));
        }
        let healthy = started.elapsed();
        if self.world().slots[h].baseline_threads == 0 {
            let threads = idle_threads(pid);
            self.world().slots[h].baseline_threads = threads;
        }
        self.world().slots[h].up = true;
        Ok(healthy)
    }

    /// Sleeps until `deadline`, or less once the soak is stopping.
    pub fn sleep_until(&self, deadline: Instant) {
        while !self.stopping() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

/// Whether hound at `addr` answers `/healthz` with 200.
pub fn healthy(addr: SocketAddr) -> bool {
    try_request_within(addr, "GET", "/healthz", &[], b"", Duration::from_secs(1))
        .map(|r| r.status == 200)
        .unwrap_or(false)
}

/// Polls `/healthz` until it answers 200; false after `within`.
pub fn wait_healthy(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if healthy(addr) {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The threads of an idle hound: tiny_http keeps the thread of a finished connection (our
/// `/healthz` polls) for 5 s, so wait until the count has held still for longer than that.
/// Measured once per hound: a restarted one runs the same threads.
fn idle_threads(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut count = thread_count(pid);
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(5500) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let now = thread_count(pid);
        if now != count {
            count = now;
            since = Instant::now();
        }
    }
    count
}

/// The number of threads of process `pid` (0 if it is gone).
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)
}
