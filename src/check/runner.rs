//! The checker thread: every check of this hound on one thread, each node's probes one at a
//! time on a fixed schedule, all waits in one `poll(2)`. It never blocks on anything but that
//! poll and its command channel, and reports only findings that differ from the node's last
//! (`Store::report` is a message): an unchanged status costs no write.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use rustix::event::{PollFd, Timespec};

use super::probe::{Finding, InFlight};
use super::{CheckId, Command, Job};
use crate::metrics;
use crate::status::StatusChange;
use crate::store::Store;

/// The longest the thread sleeps with probes in flight before it looks at its commands.
const COMMAND_TICK: Duration = Duration::from_millis(50);

/// One node's check.
struct Entry {
    job: Box<Job>,
    /// When the next probe starts.
    next: Instant,
    in_flight: Option<InFlight>,
    /// What the last probe found (what the node was last told).
    last: Option<Finding>,
}

/// Runs the checks it is told to start until every sender is gone.
pub(super) fn run(inbox: Receiver<Command>, store: Store) {
    let mut checks: HashMap<CheckId, Entry> = HashMap::new();
    let mut wait = Duration::ZERO;
    loop {
        if !take_commands(&inbox, &mut checks, wait) {
            return;
        }
        let now = Instant::now();
        start_due(&mut checks, now, &store);
        expire(&mut checks, now, &store);
        wait = poll_in_flight(&mut checks, &store);
    }
}

/// Applies the commands that came (waiting up to `wait` for the first when nothing is in
/// flight); `false` once the channel is closed.
fn take_commands(
    inbox: &Receiver<Command>,
    checks: &mut HashMap<CheckId, Entry>,
    wait: Duration,
) -> bool {
    let first = if wait.is_zero() {
        match inbox.try_recv() {
            Ok(command) => Some(command),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => return false,
        }
    } else {
        match inbox.recv_timeout(wait) {
            Ok(command) => Some(command),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    };
    let mut next = first;
    while let Some(command) = next {
        match command {
            Command::Start(id, job) => {
                log::debug!(
                    "checking {}/{} every {:?} ({:?})",
                    job.service,
                    job.node,
                    job.spec.interval,
                    job.spec.probe
                );
                checks.insert(
                    id,
                    Entry {
                        job,
                        next: Instant::now(),
                        in_flight: None,
                        last: None,
                    },
                );
            }
            Command::Stop(id) => {
                checks.remove(&id);
            }
        }
        next = inbox.try_recv().ok();
    }
    true
}

/// Starts the probes that are due; the next one starts an interval after this one did (or
/// after now, if the thread fell that far behind).
fn start_due(checks: &mut HashMap<CheckId, Entry>, now: Instant, store: &Store) {
    for entry in checks.values_mut() {
        if entry.in_flight.is_some() || entry.next > now {
            continue;
        }
        let interval = entry.job.spec.interval;
        entry.next = (entry.next + interval).max(now);
        match InFlight::start(&entry.job.spec, now) {
            Ok(in_flight) => entry.in_flight = Some(in_flight),
            Err(finding) => found(entry, finding, store),
        }
    }
}

/// Ends the probes whose time is up: critical.
fn expire(checks: &mut HashMap<CheckId, Entry>, now: Instant, store: &Store) {
    for entry in checks.values_mut() {
        if let Some(in_flight) = &entry.in_flight
            && in_flight.deadline <= now
        {
            let finding = in_flight.expired();
            entry.in_flight = None;
            found(entry, finding, store);
        }
    }
}

/// Waits for the probes in flight (until the next start or deadline, at most a tick) and
/// advances those that can go on; returns how long the command channel may be waited on
/// next (zero when probes are in flight: the poll did the waiting).
fn poll_in_flight(checks: &mut HashMap<CheckId, Entry>, store: &Store) -> Duration {
    let now = Instant::now();
    let next_event = checks
        .values()
        .map(|e| e.in_flight.as_ref().map_or(e.next, |f| f.deadline))
        .min();
    let until_next = next_event.map_or(Duration::from_secs(3600), |at| {
        at.saturating_duration_since(now)
    });
    let ids: Vec<CheckId> = checks
        .iter()
        .filter(|(_, e)| e.in_flight.is_some())
        .map(|(id, _)| *id)
        .collect();
    if ids.is_empty() {
        return until_next.max(Duration::from_millis(1));
    }
    let mut revents = Vec::with_capacity(ids.len());
    {
        let mut fds: Vec<PollFd<'_>> = ids
            .iter()
            .filter_map(|id| checks.get(id)?.in_flight.as_ref())
            .map(|f| PollFd::from_borrowed_fd(f.fd(), f.interest()))
            .collect();
        let timeout = until_next.min(COMMAND_TICK);
        let timespec = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        if let Err(err) = rustix::event::poll(&mut fds, Some(&timespec)) {
            log::debug!("checker poll: {err}");
            return Duration::ZERO;
        }
        revents.extend(fds.iter().map(PollFd::revents));
    }
    for (id, revents) in ids.iter().zip(revents) {
        let Some(entry) = checks.get_mut(id) else {
            continue;
        };
        let finding = entry.in_flight.as_mut().and_then(|f| f.advance(revents));
        if let Some(finding) = finding {
            entry.in_flight = None;
            found(entry, finding, store);
        }
    }
    Duration::ZERO
}

/// Counts a finding and tells the store if it differs from the last.
fn found(entry: &mut Entry, finding: Finding, store: &Store) {
    metrics::count_check(finding.0);
    if entry.last.as_ref() == Some(&finding) {
        return;
    }
    let job = &entry.job;
    log::info!(
        "check of {}/{}: {}{}",
        job.service,
        job.node,
        finding.0,
        finding
            .1
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    entry.last = Some(finding.clone());
    let (status, note) = finding;
    store.report(
        &job.service,
        &job.node,
        job.owner,
        StatusChange::Checked(status, note),
    );
}
