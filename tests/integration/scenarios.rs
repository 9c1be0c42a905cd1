//! One scenario suite run against both backends, etcd and `--embedded`, so they cannot drift
//! apart: each scenario takes a [`Backend`], and `on_both_backends!` makes two tests of it,
//! `<scenario>_on_etcd` and `<scenario>_on_embedded`. Where the backends legitimately differ
//! (there is no second hound on the embedded store; `/etcd/leader` values), the scenario says so
//! in a `match` instead of hiding it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

on_both_backends! {
    register_syncs_lists_and_deregisters_on_close
        => register_syncs_lists_and_deregisters_on_close_on_etcd,
           register_syncs_lists_and_deregisters_on_close_on_embedded;
    monitor_gets_sync_first_then_its_changes_in_order
        => monitor_gets_sync_first_then_its_changes_in_order_on_etcd,
           monitor_gets_sync_first_then_its_changes_in_order_on_embedded;
    subscribed_twice_gets_each_message_once
        => subscribed_twice_gets_each_message_once_on_etcd,
           subscribed_twice_gets_each_message_once_on_embedded;
    takeover_closes_the_older_socket_and_keeps_the_node
        => takeover_closes_the_older_socket_and_keeps_the_node_on_etcd,
           takeover_closes_the_older_socket_and_keeps_the_node_on_embedded;
    ipv6_host_names_and_ports_coexist_sorted
        => ipv6_host_names_and_ports_coexist_sorted_on_etcd,
           ipv6_host_names_and_ports_coexist_sorted_on_embedded;
    monitor_star_sees_every_service_present_and_future
        => monitor_star_sees_every_service_present_and_future_on_etcd,
           monitor_star_sees_every_service_present_and_future_on_embedded;
    custom_events_reach_exactly_their_audience
        => custom_events_reach_exactly_their_audience_on_etcd,
           custom_events_reach_exactly_their_audience_on_embedded;
    bad_events_are_refused_and_deliver_nothing
        => bad_events_are_refused_and_deliver_nothing_on_etcd,
           bad_events_are_refused_and_deliver_nothing_on_embedded;
    leader_and_version_have_their_shape
        => leader_and_version_have_their_shape_on_etcd,
           leader_and_version_have_their_shape_on_embedded;
    bad_parameters_are_400_and_register_nothing
        => bad_parameters_are_400_and_register_nothing_on_etcd,
           bad_parameters_are_400_and_register_nothing_on_embedded;
    a_stalled_hound_reports_expire_then_puts_the_node_again
        => a_stalled_hound_reports_expire_then_puts_the_node_again_on_etcd,
           a_stalled_hound_reports_expire_then_puts_the_node_again_on_embedded;
    sigterm_closes_sockets_with_1001_and_exits_0
        => sigterm_closes_sockets_with_1001_and_exits_0_on_etcd,
           sigterm_closes_sockets_with_1001_and_exits_0_on_embedded;
    metrics_and_logs_follow_registrations_and_lease_loss
        => metrics_and_logs_follow_registrations_and_lease_loss_on_etcd,
           metrics_and_logs_follow_registrations_and_lease_loss_on_embedded;
}

/// A TTL no scenario outlives: a DELETE seen within [`PROMPT`] is an explicit deregistration,
/// never a lease running out.
const LONG_TTL: &str = "30";

fn no_nodes() -> Vec<(String, u16)> {
    Vec::new()
}

/// Asserts a `POST /etcd/event` success: 200 `{}`.
fn assert_accepted(response: &HttpResponse) {
    assert_eq!(response.assert_json(200), json!({}), "{response:?}");
}

