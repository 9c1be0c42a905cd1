//! Verifies recovery from faults between hound and etcd that a client cannot see: a watch gap
//! that etcd compacted away, a consumer too slow for its queue, and an etcd cluster losing the
//! member hound talks to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// The membership a message lists, as (ip, port).
fn membership(message: &Value) -> Vec<(String, u16)> {
    nodes_of(&message["body"]["services"])
}

#[test]
fn a_watch_gap_behind_a_compaction_ends_in_a_sync_of_the_real_membership() {
    let _w = watchdog();
    let mut etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let node = |port: u16| format!("10.0.0.1:{port}");
    for port in [1, 2] {
        client.put(&hound.key("api", &node(port)), &node(port));
    }
    client.put(&hound.key("db", &node(5)), &node(5));
    poll_until(PROMPT, "hound to list the first nodes", || {
        hound.nodes("api").len() == 2 && hound.nodes("db").len() == 1
    });
    let mut ws = monitor_synced(&hound, &["api", "web", "db"]);
    assert_eq!(hound.metric("hound_watch_resyncs_total"), 0.0);

    // Freeze hound, and break its connections while it cannot notice: its watch must resume
    // from the revision it last applied, which the compaction below removes from etcd.
    // (Freezing hound alone makes no gap: etcd keeps sending the watch events, which wait in
    // hound's socket buffer and are applied in order on SIGCONT.) The restart keeps the data,
    // so this is a compaction, not a replaced cluster.
    hound.pause();
    etcd.restart();
    let mut client = etcd.client();
    for round in 0..4u16 {
        client.put(&hound.key("api", &node(10 + round)), &node(10 + round));
        client.put(&hound.key("web", &node(20 + round)), &node(20 + round));
        if round > 0 {
            client.delete(&hound.key("api", &node(9 + round)));
        }
    }
    client.delete(&hound.key("api", &node(1)));
    client.delete(&hound.key("web", &node(21)));
    let revision = client.revision();
    client.compact(revision);
    let resumed = Instant::now();
    hound.resume();

    let real = |client: &mut EtcdClient, service: &str| -> Vec<(String, u16)> {
        let mut nodes: Vec<(String, u16)> = client
            .get_prefix(&format!("{}/{service}/", hound.namespace()))
            .iter()
            .map(|entry| {
                let addr = addr_of(&entry.value);
                let (ip, port) = addr.rsplit_once(':').expect("host:port");
                (ip.to_owned(), port.parse().expect("port"))
            })
            .collect();
        nodes.sort();
        nodes
    };
    let final_api = real(&mut client, "api");
    let final_web = real(&mut client, "web");
    assert_eq!(
        final_api,
        pairs(&[("10.0.0.1", 2), ("10.0.0.1", 13)]),
        "the script's own arithmetic"
    );

    // Each changed service converges on etcd's membership through a SYNC; db did not change,
    // so anything it gets must still list its one node.
    let mut synced = BTreeSet::new();
    let mut last: BTreeMap<String, Vec<(String, u16)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while last.get("api") != Some(&final_api) || last.get("web") != Some(&final_web) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match receive(&mut ws, left) {
            Received::Json(message) => message,
            other => {
                panic!("waiting for the memberships to converge, got {other:?}; last {last:?}")
            }
        };
        let service = message["namespace"].as_str().unwrap_or("").to_owned();
        if message["body"]["key_event"] == "SYNC" {
            synced.insert(service.clone());
        }
        last.insert(service, membership(&message));
    }
    eprintln!(
        "watch gap: monitor converged {:?} after SIGCONT",
        resumed.elapsed()
    );
    assert!(
        synced.contains("api") && synced.contains("web"),
        "every changed service got a SYNC, got SYNCs for {synced:?}"
    );
    if let Some(db) = last.get("db") {
        assert_eq!(db, &pairs(&[("10.0.0.1", 5)]), "db did not change");
    }
    match receive(&mut ws, QUIET) {
        Received::TimedOut => {}
        Received::Json(message) => {
            let service = message["namespace"].as_str().unwrap_or("");
            let expected = real(&mut client, service);
            assert_eq!(
                membership(&message),
                expected,
                "a late message must still match etcd: {message}"
            );
        }
        Received::Closed(frame) => panic!("monitor closed: {frame:?}"),
    }
    assert_eq!(hound.nodes("api"), final_api);
    assert_eq!(hound.nodes("web"), final_web);
    assert_eq!(hound.nodes("db"), pairs(&[("10.0.0.1", 5)]));
    let resyncs = hound.metric("hound_watch_resyncs_total");
    assert!(resyncs >= 1.0, "hound_watch_resyncs_total is {resyncs}");
}

