//! Verifies leader election per service (`campaign=1`) on both backends: who leads, LEADER
//! messages after SYNC and on every change with a rising `rev`, `GET /etcd/leader/:service`,
//! takeovers that keep the lead, a dead hound's leader replaced after the TTL, and interop with
//! the real `etcdctl elect` in the same election.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const TTL: u64 = 2;

/// The `/etcd/register` path of a campaigning node.
fn campaign_path(service: &str, ip: &str, port: u16) -> String {
    format!("{}&campaign=1", register_path(service, ip, port))
}

/// Registers `ip:port` under `service`, campaigning; panics unless the upgrade succeeds.
fn campaign(hound: &Hound, service: &str, ip: &str, port: u16) -> Ws {
    ws_open(hound, &campaign_path(service, ip, port))
}

/// A LEADER message as the contract shapes it.
fn leader_event(service: &str, leader: Value, rev: i64) -> Value {
    json!({"namespace": service, "body": {"key_event": "LEADER", "leader": leader, "rev": rev}})
}

fn node(ip: &str, port: u16) -> Value {
    json!({"ip": ip, "port": port})
}

/// Reads messages until a LEADER for `service` (service events on the way are skipped: the
/// membership and the election are watched apart, so their order is not fixed).
fn next_leader(ws: &mut Ws, service: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive(ws, left) {
            Received::Json(message) => {
                if message["body"]["key_event"] == "LEADER" && message["namespace"] == service {
                    return message;
                }
                assert!(
                    message["body"]["services"].is_array(),
                    "unexpected message: {message}"
                );
            }
            Received::Closed(frame) => panic!("socket closed ({frame:?}) waiting for LEADER"),
            Received::TimedOut => panic!("no LEADER for {service} within {within:?}"),
        }
    }
}

/// Asserts that no LEADER arrives within `within` (service events are allowed).
fn expect_no_leader(ws: &mut Ws, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive(ws, left) {
            Received::TimedOut => return,
            Received::Json(message) => assert_ne!(
                message["body"]["key_event"], "LEADER",
                "unexpected LEADER: {message}"
            ),
            Received::Closed(frame) => panic!("socket closed unexpectedly: {frame:?}"),
        }
    }
}

/// The first messages of a fresh register or monitor socket for `service`: its SYNC, then
/// the LEADER that follows it.
fn synced_leader(ws: &mut Ws, service: &str) -> Value {
    let sync = next_json(ws, PROMPT);
    assert_eq!(sync["body"]["key_event"], "SYNC", "SYNC first: {sync}");
    assert_eq!(sync["namespace"], service);
    let leader = next_json(ws, PROMPT);
    assert_eq!(
        leader["body"]["key_event"], "LEADER",
        "then LEADER: {leader}"
    );
    leader
}

fn rev(message: &Value) -> i64 {
    message["body"]["rev"].as_i64().expect("rev is a number")
}

/// `GET /etcd/leader/:service`, checked as a 200 JSON answer.
fn rest_leader(hound: &Hound, service: &str) -> Value {
    hound
        .get(&format!("/etcd/leader/{service}"))
        .assert_json(200)
}

/// The REST answer that goes with a LEADER message.
fn as_rest(message: &Value) -> Value {
    json!({"leader": message["body"]["leader"], "rev": message["body"]["rev"]})
}

