//! The fault soak: a 3-member etcd cluster and 3 hounds under random churn and seeded faults,
//! every socket's messages recorded and checked against etcd's own history (see
//! docs/failure-modes.md, "Fault soak"). A cargo test target without libtest's harness:
//! `cargo test --test soak` runs it for `SOAK_SECONDS` (default 60) with `SOAK_SEED` (default
//! random, printed first) and the faults in `SOAK_FAULTS` (see `faults::parse`); flags
//! `--seconds`, `--seed`, `--faults` do the same. It ends with `soak: N passed, N failed`
//! and exits non-zero on any violation.

// The integration tests' harness, shared as source: not every helper is used here.
#[allow(unused_imports)]
#[path = "../integration/support/mod.rs"]
mod support;

mod check;
mod churn;
mod clients;
mod faults;
mod kv;
mod leaders;
mod netns;
mod rng;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use check::{CleanClose, Violation};
use clients::Members;
use faults::Fault;
use netns::Topology;
use rng::Rng;
use support::{EtcdCluster, tail, watchdog_for};
use world::{Shared, Slot, TTL, World, thread_count, wait_healthy};

const HOUNDS: usize = 3;
const MEMBERS: usize = 3;
/// The faults a run without `SOAK_FAULTS` injects: every kind. (The checker knows etcd's own
/// doing apart from hound's: a frozen leader's revocations as it resumes, etcd-io/etcd#15247,
/// and a hound cut off from every member by a partition plus a member fault.)
const DEFAULT_FAULTS: &str = "all";

struct Config {
    seconds: u64,
    seed: u64,
    faults: BTreeSet<Fault>,
}

/// What libtest's options look like to us: flags that take a value, so their value is not
/// taken for a test-name filter.
const VALUE_FLAGS: &[&str] = &[
    "--test-threads",
    "--skip",
    "--format",
    "--color",
    "--logfile",
    "-Z",
    "--shuffle-seed",
    "--report-time",
];

enum Mode {
    Run(Config),
    List,
    Skip,
}

fn parse_args() -> Result<Mode, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let mut seconds = env("SOAK_SECONDS");
    let mut seed = env("SOAK_SEED");
    let mut faults = env("SOAK_FAULTS");
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next());
        match flag.as_str() {
            "--seconds" => seconds = value(),
            "--seed" => seed = value(),
            "--faults" => faults = value(),
            "--list" => return Ok(Mode::List),
            // Only ignored tests are asked for, and the soak is not one.
            "--ignored" => return Ok(Mode::Skip),
            f if VALUE_FLAGS.contains(&f) => drop(value()),
            f if f.starts_with('-') => {}
            _ => filters.push(arg),
        }
    }
    if !filters.is_empty() && !filters.iter().any(|f| "soak".contains(f.as_str())) {
        return Ok(Mode::Skip);
    }
    let seconds = match seconds {
        Some(s) => s
            .parse()
            .map_err(|_| format!("SOAK_SECONDS/--seconds {s:?} is not a number"))?,
        None => 60,
    };
    let seed = match seed {
        Some(s) => s
            .parse()
            .map_err(|_| format!("SOAK_SEED/--seed {s:?} is not a number"))?,
        None => {
            // Any seed will do; this one differs between runs.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            (nanos ^ u64::from(std::process::id()).rotate_left(32)) % 1_000_000_000
        }
    };
    let faults = faults::parse(faults.as_deref().unwrap_or(DEFAULT_FAULTS))?;
    Ok(Mode::Run(Config {
        seconds,
        seed,
        faults,
    }))
}

fn main() {
    let config = match parse_args() {
        Ok(Mode::Run(config)) => config,
        Ok(Mode::List) => {
            println!("soak: test");
            return;
        }
        Ok(Mode::Skip) => {
            println!("soak: 0 passed, 0 failed, 1 skipped");
            return;
        }
        Err(err) => {
            eprintln!("soak: {err}");
            std::process::exit(2);
        }
    };
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    println!(
        "soak: t=0 is {:.3} s since the Unix epoch (for hound's logs: SOAK_LOG_DIR, SOAK_HOUND_LOG)",
        since_epoch.as_secs_f64()
    );
    let replay = format!(
        "SOAK_SEED={} SOAK_SECONDS={} SOAK_FAULTS={}",
        config.seed,
        config.seconds,
        faults::names(&config.faults)
    );
    println!(
        "soak: seed {} (replay with {replay} cargo test --test soak)",
        config.seed
    );
    // A hung soak must fail, not hang CI: the run, its quiescence and the checks fit well
    // within this.
    let _watchdog = watchdog_for(Duration::from_secs(config.seconds + 240));
    if let Err(why) = leaders::self_test() {
        eprintln!("soak: {why}");
        std::process::exit(1);
    }
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&config)));
    let violations = match outcome {
        Ok(violations) => violations,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            vec![Violation {
                check: "infrastructure",
                subject: "the soak itself".to_owned(),
                detail: format!("panicked: {why}"),
            }]
        }
    };
    if violations.is_empty() {
        println!("soak: seed {} clean", config.seed);
        println!("soak: 1 passed, 0 failed");
        return;
    }
    println!("soak: {} violation(s); the first ones:", violations.len());
    let mut by_check: BTreeMap<&str, usize> = BTreeMap::new();
    for violation in &violations {
        *by_check.entry(violation.check).or_default() += 1;
    }
    for violation in violations.iter().take(20) {
        println!(
            "soak: VIOLATION ({}) {}: {}",
            violation.check, violation.subject, violation.detail
        );
    }
    println!("soak: violations by check: {by_check:?}");
    println!(
        "soak: FAILED with seed {} (replay with {replay})",
        config.seed
    );
    println!("soak: 0 passed, 1 failed");
    std::process::exit(1);
}

