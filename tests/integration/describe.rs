//! Verifies the 2.0 node description on both backends: `tags`, `weight` and `meta.KEY` on
//! `/etcd/register` (checked before the upgrade), carried in messages, REST answers, DNS and
//! Prometheus service discovery only when set; the `?tag=`, `?meta.KEY=` and `?status=`
//! filters; a re-registration with other tags is a PUT. On etcd, the value hound writes is
//! exactly etcd's naming `Endpoint` JSON, and the values others write (etcd's own naming
//! manager, 1.0 plain `host:port`) are read, anything else skipped with a warning.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

on_both_backends! {
    described_nodes_carry_what_they_set
        => described_nodes_carry_what_they_set_on_etcd,
           described_nodes_carry_what_they_set_on_embedded;
    rest_filters_by_tag_meta_and_status
        => rest_filters_by_tag_meta_and_status_on_etcd,
           rest_filters_by_tag_meta_and_status_on_embedded;
    registering_again_with_other_tags_is_a_put
        => registering_again_with_other_tags_is_a_put_on_etcd,
           registering_again_with_other_tags_is_a_put_on_embedded;
    bad_descriptions_are_400_and_register_nothing
        => bad_descriptions_are_400_and_register_nothing_on_etcd,
           bad_descriptions_are_400_and_register_nothing_on_embedded;
    dns_and_prometheus_follow_tags_and_weight
        => dns_and_prometheus_follow_tags_and_weight_on_etcd,
           dns_and_prometheus_follow_tags_and_weight_on_embedded;
}

/// The `/etcd/register` path for `service` at `ip:port` with `extra` parameters.
fn register_described(service: &str, ip: &str, port: u16, extra: &[(&str, &str)]) -> String {
    let port = port.to_string();
    let mut pairs = vec![("service", service), ("ip", ip), ("port", port.as_str())];
    pairs.extend_from_slice(extra);
    format!("/etcd/register?{}", query(&pairs))
}

/// The canary of these tests: tags, weight 10 and a zone.
const CANARY: &[(&str, &str)] = &[
    ("tags", "v2,canary"),
    ("weight", "10"),
    ("meta.zone", "eu-1"),
];

fn canary_json() -> Value {
    json!({"ip":"10.0.0.2","port":80,"tags":["v2","canary"],"weight":10,"meta":{"zone":"eu-1"}})
}

/// A 1.0 node (`service`, `ip`, `port` only) looks exactly as it did in 1.0; a described one
/// carries `tags`, `weight` and `meta` in its SYNC, its monitors' PUT and REST. On etcd its
/// value is etcd's naming JSON with exactly `Addr` and `Metadata`.
fn described_nodes_carry_what_they_set(backend: Backend) {
    let hound = backend.start(&[]);
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut plain = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut plain, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));

    let mut canary = ws_open(&hound, &register_described("api", "10.0.0.2", 80, CANARY));
    let both = json!([{"ip":"10.0.0.1","port":80}, canary_json()]);
    let expected = json!({"namespace":"api","body":{"key_event":"SYNC","services":both}});
    expect_message(&mut canary, &expected);
    let put = json!({"namespace":"api","body":{"key_event":"PUT","services":both}});
    expect_message(&mut watcher, &put);
    expect_message(&mut plain, &put);
    assert_eq!(
        hound.get("/etcd/services/api").assert_json(200),
        json!({ "services": both })
    );

    if let Some(etcd) = hound.etcd() {
        let mut client = etcd.client();
        let plain_value = client.get(&hound.key("api", "10.0.0.1:80")).unwrap().value;
        assert_eq!(plain_value, r#"{"Addr":"10.0.0.1:80"}"#);
        let value = client.get(&hound.key("api", "10.0.0.2:80")).unwrap().value;
        let parsed: Value = serde_json::from_str(&value).unwrap();
        // etcd's naming `Endpoint` is {Addr string; Metadata interface{}}, encoded by Go's
        // encoding/json under those exact field names.
        assert_eq!(
            parsed,
            json!({"Addr":"10.0.0.2:80","Metadata":{
                "tags":["v2","canary"],"weight":10,"meta":{"zone":"eu-1"}}})
        );
        let fields: Vec<&String> = parsed.as_object().unwrap().keys().collect();
        assert_eq!(fields, ["Addr", "Metadata"]);
    }

    close(canary);
    expect_message(
        &mut watcher,
        &key_event("api", "DELETE", &[("10.0.0.1", 80)]),
    );
}

