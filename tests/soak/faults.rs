//! The faults, from a seeded schedule: hounds killed (SIGKILL, then restarted), frozen
//! (SIGSTOP), cut off from some etcd members or from all of them; members killed and restarted
//! later, frozen, restarted at once; the history compacted. One thread injects hound faults and
//! one member faults, so at most one hound and one member are down at a time and the cluster
//! keeps its quorum. After each fault heals, the thread measures how long recovery took.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::check::{FaultWindow, split_key};
use crate::kv::{self, History};
use crate::netns::Topology;
use crate::rng::Rng;
use crate::support::{EtcdCluster, send_signal, tail, try_request};
use crate::world::{Shared, TTL, healthy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    HoundKill,
    HoundStop,
    /// A hound cut off from one or two members.
    Partition,
    /// A hound cut off from every member.
    Isolate,
    MemberKill,
    MemberStop,
    MemberRestart,
    Compact,
}

pub const ALL: &[Fault] = &[
    Fault::HoundKill,
    Fault::HoundStop,
    Fault::Partition,
    Fault::Isolate,
    Fault::MemberKill,
    Fault::MemberStop,
    Fault::MemberRestart,
    Fault::Compact,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::HoundKill => "hound-kill",
            Fault::HoundStop => "hound-stop",
            Fault::Partition => "partition",
            Fault::Isolate => "isolate",
            Fault::MemberKill => "member-kill",
            Fault::MemberStop => "member-stop",
            Fault::MemberRestart => "member-restart",
            Fault::Compact => "compact",
        }
    }

    pub fn by_name(name: &str) -> Option<Fault> {
        ALL.iter().copied().find(|f| f.name() == name)
    }

    pub fn on_hound(self) -> bool {
        matches!(
            self,
            Fault::HoundKill | Fault::HoundStop | Fault::Partition | Fault::Isolate
        )
    }

    pub fn needs_netns(self) -> bool {
        matches!(self, Fault::Partition | Fault::Isolate)
    }
}

/// Parses a fault list: `all`, names, and `-name` to leave one out, comma-separated.
pub fn parse(list: &str) -> Result<BTreeSet<Fault>, String> {
    let mut faults = BTreeSet::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "all" {
            faults.extend(ALL.iter().copied());
        } else if item == "none" {
            faults.clear();
        } else if let Some(name) = item.strip_prefix('-') {
            faults.remove(&Fault::by_name(name).ok_or_else(|| unknown(name))?);
        } else {
            faults.insert(Fault::by_name(item).ok_or_else(|| unknown(item))?);
        }
    }
    Ok(faults)
}

fn unknown(name: &str) -> String {
    let names: Vec<&str> = ALL.iter().map(|f| f.name()).collect();
    format!(
        "unknown fault {name:?}; known: all, none, {}",
        names.join(", ")
    )
}

pub fn names(faults: &BTreeSet<Fault>) -> String {
    let names: Vec<&str> = faults.iter().map(|f| f.name()).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(",")
    }
}

/// How long a fault lasts: often less than the TTL, often more.
fn duration(rng: &mut Rng) -> Duration {
    Duration::from_secs_f64(rng.between(0.5, 2.5 * TTL.as_secs_f64()))
}

fn open_window(shared: &Shared, what: String, hound: Option<usize>, excuses: bool) -> usize {
    open_window_with(shared, what, hound, excuses, false, Vec::new())
}

fn open_window_with(
    shared: &Shared,
    what: String,
    hound: Option<usize>,
    excuses: bool,
    leader_frozen: bool,
    members: Vec<usize>,
) -> usize {
    shared.log(&format!("fault: {what}"));
    let mut world = shared.world();
    world.count(&format!("fault {}", what.split(' ').next().unwrap_or("")));
    world.faults.push(FaultWindow {
        what,
        hound,
        excuses,
        leader_frozen,
        members,
        start: Instant::now(),
        end: None,
    });
    world.faults.len() - 1
}

fn close_window(shared: &Shared, index: usize) {
    let mut world = shared.world();
    world.faults[index].end = Some(Instant::now());
    let what = world.faults[index].what.clone();
    drop(world);
    shared.log(&format!("healed: {what}"));
}

/// Restarts hounds that exited without being told to, as a violation of (e).
pub fn reap_crashed(shared: &Shared, topology: Option<&Topology>) {
    let crashed: Vec<(usize, String)> = {
        let mut world = shared.world();
        world
            .slots
            .iter_mut()
            .enumerate()
            .filter_map(|(h, slot)| {
                let hound = slot.hound.as_mut()?;
                if hound.is_running() {
                    return None;
                }
                let log = tail(&hound.stderr(), 30);
                slot.hound = None;
                slot.up = false;
                Some((h, log))
            })
            .collect()
    };
    for (h, log) in crashed {
        shared.violation(
            "e",
            format!("hound {h}"),
            format!("exited without being told to; its last log lines:\n{log}"),
        );
        let window = open_window(shared, format!("hound-crash of hound {h}"), Some(h), true);
        if let Err(err) = shared.bring_up(h, topology) {
            shared.violation(
                "e",
                format!("hound {h}"),
                format!("did not come back: {err}"),
            );
        }
        close_window(shared, window);
    }
}