fn run(config: &Config) -> Vec<Violation> {
    let mut kinds = config.faults.clone();
    let topology = match Topology::create(HOUNDS, MEMBERS) {
        Ok(topology) => Some(topology),
        Err(why) => {
            println!("soak: network namespaces unavailable ({why}): partition faults SKIPPED");
            kinds.retain(|f| !f.needs_netns());
            None
        }
    };
    let cluster = EtcdCluster::start_listening_also(MEMBERS, |m| {
        topology
            .as_ref()
            .map(|t| (0..HOUNDS).map(|h| t.member_host(h, m)).collect())
            .unwrap_or_default()
    });
    let etcd_urls: Vec<String> = (0..MEMBERS).map(|m| cluster.member(m).url()).collect();
    let hound_etcd: Vec<String> = (0..HOUNDS)
        .map(|h| match &topology {
            Some(t) => (0..MEMBERS)
                .map(|m| cluster.member(m).url_on(t.member_host(h, m)))
                .collect::<Vec<_>>()
                .join(","),
            None => cluster.urls(),
        })
        .collect();
    let namespace = support::unique("soak");
    let history = Arc::new(kv::History::start(
        etcd_urls.clone(),
        format!("{namespace}/"),
    ));
    let shared = Arc::new(Shared {
        world: Mutex::new(World {
            slots: (0..HOUNDS)
                .map(|_| Slot {
                    hound: None,
                    incarnation: 0,
                    up: false,
                    stopped: false,
                    baseline_threads: 0,
                })
                .collect(),
            ..World::default()
        }),
        start: Instant::now(),
        stop: Default::default(),
        event_namespace: support::unique("soakevt"),
        namespace,
        hound_etcd,
        etcd_urls,
    });
    // In parallel: each waits for its hound to run idle before the churn starts.
    thread::scope(|scope| {
        for h in 0..HOUNDS {
            let (shared, topology) = (&shared, topology.as_ref());
            scope.spawn(move || {
                shared
                    .bring_up(h, topology)
                    .unwrap_or_else(|err| panic!("hound {h} did not start: {err}"))
            });
        }
    });
    shared.log(&format!(
        "3 etcd members, 3 hounds{}, TTL {} s; faults: {}; churn for {} s",
        if topology.is_some() {
            " in network namespaces"
        } else {
            ""
        },
        TTL.as_secs(),
        faults::names(&kinds),
        config.seconds
    ));
    let cluster = Mutex::new(cluster);
    let mut master = Rng::new(config.seed);
    let mut churn_rng = master.fork();
    let mut hound_rng = master.fork();
    let mut member_rng = master.fork();
    let hound_kinds: Vec<Fault> = kinds.iter().copied().filter(|f| f.on_hound()).collect();
    let member_kinds: Vec<Fault> = kinds.iter().copied().filter(|f| !f.on_hound()).collect();
    let until = Instant::now() + Duration::from_secs(config.seconds);
    thread::scope(|scope| {
        let faults_shared = Arc::clone(&shared);
        let topology = topology.as_ref();
        scope.spawn(move || faults::hounds(&faults_shared, topology, &hound_kinds, &mut hound_rng));
        let members_shared = Arc::clone(&shared);
        let (cluster, history) = (&cluster, &history);
        scope.spawn(move || {
            faults::members(
                &members_shared,
                cluster,
                history,
                &member_kinds,
                &mut member_rng,
            )
        });
        churn::run(&shared, &mut churn_rng, until);
        shared.stop.store(true, Ordering::Release);
        shared.log("churn over; healing every fault");
    });
    // Quiescence: every fault healed (the fault threads heal on the way out).
    faults::reap_crashed(&shared, topology.as_ref());
    let settle = Instant::now() + Duration::from_secs(15);
    while shared.world().pending > 0 && Instant::now() < settle {
        thread::sleep(Duration::from_millis(50));
    }
    let addrs: Vec<_> = shared.world().usable_addrs();
    for addr in addrs {
        wait_healthy(addr, Duration::from_secs(20));
    }
    let mut etcd = kv::Etcd::new(shared.etcd_urls.clone());
    quiesce(&shared, &mut etcd, "after the churn");
    close_everything(&shared, &mut etcd);
    check_threads(&shared);
    stop_hounds(&shared);
    // Everything etcd did must be in the history before it is checked.
    let last = etcd.revision().unwrap_or(0);
    if !history.wait_for(last, Duration::from_secs(10)) {
        shared.violation(
            "infrastructure",
            "history recorder".to_owned(),
            format!("did not reach revision {last} (has {})", history.seen()),
        );
    }
    history.stop();
    if let Some(lost) = history.lost() {
        shared.violation("infrastructure", "history recorder".to_owned(), lost);
    }
    let end = Instant::now();
    let (socks, closes, mut faults) = {
        let world = shared.world();
        (
            world.socks.clone(),
            world.closes.clone(),
            world.faults.clone(),
        )
    };
    let combined = check::combined_isolations(&faults, MEMBERS);
    for window in &combined {
        shared.log(&format!("cut off from every member: {}", window.what));
    }
    faults.extend(combined);
    let compactions = shared.world().compactions.clone();
    let events = history.events();
    let stalls = history.stalls();
    let found = check::check(&check::Input {
        namespace: &shared.namespace,
        ttl: TTL,
        start: shared.start,
        end,
        events: &events,
        stalls: &stalls,
        socks: &socks,
        faults: &faults,
        compactions: &compactions,
        closes: &closes,
    });
    summarize(&shared, &socks, events.len());
    let mut violations = std::mem::take(&mut shared.world().violations);
    violations.extend(found);
    violations.extend(leaders::check(shared.start));
    let (leader_messages, leader_revs) = leaders::summary();
    println!("soak: {leader_messages} LEADER messages over {leader_revs} (service, rev) pairs");
    drop(cluster);
    drop(topology);
    violations
}

