//! Verifies that an etcd member that freezes or dies costs nothing with `--ttl 3`: live
//! registrations stay in etcd on their leases and nobody hears them leave, a registration made
//! meanwhile is answered promptly, and a socket closed meanwhile is a prompt DELETE elsewhere.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const TTL: &str = "3";
/// How long the member stays frozen or dead: longer than the TTL, so a lease left on it lapses.
const FAULT: Duration = Duration::from_secs(5);
/// What the contract allows a registration, or a close reaching others as DELETE, during it.
const PROMPTLY: Duration = Duration::from_secs(2);
/// How long to keep checking after the member is back: it must not take anything with it.
const AFTER: Duration = Duration::from_secs(1);
/// What hound may take past the moment etcd answers again, when etcd's own election outlasts
/// `PROMPTLY` less this (the read that sees it is polled every 0.1 s).
const SINCE_ETCD_ANSWERS: Duration = Duration::from_millis(600);

/// What a fault test does to the member both hounds use.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGSTOP for [`FAULT`], then SIGCONT. A follower: a leader frozen past the TTL revokes
    /// leases itself when it resumes (etcd-io/etcd#15247), which no client can prevent.
    FreezeFollower,
    /// SIGKILL, and a restart on its data after [`FAULT`]. The leader, so the cluster elects
    /// another at the same time.
    KillLeader,
}

/// Every message a monitor gets, read on a thread of its own, with when it came.
struct Recording {
    messages: mpsc::Receiver<(Instant, Value)>,
    seen: Vec<(Instant, Value)>,
}

impl Recording {
    /// Monitors `services` on `hound` after its SYNCs.
    fn start(hound: &Hound, services: &[&str]) -> Recording {
        let mut ws = monitor_synced(hound, services);
        let (sender, messages) = mpsc::channel();
        thread::spawn(move || {
            // Ends when the test drops the recording (a send fails) or the socket closes.
            loop {
                match receive(&mut ws, Duration::from_millis(200)) {
                    Received::Json(message) => {
                        if sender.send((Instant::now(), message)).is_err() {
                            return;
                        }
                    }
                    Received::TimedOut => {}
                    Received::Closed(frame) => {
                        let _ = sender.send((
                            Instant::now(),
                            serde_json::json!({"closed": format!("{frame:?}")}),
                        ));
                        return;
                    }
                }
            }
        });
        Recording {
            messages,
            seen: Vec::new(),
        }
    }

    /// Everything recorded so far.
    fn seen(&mut self) -> &[(Instant, Value)] {
        self.seen.extend(self.messages.try_iter());
        &self.seen
    }

    /// When the first message with `event` whose membership lacks `node` came, if it has.
    fn gone(&mut self, event: &str, node: (&str, u16)) -> Option<Instant> {
        let node = (node.0.to_owned(), node.1);
        self.seen()
            .iter()
            .find(|(_, message)| {
                message["body"]["key_event"] == event
                    && !nodes_of(&message["body"]["services"]).contains(&node)
            })
            .map(|(at, _)| *at)
    }

    /// Panics if any message says a node in `live` left, or the socket closed.
    fn assert_kept(&mut self, who: &str, live: &[(String, u16)], since: Instant) {
        for (at, message) in self.seen() {
            let when = at.saturating_duration_since(since);
            assert!(
                message.get("closed").is_none(),
                "{who}'s monitor closed {when:?} into the fault: {message}"
            );
            let event = &message["body"]["key_event"];
            assert_ne!(
                event, "EXPIRE",
                "{who} saw EXPIRE {when:?} into the fault: {message}"
            );
            let listed = nodes_of(&message["body"]["services"]);
            if event == "DELETE" || event == "SYNC" {
                for node in live {
                    assert!(
                        listed.contains(node),
                        "{who} lost live node {node:?} {when:?} into the fault: {message}"
                    );
                }
            }
        }
    }
}

/// The index of the current leader and of the first follower after it.
fn leader_and_follower(cluster: &EtcdCluster) -> (usize, usize) {
    let leader = cluster.member(0).client().status().leader;
    let leader = cluster.index_of(leader, 0);
    (leader, (leader + 1) % cluster.len())
}

