//! Counters for `GET /metrics`, in the Prometheus text exposition format.
//!
//! One process-wide set of atomics: every thread bumps them without locks or plumbing, and the
//! scrape reads them together with the gauges the hub knows.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::describe::Status;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Messages queued for sockets (one per recipient).
pub static MESSAGES_SENT: Counter = Counter::new();
/// Sockets closed with 1013 because their queue was full.
pub static SLOW_SOCKETS_CLOSED: Counter = Counter::new();
/// Times etcd answered again after it had stopped answering.
pub static ETCD_RECONNECTS: Counter = Counter::new();
/// Re-reads of the service namespace after a compaction or a replaced cluster.
pub static WATCH_RESYNCS: Counter = Counter::new();
/// Registrations written again with a new lease after etcd lost theirs.
pub static LEASE_REGRANTS: Counter = Counter::new();
/// Events refused with 429 because the event budget was spent.
pub static EVENTS_REFUSED: Counter = Counter::new();
/// Writes of a node's value because its status changed (a change that shows nothing new writes
/// nothing and is not counted).
pub static STATUS_WRITES: Counter = Counter::new();
/// Registrations this hound keeps alive (a gauge kept by the etcd thread).
pub static REGISTRATIONS: AtomicU64 = AtomicU64::new(0);

/// Check runs by what they found: passing, warning, critical.
static CHECK_RUNS: [Counter; 3] = [Counter::new(), Counter::new(), Counter::new()];

/// Counts one check run.
pub fn count_check(found: Status) {
    let slot = match found {
        Status::Passing => 0,
        Status::Warning => 1,
        // A check never finds draining; counted as not passing all the same.
        Status::Critical | Status::Draining => 2,
    };
    CHECK_RUNS[slot].add(1);
}

/// Nodes in hound's mirror by status, as the hub counts them at scrape time (a node of two
/// services counts in each).
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeGauges {
    pub passing: u64,
    pub warning: u64,
    pub critical: u64,
    pub draining: u64,
}

/// HTTP answers by (route, status).
static REQUESTS: Mutex<BTreeMap<(&'static str, u16), u64>> = Mutex::new(BTreeMap::new());

/// Counts one HTTP answer.
pub fn count_request(route: &'static str, status: u16) {
    let mut requests = REQUESTS.lock().unwrap_or_else(|p| p.into_inner());
    *requests.entry((route, status)).or_default() += 1;
}

/// Open sockets by kind, as the hub counts them at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketGauges {
    pub register: usize,
    pub monitor: usize,
    /// Server-sent event streams.
    pub watch: usize,
}

/// The whole exposition.
pub fn render(sockets: SocketGauges, nodes: NodeGauges) -> String {
    let mut out = String::with_capacity(2048);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "hound_sockets",
        "gauge",
        "Open WebSockets by kind, and event streams (watch).",
        &[
            ("{kind=\"register\"}".into(), sockets.register as u64),
            ("{kind=\"monitor\"}".into(), sockets.monitor as u64),
            ("{kind=\"watch\"}".into(), sockets.watch as u64),
        ],
    );
    let plain = |counter: u64| [(String::new(), counter)];
    family(
        "hound_registrations",
        "gauge",
        "Registrations this hound keeps alive in etcd.",
        &plain(REGISTRATIONS.load(Ordering::Relaxed)),
    );
    family(
        "hound_messages_sent_total",
        "counter",
        "Messages queued for sockets, one per recipient.",
        &plain(MESSAGES_SENT.get()),
    );
    family(
        "hound_slow_sockets_closed_total",
        "counter",
        "Sockets closed with 1013 because they did not read their messages.",
        &plain(SLOW_SOCKETS_CLOSED.get()),
    );
    family(
        "hound_etcd_reconnects_total",
        "counter",
        "Times etcd answered again after it had stopped answering.",
        &plain(ETCD_RECONNECTS.get()),
    );
    family(
        "hound_watch_resyncs_total",
        "counter",
        "Re-reads of the service namespace after a compaction or a replaced cluster.",
        &plain(WATCH_RESYNCS.get()),
    );
    family(
        "hound_lease_regrants_total",
        "counter",
        "Registrations written again with a new lease after etcd lost theirs.",
        &plain(LEASE_REGRANTS.get()),
    );
    family(
        "hound_events_refused_total",
        "counter",
        "Events refused with 429 because a client or all clients spent the event budget.",
        &plain(EVENTS_REFUSED.get()),
    );
    family(
        "hound_nodes",
        "gauge",
        "Nodes of every service, as hound's mirror of etcd holds them, by status.",
        &[
            ("{status=\"passing\"}".into(), nodes.passing),
            ("{status=\"warning\"}".into(), nodes.warning),
            ("{status=\"critical\"}".into(), nodes.critical),
            ("{status=\"draining\"}".into(), nodes.draining),
        ],
    );
    family(
        "hound_check_runs_total",
        "counter",
        "Checks this hound ran, by what they found.",
        &[
            ("{result=\"passing\"}".into(), CHECK_RUNS[0].get()),
            ("{result=\"warning\"}".into(), CHECK_RUNS[1].get()),
            ("{result=\"critical\"}".into(), CHECK_RUNS[2].get()),
        ],
    );
    family(
        "hound_status_writes_total",
        "counter",
        "Writes of a registered node's value because its status or note changed.",
        &plain(STATUS_WRITES.get()),
    );
    let requests: Vec<(String, u64)> = REQUESTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|((route, status), count)| {
            (format!("{{route=\"{route}\",status=\"{status}\"}}"), *count)
        })
        .collect();
    family(
        "hound_http_requests_total",
        "counter",
        "HTTP answers by route and status (101 for upgraded WebSockets).",
        &requests,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_line_is_name_labels_value() {
        count_request("/healthz", 200);
        count_check(Status::Warning);
        let text = render(
            SocketGauges {
                register: 2,
                monitor: 1,
                watch: 3,
            },
            NodeGauges {
                critical: 4,
                ..NodeGauges::default()
            },
        );
        assert!(text.contains("hound_nodes{status=\"critical\"} 4\n"));
        assert!(text.contains("hound_check_runs_total{result=\"warning\"} "));
        assert!(text.contains("hound_sockets{kind=\"register\"} 2\n"));
        assert!(text.contains("hound_sockets{kind=\"monitor\"} 1\n"));
        assert!(text.contains("hound_sockets{kind=\"watch\"} 3\n"));
        assert!(text.contains("hound_http_requests_total{route=\"/healthz\",status=\"200\"} "));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(series.starts_with("hound_"), "{line}");
            value.parse::<u64>().unwrap();
        }
        let families = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(families, 12);
    }
}
