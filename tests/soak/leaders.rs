//! Leader election under the soak: register sockets of some services campaign (`campaign=1`,
//! takeovers included), every socket's LEADER messages are recorded, and the check asserts
//! what a fencing token needs: no two sockets of one etcd cluster ever report different
//! leaders for the same `rev` of a service, and no socket ever sees a service's `rev` go back.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

use crate::check::Violation;

/// The services whose register sockets campaign: a part of the churn, so plain registrations
/// go on beside the campaigns.
const CAMPAIGNING: &[&str] = &["alpha", "bravo"];

/// Whether a register socket of `service` campaigns.
pub fn campaigns(service: &str) -> bool {
    CAMPAIGNING.contains(&service)
}

/// One LEADER message as a socket received it.
#[derive(Debug, Clone)]
struct Seen {
    sock: usize,
    hound: usize,
    at: Instant,
    service: String,
    /// The leader as sent (`null`, `{"ip","port"}` or `{"value"}`), compared as JSON text.
    leader: String,
    rev: i64,
}

/// Every LEADER message of the run, in the order the sockets' threads recorded them (each
/// socket's own in its arrival order).
static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

/// Records a LEADER message `message` that socket `sock` of hound `hound` received.
pub fn record(sock: usize, hound: usize, message: &Value) {
    let body = &message["body"];
    let seen = Seen {
        sock,
        hound,
        at: Instant::now(),
        service: message["namespace"].as_str().unwrap_or("?").to_owned(),
        leader: body["leader"].to_string(),
        rev: body["rev"].as_i64().unwrap_or(-1),
    };
    SEEN.lock().unwrap_or_else(|p| p.into_inner()).push(seen);
}

/// How many LEADER messages were recorded, and how many distinct `(service, rev)`.
pub fn summary() -> (usize, usize) {
    let seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut revs: Vec<(&str, i64)> = seen.iter().map(|s| (s.service.as_str(), s.rev)).collect();
    revs.sort_unstable();
    revs.dedup();
    (seen.len(), revs.len())
}

/// The leader assertions over every LEADER message recorded.
pub fn check(start: Instant) -> Vec<Violation> {
    let seen = SEEN.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if seen.is_empty() {
        return vec![Violation {
            check: "leader",
            subject: "the campaigns".to_owned(),
            detail: "no socket received a LEADER message: the check checked nothing".to_owned(),
        }];
    }
    check_seen(&seen, start)
}

fn check_seen(seen: &[Seen], start: Instant) -> Vec<Violation> {
    let mut violations = Vec::new();
    let when = |s: &Seen| format!("{:.2} s", s.at.duration_since(start).as_secs_f64());
    // One leader per (service, rev), whoever reports it.
    let mut first: BTreeMap<(&str, i64), &Seen> = BTreeMap::new();
    for s in seen {
        if s.rev < 0 {
            violations.push(Violation {
                check: "leader",
                subject: format!("socket {} on hound {}", s.sock, s.hound),
                detail: format!("a LEADER for {} without a rev at {}", s.service, when(s)),
            });
            continue;
        }
        let known = *first.entry((s.service.as_str(), s.rev)).or_insert(s);
        if known.leader != s.leader {
            violations.push(Violation {
                check: "leader",
                subject: format!("{} rev {}", s.service, s.rev),
                detail: format!(
                    "socket {} on hound {} reports {} at {}, socket {} on hound {} reported {} at {}",
                    s.sock,
                    s.hound,
                    s.leader,
                    when(s),
                    known.sock,
                    known.hound,
                    known.leader,
                    when(known)
                ),
            });
        }
    }
    // Each socket's revs of a service never go back.
    let mut last: BTreeMap<(usize, &str), &Seen> = BTreeMap::new();
    for s in seen {
        if let Some(before) = last.insert((s.sock, s.service.as_str()), s)
            && s.rev < before.rev
        {
            violations.push(Violation {
                check: "leader",
                subject: format!("socket {} on hound {}", s.sock, s.hound),
                detail: format!(
                    "{}: rev went back from {} ({}) to {} ({}) at {}",
                    s.service,
                    before.rev,
                    before.leader,
                    s.rev,
                    s.leader,
                    when(s)
                ),
            });
        }
    }
    violations
}

/// The checker itself is checked on made-up histories when the soak starts (the soak has no
/// libtest harness to run unit tests): a checker that cannot fail checks nothing.
pub fn self_test() -> Result<(), String> {
    let start = Instant::now();
    let seen = |sock, service: &str, leader: &str, rev| Seen {
        sock,
        hound: sock,
        at: start,
        service: service.to_owned(),
        leader: leader.to_owned(),
        rev,
    };
    let good = [
        seen(1, "alpha", "a", 5),
        seen(2, "alpha", "a", 5),
        seen(1, "alpha", "b", 7),
        seen(1, "alpha", "b", 7),
        seen(2, "bravo", "a", 5),
        seen(2, "alpha", "null", 9),
    ];
    if !check_seen(&good, start).is_empty() {
        return Err("the leader check fails a good history".into());
    }
    let split = [seen(1, "alpha", "a", 5), seen(2, "alpha", "b", 5)];
    let back = [seen(1, "alpha", "b", 7), seen(1, "alpha", "a", 5)];
    if check_seen(&split, start).len() != 1 || check_seen(&back, start).len() != 1 {
        return Err("the leader check passes a bad history".into());
    }
    Ok(())
}
