//! The checker: etcd's recorded history against every socket's messages, the faults injected
//! and the sockets closed. Each check is named by its letter in the hardening issue:
//! (b) per service, messages follow revision order and never show a membership etcd never held;
//! (c) a closed register socket is a DELETE everywhere unless its hound died;
//! (d) no live socket's node is missing from etcd for more than one TTL (nor expires while its
//!     hound is fine).
//! (a) and (e) need the running processes and are checked in main.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clients::{End, Members, Msg, Sock};
use crate::kv::Event;

/// A fault as injected: which hound or member, and when.
#[derive(Debug, Clone)]
pub struct FaultWindow {
    pub what: String,
    pub hound: Option<usize>,
    /// Whether it lets its hound's registrations lapse: the hound killed, frozen or cut off
    /// from every member. (A member fault, or a hound cut off from some members, excuses
    /// nothing: the hound must carry on through the others.)
    pub excuses: bool,
    /// A `member-stop` that froze the leader: when it resumes after a freeze of some seconds,
    /// etcd's old leader revokes the leases that expired by its own clock before it steps down
    /// (etcd-io/etcd#15247), whoever kept them alive.
    pub leader_frozen: bool,
    /// The members it takes away: those a partition or isolation cuts its hound off from, or
    /// the one member a member fault stops.
    pub members: Vec<usize>,
    pub start: Instant,
    pub end: Option<Instant>,
}

/// The times a partition of a hound from some members and a fault of the remaining member(s)
/// together leave it no member to reach, as excusing windows: then its leases may lapse as
/// under `isolate` (seed 1301: cut off from m0 and m2 while m1 was killed).
pub fn combined_isolations(faults: &[FaultWindow], members: usize) -> Vec<FaultWindow> {
    let partitions = faults
        .iter()
        .filter(|f| f.hound.is_some() && !f.excuses && !f.members.is_empty());
    let mut found = Vec::new();
    for partition in partitions {
        let member_faults = faults
            .iter()
            .filter(|f| f.hound.is_none() && !f.members.is_empty());
        for member_fault in member_faults {
            let reachable = (0..members)
                .any(|m| !partition.members.contains(&m) && !member_fault.members.contains(&m));
            if reachable {
                continue;
            }
            let start = partition.start.max(member_fault.start);
            let end = match (partition.end, member_fault.end) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if end.is_some_and(|end| end <= start) {
                continue;
            }
            found.push(FaultWindow {
                what: format!("{} while {}", partition.what, member_fault.what),
                hound: partition.hound,
                excuses: true,
                leader_frozen: false,
                members: (0..members).collect(),
                start,
                end,
            });
        }
    }
    found
}

/// A register socket we closed (or dropped) while it held its node.
#[derive(Debug, Clone)]
pub struct CleanClose {
    pub sock: usize,
    pub service: String,
    pub node: String,
    pub hound: usize,
    pub at: Instant,
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub check: &'static str,
    pub subject: String,
    pub detail: String,
}

pub struct Input<'a> {
    pub namespace: &'a str,
    pub ttl: Duration,
    pub start: Instant,
    pub end: Instant,
    pub events: &'a [Event],
    pub stalls: &'a [(Instant, Instant)],
    pub socks: &'a [Arc<Sock>],
    pub faults: &'a [FaultWindow],
    /// When etcd's history was compacted, and up to which revision.
    pub compactions: &'a [(Instant, i64)],
    pub closes: &'a [CleanClose],
}

/// How a state of a service was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Start,
    Put,
    /// A deletion; `true` when hound's tombstone came in the same revision (a deregistration).
    Delete(bool),
}

/// A service's membership after one revision that changed it.
#[derive(Debug, Clone)]
struct State {
    revision: i64,
    at: Instant,
    via: Via,
    key: String,
    members: Members,
}

/// One change of one registration key (`service/node`).
#[derive(Debug, Clone)]
struct KeyChange {
    revision: i64,
    lease: i64,
    at: Instant,
    present: bool,
    tombstone: bool,
}

