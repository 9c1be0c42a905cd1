//! Section 6, discovery without a WebSocket: DNS queries/s and latency with dnsperf against
//! hound and against BIND 9 serving the same records in the same run, how soon a change seen by
//! a monitor socket is in DNS answers, and what an event stream costs per client next to a
//! monitor socket.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::etcd::EtcdClient;
use crate::procs::{self, Etcd, Hound};
use crate::report::{Report, Row, Verdict};
use crate::stats::{self, Samples, triple};
use crate::{KIB, Options, PROMPT, settle_threads, ws};

/// hound's key prefix for this section's registrations.
const NAMESPACE: &str = "bench-dns";
/// Nodes of the benchmarked service: 8 A records, 8 SRV records with 8 addresses as glue.
const NODES: u8 = 8;
/// The queries dnsperf sends, in turn: a plain address lookup and an SRV lookup.
const QUERIES: &str = "api.service.hound A\n_api._tcp.service.hound SRV\n";
/// dnsperf's clients (sockets), threads and outstanding queries.
const DNSPERF_CLIENTS: &str = "8";
const DNSPERF_THREADS: &str = "2";
const DNSPERF_OUTSTANDING: &str = "200";

/// `$HOUND_BENCH_NAMED`, else `named` on PATH or in /usr/sbin (Debian's bind9).
fn named_binary() -> PathBuf {
    tool("HOUND_BENCH_NAMED", "named", &["/usr/sbin/named"])
}

/// `$HOUND_BENCH_DNSPERF`, else `dnsperf` on PATH (Debian's dnsperf).
fn dnsperf_binary() -> PathBuf {
    tool("HOUND_BENCH_DNSPERF", "dnsperf", &[])
}

