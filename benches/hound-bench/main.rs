//! hound's benchmark: `cargo bench --bench hound-bench`.
//!
//! Starts its own etcd and the release `hound` on loopback ports, measures fan-out latency,
//! registration latency, REST read throughput, footprint and churn, each against a baseline
//! taken straight from etcd in the same run where one exists, and DNS against BIND 9, and
//! prints one markdown table.
//! `docs/performance.md` explains every row.
//!
//! Options (after `--`): `--quick` (smaller counts, for trying the bench out; not comparable),
//! `--only SECTION[,SECTION…]` (`startup`, `rest`, `registration`, `churn`, `fanout`, `dns`,
//! `sse`, `leader`, `checks`), and
//! `--update-docs` (rewrite the generated section of `docs/performance.md`).

mod checks;
mod discovery;
mod election;
mod etcd;
mod http;
mod procs;
mod report;
mod stats;
mod ws;
/// The epoll WebSocket client, shared with the integration tests as one source file (whose
/// helpers for raw sockets only the tests use).
#[allow(dead_code)]
#[path = "../../tests/shared/ws_pool.rs"]
mod ws_pool;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use etcd::{EtcdClient, Watcher};
use procs::{Etcd, FdLimit, Hound};
use report::{Machine, Report, Row, Verdict};
use stats::{Samples, ms, ratio, times, triple};
use ws_pool::{Pool, ProbeResult};

/// The whole bench is aborted (taking etcd and hound with it) after this long.
const WATCHDOG: Duration = Duration::from_secs(15 * 60);
/// Descriptors the bench asks for: 10,000 client sockets here, and hound (which inherits the
/// limit) holds two or three per socket.
const WANTED_FDS: u64 = 65_536;
/// hound's key prefix for registrations during the bench.
const NAMESPACE: &str = "bench";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

struct Options {
    quick: bool,
    update_docs: bool,
    /// Sections to run (`startup`, `rest`, `registration`, `churn`, `fanout`, `dns`, `sse`,
    /// `leader`, `checks`);
    /// all if empty.
    only: Vec<String>,
}

impl Options {
    fn from_args() -> Options {
        // `cargo bench` passes `--bench`; anything unknown is ignored.
        let args: Vec<String> = std::env::args().skip(1).collect();
        let only = args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1))
            .map(|list| list.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        Options {
            quick: args.iter().any(|a| a == "--quick"),
            update_docs: args.iter().any(|a| a == "--update-docs"),
            only,
        }
    }

    /// Whether `section` is to run.
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }

    /// `full` normally, `quick` with `--quick`.
    fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

fn main() {
    let options = Options::from_args();
    arm_watchdog();
    let fd_limit = procs::raise_fd_limit(WANTED_FDS);
    let started = Instant::now();
    // Taken now: other people may commit while the bench runs.
    let source = source_revision();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    eprintln!(
        "hound-bench: hound {} and {}",
        procs::hound_binary().display(),
        Etcd::binary().display()
    );
    let mut report = Report::default();
    if let Err(err) = run(&options, &mut report, fd_limit) {
        report.note(format!("the bench stopped early: {err}"));
    }
    let machine = Machine::describe(&[
        ("hound source (when the bench started)", source),
        ("etcd", Etcd::version()),
        ("hound", hound_version()),
        (
            "descriptor limit",
            format!(
                "soft {} / hard {} at start, raised to {} / {} (inherited by etcd and hound)",
                fd_limit.soft_before, fd_limit.hard_before, fd_limit.soft, fd_limit.hard
            ),
        ),
        (
            "etcd data dir",
            format!("{} (tmpfs when available)", Etcd::data_parent().display()),
        ),
        (
            "load average (1/5/15 min) when the bench started",
            load.join(" / "),
        ),
        (
            "bench duration",
            format!("{:.0} s", started.elapsed().as_secs_f64()),
        ),
    ]);
    let (met, missed) = report.met_and_missed();
    let mut section = String::new();
    section.push_str(&format!(
        "Run of `cargo bench --bench hound-bench`{}:\n\n",
        if options.quick {
            " -- --quick (reduced counts)"
        } else {
            ""
        }
    ));
    section.push_str(&machine.markdown());
    section.push('\n');
    section.push_str(&report.table());
    section.push_str(&format!("\nTargets: {met} met, {missed} missed.\n"));
    if !report.notes.is_empty() {
        section.push_str("\nNotes from this run:\n\n");
        for note in &report.notes {
            section.push_str(&format!("- {}\n", note.replace('\n', " ")));
        }
    }
    println!("\n{section}");
    let results = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hound-bench.md");
    match std::fs::write(&results, &section) {
        Ok(()) => eprintln!("hound-bench: results written to {}", results.display()),
        Err(err) => eprintln!("hound-bench: cannot write {}: {err}", results.display()),
    }
    if options.update_docs {
        let doc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/performance.md");
        match report::update_doc(&doc, &section) {
            Ok(()) => eprintln!("hound-bench: updated {}", doc.display()),
            Err(err) => eprintln!("hound-bench: {err}"),
        }
    }
}

