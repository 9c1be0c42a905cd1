//! Verifies behaviour while etcd is unreachable or loses its data: 503s, health reporting, and
//! registrations coming back by themselves once etcd answers again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// How etcd goes away in [`sockets_outlive_an_etcd_outage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// SIGSTOP, later SIGCONT: connections stay open but nothing answers.
    Frozen,
    /// SIGKILL, later a restart on the same ports and data dir: connections are refused.
    Crashed,
}

/// Register and monitor sockets stay open through an etcd outage, `/healthz` turns 503 within
/// a few seconds and back to 200 after etcd returns, everything that needs etcd answers 503
/// meanwhile (registering nothing), and the registration is in etcd again afterwards without
/// the client doing anything.
fn sockets_outlive_an_etcd_outage(outage: Outage) {
    const TTL: i64 = 5;
    let _w = watchdog();
    let mut etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", &TTL.to_string()]);
    let key = hound.key("api", "10.0.0.1:80");
    let mut registered_socket = register(&hound, "api", "10.0.0.1", 80);
    expect_message(
        &mut registered_socket,
        &key_event("api", "SYNC", &[("10.0.0.1", 80)]),
    );
    let mut watcher = monitor(&hound, &["api"]);
    expect_message(&mut watcher, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    let lease = etcd.client().get(&key).expect("registration").lease;

    match outage {
        Outage::Frozen => etcd.pause(),
        Outage::Crashed => etcd.kill(),
    }
    let down = Instant::now();
    let response = poll_for(Duration::from_secs(5), "/healthz to answer 503", || {
        let response = hound.get("/healthz");
        (response.status == 503).then_some(response)
    });
    eprintln!("etcd {outage:?}: /healthz 503 after {:?}", down.elapsed());
    let body = response.assert_json(503);
    assert_eq!(body["status"], "unavailable", "{body}");
    assert!(
        matches!(&body["reason"], Value::String(reason) if !reason.is_empty()),
        "503 names a reason: {body}"
    );

    // Everything that needs etcd is 503. Against a frozen etcd each waits for its timeout, so
    // ask all at once.
    let hound_ref = &hound;
    let (refused, answers) = std::thread::scope(|scope| {
        let refused = scope
            .spawn(|| ws_connect(hound_ref.addr(), &register_path("api", "10.0.0.3", 80), &[]));
        let answers: Vec<_> = ["/etcd/leader", "/etcd/version"]
            .into_iter()
            .map(|path| scope.spawn(move || (path, hound_ref.get(path))))
            .collect();
        let event = scope.spawn(|| {
            (
                "POST /etcd/event",
                hound_ref.post_event(&json!({"event_type": "t", "broadcast": true})),
            )
        });
        let mut answers: Vec<_> = answers.into_iter().map(|a| a.join().unwrap()).collect();
        answers.push(event.join().unwrap());
        (refused.join().unwrap(), answers)
    });
    match refused {
        Ok(_) => panic!("a registration was upgraded while etcd was {outage:?}"),
        Err(response) => response.assert_error(503),
    }
    for (what, response) in answers {
        assert_eq!(response.status, 503, "{what} while etcd is {outage:?}");
        response.assert_error(503);
    }
    // Process-local routes keep working, and the sockets stay open and quiet.
    assert_eq!(hound.get("/version").status, 200);
    for socket in [&mut registered_socket, &mut watcher] {
        expect_no_message(socket, QUIET);
    }
    eprintln!("etcd {outage:?}: down for {:?}", down.elapsed());

    match outage {
        Outage::Frozen => etcd.resume(),
        Outage::Crashed => etcd.restart(),
    }
    let back = Instant::now();
    hound.wait_healthy();
    eprintln!(
        "etcd {outage:?}: /healthz 200 {:?} after etcd returned",
        back.elapsed()
    );
    let mut client = etcd.client();
    let entry = poll_for(
        Duration::from_secs(10),
        "the registration to be in etcd on a live lease",
        || {
            client
                .get(&key)
                .filter(|entry| client.lease_granted_ttl(entry.lease) == Some(TTL))
        },
    );
    eprintln!(
        "etcd {outage:?}: registration back {:?} after etcd returned, {}",
        back.elapsed(),
        if entry.lease == lease {
            "same lease"
        } else {
            "new lease"
        }
    );
    assert_eq!(entry.value, naming_value("10.0.0.1:80"));
    assert_eq!(hound.get("/etcd/leader").status, 200);

    // Both sockets are still open and hear of a new node.
    let _second = register(&hound, "api", "10.0.0.2", 80);
    for socket in [&mut registered_socket, &mut watcher] {
        wait_for_event_of_nodes(socket, &[("10.0.0.1", 80), ("10.0.0.2", 80)]);
    }
    poll_until(PROMPT, "the refused registration to be absent", || {
        !registered(&mut client, &hound, "api", "10.0.0.3:80")
    });
    assert!(registered(&mut client, &hound, "api", "10.0.0.1:80"));
}

#[test]
fn sockets_outlive_a_frozen_etcd() {
    sockets_outlive_an_etcd_outage(Outage::Frozen);
}

#[test]
fn sockets_outlive_a_crashed_and_restarted_etcd() {
    sockets_outlive_an_etcd_outage(Outage::Crashed);
}

#[test]
fn a_revoked_lease_is_replaced_by_a_new_registration_within_one_ttl() {
    const TTL: u64 = 3;
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", &TTL.to_string()]);
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut ws, PROMPT);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    assert_eq!(hound.metric("hound_lease_regrants_total"), 0.0);
    let key = hound.key("api", "10.0.0.1:80");
    let old_lease = client.get(&key).expect("registration").lease;
    client.lease_revoke(old_lease);
    let revoked = Instant::now();
    let entry = poll_for(
        Duration::from_secs(10),
        "the node to be registered again",
        || client.get(&key).filter(|entry| entry.lease != old_lease),
    );
    let took = revoked.elapsed();
    eprintln!("revoked lease: node back on a new lease after {took:?}");
    assert!(
        took <= Duration::from_secs(TTL) + Duration::from_millis(1500),
        "the node came back {took:?} after its lease was revoked; the TTL is {TTL} s"
    );
    assert_eq!(entry.value, naming_value("10.0.0.1:80"));
    assert_eq!(client.lease_granted_ttl(entry.lease), Some(TTL as i64));
    // Others saw it expire and come back.
    expect_message(&mut watcher, &key_event("api", "EXPIRE", &[]));
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    poll_until(PROMPT, "hound_lease_regrants_total to be 1", || {
        hound.metric("hound_lease_regrants_total") == 1.0
    });
    // The socket stayed open and still gets news of its service.
    let _other = register(&hound, "api", "10.0.0.2", 80);
    wait_for_event_of_nodes(&mut ws, &[("10.0.0.1", 80), ("10.0.0.2", 80)]);
}