fn tool(var: &str, name: &str, also: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    also.iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The zone BIND serves: the records hound answers from its mirror for the same nodes.
fn zone_file() -> String {
    let mut zone = String::from(
        "$TTL 0\n@ IN SOA ns.hound. admin.hound. 1 3600 600 86400 0\n@ IN NS ns.hound.\n\
         ns IN A 127.0.0.1\n",
    );
    for n in 1..=NODES {
        zone.push_str(&format!("api.service IN A 10.0.0.{n}\n"));
    }
    for owner in ["api.service", "_api._tcp.service"] {
        for n in 1..=NODES {
            zone.push_str(&format!("{owner} IN SRV 1 1 8080 10-0-0-{n}.addr\n"));
        }
    }
    for n in 1..=NODES {
        zone.push_str(&format!("10-0-0-{n}.addr IN A 10.0.0.{n}\n"));
    }
    zone
}

/// BIND 9 on a free loopback port, serving [`zone_file`]; killed on drop.
struct Named {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Named {
    fn start() -> Result<Named, String> {
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        let port = procs::free_port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(dir.path().join("hound.zone"), zone_file()).map_err(|e| e.to_string())?;
        // Authoritative only, no control channel, no authority section in answers (hound sends
        // none), the targets' addresses as additional records (hound sends them too).
        let config = format!(
            "options {{\n  directory \"{dir}\";\n  pid-file \"{pid}\";\n  \
             listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n  \
             recursion no;\n  dnssec-validation no;\n  notify no;\n  \
             minimal-responses no-auth;\n  allow-query {{ any; }};\n}};\n\
             controls {{ }};\n\
             zone \"hound.\" {{ type primary; file \"{zone}\"; }};\n",
            dir = dir.path().display(),
            pid = path("named.pid"),
            zone = path("hound.zone"),
        );
        let conf = dir.path().join("named.conf");
        std::fs::write(&conf, config).map_err(|err| err.to_string())?;
        let mut command = Command::new(named_binary());
        command
            .args(["-g", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = procs::spawn(command).map_err(|err| {
            format!(
                "cannot run {}: {err} (Debian's bind9)",
                named_binary().display()
            )
        })?;
        let named = Named {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        wait_for_answers(named.addr, "api.service.hound.", usize::from(NODES))?;
        Ok(named)
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks `server` for the A records of `name` once; the addresses it answers.
fn query_a(socket: &UdpSocket, server: SocketAddr, name: &str, id: u16) -> Option<Vec<String>> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    socket.send_to(&message.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let (len, _) = socket.recv_from(&mut buf).ok()?;
        let answer = Message::from_vec(&buf[..len]).ok()?;
        if answer.metadata.id != id {
            continue;
        }
        return Some(
            answer
                .answers
                .iter()
                .filter_map(|record| match &record.data {
                    RData::A(a) => Some(a.0.to_string()),
                    _ => None,
                })
                .collect(),
        );
    }
    None
}

/// Polls `server` until `name` has `count` A records.
fn wait_for_answers(server: SocketAddr, name: &str, count: usize) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|err| err.to_string())?;
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 1u16;
    while Instant::now() < deadline {
        id = id.wrapping_add(1);
        if query_a(&socket, server, name, id).is_some_and(|ips| ips.len() == count) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "{server} did not answer {count} A records for {name} within 10 s"
    ))
}

/// What one dnsperf run reported.
#[derive(Debug, Default)]
struct DnsPerf {
    qps: f64,
    sent: u64,
    lost: u64,
    /// Each answered query's latency (only with `verbose`).
    latencies: Samples,
}

/// Runs dnsperf against `server` for `seconds`, at most `max_qps` if given; `verbose` keeps
/// every query's latency.
fn dnsperf(
    server: SocketAddr,
    queries: &Path,
    seconds: u64,
    max_qps: Option<u64>,
    verbose: bool,
) -> Result<DnsPerf, String> {
    let mut command = Command::new(dnsperf_binary());
    command
        .args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
        ])
        .arg("-d")
        .arg(queries)
        .args(["-l", &seconds.to_string(), "-c", DNSPERF_CLIENTS])
        .args(["-T", DNSPERF_THREADS, "-q", DNSPERF_OUTSTANDING]);
    if let Some(qps) = max_qps {
        command.args(["-Q", &qps.to_string()]);
    }
    if verbose {
        command.arg("-v");
    }
    let output = command.stdin(Stdio::null()).output().map_err(|err| {
        format!(
            "cannot run {}: {err} (Debian's dnsperf)",
            dnsperf_binary().display()
        )
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let number = |label: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<f64>().ok())
    };
    let qps = number("Queries per second:")
        .ok_or_else(|| format!("dnsperf printed no rate: {}", stats_tail(&text)))?;
    let latencies = text
        .lines()
        .filter(|line| line.starts_with("> "))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .collect();
    Ok(DnsPerf {
        qps,
        sent: number("Queries sent:").unwrap_or(0.0) as u64,
        lost: number("Queries lost:").unwrap_or(0.0) as u64,
        latencies: Samples::new(latencies),
    })
}

fn stats_tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("> ")).collect();
    lines[lines.len().saturating_sub(12)..].join(" / ")
}

