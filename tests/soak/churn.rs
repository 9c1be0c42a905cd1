//! The churn: registrations, clean closes and dropped connections, takeovers, monitors that
//! come and go, custom events; each picked at random from the seed, on the hounds the faults
//! leave usable. Every socket opens on a thread of its own, so a frozen hound stalls only the
//! sockets sent to it.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::check::{CleanClose, FaultWindow};
use crate::clients::{self, Role};
use crate::rng::Rng;
use crate::support::try_request_within;
use crate::world::{Node, Shared};

pub const SERVICES: &[&str] = &["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];

/// How many register sockets and monitors the churn keeps open, give or take.
const REGISTERED: usize = 24;
const MONITORS: usize = 8;
/// Opens under way at most: a frozen hound holds each for up to the handshake's timeout.
const PENDING: usize = 6;

fn services(rng: &mut Rng, most: usize) -> Vec<String> {
    let mut picked: Vec<String> = Vec::new();
    for _ in 0..=rng.below(most) {
        let service = (*rng.pick(SERVICES)).to_owned();
        if !picked.contains(&service) {
            picked.push(service);
        }
    }
    picked
}

/// The weight of closing one of `open` sockets: `above` past the target, `below` under it,
/// and nothing at `floor` or fewer.
fn closing(open: usize, target: usize, floor: usize, above: f64, below: f64) -> f64 {
    match open {
        n if n > target => above,
        n if n > floor => below,
        _ => 0.0,
    }
}

/// A node address no registration used before: nothing ever connects to it.
fn node_address(n: usize) -> String {
    format!(
        "127.1.{}.{}:{}",
        (n / 250) % 250,
        n % 250 + 1,
        1000 + n / 62_500
    )
}

/// Runs the churn until `until`.
pub fn run(shared: &Arc<Shared>, rng: &mut Rng, until: Instant) {
    let mut registrations = 0;
    while Instant::now() < until && !shared.stopping() {
        thread::sleep(Duration::from_secs_f64(rng.between(0.02, 0.12)));
        let (usable, holders, monitors, pending) = {
            let mut world = shared.world();
            world.prune();
            (
                world.usable(),
                world.holders(),
                world.live_monitors(),
                world.pending,
            )
        };
        let weights = [
            // 0: register
            if holders.len() < REGISTERED { 6.0 } else { 1.5 },
            // 1: close a register socket
            closing(holders.len(), REGISTERED, 4, 5.0, 1.5),
            // 2: take a node over
            if holders.is_empty() { 0.0 } else { 1.5 },
            // 3: open a monitor
            if monitors.len() < MONITORS { 3.0 } else { 0.5 },
            // 4: close a monitor
            closing(monitors.len(), MONITORS, 2, 3.0, 0.7),
            // 5: a custom event
            1.0,
        ];
        let total: f64 = weights.iter().sum();
        let mut roll = rng.between(0.0, total);
        let op = weights
            .iter()
            .position(|w| {
                roll -= w;
                roll < 0.0
            })
            .unwrap_or(5);
        let opens = matches!(op, 0 | 2 | 3);
        if (opens && pending >= PENDING) || usable.is_empty() {
            continue;
        }
        match op {
            0 => {
                let &(h, addr, incarnation) = rng.pick(&usable);
                registrations += 1;
                let service = (*rng.pick(SERVICES)).to_owned();
                let node = node_address(registrations);
                let monitors = if rng.chance(0.3) {
                    services(rng, 2)
                } else {
                    Vec::new()
                };
                register(shared, h, addr, incarnation, service, node, monitors, false);
            }
            1 => {
                let sock = rng.pick(&holders).clone();
                let (service, node) = sock.node().expect("a register socket");
                let (service, node) = (service.to_owned(), node.to_owned());
                {
                    let mut world = shared.world();
                    if let Some(entry) = world.nodes.get_mut(&format!("{service}/{node}")) {
                        entry.holder = None;
                    }
                    world.closes.push(CleanClose {
                        sock: sock.id,
                        service,
                        node,
                        hound: sock.hound,
                        at: Instant::now(),
                    });
                    world.count("closed register sockets");
                }
                if rng.chance(0.25) {
                    sock.vanish();
                } else {
                    sock.close();
                }
            }
            2 => {
                let sock = rng.pick(&holders).clone();
                let Some(&(h, addr, incarnation)) = usable
                    .iter()
                    .find(|(h, _, i)| *h == sock.hound && *i == sock.incarnation)
                else {
                    continue;
                };
                let (service, node) = sock.node().expect("a register socket");
                let monitors = if rng.chance(0.3) {
                    services(rng, 2)
                } else {
                    Vec::new()
                };
                let (service, node) = (service.to_owned(), node.to_owned());
                register(shared, h, addr, incarnation, service, node, monitors, true);
            }
            3 => {
                let &(h, addr, incarnation) = rng.pick(&usable);
                let role = if rng.chance(0.25) {
                    Role::Monitor {
                        services: Vec::new(),
                        star: true,
                    }
                } else {
                    Role::Monitor {
                        services: services(rng, 3),
                        star: false,
                    }
                };
                open(shared, h, addr, incarnation, role, None);
            }
            4 => {
                let sock = rng.pick(&monitors);
                shared.world().count("closed monitors");
                if rng.chance(0.25) {
                    sock.vanish();
                } else {
                    sock.close();
                }
            }
            _ => {
                let &(_, addr, _) = rng.pick(&usable);
                let body = if rng.chance(0.3) {
                    serde_json::json!({"event_type": "soak", "event_body": "all", "broadcast": true})
                } else {
                    serde_json::json!({"event_type": "soak", "services": services(rng, 2)})
                };
                let shared = Arc::clone(shared);
                thread::spawn(move || {
                    let status = try_request_within(
                        addr,
                        "POST",
                        "/etcd/event",
                        &[("Content-Type", "application/json")],
                        body.to_string().as_bytes(),
                        Duration::from_secs(5),
                    )
                    .map_or(0, |r| r.status);
                    shared.world().count(&format!("events posted: {status}"));
                });
            }
        }
    }
}

/// Registers (or, with `takeover`, takes over) `node` under `service` on hound `h`.
#[allow(clippy::too_many_arguments)] // One call site each; a struct would only rename them.
fn register(
    shared: &Arc<Shared>,
    h: usize,
    addr: std::net::SocketAddr,
    incarnation: usize,
    service: String,
    node: String,
    monitors: Vec<String>,
    takeover: bool,
) {
    let key = format!("{service}/{node}");
    {
        let mut world = shared.world();
        let entry = world.nodes.entry(key.clone()).or_insert(Node {
            holder: None,
            busy: false,
        });
        entry.busy = true;
    }
    let role = Role::Register {
        service,
        node,
        monitors,
    };
    open(shared, h, addr, incarnation, role, Some((key, takeover)));
}

/// Why a registration asked of hound `h` at `asked` may have been refused: a fault of that hound
/// (killed, frozen or cut off from some or all members), else a fault of a member, else none.
/// Counted apart, so a run shows whether a hound with healthy members to reach said 503.
fn refusal_cause(faults: &[FaultWindow], h: usize, asked: Instant) -> &'static str {
    let slack = Duration::from_secs(1);
    let overlapping = |f: &&FaultWindow| f.end.is_none_or(|end| end + slack >= asked);
    if faults
        .iter()
        .filter(overlapping)
        .any(|f| f.hound == Some(h))
    {
        "its hound faulted"
    } else if faults
        .iter()
        .filter(overlapping)
        .any(|f| f.hound.is_none() && !f.members.is_empty())
    {
        "a member faulted"
    } else {
        "no fault"
    }
}