/// `service/node` of a registration key, and whether it is a tombstone.
pub fn split_key<'k>(namespace: &str, key: &'k str) -> Option<(bool, &'k str, &'k str)> {
    let rest = key.strip_prefix(namespace)?.strip_prefix('/')?;
    let (tombstone, rest) = match rest.strip_prefix("~deregistered/") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let (service, node) = rest.split_once('/')?;
    Some((tombstone, service, node))
}

/// The address a registration's value names: hound's JSON (`{"Addr":"ip:port",…}`) or a
/// plain `ip:port`.
pub fn address(value: &str) -> Option<(String, u16)> {
    let addr = match serde_json::from_str::<serde_json::Value>(value) {
        Ok(json) => json["Addr"].as_str()?.to_owned(),
        Err(_) => value.to_owned(),
    };
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

/// Every service's membership per revision, and every key's presence over time.
struct Timeline {
    services: BTreeMap<String, Vec<State>>,
    keys: BTreeMap<String, Vec<KeyChange>>,
}

fn timeline(namespace: &str, events: &[Event], start: Instant) -> Timeline {
    let mut services: BTreeMap<String, Vec<State>> = BTreeMap::new();
    let mut keys: BTreeMap<String, Vec<KeyChange>> = BTreeMap::new();
    let mut current: BTreeMap<String, BTreeMap<String, (String, u16)>> = BTreeMap::new();
    let mut index = 0;
    while index < events.len() {
        let revision = events[index].revision;
        let batch_end = events[index..]
            .iter()
            .position(|e| e.revision != revision)
            .map_or(events.len(), |n| index + n);
        let batch = &events[index..batch_end];
        index = batch_end;
        let tombstones: BTreeSet<(&str, &str)> = batch
            .iter()
            .filter(|e| e.put)
            .filter_map(|e| split_key(namespace, &e.key))
            .filter(|(tombstone, _, _)| *tombstone)
            .map(|(_, service, node)| (service, node))
            .collect();
        for event in batch {
            let Some((false, service, node)) = split_key(namespace, &event.key) else {
                continue;
            };
            let nodes = current.entry(service.to_owned()).or_default();
            let before: Members = nodes.values().cloned().collect();
            let tombstone = !event.put && tombstones.contains(&(service, node));
            if event.put {
                match address(&event.value) {
                    Some(addr) => nodes.insert(node.to_owned(), addr),
                    None => nodes.remove(node),
                };
            } else {
                nodes.remove(node);
            }
            keys.entry(format!("{service}/{node}"))
                .or_default()
                .push(KeyChange {
                    revision,
                    lease: event.lease,
                    at: event.at,
                    present: event.put,
                    tombstone,
                });
            let after: Members = nodes.values().cloned().collect();
            let states = services.entry(service.to_owned()).or_insert_with(|| {
                vec![State {
                    revision: 0,
                    at: start,
                    via: Via::Start,
                    key: String::new(),
                    members: Members::new(),
                }]
            });
            if after != before {
                states.push(State {
                    revision,
                    at: event.at,
                    via: if event.put {
                        Via::Put
                    } else {
                        Via::Delete(tombstone)
                    },
                    key: node.to_owned(),
                    members: after,
                });
            }
        }
    }
    Timeline { services, keys }
}

fn secs(start: Instant, at: Instant) -> String {
    format!("{:.3}s", at.saturating_duration_since(start).as_secs_f64())
}

fn show(members: &Members) -> String {
    let nodes: Vec<String> = members
        .iter()
        .map(|(ip, port)| format!("{ip}:{port}"))
        .collect();
    format!("[{}]", nodes.join(" "))
}

fn excerpt_messages(start: Instant, messages: &[&Msg], upto: usize) -> String {
    let mut text = String::new();
    for msg in &messages[upto.saturating_sub(6)..=upto.min(messages.len() - 1)] {
        let _ = writeln!(
            text,
            "      t={} {} {}",
            secs(start, msg.at),
            msg.event,
            show(&msg.members)
        );
    }
    text
}

/// A key's changes in etcd, one line each, for a report.
fn key_story(start: Instant, changes: &[KeyChange]) -> String {
    let mut text = String::new();
    for change in &changes[changes.len().saturating_sub(8)..] {
        let what = match (change.present, change.tombstone) {
            (true, _) => format!("put on lease {:x}", change.lease),
            (false, true) => "deleted with hound's tombstone (a deregistration)".to_owned(),
            (false, false) => "deleted without a tombstone (lease expired or revoked)".to_owned(),
        };
        let _ = writeln!(
            text,
            "      rev {} (recorded t={}) {what}",
            change.revision,
            secs(start, change.at)
        );
    }
    text
}

fn excerpt_states(start: Instant, states: &[State], from: usize) -> String {
    let mut text = String::new();
    for state in &states[from.min(states.len())..(from + 5).min(states.len())] {
        let _ = writeln!(
            text,
            "      rev {} (recorded t={}) {:?} {} -> {}",
            state.revision,
            secs(start, state.at),
            state.via,
            state.key,
            show(&state.members)
        );
    }
    text
}

/// How much later than a socket the recorder may receive a change (it moves between members).
const RECORDER_LAG: Duration = Duration::from_secs(5);

/// Whether a message of kind `event` may report reaching `state`.
fn kind_fits(event: &str, state: &State) -> bool {
    match state.via {
        Via::Put => event == "PUT",
        // hound says DELETE when it cannot tell, but never EXPIRE for its own deregistration.
        Via::Delete(true) => event == "DELETE",
        Via::Delete(false) => event == "DELETE" || event == "EXPIRE",
        Via::Start => false,
    }
}

/// (b): matches one socket's messages for one service against the service's states. The
/// candidates are every state the socket may be at; a change must move each to the very next
/// state, a SYNC may jump to any later state with its membership.
fn check_stream(
    input: &Input,
    sock: &Sock,
    service: &str,
    messages: &[&Msg],
    states: &[State],
    out: &mut Vec<Violation>,
) {
    let subject = format!(
        "socket {} on hound {} ({}), service {service}",
        sock.id,
        sock.hound,
        crate::clients::path(&sock.role)
    );
    let mut candidates: BTreeSet<usize> = if sock.star() {
        // A `*` monitor gets no SYNC for a service that had no nodes when it subscribed.
        (0..states.len())
            .filter(|&i| states[i].members.is_empty())
            .collect()
    } else {
        BTreeSet::new()
    };
    for (n, msg) in messages.iter().enumerate() {
        let fail = |why: String, from: usize, out: &mut Vec<Violation>| {
            out.push(Violation {
                check: if why.contains("EXPIRE for a deregistration") {
                    "c"
                } else {
                    "b"
                },
                subject: subject.clone(),
                detail: format!(
                    "{why}\n    messages (last is the bad one):\n{}    etcd from the socket's last \
                     matched state:\n{}",
                    excerpt_messages(input.start, messages, n),
                    excerpt_states(input.start, states, from)
                ),
            });
        };
        let lowest = candidates.first().copied();
        if msg.event == "SYNC" {
            let from = lowest.unwrap_or(0);
            let next: BTreeSet<usize> = (from..states.len())
                .filter(|&i| states[i].members == msg.members)
                .collect();
            if next.is_empty() {
                return fail(
                    format!(
                        "SYNC shows {} which etcd never held at or after the socket's state",
                        show(&msg.members)
                    ),
                    from,
                    out,
                );
            }
            candidates = next;
            continue;
        }
        if !matches!(msg.event.as_str(), "PUT" | "DELETE" | "EXPIRE") {
            return fail(format!("unknown message {:?}", msg.event), 0, out);
        }
        let Some(lowest) = lowest else {
            return fail(format!("first message is {}, not SYNC", msg.event), 0, out);
        };
        let next: BTreeSet<usize> = candidates
            .iter()
            .map(|i| i + 1)
            .filter(|&i| {
                i < states.len()
                    && states[i].members == msg.members
                    && kind_fits(&msg.event, &states[i])
            })
            .collect();
        if !next.is_empty() {
            candidates = next;
            continue;
        }
        // A hound whose watch fell behind a compaction re-reads etcd and sends SYNC only for
        // the services whose membership changed meanwhile (docs/API.md §8): changes that left
        // a membership as it was may be skipped, if etcd compacted past the socket's state
        // before the message came (the hound had applied at least that state, and could not
        // resume from it).
        let skipped: BTreeSet<usize> = candidates
            .iter()
            .filter(|&&i| {
                input
                    .compactions
                    .iter()
                    .any(|&(at, revision)| revision > states[i].revision && at <= msg.at)
            })
            .flat_map(|&i| {
                (i + 2..states.len())
                    .take_while(|&j| states[j].at <= msg.at + RECORDER_LAG)
                    .filter(move |&j| {
                        states[j - 1].members == states[i].members
                            && states[j].members == msg.members
                            && kind_fits(&msg.event, &states[j])
                    })
            })
            .collect();
        if !skipped.is_empty() {
            candidates = skipped;
            continue;
        }
        let why = if candidates
            .iter()
            .any(|&i| i + 1 < states.len() && states[i + 1].members == msg.members)
        {
            let state = candidates
                .iter()
                .map(|i| &states[i + 1])
                .find(|s| s.members == msg.members)
                .expect("found above");
            if state.via == Via::Delete(true) {
                format!(
                    "{} where etcd shows a deregistration (tombstone in revision {}): EXPIRE for a \
                     deregistration",
                    msg.event, state.revision
                )
            } else {
                format!("{} where etcd's change was {:?}", msg.event, state.via)
            }
        } else if candidates.iter().any(|&i| states[i].members == msg.members) {
            format!(
                "{} repeats a membership it already had (no change in etcd)",
                msg.event
            )
        } else if states[lowest + 1..]
            .iter()
            .any(|s| s.members == msg.members)
        {
            format!(
                "{} {} skips changes etcd made in between, with no SYNC{}",
                msg.event,
                show(&msg.members),
                " (and no compaction past its state to explain it)"
            )
        } else {
            format!(
                "{} shows {} which etcd never held after the socket's state",
                msg.event,
                show(&msg.members)
            )
        };
        return fail(why, lowest, out);
    }
}

fn check_order(input: &Input, timeline: &Timeline, out: &mut Vec<Violation>) {
    let empty = vec![State {
        revision: 0,
        at: input.start,
        via: Via::Start,
        key: String::new(),
        members: Members::new(),
    }];
    for sock in input.socks {
        let messages = sock.messages();
        let mut services: BTreeSet<String> = messages.iter().map(|m| m.service.clone()).collect();
        services.extend(sock.named_services());
        for service in services {
            let stream: Vec<&Msg> = messages.iter().filter(|m| m.service == service).collect();
            if stream.is_empty() {
                continue;
            }
            if !sock.subscribes(&service) {
                out.push(Violation {
                    check: "b",
                    subject: format!("socket {} on hound {}", sock.id, sock.hound),
                    detail: format!("got messages for {service}, which it did not subscribe to"),
                });
                continue;
            }
            let states = timeline.services.get(&service).unwrap_or(&empty);
            check_stream(input, sock, &service, &stream, states, out);
        }
    }
}

/// The end of the latest excusing fault of `hound` that overlaps `[from, to]`; `None` if no
/// fault does, `Some(None)` if one is still going on.
fn excused_until(
    input: &Input,
    hound: usize,
    from: Instant,
    to: Instant,
) -> Option<Option<Instant>> {
    input
        .faults
        .iter()
        .filter(|f| f.excuses && f.hound == Some(hound))
        .filter(|f| f.start <= to && f.end.is_none_or(|end| end >= from))
        .map(|f| f.end)
        .max_by_key(|end| end.map_or((1, None), |e| (0, Some(e))))
}

/// How long after a frozen leader resumes its revocations may still land: etcd 3.4 waits for
/// each revocation it proposes up to its request timeout (5 s + 2 × the 1 s election timeout),
/// and seeds 3001 and 3002 saw them land 6.0 s after the resume, and 4 ms after a second freeze
/// of that member ended (its proposal waited through the freeze).
const REVOKE_WINDOW: Duration = Duration::from_secs(7);
/// A freeze shorter than this leaves every lease time to spare (keep-alives come every TTL/3).
const REVOKING_FREEZE: Duration = Duration::from_secs(2);

/// Whether a lease (put first at `lease_since`) that ended at `at` may have been revoked by a
/// frozen leader resuming: etcd's doing, which no hound can prevent. Only a lease that existed
/// when the leader froze can be in its memory; the window runs `REVOKE_WINDOW` of that
/// member's own running time after it resumes (later freezes of it do not count).
fn revoked_by_resumed_leader(input: &Input, lease_since: Instant, at: Instant) -> bool {
    input.faults.iter().any(|f| {
        let Some(end) = f.end else {
            return false;
        };
        if !f.leader_frozen
            || end.duration_since(f.start) < REVOKING_FREEZE
            || lease_since >= f.start
            || at < end
        {
            return false;
        }
        let frozen_again: Duration = input
            .faults
            .iter()
            .filter(|g| g.what.starts_with("member-stop") && g.members == f.members)
            .filter(|g| g.start >= end && g.start <= at)
            .map(|g| g.end.unwrap_or(at).min(at).duration_since(g.start))
            .sum();
        at <= end + REVOKE_WINDOW + frozen_again
    })
}

/// When the lease the key held just before `changes[upto]` was first put on it.
fn lease_put_at(changes: &[KeyChange], upto: usize) -> Option<Instant> {
    let before = &changes[..upto];
    let last = before.iter().rposition(|c| c.present)?;
    let lease = before[last].lease;
    let first = before[..=last]
        .iter()
        .rposition(|c| !c.present || c.lease != lease)
        .map_or(0, |i| i + 1);
    Some(before[first].at)
}

fn check_closes(input: &Input, timeline: &Timeline, out: &mut Vec<Violation>) {
    for close in input.closes {
        let key = format!("{}/{}", close.service, close.node);
        let subject = format!(
            "node {key}, socket {} on hound {} closed at t={}",
            close.sock,
            close.hound,
            secs(input.start, close.at)
        );
        let from = close
            .at
            .checked_sub(input.ttl + Duration::from_secs(1))
            .unwrap_or(input.start);
        if excused_until(
            input,
            close.hound,
            from,
            close.at + input.ttl + Duration::from_secs(2),
        )
        .is_some()
        {
            continue;
        }
        let changes = timeline
            .keys
            .get(&key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        match changes.last() {
            None => out.push(Violation {
                check: "c",
                subject,
                detail: "etcd never held the node".to_owned(),
            }),
            Some(last) if last.present => out.push(Violation {
                check: "c",
                subject,
                detail: "the node is still in etcd after its socket closed".to_owned(),
            }),
            // Gone before the close (its lease expired while the socket was open): there was
            // nothing left to delete, and (d) reports the expiry.
            Some(last) if !last.tombstone && last.at < close.at => {}
            // A resumed leader revoked the lease before hound's delete came through.
            Some(last)
                if !last.tombstone
                    && lease_put_at(changes, changes.len() - 1)
                        .is_some_and(|since| revoked_by_resumed_leader(input, since, last.at)) => {}
            Some(last) if !last.tombstone => {
                let mut seen = String::new();
                for sock in input.socks.iter().filter(|s| s.subscribes(&close.service)) {
                    let gone = sock.messages().into_iter().find(|m| {
                        m.at >= close.at
                            && m.service == close.service
                            && !m
                                .members
                                .iter()
                                .any(|(ip, port)| format!("{ip}:{port}") == close.node)
                    });
                    if let Some(m) = gone {
                        let _ = writeln!(
                            seen,
                            "      socket {} (hound {}) t={} {} {}",
                            sock.id,
                            sock.hound,
                            secs(input.start, m.at),
                            m.event,
                            show(&m.members)
                        );
                    }
                }
                out.push(Violation {
                    check: "c",
                    subject,
                    detail: format!(
                        "the node left etcd without hound's tombstone at t={} (its lease expired \
                         or was revoked: hound's tombstoned delete did not happen), so \
                         subscribers were told EXPIRE, not DELETE:\n    etcd:\n{}    what each \
                         subscriber was told:\n{seen}",
                        secs(input.start, last.at),
                        key_story(input.start, changes)
                    ),
                });
            }
            Some(_) => {}
        }
    }
}

/// How long the recorder was stalled within `[from, to]`: receive times there lag.
fn stalled(input: &Input, from: Instant, to: Instant) -> Duration {
    input
        .stalls
        .iter()
        .map(|&(a, b)| {
            let (a, b) = (a.max(from), b.min(to));
            b.saturating_duration_since(a)
        })
        .sum()
}

fn check_live(input: &Input, timeline: &Timeline, out: &mut Vec<Violation>) {
    // Every register socket's life, per node: a takeover's sockets overlap.
    let mut lives: BTreeMap<String, Vec<(Instant, Instant, usize)>> = BTreeMap::new();
    for sock in input.socks {
        let Some((service, node)) = sock.node() else {
            continue;
        };
        let end = match sock.end() {
            Some((at, End::ClosedByServer(_) | End::Broken(_))) => at,
            Some((at, _)) => at,
            None => input.end,
        };
        lives
            .entry(format!("{service}/{node}"))
            .or_default()
            .push((sock.opened, end, sock.hound));
    }
    let slack = Duration::from_secs(1);
    for (key, mut spans) in lives {
        spans.sort_by_key(|s| s.0);
        let changes = timeline
            .keys
            .get(&key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for &(open, close, hound) in &spans {
            // Absences of the key that overlap the socket's life.
            let mut present = true;
            let mut since = open;
            let mut absences = Vec::new();
            for (i, change) in changes.iter().enumerate() {
                if change.present && !present {
                    absences.push((since, change.at, None));
                } else if !change.present && present {
                    since = change.at;
                    if change.at > open && change.at < close && !change.tombstone {
                        let lease_since = lease_put_at(changes, i).unwrap_or(change.at);
                        absences.push((change.at, change.at, Some(lease_since)));
                    }
                }
                present = change.present;
            }
            if !present {
                absences.push((since, close, None));
            }
            for (from, to, expiry) in absences {
                if to <= open || from >= close {
                    continue;
                }
                let (from, to) = (from.max(open), to.min(close));
                if let Some(lease_since) = expiry {
                    let window_from = from
                        .checked_sub(input.ttl + Duration::from_secs(2))
                        .unwrap_or(input.start);
                    if excused_until(input, hound, window_from, from + slack).is_none()
                        && !revoked_by_resumed_leader(input, lease_since, from)
                    {
                        out.push(Violation {
                            check: "d",
                            subject: format!("node {key} on hound {hound}"),
                            detail: format!(
                                "its lease expired at t={} while its socket was open (since t={}) \
                                 and its hound was neither frozen, killed nor cut off from every \
                                 member; etcd:\n{}",
                                secs(input.start, from),
                                secs(input.start, open),
                                key_story(input.start, changes)
                            ),
                        });
                    }
                    continue;
                }
                let window_from = from
                    .checked_sub(input.ttl + Duration::from_secs(2))
                    .unwrap_or(input.start);
                let counted_from = match excused_until(input, hound, window_from, to) {
                    None => from,
                    Some(None) => continue,
                    Some(Some(end)) => from.max(end),
                };
                let missing = to
                    .saturating_duration_since(counted_from)
                    .saturating_sub(stalled(input, counted_from, to));
                if missing > input.ttl + slack {
                    out.push(Violation {
                        check: "d",
                        subject: format!("node {key} on hound {hound}"),
                        detail: format!(
                            "missing from etcd for {:.1} s (t={} to t={}) while its socket was \
                             open, more than the TTL of {} s; etcd:\n{}",
                            missing.as_secs_f64(),
                            secs(input.start, counted_from),
                            secs(input.start, to),
                            input.ttl.as_secs(),
                            key_story(input.start, changes)
                        ),
                    });
                }
            }
        }
    }
}

/// Checks (b), (c) and (d).
pub fn check(input: &Input) -> Vec<Violation> {
    let timeline = timeline(input.namespace, input.events, input.start);
    let mut out = Vec::new();
    check_order(input, &timeline, &mut out);
    check_closes(input, &timeline, &mut out);
    check_live(input, &timeline, &mut out);
    out
}