/// etcd's memberships by service (tombstones left out).
fn etcd_view(shared: &Shared, etcd: &mut kv::Etcd) -> Option<BTreeMap<String, Members>> {
    let (_, kvs) = etcd.get_prefix(&format!("{}/", shared.namespace)).ok()?;
    let mut view: BTreeMap<String, Members> = BTreeMap::new();
    for kv in kvs {
        if let Some((false, service, _)) = check::split_key(&shared.namespace, &kv.key)
            && let Some(addr) = check::address(&kv.value)
        {
            view.entry(service.to_owned()).or_default().insert(addr);
        }
    }
    Some(view)
}

/// What differs between the live sockets' views and etcd (empty when all agree), and the
/// live register sockets whose node etcd lacks.
fn differences(shared: &Shared, etcd: &mut kv::Etcd) -> Vec<(&'static str, String, String)> {
    let Some(truth) = etcd_view(shared, etcd) else {
        return vec![("a", "etcd".to_owned(), "did not answer".to_owned())];
    };
    let socks: Vec<_> = shared
        .world()
        .socks
        .iter()
        .filter(|s| s.is_live())
        .cloned()
        .collect();
    let mut out = Vec::new();
    for sock in socks {
        let view = sock.view();
        let mut services: BTreeSet<String> = sock.named_services().into_iter().collect();
        if sock.star() {
            services.extend(truth.keys().cloned());
            services.extend(view.keys().cloned());
        }
        for service in services {
            let want = truth.get(&service).cloned().unwrap_or_default();
            let have = view.get(&service).cloned().unwrap_or_default();
            if want != have {
                out.push((
                    "a",
                    format!(
                        "socket {} on hound {} ({})",
                        sock.id,
                        sock.hound,
                        clients::path(&sock.role)
                    ),
                    format!("{service}: sees {have:?}, etcd holds {want:?}"),
                ));
            }
        }
        if let Some((service, node)) = sock.node() {
            let held = truth
                .get(service)
                .is_some_and(|m| m.iter().any(|(ip, port)| format!("{ip}:{port}") == node));
            if !held {
                out.push((
                    "d",
                    format!(
                        "node {service}/{node} of socket {} on hound {}",
                        sock.id, sock.hound
                    ),
                    "its socket is open but etcd does not hold it".to_owned(),
                ));
            }
        }
    }
    out
}