fn arm_watchdog() {
    thread::Builder::new()
        .name("watchdog".into())
        .spawn(|| {
            thread::sleep(WATCHDOG);
            eprintln!("hound-bench: still running after {WATCHDOG:?}; aborting");
            std::process::abort();
        })
        .expect("spawn the watchdog");
}

/// The commit the bench was built from, and whether the tree had changes.
fn source_revision() -> String {
    std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!("git {}", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| "unknown (not a git checkout)".into())
}

fn hound_version() -> String {
    std::process::Command::new(procs::hound_binary())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn run(options: &Options, report: &mut Report, fd_limit: FdLimit) -> Result<(), String> {
    let etcd = Etcd::start()?;
    eprintln!("hound-bench: etcd on {}", etcd.url());
    let writer = EtcdClient::connect(&etcd.url())?;
    let watcher = Watcher::start(&etcd.url(), &format!("{NAMESPACE}/"))?;

    if options.runs("startup") {
        binary_size(report);
        startup(options, &etcd, report);
    }

    let (hound, _) = Hound::start(&etcd.url(), NAMESPACE, 0)?;
    eprintln!(
        "hound-bench: hound on {} (pid {})",
        hound.addr(),
        hound.pid()
    );
    thread::sleep(Duration::from_secs(1));
    let idle = hound.status();
    if options.runs("startup") {
        report.row(Row {
            section: "4",
            what: "RSS idle (started, healthy, no sockets)".into(),
            hound: format!("{} ({} threads)", stats::mib(idle.rss_bytes), idle.threads),
            baseline: String::new(),
            ratio: String::new(),
            target: "< 8 MiB".into(),
            verdict: Verdict::from(idle.rss_bytes < 8 * MIB),
        });
    }

    if options.runs("rest")
        && let Err(err) = rest(options, &etcd, &hound, &writer, report)
    {
        report.failed("3", "REST read throughput", &err);
    }
    if options.runs("registration")
        && let Err(err) = registration(options, &etcd, &hound, &watcher, report)
    {
        report.failed("2", "registration latency", &err);
    }
    if options.runs("churn")
        && let Err(err) = churn(options, &hound, &writer, report)
    {
        report.failed("5", "churn", &err);
    }
    if options.runs("fanout")
        && let Err(err) = fan_out(options, &hound, &writer, &watcher, report, fd_limit)
    {
        report.failed("1", "fan-out", &err);
    }

    if options.runs("leader")
        && let Err(err) = election::leader_change(options, &etcd, report)
    {
        report.failed("8", "leader change", &err);
    }
    if options.runs("dns")
        && let Err(err) = discovery::dns(options, &etcd, &writer, report)
    {
        report.failed("6", "DNS against BIND 9", &err);
    }
    if options.runs("sse")
        && let Err(err) = discovery::event_stream_cost(options, &etcd, report)
    {
        report.failed("6", "event stream cost per client", &err);
    }
    if options.runs("checks")
        && let Err(err) = checks::checks(options, &etcd, report)
    {
        report.failed("7", "checks", &err);
    }

    let problems = procs::log_problems(&hound.stderr());
    if !problems.is_empty() {
        let total: usize = problems.iter().map(|(count, _)| count).sum();
        let kinds: Vec<String> = problems
            .iter()
            .take(4)
            .map(|(count, example)| format!("{count} × `{example}`"))
            .collect();
        report.note(format!(
            "hound logged {total} warnings/errors in {} kinds; most frequent: {}",
            problems.len(),
            kinds.join("; ")
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Footprint: binary size and start-up
// ---------------------------------------------------------------------------------------------

fn binary_size(report: &mut Report) {
    let binary = procs::hound_binary();
    let size = match std::fs::metadata(&binary) {
        Ok(meta) => meta.len(),
        Err(err) => {
            report.failed("4", "binary size", &format!("{}: {err}", binary.display()));
            return;
        }
    };
    let stripped = tempfile::tempdir()
        .map_err(|err| err.to_string())
        .and_then(|dir| {
            let copy = dir.path().join("hound");
            std::fs::copy(&binary, &copy).map_err(|err| err.to_string())?;
            let status = std::process::Command::new("strip")
                .arg(&copy)
                .status()
                .map_err(|err| format!("strip: {err}"))?;
            if !status.success() {
                return Err(format!("strip exited with {status}"));
            }
            std::fs::metadata(&copy)
                .map(|m| m.len())
                .map_err(|err| err.to_string())
        });
    match stripped {
        Ok(stripped) => report.row(Row {
            section: "4",
            what: "Release binary, stripped copy".into(),
            hound: format!(
                "{} ({} bytes; as built {}{})",
                stats::mib(stripped),
                stats::thousands(stripped),
                stats::mib(size),
                // `strip` on a stripped binary still drops a few bytes of section padding.
                if size - stripped.min(size) < size / 100 {
                    ", the release profile already strips"
                } else {
                    ", not stripped"
                }
            ),
            baseline: String::new(),
            ratio: String::new(),
            target: "≤ 5 MiB".into(),
            verdict: Verdict::from(stripped <= 5 * MIB),
        }),
        Err(err) => {
            report.note(format!("could not strip a copy ({err}); size as built"));
            report.row(Row {
                section: "4",
                what: "Release binary (as built, strip unavailable)".into(),
                hound: stats::mib(size),
                baseline: String::new(),
                ratio: String::new(),
                target: "≤ 5 MiB".into(),
                verdict: Verdict::from(size <= 5 * MIB),
            });
        }
    }
}

fn startup(options: &Options, etcd: &Etcd, report: &mut Report) {
    let runs = options.pick(7, 3);
    let mut times = Vec::new();
    for _ in 0..runs {
        match Hound::start(&etcd.url(), NAMESPACE, procs::free_port()) {
            Ok((mut hound, took)) => {
                times.push(took);
                hound.stop();
            }
            Err(err) => {
                report.failed("4", "start-up to /healthz 200", &err);
                return;
            }
        }
    }
    let samples = Samples::new(times);
    report.row(Row {
        section: "4",
        what: format!("Start-up: spawn → `/healthz` 200 (etcd up), median of {runs}"),
        hound: format!("{} (max {})", ms(samples.p50()), ms(samples.max())),
        baseline: String::new(),
        ratio: String::new(),
        target: "< 100 ms".into(),
        verdict: Verdict::from(samples.p50() < Duration::from_millis(100)),
    });
}

// ---------------------------------------------------------------------------------------------
// 3. REST read throughput
// ---------------------------------------------------------------------------------------------

fn rest(
    options: &Options,
    etcd: &Etcd,
    hound: &Hound,
    writer: &EtcdClient,
    report: &mut Report,
) -> Result<(), String> {
    let warmup = Duration::from_millis(500);
    let measure = options.pick(Duration::from_secs(3), Duration::from_secs(1));
    let threads = 2;
    for (service, nodes) in [("rest10", 10usize), ("rest1000", 1000)] {
        let pairs: Vec<(String, String)> = (0..nodes)
            .map(|i| {
                let node = format!("10.{}.{}.{}:8080", 100 + nodes / 1000, i / 250, i % 250 + 1);
                (format!("{NAMESPACE}/{service}/{node}"), node)
            })
            .collect();
        writer.put_many(&pairs)?;
        wait_for_nodes(hound, service, nodes)?;

        let path = format!("/etcd/services/{service}");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", hound.addr());
        let check: fn(&[u8]) -> Result<(), String> = match nodes {
            10 => |body| expect_ports(body, 10),
            _ => |body| expect_ports(body, 1000),
        };
        let ours = http::run(
            hound.addr(),
            Arc::new(request.into_bytes()),
            threads,
            warmup,
            measure,
            check,
        );

        let prefix = format!("{NAMESPACE}/{service}/");
        let body = format!(
            "{{\"key\":\"{}\",\"range_end\":\"{}\"}}",
            http::base64(prefix.as_bytes()),
            http::base64(&http::prefix_end(prefix.as_bytes()))
        );
        let request = format!(
            "POST /v3/kv/range HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            etcd.addr(),
            body.len()
        );
        let check: fn(&[u8]) -> Result<(), String> = match nodes {
            10 => |body| expect_count(body, 10),
            _ => |body| expect_count(body, 1000),
        };
        let gateway = http::run(
            etcd.addr(),
            Arc::new(request.into_bytes()),
            threads,
            warmup,
            measure,
            check,
        );
        let grpc = grpc_range(&etcd.url(), &prefix, nodes, threads, warmup, measure);

        for (what, run) in [("hound", &ours), ("etcd gateway", &gateway)] {
            if run.errors > 0 {
                report.note(format!(
                    "REST {nodes} nodes, {what}: {} errors; first: {}",
                    run.errors,
                    run.first_error.clone().unwrap_or_default()
                ));
            }
        }
        let speedup = ours.per_sec / gateway.per_sec.max(f64::MIN_POSITIVE);
        let met = speedup >= 3.0
            && ours.latency.p99() < Duration::from_millis(5)
            && ours.errors == 0
            && !ours.latency.is_empty();
        report.row(Row {
            section: "3",
            what: format!(
                "REST `GET /etcd/services/:s`, {nodes} nodes, keep-alive, {threads} client threads"
            ),
            hound: format!(
                "{}, p99 {} ({} requests)",
                stats::rate(ours.per_sec),
                ms(ours.latency.p99()),
                stats::thousands(ours.requests)
            ),
            baseline: format!(
                "etcd JSON gateway `/v3/kv/range`: {}, p99 {}",
                stats::rate(gateway.per_sec),
                ms(gateway.latency.p99())
            ),
            ratio: format!("{speedup:.2}× throughput"),
            target: "≥ 3× and p99 < 5 ms".into(),
            verdict: Verdict::from(met),
        });
        match grpc {
            Ok(grpc) => report.info(
                "3",
                format!("… same prefix range over etcd gRPC (etcd-client), {nodes} nodes"),
                format!(
                    "{}, p99 {} (hound ÷ gRPC {:.2}×)",
                    stats::rate(grpc.per_sec),
                    ms(grpc.latency.p99()),
                    ours.per_sec / grpc.per_sec.max(f64::MIN_POSITIVE)
                ),
            ),
            Err(err) => report.note(format!("gRPC range baseline failed: {err}")),
        }
    }
    Ok(())
}

fn expect_ports(body: &[u8], nodes: usize) -> Result<(), String> {
    let found = ws::ports(&String::from_utf8_lossy(body)).len();
    if found == nodes {
        Ok(())
    } else {
        Err(format!("hound listed {found} nodes, expected {nodes}"))
    }
}

fn expect_count(body: &[u8], nodes: usize) -> Result<(), String> {
    if String::from_utf8_lossy(body).contains(&format!("\"count\":\"{nodes}\"")) {
        Ok(())
    } else {
        Err(format!(
            "etcd range did not count {nodes} keys: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    }
}

fn wait_for_nodes(hound: &Hound, service: &str, nodes: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, body)) = procs::http_once(
            hound.addr(),
            "GET",
            &format!("/etcd/services/{service}"),
            "",
            Duration::from_secs(5),
        ) && ws::ports(&body).len() == nodes
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "hound did not list {nodes} nodes of {service} within 10 s"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The same closed loop as [`http::run`], over etcd-client's gRPC.
fn grpc_range(
    url: &str,
    prefix: &str,
    nodes: usize,
    threads: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<http::Throughput, String> {
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + measure);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (url, prefix) = (url.to_owned(), prefix.to_owned());
            thread::spawn(move || -> Result<Vec<Duration>, String> {
                let client = EtcdClient::connect(&url)?;
                let mut latencies = Vec::new();
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        return Ok(latencies);
                    }
                    let count = client.range_count(&prefix)?;
                    if count != nodes {
                        return Err(format!("gRPC range returned {count} keys, not {nodes}"));
                    }
                    let done = Instant::now();
                    if sent >= from && done <= until {
                        latencies.push(done - sent);
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(
            handle
                .join()
                .map_err(|_| "gRPC client panicked".to_owned())??,
        );
    }
    let requests = latencies.len() as u64;
    Ok(http::Throughput {
        requests,
        per_sec: requests as f64 / measure.as_secs_f64(),
        latency: Samples::new(latencies),
        errors: 0,
        first_error: None,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Registration latency
// ---------------------------------------------------------------------------------------------

fn register_path(service: &str, ip: &str, port: u32) -> String {
    format!("/etcd/register?service={service}&ip={ip}&port={port}")
}

fn registration(
    options: &Options,
    etcd: &Etcd,
    hound: &Hound,
    watcher: &Watcher,
    report: &mut Report,
) -> Result<(), String> {
    let rounds = options.pick(200, 40);
    let (other, _) = Hound::start(&etcd.url(), NAMESPACE, 0)?;
    let mut monitor = ws::connect(other.addr(), "/etcd/monitor?monitor=reg", PROMPT)?;
    ws::read_text(&mut monitor, PROMPT)?;

    let (mut to_etcd, mut to_101, mut to_delete) = (Vec::new(), Vec::new(), Vec::new());
    let mut expired = 0;
    for round in 0..rounds {
        let port = 20_000 + round;
        let key = format!("{NAMESPACE}/reg/10.0.0.2:{port}");
        watcher.drain();
        let started = Instant::now();
        let mut socket = ws::connect(
            hound.addr(),
            &register_path("reg", "10.0.0.2", port),
            PROMPT,
        )?;
        to_101.push(started.elapsed());
        let put = watcher
            .wait_for(PROMPT, |e| e.put && e.key == key)
            .ok_or_else(|| format!("the plain watch did not see {key}"))?;
        to_etcd.push(put.at - started);
        // The other hound has seen it too, before we measure its removal.
        wait_event(&mut monitor, |event, ports| {
            event == "PUT" && ports.contains(&port)
        })?;

        let closing = Instant::now();
        ws::send_close(&mut socket);
        let event = wait_event(&mut monitor, |event, ports| {
            matches!(event, "DELETE" | "EXPIRE") && !ports.contains(&port)
        })?;
        to_delete.push(closing.elapsed());
        if event == "EXPIRE" {
            expired += 1;
        }
        ws::finish_close(socket, Duration::from_secs(2));
    }
    if expired > 0 {
        report.note(format!(
            "registration: {expired} of {rounds} closes were reported as EXPIRE, not DELETE"
        ));
    }
    let (to_etcd, to_101, to_delete) = (
        Samples::new(to_etcd),
        Samples::new(to_101),
        Samples::new(to_delete),
    );
    report.info(
        "2",
        format!(
            "Register: WebSocket connect → key readable in etcd (plain watch), {rounds} rounds"
        ),
        format!("p50 {} / p99 {}", ms(to_etcd.p50()), ms(to_etcd.p99())),
    );
    report.info(
        "2",
        "… connect → `101` received by the client (key in etcd and in hound's mirror)",
        format!("p50 {} / p99 {}", ms(to_101.p50()), ms(to_101.p99())),
    );
    report.info(
        "2",
        format!(
            "Deregister: close frame sent → `DELETE` received from another hound, {rounds} rounds"
        ),
        format!("p50 {} / p99 {}", ms(to_delete.p50()), ms(to_delete.p99())),
    );
    Ok(())
}

const PROMPT: Duration = Duration::from_secs(5);

/// Reads service events until `wanted(key_event, ports)`; returns the key_event.
fn wait_event(ws: &mut ws::Ws, wanted: impl Fn(&str, &[u32]) -> bool) -> Result<String, String> {
    let deadline = Instant::now() + PROMPT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let text = ws::read_text(ws, left)?;
        let event = ws::key_event(text.as_str()).unwrap_or("").to_owned();
        if wanted(&event, &ws::ports(text.as_str())) {
            return Ok(event);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Churn
// ---------------------------------------------------------------------------------------------

fn churn(
    options: &Options,
    hound: &Hound,
    writer: &EtcdClient,
    report: &mut Report,
) -> Result<(), String> {
    let registrations = options.pick(1000, 200);
    let monitors = 100;
    let clients = 8;
    let anchors: Vec<u32> = vec![1, 2, 3];

    let mut pool = Pool::new(2);
    let opened = pool.open_retrying(
        hound.addr(),
        "/etcd/monitor?monitor=churn",
        monitors,
        Duration::from_secs(30),
        2,
    );
    if opened.failed > 0 {
        report.note(format!(
            "churn: {} attempts to open a monitor failed (retried); first error: {}",
            opened.failed,
            opened.failure_summary()
        ));
    }
    if opened.opened < monitors {
        return Err(format!(
            "only {} of {monitors} monitors could be opened: {}",
            opened.opened,
            opened.failure_summary()
        ));
    }
    // Nodes that stay registered throughout: the final membership is exactly these.
    for &port in &anchors {
        let mut anchor = ws::connect(
            hound.addr(),
            &register_path("churn", "10.0.3.1", port),
            PROMPT,
        )?;
        ws::read_text(&mut anchor, PROMPT)?;
        anchor
            .get_ref()
            .set_nonblocking(true)
            .map_err(|err| err.to_string())?;
        pool.add(anchor);
    }

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (next, addr) = (next.clone(), hound.addr());
            thread::spawn(move || {
                let (mut ok, mut failed, mut first_error) = (0usize, 0usize, None);
                loop {
                    let i = next.fetch_add(1, Ordering::AcqRel);
                    if i >= registrations {
                        return (ok, failed, first_error);
                    }
                    let path = register_path("churn", "10.0.4.1", 30_000 + i as u32);
                    match ws::connect(addr, &path, Duration::from_secs(10)) {
                        Ok(mut socket) => {
                            ws::send_close(&mut socket);
                            ws::finish_close(socket, PROMPT);
                            ok += 1;
                        }
                        Err(err) => {
                            failed += 1;
                            first_error.get_or_insert(err);
                        }
                    }
                }
            })
        })
        .collect();
    let (mut ok, mut failed, mut first_error) = (0, 0, None);
    for worker in workers {
        let (o, f, e) = worker.join().map_err(|_| "churn client panicked")?;
        ok += o;
        failed += f;
        first_error = first_error.or(e);
    }
    let elapsed = started.elapsed();

    // Every socket (monitors and anchors) must end with exactly the anchors.
    let expected: Vec<u32> = anchors.clone();
    let sockets = monitors + anchors.len();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut exact;
    loop {
        let last = pool.last_messages();
        exact = last
            .iter()
            .flatten()
            .filter(|text| {
                text.contains("\"namespace\":\"churn\"") && ws::ports(text.as_str()) == expected
            })
            .count();
        if exact == sockets || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let converged = started.elapsed();
    let in_etcd: Vec<u32> = writer
        .get_prefix(&format!("{NAMESPACE}/churn/"))?
        .iter()
        .filter_map(|(_, value)| value_port(value))
        .collect();
    let lost = pool.lost();
    if lost > 0 {
        report.note(format!(
            "churn: {lost} monitor sockets were closed by hound; first: {}",
            pool.first_loss().unwrap_or_default()
        ));
    }
    if failed > 0 {
        report.note(format!(
            "churn: {failed} registrations failed; first: {}",
            first_error.unwrap_or_default()
        ));
    }
    let all_exact = exact == sockets && in_etcd == expected && failed == 0 && lost == 0;
    report.row(Row {
        section: "5",
        what: format!(
            "Churn: {registrations} registrations opened+closed by {clients} clients while \
             {monitors} monitors watch"
        ),
        hound: format!(
            "{} ({ok} in {:.2} s); {exact}/{sockets} sockets end with the exact membership \
             {} s after the start; etcd holds {:?}",
            stats::rate(ok as f64 / elapsed.as_secs_f64()),
            elapsed.as_secs_f64(),
            format_args!("{:.2}", converged.as_secs_f64()),
            in_etcd
        ),
        baseline: String::new(),
        ratio: String::new(),
        target: "every monitor exact".into(),
        verdict: Verdict::from(all_exact),
    });
    pool.close_all();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. Fan-out latency, the flood of sockets opened at once, and 4. footprint per socket
// ---------------------------------------------------------------------------------------------

/// What every fan-out socket monitors.
const FAN_PATH: &str = "/etcd/monitor?monitor=fan";
/// Client threads that open and read every socket: the targets are for one client process that
/// reads 10,000 sockets on two threads, as a real client would.
const POOL_THREADS: usize = 2;

/// The etcd key whose new value each probe round writes, and the probe counter.
struct Probe<'a> {
    writer: &'a EtcdClient,
    watcher: &'a Watcher,
    key: String,
    next: u16,
}

/// What the probe rounds at one socket count measured.
struct Rounds {
    ours: Samples,
    floor: Samples,
    incomplete: usize,
    /// The first incomplete round: (received, expected).
    worst_partial: Option<(usize, usize)>,
    /// Sockets closed by hound or broken during the rounds.
    lost: usize,
}

impl Probe<'_> {
    /// Writes a new value to the key `rounds` times (at most 60 s), and measures each time until
    /// the last socket of `pool` and the plain etcd watch have it.
    fn rounds(&mut self, pool: &Pool, rounds: usize, gap: Duration) -> Result<Rounds, String> {
        let time_cap = Instant::now() + Duration::from_secs(60);
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        let (mut incomplete, mut worst_partial) = (0, None);
        let lost_before = pool.lost();
        for _ in 0..rounds {
            if Instant::now() >= time_cap {
                break;
            }
            self.next = if self.next >= 65_000 {
                2
            } else {
                self.next + 1
            };
            let value = format!("10.0.0.1:{}", self.next);
            pool.arm(self.next, pool.live());
            self.watcher.drain();
            let put_at = Instant::now();
            self.writer.put(&self.key, &value)?;
            let seen = self.watcher.wait_for(PROMPT, |e| e.put && e.value == value);
            match pool.wait(Duration::from_secs(10)) {
                ProbeResult::AllAt(last) => ours.push(last - put_at),
                ProbeResult::Partial { received, expected } => {
                    incomplete += 1;
                    worst_partial.get_or_insert((received, expected));
                }
            }
            if let Some(seen) = seen {
                floor.push(seen.at - put_at);
            }
            thread::sleep(gap);
        }
        Ok(Rounds {
            ours: Samples::new(ours),
            floor: Samples::new(floor),
            incomplete,
            worst_partial,
            lost: pool.lost() - lost_before,
        })
    }
}

/// The fan-out row for `size` sockets wanted, `live` of them open.
fn fan_out_row(size: usize, live: usize, rounds: &Rounds, quick: bool) -> Row {
    let Rounds {
        ours,
        floor,
        incomplete,
        worst_partial,
        lost,
    } = rounds;
    let (p50_ratio, p99_ratio) = (
        ratio(ours.p50(), floor.p50()),
        ratio(ours.p99(), floor.p99()),
    );
    let missing = size.saturating_sub(live);
    let errors = missing + incomplete + lost;
    let (target, met) = match (size, quick) {
        (1, _) => ("p99 ≤ 1.5× the plain watch".to_owned(), p99_ratio <= 1.5),
        (1_000, _) => (
            "p99 ≤ 15 ms to the last socket".to_owned(),
            ours.p99() <= Duration::from_millis(15),
        ),
        (100, _) => (String::new(), true),
        // The largest count: 10,000, or fewer with --quick.
        (_, false) => (
            "p99 ≤ 150 ms, nothing lost".to_owned(),
            ours.p99() <= Duration::from_millis(150),
        ),
        (_, true) => ("nothing lost".to_owned(), true),
    };
    let mut result = format!("{} ({} rounds)", triple(ours), ours.len());
    if errors > 0 {
        result.push_str(&format!(
            "; errors: {missing} sockets missing, {incomplete} rounds incomplete{}, {lost} lost",
            worst_partial
                .map(|(r, e)| format!(" (e.g. {r} of {e} received)"))
                .unwrap_or_default()
        ));
    }
    Row {
        section: "1",
        what: format!(
            "Fan-out: etcd PUT → last of {} monitor sockets receives it (p50 / p99 / max)",
            stats::thousands(live as u64)
        ),
        hound: result,
        baseline: format!("plain etcd watch: {}", triple(floor)),
        ratio: format!("p50 {} / p99 {}", times(p50_ratio), times(p99_ratio)),
        verdict: if target.is_empty() {
            Verdict::Info
        } else {
            Verdict::from(met && errors == 0 && !ours.is_empty())
        },
        target,
    }
}

/// `"; accept queue full N times"` since `before` (the kernel's `ListenOverflows`, whole
/// machine): a full accept queue makes the kernel drop the handshake, and the client's SYN
/// retransmissions (after 1, 3, 7, 15 s) then dominate the opening time.
fn overflow_text(before: Option<u64>) -> String {
    match (before, procs::listen_overflows()) {
        (Some(before), Some(after)) if after > before => format!(
            "; accept queue full {} times (kernel `ListenOverflows`, whole machine)",
            stats::thousands(after - before)
        ),
        _ => String::new(),
    }
}

fn note_failures(report: &mut Report, what: &str, opened: &ws_pool::Opened) {
    if opened.failed > 0 {
        report.note(format!(
            "{what}: {} of {} attempts to open a monitor socket failed: {}",
            opened.failed,
            opened.failed + opened.opened,
            opened.failure_summary()
        ));
    }
}

fn fan_out(
    options: &Options,
    hound: &Hound,
    writer: &EtcdClient,
    watcher: &Watcher,
    report: &mut Report,
    fd_limit: FdLimit,
) -> Result<(), String> {
    let largest = options.pick(10_000, 2_000);
    let mut probe = Probe {
        writer,
        watcher,
        key: format!("{NAMESPACE}/fan/node"),
        next: 1,
    };
    writer.put(&probe.key, "10.0.0.1:1")?;
    // Let everything closed by the earlier phases finish before the base is taken.
    thread::sleep(Duration::from_secs(1));
    let base = (hound.status(), procs::fd_count(hound.pid()));

    // 1, 100 and 1,000 sockets: one pool that grows, each step opening what it adds at once.
    let mut pool = Pool::new(POOL_THREADS);
    for size in [1, 100, 1_000] {
        let wanted = size - pool.len();
        let overflows = procs::listen_overflows();
        // Retried (twice) so the fan-out is measured at the full count; the flood row below is
        // the one that counts failed opens.
        let within = Duration::from_secs(60);
        let opened = pool.open_retrying(hound.addr(), FAN_PATH, wanted, within, 2);
        if size == 1_000 {
            report.info(
                "1",
                format!(
                    "… opening {wanted} more monitor sockets at once ({POOL_THREADS} client \
                     threads), failures retried twice"
                ),
                format!(
                    "{:.2} s; {} of {} attempts failed{}",
                    opened.elapsed.as_secs_f64(),
                    opened.failed,
                    opened.failed + opened.opened,
                    overflow_text(overflows)
                ),
            );
        }
        note_failures(report, &format!("going to {size} sockets"), &opened);
        if pool.lost() > 0 {
            report.note(format!(
                "{} monitor sockets were closed by hound after their SYNC; first: {}",
                pool.lost(),
                pool.first_loss().unwrap_or_default()
            ));
        }
        if size == 1_000 {
            thread::sleep(Duration::from_secs(1));
            footprint(hound, report, base, pool.live(), None);
        }
        if pool.live() == 0 {
            report.failed(
                "1",
                format!("fan-out, {size} sockets"),
                "no socket could be opened",
            );
            continue;
        }
        let (rounds, gap) = match size {
            1 => (options.pick(1000, 100), Duration::from_millis(2)),
            100 => (options.pick(500, 60), Duration::from_millis(2)),
            _ => (options.pick(200, 40), Duration::from_millis(20)),
        };
        let measured = probe.rounds(&pool, rounds, gap)?;
        report.row(fan_out_row(size, pool.live(), &measured, options.quick));
    }
    pool.close_all();
    if !hound.wait_threads_at_most(base.0.threads + 5, Duration::from_secs(30)) {
        report.note(format!(
            "30 s after closing 1,000 sockets hound still had {} threads (from {})",
            hound.status().threads,
            base.0.threads
        ));
    }

    // The flood: every socket opened at once by one client on two threads.
    let mut pool = Pool::new(POOL_THREADS);
    let overflows = procs::listen_overflows();
    let opened = pool.open(hound.addr(), FAN_PATH, largest, Duration::from_secs(60));
    let overflowed = overflow_text(overflows);
    let sync = Samples::new(opened.sync_times.clone());
    report.row(Row {
        section: "1",
        what: format!(
            "Flood: {} monitor sockets opened at once by one client ({POOL_THREADS} threads, \
             every connect and handshake in flight together) → SYNC received",
            stats::thousands(largest as u64)
        ),
        hound: format!(
            "{} of {} SYNCed in {:.2} s ({}); connect → SYNC {}{overflowed}{}",
            stats::thousands(opened.opened as u64),
            stats::thousands(largest as u64),
            opened.elapsed.as_secs_f64(),
            stats::rate(opened.opened as f64 / opened.elapsed.as_secs_f64()),
            triple(&sync),
            if opened.failed > 0 {
                format!("; {} failed: {}", opened.failed, opened.failure_summary())
            } else {
                String::new()
            }
        ),
        baseline: String::new(),
        ratio: String::new(),
        target: format!("all {} SYNCed", stats::thousands(largest as u64)),
        verdict: Verdict::from(opened.opened == largest),
    });
    note_failures(report, "flood", &opened);
    thread::sleep(Duration::from_secs(1));
    footprint(hound, report, base, pool.live(), Some(largest));
    if pool.live() == 0 {
        report.failed(
            "1",
            format!("fan-out, {largest} sockets"),
            "no socket could be opened",
        );
    } else {
        let measured = probe.rounds(&pool, options.pick(60, 20), Duration::from_millis(20))?;
        report.row(fan_out_row(largest, pool.live(), &measured, options.quick));
    }
    if pool.lost() > 0 {
        report.note(format!(
            "flood: {} monitor sockets were closed by hound after their SYNC; first: {}",
            pool.lost(),
            pool.first_loss().unwrap_or_default()
        ));
    }

    // What the idle sockets cost in CPU (pings every 15 s, the warden's sweeps).
    let before = procs::cpu_time(hound.pid());
    let window = Duration::from_secs(options.pick(5, 2));
    thread::sleep(window);
    let used = procs::cpu_time(hound.pid()) - before;
    report.info(
        "4",
        format!(
            "CPU of hound with {} idle monitor sockets",
            stats::thousands(pool.live() as u64)
        ),
        format!(
            "{:.1}% of one core (over {} s)",
            100.0 * used.as_secs_f64() / window.as_secs_f64(),
            window.as_secs()
        ),
    );
    if fd_limit.hard < WANTED_FDS {
        report.note(format!(
            "the hard descriptor limit is {} and could not be raised to {WANTED_FDS} (raising \
             it needs CAP_SYS_RESOURCE); hound inherits it and keeps 256 back, so at one \
             descriptor per WebSocket it holds at most {} sockets",
            fd_limit.hard,
            fd_limit.hard.saturating_sub(256)
        ));
    } else if fd_limit.hard_before < WANTED_FDS {
        report.note(format!(
            "the hard descriptor limit was raised from {} to {} for etcd, hound and the bench",
            fd_limit.hard_before, fd_limit.hard
        ));
    }
    let threads_before_close = hound.status().threads;
    pool.close_all();
    if !hound.wait_threads_at_most(base.0.threads + 5, Duration::from_secs(30)) {
        report.note(format!(
            "30 s after closing {} sockets hound still had {} threads (from {})",
            stats::thousands(largest as u64),
            hound.status().threads,
            threads_before_close
        ));
    }
    Ok(())
}

/// Waits (up to 8 s) for the threads tiny_http started for a burst of handshakes to exit: it
/// keeps a thread that served a connection for 5 s in case another connection comes. Returns
/// how long that took.
fn settle_threads(hound: &Hound, idle_threads: u64, live: usize) -> Duration {
    let started = Instant::now();
    let spare = 8;
    while hound.status().threads > idle_threads + live as u64 + spare
        && started.elapsed() < Duration::from_secs(8)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// Threads, descriptors and RSS per open socket over the idle figures in `base`: one info row,
/// or (`flood` = the number asked for) one row per target.
fn footprint(
    hound: &Hound,
    report: &mut Report,
    (base, base_fds): (procs::ProcStatus, usize),
    live: usize,
    flood: Option<usize>,
) {
    let settled = settle_threads(hound, base.threads, live);
    let now = hound.status();
    let fds = procs::fd_count(hound.pid());
    let per = |total: f64, idle: f64| (total - idle) / live.max(1) as f64;
    let threads = per(now.threads as f64, base.threads as f64);
    let descriptors = per(fds as f64, base_fds as f64);
    let rss_kib = per(now.rss_bytes as f64, base.rss_bytes as f64) / KIB as f64;
    let sockets = stats::thousands(live as u64);
    let Some(wanted) = flood else {
        report.info(
            "4",
            format!("Per idle monitor socket, {sockets} sockets: threads, descriptors, RSS"),
            format!(
                "{threads:.2} threads, {descriptors:.2} descriptors, {rss_kib:.1} KiB over the \
                 {} idle ({} threads, {fds} descriptors, {} in all; measured {:.1} s after \
                 opening)",
                stats::mib(base.rss_bytes),
                now.threads,
                stats::mib(now.rss_bytes),
                settled.as_secs_f64()
            ),
        );
        return;
    };
    let of = if live < wanted {
        format!(" (of {} asked for)", stats::thousands(wanted as u64))
    } else {
        String::new()
    };
    // A few threads come and go on their own (tiny_http's spare connection threads), hence
    // the small allowance over the exact targets.
    for (what, hound_text, target, met) in [
        (
            "threads",
            format!(
                "{threads:.2} ({} threads in all, {:.1} s after opening)",
                now.threads,
                settled.as_secs_f64()
            ),
            "1 thread",
            threads <= 1.01,
        ),
        (
            "descriptors",
            format!("{descriptors:.2} ({fds} descriptors in all)"),
            "≤ 2 descriptors",
            descriptors <= 2.01,
        ),
        (
            "RSS over the idle figure",
            format!(
                "{rss_kib:.1} KiB ({} in all, {} idle)",
                stats::mib(now.rss_bytes),
                stats::mib(base.rss_bytes)
            ),
            "≤ 24 KiB",
            rss_kib <= 24.0,
        ),
    ] {
        report.row(Row {
            section: "4",
            what: format!("Per idle monitor socket, {sockets} sockets{of}: {what}"),
            hound: hound_text,
            baseline: String::new(),
            ratio: String::new(),
            target: target.into(),
            verdict: Verdict::from(met && live > 0),
        });
    }
}

/// The port of a registration value: the `Addr` of hound's JSON (etcd's naming format), or a
/// plain 1.0 `ip:port`.
fn value_port(value: &str) -> Option<u32> {
    let addr = match serde_json::from_str::<serde_json::Value>(value) {
        Ok(json) => json["Addr"].as_str()?.to_owned(),
        Err(_) => value.to_owned(),
    };
    addr.rsplit(':').next()?.parse().ok()
}