fn a_member_fault_costs_nothing(fault: Fault) {
    let _w = watchdog();
    let mut cluster = EtcdCluster::start(3);
    let (leader, follower) = leader_and_follower(&cluster);
    let victim = match fault {
        Fault::FreezeFollower => follower,
        Fault::KillLeader => leader,
    };
    // The victim first: both hounds start on it, so both must move off it.
    let urls: Vec<String> = (0..cluster.len())
        .map(|k| cluster.member((victim + k) % cluster.len()).url())
        .collect();
    let urls = urls.join(",");
    let hound = Hound::builder_for_url(&urls).args(["--ttl", TTL]).start();
    let observer = Hound::builder_for_url(&urls)
        .namespaces_of(&hound)
        .args(["--ttl", TTL])
        .start();
    let victim_id = cluster.member(victim).client().status().member_id;
    for (who, h) in [("hound", &hound), ("observer", &observer)] {
        let answer = h.get("/etcd/leader").assert_json(200);
        assert_eq!(
            answer["member_id"].as_u64(),
            Some(victim_id),
            "{who} does not use the first member: {answer}"
        );
    }

    let live_ports = [80u16, 81, 82];
    let _live: Vec<Ws> = live_ports
        .iter()
        .map(|&port| register(&hound, "api", "10.0.0.1", port))
        .collect();
    let _observers_own = register(&observer, "api", "10.0.0.9", 80);
    let closing = register(&hound, "api", "10.0.0.2", 90);
    let mut live: Vec<(String, u16)> = live_ports
        .iter()
        .map(|&port| ("10.0.0.1".to_owned(), port))
        .collect();
    live.push(("10.0.0.9".to_owned(), 80));
    let mut recordings = [
        ("observer", Recording::start(&observer, &["api"])),
        ("hound", Recording::start(&hound, &["api"])),
    ];
    let survivor = (victim + 1) % cluster.len();
    let mut direct = cluster.member(survivor).client();
    let leases: Vec<(String, i64)> = live
        .iter()
        .map(|(ip, port)| {
            let key = hound.key("api", &format!("{ip}:{port}"));
            let lease = direct
                .get(&key)
                .expect("a live registration is in etcd")
                .lease;
            (key, lease)
        })
        .collect();
    // Leadership may have moved while the hounds started; the freeze must hit a follower.
    if let Fault::FreezeFollower = fault {
        assert_ne!(
            direct.status().leader,
            victim_id,
            "the member to freeze became the leader"
        );
    }

    match fault {
        Fault::FreezeFollower => cluster.member(victim).pause(),
        Fault::KillLeader => cluster.member_mut(victim).kill(),
    }
    let struck = Instant::now();
    eprintln!("failover ({fault:?}): member {victim} struck");

    // At once: one socket closes, another registers (on a thread, as a service would).
    close(closing);
    let closed = Instant::now();
    let hound_addr = hound.addr();
    let registering = thread::spawn(move || {
        let started = Instant::now();
        let outcome = ws_connect(hound_addr, &register_path("api", "10.0.0.3", 100), &[]);
        (outcome, started.elapsed())
    });

    // Until the member is back and a while after, every live key stays on its lease in etcd
    // and nobody hears of a live node leaving.
    let mut deleted = None;
    let mut polls = 0;
    let mut back = None;
    // When a linearizable read through a surviving member first worked again: with the leader
    // killed, etcd itself can take no write until it has elected another (about 1 s, longer
    // on a loaded machine), so hound's promptness is measured from then if that is later.
    let mut etcd_answers: Option<Duration> = None;
    while back.is_none_or(|back: Instant| back.elapsed() < AFTER) {
        // While the cluster elects a leader, etcd itself cannot answer reads: ask again.
        match direct.try_get_prefix(&hound.prefix()) {
            Ok(entries) => {
                polls += 1;
                etcd_answers.get_or_insert(struck.elapsed());
                for (key, lease) in &leases {
                    let entry = entries.iter().find(|e| &e.key == key);
                    assert_eq!(
                        entry.map(|e| e.lease),
                        Some(*lease),
                        "{key} is missing or on another lease {:?} into the fault",
                        struck.elapsed()
                    );
                }
            }
            Err(why) => eprintln!("failover ({fault:?}): etcd could not be read: {why}"),
        }
        for (who, recording) in &mut recordings {
            recording.assert_kept(who, &live, struck);
        }
        if deleted.is_none() {
            deleted = recordings[0].1.gone("DELETE", ("10.0.0.2", 90));
        }
        if back.is_none() && struck.elapsed() >= FAULT {
            match fault {
                Fault::FreezeFollower => cluster.member(victim).resume(),
                Fault::KillLeader => cluster.member_mut(victim).restart(),
            }
            back = Some(Instant::now());
            eprintln!("failover ({fault:?}): member {victim} back");
        }
        thread::sleep(Duration::from_millis(100));
    }

    let (outcome, took) = registering.join().expect("the registering thread");
    let mut new_socket = outcome.unwrap_or_else(|response| {
        panic!("a registration during the fault was refused after {took:?}: {response:?}")
    });
    let etcd_answers = etcd_answers.unwrap_or_default();
    let allowed = PROMPTLY.max(etcd_answers + SINCE_ETCD_ANSWERS);
    eprintln!(
        "failover ({fault:?}): registration during the fault took {took:?} (etcd answered \
         reads again {etcd_answers:?} into the fault)"
    );
    assert!(
        took < allowed,
        "a registration during the fault took {took:?}; etcd answered again after \
         {etcd_answers:?}"
    );
    // Its SYNC lists every live node and itself (and the closed one, if its deletion reached
    // etcd after this registration: the two raced).
    let sync = next_json(&mut new_socket, PROMPT);
    assert_eq!(sync["body"]["key_event"], "SYNC", "{sync}");
    let mut listed = nodes_of(&sync["body"]["services"]);
    listed.retain(|node| node != &("10.0.0.2".to_owned(), 90));
    let mut expected = live.clone();
    expected.push(("10.0.0.3".to_owned(), 100));
    expected.sort();
    assert_eq!(listed, expected, "{sync}");
    let deleted = deleted.unwrap_or_else(|| {
        panic!(
            "the observer never saw the closed socket's node DELETEd; it saw {:?}",
            recordings[0].1.seen()
        )
    });
    let delete_took = deleted.saturating_duration_since(closed);
    eprintln!("failover ({fault:?}): close → DELETE at the observer took {delete_took:?}");
    if let Some(own) = recordings[1].1.gone("DELETE", ("10.0.0.2", 90)) {
        let own = own.saturating_duration_since(closed);
        eprintln!("failover ({fault:?}): close → DELETE at hound's own monitor took {own:?}");
    }
    assert!(
        delete_took < allowed,
        "the close reached the observer as DELETE after {delete_took:?}; etcd answered again \
         after {etcd_answers:?}"
    );
    assert!(
        direct.get(&hound.key("api", "10.0.0.2:90")).is_none(),
        "the closed socket's node is still in etcd"
    );
    assert!(polls >= 30, "etcd was polled only {polls} times");
    for (who, h) in [("hound", &hound), ("observer", &observer)] {
        let stderr = h.stderr();
        assert!(
            !stderr.contains("registering it again") && !stderr.contains("will expire instead"),
            "{who} lost a lease or a delete:\n{stderr}"
        );
    }
    poll_until(PROMPT, "both hounds to list every live node", || {
        hound.nodes("api") == expected && observer.nodes("api") == expected
    });
}

#[test]
fn freezing_the_follower_hound_uses_loses_nothing_and_delays_nothing() {
    a_member_fault_costs_nothing(Fault::FreezeFollower);
}

#[test]
fn killing_the_leader_hound_uses_loses_nothing_and_delays_nothing() {
    a_member_fault_costs_nothing(Fault::KillLeader);
}
