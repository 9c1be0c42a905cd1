//! Verifies that hound takes over every WebSocket of a flood: 1,000 monitor sockets opened at
//! once by one client (every connect and handshake in flight together) while two busy loops
//! load both cores each get their SYNC and then a later change, none is closed, and hound still
//! answers `/healthz` afterwards.

use std::time::{Duration, Instant};

use crate::support::*;

/// Monitor sockets opened at once.
const SOCKETS: usize = 1_000;
/// What hound needs for them: three descriptors per WebSocket today (two after the takeover is
/// reworked), plus the 256 it keeps back, with room to spare.
const HOUND_FDS: u64 = 4_096;
/// Opening all of them on two loaded cores takes a few seconds; a socket that has no SYNC by
/// then never will.
const OPEN_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn a_thousand_monitors_opened_at_once_on_busy_cores_all_get_their_sync() {
    let _w = watchdog_for(Duration::from_secs(120));
    let soft = raise_own_fd_limit();
    assert!(
        soft >= SOCKETS as u64 + 256,
        "this test holds {SOCKETS} sockets but may open only {soft} descriptors"
    );
    let etcd = Etcd::start();
    let mut builder = Hound::builder(&etcd);
    if fd_limits().1 < HOUND_FDS {
        // Raising a hard limit needs root (which the tests run as); hound then raises its soft
        // limit to it.
        builder = builder.fd_limit(HOUND_FDS);
    }
    let hound = builder.start();
    let mut client = etcd.client();
    let service = "flood";

    let load = BusyLoops::start(2);
    let mut pool = Pool::new(2);
    let opened = pool.open(
        hound.addr(),
        &monitor_path(&[service]),
        SOCKETS,
        OPEN_WITHIN,
    );
    eprintln!(
        "flood: {} of {SOCKETS} sockets got their SYNC in {:?}",
        opened.opened, opened.elapsed
    );
    let not_found = if opened.opened == SOCKETS {
        Vec::new()
    } else {
        hound_errors_about_descriptors(&hound, opened.failed)
    };
    assert_eq!(
        opened.opened,
        SOCKETS,
        "{} of {SOCKETS} monitor sockets opened at once got no SYNC; by kind: {}; first errors: \
         {:#?}; hound logged {} × `no socket … among our descriptors` (first: {:?})",
        opened.failed,
        opened.failure_summary(),
        opened.first_errors,
        not_found.len(),
        not_found.first()
    );

    // Each socket is wired to its own connection: a change reaches every one of them.
    let probe: u16 = 4242;
    pool.arm(probe, SOCKETS);
    client.put(
        &hound.key(service, &format!("10.0.0.9:{probe}")),
        &format!("10.0.0.9:{probe}"),
    );
    if let ProbeResult::Partial { received, expected } = pool.wait(Duration::from_secs(20)) {
        panic!(
            "only {received} of {expected} sockets received the PUT within 20 s; {} were \
             closed (first: {:?})",
            pool.lost(),
            pool.first_loss()
        );
    }
    assert_eq!(
        pool.lost(),
        0,
        "sockets were closed after their SYNC; first: {:?}",
        pool.first_loss()
    );

    drop(load);
    let health = hound.get("/healthz");
    assert_eq!(health.status, 200, "/healthz after the flood: {health:?}");
    pool.close_all();
}

/// hound's `no socket from … among our descriptors` lines, waiting up to 2 s for `expected` of
/// them: hound logs them just before it drops the connection, and its log is read by a thread
/// that the busy loops slow down.
fn hound_errors_about_descriptors(hound: &Hound, expected: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let lines: Vec<String> = hound
            .stderr()
            .lines()
            .filter(|line| line.contains("among our descriptors"))
            .map(str::to_owned)
            .collect();
        if lines.len() >= expected || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