/// `?tag=` (repeatable, all must match), `?meta.KEY=`, `?status=` (repeatable, any matches);
/// a malformed filter is 400.
fn rest_filters_by_tag_meta_and_status(backend: Backend) {
    let hound = backend.start(&[]);
    let _plain = register(&hound, "api", "10.0.0.1", 80);
    let _canary = ws_open(&hound, &register_described("api", "10.0.0.2", 80, CANARY));
    let _other = ws_open(
        &hound,
        &register_described(
            "api",
            "10.0.0.3",
            80,
            &[("tags", "v2"), ("meta.zone", "us-1")],
        ),
    );
    poll_until(PROMPT, "three nodes", || hound.nodes("api").len() == 3);
    let listed = |path: &str| -> Vec<String> {
        let body = hound.get(path).assert_json(200);
        body["services"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: {body}"))
            .iter()
            .map(|node| node["ip"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let base = "/etcd/services/api";
    assert_eq!(listed(base), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    assert_eq!(listed(&format!("{base}?tag=v2")), ["10.0.0.2", "10.0.0.3"]);
    assert_eq!(listed(&format!("{base}?tag=v2&tag=canary")), ["10.0.0.2"]);
    assert!(listed(&format!("{base}?tag=v2&tag=v9")).is_empty());
    assert_eq!(listed(&format!("{base}?meta.zone=us-1")), ["10.0.0.3"]);
    assert_eq!(
        listed(&format!("{base}?meta.zone=eu-1&tag=canary")),
        ["10.0.0.2"]
    );
    assert!(listed(&format!("{base}?meta.zone=eu")).is_empty());
    assert_eq!(listed(&format!("{base}?status=passing")).len(), 3);
    assert!(listed(&format!("{base}?status=critical&status=draining")).is_empty());
    assert_eq!(
        hound.get(&format!("{base}?tag=v2")).assert_json(200),
        json!({"services":[canary_json(),
            {"ip":"10.0.0.3","port":80,"tags":["v2"],"meta":{"zone":"us-1"}}]})
    );
    for bad in [
        "?tag=a%20b",
        "?tag=",
        "?status=ok",
        "?meta.a.b=1",
        "?meta.=1",
    ] {
        hound.get(&format!("{base}{bad}")).assert_error(400);
    }
}

/// A second registration of the same node with other tags takes the node over and is a PUT
/// with the new tags; the same tags again change nothing a monitor sees.
fn registering_again_with_other_tags_is_a_put(backend: Backend) {
    let hound = backend.start(&[]);
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut first = ws_open(
        &hound,
        &register_described("api", "10.0.0.1", 80, &[("tags", "blue")]),
    );
    let blue = json!([{"ip":"10.0.0.1","port":80,"tags":["blue"]}]);
    expect_message(
        &mut watcher,
        &json!({"namespace":"api","body":{"key_event":"PUT","services":blue}}),
    );
    let mut second = ws_open(
        &hound,
        &register_described("api", "10.0.0.1", 80, &[("tags", "green")]),
    );
    let green = json!([{"ip":"10.0.0.1","port":80,"tags":["green"]}]);
    expect_message(
        &mut watcher,
        &json!({"namespace":"api","body":{"key_event":"PUT","services":green}}),
    );
    assert_eq!(
        read_close(&mut first, PROMPT),
        Some((4000, "superseded".to_owned()))
    );
    expect_message(
        &mut second,
        &json!({"namespace":"api","body":{"key_event":"SYNC","services":green}}),
    );
    let _third = ws_open(
        &hound,
        &register_described("api", "10.0.0.1", 80, &[("tags", "green")]),
    );
    expect_no_message(&mut watcher, Duration::from_millis(500));
    assert_eq!(
        hound.get("/etcd/services/api").assert_json(200),
        json!({ "services": green })
    );
}

/// Every rule of `tags`, `weight` and `meta.KEY` is checked before the upgrade: 400 with the
/// JSON error, and nothing registered or sent.
fn bad_descriptions_are_400_and_register_nothing(backend: Backend) {
    let hound = backend.start(&[]);
    let mut everything = ws_open(&hound, "/etcd/monitor?monitor=*");
    let too_many_tags = (0..33)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let long_tag = "t".repeat(65);
    let long_value = "v".repeat(513);
    let long_key = format!("meta.{}", "k".repeat(129));
    let many_keys: Vec<(String, String)> = (0..65)
        .map(|i| (format!("meta.k{i}"), "v".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many_keys
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("tags", "a b")],
        vec![("tags", "a/b")],
        vec![("tags", "ü")],
        vec![("tags", too_many_tags.as_str())],
        vec![("tags", long_tag.as_str())],
        vec![("weight", "0")],
        vec![("weight", "65536")],
        vec![("weight", "-1")],
        vec![("weight", "x")],
        vec![("weight", "")],
        vec![("meta.a.b", "1")],
        vec![("meta.", "1")],
        vec![("meta.a%20b", "1")],
        vec![(long_key.as_str(), "1")],
        vec![("meta.zone", long_value.as_str())],
        many,
    ];
    for extra in &cases {
        let path = register_described("api", "10.0.0.1", 80, extra);
        match ws_connect(hound.addr(), &path, &[]) {
            Ok(_) => panic!("{path} was upgraded; expected 400"),
            Err(response) => response.assert_error(400),
        }
    }
    // The limits themselves are accepted.
    let at_limit_keys: Vec<(&str, &str)> = cases[15][..64].to_vec();
    let mut fine = register_described("api", "10.0.0.1", 80, &at_limit_keys);
    fine.push_str(&format!(
        "&{}",
        query(&[
            ("tags", &too_many_tags[..too_many_tags.rfind(',').unwrap()]),
            ("weight", "65535")
        ])
    ));
    let _fine = ws_open(&hound, &fine);
    let sync = next_json(&mut everything, PROMPT);
    assert_eq!(sync["body"]["key_event"], "PUT", "{sync}");
    let node = &sync["body"]["services"][0];
    assert_eq!(node["tags"].as_array().unwrap().len(), 32);
    assert_eq!(node["meta"].as_object().unwrap().len(), 64);
    assert_eq!(node["weight"], 65535);
    expect_no_message(&mut everything, Duration::from_millis(300));
    assert_eq!(hound.services(), ["api"]);
}

/// DNS answers and Prometheus targets follow what nodes set: an SRV record's weight, the
/// `TAG.S.service.hound.` name, and the `__meta_hound_tags`/`__meta_hound_meta_KEY` labels.
fn dns_and_prometheus_follow_tags_and_weight(backend: Backend) {
    let hound = backend.start(&["--dns-port", "0"]);
    let dns = hound.dns_addr();
    let _plain = register(&hound, "api", "10.0.0.1", 80);
    let _canary = ws_open(&hound, &register_described("api", "10.0.0.2", 80, CANARY));
    poll_until(PROMPT, "two nodes", || hound.nodes("api").len() == 2);

    let srv = dig(dns, &["_api._tcp.service.hound", "SRV"]);
    assert_eq!(
        srv.answer_data(),
        [
            "1 1 80 10-0-0-1.addr.hound.",
            "1 10 80 10-0-0-2.addr.hound."
        ],
        "{}",
        srv.output
    );
    let tagged = dig(dns, &["canary.api.service.hound", "A"]);
    assert_eq!(tagged.answer_data(), ["10.0.0.2"], "{}", tagged.output);
    let v2 = dig(dns, &["V2.api.service.hound", "A"]);
    assert_eq!(v2.answer_data(), ["10.0.0.2"], "{}", v2.output);

    let targets = hound.get("/v1/sd/prometheus?service=api").assert_json(200);
    assert_eq!(
        targets,
        json!([
            {"targets":["10.0.0.1:80"],"labels":{"__meta_hound_service":"api",
                "__meta_hound_status":"passing","__meta_hound_tags":",,"}},
            {"targets":["10.0.0.2:80"],"labels":{"__meta_hound_service":"api",
                "__meta_hound_status":"passing","__meta_hound_tags":",v2,canary,",
                "__meta_hound_meta_zone":"eu-1"}}
        ])
    );
}

/// Values other writers put under the namespace: etcd's naming manager's JSON (with null,
/// object or foreign `Metadata`) and a 1.0 plain `host:port` are nodes; anything else is
/// skipped with a warning and never stops the rest.
#[test]
fn values_of_other_writers_are_read_or_skipped() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&hound, &["api"]);
    for (node, value) in [
        ("a", r#"{"Addr":"10.0.0.1:80","Metadata":null}"#),
        ("b", "10.0.0.2:80"),
        (
            "c",
            r#"{"Addr":"10.0.0.3:80","Metadata":{"tags":["x"],"weight":3}}"#,
        ),
        (
            "d",
            r#"{"Addr":"10.0.0.4:80","Metadata":"grpc-go metadata"}"#,
        ),
        ("e", "not a node"),
        ("f", r#"{"addr":"10.0.0.6:80"}"#),
        ("g", r#"{"Addr":"10.0.0.7"}"#),
    ] {
        client.put(&hound.key("api", node), value);
    }
    let deadline = Instant::now() + PROMPT;
    let mut last = Value::Null;
    while hound.nodes("api").len() < 4 && Instant::now() < deadline {
        last = next_json(&mut watcher, PROMPT);
    }
    assert_eq!(
        hound.get("/etcd/services/api").assert_json(200),
        json!({"services":[
            {"ip":"10.0.0.1","port":80},
            {"ip":"10.0.0.2","port":80},
            {"ip":"10.0.0.3","port":80,"tags":["x"],"weight":3},
            {"ip":"10.0.0.4","port":80}]}),
        "last message: {last}"
    );
    poll_until(PROMPT, "a warning for each skipped value", || {
        let log = hound.stderr();
        ["/api/e", "/api/f", "/api/g"]
            .iter()
            .all(|key| log.lines().any(|l| l.contains("WARN") && l.contains(key)))
    });
}