/// How etcd loses its data in [`registrations_come_back_and_every_socket_resyncs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wipe {
    /// Restarted on an empty data dir: its revision goes back.
    Emptied,
    /// Restarted on an empty data dir and written to, out of hound's reach, past hound's
    /// revision: same cluster id, a revision ahead of hound's, nothing in any header to tell.
    EmptiedAndRefilled,
}

/// etcd loses its data while hound runs: every open registration is written again, a node
/// the wipe took with it (written by hand here; another hound's, say) leaves every socket's
/// view and REST answers, every socket gets a fresh SYNC of each of its services and ends up
/// with etcd's membership, and events go through again.
fn registrations_come_back_and_every_socket_resyncs(wipe: Wipe) {
    let _w = watchdog();
    let mut etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "3"]);
    let mut client = etcd.client();
    client.put(&hound.key("api", "10.0.0.9:80"), "10.0.0.9:80");
    poll_until(PROMPT, "hound to list the hand-written node", || {
        hound.nodes("api") == pairs(&[("10.0.0.9", 80)])
    });
    let mut api = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut api, PROMPT);
    let mut web = register_monitoring(&hound, "web", "10.0.0.2", 80, &["db"]);
    let _ = next_json(&mut web, PROMPT);
    let _ = next_json(&mut web, PROMPT);
    let mut watcher = monitor(&hound, &["api", "db", "web"]);
    for _ in 0..3 {
        let _ = next_json(&mut watcher, PROMPT);
    }
    assert_eq!(
        hound
            .post_event(&json!({"event_type": "t", "broadcast": true}))
            .status,
        200
    );
    for socket in [&mut api, &mut web, &mut watcher] {
        expect_message(socket, &custom_event("*", "t", ""));
    }

    let before = client.status();
    let revision = client.revision();
    match wipe {
        Wipe::Emptied => etcd.restart_empty(),
        Wipe::EmptiedAndRefilled => etcd.restart_empty_with(|fresh| {
            for n in 0..revision + 10 {
                fresh.put(&format!("elsewhere/{n}"), "x");
            }
        }),
    }
    let wiped = Instant::now();
    let mut client = etcd.client();
    let after = client.status();
    assert_eq!(
        after.cluster_id, before.cluster_id,
        "etcd kept its identity"
    );
    if wipe == Wipe::EmptiedAndRefilled {
        assert!(
            client.revision() > revision,
            "etcd is past hound's revision"
        );
    }
    for (service, node) in [("api", "10.0.0.1:80"), ("web", "10.0.0.2:80")] {
        let entry = poll_for(
            Duration::from_secs(20),
            "every open registration to be written again",
            || client.get(&hound.key(service, node)),
        );
        assert_eq!(entry.value, naming_value(node));
        assert_ne!(entry.lease, 0, "registered again with a lease");
    }
    eprintln!(
        "wiped etcd ({wipe:?}): registrations back after {:?}",
        wiped.elapsed()
    );

    // Every socket gets a fresh SYNC for each of its services, and ends up with etcd's
    // membership (a SYNC taken before a node was written again is followed by its PUT).
    for (socket, services) in [
        (&mut api, &["api"][..]),
        (&mut web, &["db", "web"][..]),
        (&mut watcher, &["api", "db", "web"][..]),
    ] {
        let expected = |service: &str| match service {
            "api" => pairs(&[("10.0.0.1", 80)]),
            "web" => pairs(&[("10.0.0.2", 80)]),
            _ => Vec::new(),
        };
        let mut synced = BTreeSet::new();
        let mut last: BTreeMap<String, Vec<(String, u16)>> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while synced.len() < services.len()
            || services.iter().any(|s| last.get(*s) != Some(&expected(s)))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match receive(socket, left) {
                Received::Json(message) => message,
                other => panic!(
                    "socket on {services:?} after the wipe: {other:?}; SYNCs so far {synced:?}, \
                     memberships {last:?}"
                ),
            };
            let service = message["namespace"].as_str().unwrap_or("").to_owned();
            assert!(services.contains(&service.as_str()), "{message}");
            if message["body"]["key_event"] == "SYNC" {
                synced.insert(service.clone());
            }
            last.insert(service, nodes_of(&message["body"]["services"]));
        }
    }
    eprintln!(
        "wiped etcd ({wipe:?}): every socket resynced after {:?}",
        wiped.elapsed()
    );
    hound.wait_healthy();
    assert_eq!(hound.nodes("api"), pairs(&[("10.0.0.1", 80)]));
    assert_eq!(hound.nodes("web"), pairs(&[("10.0.0.2", 80)]));
    let posted = hound.post_event(&json!({"event_type": "u", "broadcast": true}));
    assert_eq!(posted.status, 200, "an event after the wipe: {posted:?}");
    expect_message(&mut api, &custom_event("*", "u", ""));
}