/// The keys of live registrations on hound `h` missing from etcd (`None` if etcd did not answer).
fn missing_on(shared: &Shared, etcd: &mut kv::Etcd, h: usize) -> Option<usize> {
    let wanted: BTreeSet<String> = {
        let world = shared.world();
        world
            .live
            .values()
            .filter(|s| s.hound == h && s.is_live())
            .filter_map(|s| s.node().map(|(service, node)| format!("{service}/{node}")))
            .collect()
    };
    let (_, kvs) = etcd.get_prefix(&format!("{}/", shared.namespace)).ok()?;
    let held: BTreeSet<String> = kvs
        .iter()
        .filter_map(|kv| split_key(&shared.namespace, &kv.key))
        .filter(|(tombstone, _, _)| !tombstone)
        .map(|(_, service, node)| format!("{service}/{node}"))
        .collect();
    Some(wanted.difference(&held).count())
}

/// After a hound fault: how long until the hound is healthy, and (if any was lost) until its
/// open sockets' nodes are all in etcd again.
fn measure_hound(shared: &Shared, etcd: &mut kv::Etcd, h: usize, what: &str, healed: Instant) {
    let Some(addr) = shared.world().slots[h].hound.as_ref().map(|h| h.addr()) else {
        return;
    };
    let deadline = healed + Duration::from_secs(30);
    let mut lost = missing_on(shared, etcd, h).is_some_and(|missing| missing > 0);
    let mut is_healthy = false;
    while Instant::now() < deadline {
        if !is_healthy && healthy(addr) {
            is_healthy = true;
            shared.recovered(&format!("{what}: hound healthy"), healed.elapsed());
        }
        if lost && missing_on(shared, etcd, h) == Some(0) {
            lost = false;
            shared.recovered(&format!("{what}: registrations back"), healed.elapsed());
        }
        if is_healthy && !lost {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    shared.log(&format!("hound {h} not recovered 30 s after {what} healed"));
}

/// Injects hound faults until the soak stops.
pub fn hounds(shared: &Arc<Shared>, topology: Option<&Topology>, kinds: &[Fault], rng: &mut Rng) {
    let mut etcd = kv::Etcd::new(shared.etcd_urls.clone());
    let count = shared.world().slots.len();
    while !shared.stopping() {
        let gap = Instant::now() + Duration::from_secs_f64(rng.between(1.0, 4.0));
        while Instant::now() < gap && !shared.stopping() {
            reap_crashed(shared, topology);
            thread::sleep(Duration::from_millis(100));
        }
        if shared.stopping() || kinds.is_empty() {
            continue;
        }
        let kind = *rng.pick(kinds);
        let h = rng.below(count);
        let lasts = duration(rng);
        let cut: Vec<usize> = match kind {
            Fault::Isolate => (0..3).collect(),
            Fault::Partition => {
                let first = rng.below(3);
                if rng.chance(0.3) {
                    vec![first, (first + 1 + rng.below(2)) % 3]
                } else {
                    vec![first]
                }
            }
            _ => Vec::new(),
        };
        let what = match kind {
            Fault::Partition | Fault::Isolate => format!(
                "{} of hound {h} from members {cut:?} for {:.1} s",
                kind.name(),
                lasts.as_secs_f64()
            ),
            _ => format!(
                "{} of hound {h} for {:.1} s",
                kind.name(),
                lasts.as_secs_f64()
            ),
        };
        let excuses = kind != Fault::Partition;
        match kind {
            Fault::HoundKill => {
                let window = open_window(shared, what, Some(h), excuses);
                let hound = {
                    let mut world = shared.world();
                    world.slots[h].up = false;
                    world.slots[h].hound.take()
                };
                if let Some(hound) = &hound {
                    shared.keep_log(h, hound);
                }
                drop(hound); // SIGKILL, and reaped.
                shared.sleep_until(Instant::now() + lasts);
                match shared.bring_up(h, topology) {
                    Ok(took) => {
                        shared.recovered("hound-kill: restarted hound healthy", took);
                    }
                    Err(err) => shared.violation(
                        "e",
                        format!("hound {h}"),
                        format!("did not restart: {err}"),
                    ),
                }
                close_window(shared, window);
            }
            Fault::HoundStop => {
                let Some(pid) = shared.world().slots[h].hound.as_ref().map(|h| h.pid()) else {
                    continue;
                };
                let window = open_window(shared, what, Some(h), excuses);
                shared.world().slots[h].stopped = true;
                send_signal(pid, libc::SIGSTOP);
                shared.sleep_until(Instant::now() + lasts);
                send_signal(pid, libc::SIGCONT);
                shared.world().slots[h].stopped = false;
                close_window(shared, window);
                measure_hound(shared, &mut etcd, h, "hound-stop", Instant::now());
            }
            Fault::Partition | Fault::Isolate => {
                let topology = topology.expect("partition faults need namespaces");
                let window = open_window_with(shared, what, Some(h), excuses, false, cut.clone());
                for &m in &cut {
                    topology.set_link(h, m, false);
                }
                shared.sleep_until(Instant::now() + lasts);
                for &m in &cut {
                    topology.set_link(h, m, true);
                }
                close_window(shared, window);
                measure_hound(shared, &mut etcd, h, kind.name(), Instant::now());
            }
            _ => unreachable!("not a hound fault"),
        }
    }
}

/// Whether every member answers `/health` with `true`.
fn cluster_healthy(ports: &[u16]) -> bool {
    ports.iter().all(|&port| {
        try_request(([127, 0, 0, 1], port).into(), "GET", "/health", &[], b"")
            .map(|r| r.status == 200 && r.text().contains("true"))
            .unwrap_or(false)
    })
}

/// After a member fault: how long until every member and every hound is healthy.
fn measure_cluster(shared: &Shared, ports: &[u16], what: &str, healed: Instant) {
    let deadline = healed + Duration::from_secs(30);
    loop {
        let addrs: Vec<_> = shared.world().usable_addrs();
        if cluster_healthy(ports) && addrs.into_iter().all(healthy) {
            shared.recovered(
                &format!("{what}: cluster and hounds healthy"),
                healed.elapsed(),
            );
            return;
        }
        if Instant::now() > deadline {
            shared.log(&format!("not healthy 30 s after {what} healed"));
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Restarts member `m` on its data; a member that cannot come back ends the soak's faults.
fn restart_member(shared: &Shared, cluster: &Mutex<EtcdCluster>, m: usize) {
    let mut cluster = cluster.lock().unwrap_or_else(|p| p.into_inner());
    let restarted = std::panic::catch_unwind(AssertUnwindSafe(|| cluster.member_mut(m).restart()));
    if restarted.is_err() {
        shared.violation(
            "infrastructure",
            format!("etcd member m{m}"),
            "did not come back after a restart".to_owned(),
        );
    }
}

/// Injects member faults (and compactions) until the soak stops.
pub fn members(
    shared: &Arc<Shared>,
    cluster: &Mutex<EtcdCluster>,
    history: &History,
    kinds: &[Fault],
    rng: &mut Rng,
) {
    let mut etcd = kv::Etcd::new(shared.etcd_urls.clone());
    let ports: Vec<u16> = {
        let cluster = cluster.lock().unwrap();
        (0..cluster.len())
            .map(|m| cluster.member(m).client_port())
            .collect()
    };
    while !shared.stopping() {
        shared.sleep_until(Instant::now() + Duration::from_secs_f64(rng.between(1.0, 4.0)));
        if shared.stopping() || kinds.is_empty() {
            continue;
        }
        let kind = *rng.pick(kinds);
        let m = rng.below(ports.len());
        let lasts = duration(rng);
        match kind {
            Fault::MemberKill | Fault::MemberStop => {
                let leader = etcd.is_leader(&shared.etcd_urls[m]) == Some(true);
                let what = format!(
                    "{} of m{m}{} for {:.1} s",
                    kind.name(),
                    if leader { " (the leader)" } else { "" },
                    lasts.as_secs_f64()
                );
                let leader_frozen = leader && kind == Fault::MemberStop;
                let window = open_window_with(shared, what, None, false, leader_frozen, vec![m]);
                if kind == Fault::MemberKill {
                    cluster.lock().unwrap().member_mut(m).kill();
                } else {
                    send_signal(cluster.lock().unwrap().member(m).pid(), libc::SIGSTOP);
                }
                shared.sleep_until(Instant::now() + lasts);
                if kind == Fault::MemberKill {
                    restart_member(shared, cluster, m);
                } else {
                    send_signal(cluster.lock().unwrap().member(m).pid(), libc::SIGCONT);
                }
                close_window(shared, window);
                measure_cluster(shared, &ports, kind.name(), Instant::now());
            }
            Fault::MemberRestart => {
                let window = open_window_with(
                    shared,
                    format!("member-restart of m{m}"),
                    None,
                    false,
                    false,
                    vec![m],
                );
                restart_member(shared, cluster, m);
                close_window(shared, window);
                measure_cluster(shared, &ports, "member-restart", Instant::now());
            }
            Fault::Compact => {
                // Never past what the history recorder has: the checker needs every revision.
                let Ok(revision) = etcd.revision() else {
                    continue;
                };
                let upto = revision.min(history.seen());
                if upto < 2 {
                    continue;
                }
                let window = open_window(
                    shared,
                    format!("compact up to revision {upto}"),
                    None,
                    false,
                );
                // Recorded before it is asked for: a hound may fall behind it at once.
                shared.world().compactions.push((Instant::now(), upto));
                if let Err(err) = etcd.compact(upto) {
                    shared.log(&format!("compaction failed: {err}"));
                }
                close_window(shared, window);
            }
            _ => unreachable!("not a member fault"),
        }
    }
}
