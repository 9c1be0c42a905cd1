//! Verifies node health on both backends: the status a service reports on its register socket
//! (a `PUT` for every change, nothing for none — on etcd exactly one write, seen in etcd's
//! revisions), `?status=` and the healthy-only discovery answers, and the drain on SIGTERM
//! with `--drain-grace` (another hound's monitor sees `draining`, then `DELETE` no sooner than
//! the grace; hound exits 0 within the grace and 5 s).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;

use crate::support::*;

on_both_backends! {
    reported_statuses_are_puts_and_filter_discovery
        => reported_statuses_are_puts_and_filter_discovery_on_etcd,
           reported_statuses_are_puts_and_filter_discovery_on_embedded;
    sigterm_with_a_drain_grace_drains_then_deregisters
        => sigterm_with_a_drain_grace_drains_then_deregisters_on_etcd,
           sigterm_with_a_drain_grace_drains_then_deregisters_on_embedded;
    http_checks_follow_the_service
        => http_checks_follow_the_service_on_etcd,
           http_checks_follow_the_service_on_embedded;
    tcp_checks_follow_the_port
        => tcp_checks_follow_the_port_on_etcd,
           tcp_checks_follow_the_port_on_embedded;
    bad_checks_are_400_and_register_nothing
        => bad_checks_are_400_and_register_nothing_on_etcd,
           bad_checks_are_400_and_register_nothing_on_embedded;
}

/// The check interval of these tests, and the contract's bound on how soon a change of the
/// service shows: two intervals.
const INTERVAL: Duration = Duration::from_secs(1);
const SHOWN_WITHIN: Duration = Duration::from_secs(2);

/// Reads `PUT`s until the node's status is `status`, within [`SHOWN_WITHIN`] of `since`;
/// returns the node. Panics past the bound or on anything but a PUT.
fn shows(ws: &mut Ws, status: &str, since: Instant, what: &str) -> Value {
    let deadline = since + SHOWN_WITHIN + Duration::from_millis(300);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match receive(ws, left) {
            Received::Json(message) => message,
            other => panic!("{what}: no {status} within {SHOWN_WITHIN:?}: {other:?}"),
        };
        assert_eq!(message["body"]["key_event"], "PUT", "{what}: {message}");
        let node = message["body"]["services"][0].clone();
        if node["status"] == status {
            let took = since.elapsed();
            assert!(
                took <= SHOWN_WITHIN,
                "{what}: {status} shown after {took:?}"
            );
            return node;
        }
    }
}

/// The register path of a node at `addr` with `check` parameters.
fn checked_path(addr: std::net::SocketAddr, check: &[(&str, &str)]) -> String {
    let port = addr.port().to_string();
    let mut pairs = vec![
        ("service", "api"),
        ("ip", "127.0.0.1"),
        ("port", port.as_str()),
    ];
    pairs.extend_from_slice(check);
    format!("/etcd/register?{}", query(&pairs))
}