/// First campaigner leads; it says so in its own first LEADER, as REST does; a second queues;
/// when the leader's socket closes the second leads at once (no TTL wait) with a higher rev;
/// when the last campaigner leaves the leader is null, with a still higher rev.
fn first_campaigner_leads_and_the_next_follows_at_once(backend: Backend) {
    let hound = backend.start(&["--ttl", &TTL.to_string()]);
    assert_eq!(
        rest_leader(&hound, "api"),
        json!({"leader": null, "rev": 0})
    );
    let mut watcher = monitor_synced(&hound, &["api"]);
    expect_no_message(&mut watcher, QUIET);

    let mut first = campaign(&hound, "api", "10.0.0.1", 80);
    let own = synced_leader(&mut first, "api");
    let r1 = rev(&own);
    assert_eq!(own, leader_event("api", node("10.0.0.1", 80), r1));
    assert_eq!(
        rest_leader(&hound, "api"),
        as_rest(&own),
        "REST agrees at once"
    );
    assert_eq!(next_leader(&mut watcher, "api", PROMPT), own);

    let mut second = campaign(&hound, "api", "10.0.0.2", 80);
    assert_eq!(
        synced_leader(&mut second, "api"),
        own,
        "the first still leads"
    );
    expect_no_leader(&mut watcher, QUIET);
    expect_no_leader(&mut first, QUIET);

    let closed = Instant::now();
    close(first);
    let next = next_leader(&mut watcher, "api", PROMPT);
    let took = closed.elapsed();
    let r2 = rev(&next);
    assert_eq!(next, leader_event("api", node("10.0.0.2", 80), r2));
    assert!(r2 > r1, "rev rises: {r1} then {r2}");
    assert!(
        took < Duration::from_secs(TTL) / 2,
        "the next led after {took:?}: no TTL wait"
    );
    eprintln!("{backend:?}: the next campaigner led {took:?} after the leader's socket closed");
    assert_eq!(
        next_leader(&mut second, "api", PROMPT),
        next,
        "and it hears so"
    );
    assert_eq!(rest_leader(&hound, "api"), as_rest(&next));

    close(second);
    let none = next_leader(&mut watcher, "api", PROMPT);
    let r3 = rev(&none);
    assert_eq!(none, leader_event("api", Value::Null, r3));
    assert!(r3 > r2, "rev rises: {r2} then {r3}");
    assert_eq!(
        rest_leader(&hound, "api"),
        json!({"leader": null, "rev": r3})
    );
    // A plain registration neither campaigns nor hears of an election it has no part in.
    let mut plain = register(&hound, "db", "10.0.0.3", 5432);
    let sync = next_json(&mut plain, PROMPT);
    assert_eq!(sync["body"]["key_event"], "SYNC");
    expect_no_message(&mut plain, QUIET);
    assert_eq!(rest_leader(&hound, "db"), json!({"leader": null, "rev": 0}));
}

#[test]
fn first_campaigner_leads_and_the_next_follows_at_once_on_etcd() {
    let _w = watchdog();
    first_campaigner_leads_and_the_next_follows_at_once(Backend::Etcd);
}

#[test]
fn first_campaigner_leads_and_the_next_follows_at_once_on_embedded() {
    let _w = watchdog();
    first_campaigner_leads_and_the_next_follows_at_once(Backend::Embedded);
}

/// A newer campaigning registration of the leading node takes it over (the older socket is
/// closed with 4000) without a change of leader: no LEADER message, the same rev. A takeover
/// that does not campaign withdraws the node from the election.
fn a_takeover_of_the_leader_keeps_the_lead(backend: Backend) {
    let hound = backend.start(&["--ttl", &TTL.to_string()]);
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut older = campaign(&hound, "api", "10.0.0.1", 80);
    let own = synced_leader(&mut older, "api");
    let _queued = campaign(&hound, "api", "10.0.0.2", 80);
    assert_eq!(next_leader(&mut watcher, "api", PROMPT), own);

    let mut newer = campaign(&hound, "api", "10.0.0.1", 80);
    assert_eq!(
        read_close(&mut older, PROMPT).map(|(code, _)| code),
        Some(4000)
    );
    assert_eq!(
        synced_leader(&mut newer, "api"),
        own,
        "it still leads, same rev"
    );
    expect_no_leader(&mut watcher, Duration::from_secs(TTL) + QUIET);
    assert_eq!(rest_leader(&hound, "api"), as_rest(&own));
    if let Some(etcd) = hound.etcd() {
        let campaigns = etcd.client().get_prefix("election/api/");
        assert_eq!(campaigns.len(), 2, "one key per campaigner: {campaigns:?}");
    }

    // Taken over again, without campaign=1: the node leaves the election.
    let mut plain = register(&hound, "api", "10.0.0.1", 80);
    assert_eq!(
        read_close(&mut newer, PROMPT).map(|(code, _)| code),
        Some(4000)
    );
    let next = next_leader(&mut watcher, "api", PROMPT);
    assert_eq!(next["body"]["leader"], node("10.0.0.2", 80));
    assert!(rev(&next) > rev(&own));
    // Its SYNC may still be followed by the old leader: the withdrawal (the older lease's
    // revocation) is not waited for by a registration that does not campaign.
    let mut heard = next_leader(&mut plain, "api", PROMPT);
    if heard == own {
        heard = next_leader(&mut plain, "api", PROMPT);
    }
    assert_eq!(heard, next);
}