/// Where hound answers DNS, from its log.
fn dns_addr(hound: &Hound) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + PROMPT;
    while Instant::now() < deadline {
        let log = hound.stderr();
        let found = log
            .lines()
            .find(|line| line.contains("answering DNS for"))
            .and_then(|line| {
                line.split(" on ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            });
        if let Some(addr) = found {
            return Ok(addr);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("hound did not log its DNS address".into())
}

/// Section 6: DNS against BIND, and how soon a change is in DNS.
pub fn dns(
    options: &Options,
    etcd: &Etcd,
    writer: &EtcdClient,
    report: &mut Report,
) -> Result<(), String> {
    let (hound, _) = Hound::start_with(&etcd.url(), NAMESPACE, 0, &["--dns-port", "0"])?;
    let hound_dns = dns_addr(&hound)?;
    eprintln!(
        "hound-bench: DNS hound on {hound_dns} (pid {})",
        hound.pid()
    );
    let nodes: Vec<(String, String)> = (1..=NODES)
        .map(|n| {
            let node = format!("10.0.0.{n}:8080");
            (format!("{NAMESPACE}/api/{node}"), node)
        })
        .collect();
    writer.put_many(&nodes)?;
    wait_for_answers(hound_dns, "api.service.hound.", usize::from(NODES))?;
    let named = Named::start()?;
    eprintln!(
        "hound-bench: BIND 9 on {} (pid {})",
        named.addr,
        named.child.id()
    );

    let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, QUERIES).map_err(|err| err.to_string())?;
    let seconds = options.pick(10, 3);
    // BIND first, then hound, each alone on the machine with the same dnsperf.
    let bind = dnsperf(named.addr, &queries, seconds, None, false)?;
    let ours = dnsperf(hound_dns, &queries, seconds, None, false)?;
    let ratio = ours.qps / bind.qps.max(1.0);
    report.row(Row {
        section: "6",
        what: format!(
            "DNS queries/s, dnsperf at full speed ({seconds} s, UDP, A and SRV in turn, {} \
             clients on {} threads, {} outstanding); baseline BIND 9 with the same records",
            DNSPERF_CLIENTS, DNSPERF_THREADS, DNSPERF_OUTSTANDING
        ),
        hound: format!(
            "{} ({} lost of {})",
            stats::rate(ours.qps),
            ours.lost,
            stats::thousands(ours.sent)
        ),
        baseline: format!("{} ({} lost)", stats::rate(bind.qps), bind.lost),
        ratio: format!("{ratio:.2}×"),
        target: "≥ 0.5 × BIND".into(),
        verdict: Verdict::from(ratio >= 0.5 && ours.lost <= ours.sent / 1000),
    });

    // Latency at half of BIND's rate, every query timed by dnsperf.
    let rate = (bind.qps * 0.5) as u64;
    let paced = options.pick(5, 2);
    let ours_paced = dnsperf(hound_dns, &queries, paced, Some(rate), true)?;
    let bind_paced = dnsperf(named.addr, &queries, paced, Some(rate), true)?;
    report.row(Row {
        section: "6",
        what: format!(
            "DNS latency at {} (0.5 × BIND's rate), p50 / p99 / max over {} queries",
            stats::rate(rate as f64),
            stats::thousands(ours_paced.latencies.len() as u64)
        ),
        hound: format!(
            "{} ({} lost)",
            triple(&ours_paced.latencies),
            ours_paced.lost
        ),
        baseline: format!(
            "{} ({} lost)",
            triple(&bind_paced.latencies),
            bind_paced.lost
        ),
        ratio: format!(
            "p99 {:.2}×",
            stats::ratio(ours_paced.latencies.p99(), bind_paced.latencies.p99())
        ),
        target: "p99 ≤ 2 ms".into(),
        verdict: Verdict::from(
            !ours_paced.latencies.is_empty()
                && ours_paced.latencies.p99() <= Duration::from_millis(2)
                && ours_paced.lost <= ours_paced.sent / 1000,
        ),
    });
    drop(named);

    change_latency(options, &hound, hound_dns, writer, report)
}

/// How long after a monitor socket receives a change DNS answers with it.
fn change_latency(
    options: &Options,
    hound: &Hound,
    server: SocketAddr,
    writer: &EtcdClient,
    report: &mut Report,
) -> Result<(), String> {
    let mut monitor = ws::connect(hound.addr(), "/etcd/monitor?monitor=chg", PROMPT)?;
    ws::read_text(&mut monitor, PROMPT)?;
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|err| err.to_string())?;
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let rounds = options.pick(200, 30);
    let mut samples = Vec::with_capacity(rounds);
    let mut queries = 0u64;
    for round in 0..rounds {
        let ip = format!("10.2.{}.{}", round / 250, round % 250 + 1);
        writer.put(&format!("{NAMESPACE}/chg/node"), &format!("{ip}:80"))?;
        let quoted = format!("\"{ip}\"");
        loop {
            let text = ws::read_text(&mut monitor, PROMPT)?;
            if text.contains(&quoted) {
                break;
            }
        }
        let seen = Instant::now();
        let deadline = seen + Duration::from_secs(1);
        loop {
            queries += 1;
            let id = (queries % 65_536) as u16;
            if query_a(&socket, server, "chg.service.hound.", id)
                .is_some_and(|ips| ips == [ip.clone()])
            {
                samples.push(seen.elapsed());
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "DNS did not answer {ip} within 1 s of the monitor socket"
                ));
            }
        }
    }
    let samples = Samples::new(samples);
    report.row(Row {
        section: "6",
        what: format!(
            "DNS change latency: a monitor socket receives the PUT → the first DNS answer with it, \
             p50 / p99 / max over {rounds} changes ({queries} queries)"
        ),
        hound: triple(&samples),
        baseline: String::new(),
        ratio: String::new(),
        target: "≤ 10 ms".into(),
        verdict: Verdict::from(samples.max() <= Duration::from_millis(10)),
    });
    Ok(())
}

