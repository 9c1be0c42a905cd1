//! Verifies hound at its limits: it serves again once a descriptor shortage is over, and it
//! answers 503 past `--max-connections` until connections close.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// How many descriptors the hound process has open.
fn open_descriptors(hound: &Hound) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", hound.pid()))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Whether `GET /healthz` gets a 200 within `within`.
fn served(hound: &Hound, within: Duration) -> bool {
    try_request_within(hound.addr(), "GET", "/healthz", &[], b"", within)
        .is_ok_and(|response| response.status == 200)
}

/// hound limited to `limit` descriptors (soft and hard, so it cannot raise it) runs out of
/// them under idle connections, and serves again within a few seconds of their closing; a
/// socket opened before carries on. An even and an odd limit: when connections cost two
/// descriptors they covered both ways of running out (none left for `accept`, or none for
/// what follows it); at one each they check the count does not matter.
fn serves_again_after_running_out_of_descriptors(limit: usize) {
    let _w = watchdog();
    let etcd = Etcd::start();
    // A connection cap far above the limit, so the descriptors run out first.
    let hound = Hound::builder(&etcd)
        .fd_limit(limit as u64)
        .args(["--max-connections", "1000", "--log-level", "debug"])
        .start();
    let mut watcher = monitor_synced(&hound, &["api"]);

    // Idle connections each hold descriptors in hound until all are taken.
    let mut idle = Vec::new();
    while open_descriptors(&hound) < limit {
        assert!(
            idle.len() < 200,
            "hound holds only {} descriptors with {} idle connections",
            open_descriptors(&hound),
            idle.len()
        );
        idle.push(TcpStream::connect(hound.addr()).expect("connect"));
        // Let hound accept it before counting again.
        let before = Instant::now();
        while open_descriptors(&hound) < limit && before.elapsed() < Duration::from_millis(50) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // More wait in the listen backlog, to take any descriptor that comes free before the probe.
    for _ in 0..20 {
        idle.push(TcpStream::connect(hound.addr()).expect("connect"));
    }
    eprintln!(
        "descriptors (limit {limit}): all taken with {} connections open",
        idle.len()
    );
    assert!(
        !served(&hound, Duration::from_secs(1)),
        "hound answered without a free descriptor"
    );

    drop(idle);
    let freed = Instant::now();
    // The accept thread retries every 50 ms; a dead one would never serve again.
    poll_until(
        Duration::from_secs(10),
        "hound to answer /healthz again after the idle connections closed",
        || served(&hound, Duration::from_secs(1)),
    );
    eprintln!(
        "descriptors (limit {limit}): serving again {:?} after the connections closed",
        freed.elapsed()
    );
    // Everything works again, the socket opened before included.
    assert_eq!(hound.get("/version").status, 200);
    let _ws = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
}

#[test]
fn serves_again_after_running_out_of_an_even_number_of_descriptors() {
    serves_again_after_running_out_of_descriptors(64);
}

#[test]
fn serves_again_after_running_out_of_an_odd_number_of_descriptors() {
    serves_again_after_running_out_of_descriptors(65);
}

#[test]
fn past_max_connections_requests_get_503_until_some_close() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--max-connections", "5"]);
    let mut held: Vec<Ws> = (0..5).map(|_| monitor(&hound, &["api"])).collect();

    // A sixth connection is past the cap: a REST request and an upgrade both get 503.
    hound.get("/etcd/services").assert_error(503);
    match ws_connect(hound.addr(), &monitor_path(&["api"]), &[]) {
        Ok(_) => panic!("a sixth connection was upgraded past --max-connections 5"),
        Err(response) => response.assert_error(503),
    }
    assert_eq!(
        hound.metric("hound_sockets{kind=\"monitor\"}"),
        5.0,
        "nothing beyond the five held sockets"
    );

    // Closing two makes room again.
    close(held.pop().expect("a socket"));
    close(held.pop().expect("a socket"));
    poll_until(PROMPT, "requests to be served again", || {
        hound.get("/etcd/services").status == 200
    });
    held.push(monitor(&hound, &["api"]));
    assert_eq!(hound.get("/version").status, 200);
}

