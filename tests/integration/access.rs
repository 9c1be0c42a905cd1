//! Verifies access control: cross-site requests are refused unless allowed, and `--token` guards
//! every route but `/healthz` and `/version` without ever being logged.

use serde_json::json;

use crate::support::*;

#[test]
fn a_cross_site_upgrade_is_403_and_registers_nothing() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let path = register_path("api", "10.0.0.1", 80);
    match ws_connect(hound.addr(), &path, &[("Origin", "http://evil.example")]) {
        Ok(_) => panic!("cross-site upgrade accepted"),
        Err(response) => response.assert_error(403),
    }
    match ws_connect(
        hound.addr(),
        &monitor_path(&["api"]),
        &[("Origin", "http://evil.example")],
    ) {
        Ok(_) => panic!("cross-site monitor accepted"),
        Err(response) => response.assert_error(403),
    }
    assert_namespace_empty(&mut client, &hound, "after a cross-site upgrade");
}

#[test]
fn a_same_origin_upgrade_is_accepted() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let origin = format!("http://{}", hound.addr());
    let ws = ws_connect(
        hound.addr(),
        &register_path("api", "10.0.0.1", 80),
        &[("Origin", &origin)],
    );
    assert!(ws.is_ok(), "same-origin upgrade refused: {:?}", ws.err());
}

#[test]
fn an_allowed_origin_is_accepted() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(
        &etcd,
        &[
            "--allow-origin",
            "http://app.example,http://other.example:8080",
        ],
    );
    for origin in ["http://app.example", "http://other.example:8080"] {
        let ws = ws_connect(hound.addr(), &monitor_path(&["api"]), &[("Origin", origin)]);
        assert!(
            ws.is_ok(),
            "allowed origin {origin} refused: {:?}",
            ws.err()
        );
    }
    match ws_connect(
        hound.addr(),
        &monitor_path(&["api"]),
        &[("Origin", "http://evil.example")],
    ) {
        Ok(_) => panic!("an origin that is not listed was accepted"),
        Err(response) => response.assert_error(403),
    }
}

#[test]
fn a_cross_site_event_post_is_403() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut listener = monitor_synced(&hound, &["a"]);
    let response = request(
        hound.addr(),
        "POST",
        "/etcd/event",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "http://evil.example"),
        ],
        json!({"event_type": "t", "services": ["a"]})
            .to_string()
            .as_bytes(),
    );
    response.assert_error(403);
    expect_no_message(&mut listener, QUIET);
}

#[test]
fn a_token_guards_every_route_but_health_and_version() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let secret = "s3cret-token-value";
    let hound = Hound::start(&etcd, &["--token", secret]);
    let bearer = format!("Bearer {secret}");
    let mut client = etcd.client();

    assert_eq!(hound.get("/healthz").status, 200);
    assert_eq!(hound.get("/version").status, 200);
    for path in [
        "/etcd/services",
        "/etcd/services/api",
        "/etcd/version",
        "/etcd/leader",
    ] {
        hound.get(path).assert_error(401);
        let response = request(
            hound.addr(),
            "GET",
            path,
            &[("Authorization", "Bearer wrong")],
            b"",
        );
        response.assert_error(401);
        let response = request(
            hound.addr(),
            "GET",
            path,
            &[("Authorization", &bearer)],
            b"",
        );
        assert_eq!(response.status, 200, "{path} with the token: {response:?}");
    }
    let event = json!({"event_type": "t", "broadcast": true}).to_string();
    request(
        hound.addr(),
        "POST",
        "/etcd/event",
        &[("Content-Type", "application/json")],
        event.as_bytes(),
    )
    .assert_error(401);
    let response = request(
        hound.addr(),
        "POST",
        "/etcd/event",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &bearer),
        ],
        event.as_bytes(),
    );
    assert_eq!(response.status, 200, "{response:?}");

    // WebSockets: a header or `?token=`; nothing registered without it.
    let path = register_path("api", "10.0.0.1", 80);
    match ws_connect(hound.addr(), &path, &[]) {
        Ok(_) => panic!("registration without the token accepted"),
        Err(response) => response.assert_error(401),
    }
    match ws_connect(hound.addr(), &format!("{path}&token=wrong"), &[]) {
        Ok(_) => panic!("registration with a wrong token accepted"),
        Err(response) => response.assert_error(401),
    }
    assert_namespace_empty(&mut client, &hound, "after unauthorized registrations");
    let with_query = ws_connect(hound.addr(), &format!("{path}&token={secret}"), &[]);
    assert!(
        with_query.is_ok(),
        "?token= refused: {:?}",
        with_query.err()
    );
    let with_header = ws_connect(
        hound.addr(),
        &monitor_path(&["api"]),
        &[("Authorization", &bearer)],
    );
    assert!(
        with_header.is_ok(),
        "Authorization header refused: {:?}",
        with_header.err()
    );

    assert!(
        !hound.stderr().contains(secret),
        "the token appears in the log:\n{}",
        hound.stderr()
    );
}

#[test]
fn the_token_can_come_from_env() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::builder(&etcd).env("HOUND_TOKEN", "from-env").start();
    hound.get("/etcd/services").assert_error(401);
    let response = request(
        hound.addr(),
        "GET",
        "/etcd/services",
        &[("Authorization", "Bearer from-env")],
        b"",
    );
    assert_eq!(response.status, 200, "{response:?}");
}

/// A page on a rebinding domain (the attacker's name resolving to hound's address) must not
/// read hound's answers: a `Host` that is not one of hound's names gets 403 on every route but
/// `/healthz`, until `--allow-host` names it.
#[test]
fn a_foreign_host_name_is_403_on_every_route_but_healthz() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let ask = |hound: &Hound, path: &str, host: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(hound.addr(), request.as_bytes(), PROMPT);
        read_response(&mut &answer[..]).expect("an HTTP answer")
    };
    let hound = Hound::start(&etcd, &[]);
    let port = hound.addr().port();
    let foreign = format!("attacker.example:{port}");
    for path in [
        "/etcd/services",
        "/etcd/services/api",
        "/metrics",
        "/",
        "/version",
    ] {
        ask(&hound, path, &foreign).assert_error(403);
        assert_eq!(
            ask(&hound, path, &format!("127.0.0.1:{port}")).status,
            200,
            "{path}"
        );
        assert_eq!(
            ask(&hound, path, &format!("localhost:{port}")).status,
            200,
            "{path}"
        );
    }
    assert_eq!(ask(&hound, "/healthz", &foreign).status, 200);

    let allowing = Hound::start(&etcd, &["--allow-host", "attacker.example"]);
    let port = allowing.addr().port();
    assert_eq!(
        ask(
            &allowing,
            "/etcd/services",
            &format!("ATTACKER.example:{port}")
        )
        .status,
        200
    );
    ask(
        &allowing,
        "/etcd/services",
        &format!("other.example:{port}"),
    )
    .assert_error(403);
}
