//! Verifies custom events: `POST /etcd/event` reaches the targeted or all sockets on every hound
//! sharing the etcd, and every bad request gets its status.

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

#[test]
fn an_event_without_subscribers_is_still_accepted() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    assert_accepted(&hound.post_event(&json!({"event_type": "t", "services": ["nobody"]})));
    assert_accepted(&hound.post_event(&json!({"event_type": "t", "broadcast": true})));
}

#[test]
fn content_type_with_charset_is_accepted() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let response = request(
        hound.addr(),
        "POST",
        "/etcd/event",
        &[("Content-Type", "application/json; charset=utf-8")],
        br#"{"event_type":"t","broadcast":true}"#,
    );
    assert_accepted(&response);
}

#[test]
fn bad_events_are_400() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut listener = monitor_synced(&hound, &["a"]);
    let bodies: &[&[u8]] = &[
        b"not json",
        b"",
        b"[1,2,3]",
        b"\"a string\"",
        br#"{"services":["a"]}"#,
        br#"{"event_type":"","services":["a"]}"#,
        br#"{"event_type":42,"services":["a"]}"#,
        br#"{"event_type":"t","event_body":7,"services":["a"]}"#,
        br#"{"event_type":"t"}"#,
        br#"{"event_type":"t","services":[]}"#,
        br#"{"event_type":"t","broadcast":false}"#,
        br#"{"event_type":"t","services":["a"],"broadcast":"yes"}"#,
        br#"{"event_type":"t","services":"a"}"#,
        br#"{"event_type":"t","services":["bad name"]}"#,
        br#"{"event_type":"t","services":["a","x/y"]}"#,
        br#"{"event_type":"t","services":[""]}"#,
    ];
    for body in bodies {
        let response = request(
            hound.addr(),
            "POST",
            "/etcd/event",
            &[("Content-Type", "application/json")],
            body,
        );
        assert_eq!(
            response.status,
            400,
            "body {:?}: {response:?}",
            String::from_utf8_lossy(body)
        );
        response.assert_error(400);
    }
    // None of them was delivered.
    expect_no_message(&mut listener, QUIET);
}

#[test]
fn wrong_content_type_is_415() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut listener = monitor_synced(&hound, &["a"]);
    let body = br#"{"event_type":"t","services":["a"]}"#;
    for headers in [
        &[("Content-Type", "text/plain")][..],
        &[("Content-Type", "application/x-www-form-urlencoded")][..],
        &[][..],
    ] {
        let response = request(hound.addr(), "POST", "/etcd/event", headers, body);
        response.assert_error(415);
    }
    expect_no_message(&mut listener, QUIET);
}

#[test]
fn a_body_over_64_kib_is_413() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut listener = monitor_synced(&hound, &["a"]);
    let filler = "x".repeat(64 * 1024);
    let body = json!({"event_type": "t", "event_body": filler, "services": ["a"]}).to_string();
    assert!(body.len() > 64 * 1024);
    let response = request(
        hound.addr(),
        "POST",
        "/etcd/event",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    response.assert_error(413);
    expect_no_message(&mut listener, QUIET);
    // A body just under the limit is fine.
    let event_body = "x".repeat(60 * 1024);
    let body = json!({"event_type": "t", "event_body": event_body, "services": ["a"]});
    assert_accepted(&hound.post_event(&body));
    expect_message(&mut listener, &custom_event("a", "t", &event_body));
}