#[test]
fn a_takeover_of_the_leader_keeps_the_lead_on_etcd() {
    let _w = watchdog();
    a_takeover_of_the_leader_keeps_the_lead(Backend::Etcd);
}

#[test]
fn a_takeover_of_the_leader_keeps_the_lead_on_embedded() {
    let _w = watchdog();
    a_takeover_of_the_leader_keeps_the_lead(Backend::Embedded);
}

/// Reads service events for `service` until its only node reads as `wanted`; LEADER messages
/// on the way are returned (the membership and the election are watched apart, so their
/// order is not fixed).
fn until_node(ws: &mut Ws, service: &str, wanted: &Value) -> Vec<Value> {
    let deadline = Instant::now() + PROMPT;
    let mut leaders = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive(ws, left) {
            Received::Json(message) if message["body"]["key_event"] == "LEADER" => {
                leaders.push(message);
            }
            Received::Json(message) => {
                assert_eq!(message["namespace"], service, "{message}");
                if message["body"]["services"] == json!([wanted]) {
                    return leaders;
                }
            }
            other => panic!("{service} never read {wanted}: {other:?}"),
        }
    }
}

/// Both features on one registration: a campaigner with tags, a weight, meta and a tcp check.
/// Its registration's value carries its description and status (etcd's naming JSON), while its
/// campaign's value stays the plain `ip:port` etcd's election protocol has, so LEADER names
/// it by address alone. A campaigning takeover with another description and no check keeps
/// the lead and the lease, and writes what the new registration says; the old check writes
/// nothing more.
fn a_described_and_checked_campaigner_leads_by_its_address(backend: Backend) {
    let hound = backend.start(&["--ttl", "30"]);
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut port = CheckedPort::open();
    let number = port.addr().port();
    let number_text = number.to_string();
    let path = |extra: &[(&str, &str)]| {
        let mut pairs = vec![
            ("service", "api"),
            ("ip", "127.0.0.1"),
            ("port", number_text.as_str()),
            ("campaign", "1"),
        ];
        pairs.extend_from_slice(extra);
        format!("/etcd/register?{}", query(&pairs))
    };
    let described = [
        ("tags", "v2,canary"),
        ("weight", "10"),
        ("meta.zone", "eu-1"),
        ("check", "tcp"),
        ("check_interval", "1"),
    ];
    let mut older = ws_open(&hound, &path(&described));
    let sync = next_json(&mut older, PROMPT);
    assert_eq!(
        sync["body"]["services"][0],
        json!({"ip": "127.0.0.1", "port": number, "tags": ["v2", "canary"], "weight": 10,
               "meta": {"zone": "eu-1"}, "status": "critical", "note": "not checked yet"}),
        "{sync}"
    );
    let own = next_json(&mut older, PROMPT);
    let first_rev = rev(&own);
    assert_eq!(
        own,
        leader_event("api", node("127.0.0.1", number), first_rev)
    );
    assert_eq!(rest_leader(&hound, "api"), as_rest(&own));
    let passing = json!({"ip": "127.0.0.1", "port": number, "tags": ["v2", "canary"],
                         "weight": 10, "meta": {"zone": "eu-1"}, "status": "passing"});
    let mut heard = until_node(&mut watcher, "api", &passing);
    if heard.is_empty() {
        // The election's watch may deliver after the check's write.
        heard.push(next_leader(&mut watcher, "api", PROMPT));
    }
    assert_eq!(heard.len(), 1, "one LEADER: {heard:?}");
    assert_eq!(heard[0], own);
    expect_no_leader(&mut older, QUIET);
    let held_on = hound.etcd().map(|etcd| {
        let mut client = etcd.client();
        let registration = client
            .get(&hound.key("api", &format!("127.0.0.1:{number}")))
            .expect("registered");
        let value: Value = serde_json::from_str(&registration.value).unwrap();
        assert_eq!(value["Addr"], format!("127.0.0.1:{number}"));
        assert_eq!(value["Metadata"]["tags"], json!(["v2", "canary"]));
        assert_eq!(value["Metadata"]["status"], "passing");
        let campaigns = client.get_prefix("election/api/");
        assert_eq!(campaigns.len(), 1, "{campaigns:?}");
        assert_eq!(
            campaigns[0].value,
            format!("127.0.0.1:{number}"),
            "the campaign's value is etcdctl's plain address"
        );
        assert_eq!(campaigns[0].lease, registration.lease);
        registration.lease
    });

    // Taken over by a campaigner with another description and no check.
    let mut newer = ws_open(&hound, &path(&[("tags", "v3")]));
    assert_eq!(
        read_close(&mut older, PROMPT).map(|(code, _)| code),
        Some(4000)
    );
    let plain = json!({"ip": "127.0.0.1", "port": number, "tags": ["v3"]});
    let sync = next_json(&mut newer, PROMPT);
    assert_eq!(sync["body"]["services"], json!([plain]), "{sync}");
    assert_eq!(
        next_json(&mut newer, PROMPT),
        own,
        "it still leads, same rev"
    );
    assert!(until_node(&mut watcher, "api", &plain).is_empty());
    if let (Some(etcd), Some(lease)) = (hound.etcd(), held_on) {
        let mut client = etcd.client();
        let registration = client
            .get(&hound.key("api", &format!("127.0.0.1:{number}")))
            .expect("still registered");
        assert_eq!(registration.lease, lease, "the same lease");
        let value: Value = serde_json::from_str(&registration.value).unwrap();
        assert_eq!(
            value,
            json!({"Addr": format!("127.0.0.1:{number}"), "Metadata": {"tags": ["v3"]}})
        );
        let campaigns = client.get_prefix("election/api/");
        assert_eq!(campaigns.len(), 1, "{campaigns:?}");
        assert_eq!(campaigns[0].value, format!("127.0.0.1:{number}"));
    }
    // The old check has stopped: a closed port changes nothing for two check intervals.
    port.close();
    expect_no_message(&mut watcher, Duration::from_secs(2) + QUIET);
    assert_eq!(rest_leader(&hound, "api"), as_rest(&own));
    // A status the new socket reports changes the node as the new registration describes it.
    let report = r#"{"status":"warning","note":"slow disk"}"#;
    newer
        .send(tungstenite::Message::Text(report.into()))
        .expect("send a status frame");
    let warned = json!({"ip": "127.0.0.1", "port": number, "tags": ["v3"], "status": "warning",
                        "note": "slow disk"});
    assert!(until_node(&mut watcher, "api", &warned).is_empty());
    if let Some(etcd) = hound.etcd() {
        let registration = etcd
            .client()
            .get(&hound.key("api", &format!("127.0.0.1:{number}")))
            .expect("still registered");
        let value: Value = serde_json::from_str(&registration.value).unwrap();
        assert_eq!(value["Metadata"]["tags"], json!(["v3"]), "{value}");
        assert_eq!(value["Metadata"]["status"], "warning", "{value}");
    }
    expect_no_leader(&mut watcher, QUIET);
}

