//! Verifies that every bad WebSocket parameter is a plain HTTP 400 before any upgrade, that a GET
//! without `Upgrade` is 426, and that none of them writes anything to etcd.

use crate::support::*;

fn assert_refused(hound: &Hound, path: &str, status: u16) {
    match ws_connect(hound.addr(), path, &[]) {
        Ok(_) => panic!("{path} was upgraded; expected {status}"),
        Err(response) => {
            assert_eq!(response.status, status, "{path}: {response:?}");
            response.assert_error(status);
        }
    }
}

fn register_query(pairs: &[(&str, &str)]) -> String {
    format!("/etcd/register?{}", query(pairs))
}

#[test]
fn bad_register_parameters_are_400_and_write_nothing() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let long_name = "a".repeat(129);
    let long_label = format!("{}.example", "a".repeat(64));
    let long_host = vec!["abcdefghi"; 26].join("."); // 259 characters
    let too_many: Vec<String> = (0..65).map(|i| format!("svc{i}")).collect();
    let too_many = too_many.join(",");
    let ok = [("service", "api"), ("ip", "10.0.0.1"), ("port", "80")];
    let with = |name: &str, value: &str| -> String {
        let mut pairs: Vec<(&str, &str)> = ok.iter().copied().filter(|(n, _)| *n != name).collect();
        pairs.push((name, value));
        register_query(&pairs)
    };
    let without = |name: &str| -> String {
        let pairs: Vec<(&str, &str)> = ok.iter().copied().filter(|(n, _)| *n != name).collect();
        register_query(&pairs)
    };
    let cases = vec![
        "/etcd/register".to_owned(),
        without("service"),
        without("ip"),
        without("port"),
        with("service", ""),
        with("service", "a/b"),
        with("service", "a b"),
        with("service", "a+b"),
        with("service", "ümlaut"),
        with("service", &long_name),
        with("ip", ""),
        with("ip", "not an ip"),
        with("ip", "a_b!"),
        with("ip", "-leading-hyphen.example"),
        with("ip", &long_label),
        with("ip", &long_host),
        with("ip", "10.0.0.1:80"),
        with("ip", "::1::2"),
        with("port", ""),
        with("port", "0"),
        with("port", "65536"),
        with("port", "-1"),
        with("port", "abc"),
        with("port", "80.5"),
        format!("{}&monitor={}", without("nothing"), encode(&too_many)),
        format!("{}&monitor={}", without("nothing"), encode("ok,bad name")),
        format!("{}&monitor={}", without("nothing"), encode("ok,a/b")),
    ];
    for path in &cases {
        assert_refused(&hound, path, 400);
    }
    assert_namespace_empty(&mut client, &hound, "after refused registrations");
    assert!(hound.services().is_empty());
}

#[test]
fn edge_values_that_are_valid_are_accepted() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let longest = "A.b_c-9".repeat(19)[..128].to_owned();
    let host_253 = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "b".repeat(61));
    assert_eq!(host_253.len(), 253);
    let _a = register(&hound, &longest, "10.0.0.1", 1);
    let _b = register(&hound, "api", "10.0.0.1", 65535);
    let _c = register(&hound, "api", &host_253, 80);
    let _d = register(&hound, "api", "fe80::1", 80);
    assert_eq!(hound.nodes(&longest), pairs(&[("10.0.0.1", 1)]));
    assert_eq!(hound.nodes("api").len(), 3);
}

#[test]
fn bad_monitor_parameters_are_400() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let too_many: Vec<String> = (0..65).map(|i| format!("svc{i}")).collect();
    for value in [
        too_many.join(","),
        "bad name".to_owned(),
        "ok,a/b".to_owned(),
        "a".repeat(129),
    ] {
        assert_refused(
            &hound,
            &format!("/etcd/monitor?monitor={}", encode(&value)),
            400,
        );
    }
    assert_refused(&hound, "/etcd/monitor", 400);
    assert_namespace_empty(&mut client, &hound, "after refused monitors");
}

#[test]
fn a_plain_get_on_a_websocket_route_is_426() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    hound
        .get(&register_path("api", "10.0.0.1", 80))
        .assert_error(426);
    hound.get(&monitor_path(&["api"])).assert_error(426);
    assert_namespace_empty(&mut client, &hound, "after plain GETs");
}

#[test]
fn a_wrong_method_on_a_websocket_route_is_405() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    request(
        hound.addr(),
        "POST",
        &register_path("api", "10.0.0.1", 80),
        &[],
        b"",
    )
    .assert_error(405);
    request(hound.addr(), "DELETE", &monitor_path(&["api"]), &[], b"").assert_error(405);
    assert_namespace_empty(&mut client, &hound, "after wrong methods");
}