/// Changes etcd still holds after a compaction are replayed, not skipped: hound re-reads the
/// namespace as it was at the compacted revision (a SYNC where it changed) and watches on from
/// there. Here a node leaves and comes back after the compaction, so the latest membership
/// equals the one at the compaction: re-reading the latest would say nothing of it.
#[test]
fn changes_after_the_compacted_revision_are_replayed_after_a_watch_gap() {
    let _w = watchdog();
    let mut etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let node = |port: u16| format!("10.0.0.1:{port}");
    client.put(&hound.key("api", &node(1)), &node(1));
    poll_until(PROMPT, "hound to list the first node", || {
        hound.nodes("api").len() == 1
    });
    let mut ws = monitor_synced(&hound, &["api"]);

    // As in the test above: a gap hound must resume across, compacted up to its middle.
    hound.pause();
    etcd.restart();
    let mut client = etcd.client();
    client.put(&hound.key("api", &node(2)), &node(2));
    client.put(&hound.key("api", &node(3)), &node(3));
    client.delete(&hound.key("api", &node(3)));
    let compacted = client.revision();
    client.compact(compacted);
    // After the compaction: node 1 leaves and comes back.
    client.delete(&hound.key("api", &node(1)));
    client.put(&hound.key("api", &node(1)), &node(1));
    hound.resume();

    let both = pairs(&[("10.0.0.1", 1), ("10.0.0.1", 2)]);
    let expected = [
        ("SYNC", both.clone()),
        ("DELETE", pairs(&[("10.0.0.1", 2)])),
        ("PUT", both),
    ];
    for (event, nodes) in expected {
        let message = next_json(&mut ws, Duration::from_secs(10));
        assert_eq!(message["namespace"], "api", "{message}");
        assert_eq!(message["body"]["key_event"], event, "{message}");
        assert_eq!(membership(&message), nodes, "{message}");
    }
    expect_no_message(&mut ws, QUIET);
    assert!(hound.stderr().contains(&format!("at revision {compacted}")));
}

#[test]
fn a_consumer_that_never_reads_is_closed_with_1013_and_the_others_miss_nothing() {
    const BATCH: u16 = 32;
    const MAX_BATCHES: u16 = 1500;
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let ip = "10.0.0.1";
    let port = |n: u16| 1000 + n;

    // This one never reads; a tiny receive buffer makes it back up after a few kilobytes.
    let mut slow = ws_connect_small_buffer(hound.addr(), &monitor_path(&["api"]), 4096)
        .unwrap_or_else(|response| panic!("slow monitor refused: {response:?}"));
    // This one reads everything, on a thread of its own so it keeps up while we write.
    let mut reader = monitor_synced(&hound, &["api"]);
    let (received, inbox) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        loop {
            let outcome = receive(&mut reader, Duration::from_secs(20));
            let done = !matches!(outcome, Received::Json(_));
            if received.send(outcome).is_err() || done {
                return;
            }
        }
    });

    // Each batch is one transaction: put BATCH new nodes, interleaved with deleting the
    // previous batch's, so every event changes the membership and every message is small.
    // `expected` is every message a reader must get, in order.
    let mut members = BTreeSet::new();
    let mut expected: Vec<(&str, Vec<u16>)> = Vec::new();
    let started = Instant::now();
    let mut closed_after = None;
    for batch in 0..MAX_BATCHES {
        let mut ops = Vec::new();
        for j in 0..BATCH {
            let new = port(batch * BATCH + j);
            let node = format!("{ip}:{new}");
            ops.push(etcd_client::TxnOp::put(hound.key("api", &node), node, None));
            members.insert(new);
            expected.push(("PUT", members.iter().copied().collect()));
            if batch > 0 {
                let old = port((batch - 1) * BATCH + j);
                ops.push(etcd_client::TxnOp::delete(
                    hound.key("api", &format!("{ip}:{old}")),
                    None,
                ));
                members.remove(&old);
                expected.push(("DELETE", members.iter().copied().collect()));
            }
        }
        client.txn(ops);
        if batch % 4 == 3 && hound.metric("hound_slow_sockets_closed_total") >= 1.0 {
            closed_after = Some(expected.len());
            break;
        }
    }
    let changes = closed_after.unwrap_or_else(|| {
        panic!(
            "the slow monitor was not closed after {} changes",
            expected.len()
        )
    });
    eprintln!(
        "slow consumer: closed after at most {changes} changes, {:?} after the first",
        started.elapsed()
    );

    // hound waits 2 s for the client's close after writing its close frame, which sits behind
    // what the socket already holds: read it all now.
    let close = read_close(&mut slow, PROMPT);
    assert_eq!(
        close.as_ref().map(|(code, _)| *code),
        Some(1013),
        "the slow socket's close: {close:?}"
    );

    // The reader got every change, in order, and is still open.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (n, (event, ports)) in expected.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match inbox.recv_timeout(left) {
            Ok(Received::Json(message)) => message,
            Ok(other) => panic!(
                "the reader ended after {n} of {} messages: {other:?}",
                expected.len()
            ),
            Err(_) => panic!("the reader got only {n} of {} messages", expected.len()),
        };
        let got: Vec<u16> = membership(&message)
            .into_iter()
            .map(|(node_ip, node_port)| {
                assert_eq!(node_ip, ip, "{message}");
                node_port
            })
            .collect();
        assert!(
            message["namespace"] == "api"
                && message["body"]["key_event"] == *event
                && got == *ports,
            "message {n}: expected {event} {ports:?}, got {message}"
        );
    }
    match inbox.recv_timeout(QUIET) {
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("nothing more was expected, got {other:?}"),
    }
    let final_nodes: Vec<(String, u16)> = members.iter().map(|p| (ip.to_owned(), *p)).collect();
    assert_eq!(hound.nodes("api"), final_nodes);

    // hound stays responsive and counts one monitor left.
    let asked = Instant::now();
    assert_eq!(hound.get("/healthz").status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "/healthz took {:?}",
        asked.elapsed()
    );
    poll_until(PROMPT, "the slow socket to be gone", || {
        hound.metric("hound_sockets{kind=\"monitor\"}") == 1.0
    });
    assert_eq!(hound.metric("hound_slow_sockets_closed_total"), 1.0);
}