/// (a): waits until every live socket's view equals etcd; records how long that took.
fn quiesce(shared: &Shared, etcd: &mut kv::Etcd, when: &str) {
    let started = Instant::now();
    let limit = Duration::from_secs(30);
    loop {
        let diffs = differences(shared, etcd);
        if diffs.is_empty() {
            shared.recovered(
                &format!("quiescence {when}: every view equals etcd"),
                started.elapsed(),
            );
            return;
        }
        if started.elapsed() > limit {
            for (check, subject, detail) in diffs {
                shared.violation(
                    check,
                    subject,
                    format!("{when}, {limit:?} into quiescence: {detail}"),
                );
            }
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Closes every register socket (each a DELETE everywhere, checked by (c)), waits until etcd
/// holds nothing and every monitor saw it, then closes the monitors.
fn close_everything(shared: &Shared, etcd: &mut kv::Etcd) {
    let holders = shared.world().holders();
    {
        let mut world = shared.world();
        for sock in &holders {
            let (service, node) = sock.node().expect("a register socket");
            world.closes.push(CleanClose {
                sock: sock.id,
                service: service.to_owned(),
                node: node.to_owned(),
                hound: sock.hound,
                at: Instant::now(),
            });
        }
    }
    for sock in &holders {
        sock.close();
    }
    let started = Instant::now();
    let limit = TTL + Duration::from_secs(5);
    loop {
        let left = etcd_view(shared, etcd).map(|v| {
            v.into_iter()
                .flat_map(|(s, m)| {
                    m.into_iter()
                        .map(move |(ip, port)| format!("{s}/{ip}:{port}"))
                })
                .collect::<Vec<_>>()
        });
        match left {
            Some(left) if left.is_empty() => {
                shared.recovered(
                    "final close of every register socket: etcd empty",
                    started.elapsed(),
                );
                break;
            }
            Some(left) if started.elapsed() > limit => {
                let refused = shared.world().refused.clone();
                for key in left {
                    if refused.contains(&key) {
                        shared.log(&format!(
                            "known defect (docs/API.md §register 1): {key} was refused yet registered"
                        ));
                    } else {
                        shared.violation(
                            "c",
                            format!("node {key}"),
                            "left in etcd after every socket closed".to_owned(),
                        );
                    }
                }
                break;
            }
            _ => thread::sleep(Duration::from_millis(100)),
        }
    }
    quiesce(shared, etcd, "after every register socket closed");
    for sock in shared.world().live_monitors() {
        sock.close();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.world().socks.iter().any(|s| s.is_live()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
}

/// (e): with every socket closed, each hound is back to the threads it had with none.
fn check_threads(shared: &Shared) {
    let hounds: Vec<(usize, u32, usize)> = shared
        .world()
        .slots
        .iter()
        .enumerate()
        .filter_map(|(h, s)| Some((h, s.hound.as_ref()?.pid(), s.baseline_threads)))
        .collect();
    // tiny_http's connection threads linger 5 s after their last request.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (h, pid, baseline) in hounds {
        let mut now = thread_count(pid);
        while now > baseline && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(200));
            now = thread_count(pid);
        }
        shared.log(&format!(
            "hound {h}: {now} threads with no socket open (baseline {baseline})"
        ));
        if now > baseline {
            shared.violation(
                "e",
                format!("hound {h}"),
                format!("{now} threads with every socket closed, {baseline} when it started"),
            );
        }
    }
}

/// SIGTERM to every hound: each must exit 0 (a crash would be (e)).
fn stop_hounds(shared: &Shared) {
    faults::reap_crashed(shared, None);
    let hounds: Vec<(usize, support::Hound)> = shared
        .world()
        .slots
        .iter_mut()
        .enumerate()
        .filter_map(|(h, s)| Some((h, s.hound.take()?)))
        .collect();
    for (h, mut hound) in hounds {
        let (status, _) = hound.terminate(Duration::from_secs(10));
        shared.keep_log(h, &hound);
        if !status.success() {
            shared.violation(
                "e",
                format!("hound {h}"),
                format!(
                    "exited with {status} on SIGTERM; log:\n{}",
                    tail(&hound.stderr(), 20)
                ),
            );
        }
    }
}

fn summarize(shared: &Shared, socks: &[Arc<clients::Sock>], events: usize) {
    let world = shared.world();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut customs = 0;
    for sock in socks {
        customs += sock.customs();
        for msg in sock.messages() {
            *kinds.entry(msg.event).or_default() += 1;
        }
    }
    println!(
        "soak: {} sockets, {events} etcd events recorded, messages {kinds:?}, {customs} custom events",
        socks.len()
    );
    println!("soak: counts {:?}", world.counts);
    for (what, times) in &world.recoveries {
        let max = times.iter().copied().fold(0.0, f64::max);
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        println!(
            "soak: recovery {what}: n={} median {median:.2} s, max {max:.2} s",
            times.len()
        );
    }
}
