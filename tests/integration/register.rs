//! Verifies `/etcd/register` beyond what `scenarios.rs` runs on both backends: dead clients
//! (unanswered pings), SYNC for every monitored service, changes made behind hound's back in
//! etcd (a revoked lease, a deleted key), and registrations seen through another hound.

use std::time::{Duration, Instant};

use crate::support::*;

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

/// A second registration of a node while the first still waits for its own write (here: etcd
/// frozen while both requests arrive, the first one queued first). Whatever the timing, the
/// older socket is closed with 4000, the newer one owns the key, and closing the newer deletes
/// it. 1.0 left both open (the close request came before the older had subscribed) and the
/// newer's close then deleted the key under the older.
#[test]
fn a_takeover_while_the_first_registration_waits_for_etcd_still_closes_it_with_4000() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "30", "--log-level", "debug"]);
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&hound, &["api"]);
    let path = register_path("api", "10.0.0.1", 80);
    for round in 0..3 {
        etcd.pause();
        let (older, newer) = std::thread::scope(|scope| {
            let requests_seen = || hound.stderr().matches("GET /etcd/register from").count();
            let before = requests_seen();
            let older = scope.spawn(|| ws_connect(hound.addr(), &path, &[]));
            poll_until(PROMPT, "hound to take the first registration", || {
                requests_seen() > before
            });
            let newer = scope.spawn(|| ws_connect(hound.addr(), &path, &[]));
            poll_until(PROMPT, "hound to take the second registration", || {
                requests_seen() > before + 1
            });
            etcd.resume();
            (older.join().expect("older"), newer.join().expect("newer"))
        });
        let mut older = older.expect("the older registration is upgraded");
        let mut newer = newer.expect("the newer registration is upgraded");
        assert_eq!(
            read_close(&mut older, PROMPT),
            Some((4000, "superseded".to_owned())),
            "round {round}: the older socket"
        );
        expect_message(&mut newer, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
        expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
        assert!(registered(&mut client, &hound, "api", "10.0.0.1:80"));
        close(newer);
        expect_message(&mut watcher, &key_event("api", "DELETE", &[]));
        assert!(!registered(&mut client, &hound, "api", "10.0.0.1:80"));
    }
}

/// A hound's leases share its keep-alive streams, as etcd's Go client shares one: twenty
/// registrations open one `LeaseKeepAlive` stream on etcd per stream their ids fall to (hound
/// spreads leases over 8 by id), every lease is refreshed and outlives two TTLs, and a lease
/// revoked behind hound's back is replaced (the node is put back) while the others keep theirs,
/// on the same streams.
#[test]
fn a_hounds_leases_share_its_keep_alive_streams() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "3"]);
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&hound, &["api"]);
    let ports: Vec<u16> = (8000..8020).collect();
    let _sockets: Vec<Ws> = ports
        .iter()
        .map(|&port| {
            let mut ws = register(&hound, "api", "10.0.0.1", port);
            let _ = next_json(&mut ws, PROMPT);
            ws
        })
        .collect();
    // Each PUT lists the whole service: the last lists all twenty.
    let all: Vec<(&str, u16)> = ports.iter().map(|&port| ("10.0.0.1", port)).collect();
    for n in 1..=ports.len() {
        expect_message(&mut watcher, &key_event("api", "PUT", &all[..n]));
    }
    let mut leases = || {
        ports
            .iter()
            .map(|port| {
                let key = hound.key("api", &format!("10.0.0.1:{port}"));
                client.get(&key).expect("registered").lease
            })
            .collect::<Vec<i64>>()
    };
    let before = leases();
    // Two TTLs, each lease refreshed every TTL/3: nothing expires, nothing is put back.
    expect_no_message(&mut watcher, Duration::from_secs(6));
    assert_eq!(leases(), before);
    let refreshes = keep_alive_metric(&etcd, "grpc_server_msg_received_total");
    assert!(refreshes >= 20.0 * 5.0, "{refreshes} refreshes");
    let streams = |leases: &[i64]| {
        let slots: std::collections::BTreeSet<u64> = leases
            .iter()
            .map(|lease| lease.unsigned_abs() % 8)
            .collect();
        slots.len() as f64
    };
    assert_eq!(
        keep_alive_metric(&etcd, "grpc_server_started_total"),
        streams(&before)
    );

    etcd.client().lease_revoke(before[0]);
    expect_message(&mut watcher, &key_event("api", "EXPIRE", &all[1..]));
    // The keeper's next refresh (within TTL/3) finds its lease gone and registers again.
    let back = next_json(&mut watcher, Duration::from_secs(1) + PROMPT);
    assert_eq!(back["body"]["key_event"], "PUT", "{back}");
    assert_eq!(
        back["body"]["services"].as_array().unwrap().len(),
        20,
        "{back}"
    );
    let after = leases();
    assert_ne!(after[0], before[0], "a new lease");
    assert_eq!(after[1..], before[1..], "the others keep theirs");
    // The new lease's stream may be one more, never one per lease.
    let opened = keep_alive_metric(&etcd, "grpc_server_started_total");
    assert!(opened <= streams(&before) + 1.0, "{opened} streams");
}

/// The sum of etcd's gRPC metric `name` over its `LeaseKeepAlive` series.
fn keep_alive_metric(etcd: &Etcd, name: &str) -> f64 {
    let addr = format!("127.0.0.1:{}", etcd.client_port()).parse().unwrap();
    get(addr, "/metrics")
        .text()
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| line.contains("grpc_method=\"LeaseKeepAlive\""))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// A keep-alive stream whose refresh goes unanswered (its only member frozen for longer than
/// the answer may take, but not long enough for the connection's own keep-alive to end it) is
/// replaced by a new one once etcd answers again, and the lease is refreshed on that.
#[test]
fn an_unanswered_keep_alive_stream_is_replaced() {
    let _w = watchdog();
    let etcd = Etcd::start();
    // Refreshes every second, each answered within 0.5 s or given up.
    let hound = Hound::start(&etcd, &["--ttl", "3"]);
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut socket = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut socket, PROMPT);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    let opened = keep_alive_metric(&etcd, "grpc_server_started_total");
    assert_eq!(opened, 1.0);

    // Frozen across a refresh and its deadline, and no longer: the connection's own
    // keep-alive (2 s without an answer to its ping) must not be what ends the stream.
    etcd.pause();
    let frozen = Instant::now();
    poll_until(Duration::from_secs(3), "hound to give up a refresh", || {
        hound.stderr().contains("not answered within")
    });
    etcd.resume();
    eprintln!("resumed {:?} into the freeze", frozen.elapsed());
    poll_until(PROMPT, "a new keep-alive stream", || {
        keep_alive_metric(&etcd, "grpc_server_started_total") > opened
    });
    // Refreshed on the new stream: still registered a TTL later.
    expect_no_message(&mut watcher, Duration::from_secs(3));
    assert_eq!(hound.nodes("api"), vec![("10.0.0.1".to_owned(), 80)]);
}