#[test]
fn a_described_and_checked_campaigner_leads_by_its_address_on_etcd() {
    let _w = watchdog();
    a_described_and_checked_campaigner_leads_by_its_address(Backend::Etcd);
}

#[test]
fn a_described_and_checked_campaigner_leads_by_its_address_on_embedded() {
    let _w = watchdog();
    a_described_and_checked_campaigner_leads_by_its_address(Backend::Embedded);
}

/// The leading campaigner's hound is SIGKILLed: its lease is not revoked, so the next
/// campaigner (through another hound) leads once the lease expires, after about the TTL, and
/// monitors of the surviving hound hear of it with a higher rev.
#[test]
fn when_the_leaders_hound_dies_the_next_leads_after_the_ttl() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let ttl = TTL.to_string();
    let doomed = Hound::start(&etcd, &["--ttl", &ttl]);
    let survivor = Hound::builder(&etcd)
        .namespaces_of(&doomed)
        .args(["--ttl", &ttl])
        .start();
    let mut leader = campaign(&doomed, "api", "10.0.0.1", 80);
    let own = synced_leader(&mut leader, "api");
    let mut next = campaign(&survivor, "api", "10.0.0.2", 80);
    assert_eq!(synced_leader(&mut next, "api"), own, "both hounds agree");
    let mut watcher = monitor(&survivor, &["api"]);
    assert_eq!(synced_leader(&mut watcher, "api"), own);

    doomed.signal(libc::SIGKILL);
    let killed = Instant::now();
    let change = next_leader(&mut watcher, "api", Duration::from_secs(TTL) + PROMPT);
    let took = killed.elapsed();
    eprintln!("the next campaigner led {took:?} after the leader's hound was killed");
    assert_eq!(change["body"]["leader"], node("10.0.0.2", 80));
    assert!(rev(&change) > rev(&own));
    // etcd may round a lease's expiry down by up to a second or so.
    assert!(
        took >= Duration::from_secs(TTL) / 2,
        "led after {took:?}: before the lease could expire?"
    );
    assert_eq!(next_leader(&mut next, "api", PROMPT), change);
    assert_eq!(rest_leader(&survivor, "api"), as_rest(&change));
    drop(leader);
}