/// Reads the next messages and asserts they are exactly `expected`, in that order.
fn expect_messages(ws: &mut Ws, expected: &[Value]) {
    for (n, want) in expected.iter().enumerate() {
        let got = next_json(ws, PROMPT);
        assert_eq!(&got, want, "message {n} of {}", expected.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Registration, monitoring, takeover
// ---------------------------------------------------------------------------------------------

/// A register socket's first message is a SYNC listing its own node; REST lists the node as
/// soon as the upgrade is done; a monitor sees PUT; the other registered sockets of the service
/// see its PUT and DELETE too; when the socket ends (closed, or dropped without a close frame)
/// the monitor sees DELETE at once and REST forgets the node. On etcd the key holds the node
/// under a lease of `--ttl` from the upgrade on, and is deleted with the socket.
fn register_syncs_lists_and_deregisters_on_close(backend: Backend) {
    let hound = backend.start(&["--ttl", LONG_TTL]);
    let mut etcd = hound.etcd().map(Etcd::client);
    let mut watcher = monitor(&hound, &["api"]);
    expect_message(&mut watcher, &key_event("api", "SYNC", &[]));
    assert!(hound.services().is_empty());

    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    // Read-your-writes: no polling.
    assert_eq!(hound.services(), ["api"]);
    assert_eq!(hound.nodes("api"), pairs(&[("10.0.0.1", 80)]));
    if let Some(client) = etcd.as_mut() {
        let entry = client
            .get(&hound.key("api", "10.0.0.1:80"))
            .expect("key is in etcd right after the handshake");
        assert_eq!(entry.value, naming_value("10.0.0.1:80"));
        assert_ne!(entry.lease, 0, "the key is attached to a lease");
        assert_eq!(client.lease_granted_ttl(entry.lease), Some(30));
    }
    expect_message(&mut ws, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));

    let mut second = register(&hound, "api", "10.0.0.2", 80);
    expect_message(
        &mut second,
        &key_event("api", "SYNC", &[("10.0.0.1", 80), ("10.0.0.2", 80)]),
    );
    let both = key_event("api", "PUT", &[("10.0.0.1", 80), ("10.0.0.2", 80)]);
    expect_message(&mut watcher, &both);
    expect_message(&mut ws, &both);
    // Its own PUT is never sent to the registering socket.
    expect_no_message(&mut second, QUIET);

    let closed = Instant::now();
    close(ws);
    expect_message(
        &mut watcher,
        &key_event("api", "DELETE", &[("10.0.0.2", 80)]),
    );
    let took = closed.elapsed();
    assert!(took < Duration::from_secs(2), "DELETE took {took:?}");
    expect_message(
        &mut second,
        &key_event("api", "DELETE", &[("10.0.0.2", 80)]),
    );
    assert_eq!(hound.nodes("api"), pairs(&[("10.0.0.2", 80)]));
    if let Some(client) = etcd.as_mut() {
        poll_until(PROMPT, "the closed socket's key to be gone", || {
            !registered(client, &hound, "api", "10.0.0.1:80")
        });
    }

    // A client that vanishes without a close frame is deregistered just the same.
    vanish(second);
    expect_message(&mut watcher, &key_event("api", "DELETE", &[]));
    if let Some(client) = etcd.as_mut() {
        assert!(!registered(client, &hound, "api", "10.0.0.2:80"));
    }
    assert!(hound.services().is_empty(), "{:?}", hound.services());
    assert_eq!(hound.nodes("api"), no_nodes());
    expect_no_message(&mut watcher, QUIET);
}

/// A monitor gets one SYNC per service, in the order named (empty for an unknown service), then
/// every change of those services in order, and nothing of other services.
fn monitor_gets_sync_first_then_its_changes_in_order(backend: Backend) {
    let hound = backend.start(&["--ttl", LONG_TTL]);
    let api_2 = register(&hound, "api", "10.0.0.2", 80);

    let mut ws = monitor(&hound, &["engine", "api", "unknown"]);
    expect_messages(
        &mut ws,
        &[
            key_event("engine", "SYNC", &[]),
            key_event("api", "SYNC", &[("10.0.0.2", 80)]),
            key_event("unknown", "SYNC", &[]),
        ],
    );
    expect_no_message(&mut ws, QUIET);

    // Each registration is applied before its upgrade completes, so this is their order.
    let engine_1 = register(&hound, "engine", "10.0.1.1", 9000);
    let _billing = register(&hound, "billing", "10.0.2.1", 80);
    let _engine_2 = register(&hound, "engine", "10.0.1.2", 9000);
    let _api_v2 = register(&hound, "api-v2", "10.0.0.9", 80);
    let _api_3 = register(&hound, "api", "10.0.0.3", 80);
    expect_messages(
        &mut ws,
        &[
            key_event("engine", "PUT", &[("10.0.1.1", 9000)]),
            key_event("engine", "PUT", &[("10.0.1.1", 9000), ("10.0.1.2", 9000)]),
            key_event("api", "PUT", &[("10.0.0.2", 80), ("10.0.0.3", 80)]),
        ],
    );
    close(api_2);
    expect_message(&mut ws, &key_event("api", "DELETE", &[("10.0.0.3", 80)]));
    close(engine_1);
    expect_message(
        &mut ws,
        &key_event("engine", "DELETE", &[("10.0.1.2", 9000)]),
    );
    expect_no_message(&mut ws, QUIET);
    assert_eq!(hound.services(), ["api", "api-v2", "billing", "engine"]);
}

/// A socket registered under `api` that also monitors `api` is subscribed once: one SYNC, and
/// each change and each event once.
fn subscribed_twice_gets_each_message_once(backend: Backend) {
    let hound = backend.start(&["--ttl", LONG_TTL]);
    let mut ws = register_monitoring(&hound, "api", "10.0.0.1", 80, &["api"]);
    expect_message(&mut ws, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    expect_no_message(&mut ws, QUIET);

    let other = register(&hound, "api", "10.0.0.2", 80);
    expect_message(
        &mut ws,
        &key_event("api", "PUT", &[("10.0.0.1", 80), ("10.0.0.2", 80)]),
    );
    close(other);
    expect_message(&mut ws, &key_event("api", "DELETE", &[("10.0.0.1", 80)]));
    assert_accepted(&hound.post_event(&json!({"event_type": "t", "services": ["api"]})));
    expect_message(&mut ws, &custom_event("api", "t", ""));
    expect_no_message(&mut ws, QUIET);
}

/// A second registration of the same node through the same hound takes it over: the older
/// socket is closed with 4000 `superseded`, the node stays listed (on etcd, its key stays
/// throughout) and no monitor is told anything (the membership did not change); the newer
/// socket owns it afterwards.
fn takeover_closes_the_older_socket_and_keeps_the_node(backend: Backend) {
    let hound = backend.start(&["--ttl", LONG_TTL]);
    let mut etcd = hound.etcd().map(Etcd::client);
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut older = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut older, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));

    let mut newer = register(&hound, "api", "10.0.0.1", 80);
    if let Some(client) = etcd.as_mut() {
        assert!(registered(client, &hound, "api", "10.0.0.1:80"));
    }
    assert_eq!(
        read_close(&mut older, PROMPT),
        Some((4000, "superseded".to_owned()))
    );
    expect_message(&mut newer, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    // The older socket has ended: its cleanup must not have removed the node it no longer owns.
    let quiet_until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < quiet_until {
        expect_no_message(&mut watcher, Duration::from_millis(100));
        if let Some(client) = etcd.as_mut() {
            assert!(
                registered(client, &hound, "api", "10.0.0.1:80"),
                "key vanished during the takeover"
            );
        }
    }
    assert_eq!(hound.nodes("api"), pairs(&[("10.0.0.1", 80)]));

    close(newer);
    expect_message(&mut watcher, &key_event("api", "DELETE", &[]));
    if let Some(client) = etcd.as_mut() {
        assert!(!registered(client, &hound, "api", "10.0.0.1:80"));
    }
    assert!(hound.services().is_empty());
}

/// IPv6 literals (bare, bracketed, non-canonical) and host names (any case) register in their
/// normalised form (on etcd, also in the key: `[::1]:8080`, `node-1.example.internal:80`);
/// several instances on one host coexist; lists are sorted by ip, then port, in SYNC, PUT and
/// REST alike.
fn ipv6_host_names_and_ports_coexist_sorted(backend: Backend) {
    let hound = backend.start(&["--ttl", LONG_TTL]);
    let mut etcd = hound.etcd().map(Etcd::client);
    let mut watcher = monitor_synced(&hound, &["web"]);

    let mut v6 = register(&hound, "web", "::1", 8080);
    expect_message(&mut v6, &key_event("web", "SYNC", &[("::1", 8080)]));
    expect_message(&mut watcher, &key_event("web", "PUT", &[("::1", 8080)]));
    let _v6_long = register(&hound, "web", "0:0:0:0:0:0:0:1", 8082);
    let _v6_bracketed = register(&hound, "web", "[::1]", 8081);
    let mut host = register(&hound, "web", "Node-1.Example.INTERNAL", 80);
    let _a = register(&hound, "web", "10.0.0.2", 81);
    let mut b = register(&hound, "web", "10.0.0.2", 80);
    if let Some(client) = etcd.as_mut() {
        for host_port in ["[::1]:8080", "node-1.example.internal:80"] {
            let entry = client
                .get(&hound.key("web", host_port))
                .unwrap_or_else(|| panic!("no key ending in {host_port}"));
            assert_eq!(entry.value, naming_value(host_port));
        }
    }

    // (Only hosts whose order is the same compared as text and compared numerically: the order
    // rule itself is not what this suite is about.)
    let steps: [&[(&str, u16)]; 5] = [
        &[("::1", 8080), ("::1", 8082)],
        &[("::1", 8080), ("::1", 8081), ("::1", 8082)],
        &[
            ("::1", 8080),
            ("::1", 8081),
            ("::1", 8082),
            ("node-1.example.internal", 80),
        ],
        &[
            ("10.0.0.2", 81),
            ("::1", 8080),
            ("::1", 8081),
            ("::1", 8082),
            ("node-1.example.internal", 80),
        ],
        &[
            ("10.0.0.2", 80),
            ("10.0.0.2", 81),
            ("::1", 8080),
            ("::1", 8081),
            ("::1", 8082),
            ("node-1.example.internal", 80),
        ],
    ];
    for nodes in steps {
        expect_message(&mut watcher, &key_event("web", "PUT", nodes));
    }
    let all = steps[steps.len() - 1];
    // A register socket's SYNC lists the nodes already there, with its own in its sorted place.
    expect_message(&mut host, &key_event("web", "SYNC", steps[2]));
    expect_message(&mut b, &key_event("web", "SYNC", all));
    assert_eq!(hound.nodes("web"), pairs(all));
    let mut late = monitor(&hound, &["web"]);
    expect_message(&mut late, &key_event("web", "SYNC", all));

    // The same node written differently is the same key: a takeover, not a second node.
    let mut same = register(&hound, "web", "[0::1]", 8080);
    assert_eq!(
        read_close(&mut v6, PROMPT),
        Some((4000, "superseded".to_owned()))
    );
    expect_message(&mut same, &key_event("web", "SYNC", all));
    assert_eq!(hound.nodes("web"), pairs(all));
    expect_no_message(&mut watcher, QUIET);
}

/// `monitor=*` gets a SYNC for each service present, then the changes of services created
/// later, targeted events of any service and broadcasts, each once (also when `*` is combined
/// with a named service).
fn monitor_star_sees_every_service_present_and_future(backend: Backend) {
    let hound = backend.start(&["--ttl", LONG_TTL]);
    let _engine = register(&hound, "engine", "10.0.1.1", 9000);
    let api = register(&hound, "api", "10.0.0.1", 80);

    let mut star = ws_open(&hound, "/etcd/monitor?monitor=*");
    let mut star_and_api = ws_open(&hound, "/etcd/monitor?monitor=*,api");
    for ws in [&mut star, &mut star_and_api] {
        let mut syncs = vec![next_json(ws, PROMPT), next_json(ws, PROMPT)];
        syncs.sort_by_key(|m| m["namespace"].as_str().unwrap_or("").to_owned());
        assert_eq!(
            syncs,
            [
                key_event("api", "SYNC", &[("10.0.0.1", 80)]),
                key_event("engine", "SYNC", &[("10.0.1.1", 9000)]),
            ]
        );
        expect_no_message(ws, QUIET);
    }

    let _billing = register(&hound, "billing", "10.0.2.1", 80);
    close(api);
    assert_accepted(&hound.post_event(&json!({
        "event_type": "t", "event_body": "b", "services": ["nobody-has-this", "api"],
    })));
    assert_accepted(&hound.post_event(&json!({"event_type": "all", "broadcast": true})));
    for ws in [&mut star, &mut star_and_api] {
        // Custom events are not ordered against service events (§8): service events must come
        // in order, custom events are compared as a set.
        let (service_events, mut events): (Vec<Value>, Vec<Value>) = (0..5)
            .map(|_| next_json(ws, PROMPT))
            .partition(|m| m["body"].get("key_event").is_some());
        assert_eq!(
            service_events,
            [
                key_event("billing", "PUT", &[("10.0.2.1", 80)]),
                key_event("api", "DELETE", &[]),
            ]
        );
        events.sort_by_key(|m| m["namespace"].as_str().unwrap_or("").to_owned());
        assert_eq!(
            events,
            [
                custom_event("*", "all", ""),
                custom_event("api", "t", "b"),
                custom_event("nobody-has-this", "t", "b"),
            ]
        );
        expect_no_message(ws, QUIET);
    }
}

// ---------------------------------------------------------------------------------------------
// Custom events
// ---------------------------------------------------------------------------------------------

/// A targeted event reaches the subscribers of each targeted service (register or monitor) with
/// that service as namespace, once per targeted service; a broadcast reaches every socket once
/// with namespace `*`; sockets subscribed to nothing targeted get nothing.
fn custom_events_reach_exactly_their_audience(backend: Backend) {
    let hound = backend.start(&["--ttl", LONG_TTL]);
    // An event nobody is subscribed to is accepted all the same (and reaches no later socket).
    assert_accepted(&hound.post_event(&json!({"event_type": "t", "services": ["nobody"]})));
    assert_accepted(&hound.post_event(&json!({"event_type": "t", "broadcast": true})));
    let mut api_monitor = monitor_synced(&hound, &["api"]);
    let mut api_node = register(&hound, "api", "10.0.0.1", 80);
    expect_message(
        &mut api_node,
        &key_event("api", "SYNC", &[("10.0.0.1", 80)]),
    );
    expect_message(
        &mut api_monitor,
        &key_event("api", "PUT", &[("10.0.0.1", 80)]),
    );
    let mut both = monitor_synced(&hound, &["api", "db"]);
    let mut db = monitor_synced(&hound, &["db"]);
    let mut bystander = monitor_synced(&hound, &["other"]);
    let mut bystander_node = register(&hound, "other", "10.0.9.9", 80);
    expect_message(
        &mut bystander_node,
        &key_event("other", "SYNC", &[("10.0.9.9", 80)]),
    );
    expect_message(
        &mut bystander,
        &key_event("other", "PUT", &[("10.0.9.9", 80)]),
    );

    // A body that must survive the trip through etcd's JSON value unchanged.
    let body = "THWACK! \"quoted\" back\\slash\nline 2\t\u{0} \u{1f} ünï 😀 \u{2028}";
    assert_accepted(&hound.post_event(&json!({
        "event_type": "paddling", "event_body": body, "services": ["api"],
    })));
    let to_api = custom_event("api", "paddling", body);
    for ws in [&mut api_monitor, &mut api_node, &mut both] {
        expect_message(ws, &to_api);
    }

    // Two targeted services, one of them named twice: one message per service.
    assert_accepted(&hound.post_event(&json!({
        "event_type": "t", "services": ["db", "api", "db"],
    })));
    let (to_api, to_db) = (custom_event("api", "t", ""), custom_event("db", "t", ""));
    expect_message(&mut api_monitor, &to_api);
    expect_message(&mut api_node, &to_api);
    expect_message(&mut db, &to_db);
    let mut two = vec![next_json(&mut both, PROMPT), next_json(&mut both, PROMPT)];
    two.sort_by_key(|m| m["namespace"].as_str().unwrap_or("").to_owned());
    assert_eq!(two, [to_api, to_db]);

    assert_accepted(&hound.post_event(&json!({
        "event_type": "restart", "event_body": "now", "broadcast": true, "services": ["api"],
    })));
    let everyone = custom_event("*", "restart", "now");
    let mut sockets = [api_monitor, api_node, both, db, bystander, bystander_node];
    for ws in &mut sockets {
        expect_message(ws, &everyone);
    }
    for ws in &mut sockets {
        expect_no_message(ws, QUIET);
    }
}

/// 415 without a JSON content type, 413 over 64 KiB, 400 for every malformed event; none of
/// them reaches anyone, and a body just under the limit still does, as does a JSON content type
/// with a charset.
fn bad_events_are_refused_and_deliver_nothing(backend: Backend) {
    let hound = backend.start(&[]);
    let mut listener = monitor_synced(&hound, &["a"]);
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        request(hound.addr(), "POST", "/etcd/event", headers, body)
    };
    let json_type = [("Content-Type", "application/json")];
    let good = br#"{"event_type":"t","services":["a"]}"#;

    for headers in [
        &[("Content-Type", "text/plain")][..],
        &[("Content-Type", "application/x-www-form-urlencoded")][..],
        &[][..],
    ] {
        post(headers, good).assert_error(415);
    }
    let filler = "x".repeat(64 * 1024);
    let too_big = json!({"event_type": "t", "event_body": filler, "services": ["a"]}).to_string();
    assert!(too_big.len() > 64 * 1024);
    post(&json_type, too_big.as_bytes()).assert_error(413);
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
        br#"{"event_type":"t","services":["a","x/y"]}"#,
        br#"{"event_type":"t","services":["bad name"]}"#,
        br#"{"event_type":"t","services":[""]}"#,
        br#"{"event_type":"t","broadcast":true,"services":["bad name"]}"#,
    ];
    for body in bodies {
        let response = post(&json_type, body);
        assert_eq!(
            response.status,
            400,
            "body {:?}: {response:?}",
            String::from_utf8_lossy(body)
        );
        response.assert_error(400);
    }
    expect_no_message(&mut listener, QUIET);

    let event_body = "x".repeat(60 * 1024);
    let body = json!({"event_type": "t", "event_body": event_body, "services": ["a"]});
    assert_accepted(&hound.post_event(&body));
    expect_message(&mut listener, &custom_event("a", "t", &event_body));
    let with_charset = [("Content-Type", "application/json; charset=utf-8")];
    assert_accepted(&post(&with_charset, good));
    expect_message(&mut listener, &custom_event("a", "t", ""));
    expect_no_message(&mut listener, QUIET);
}

