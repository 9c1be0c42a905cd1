//! Verifies who holds a registration's key when writes race: one node registered through two
//! hounds, a keeper's write still in flight when its registration is taken over or ends, and a
//! registration whose client left before etcd could answer.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::*;

const TTL: u64 = 3;

/// The same node registered through hound A, then hound B: the key moves to B's lease (the
/// last registration holds it) and A's socket stays open. When B's socket ends, B deletes
/// the key, and A puts it back on its own lease within one TTL (others see DELETE, then PUT),
/// since A's socket still lives. Neither hound takes the key from the other while both live.
#[test]
fn a_node_registered_through_two_hounds_stays_registered_while_either_socket_lives() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let ttl = TTL.to_string();
    let a = Hound::start(&etcd, &["--ttl", &ttl]);
    let b = Hound::builder(&etcd)
        .namespaces_of(&a)
        .args(["--ttl", &ttl])
        .start();
    let mut client = etcd.client();
    let key = a.key("api", "10.0.0.1:80");
    let mut watcher = monitor_synced(&a, &["api"]);
    let mut through_a = register(&a, "api", "10.0.0.1", 80);
    let _ = next_json(&mut through_a, PROMPT);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    let lease_a = client.get(&key).expect("registered through A").lease;

    let mut through_b = register(&b, "api", "10.0.0.1", 80);
    let _ = next_json(&mut through_b, PROMPT);
    let lease_b = client.get(&key).expect("registered through B").lease;
    assert_ne!(lease_b, lease_a, "the last registration holds the key");
    // No fight: for more than a TTL, the key stays where B put it and nobody is told a thing.
    expect_no_message(&mut watcher, Duration::from_secs(TTL) + QUIET);
    assert_eq!(client.get(&key).map(|e| e.lease), Some(lease_b));

    close(through_b);
    let closed = Instant::now();
    expect_message(&mut watcher, &key_event("api", "DELETE", &[]));
    let entry = poll_for(
        Duration::from_secs(TTL) + PROMPT,
        "A to put the key back on its lease",
        || client.get(&key).filter(|entry| entry.lease == lease_a),
    );
    let back = closed.elapsed();
    eprintln!("two hounds: B's socket closed; A put the key back after {back:?}");
    assert!(back <= Duration::from_secs(TTL), "missing for {back:?}");
    assert_eq!(entry.value, naming_value("10.0.0.1:80"));
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    assert_eq!(a.metric("hound_registrations"), 1.0);

    // The older registration ending leaves the newer one alone.
    let mut again_b = register(&b, "api", "10.0.0.1", 80);
    let _ = next_json(&mut again_b, PROMPT);
    let lease_b = client.get(&key).expect("registered through B").lease;
    close(through_a);
    expect_no_message(&mut watcher, Duration::from_secs(TTL / 3) + QUIET);
    assert_eq!(client.get(&key).map(|e| e.lease), Some(lease_b));
    // The last one ending removes the node for good.
    close(again_b);
    expect_message(&mut watcher, &key_event("api", "DELETE", &[]));
    expect_no_message(&mut watcher, Duration::from_secs(TTL / 3) + QUIET);
    assert!(client.get(&key).is_none());
}

/// How a registration whose keeper's write is held ends, in [`a_keepers_write_in_flight`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// A newer socket registers the same node (the older is closed with 4000).
    TakenOver,
    /// Its socket closes.
    Closed,
}