/// etcd loses a campaigner's lease (revoked by hand): its campaign key goes with it, and hound
/// registers the node again on a new lease with a new campaign key, which leads again (it is
/// the only campaigner) with a higher rev.
#[test]
fn a_lost_lease_campaigns_again_on_the_new_one() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", &TTL.to_string()]);
    let mut watcher = monitor_synced(&hound, &["api"]);
    let _campaigner = campaign(&hound, "api", "10.0.0.1", 80);
    let first = next_leader(&mut watcher, "api", PROMPT);
    let mut client = etcd.client();
    let lease = client
        .get(&hound.key("api", "10.0.0.1:80"))
        .expect("registered")
        .lease;
    client.lease_revoke(lease);
    let none = next_leader(&mut watcher, "api", PROMPT);
    assert_eq!(none["body"]["leader"], Value::Null);
    let again = next_leader(&mut watcher, "api", Duration::from_secs(TTL) + PROMPT);
    assert_eq!(again["body"]["leader"], node("10.0.0.1", 80));
    assert!(rev(&again) > rev(&none) && rev(&none) > rev(&first));
    let new_lease = client
        .get(&hound.key("api", "10.0.0.1:80"))
        .expect("registered again")
        .lease;
    assert_ne!(new_lease, lease);
    let keys = client.get_prefix("election/api/");
    assert_eq!(
        keys.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
        [format!("election/api/{new_lease:x}")]
    );
}

/// Monitors on two hounds of one cluster see the same leaders with the same revs.
#[test]
fn monitors_on_two_hounds_agree_on_every_leader() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let a = Hound::start(&etcd, &[]);
    let b = Hound::builder(&etcd).namespaces_of(&a).start();
    let mut on_a = monitor_synced(&a, &["api"]);
    let mut on_b = monitor_synced(&b, &["api"]);
    let mut sockets = Vec::new();
    for (i, hound) in [&a, &b, &a].into_iter().enumerate() {
        sockets.push(campaign(hound, "api", "10.0.0.1", 80 + i as u16));
    }
    let mut seen = Vec::new();
    for socket in sockets {
        let (x, y) = (
            next_leader(&mut on_a, "api", PROMPT),
            next_leader(&mut on_b, "api", PROMPT),
        );
        assert_eq!(x, y, "both hounds report the same leader and rev");
        seen.push(rev(&x));
        close(socket);
    }
    let (x, y) = (
        next_leader(&mut on_a, "api", PROMPT),
        next_leader(&mut on_b, "api", PROMPT),
    );
    assert_eq!((x["body"]["leader"].clone(), x.clone()), (Value::Null, y));
    seen.push(rev(&x));
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "revs rise: {seen:?}");
}

// ---- etcdctl elect ------------------------------------------------------------------------

/// A running `etcdctl elect <election> <value>`, stopped on drop; its stdout lines arrive on
/// a channel (it prints its key and value once it leads).
struct Etcdctl {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Etcdctl {
    fn elect(etcd: &Etcd, election: &str, value: &str) -> Etcdctl {
        let binary = std::env::var("HOUND_TEST_ETCDCTL").unwrap_or_else(|_| "etcdctl".into());
        let mut command = Command::new(binary);
        command
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.url(), "elect", election, value])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = spawn_child(command).expect("spawn etcdctl (Debian's etcd-client)");
        let stdout = child.stdout.take().expect("etcdctl stdout");
        let (send, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Etcdctl { child, lines }
    }

    /// Waits until etcdctl says it leads: it prints its key, then its value.
    fn wait_leading(&self, value: &str) -> String {
        let key = self
            .lines
            .recv_timeout(PROMPT)
            .expect("etcdctl to print its key once it leads");
        let printed = self.lines.recv_timeout(PROMPT).expect("and its value");
        assert_eq!(printed, value);
        key
    }

