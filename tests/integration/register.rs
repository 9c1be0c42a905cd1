//! Verifies `/etcd/register`: the key and lease in etcd, the first SYNC, PUT/DELETE/EXPIRE as
//! others see them, takeover, double subscription, IPv6 and host names, and dead clients.

use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn first_message_is_sync_with_own_node_and_key_is_written() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut client = etcd.client();
    let mut ws = register(&hound, "api", "10.0.0.1", 8080);

    // Read-your-writes: everything holds as soon as the handshake is done, without polling.
    let entry = client
        .get(&hound.key("api", "10.0.0.1:8080"))
        .expect("key is in etcd right after the handshake");
    assert_eq!(entry.value, "10.0.0.1:8080");
    assert_ne!(entry.lease, 0, "the key is attached to a lease");
    assert_eq!(client.lease_granted_ttl(entry.lease), Some(30));
    assert_eq!(hound.nodes("api"), pairs(&[("10.0.0.1", 8080)]));
    assert_eq!(hound.services(), ["api"]);

    expect_message(&mut ws, &key_event("api", "SYNC", &[("10.0.0.1", 8080)]));
    // Its own PUT is not sent again.
    expect_no_message(&mut ws, QUIET);
}

#[test]
fn sync_lists_nodes_already_there() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let _first = register(&hound, "api", "10.0.0.2", 80);
    let mut second = register(&hound, "api", "10.0.0.1", 80);
    expect_message(
        &mut second,
        &key_event("api", "SYNC", &[("10.0.0.1", 80), ("10.0.0.2", 80)]),
    );
    expect_no_message(&mut second, QUIET);
}

#[test]
fn a_monitor_sees_put_then_delete_when_the_socket_closes() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut client = etcd.client();
    let mut watcher = monitor(&hound, &["api"]);
    expect_message(&mut watcher, &key_event("api", "SYNC", &[]));

    let ws = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));

    close(ws);
    // Deregistration is explicit, long before the 30 s TTL could run out.
    let message = next_json(&mut watcher, PROMPT);
    assert_eq!(message, key_event("api", "DELETE", &[]));
    poll_until(PROMPT, "the key to be gone", || {
        !registered(&mut client, &hound, "api", "10.0.0.1:80")
    });
    assert_eq!(hound.nodes("api"), Vec::<(String, u16)>::new());
    expect_no_message(&mut watcher, QUIET);
}

#[test]
fn a_client_that_vanishes_is_deregistered() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&hound, &["api"]);
    let ws = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    vanish(ws);
    expect_message(&mut watcher, &key_event("api", "DELETE", &[]));
    assert!(!registered(&mut client, &hound, "api", "10.0.0.1:80"));
}

#[test]
fn a_client_that_stops_answering_pings_is_dropped_and_deregistered_within_three_intervals() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "30", "--ping-interval", "1"]);
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&hound, &["api"]);
    // Never read from this socket until the end, so it never answers a ping: to hound it is a
    // peer that vanished without a FIN. The handshake is the last thing it sent.
    let mut silent = register(&hound, "api", "10.0.0.1", 80);
    let opened = Instant::now();
    assert!(registered(&mut client, &hound, "api", "10.0.0.1:80"));
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    // The watcher reads, and so answers pings: it must outlive the silent one.
    let message = next_json(&mut watcher, Duration::from_secs(10));
    let took = opened.elapsed();
    assert_eq!(message, key_event("api", "DELETE", &[]));
    eprintln!("dead peer: deregistered {took:?} after its last frame (ping interval 1 s)");
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_millis(4500),
        "a peer silent since its handshake must be dropped 2-3 ping intervals later, not after \
         {took:?}"
    );
    assert!(!registered(&mut client, &hound, "api", "10.0.0.1:80"));
    // hound dropped the connection without a close frame (after what it had sent: the SYNC
    // and its pings).
    assert_eq!(
        read_close(&mut silent, PROMPT),
        None,
        "the silent socket ends without a close frame"
    );
    expect_no_message(&mut watcher, QUIET);
}

#[test]
fn the_registering_socket_gets_changes_of_its_service() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut own = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut own, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    let other = register(&hound, "api", "10.0.0.2", 80);
    expect_message(
        &mut own,
        &key_event("api", "PUT", &[("10.0.0.1", 80), ("10.0.0.2", 80)]),
    );
    close(other);
    expect_message(&mut own, &key_event("api", "DELETE", &[("10.0.0.1", 80)]));
}

#[test]
fn subscribed_twice_gets_each_message_once() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut ws = register_monitoring(&hound, "api", "10.0.0.1", 80, &["api"]);
    expect_message(&mut ws, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    expect_no_message(&mut ws, QUIET);
    let other = register(&hound, "api", "10.0.0.2", 80);
    expect_message(
        &mut ws,
        &key_event("api", "PUT", &[("10.0.0.1", 80), ("10.0.0.2", 80)]),
    );
    expect_no_message(&mut ws, QUIET);
    drop(other);
}