/// Which member of the cluster a failover test kills.
#[derive(Debug, Clone, Copy)]
enum Victim {
    /// The member `/etcd/leader` says hound is connected to.
    HoundsMember,
    /// The raft leader.
    Leader,
}

/// A 3-member cluster loses `victim` while a node is registered with `--ttl 5`: nobody sees
/// the node leave for two TTLs, its key and lease stay, and hound answers through the others.
fn survives_losing_a_member(victim: Victim) {
    const TTL: u64 = 5;
    let _w = watchdog();
    let mut cluster = EtcdCluster::start(3);
    let hound = Hound::builder_for_url(&cluster.urls())
        .args(["--ttl", &TTL.to_string()])
        .start();
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut ws, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));

    let leader = hound.get("/etcd/leader").assert_json(200);
    let victim_id = match victim {
        Victim::HoundsMember => leader["member_id"].as_u64(),
        Victim::Leader => leader["leader"].as_u64(),
    }
    .unwrap_or_else(|| panic!("/etcd/leader names no {victim:?}: {leader}"));
    let doomed = cluster.index_of(victim_id, 0);
    let survivor = (doomed + 1) % cluster.len();
    let mut direct = cluster.member(survivor).client();
    let key = hound.key("api", "10.0.0.1:80");
    let lease = direct.get(&key).expect("the registration is in etcd").lease;
    let from = direct.revision() + 1;
    let watch = PrefixWatch::start(&cluster.member(survivor).url(), &hound.prefix(), from);
    // A second hound on the survivors only, with a monitor: what other sidecars would see.
    let survivors: Vec<String> = (0..cluster.len())
        .filter(|&n| n != doomed)
        .map(|n| cluster.member(n).url())
        .collect();
    let observer = Hound::builder_for_url(&survivors.join(","))
        .namespaces_of(&hound)
        .start();
    let mut watcher = monitor_synced(&observer, &["api"]);

    cluster.member_mut(doomed).kill();
    let killed = Instant::now();
    eprintln!(
        "failover ({victim:?}): killed member {} ({victim_id:x})",
        cluster.member(doomed).name()
    );

    // /etcd/leader answers through another member.
    let answer = poll_for(
        Duration::from_secs(10),
        "/etcd/leader to answer 200 through another member",
        || {
            let response = hound.get("/etcd/leader");
            (response.status == 200
                && response.json()["member_id"].as_u64() != Some(victim_id)
                && response.json()["leader"]
                    .as_u64()
                    .is_some_and(|l| l != 0 && l != victim_id))
            .then(|| response.json())
        },
    );
    eprintln!(
        "failover ({victim:?}): /etcd/leader answered 200 after {:?}: {answer}",
        killed.elapsed()
    );
    poll_until(Duration::from_secs(10), "/healthz to answer 200", || {
        hound.get("/healthz").status == 200
    });
    eprintln!(
        "failover ({victim:?}): /healthz 200 after {:?}",
        killed.elapsed()
    );

    // For two TTLs nobody sees the node leave, and the key keeps its lease.
    let until = killed + Duration::from_secs(2 * TTL);
    while Instant::now() < until {
        for seen in watch.seen() {
            match seen {
                Watched::Delete { key: gone, .. } if gone == key => {
                    panic!(
                        "etcd deleted the registration {:?} after the kill",
                        killed.elapsed()
                    )
                }
                Watched::Broken(why) => panic!("the direct watch broke: {why}"),
                _ => {}
            }
        }
        for socket in [&mut ws, &mut watcher] {
            match receive(socket, Duration::from_millis(100)) {
                Received::TimedOut => {}
                Received::Json(message) => {
                    let event = &message["body"]["key_event"];
                    assert!(
                        event != "DELETE" && event != "EXPIRE",
                        "the node was reported gone {:?} after the kill: {message}",
                        killed.elapsed()
                    );
                    assert_eq!(
                        membership(&message),
                        pairs(&[("10.0.0.1", 80)]),
                        "{message}"
                    );
                }
                Received::Closed(frame) => panic!("a socket closed: {frame:?}"),
            }
        }
        let entry = direct.get(&key);
        assert_eq!(
            entry.as_ref().map(|e| e.lease),
            Some(lease),
            "the key lost its lease {:?} after the kill",
            killed.elapsed()
        );
    }
    assert_eq!(direct.lease_granted_ttl(lease), Some(TTL as i64));

    // Failed over, hound works through the survivors as if nothing had happened: every one of
    // a series of registrations and status requests succeeds.
    let settled = killed.elapsed();
    let mut failures = Vec::new();
    let mut sockets = Vec::new();
    let mut expected = vec![("10.0.0.1".to_owned(), 80)];
    for n in 0..10u16 {
        match ws_connect(
            hound.addr(),
            &register_path("api", "10.0.1.1", 100 + n),
            &[],
        ) {
            Ok(socket) => {
                sockets.push(socket);
                expected.push(("10.0.1.1".to_owned(), 100 + n));
            }
            Err(response) => failures.push(format!("register #{n}: {response:?}")),
        }
        for path in ["/healthz", "/etcd/leader"] {
            let response = hound.get(path);
            if response.status != 200 {
                failures.push(format!("{path}: {response:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 30 requests failed {settled:?} after member {} died, while the other two \
         answer:\n{}",
        failures.len(),
        cluster.member(doomed).name(),
        failures.join("\n")
    );
    poll_until(PROMPT, "both hounds to list every node", || {
        hound.nodes("api") == expected && observer.nodes("api") == expected
    });
}

#[test]
fn losing_the_member_hound_talks_to_loses_no_registration() {
    survives_losing_a_member(Victim::HoundsMember);
}

#[test]
fn losing_the_etcd_leader_loses_no_registration() {
    survives_losing_a_member(Victim::Leader);
}

/// A dead member's address taken over by a stranger — another cluster's etcd on the same
/// port — is not put back into use: registrations keep landing in hound's own cluster.
#[test]
fn a_dead_members_address_answering_for_another_cluster_is_not_used() {
    let _w = watchdog();
    let mut cluster = EtcdCluster::start(3);
    let hound = Hound::builder_for_url(&cluster.urls()).start();
    let mut first = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut first, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));

    let doomed = 0;
    let port = cluster.member(doomed).client_port();
    cluster.member_mut(doomed).kill();
    poll_until(
        Duration::from_secs(10),
        "hound to set the dead member aside",
        || hound.stderr().contains("does not answer; using the others"),
    );
    let stranger = Etcd::start_on(port);
    poll_until(
        Duration::from_secs(10),
        "hound to notice the stranger on the dead member's address",
        || hound.stderr().contains("answers for another cluster"),
    );

    let mut sockets = Vec::new();
    for n in 0..12u16 {
        sockets.push(register(&hound, "api", "10.0.1.1", 100 + n));
    }
    let mut survivor = cluster.member(1).client();
    let mut outsider = stranger.client();
    for n in 0..12u16 {
        let key = hound.key("api", &format!("10.0.1.1:{}", 100 + n));
        assert!(
            survivor.get(&key).is_some(),
            "registration #{n} is not in hound's cluster"
        );
    }
    assert_eq!(
        outsider.get_prefix(&hound.prefix()),
        Vec::new(),
        "hound wrote into the stranger's cluster"
    );
    assert_eq!(hound.get("/healthz").status, 200);
}