// ---------------------------------------------------------------------------------------------
// REST and validation
// ---------------------------------------------------------------------------------------------

/// `/etcd/leader` is `{"leader": u64, "member_id": u64}` and `/etcd/version` is
/// `{"version": string}`. The values differ by backend: etcd's own answers, or the embedded
/// store's fixed ones.
fn leader_and_version_have_their_shape(backend: Backend) {
    let hound = backend.start(&[]);
    let leader = hound.get("/etcd/leader").assert_json(200);
    let version = hound.get("/etcd/version").assert_json(200);
    let fields = |body: &Value| -> Vec<String> {
        let mut keys: Vec<String> = body
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {body}"))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(fields(&leader), ["leader", "member_id"], "{leader}");
    assert_eq!(fields(&version), ["version"], "{version}");
    let leader_id = leader["leader"]
        .as_u64()
        .unwrap_or_else(|| panic!("leader is not a u64: {leader}"));
    let member_id = leader["member_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("member_id is not a u64: {leader}"));
    let version_text = version["version"]
        .as_str()
        .unwrap_or_else(|| panic!("version is not a string: {version}"));
    assert_ne!(leader_id, 0, "{leader}");
    assert!(!version_text.is_empty(), "{version}");

    match hound.etcd() {
        Some(etcd) => {
            let status = etcd.client().status();
            assert!(
                status.version.starts_with("3.4."),
                "test etcd is 3.4: {}",
                status.version
            );
            assert_eq!(leader_id, status.leader, "leader as etcd reports it");
            assert_eq!(member_id, status.member_id, "member_id as etcd reports it");
            assert_eq!(version_text, status.version, "version as etcd reports it");
        }
        None => {
            assert_eq!(leader, json!({"leader": 1, "member_id": 1}));
            assert_eq!(version, json!({"version": "embedded"}));
        }
    }
    // A single member leads itself, on either backend.
    assert_eq!(leader_id, member_id, "{leader}");
}

/// Every bad `/etcd/register` or `/etcd/monitor` parameter is a plain HTTP 400 (no upgrade)
/// with the error shape, and nothing gets registered: REST stays empty and a `monitor=*` socket
/// hears nothing.
fn bad_parameters_are_400_and_register_nothing(backend: Backend) {
    let hound = backend.start(&[]);
    let mut everything = ws_open(&hound, "/etcd/monitor?monitor=*");
    let refused = |path: &str| match ws_connect(hound.addr(), path, &[]) {
        Ok(_) => panic!("{path} was upgraded; expected 400"),
        Err(response) => {
            assert_eq!(response.status, 400, "{path}: {response:?}");
            response.assert_error(400);
        }
    };

    let long_name = "a".repeat(129);
    let long_label = format!("{}.example", "a".repeat(64));
    let long_host = ["abcdefghi"; 26].join("."); // 259 characters
    let too_many = (0..65)
        .map(|i| format!("svc{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let ok = [("service", "api"), ("ip", "10.0.0.1"), ("port", "80")];
    let register_with = |name: &str, value: &str| {
        let mut pairs: Vec<(&str, &str)> = ok.iter().copied().filter(|(n, _)| *n != name).collect();
        pairs.push((name, value));
        format!("/etcd/register?{}", query(&pairs))
    };
    let register_without = |name: &str| {
        let pairs: Vec<(&str, &str)> = ok.iter().copied().filter(|(n, _)| *n != name).collect();
        format!("/etcd/register?{}", query(&pairs))
    };
    let mut paths = vec![
        "/etcd/register".to_owned(),
        register_without("service"),
        register_without("ip"),
        register_without("port"),
        format!("{}&service=api", register_without("nothing")),
        format!("{}&port=81", register_without("nothing")),
    ];
    for (name, values) in [
        (
            "service",
            &["", "a/b", "a b", "a+b", "*", "ümlaut", long_name.as_str()][..],
        ),
        (
            "ip",
            &[
                "",
                "not an ip",
                "a_b!",
                "-leading-hyphen.example",
                long_label.as_str(),
                long_host.as_str(),
                "10.0.0.1:80",
                "::1::2",
                "[10.0.0.1]",
                "1.2.3",
            ][..],
        ),
        ("port", &["", "0", "65536", "-1", "+1", "abc", "80.5"][..]),
        (
            "monitor",
            &[too_many.as_str(), "ok,bad name", "ok,a/b", "a*"][..],
        ),
    ] {
        paths.extend(values.iter().map(|value| register_with(name, value)));
    }
    paths.push("/etcd/monitor".to_owned());
    paths.push("/etcd/monitor?".to_owned());
    paths.push("/etcd/monitor?monitor=".to_owned());
    paths.push("/etcd/monitor?monitor=,,".to_owned());
    paths.push("/etcd/monitor?service=api".to_owned());
    paths.push("/etcd/monitor?monitor=a&monitor=b".to_owned());
    for value in [too_many.as_str(), "bad name", "ok,a/b", long_name.as_str()] {
        paths.push(format!("/etcd/monitor?monitor={}", encode(value)));
    }
    for path in &paths {
        refused(path);
    }

    assert!(hound.services().is_empty(), "{:?}", hound.services());
    assert_eq!(hound.nodes("api"), no_nodes());
    if let Some(etcd) = hound.etcd() {
        assert_namespace_empty(&mut etcd.client(), &hound, "after refused requests");
    }
    expect_no_message(&mut everything, QUIET);
    // hound is unharmed: the good registration still goes through.
    let _ws = ws_open(&hound, &register_without("nothing"));
    assert_eq!(hound.nodes("api"), pairs(&[("10.0.0.1", 80)]));
    expect_message(
        &mut everything,
        &key_event("api", "PUT", &[("10.0.0.1", 80)]),
    );
}

// ---------------------------------------------------------------------------------------------
// Faults: a stalled hound, and SIGTERM
// ---------------------------------------------------------------------------------------------

/// A hound frozen (SIGSTOP) for longer than its `--ttl` loses its leases: the node is reported
/// as EXPIRE, and once the hound runs again it registers the node again (PUT) without the
/// client doing anything, and the register socket stays open.
///
/// The backends differ in who can watch while the hound is frozen. On etcd the lease runs out in
/// etcd, so a second hound on the same etcd sees EXPIRE *during* the stall. The embedded store
/// lives inside the frozen process: there is no second hound, and nothing happens until SIGCONT.
/// On both, the frozen hound's own sockets see EXPIRE then PUT after SIGCONT.
fn a_stalled_hound_reports_expire_then_puts_the_node_again(backend: Backend) {
    /// The fault injected: longer than the TTL of 2 s, with room for etcd's lease checks.
    const STALL: Duration = Duration::from_millis(3500);
    /// On etcd the stall lasts until the other hound has seen EXPIRE, at most this long (a
    /// loaded machine may need more than [`STALL`] for etcd to expire the lease).
    const STALL_LIMIT: Duration = Duration::from_secs(8);
    let stalled = backend.start(&["--ttl", "2"]);
    let observer = stalled.peer(&[]);
    let mut observer_watch = observer.as_ref().map(|o| monitor_synced(o, &["api"]));
    let mut own_watch = monitor_synced(&stalled, &["api"]);
    let mut ws = register(&stalled, "api", "10.0.0.1", 80);
    let node = key_event("api", "PUT", &[("10.0.0.1", 80)]);
    let expired = key_event("api", "EXPIRE", &[]);
    expect_message(&mut ws, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    expect_message(&mut own_watch, &node);
    if let Some(watch) = observer_watch.as_mut() {
        expect_message(watch, &node);
    }

    // (A failed assertion while frozen is fine: dropping the hound SIGKILLs it.)
    stalled.pause();
    let frozen = Instant::now();
    match (backend, observer_watch.as_mut()) {
        (Backend::Etcd, Some(watch)) => {
            // The lease runs out in etcd: the other hound sees EXPIRE while this one is frozen.
            let seen = next_json(watch, STALL_LIMIT);
            assert_eq!(seen, expired, "the other hound, during the stall");
            eprintln!(
                "etcd: the other hound saw EXPIRE {:?} into the stall",
                frozen.elapsed()
            );
        }
        (Backend::Embedded, None) => {
            // The store is frozen with the process: nobody can see anything before SIGCONT.
        }
        (backend, observer) => panic!("{backend:?} with an observer: {}", observer.is_some()),
    }
    // Keep the hound frozen for at least the whole stall on both backends (the fault injected,
    // not a wait for something).
    std::thread::sleep(STALL.saturating_sub(frozen.elapsed()));
    stalled.resume();

    expect_messages(&mut own_watch, &[expired.clone(), node.clone()]);
    expect_messages(&mut ws, &[expired, node.clone()]);
    if let Some(watch) = observer_watch.as_mut() {
        expect_message(watch, &node);
    }
    assert_eq!(stalled.nodes("api"), pairs(&[("10.0.0.1", 80)]));
    if let Some(observer) = &observer {
        assert_eq!(observer.nodes("api"), pairs(&[("10.0.0.1", 80)]));
    }
    // The node is kept alive again: nothing more happens over the next TTL and a half.
    expect_no_message(&mut own_watch, Duration::from_secs(3));
    expect_no_message(&mut ws, QUIET);
}

/// SIGTERM closes every socket with 1001 `shutting down` and exits 0 within 5 s. On etcd a
/// second hound sees the node deleted (DELETE, not a TTL expiry); on the embedded store the
/// registrations die with the process and there is nobody else to tell.
fn sigterm_closes_sockets_with_1001_and_exits_0(backend: Backend) {
    /// The contract's 5 s plus a little slack for a loaded test machine.
    const EXIT_LIMIT: Duration = Duration::from_millis(5500);
    let mut leaving = backend.start(&["--ttl", LONG_TTL]);
    let staying = leaving.peer(&[]);
    let mut watch = staying.as_ref().map(|s| monitor_synced(s, &["api"]));
    let mut registered_socket = register(&leaving, "api", "10.0.0.1", 80);
    expect_message(
        &mut registered_socket,
        &key_event("api", "SYNC", &[("10.0.0.1", 80)]),
    );
    let monitor_socket = monitor_synced(&leaving, &["api"]);
    if let Some(watch) = watch.as_mut() {
        expect_message(watch, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    }
    let addr = leaving.addr();

    // The clients read (and so answer the close) while hound shuts down, as real ones would.
    let (status, took, closes) = std::thread::scope(|scope| {
        let readers: Vec<_> = [registered_socket, monitor_socket]
            .into_iter()
            .map(|mut ws| scope.spawn(move || read_close(&mut ws, EXIT_LIMIT)))
            .collect();
        let (status, took) = leaving.terminate(EXIT_LIMIT);
        let closes: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        (status, took, closes)
    });
    assert_eq!(status.code(), Some(0), "exit status: {status:?}");
    assert!(took <= EXIT_LIMIT, "took {took:?}");
    let going_away = Some((1001, "shutting down".to_owned()));
    assert_eq!(
        closes,
        [going_away.clone(), going_away],
        "register, monitor"
    );
    assert!(
        try_request(addr, "GET", "/healthz", &[], b"").is_err(),
        "nothing answers after exit"
    );

    match (staying, watch) {
        (Some(staying), Some(mut watch)) => {
            expect_message(&mut watch, &key_event("api", "DELETE", &[]));
            assert_eq!(staying.nodes("api"), no_nodes());
        }
        (None, None) => assert_eq!(backend, Backend::Embedded),
        _ => unreachable!("a peer comes with its watch"),
    }
}

// ---------------------------------------------------------------------------------------------
// Observability
// ---------------------------------------------------------------------------------------------

/// Whether hound logs, within [`PROMPT`], a line at `level` whose message is `before`, the
/// registration key `key` (e.g. `api/10.0.0.1:80`), then `after` and possibly more (a socket
/// number). The key may carry a namespace in front (`svc/api/10.0.0.1:80`) or not: the embedded
/// store has no etcd keys, and that difference is tolerated here (reported, not enforced).
fn logs_within_prompt(hound: &Hound, level: &str, before: &str, key: &str, after: &str) -> bool {
    let marker = format!("[{level}] ");
    let wanted = format!("{key}{after}");
    let deadline = Instant::now() + PROMPT;
    loop {
        let found = hound.stderr().lines().any(|line| {
            let Some((_, message)) = line.split_once(&marker) else {
                return false;
            };
            let Some(rest) = message.strip_prefix(before) else {
                return false;
            };
            rest.find(&wanted).is_some_and(|at| {
                let namespace = &rest[..at];
                namespace.is_empty() || (namespace.ends_with('/') && !namespace.contains(' '))
            })
        });
        if found || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `hound_registrations` counts the registrations this hound keeps alive as soon as the upgrade
/// is answered (as REST and `hound_sockets` do); a lost lease counts once in
/// `hound_lease_regrants_total`; registrations, deregistrations and the lease loss are logged
/// with the lines of API.md §14 (`lease of KEY is gone; registering it again`, then
/// `registered KEY again with a new lease`). Every such check is collected and reported at the
/// end, so one failure does not hide the next.
fn metrics_and_logs_follow_registrations_and_lease_loss(backend: Backend) {
    /// Longer than the TTL of 2 s, as in the EXPIRE scenario.
    const STALL: Duration = Duration::from_millis(3500);
    const STALL_LIMIT: Duration = Duration::from_secs(8);
    let hound = backend.start(&["--ttl", "2"]);
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut findings: Vec<String> = Vec::new();
    let gauges_are = |findings: &mut Vec<String>, when: &str, registrations: f64| {
        let metrics = hound.metrics();
        let got = (
            metrics.get("hound_registrations"),
            metrics.get(r#"hound_sockets{kind="register"}"#),
        );
        if got != (registrations, registrations) {
            findings.push(format!(
                "{when}: (hound_registrations, hound_sockets{{kind=\"register\"}}) = {got:?}, \
                 expected both {registrations}"
            ));
        }
    };
    let logged = |findings: &mut Vec<String>, level, before, key, after| {
        if !logs_within_prompt(&hound, level, before, key, after) {
            findings.push(format!(
                "no {level} line `{before}…{key}{after}…` within {PROMPT:?}"
            ));
        }
    };
    gauges_are(&mut findings, "before any registration", 0.0);

    let ws = register(&hound, "api", "10.0.0.1", 80);
    gauges_are(&mut findings, "right after the first upgrade", 1.0);
    let other = register(&hound, "api", "10.0.0.2", 80);
    gauges_are(&mut findings, "right after the second upgrade", 2.0);
    logged(
        &mut findings,
        "INFO",
        "registered ",
        "api/10.0.0.1:80",
        " (socket ",
    );
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    expect_message(
        &mut watcher,
        &key_event("api", "PUT", &[("10.0.0.1", 80), ("10.0.0.2", 80)]),
    );
    close(other);
    expect_message(
        &mut watcher,
        &key_event("api", "DELETE", &[("10.0.0.1", 80)]),
    );
    gauges_are(&mut findings, "right after the DELETE was delivered", 1.0);
    logged(
        &mut findings,
        "INFO",
        "deregistering ",
        "api/10.0.0.2:80",
        " (socket ",
    );
    assert_eq!(hound.metric("hound_lease_regrants_total"), 0.0);

    hound.pause();
    let frozen = Instant::now();
    if let Some(etcd) = hound.etcd() {
        // On a loaded machine etcd may need longer than STALL to expire the lease: stay frozen
        // until it has (reading etcd, not changing it).
        let mut client = etcd.client();
        let key = hound.key("api", "10.0.0.1:80");
        poll_until(
            STALL_LIMIT,
            "etcd to expire the frozen hound's lease",
            || client.get(&key).is_none(),
        );
    }
    // The fault injected, not a wait for something.
    std::thread::sleep(STALL.saturating_sub(frozen.elapsed()));
    hound.resume();
    expect_messages(
        &mut watcher,
        &[
            key_event("api", "EXPIRE", &[]),
            key_event("api", "PUT", &[("10.0.0.1", 80)]),
        ],
    );
    poll_until(PROMPT, "hound_lease_regrants_total to count 1", || {
        hound.metric("hound_lease_regrants_total") == 1.0
    });
    gauges_are(&mut findings, "after the lease was regranted", 1.0);
    let (lost, again) = (" is gone; registering it again", " again with a new lease");
    logged(&mut findings, "WARN", "lease of ", "api/10.0.0.1:80", lost);
    logged(
        &mut findings,
        "INFO",
        "registered ",
        "api/10.0.0.1:80",
        again,
    );
    drop(ws);
    assert!(
        findings.is_empty(),
        "{backend:?}: metrics or logs differ from the contract:\n  {}\nstderr:\n{}",
        findings.join("\n  "),
        hound.stderr()
    );
}