#[test]
fn register_with_monitor_gets_sync_for_every_service() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let _engine = register(&hound, "engine", "10.0.0.9", 9000);
    let mut ws = register_monitoring(&hound, "api", "10.0.0.1", 80, &["engine", "billing"]);
    let mut messages = vec![
        next_json(&mut ws, PROMPT),
        next_json(&mut ws, PROMPT),
        next_json(&mut ws, PROMPT),
    ];
    messages.sort_by_key(|m| m["namespace"].as_str().unwrap_or("").to_owned());
    assert_eq!(
        messages,
        vec![
            key_event("api", "SYNC", &[("10.0.0.1", 80)]),
            key_event("billing", "SYNC", &[]),
            key_event("engine", "SYNC", &[("10.0.0.9", 9000)]),
        ]
    );
    expect_no_message(&mut ws, QUIET);
}

#[test]
fn takeover_closes_the_older_socket_with_4000_and_keeps_the_key() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&hound, &["api"]);

    let mut older = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut older, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));

    let mut newer = register(&hound, "api", "10.0.0.1", 80);
    assert!(registered(&mut client, &hound, "api", "10.0.0.1:80"));
    assert_eq!(
        read_close(&mut older, PROMPT),
        Some((4000, "superseded".to_owned()))
    );
    expect_message(&mut newer, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));

    // The node stays registered throughout: a monitor may see it re-put, never removed.
    let quiet_until = std::time::Instant::now() + Duration::from_millis(800);
    while std::time::Instant::now() < quiet_until {
        match receive(&mut watcher, Duration::from_millis(100)) {
            Received::Json(message) => assert_eq!(
                message,
                key_event("api", "PUT", &[("10.0.0.1", 80)]),
                "the takeover must not remove the node"
            ),
            Received::TimedOut => {}
            Received::Closed(frame) => panic!("monitor closed: {frame:?}"),
        }
        assert!(
            registered(&mut client, &hound, "api", "10.0.0.1:80"),
            "key vanished during the takeover"
        );
    }
    assert_eq!(hound.nodes("api"), pairs(&[("10.0.0.1", 80)]));

    // The newer socket really owns the node now.
    close(newer);
    wait_for_event(&mut watcher, "api", "DELETE", PROMPT);
    assert!(!registered(&mut client, &hound, "api", "10.0.0.1:80"));
}

#[test]
fn ipv6_registration_uses_brackets_in_the_key() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let mut ws = register(&hound, "api", "::1", 8080);
    let entry = client
        .get(&hound.key("api", "[::1]:8080"))
        .expect("key ends in [::1]:8080");
    assert_eq!(entry.value, "[::1]:8080");
    expect_message(&mut ws, &key_event("api", "SYNC", &[("::1", 8080)]));
    assert_eq!(hound.nodes("api"), pairs(&[("::1", 8080)]));
}

#[test]
fn host_name_registration_works() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let mut ws = register(&hound, "api", "node-1.example.internal", 80);
    let entry = client
        .get(&hound.key("api", "node-1.example.internal:80"))
        .expect("key for the host name");
    assert_eq!(entry.value, "node-1.example.internal:80");
    expect_message(
        &mut ws,
        &key_event("api", "SYNC", &[("node-1.example.internal", 80)]),
    );
}

#[test]
fn two_instances_on_one_host_do_not_overwrite_each_other() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let _a = register(&hound, "api", "10.0.0.1", 80);
    let _b = register(&hound, "api", "10.0.0.1", 81);
    assert_eq!(
        hound.nodes("api"),
        pairs(&[("10.0.0.1", 80), ("10.0.0.1", 81)])
    );
}

#[test]
fn a_stalled_hound_lets_its_lease_expire_and_others_see_expire() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let stalled = Hound::start(&etcd, &["--ttl", "2"]);
    let observer = Hound::builder(&etcd).namespaces_of(&stalled).start();
    let mut watcher = monitor_synced(&observer, &["api"]);
    let _ws = register(&stalled, "api", "10.0.0.1", 80);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));

    stalled.pause();
    let message = next_json(&mut watcher, Duration::from_secs(10));
    stalled.resume();
    assert_eq!(message, key_event("api", "EXPIRE", &[]));
}

#[test]
fn a_lease_revoked_behind_hounds_back_shows_expire() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&hound, &["api"]);
    let _ws = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    let lease = client
        .get(&hound.key("api", "10.0.0.1:80"))
        .expect("registration")
        .lease;
    client.lease_revoke(lease);
    expect_message(&mut watcher, &key_event("api", "EXPIRE", &[]));
}

#[test]
fn a_key_deleted_behind_hounds_back_shows_delete() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&hound, &["api"]);
    let _ws = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    client.delete(&hound.key("api", "10.0.0.1:80"));
    expect_message(&mut watcher, &key_event("api", "DELETE", &[]));
}

#[test]
fn registrations_on_one_hound_reach_monitors_on_another() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let first = Hound::start(&etcd, &["--ttl", "30"]);
    let second = Hound::builder(&etcd).namespaces_of(&first).start();
    let mut watcher = monitor_synced(&second, &["api"]);
    let ws = register(&first, "api", "10.0.0.1", 80);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    poll_until(PROMPT, "the other hound to list the node", || {
        second.nodes("api") == pairs(&[("10.0.0.1", 80)])
    });
    close(ws);
    expect_message(&mut watcher, &key_event("api", "DELETE", &[]));
}