/// Opens a socket; for a registration, `node` is its key and whether it is a takeover.
fn open(
    shared: &Arc<Shared>,
    h: usize,
    addr: std::net::SocketAddr,
    incarnation: usize,
    role: Role,
    node: Option<(String, bool)>,
) {
    let id = {
        let mut world = shared.world();
        world.pending += 1;
        world.id()
    };
    let shared = Arc::clone(shared);
    let asked = Instant::now();
    clients::open(id, addr, role, h, incarnation, move |result| {
        let mut world = shared.world();
        world.pending -= 1;
        if let (Some(_), Err(err)) = (&node, &result) {
            let cause = refusal_cause(&world.faults, h, asked);
            world.count(&format!("registrations and takeovers refused: {cause}"));
            if cause != "its hound faulted" {
                shared.log(&format!(
                    "hound {h} refused a registration ({cause}): {err}"
                ));
            }
        }
        let what = match (&node, &result) {
            (None, Ok(_)) => "monitors opened",
            (None, Err(_)) => "monitors refused",
            (Some((_, false)), Ok(_)) => "registrations",
            (Some((_, false)), Err(_)) => "registrations refused",
            (Some((_, true)), Ok(_)) => "takeovers",
            (Some((_, true)), Err(_)) => "takeovers refused",
        };
        world.count(what);
        if let Some((key, takeover)) = &node {
            if let Some(entry) = world.nodes.get_mut(key) {
                entry.busy = false;
                if let Ok(sock) = &result {
                    entry.holder = Some(sock.id);
                }
            }
            if result.is_err() && !takeover {
                world.refused.insert(key.clone());
            }
        }
        if let Ok(sock) = result {
            world.add(sock);
        }
    });
}