#[test]
fn registrations_come_back_and_every_socket_resyncs_after_etcd_loses_its_data() {
    registrations_come_back_and_every_socket_resyncs(Wipe::Emptied);
}

/// A wiped etcd with the same identity whose revision passed hound's before hound reconnected
/// used to go unnoticed: a node the wipe took stayed in REST answers and every new SYNC. hound
/// finds its store marker gone.
#[test]
fn a_wiped_etcd_that_kept_its_identity_and_passed_hounds_revision_is_noticed() {
    registrations_come_back_and_every_socket_resyncs(Wipe::EmptiedAndRefilled);
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

/// Reads messages until one lists exactly `nodes` (SYNCs after a re-read are allowed). A
/// broadcast `t` is skipped: an event POSTed while etcd was frozen was answered 503, yet etcd
/// may still apply it once it thaws.
fn wait_for_event_of_nodes(ws: &mut Ws, nodes: &[(&str, u16)]) {
    let wanted = pairs(nodes);
    let deadline = Instant::now() + PROMPT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive(ws, left) {
            Received::Json(message) if message == custom_event("*", "t", "") => {
                eprintln!("an event answered 503 while etcd was down arrived after all");
            }
            Received::Json(message) => {
                if nodes_of(&message["body"]["services"]) == wanted {
                    return;
                }
            }
            other => panic!("waiting for membership {wanted:?}: {other:?}"),
        }
    }
}