/// `check=http` against a real HTTP server the test controls: a checked node starts
/// critical, 200 makes it passing, 429 warning, 500 or silence critical, and back to passing;
/// a closed port is critical. Each change reaches a monitor (on etcd, one of another hound)
/// within two check intervals, as one write; an unchanged result writes nothing.
fn http_checks_follow_the_service(backend: Backend) {
    let hound = backend.start(&["--ttl", "30"]);
    let peer = hound.peer(&[]);
    let mut etcd = hound.etcd().map(Etcd::client);
    let mut watcher = match &peer {
        Some(peer) => monitor_synced(peer, &["api"]),
        None => monitor_synced(&hound, &["api"]),
    };
    let server = CheckedHttp::start(Answer::Status(200));
    let path = checked_path(
        server.addr(),
        &[
            ("check", "http"),
            ("check_path", "/health"),
            ("check_interval", "1"),
            ("check_timeout", "0.5"),
            ("tags", "v2"),
        ],
    );
    let registered = Instant::now();
    let _service = ws_open(&hound, &path);
    let first = next_put(&mut watcher);
    assert_eq!(first["tags"], json!(["v2"]));
    if first["status"] == "critical" {
        assert_eq!(first["note"], "not checked yet", "{first}");
        let passing = shows(&mut watcher, "passing", registered, "first check");
        assert!(passing.get("note").is_none(), "{passing}");
    } else {
        // The first check passed before the registration's own PUT was read.
        assert_eq!(first["status"], "passing", "{first}");
    }
    assert!(
        server.paths().iter().all(|p| p == "/health"),
        "{:?}",
        server.paths()
    );

    // Unchanged results write nothing: two more checks pass, and etcd's revision stays.
    let runs = hound.metric("hound_check_runs_total{result=\"passing\"}");
    let before = etcd.as_mut().map(EtcdClient::revision);
    expect_no_message(&mut watcher, INTERVAL * 2 + Duration::from_millis(300));
    assert!(hound.metric("hound_check_runs_total{result=\"passing\"}") >= runs + 2.0);
    if let (Some(client), Some(before)) = (etcd.as_mut(), before) {
        assert_eq!(
            client.revision(),
            before,
            "a passing check again writes nothing"
        );
    }
    assert_eq!(hound.metric("hound_nodes{status=\"passing\"}"), 1.0);
    assert_eq!(
        hound
            .get("/etcd/services/api?status=passing")
            .assert_json(200)["services"][0]["ip"],
        "127.0.0.1"
    );

    for (answer, status, note) in [
        (Answer::Status(429), "warning", "HTTP 429"),
        (Answer::Status(500), "critical", "HTTP 500"),
        (Answer::Status(200), "passing", ""),
        (Answer::Silence, "critical", "no answer within 0.5 s"),
        (Answer::Status(204), "passing", ""),
    ] {
        let before = etcd.as_mut().map(EtcdClient::revision);
        server.set(answer);
        let node = shows(&mut watcher, status, Instant::now(), &format!("{answer:?}"));
        assert_eq!(
            node["note"].as_str().unwrap_or(""),
            note,
            "{answer:?}: {node}"
        );
        if let (Some(client), Some(before)) = (etcd.as_mut(), before) {
            assert_eq!(client.revision(), before + 1, "{answer:?}: one write");
        }
        // The watcher may be on another hound, whose watch can apply the write before this
        // hound's own does: poll this one's answer, bounded.
        let in_sd = || {
            !hound
                .get("/v1/sd/prometheus?service=api")
                .assert_json(200)
                .as_array()
                .unwrap()
                .is_empty()
        };
        poll_until(
            PROMPT,
            &format!("{answer:?}: healthy only in discovery"),
            || in_sd() == (status != "critical"),
        );
    }
    assert_eq!(hound.metric("hound_nodes{status=\"passing\"}"), 1.0);
    assert!(hound.metric("hound_check_runs_total{result=\"warning\"}") >= 1.0);
    assert!(hound.metric("hound_check_runs_total{result=\"critical\"}") >= 2.0);

    drop(server);
    let closed = shows(&mut watcher, "critical", Instant::now(), "a closed port");
    assert!(
        closed["note"]
            .as_str()
            .unwrap()
            .starts_with("cannot connect"),
        "{closed}"
    );
    // Counted once this hound's own watch applied the write, which may be after the watcher's.
    poll_until(PROMPT, "the closed port's node counted as critical", || {
        hound.metric("hound_nodes{status=\"critical\"}") == 1.0
    });
}

/// `check=tcp`: an open port is passing, a closed one critical, and open again passing.
fn tcp_checks_follow_the_port(backend: Backend) {
    let hound = backend.start(&["--ttl", "30"]);
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut port = CheckedPort::open();
    let path = checked_path(port.addr(), &[("check", "tcp"), ("check_interval", "1")]);
    let registered = Instant::now();
    let _service = ws_open(&hound, &path);
    let first = next_put(&mut watcher);
    if first["status"] != "passing" {
        assert_eq!(first["status"], "critical", "{first}");
        shows(&mut watcher, "passing", registered, "first check");
    }
    port.close();
    let closed = shows(&mut watcher, "critical", Instant::now(), "closed");
    assert!(
        closed["note"].as_str().unwrap().contains("refused"),
        "{closed}"
    );
    port.reopen();
    let open = shows(&mut watcher, "passing", Instant::now(), "open again");
    assert_eq!(
        open,
        json!({"ip":"127.0.0.1","port":port.addr().port(),"status":"passing"})
    );
}

/// Every bad check parameter is a 400 before the upgrade, and registers nothing.
fn bad_checks_are_400_and_register_nothing(backend: Backend) {
    let hound = backend.start(&[]);
    for check in [
        &[("check", "udp")][..],
        &[("check", "")],
        &[("check_interval", "5")],
        &[("check", "tcp"), ("check_path", "/")],
        &[("check", "http"), ("check_path", "health")],
        &[("check", "http"), ("check_path", "/a b")],
        &[("check", "tcp"), ("check_interval", "0")],
        &[("check", "tcp"), ("check_interval", "3601")],
        &[("check", "tcp"), ("check_timeout", "0")],
        &[
            ("check", "tcp"),
            ("check_interval", "2"),
            ("check_timeout", "2"),
        ],
        &[("check", "tcp"), ("check_timeout", "x")],
    ] {
        let path = checked_path("127.0.0.1:80".parse().unwrap(), check);
        match ws_connect(hound.addr(), &path, &[]) {
            Ok(_) => panic!("{path} was upgraded; expected 400"),
            Err(response) => response.assert_error(400),
        }
    }
    let named = format!("{}&check=tcp", register_path("api", "db.local", 80));
    match ws_connect(hound.addr(), &named, &[]) {
        Ok(_) => panic!("a checked host name was upgraded; expected 400"),
        Err(response) => response.assert_error(400),
    }
    assert!(hound.services().is_empty());
}

