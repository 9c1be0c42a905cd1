//! Verifies `GET /metrics` to the exact value after a scripted sequence on a fresh hound, with
//! every line checked against the Prometheus text grammar.

use serde_json::json;

use crate::support::*;

#[test]
fn metrics_count_exactly_what_happened() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "3"]);
    let mut client = etcd.client();
    let mut received = 0u32;

    // Two registrations and a monitor; one registration closes again.
    let mut first = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut first, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    let mut watcher = monitor(&hound, &["api"]);
    expect_message(&mut watcher, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    let mut second = register(&hound, "api", "10.0.0.2", 80);
    expect_message(
        &mut second,
        &key_event("api", "SYNC", &[("10.0.0.1", 80), ("10.0.0.2", 80)]),
    );
    received += 3;
    for socket in [&mut first, &mut watcher] {
        expect_message(
            socket,
            &key_event("api", "PUT", &[("10.0.0.1", 80), ("10.0.0.2", 80)]),
        );
        received += 1;
    }
    close(second);
    for socket in [&mut first, &mut watcher] {
        expect_message(socket, &key_event("api", "DELETE", &[("10.0.0.1", 80)]));
        received += 1;
    }

    // REST: three listings, one event, one bad event, one unknown path.
    for _ in 0..3 {
        assert_eq!(hound.get("/etcd/services").status, 200);
    }
    let accepted = hound.post_event(&json!({"event_type": "t", "services": ["api"]}));
    assert_eq!(accepted.status, 200, "{accepted:?}");
    for socket in [&mut first, &mut watcher] {
        expect_message(socket, &custom_event("api", "t", ""));
        received += 1;
    }
    request(
        hound.addr(),
        "POST",
        "/etcd/event",
        &[("Content-Type", "application/json")],
        b"nope",
    )
    .assert_error(400);
    hound.get("/no/such/route").assert_error(404);

    // The gauges follow the closed socket as it is cleaned up.
    poll_until(PROMPT, "the gauges to show one register socket", || {
        let metrics = hound.metrics();
        metrics.value("hound_sockets{kind=\"register\"}") == Some(1.0)
            && metrics.value("hound_registrations") == Some(1.0)
    });
    let metrics = hound.metrics();
    for (series, expected) in [
        ("hound_sockets{kind=\"register\"}", 1.0),
        ("hound_sockets{kind=\"monitor\"}", 1.0),
        ("hound_registrations", 1.0),
        (
            "hound_http_requests_total{route=\"/etcd/services\",status=\"200\"}",
            3.0,
        ),
        (
            "hound_http_requests_total{route=\"/etcd/event\",status=\"200\"}",
            1.0,
        ),
        (
            "hound_http_requests_total{route=\"/etcd/event\",status=\"400\"}",
            1.0,
        ),
        (
            "hound_http_requests_total{route=\"unrouted\",status=\"404\"}",
            1.0,
        ),
        (
            "hound_http_requests_total{route=\"/etcd/register\",status=\"101\"}",
            2.0,
        ),
        (
            "hound_http_requests_total{route=\"/etcd/monitor\",status=\"101\"}",
            1.0,
        ),
        ("hound_slow_sockets_closed_total", 0.0),
        ("hound_events_refused_total", 0.0),
        ("hound_lease_regrants_total", 0.0),
        ("hound_watch_resyncs_total", 0.0),
    ] {
        assert_eq!(
            metrics.get(series),
            expected,
            "{series} in:\n{}",
            metrics.text()
        );
    }
    let sent = metrics.get("hound_messages_sent_total");
    eprintln!("metrics: hound_messages_sent_total {sent}, messages received {received}");
    assert!(
        sent >= f64::from(received),
        "hound_messages_sent_total is {sent}, but the sockets received {received} messages"
    );

    // A lease revoked behind hound's back is granted again, once.
    let lease = client
        .get(&hound.key("api", "10.0.0.1:80"))
        .expect("registration")
        .lease;
    client.lease_revoke(lease);
    poll_until(PROMPT, "hound_lease_regrants_total to become 1", || {
        hound.metric("hound_lease_regrants_total") == 1.0
    });
    expect_message(&mut watcher, &key_event("api", "EXPIRE", &[]));
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    let metrics = hound.metrics();
    assert_eq!(metrics.get("hound_lease_regrants_total"), 1.0);
    assert_eq!(metrics.get("hound_registrations"), 1.0);
    assert!(metrics.get("hound_messages_sent_total") >= f64::from(received + 2));
}

#[test]
fn the_metrics_grammar_check_rejects_what_it_should() {
    let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total{k=\"v\",l=\"x\\\"y\"} 3\n";
    assert_eq!(
        Metrics::parse(good).get("a_total{k=\"v\",l=\"x\\\"y\"}"),
        3.0
    );
    for bad in [
        "a_total 3\n",                               // no TYPE
        "# TYPE a counter\na{k=v} 1\n",              // unquoted label value
        "# TYPE a counter\na{k=\"v\",} 1\n",         // trailing comma
        "# TYPE a counter\na 1 2 3\n",               // junk
        "# TYPE a counter\na -1\n",                  // negative counter
        "# TYPE a counter\na 1\na 2\n",              // duplicate series
        "# TYPE a counter\n# TYPE a counter\na 1\n", // duplicate TYPE
        "# TYPE a counter\n# a comment\na 1\n",      // stray comment
        "# TYPE a counter\na 1",                     // no final newline
    ] {
        assert!(Metrics::try_parse(bad).is_err(), "accepted {bad:?}");
    }
}