/// Opens an event stream on `/etcd/watch` and reads up to its first event (the SYNC).
fn open_event_stream(addr: SocketAddr) -> Result<BufReader<TcpStream>, String> {
    let mut stream = TcpStream::connect_timeout(&addr, PROMPT).map_err(|err| err.to_string())?;
    let _ = stream.set_read_timeout(Some(PROMPT));
    write!(
        stream,
        "GET /etcd/watch?monitor=cost HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .map_err(|err| err.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    for _ in 0..32 {
        line.clear();
        if reader.read_line(&mut line).map_err(|err| err.to_string())? == 0 {
            return Err("the stream ended before its SYNC".into());
        }
        if line.starts_with("data: ") && line.contains("SYNC") {
            return Ok(reader);
        }
    }
    Err("no SYNC in the stream's first lines".into())
}

/// Threads, descriptors and RSS per client of `kind` over an idle hound's, with `count` open.
fn per_client_cost(
    etcd: &Etcd,
    count: usize,
    open: impl Fn(SocketAddr) -> Result<Box<dyn std::any::Any>, String>,
) -> Result<(f64, f64, f64), String> {
    let (hound, _) = Hound::start_with(&etcd.url(), "bench-cost", 0, &[])?;
    std::thread::sleep(Duration::from_millis(300));
    let base = hound.status();
    let base_fds = procs::fd_count(hound.pid());
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(open(hound.addr())?);
    }
    settle_threads(&hound, base.threads, count);
    let now = hound.status();
    let fds = procs::fd_count(hound.pid());
    let per = |total: f64, idle: f64| (total - idle) / count as f64;
    let cost = (
        per(now.threads as f64, base.threads as f64),
        per(fds as f64, base_fds as f64),
        per(now.rss_bytes as f64, base.rss_bytes as f64) / KIB as f64,
    );
    drop(clients);
    Ok(cost)
}

/// Section 6: an event stream's cost per client next to a monitor socket's, each on a fresh
/// hound.
pub fn event_stream_cost(
    options: &Options,
    etcd: &Etcd,
    report: &mut Report,
) -> Result<(), String> {
    let count = options.pick(1_000, 200);
    let streams = per_client_cost(etcd, count, |addr| {
        open_event_stream(addr).map(|s| Box::new(s) as Box<dyn std::any::Any>)
    })?;
    let sockets = per_client_cost(etcd, count, |addr| {
        let mut socket = ws::connect(addr, "/etcd/monitor?monitor=cost", PROMPT)?;
        ws::read_text(&mut socket, PROMPT)?;
        Ok(Box::new(socket) as Box<dyn std::any::Any>)
    })?;
    let show = |(threads, fds, rss): (f64, f64, f64)| {
        format!("{threads:.2} threads, {fds:.2} descriptors, {rss:.1} KiB")
    };
    // RSS moves by a page here and there between runs: half a KiB per client is noise.
    let met = streams.0 <= sockets.0 + 0.01
        && streams.1 <= sockets.1 + 0.01
        && streams.2 <= sockets.2 + 0.5;
    report.row(Row {
        section: "6",
        what: format!(
            "Per idle event stream (`/etcd/watch`), {} streams; baseline: per idle monitor \
             socket, as many, each on a fresh hound",
            stats::thousands(count as u64)
        ),
        hound: show(streams),
        baseline: show(sockets),
        ratio: format!("RSS {:.2}×", streams.2 / sockets.2.max(0.1)),
        target: "≤ a monitor socket".into(),
        verdict: Verdict::from(met),
    });
    Ok(())
}