/// Sends a text frame on `ws`.
fn say(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).expect("send a frame");
}

/// The one node of the `PUT` a monitor reads next for service `api`.
fn next_put(ws: &mut Ws) -> Value {
    let message = next_json(ws, PROMPT);
    assert_eq!(message["body"]["key_event"], "PUT", "{message}");
    let services = message["body"]["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{message}");
    services[0].clone()
}

/// The statuses `/v1/sd/prometheus` lists for `api` (healthy nodes only).
fn sd_statuses(hound: &Hound) -> Vec<String> {
    let targets = hound.get("/v1/sd/prometheus?service=api").assert_json(200);
    targets
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["labels"]["__meta_hound_status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// A service reports warning, critical, draining and passing again: each is one `PUT` (on
/// etcd one write: the revision moves by one), carrying `status` and `note`, shown by REST and
/// its `?status=` filter, and healthy-only discovery lists the node only while it is passing
/// or warning. The same status again, or a frame that is not a status, sends and writes nothing.
fn reported_statuses_are_puts_and_filter_discovery(backend: Backend) {
    let hound = backend.start(&["--ttl", "30"]);
    let mut etcd = hound.etcd().map(Etcd::client);
    let mut watcher = monitor_synced(&hound, &["api"]);
    // On etcd, another hound's monitor sees every change too.
    let peer = hound.peer(&[]);
    let mut far = peer.as_ref().map(|peer| monitor_synced(peer, &["api"]));
    let path = format!("{}&tags=v2", register_path("api", "10.0.0.1", 80));
    let mut service = ws_open(&hound, &path);
    assert_eq!(
        next_put(&mut watcher),
        json!({"ip":"10.0.0.1","port":80,"tags":["v2"]})
    );
    if let Some(far) = far.as_mut() {
        assert_eq!(
            next_put(far),
            json!({"ip":"10.0.0.1","port":80,"tags":["v2"]})
        );
    }
    assert_eq!(sd_statuses(&hound), ["passing"]);
    let writes = hound.metric("hound_status_writes_total");

    let steps: [(&str, Value, &[&str]); 4] = [
        (
            r#"{"status":"warning","note":"slow disk"}"#,
            json!({"ip":"10.0.0.1","port":80,"tags":["v2"],"status":"warning","note":"slow disk"}),
            &["warning"],
        ),
        (
            r#"{"status":"critical","note":"db down"}"#,
            json!({"ip":"10.0.0.1","port":80,"tags":["v2"],"status":"critical","note":"db down"}),
            &[],
        ),
        (
            r#"{"status":"draining"}"#,
            json!({"ip":"10.0.0.1","port":80,"tags":["v2"],"status":"draining"}),
            &[],
        ),
        (
            r#"{"status":"passing"}"#,
            json!({"ip":"10.0.0.1","port":80,"tags":["v2"]}),
            &["passing"],
        ),
    ];
    for (n, (frame, node, healthy)) in steps.iter().enumerate() {
        let before = etcd.as_mut().map(EtcdClient::revision);
        say(&mut service, frame);
        assert_eq!(&next_put(&mut watcher), node, "after {frame}");
        if let Some(far) = far.as_mut() {
            assert_eq!(&next_put(far), node, "another hound, after {frame}");
        }
        let status = node["status"].as_str().unwrap_or("passing");
        let filtered = hound
            .get(&format!("/etcd/services/api?status={status}"))
            .assert_json(200);
        assert_eq!(filtered, json!({ "services": [node] }), "{frame}");
        assert_eq!(sd_statuses(&hound), *healthy, "{frame}");
        if let (Some(client), Some(before)) = (etcd.as_mut(), before) {
            assert_eq!(client.revision(), before + 1, "one write for {frame}");
            let value = client.get(&hound.key("api", "10.0.0.1:80")).unwrap().value;
            let metadata = &serde_json::from_str::<Value>(&value).unwrap()["Metadata"];
            assert_eq!(metadata["status"], node["status"], "{value}");
        }
        assert_eq!(
            hound.metric("hound_status_writes_total"),
            writes + n as f64 + 1.0
        );
        // The same status again, and frames that are not statuses, change nothing.
        let before = etcd.as_mut().map(EtcdClient::revision);
        say(&mut service, frame);
        say(&mut service, r#"{"status":"fine"}"#);
        say(&mut service, "hello");
        expect_no_message(&mut watcher, Duration::from_millis(400));
        if let Some(far) = far.as_mut() {
            expect_no_message(far, Duration::from_millis(100));
        }
        if let (Some(client), Some(before)) = (etcd.as_mut(), before) {
            assert_eq!(
                client.revision(),
                before,
                "no write for an unchanged {frame}"
            );
        }
    }
    // A monitor socket's frames are never statuses.
    say(&mut watcher, r#"{"status":"critical"}"#);
    expect_no_message(&mut watcher, Duration::from_millis(300));
    close(service);
    let gone = next_json(&mut watcher, PROMPT);
    assert_eq!(gone, key_event("api", "DELETE", &[]));
}

/// SIGTERM with `--drain-grace 2`: the node reads `draining` at once (on etcd, another
/// hound's monitor sees it), stays registered for the grace, then is deleted (`DELETE`, no
/// sooner than 2 s after the signal); hound exits 0 within the grace and 5 s.
fn sigterm_with_a_drain_grace_drains_then_deregisters(backend: Backend) {
    const GRACE: Duration = Duration::from_secs(2);
    let exit_limit = GRACE + Duration::from_millis(5500);
    let mut leaving = backend.start(&["--ttl", "30", "--drain-grace", "2"]);
    let staying = leaving.peer(&[]);
    let mut watch = match &staying {
        Some(staying) => monitor_synced(staying, &["api"]),
        None => monitor_synced(&leaving, &["api"]),
    };
    let mut service = register(&leaving, "api", "10.0.0.1", 80);
    expect_message(&mut service, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    assert_eq!(next_put(&mut watch), json!({"ip":"10.0.0.1","port":80}));
    let mut local_monitor = monitor_synced(&leaving, &["api"]);

    let (status, took, seen) = std::thread::scope(|scope| {
        let signalled = Instant::now();
        let reader = scope.spawn(move || {
            let draining = next_put(&mut watch);
            let drained_after = signalled.elapsed();
            // On etcd the other hound sees the DELETE; on the embedded store the monitor is
            // on the leaving hound, which closes it with 1001 as it deregisters.
            let end = receive(&mut watch, GRACE + PROMPT);
            (draining, drained_after, end, signalled.elapsed())
        });
        let service_reader = scope.spawn(move || {
            let draining = next_put(&mut service);
            (draining, read_close(&mut service, GRACE + PROMPT))
        });
        let local_reader = scope.spawn(move || {
            let draining = next_put(&mut local_monitor);
            let close = read_close(&mut local_monitor, GRACE + PROMPT);
            (draining, close, signalled.elapsed())
        });
        let (status, took) = leaving.terminate(exit_limit);
        let seen = (
            reader.join().unwrap(),
            service_reader.join().unwrap(),
            local_reader.join().unwrap(),
        );
        (status, took, seen)
    });
    let ((draining, drained_after, end, ended_after), service_seen, local_seen) = seen;
    let draining_node = json!({"ip":"10.0.0.1","port":80,"status":"draining"});
    assert_eq!(draining, draining_node);
    assert!(
        drained_after < GRACE,
        "draining shown {drained_after:?} after SIGTERM"
    );
    assert_eq!(
        service_seen.0, draining_node,
        "the service sees itself draining"
    );
    assert_eq!(local_seen.0, draining_node);
    assert!(
        local_seen.2 >= GRACE,
        "sockets stay open for the grace: closed after {:?}",
        local_seen.2
    );
    let going_away = Some((1001, "shutting down".to_owned()));
    assert_eq!(local_seen.1, going_away);
    assert_eq!(service_seen.1, going_away);
    // On etcd the other hound's monitor sees the DELETE. On the embedded store the monitor is
    // on the leaving hound, which deregisters and closes its sockets together: it sees the
    // DELETE or the close first. Either way, no sooner than the grace.
    match (&end, leaving.backend()) {
        (Received::Json(message), _) => {
            assert_eq!(*message, key_event("api", "DELETE", &[]));
        }
        (Received::Closed(_), Backend::Embedded) => {}
        (other, backend) => panic!("expected DELETE on {backend:?}, got {other:?}"),
    }
    assert!(
        ended_after >= GRACE,
        "deregistered {ended_after:?} after SIGTERM, before the grace"
    );
    assert_eq!(status.code(), Some(0), "exit status: {status:?}");
    assert!(took >= GRACE && took <= exit_limit, "took {took:?}");
}
