//! Verifies hound at its limits: it serves again once a descriptor shortage is over, and it
//! answers 503 past `--max-connections` until connections close.

use std::net::TcpStream;
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
/// socket opened before carries on. Each HTTP connection costs hound two descriptors, so an
/// even and an odd limit between them cover both ways of running out: no descriptor left for
/// `accept`, or one left for `accept` and none for what follows it.
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
