//! Section 7, hound's own checks: what 1,000 nodes with `check=tcp` every second cost hound
//! (CPU, RSS) next to the same 1,000 nodes unchecked, each on a fresh hound. The checked
//! services are 1,000 listening loopback ports the bench holds (a thread accepts and drops
//! what arrives, so backlogs never fill). Each node registers under a service of its own, so
//! the comparison measures the checks and not the fan-out of a 1,000-node membership to 1,000
//! register sockets (which the first check of each node of one such service costs once).

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::procs::{self, Etcd, Hound};
use crate::report::{Report, Row, Verdict};
use crate::stats;
use crate::ws_pool::Pool;
use crate::{MIB, Options, PROMPT, ws};

/// The prefix of the services the nodes register under (`checked-0`, `checked-1`, …).
const SERVICE: &str = "checked";

/// Listening ports standing for the checked services; closed on drop.
struct Ports {
    ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    drainer: Option<JoinHandle<()>>,
}

impl Ports {
    fn open(count: usize) -> Result<Ports, String> {
        let listeners: Vec<TcpListener> = (0..count)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|err| format!("cannot open {count} ports: {err}"))?;
        let mut ports = Vec::with_capacity(count);
        for listener in &listeners {
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            ports.push(listener.local_addr().map_err(|e| e.to_string())?.port());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let drainer = thread::spawn(move || {
            while !stopped.load(Ordering::Acquire) {
                for listener in &listeners {
                    while listener.accept().is_ok() {}
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        Ok(Ports {
            ports,
            stop,
            drainer: Some(drainer),
        })
    }
}

impl Drop for Ports {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(drainer) = self.drainer.take() {
            let _ = drainer.join();
        }
    }
}

/// What a hound holding the nodes cost while they were held.
struct Cost {
    /// Share of one core over the measurement.
    cpu: f64,
    rss: u64,
    threads: u64,
    /// Check runs per second over the measurement.
    check_rate: f64,
}

pub fn checks(options: &Options, etcd: &Etcd, report: &mut Report) -> Result<(), String> {
    let nodes = options.pick(1000, 200);
    let measure = options.pick(Duration::from_secs(10), Duration::from_secs(4));
    let ports = Ports::open(nodes)?;
    let plain = hold_nodes(etcd, &ports, "bench-unchecked", "", measure)?;
    let checked = hold_nodes(
        etcd,
        &ports,
        "bench-checked",
        "&check=tcp&check_interval=1",
        measure,
    )?;
    let n = stats::thousands(nodes as u64);
    report.row(Row {
        section: "7",
        what: format!(
            "Checks: CPU of hound with {n} nodes, `check=tcp` every 1 s ({:.0} checks/s measured), over {} s",
            checked.check_rate,
            measure.as_secs()
        ),
        hound: format!("{:.2}% of one core", checked.cpu * 100.0),
        baseline: format!("{n} unchecked nodes: {:.2}%", plain.cpu * 100.0),
        ratio: format!("+{:.2} points", (checked.cpu - plain.cpu) * 100.0),
        target: "< 5% of one core".into(),
        verdict: Verdict::from(checked.cpu < 0.05),
    });
    let extra = checked.rss.saturating_sub(plain.rss);
    report.row(Row {
        section: "7",
        what: format!("Checks: RSS of hound with {n} checked nodes over {n} unchecked"),
        hound: format!(
            "{} more ({} in all, {} threads)",
            stats::mib(extra),
            stats::mib(checked.rss),
            checked.threads
        ),
        baseline: format!(
            "{} unchecked ({} threads)",
            stats::mib(plain.rss),
            plain.threads
        ),
        ratio: String::new(),
        target: "< 2 MiB more".into(),
        verdict: Verdict::from(extra < 2 * MIB),
    });
    Ok(())
}

/// Starts a hound, registers a node per port (with `extra` parameters) and holds them; once
/// all are listed as passing and hound has settled, measures its CPU over `measure` and its
/// RSS.
fn hold_nodes(
    etcd: &Etcd,
    ports: &Ports,
    namespace: &str,
    extra: &str,
    measure: Duration,
) -> Result<Cost, String> {
    let (mut hound, _) = Hound::start(&etcd.url(), namespace, 0)?;
    eprintln!(
        "hound-bench: checks ({namespace}): hound on {} (pid {})",
        hound.addr(),
        hound.pid()
    );
    let mut pool = Pool::new(2);
    for (i, port) in ports.ports.iter().enumerate() {
        let path = format!("/etcd/register?service={SERVICE}-{i}&ip=127.0.0.1&port={port}{extra}");
        let mut socket = ws::connect(hound.addr(), &path, PROMPT)?;
        ws::read_text(&mut socket, PROMPT)?;
        socket
            .get_ref()
            .set_nonblocking(true)
            .map_err(|err| err.to_string())?;
        pool.add(socket);
    }
    let all = ports.ports.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = metric(&hound, "hound_nodes{status=\"passing\"}")? as usize;
        if listed == all {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{namespace}: {listed} of {all} nodes passing after 60 s"
            ));
        }
        thread::sleep(Duration::from_millis(200));
    }
    // Every socket handles a message in both runs (a broadcast), so the comparison is not of
    // sockets that have woken once (a checked node's first check sends it a PUT) against
    // sockets that never did: a socket thread's first message touches stack pages that then
    // stay resident (about 15 KiB per socket, whatever the message).
    let event = r#"{"event_type":"bench","event_body":"","broadcast":true}"#;
    procs::http_once(hound.addr(), "POST", "/etcd/event", event, PROMPT)
        .map_err(|err| err.to_string())?;
    // Registration's set-up work (threads starting, the first checks' writes) is over.
    thread::sleep(Duration::from_secs(3));
    let runs_before = check_runs(&hound)?;
    let cpu_before = procs::cpu_time(hound.pid());
    let started = Instant::now();
    thread::sleep(measure);
    let cpu = procs::cpu_time(hound.pid()).saturating_sub(cpu_before);
    let elapsed = started.elapsed();
    let runs = check_runs(&hound)? - runs_before;
    let status = hound.status();
    pool.close_all();
    hound.stop();
    Ok(Cost {
        cpu: cpu.as_secs_f64() / elapsed.as_secs_f64(),
        rss: status.rss_bytes,
        threads: status.threads,
        check_rate: runs / elapsed.as_secs_f64(),
    })
}

/// Every check run hound counted so far.
fn check_runs(hound: &Hound) -> Result<f64, String> {
    metric(hound, "hound_check_runs_total{")
}

/// The sum of the `/metrics` samples whose series starts with `series`.
fn metric(hound: &Hound, series: &str) -> Result<f64, String> {
    let (_, body) = procs::http_once(hound.addr(), "GET", "/metrics", "", PROMPT)
        .map_err(|err| err.to_string())?;
    Ok(body
        .lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}