/// Forces a keeper's write to be in flight when its registration ends: hound's test hook
/// (`HOUND_TEST_HOLD_PUT_BACK`, debug builds) holds the write with which a keeper puts its key
/// back (here, after its lease was revoked) until the registration ends, and then lets it
/// reach etcd before hound does anything else about the ending — after a new owner's write,
/// before the old lease is revoked. Whatever it finds, no key may end on a lease nobody keeps
/// and a new owner's key may not be overwritten or deleted.
fn a_keepers_write_in_flight(ending: Ending) {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::builder(&etcd)
        .args(["--ttl", &TTL.to_string()])
        .env("HOUND_TEST_HOLD_PUT_BACK", "1")
        .start();
    let mut client = etcd.client();
    let key = hound.key("api", "10.0.0.1:80");
    let mut first = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut first, PROMPT);
    let revoked = client.get(&key).expect("registered").lease;
    client.lease_revoke(revoked);
    let holding = format!("test hook: holding the write of {key} on lease ");
    let held_lease = poll_for(PROMPT, "the keeper's write to be held", || {
        let stderr = hound.stderr();
        let rest = &stderr[stderr.find(&holding)? + holding.len()..];
        let hex = rest.split_whitespace().next()?;
        i64::from_str_radix(hex, 16).ok()
    });
    assert_ne!(held_lease, revoked);
    let watch = PrefixWatch::start(&etcd.url(), &hound.prefix(), client.revision() + 1);

    let new_owner = match ending {
        Ending::TakenOver => {
            let mut second = register(&hound, "api", "10.0.0.1", 80);
            let _ = next_json(&mut second, PROMPT);
            let lease = client.get(&key).expect("registered by the new owner").lease;
            assert_eq!(
                read_close(&mut first, PROMPT).map(|(code, _)| code),
                Some(4000)
            );
            Some((second, lease))
        }
        Ending::Closed => {
            close(first);
            None
        }
    };
    let landed = format!("test hook: the held write of {key} on lease {held_lease:x}: ");
    let outcome = poll_for(PROMPT, "the held write to reach etcd", || {
        let stderr = hound.stderr();
        let rest = &stderr[stderr.find(&landed)? + landed.len()..];
        Some(rest.lines().next()?.to_owned())
    });
    eprintln!("keeper's write in flight when its registration was {ending:?}: {outcome}");
    poll_until(PROMPT, "the held write's lease to be revoked", || {
        client.lease_granted_ttl(held_lease).is_none()
    });
    // Past a keeper's period and then some, the key is where the ending put it.
    let settled = Instant::now() + Duration::from_secs(TTL / 3) + QUIET;
    while Instant::now() < settled {
        let lease = client.get(&key).map(|entry| entry.lease);
        assert_eq!(
            lease,
            new_owner.as_ref().map(|(_, lease)| *lease),
            "{outcome}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let writes: Vec<Watched> = watch
        .seen()
        .into_iter()
        .filter(|seen| matches!(seen, Watched::Put { key: k, .. } | Watched::Delete { key: k, .. } if *k == key))
        .collect();
    match ending {
        // Only the new owner's write: the held one found the key taken and wrote nothing.
        Ending::TakenOver => assert!(
            matches!(writes.as_slice(), [Watched::Put { .. }]),
            "{writes:?}"
        ),
        // The held write may put the key back before the deletion; it is deleted after it.
        Ending::Closed => assert!(
            matches!(
                writes.as_slice(),
                [] | [Watched::Put { .. }, Watched::Delete { .. }]
            ),
            "{writes:?}"
        ),
    }
}

#[test]
fn a_keepers_write_in_flight_at_a_takeover_does_not_overwrite_the_new_owner() {
    a_keepers_write_in_flight(Ending::TakenOver);
}

#[test]
fn a_keepers_write_in_flight_at_a_deregistration_leaves_no_key_behind() {
    a_keepers_write_in_flight(Ending::Closed);
}

/// Sends a WebSocket upgrade to `path_and_query` and returns without waiting for the answer.
fn send_upgrade(addr: SocketAddr, path_and_query: &str) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .expect("send the upgrade");
    stream
}

/// Registrations wait for etcd one at a time. Clients that give up while etcd is frozen —
/// one whose registration is running, one whose registration waits behind it — are never
/// registered, even though etcd comes back before their deadline: nobody sees a PUT and a
/// DELETE for a socket long gone. A client that stays is registered once etcd answers.
#[test]
fn a_registration_whose_client_left_while_etcd_was_frozen_is_never_written() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", &TTL.to_string()]);
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut client = etcd.client();
    let watch = PrefixWatch::start(&etcd.url(), &hound.prefix(), client.revision() + 1);

    etcd.pause();
    let frozen = Instant::now();
    let running = send_upgrade(hound.addr(), &register_path("api", "10.0.0.1", 80));
    // The faults injected, in order: the first registration starts before the others queue.
    std::thread::sleep(Duration::from_millis(100));
    let queued = send_upgrade(hound.addr(), &register_path("api", "10.0.0.2", 80));
    let addr = hound.addr();
    let staying = std::thread::spawn(move || {
        let opened = ws_connect(addr, &register_path("api", "10.0.0.3", 80), &[]);
        (opened, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(100));
    drop(running);
    drop(queued);
    std::thread::sleep(Duration::from_millis(700).saturating_sub(frozen.elapsed()));
    etcd.resume();
    let resumed = Instant::now();

    let (opened, at) = staying.join().expect("the staying client");
    let mut staying = opened.unwrap_or_else(|response| panic!("refused: {response:?}"));
    eprintln!(
        "etcd frozen for {:?}: the staying client's 101 came {:?} after it resumed",
        resumed - frozen,
        at.saturating_duration_since(resumed)
    );
    let _ = next_json(&mut staying, PROMPT);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.3", 80)]));
    expect_no_message(&mut watcher, Duration::from_secs(1));
    let written: Vec<Watched> = watch
        .seen()
        .into_iter()
        .filter(|seen| !matches!(seen, Watched::Put { key, .. } if key.ends_with("10.0.0.3:80")))
        .collect();
    assert_eq!(written, [], "etcd saw writes for clients that had left");
    assert!(!registered(&mut client, &hound, "api", "10.0.0.1:80"));
    assert!(!registered(&mut client, &hound, "api", "10.0.0.2:80"));
}
