//! Verifies behaviour while etcd is unreachable or loses its data: 503s, health reporting, and
//! registrations coming back by themselves once etcd answers again.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

#[test]
fn healthz_reports_503_while_etcd_is_down_and_recovers() {
    let _w = watchdog();
    let mut etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    etcd.kill();
    let response = poll_for(Duration::from_secs(20), "/healthz to answer 503", || {
        let response = hound.get("/healthz");
        (response.status == 503).then_some(response)
    });
    let body = response.assert_json(503);
    assert_eq!(body["status"], "unavailable", "{body}");
    assert!(
        matches!(&body["reason"], Value::String(reason) if !reason.is_empty()),
        "503 names a reason: {body}"
    );
    etcd.restart();
    hound.wait_healthy();
}

#[test]
fn etcd_routes_are_503_while_etcd_is_down() {
    let _w = watchdog();
    let mut etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    etcd.kill();
    for path in ["/etcd/version", "/etcd/leader"] {
        hound.get(path).assert_error(503);
    }
    hound
        .post_event(&serde_json::json!({"event_type": "t", "broadcast": true}))
        .assert_error(503);
    // Process-local routes keep working.
    assert_eq!(hound.get("/version").status, 200);
}

#[test]
fn register_is_503_while_etcd_is_down_and_registers_nothing() {
    let _w = watchdog();
    let mut etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "30"]);
    etcd.kill();
    match ws_connect(hound.addr(), &register_path("api", "10.0.0.1", 80), &[]) {
        Ok(_) => panic!("registration upgraded while etcd is down"),
        Err(response) => response.assert_error(503),
    }
    etcd.restart();
    hound.wait_healthy();
    let mut client = etcd.client();
    assert_namespace_empty(&mut client, &hound, "after a refused registration");
}

#[test]
fn a_revoked_lease_is_replaced_by_a_new_registration() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "3"]);
    let mut client = etcd.client();
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut ws, PROMPT);
    let key = hound.key("api", "10.0.0.1:80");
    let old_lease = client.get(&key).expect("registration").lease;
    client.lease_revoke(old_lease);
    let entry = poll_for(
        Duration::from_secs(10),
        "the node to be registered again",
        || client.get(&key).filter(|entry| entry.lease != old_lease),
    );
    assert_eq!(entry.value, "10.0.0.1:80");
    assert_ne!(entry.lease, 0);
    // The socket stayed open and still gets news of its service.
    let _other = register(&hound, "api", "10.0.0.2", 80);
    wait_for_event_of_nodes(&mut ws, &[("10.0.0.1", 80), ("10.0.0.2", 80)]);
}

#[test]
fn registrations_come_back_after_etcd_loses_its_data() {
    let _w = watchdog();
    let mut etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "3"]);
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut ws, PROMPT);
    etcd.restart_empty();
    let mut client = etcd.client();
    let entry = poll_for(
        Duration::from_secs(20),
        "the node to be registered again",
        || client.get(&hound.key("api", "10.0.0.1:80")),
    );
    assert_eq!(entry.value, "10.0.0.1:80");
    assert_ne!(entry.lease, 0, "registered again with a lease");
    hound.wait_healthy();
    poll_until(PROMPT, "REST to list the node again", || {
        hound.nodes("api") == pairs(&[("10.0.0.1", 80)])
    });
}

#[test]
fn registrations_survive_a_short_etcd_outage() {
    let _w = watchdog();
    let mut etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "3"]);
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut ws, PROMPT);
    etcd.restart();
    let mut client = etcd.client();
    assert!(
        registered(&mut client, &hound, "api", "10.0.0.1:80"),
        "the registration outlives a restart shorter than its TTL"
    );
    // Keep-alives resume: the key is still there after more than two TTLs.
    let watch_until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < watch_until {
        assert!(
            registered(&mut client, &hound, "api", "10.0.0.1:80"),
            "the registration was lost after etcd came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads messages until one lists exactly `nodes` (SYNCs after a re-read are allowed).
fn wait_for_event_of_nodes(ws: &mut Ws, nodes: &[(&str, u16)]) {
    let wanted = pairs(nodes);
    let deadline = Instant::now() + PROMPT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive(ws, left) {
            Received::Json(message) => {
                if nodes_of(&message["body"]["services"]) == wanted {
                    return;
                }
            }
            other => panic!("waiting for membership {wanted:?}: {other:?}"),
        }
    }
}
