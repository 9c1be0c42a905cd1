//! Verifies the edges of the WebSocket routes on etcd: the longest valid values are accepted,
//! a GET without `Upgrade` is 426, a wrong method is 405, and neither writes anything to etcd.
//! (Every bad parameter is a 400 that registers nothing: `scenarios.rs`, both backends.)

use crate::support::*;

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