/// An etcd out of space refuses every write until an operator compacts, defragments and
/// disarms its NOSPACE alarm: `/healthz` says so (503, naming the alarm) for as long as the
/// alarm is raised; registrations and events are refused at once rather than after 3 s; a
/// closed socket's node still leaves etcd at once. Once the alarm is cleared, all is well.
#[test]
fn healthz_names_etcds_nospace_alarm_until_it_is_cleared() {
    let _w = watchdog();
    let mut etcd = Etcd::start_with_args(&["--quota-backend-bytes", "1048576"]);
    let hound = Hound::start(&etcd, &["--ttl", "3"]);
    let mut leaving = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut leaving, PROMPT);
    let mut staying = register(&hound, "api", "10.0.0.2", 80);
    let _ = next_json(&mut staying, PROMPT);

    // Fill etcd until it refuses a write: that raises the alarm.
    let mut client = etcd.client();
    let value = "x".repeat(100 * 1024);
    let mut filler = Vec::new();
    let refusal = (0..1_000)
        .find_map(|n| {
            let key = format!("filler/{n}");
            let put = client.try_put(&key, &value);
            filler.push(key);
            put.err()
        })
        .expect("etcd refuses writes past its quota");
    assert!(refusal.contains("database space exceeded"), "{refusal}");
    let full = Instant::now();
    let response = poll_for(
        Duration::from_secs(5),
        "/healthz to answer 503 for the alarm",
        || {
            let response = hound.get("/healthz");
            (response.status == 503).then_some(response)
        },
    );
    eprintln!("NOSPACE: /healthz 503 after {:?}", full.elapsed());
    let body = response.assert_json(503);
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("alarm") && reason.contains("NOSPACE"),
        "{body}"
    );

    let asked = Instant::now();
    match ws_connect(hound.addr(), &register_path("api", "10.0.0.3", 80), &[]) {
        Ok(_) => panic!("a registration was accepted by an etcd out of space"),
        Err(response) => response.assert_error(503),
    }
    let refused_after = asked.elapsed();
    let asked = Instant::now();
    let event = hound.post_event(&json!({"event_type": "t", "broadcast": true}));
    assert_eq!(event.status, 503, "{event:?}");
    eprintln!(
        "NOSPACE: registration refused after {refused_after:?}, event after {:?}",
        asked.elapsed()
    );
    assert!(refused_after < Duration::from_secs(1), "{refused_after:?}");

    // The alarm outlives a restart of etcd; hound's watches reopen all the same (the DELETE
    // below comes through the service watch).
    etcd.restart_answering();
    let mut client = etcd.client();
    let key = hound.key("api", "10.0.0.1:80");
    close(leaving);
    let closed = Instant::now();
    poll_until(PROMPT, "the closed socket's node to leave etcd", || {
        client.get(&key).is_none()
    });
    eprintln!("NOSPACE: closed node gone after {:?}", closed.elapsed());
    // Without room for the tombstone, others may take the deletion for an expiry.
    let message = next_json(&mut staying, PROMPT);
    assert!(
        [
            key_event("api", "DELETE", &[("10.0.0.2", 80)]),
            key_event("api", "EXPIRE", &[("10.0.0.2", 80)])
        ]
        .contains(&message),
        "{message}"
    );

    // The operator's remedy: free the space, compact, defragment, disarm.
    for key in &filler {
        client.delete(key);
    }
    let revision = client.revision();
    client.compact(revision);
    client.defragment();
    client.disarm_alarms();
    assert_eq!(client.alarms(), []);
    let cleared = Instant::now();
    hound.wait_healthy();
    eprintln!(
        "NOSPACE: /healthz 200 {:?} after the alarm was cleared",
        cleared.elapsed()
    );
    let mut again = register(&hound, "api", "10.0.0.3", 80);
    let _ = next_json(&mut again, PROMPT);
    assert!(registered(&mut client, &hound, "api", "10.0.0.2:80"));
}
