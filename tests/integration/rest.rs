//! Verifies the REST routes: health, hound's version, service listings read from etcd, and the
//! JSON 404/405 answers. (`/etcd/leader` and `/etcd/version`: `scenarios.rs`, both backends.)

use serde_json::json;

use crate::support::*;

#[test]
fn healthz_is_ok() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let body = hound.get("/healthz").assert_json(200);
    assert_eq!(body, json!({"status": "ok"}));
}

#[test]
fn version_names_app_and_crate_version() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let body = hound.get("/version").assert_json(200);
    assert_eq!(
        body,
        json!({"app": "hound", "version": env!("CARGO_PKG_VERSION")})
    );
}

#[test]
fn services_lists_sorted_unique_services_with_nodes() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    assert_eq!(
        hound.get("/etcd/services").assert_json(200),
        json!({"services": []})
    );

    client.put(&hound.key("engine", "10.0.0.1:81"), "10.0.0.1:81");
    client.put(&hound.key("api", "10.0.0.2:80"), "10.0.0.2:80");
    client.put(&hound.key("api", "10.0.0.1:80"), "10.0.0.1:80");
    client.put(&hound.key("billing", "10.0.0.3:80"), "10.0.0.3:80");
    // Another namespace is not ours.
    client.put(
        &format!("{}-other/zzz/10.0.0.9:9", hound.namespace()),
        "10.0.0.9:9",
    );
    poll_until(PROMPT, "three services listed", || {
        hound.services() == ["api", "billing", "engine"]
    });
    let body = hound.get("/etcd/services").assert_json(200);
    assert_eq!(body, json!({"services": ["api", "billing", "engine"]}));

    // A service whose last node goes away is no longer listed.
    client.delete(&hound.key("billing", "10.0.0.3:80"));
    poll_until(PROMPT, "billing to disappear", || {
        hound.services() == ["api", "engine"]
    });
}

#[test]
fn service_nodes_are_sorted_by_ip_then_port() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    // Ports sort as numbers, not strings: 80 < 443 < 8080.
    for host_port in [
        "10.0.0.2:80",
        "10.0.0.1:8080",
        "10.0.0.1:80",
        "10.0.0.1:443",
    ] {
        client.put(&hound.key("api", host_port), host_port);
    }
    let expected = pairs(&[
        ("10.0.0.1", 80),
        ("10.0.0.1", 443),
        ("10.0.0.1", 8080),
        ("10.0.0.2", 80),
    ]);
    poll_until(PROMPT, "four sorted nodes", || {
        hound.nodes("api") == expected
    });
    let body = hound.get("/etcd/services/api").assert_json(200);
    assert_eq!(
        body,
        json!({"services": [
            {"ip": "10.0.0.1", "port": 80},
            {"ip": "10.0.0.1", "port": 443},
            {"ip": "10.0.0.1", "port": 8080},
            {"ip": "10.0.0.2", "port": 80},
        ]})
    );
}

#[test]
fn ipv6_and_host_name_values_are_read() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    client.put(&hound.key("api", "[::1]:8080"), "[::1]:8080");
    client.put(
        &hound.key("api", "node-1.example.internal:80"),
        "node-1.example.internal:80",
    );
    poll_until(PROMPT, "both nodes listed", || {
        hound.nodes("api").len() == 2
    });
    let mut nodes = hound.nodes("api");
    nodes.sort();
    assert_eq!(
        nodes,
        pairs(&[("::1", 8080), ("node-1.example.internal", 80)])
    );
}

#[test]
fn unknown_service_is_an_empty_list() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let body = hound.get("/etcd/services/nobody-here").assert_json(200);
    assert_eq!(body, json!({"services": []}));
    let longest = "a".repeat(128);
    let body = hound
        .get(&format!("/etcd/services/{longest}"))
        .assert_json(200);
    assert_eq!(body, json!({"services": []}));
}

#[test]
fn bad_service_name_is_400() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let too_long = "a".repeat(129);
    for name in ["bad!name", "bad%20name", "bad*", too_long.as_str()] {
        hound
            .get(&format!("/etcd/services/{name}"))
            .assert_error(400);
    }
}

#[test]
fn unparsable_values_are_skipped_and_hound_keeps_working() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    client.put(&hound.key("api", "junk"), "not an address");
    client.put(&hound.key("api", "noport"), "10.0.0.5");
    client.put(&hound.key("api", "badport"), "10.0.0.5:http");
    client.put(&hound.key("api", "bigport"), "10.0.0.5:70000");
    client.put(&hound.key("api", "empty"), "");
    client.put(&hound.key("api", "10.0.0.1:80"), "10.0.0.1:80");
    poll_until(PROMPT, "the good node listed", || {
        hound.nodes("api") == pairs(&[("10.0.0.1", 80)])
    });
    // And later changes still come through.
    client.put(&hound.key("api", "10.0.0.2:80"), "10.0.0.2:80");
    poll_until(PROMPT, "the second node listed", || {
        hound.nodes("api") == pairs(&[("10.0.0.1", 80), ("10.0.0.2", 80)])
    });
    assert_eq!(
        hound.get("/healthz").assert_json(200),
        json!({"status": "ok"})
    );
}

#[test]
fn unknown_path_is_a_json_404() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    for path in [
        "/nope",
        "/etcd",
        "/etcd/services/api/extra",
        "/healthz/more",
    ] {
        hound.get(path).assert_error(404);
    }
}

#[test]
fn wrong_method_is_a_json_405() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    for (method, path) in [
        ("POST", "/healthz"),
        ("DELETE", "/etcd/services"),
        ("PUT", "/etcd/services/api"),
        ("POST", "/version"),
        ("GET", "/etcd/event"),
    ] {
        let response = request(hound.addr(), method, path, &[], b"");
        response.assert_error(405);
    }
}

#[test]
fn metrics_are_prometheus_text() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let _ws = register(&hound, "api", "10.0.0.1", 80);
    let response = hound.get("/metrics");
    assert_eq!(response.status, 200, "{response:?}");
    let content_type = response.header("Content-Type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain"),
        "Prometheus text format: {content_type:?}"
    );
    let text = response.text();
    assert!(
        text.lines()
            .any(|line| !line.starts_with('#') && line.split_whitespace().count() >= 2),
        "no samples in:\n{text}"
    );
}
