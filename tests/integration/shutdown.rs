//! Verifies graceful shutdown: on SIGTERM or SIGINT hound deregisters its nodes (others see
//! DELETE), closes its sockets with 1001 and exits 0 within 5 s, even with etcd gone.

use std::time::Duration;

use crate::support::*;

/// The contract's 5 s plus a little slack for a loaded test machine.
const EXIT_LIMIT: Duration = Duration::from_millis(5500);

fn shutdown_deregisters_and_closes(signal: libc::c_int) {
    let etcd = Etcd::start();
    let mut leaving = Hound::start(&etcd, &["--ttl", "30"]);
    let staying = Hound::builder(&etcd).namespaces_of(&leaving).start();
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&staying, &["api"]);
    let mut registered_socket = register(&leaving, "api", "10.0.0.1", 80);
    expect_message(
        &mut registered_socket,
        &key_event("api", "SYNC", &[("10.0.0.1", 80)]),
    );
    let mut monitor_socket = monitor_synced(&leaving, &["api"]);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));

    let (status, took) = leaving.stop_with(signal, EXIT_LIMIT);
    assert_eq!(status.code(), Some(0), "exit status after signal {signal}");
    assert!(took <= EXIT_LIMIT, "took {took:?}");

    // Deregistered explicitly: DELETE, not a wait for the 30 s TTL.
    expect_message(&mut watcher, &key_event("api", "DELETE", &[]));
    assert!(!registered(&mut client, &leaving, "api", "10.0.0.1:80"));
    assert_eq!(
        read_close(&mut registered_socket, PROMPT).map(|(code, _)| code),
        Some(1001),
        "register socket close code"
    );
    assert_eq!(
        read_close(&mut monitor_socket, PROMPT).map(|(code, _)| code),
        Some(1001),
        "monitor socket close code"
    );
    assert_eq!(staying.get("/healthz").status, 200);
}

#[test]
fn sigterm_deregisters_closes_sockets_and_exits_0() {
    let _w = watchdog();
    shutdown_deregisters_and_closes(libc::SIGTERM);
}

#[test]
fn sigint_deregisters_closes_sockets_and_exits_0() {
    let _w = watchdog();
    shutdown_deregisters_and_closes(libc::SIGINT);
}

#[test]
fn sigterm_with_etcd_paused_still_exits_0_in_time() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut ws, PROMPT);
    etcd.pause();
    let (status, took) = hound.terminate(EXIT_LIMIT);
    etcd.resume();
    assert_eq!(status.code(), Some(0), "exit status with etcd paused");
    assert!(took <= EXIT_LIMIT, "took {took:?}");
}

#[test]
fn sigterm_with_etcd_killed_still_exits_0_in_time() {
    let _w = watchdog();
    let mut etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut ws, PROMPT);
    etcd.kill();
    let (status, took) = hound.terminate(EXIT_LIMIT);
    assert_eq!(status.code(), Some(0), "exit status with etcd killed");
    assert!(took <= EXIT_LIMIT, "took {took:?}");
    assert_eq!(
        read_close(&mut ws, PROMPT).map(|(code, _)| code),
        Some(1001),
        "sockets are closed with 1001 even without etcd"
    );
}

#[test]
fn sigterm_while_idle_exits_0() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &[]);
    let (status, took) = hound.terminate(EXIT_LIMIT);
    assert_eq!(status.code(), Some(0));
    assert!(
        took <= Duration::from_secs(2),
        "an idle hound exits fast: {took:?}"
    );
}