    fn assert_not_leading(&self, within: Duration) {
        if let Ok(line) = self.lines.recv_timeout(within) {
            panic!("etcdctl leads too early: {line}");
        }
    }

    /// SIGINT: etcdctl resigns (revokes its session's lease) and exits.
    fn stop(mut self) {
        send_signal(self.child.id(), libc::SIGINT);
        let status = wait_with_deadline(&mut self.child, PROMPT);
        assert!(status.is_some(), "etcdctl did not exit on SIGINT");
    }
}

impl Drop for Etcdctl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `prefix` holds `count` keys in etcd.
fn wait_for_campaigns(etcd: &Etcd, prefix: &str, count: usize) -> Vec<Entry> {
    let mut client = etcd.client();
    poll_for(PROMPT, "the campaign keys", || {
        Some(client.get_prefix(prefix)).filter(|keys| keys.len() == count)
    })
}

/// An `etcdctl elect` queued behind hound's leader takes over when that leader's socket
/// closes, and hound's monitors report it as `{"value":…}` with its key's create revision.
#[test]
fn etcdctl_queued_behind_hounds_leader_leads_when_it_leaves() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut watcher = monitor_synced(&hound, &["api"]);
    let leader = campaign(&hound, "api", "10.0.0.1", 80);
    let own = next_leader(&mut watcher, "api", PROMPT);
    assert_eq!(own["body"]["leader"], node("10.0.0.1", 80));

    let etcdctl = Etcdctl::elect(&etcd, "election/api", "worker-7");
    let keys = wait_for_campaigns(&etcd, "election/api/", 2);
    // Hound's key is named after its registration's lease, in lower-case hex.
    let lease = etcd
        .client()
        .get(&hound.key("api", "10.0.0.1:80"))
        .expect("registered")
        .lease;
    assert!(
        keys.iter()
            .any(|k| k.key == format!("election/api/{lease:x}") && k.value == "10.0.0.1:80"),
        "hound's campaign key: {keys:?}"
    );
    etcdctl.assert_not_leading(QUIET);
    expect_no_leader(&mut watcher, QUIET);

    close(leader);
    let key = etcdctl.wait_leading("worker-7");
    let change = next_leader(&mut watcher, "api", PROMPT);
    assert_eq!(change["body"]["leader"], json!({"value": "worker-7"}));
    assert!(rev(&change) > rev(&own));
    assert!(key.starts_with("election/api/"), "{key}");
    assert_eq!(rest_leader(&hound, "api"), as_rest(&change));
    etcdctl.stop();
    let none = next_leader(&mut watcher, "api", PROMPT);
    assert_eq!(none["body"]["leader"], Value::Null);
}

/// hound's campaigner queues behind a leading `etcdctl elect` and leads once etcdctl stops.
#[test]
fn a_hound_campaigner_leads_after_etcdctl_stops() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let etcdctl = Etcdctl::elect(&etcd, "election/api", "worker-7");
    etcdctl.wait_leading("worker-7");
    let mut campaigner = campaign(&hound, "api", "10.0.0.2", 80);
    let first = synced_leader(&mut campaigner, "api");
    assert_eq!(first["body"]["leader"], json!({"value": "worker-7"}));
    assert_eq!(rest_leader(&hound, "api"), as_rest(&first));

    etcdctl.stop();
    let change = next_leader(&mut campaigner, "api", PROMPT);
    assert_eq!(change["body"]["leader"], node("10.0.0.2", 80));
    assert!(rev(&change) > rev(&first));
    assert_eq!(rest_leader(&hound, "api"), as_rest(&change));
}

/// Bad `campaign` values are a 400 before the upgrade, and nothing is registered.
#[test]
fn a_bad_campaign_value_is_400_and_registers_nothing() {
    let _w = watchdog();
    let hound = Backend::Embedded.start(&[]);
    for path in [
        format!("{}&campaign=yes", register_path("api", "10.0.0.1", 80)),
        format!("{}&campaign=1", monitor_path(&["api"])),
    ] {
        match ws_connect(hound.addr(), &path, &[]) {
            Err(response) => assert_eq!(response.status, 400, "{path}"),
            Ok(_) => panic!("{path} was upgraded"),
        }
    }
    assert!(hound.services().is_empty());
    assert_eq!(
        hound.get("/etcd/leader/a%20b").status,
        400,
        "a bad service name"
    );
}