#[test]
fn quiet_websockets_outlive_the_http_idle_timeout() {
    let _w = watchdog();
    let etcd = Etcd::start();
    // HTTP connections quiet for 1 s are dropped; WebSockets are pinged every 15 s only, and
    // the idle timeout is not theirs to obey.
    let hound = Hound::start(&etcd, &["--idle-timeout", "1", "--ttl", "30"]);
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut own = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut own, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    // Three idle timeouts of silence both ways.
    expect_no_message(&mut watcher, Duration::from_secs(3));
    assert!(
        registered(&mut client, &hound, "api", "10.0.0.1:80"),
        "a quiet register socket was deregistered"
    );
    client.put(&hound.key("api", "10.0.0.2:80"), "10.0.0.2:80");
    let both = key_event("api", "PUT", &[("10.0.0.1", 80), ("10.0.0.2", 80)]);
    expect_message(&mut watcher, &both);
    expect_message(&mut own, &both);
}

/// Threads and resident memory of the hound process, from /proc.
fn threads_and_rss_kib(hound: &Hound) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", hound.pid()))
        .expect("hound's /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    (field("Threads:"), field("VmRSS:"))
}

/// Thousands of connections that send nothing: past the cap (plus its headroom for probes)
/// they are answered 503 at accept without a thread, so hound's threads stay bounded by the
/// cap; others are still answered, and once the silent ones time out, served again.
#[test]
fn silent_connections_past_the_cap_are_refused_at_accept_without_a_thread() {
    let _w = watchdog();
    raise_own_fd_limit();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--max-connections", "100", "--idle-timeout", "2"]);
    let (idle_threads, _) = threads_and_rss_kib(&hound);
    // The cap, and the headroom hound keeps past it for /healthz and /metrics: 32 + 100 / 32.
    let hard_cap = 100 + 35;
    let mut silent: Vec<TcpStream> = (0..5_000)
        .map(|_| TcpStream::connect(hound.addr()).expect("connect"))
        .collect();
    // Those past the hard cap get a 503 straight away; read each answer (bounded wait).
    let mut refused = 0;
    for stream in &mut silent {
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut answer = [0u8; 64];
        if let Ok(n) = stream.read(&mut answer)
            && answer[..n].starts_with(b"HTTP/1.1 503")
        {
            refused += 1;
        }
        if refused + hard_cap >= 5_000 {
            break;
        }
    }
    let (threads, _) = threads_and_rss_kib(&hound);
    eprintln!("5,000 silent connections: {refused} refused at accept, {threads} threads");
    assert!(
        refused + hard_cap + 10 >= 5_000,
        "only {refused} of the 5,000 silent connections were refused at accept"
    );
    assert!(
        threads <= idle_threads + hard_cap + 10,
        "hound runs {threads} threads ({idle_threads} idle) for 5,000 silent connections"
    );
    // Others still get an answer: a 503 at accept while the silent ones hold the cap.
    let answer = try_request_within(hound.addr(), "GET", "/healthz", &[], b"", PROMPT)
        .expect("an answer while silent connections hold the cap");
    assert!(matches!(answer.status, 200 | 503), "{answer:?}");
    // The silent ones time out (--idle-timeout 2): hound serves again.
    poll_until(
        Duration::from_secs(10),
        "hound to serve /healthz once the silent connections timed out",
        || served(&hound, Duration::from_secs(1)),
    );
    drop(silent);
}

/// Header lines that never end: tiny_http used to buffer them without limit (1.3 GB in 6.5 s
/// from one connection). Each connection is answered 431 or cut as soon as its head passes
/// 16 KiB, and hound's memory stays flat with 20 at once.
#[test]
fn endless_header_lines_are_cut_at_16_kib_and_memory_stays_flat() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &[]);
    let (_, rss_before) = threads_and_rss_kib(&hound);
    let chunk = vec![b'a'; 64 * 1024];
    let sent_per_connection: Vec<usize> = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..20)
            .map(|_| {
                scope.spawn(|| {
                    let mut stream = TcpStream::connect(hound.addr()).expect("connect");
                    stream
                        .set_write_timeout(Some(Duration::from_secs(2)))
                        .expect("timeout");
                    let mut sent = 0;
                    if stream.write_all(b"GET / HTTP/1.1\r\nX-Endless: ").is_err() {
                        return sent;
                    }
                    // At most 8 MiB each: far more than any buffer on the way holds.
                    while sent < 8 * 1024 * 1024 {
                        match stream.write(&chunk) {
                            Ok(n) => sent += n,
                            Err(_) => break,
                        }
                    }
                    sent
                })
            })
            .collect();
        senders
            .into_iter()
            .map(|sender| sender.join().expect("sender"))
            .collect()
    });
    let (_, rss_after) = threads_and_rss_kib(&hound);
    eprintln!(
        "endless headers: bytes taken per connection {sent_per_connection:?}; RSS {rss_before} \
         -> {rss_after} KiB"
    );
    assert!(
        sent_per_connection
            .iter()
            .all(|&sent| sent < 8 * 1024 * 1024),
        "hound kept reading an endless header line: {sent_per_connection:?}"
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "hound's memory grew from {rss_before} to {rss_after} KiB"
    );
    assert_responsive(&mut hound);
}

