//! Verifies custom events across hounds: `POST /etcd/event` reaches the targeted or all sockets
//! on every hound sharing the etcd. (One hound, and every bad request: `scenarios.rs`.)

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

/// Two hounds on one etcd with the same namespaces, both healthy, so both carry events.
fn two_hounds(etcd: &Etcd) -> (Hound, Hound) {
    let first = Hound::start(etcd, &[]);
    let second = Hound::builder(etcd).namespaces_of(&first).start();
    (first, second)
}

fn assert_accepted(response: &HttpResponse) {
    assert_eq!(response.status, 200, "event refused: {response:?}");
    let body = response.text();
    assert!(
        body.trim().is_empty()
            || serde_json::from_str::<serde_json::Value>(&body).ok() == Some(json!({})),
        "success body is empty or {{}}: {response:?}"
    );
}

#[test]
fn a_targeted_event_reaches_subscribers_on_every_hound() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let (first, second) = two_hounds(&etcd);
    let mut a_here = monitor_synced(&first, &["a"]);
    let mut a_there = monitor_synced(&second, &["a", "c"]);
    let mut b_here = monitor_synced(&first, &["b"]);
    let mut b_there = monitor_synced(&second, &["b"]);

    let response = first.post_event(&json!({
        "event_type": "paddling",
        "event_body": "THWACK!",
        "services": ["a"],
    }));
    assert_accepted(&response);

    let expected = custom_event("a", "paddling", "THWACK!");
    expect_message(&mut a_here, &expected);
    expect_message(&mut a_there, &expected);
    expect_no_message(&mut a_here, QUIET);
    expect_no_message(&mut a_there, QUIET);
    expect_no_message(&mut b_here, QUIET);
    expect_no_message(&mut b_there, QUIET);
}

#[test]
fn an_event_posted_to_the_other_hound_comes_back() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let (first, second) = two_hounds(&etcd);
    let mut ws = register_monitoring(&first, "a", "10.0.0.1", 80, &["b"]);
    let _ = next_json(&mut ws, PROMPT);
    let _ = next_json(&mut ws, PROMPT);
    assert_accepted(&second.post_event(&json!({"event_type": "t", "services": ["a"]})));
    // event_body defaults to "".
    expect_message(&mut ws, &custom_event("a", "t", ""));
    assert_accepted(&second.post_event(&json!({"event_type": "u", "services": ["b"]})));
    expect_message(&mut ws, &custom_event("b", "u", ""));
    expect_no_message(&mut ws, QUIET);
}

#[test]
fn a_broadcast_reaches_every_socket_with_namespace_star() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let (first, second) = two_hounds(&etcd);
    let mut sockets = vec![
        monitor_synced(&first, &["a"]),
        monitor_synced(&first, &["b"]),
        monitor_synced(&second, &["c"]),
    ];
    let mut registered = register(&second, "d", "10.0.0.1", 80);
    let _ = next_json(&mut registered, PROMPT);
    sockets.push(registered);

    let response = second.post_event(&json!({
        "event_type": "restart",
        "event_body": "now",
        "broadcast": true,
    }));
    assert_accepted(&response);
    for ws in &mut sockets {
        expect_message(ws, &custom_event("*", "restart", "now"));
    }
    for ws in &mut sockets {
        expect_no_message(ws, QUIET);
    }
}

/// One POST naming thousands of services used to push every `monitor=*` socket over its queue
/// at once (a message per service) and close it with 1013. Past 64 services it is a 400 now,
/// and an event naming 64 reaches a `*` socket whole, which stays open.
#[test]
fn an_event_naming_too_many_services_is_400_and_closes_no_socket() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    // Naming a service too gets the socket a SYNC to wait for (`*` alone has none here).
    let mut everything = monitor(&hound, &["*", "s00"]);
    assert_eq!(
        next_json(&mut everything, PROMPT)["body"]["key_event"],
        "SYNC"
    );
    let body = "x".repeat(30 * 1024);
    let many: Vec<String> = (0..4_000).map(|i| format!("s{i}")).collect();
    hound
        .post_event(&json!({"event_type": "flood", "event_body": body, "services": many}))
        .assert_error(400);
    expect_no_message(&mut everything, QUIET);

    let most: Vec<String> = (0..64).map(|i| format!("s{i:02}")).collect();
    let small = "y".repeat(900);
    assert_accepted(
        &hound.post_event(&json!({"event_type": "most", "event_body": small, "services": most})),
    );
    for service in &most {
        expect_message(&mut everything, &custom_event(service, "most", &small));
    }
    expect_no_message(&mut everything, QUIET);
}

/// An event flood filled etcd's space (NOSPACE) and took every registration down with it. Past
/// the event budget a client gets 429 with `Retry-After`, nothing is written, the refusal is
/// counted, and once the wait is over it may publish again.
#[test]
fn past_the_event_budget_a_client_gets_429_and_nothing_is_written() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--event-rate", "2"]);
    let mut listener = monitor_synced(&hound, &["a"]);
    let event = |n: u32| json!({"event_type": "t", "event_body": n.to_string(), "services": ["a"]});
    assert_accepted(&hound.post_event(&event(1)));
    assert_accepted(&hound.post_event(&event(2)));
    let refused = hound.post_event(&event(3));
    refused.assert_error(429);
    let retry_after: u64 = refused
        .header("Retry-After")
        .and_then(|value| value.parse().ok())
        .expect("a Retry-After in whole seconds");
    assert!((1..=2).contains(&retry_after), "{refused:?}");
    assert_eq!(hound.metric("hound_events_refused_total"), 1.0);
    expect_message(&mut listener, &custom_event("a", "t", "1"));
    expect_message(&mut listener, &custom_event("a", "t", "2"));
    expect_no_message(&mut listener, QUIET);
    // The allowance refills at 2 a second.
    poll_until(
        Duration::from_secs(3),
        "the event budget to allow another event",
        || hound.post_event(&event(4)).status == 200,
    );
    expect_message(&mut listener, &custom_event("a", "t", "4"));
}

/// The event lease used to be reused for 30 s even after etcd forgot it: every POST got 503
/// "requested lease not found" meanwhile. A lost event lease is replaced at once, so the next
/// POST is stored (on a new lease) and delivered.
#[test]
fn a_revoked_event_lease_is_replaced_and_the_next_event_goes_through() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut listener = monitor_synced(&hound, &["a"]);
    assert_accepted(&hound.post_event(&json!({"event_type": "first", "services": ["a"]})));
    expect_message(&mut listener, &custom_event("a", "first", ""));
    let mut client = etcd.client();
    let prefix = format!("{}/", hound.event_namespace());
    let stored = client.get_prefix(&prefix);
    assert_eq!(stored.len(), 1, "{stored:?}");
    let old_lease = stored[0].lease;
    assert_ne!(old_lease, 0, "events are stored on a lease");
    client.lease_revoke(old_lease);

    let posted = Instant::now();
    let response = hound.post_event(&json!({"event_type": "second", "services": ["a"]}));
    eprintln!(
        "revoked event lease: the next POST answered {} after {:?}",
        response.status,
        posted.elapsed()
    );
    assert_accepted(&response);
    expect_message(&mut listener, &custom_event("a", "second", ""));
    let stored = client.get_prefix(&prefix);
    assert_eq!(
        stored.len(),
        1,
        "the first event went with its lease: {stored:?}"
    );
    assert_ne!(stored[0].lease, old_lease);
    assert!(client.lease_granted_ttl(stored[0].lease).is_some());
}
