//! Verifies `/etcd/monitor` on etcd: one SYNC per service comes first, then every change of the
//! monitored services in order (written straight into etcd), and nothing of other services or
//! namespaces; many monitors, 64 services, empty list items, and that monitors write nothing.

use crate::support::*;

#[test]
fn sync_per_service_first_then_changes_in_order() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    client.put(&hound.key("api", "10.0.0.2:80"), "10.0.0.2:80");
    client.put(&hound.key("api", "10.0.0.1:80"), "10.0.0.1:80");
    poll_until(PROMPT, "hound to see the api nodes", || {
        hound.nodes("api").len() == 2
    });

    let mut ws = monitor(&hound, &["api", "engine"]);
    let mut syncs = vec![next_json(&mut ws, PROMPT), next_json(&mut ws, PROMPT)];
    syncs.sort_by_key(|m| m["namespace"].as_str().unwrap_or("").to_owned());
    assert_eq!(
        syncs,
        vec![
            key_event("api", "SYNC", &[("10.0.0.1", 80), ("10.0.0.2", 80)]),
            key_event("engine", "SYNC", &[]),
        ]
    );
    expect_no_message(&mut ws, QUIET);

    client.put(&hound.key("engine", "10.0.1.1:9000"), "10.0.1.1:9000");
    client.put(&hound.key("engine", "10.0.1.2:9000"), "10.0.1.2:9000");
    client.delete(&hound.key("api", "10.0.0.1:80"));
    client.delete(&hound.key("engine", "10.0.1.1:9000"));
    client.put(&hound.key("api", "10.0.0.3:80"), "10.0.0.3:80");

    for expected in [
        key_event("engine", "PUT", &[("10.0.1.1", 9000)]),
        key_event("engine", "PUT", &[("10.0.1.1", 9000), ("10.0.1.2", 9000)]),
        key_event("api", "DELETE", &[("10.0.0.2", 80)]),
        key_event("engine", "DELETE", &[("10.0.1.2", 9000)]),
        key_event("api", "PUT", &[("10.0.0.2", 80), ("10.0.0.3", 80)]),
    ] {
        expect_message(&mut ws, &expected);
    }
    expect_no_message(&mut ws, QUIET);
}

#[test]
fn changes_of_other_services_are_not_sent() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let mut ws = monitor_synced(&hound, &["api"]);
    client.put(&hound.key("engine", "10.0.1.1:9000"), "10.0.1.1:9000");
    client.put(&hound.key("api-v2", "10.0.1.1:9000"), "10.0.1.1:9000");
    client.put(
        &format!("{}x/api/10.0.0.1:80", hound.namespace()),
        "10.0.0.1:80",
    );
    client.put(&hound.key("api", "10.0.0.1:80"), "10.0.0.1:80");
    // The first message is the api change: nothing of engine, api-v2 or another namespace.
    expect_message(&mut ws, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    expect_no_message(&mut ws, QUIET);
}

#[test]
fn many_monitors_all_get_the_change() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let mut sockets: Vec<Ws> = (0..10).map(|_| monitor_synced(&hound, &["api"])).collect();
    client.put(&hound.key("api", "10.0.0.1:80"), "10.0.0.1:80");
    for ws in &mut sockets {
        expect_message(ws, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    }
}

#[test]
fn a_monitor_writes_nothing_to_etcd() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let ws = monitor_synced(&hound, &["api", "engine"]);
    assert_namespace_empty(&mut client, &hound, "after a monitor connected");
    close(ws);
    assert_namespace_empty(&mut client, &hound, "after a monitor closed");
}

#[test]
fn sixty_four_monitored_services_are_accepted() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let names: Vec<String> = (0..64).map(|i| format!("svc{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ws = monitor_synced(&hound, &refs);
}

#[test]
fn empty_items_in_the_monitor_list_are_ignored() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut ws = ws_open(&hound, "/etcd/monitor?monitor=,api,,engine,");
    let mut syncs = vec![next_json(&mut ws, PROMPT), next_json(&mut ws, PROMPT)];
    syncs.sort_by_key(|m| m["namespace"].as_str().unwrap_or("").to_owned());
    assert_eq!(
        syncs,
        vec![
            key_event("api", "SYNC", &[]),
            key_event("engine", "SYNC", &[])
        ]
    );
    expect_no_message(&mut ws, QUIET);
}

/// Two keys holding one address list it once: adding or removing the second sends nothing, as
/// the membership did not change; removing the last sends it.
#[test]
fn a_second_key_with_a_listed_address_sends_nothing() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    let mut ws = monitor_synced(&hound, &["api"]);
    let (first, second) = (hound.key("api", "a"), hound.key("api", "b"));
    client.put(&first, "10.0.0.1:80");
    expect_message(&mut ws, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    client.put(&second, "10.0.0.1:80");
    client.delete(&first);
    // A marker change after both, so that "nothing" is not just "not yet".
    client.put(&hound.key("api", "c"), "10.0.0.3:80");
    expect_message(
        &mut ws,
        &key_event("api", "PUT", &[("10.0.0.1", 80), ("10.0.0.3", 80)]),
    );
    assert_eq!(
        hound.nodes("api"),
        [("10.0.0.1".into(), 80), ("10.0.0.3".into(), 80)]
    );
    client.delete(&second);
    expect_message(&mut ws, &key_event("api", "DELETE", &[("10.0.0.3", 80)]));
}