/// The cap counts each connection once, exactly: with `--max-connections 3`, two idle
/// keep-alive connections and a request make three (served), a third idle one makes the request
/// the fourth (503). 1.0 counted an HTTP connection twice, and only every 200 ms.
#[test]
fn max_connections_counts_each_connection_once() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--max-connections", "3"]);
    // A connection that was answered once and stays open, idle: surely counted. Its status
    // with it: a connection answered just before counts until hound has dropped it.
    let keep_alive = || {
        let mut stream = TcpStream::connect(hound.addr()).expect("connect");
        let request = format!("GET /version HTTP/1.1\r\nHost: {}\r\n\r\n", hound.addr());
        stream.write_all(request.as_bytes()).expect("write");
        stream.set_read_timeout(Some(PROMPT)).expect("timeout");
        let answer = read_response(&mut stream).expect("an answer");
        (answer.status, stream)
    };
    let mut idle = Vec::new();
    for n in 1..=3 {
        let deadline = Instant::now() + PROMPT;
        loop {
            let (status, stream) = keep_alive();
            if status == 200 {
                idle.push(stream);
                break;
            }
            assert_eq!(status, 503, "connection {n}");
            assert!(Instant::now() < deadline, "connection {n} never served");
            thread::sleep(Duration::from_millis(20));
        }
    }
    hound.get("/etcd/services").assert_error(503);
    drop(idle);
    poll_until(PROMPT, "a request once the idle connections closed", || {
        hound.get("/etcd/services").status == 200
    });
}

/// With no thread to be had for a new connection (a low process limit), tiny_http 0.12
/// panicked holding its queue's lock, which killed every pool thread and the accept thread:
/// the port refused connections for good. Now the connection is dropped and hound serves again
/// as soon as threads are free. (hound runs as `nobody` here: root ignores RLIMIT_NPROC.)
#[test]
fn running_out_of_threads_costs_connections_not_the_port() {
    let _w = watchdog();
    let port = free_port();
    /// Kills the hound however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _hound = Killed(
        std::process::Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "prlimit",
            ])
            .args(["--nproc=40:40", "--", env!("CARGO_BIN_EXE_hound")])
            .args([
                "--embedded",
                "-p",
                &port.to_string(),
                "--log-level",
                "error",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("setpriv and prlimit (util-linux)"),
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let healthy = |within| {
        try_request_within(addr, "GET", "/healthz", &[], b"", within)
            .is_ok_and(|answer| answer.status == 200)
    };
    poll_until(PROMPT, "hound to start", || {
        healthy(Duration::from_millis(500))
    });
    // Each idle connection holds a thread: far more than 40 are asked for.
    let idle: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(idle);
    poll_until(
        Duration::from_secs(10),
        "hound to serve again once its threads were free",
        || healthy(Duration::from_secs(1)),
    );
}

/// One connection that pipelines requests and never reads the answers: 0.12 read them all
/// ahead into an unbounded queue (1.85 GB in 10 s) and tied up every HTTP worker. Now a
/// connection's next request is read only once the previous one is answered.
#[test]
fn a_client_that_pipelines_and_never_reads_costs_hound_nothing() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &[]);
    let (_, rss_before) = threads_and_rss_kib(&hound);
    let mut greedy = TcpStream::connect(hound.addr()).expect("connect");
    greedy.set_nonblocking(true).expect("non-blocking");
    let requests = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(1000);
    let until = Instant::now() + Duration::from_secs(3);
    let mut sent = 0;
    while Instant::now() < until && sent < 64 * 1024 * 1024 {
        match greedy.write(requests.as_bytes()) {
            Ok(n) => sent += n,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    assert_responsive(&mut hound);
    let (_, rss_after) = threads_and_rss_kib(&hound);
    eprintln!("pipelining: {sent} bytes of requests sent; RSS {rss_before} -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 8 * 1024,
        "hound's memory grew from {rss_before} to {rss_after} KiB"
    );
}
