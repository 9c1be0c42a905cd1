//! The one owner of which etcd member hound uses: a client and a probe per member, the member
//! every request and stream starts on, and failover to another member when it does not answer.
//!
//! etcd-client balances over the endpoints of one channel, but a request or a stream that lands
//! on a frozen member waits there until its own timeout: nothing moves it elsewhere. So each
//! member gets a client of its own, and everything uses one member at a time, the *current*
//! one. As soon as hound learns that a member does not answer — its probe is slow, or a
//! request to it went unanswered — it is set aside and the next member that answers becomes
//! current: requests are retried there within their deadline ([`Members::call`]), and streams
//! (watches, keep-alives) reopen there, since each ends when [`Members::moved_from`] says so.
//! A member is used again once a probe sent after it was set aside is answered; the current
//! member changes only when it has to, so streams do not move back and forth.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmType, Certificate, Client, ConnectOptions, Identity, TlsOptions,
};
use tokio::sync::watch;
use tokio::task::spawn_local;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tonic::Code;

use super::backoff::Backoff;
use super::health::HealthState;
use super::{REQUEST_TIMEOUT, Settings};
use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::metrics;

/// How often each member is asked for its status.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// A member whose status takes longer than this gets no new work: it is frozen, or too slow
/// to keep a short lease alive. Its probe waits on for [`PROBE_TIMEOUT`].
const PROBE_SLOW: Duration = Duration::from_millis(500);
/// A member that has not answered its status within this does not answer; once no member
/// answers, `/healthz` says so.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a member may take to let hound connect (and log in, with `--etcd-user`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the first attempt of a request waits for one member's answer before trying the
/// next. Answers take milliseconds; each round over all members doubles the wait (up to
/// [`LAST_ATTEMPT`]), so an etcd that is merely slow everywhere is still waited for.
const FIRST_ATTEMPT: Duration = Duration::from_millis(500);
const LAST_ATTEMPT: Duration = Duration::from_secs(4);

/// One member, as a request or a stream uses it.
#[derive(Clone)]
pub(super) struct Member {
    index: usize,
    pub client: Client,
}

impl Member {
    /// Which member this is: the same index is the same member.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// Every member hound may use. Cloning shares them.
#[derive(Clone)]
pub(super) struct Members {
    shared: Rc<Shared>,
}

struct Shared {
    settings: Rc<Settings>,
    known: RefCell<Vec<Known>>,
    /// The index of the current member; streams subscribe to learn when it changes.
    current: watch::Sender<usize>,
    /// The cluster most members answer for.
    cluster: Cell<Option<u64>>,
    health: Rc<HealthState>,
    hub: Arc<Hub>,
    /// Whether some member answered at the last look; `None` until one did or all were asked.
    answering: Cell<Option<bool>>,
    ever_answered: Cell<bool>,
    /// A failed connection (a refused password, an unusable key) is an error worth one line,
    /// not one per try.
    connect_failure_reported: Cell<bool>,
}

/// What hound knows about one member.
struct Known {
    endpoint: String,
    /// Built at start, or by the probe when that needs a round trip (logging in with
    /// `--etcd-user`) or failed (a key etcd-client cannot use): `None` until then.
    client: Option<Client>,
    /// The last probe's outcome: the cluster id the member answered for, or why it did not
    /// answer. `None` until probed.
    answer: Option<std::result::Result<u64, String>>,
    /// When a probe or a request found the member slow or silent. A probe sent later and
    /// answered clears it.
    silent_since: Option<Instant>,
    /// Why the member is not used, for logs and `/healthz`.
    problem: String,
    /// It answers for another cluster than most members do: never used.
    stranger: bool,
    /// Whether it was usable at the last look, so each change is logged once.
    was_usable: bool,
    /// The alarms the member last reported (`NOSPACE (member 8e9e…)`), and the errors of its
    /// status they were read for: asked again only when those change.
    alarms: Vec<String>,
    status_errors: Vec<String>,
}

impl Known {
    fn usable(&self) -> bool {
        self.client.is_some()
            && !self.stranger
            && self.silent_since.is_none()
            && !matches!(self.answer, Some(Err(_)))
    }

    fn answers(&self) -> bool {
        matches!(self.answer, Some(Ok(_))) && !self.stranger
    }
}

/// What an etcd error says about the member that returned it.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The member did not answer (refused, reset, silent connection): try another, and set
    /// this one aside.
    Silent,
    /// etcd answered, but cannot do it now (no leader, leader changed, overloaded): try
    /// another member.
    Busy,
    /// etcd answered no (not found, permission denied, bad request): trying again is useless.
    Final,
}

fn classify(err: &etcd_client::Error) -> Failure {
    match err {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => Failure::Silent,
        etcd_client::Error::GRpcStatus(status) => {
            // etcd's own errors say `etcdserver: …`; anything else came from the transport.
            let etcd_said_it = status.message().starts_with("etcdserver:");
            if no_space(err) {
                // Out of space until an operator intervenes: another member says the same.
                return Failure::Final;
            }
            match status.code() {
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                    if !etcd_said_it =>
                {
                    Failure::Silent
                }
                Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Internal => Failure::Busy,
                _ => Failure::Final,
            }
        }
        _ => Failure::Final,
    }
}

/// Whether etcd refused a write because its database reached its quota (the NOSPACE alarm).
pub(super) fn no_space(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status)
        if status.code() == Code::ResourceExhausted
            && status.message().contains("database space exceeded"))
}

/// Whether etcd answered that a lease does not exist (revoked or expired).
pub(super) fn lease_not_found(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status) if status.code() == Code::NotFound)
}

impl Members {
    /// Builds a client per member and starts their probes. Fails only on an endpoint no client
    /// can be built for (a bad URL). Building a client needs no round trip unless it logs in;
    /// with `--etcd-user`, or when building failed otherwise (a key etcd-client cannot use),
    /// each member's probe connects (retrying with back-off), and until one has, requests
    /// answer 503.
    pub async fn start(
        settings: Rc<Settings>,
        hub: Arc<Hub>,
        health: Rc<HealthState>,
    ) -> Result<Members> {
        let mut known = Vec::with_capacity(settings.endpoints.len());
        for endpoint in &settings.endpoints {
            let built = Client::connect([endpoint], Some(connect_options(&settings, false))).await;
            let client = match built {
                Ok(client) => settings.security.user.is_none().then_some(client),
                Err(
                    err @ (etcd_client::Error::InvalidArgs(_)
                    | etcd_client::Error::InvalidUri(_)
                    | etcd_client::Error::EndpointError(_)),
                ) => {
                    return Err(Error::Config(format!(
                        "cannot use etcd endpoint {endpoint}: {err}"
                    )));
                }
                Err(_) => None,
            };
            known.push(Known {
                endpoint: endpoint.clone(),
                was_usable: client.is_some(),
                client,
                answer: None,
                silent_since: None,
                problem: "not connected yet".to_owned(),
                stranger: false,
                alarms: Vec::new(),
                status_errors: Vec::new(),
            });
        }
        if known.is_empty() {
            return Err(Error::Config("no etcd endpoint given".into()));
        }
        let members = Members {
            shared: Rc::new(Shared {
                settings,
                known: RefCell::new(known),
                current: watch::Sender::new(0),
                cluster: Cell::new(None),
                health,
                hub,
                answering: Cell::new(None),
                ever_answered: Cell::new(false),
                connect_failure_reported: Cell::new(false),
            }),
        };
        for index in 0..members.len() {
            spawn_local(members.clone().probe(index));
        }
        Ok(members)
    }

    fn len(&self) -> usize {
        self.shared.known.borrow().len()
    }

    /// The member to start a request or a stream on.
    pub fn current(&self) -> Result<Member> {
        let index = *self.shared.current.borrow();
        let known = self.shared.known.borrow();
        match &known[index].client {
            Some(client) => Ok(Member {
                index,
                client: client.clone(),
            }),
            None => Err(Error::Unavailable(known[index].problem.clone())),
        }
    }

    /// Whether `member` is the current member.
    pub fn is_current(&self, member: &Member) -> bool {
        *self.shared.current.borrow() == member.index
    }

    /// Returns once `member` is no longer the current member (at once if it is not): a stream
    /// on it should reopen on [`Members::current`].
    pub async fn moved_from(&self, member: &Member) {
        let mut current = self.shared.current.subscribe();
        // The sender lives as long as `self`, so this cannot fail while anyone waits.
        let _ = current.wait_for(|&index| index != member.index).await;
    }

    /// Reports that `member` did not answer (or answered `err`); a member that did not answer
    /// is set aside until its probe is answered again.
    pub fn failed(&self, member: &Member, err: &etcd_client::Error) {
        if classify(err) == Failure::Silent {
            self.silent(member.index, &err.to_string());
        }
    }

    /// Reports that `member` did not answer within `within`, and sets it aside.
    pub fn unanswered(&self, member: &Member, within: Duration) {
        self.silent(member.index, &format!("no answer within {within:?}"));
    }

    /// Runs `op` on the current member and, while it fails without a final answer from etcd,
    /// on the others in turn, until `deadline` — or until a round over every member has failed
    /// while no member answers its probe: a client is better told at once that etcd is down.
    /// Each attempt gets [`FIRST_ATTEMPT`], doubled after each round; a member that leaves an
    /// attempt unanswered is set aside. `op` may be run more than once, on different members,
    /// and an attempt given up may still reach etcd later: it must be safe to repeat.
    pub async fn call<T, F, Fut>(&self, deadline: Instant, op: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.attempt(deadline, false, op).await
    }

    /// Like [`Members::call`], but goes on trying until `deadline` even while no member
    /// answers: for clean-ups that must happen once etcd is back (a deletion, a revocation).
    pub async fn call_until<T, F, Fut>(&self, deadline: Instant, op: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.attempt(deadline, true, op).await
    }

    async fn attempt<T, F, Fut>(&self, deadline: Instant, patient: bool, mut op: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut attempt = FIRST_ATTEMPT;
        let mut backoff = Backoff::new();
        let mut failure = None;
        // Bounded by `deadline`: every pass waits, on attempts or on the back-off.
        loop {
            let members = self.by_preference();
            if members.is_empty() {
                // Not logged in anywhere yet: nothing to wait for within one request.
                return Err(Error::Unavailable(self.problem()));
            }
            for member in members {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let within = attempt.min(left);
                match timeout(within, op(member.client.clone())).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(err)) => {
                        if classify(&err) == Failure::Final {
                            return Err(Error::Unavailable(err.to_string()));
                        }
                        self.failed(&member, &err);
                        failure = Some(err.to_string());
                    }
                    // An attempt cut short by the deadline says nothing about the member.
                    Err(_) if within < attempt => {}
                    Err(_) => {
                        self.unanswered(&member, within);
                        failure = Some(format!("no answer within {within:?}"));
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let down = !patient && self.shared.answering.get() == Some(false);
            if left.is_zero() || down {
                let why = failure.unwrap_or_else(|| self.problem());
                let what = if down {
                    "etcd does not answer"
                } else {
                    "etcd did not answer in time"
                };
                return Err(Error::Unavailable(format!("{what}: {why}")));
            }
            attempt = (attempt * 2).min(LAST_ATTEMPT);
            sleep(backoff.next_delay().min(left)).await;
        }
    }

    /// The members to try, best first: the current one, the others that answer (in the
    /// configured order after it), then those set aside (perhaps they answer again).
    /// Strangers never: hound would write where its cluster does not see it.
    fn by_preference(&self) -> Vec<Member> {
        let current = *self.shared.current.borrow();
        let known = self.shared.known.borrow();
        let n = known.len();
        let ring = (0..n).map(|k| (current + k) % n);
        let (usable, set_aside): (Vec<usize>, Vec<usize>) = ring
            .filter(|&i| known[i].client.is_some() && !known[i].stranger)
            .partition(|&i| known[i].usable());
        usable
            .into_iter()
            .chain(set_aside)
            .filter_map(|index| {
                let client = known[index].client.clone()?;
                Some(Member { index, client })
            })
            .collect()
    }

    /// Why the current member is not answering, for an error message.
    fn problem(&self) -> String {
        let current = *self.shared.current.borrow();
        self.shared.known.borrow()[current].problem.clone()
    }

    /// Sets member `index` aside because it did not answer.
    fn silent(&self, index: usize, why: &str) {
        {
            let mut known = self.shared.known.borrow_mut();
            let member = &mut known[index];
            if member.silent_since.is_none() {
                member.silent_since = Some(Instant::now());
                member.problem = why.to_owned();
            }
        }
        self.review(None);
    }

    /// Asks member `index` for its status every [`PROBE_INTERVAL`], connecting first if
    /// needed, for as long as hound runs.
    async fn probe(self, index: usize) {
        let mut reconnect = Backoff::new();
        loop {
            let started = Instant::now();
            let client = self.shared.known.borrow()[index].client.clone();
            let client = match client {
                Some(client) => client,
                None => match self.connect(index).await {
                    Ok(client) => client,
                    Err(why) => {
                        self.record(index, started, Err(why));
                        sleep(reconnect.next_delay()).await;
                        continue;
                    }
                },
            };
            reconnect.reset();
            let answer = match self.ask_status(index, client.clone()).await {
                Ok(status) => Ok(self.ask_alarms(index, client, status).await),
                Err(why) => Err(why),
            };
            self.record(index, started, answer);
            sleep_until(started + PROBE_INTERVAL).await;
        }
    }

    /// Builds member `index`'s client, logging in with `--etcd-user`'s credentials if given.
    async fn connect(&self, index: usize) -> std::result::Result<Client, String> {
        let endpoint = self.shared.known.borrow()[index].endpoint.clone();
        let options = connect_options(&self.shared.settings, true);
        let why = match timeout(CONNECT_TIMEOUT, Client::connect([&endpoint], Some(options))).await
        {
            Ok(Ok(client)) => {
                self.shared.known.borrow_mut()[index].client = Some(client.clone());
                return Ok(client);
            }
            Ok(Err(err)) => format!("cannot connect to etcd at {endpoint}: {err}"),
            Err(_) => {
                format!(
                    "cannot connect to etcd at {endpoint}: no answer within {CONNECT_TIMEOUT:?}"
                )
            }
        };
        if !self.shared.connect_failure_reported.replace(true) {
            log::error!("{why}");
        } else {
            log::debug!("{why}");
        }
        Err(why)
    }

    /// The cluster id, version and errors member `index` reports; it is set aside as soon as
    /// it is slower than [`PROBE_SLOW`], and does not answer after [`PROBE_TIMEOUT`].
    async fn ask_status(
        &self,
        index: usize,
        mut client: Client,
    ) -> std::result::Result<Status, String> {
        let status = client.status();
        tokio::pin!(status);
        let answer = match timeout(PROBE_SLOW, &mut status).await {
            Ok(answer) => answer,
            Err(_) => {
                self.silent(index, &format!("no status within {PROBE_SLOW:?}"));
                match timeout(PROBE_TIMEOUT - PROBE_SLOW, status).await {
                    Ok(answer) => answer,
                    Err(_) => return Err("no answer within 1 s".to_owned()),
                }
            }
        };
        answer
            .map(|status| Status {
                cluster: status.header().map_or(0, |h| h.cluster_id()),
                version: status.version().to_owned(),
                // etcd lists its raised alarms among these, after "no leader" if it has none.
                errors: status
                    .errors()
                    .iter()
                    .filter(|error| !error.contains("no leader"))
                    .cloned()
                    .collect(),
                alarms: Vec::new(),
            })
            .map_err(|err| err.to_string())
    }

    /// Fills in the alarms raised on the cluster of member `index`. Its status lists them
    /// among its errors, for free; the alarm API, which names them exactly but goes through
    /// the cluster's log, is asked only when those errors change, and its answer kept.
    async fn ask_alarms(&self, index: usize, mut client: Client, mut status: Status) -> Status {
        let known = {
            let known = self.shared.known.borrow();
            let member = &known[index];
            (member.status_errors == status.errors).then(|| member.alarms.clone())
        };
        status.alarms = match known {
            Some(alarms) => alarms,
            None if status.errors.is_empty() => Vec::new(),
            None => {
                let asked = client.alarm(AlarmAction::Get, AlarmType::None, None);
                match timeout(PROBE_TIMEOUT, asked).await {
                    Ok(Ok(answer)) => answer
                        .alarms()
                        .iter()
                        .map(|raised| {
                            format!(
                                "{} (member {:x})",
                                raised.alarm().as_str_name(),
                                raised.member_id()
                            )
                        })
                        .collect(),
                    // Cannot ask (no leader, say): the status's own words will do.
                    _ => status.errors.clone(),
                }
            }
        };
        status
    }

    /// Records the outcome of a probe of member `index` sent at `started`.
    fn record(&self, index: usize, started: Instant, answer: std::result::Result<Status, String>) {
        let version = {
            let mut known = self.shared.known.borrow_mut();
            let member = &mut known[index];
            match answer {
                Ok(status) => {
                    member.answer = Some(Ok(status.cluster));
                    if member.silent_since.is_some_and(|since| since <= started) {
                        member.silent_since = None;
                    }
                    member.status_errors = status.errors;
                    member.alarms = status.alarms;
                    Some(status.version)
                }
                Err(why) => {
                    member.problem.clone_from(&why);
                    member.answer = Some(Err(why));
                    None
                }
            }
        };
        self.follow_majority();
        self.review(version.as_deref());
    }

    /// Follows the cluster id that more than half of the configured members report: a whole
    /// cluster replaced (restored from a backup, say) is followed, while a stray address, or
    /// a few strangers while the real members are down, is not. Until a majority answers,
    /// the first cluster heard of is taken, so strangers are recognised even then.
    fn follow_majority(&self) {
        let known = self.shared.known.borrow();
        let answers = known.iter().filter_map(|m| m.answer.clone()?.ok());
        let agreed = majority(answers, known.len());
        let first = known.iter().find_map(|m| m.answer.clone()?.ok());
        match (self.shared.cluster.get(), agreed) {
            (Some(previous), Some(agreed)) if previous != agreed => {
                log::warn!(
                    "most etcd members now answer for cluster {agreed:x}, not {previous:x}; following them"
                );
                self.shared.cluster.set(Some(agreed));
            }
            (None, _) => self.shared.cluster.set(agreed.or(first)),
            _ => {}
        }
    }

    /// Tells `/healthz` about the alarms the members that answer report (none: healthy), and
    /// logs each change once.
    fn report_alarms(&self, alarms: Vec<String>) {
        let health = &self.shared.health;
        let alarms = alarms.join(", ");
        if *health.alarms.borrow() == alarms {
            return;
        }
        if alarms.is_empty() {
            log::info!("etcd's alarms are cleared");
        } else {
            log::error!("etcd raised an alarm: {alarms}");
        }
        *health.alarms.borrow_mut() = alarms;
        health.publish(&self.shared.hub);
    }

    /// After anything changed: flags strangers, logs members set aside or back, moves the
    /// current member off one that is not usable, and tells `/healthz` whether etcd answers.
    fn review(&self, version: Option<&str>) {
        let shared = &self.shared;
        let mut known = shared.known.borrow_mut();
        let several = known.len() > 1;
        let cluster = shared.cluster.get();
        for member in known.iter_mut() {
            let stranger = matches!((cluster, &member.answer), (Some(ours), Some(Ok(theirs))) if *theirs != ours);
            if stranger && !member.stranger {
                log::warn!(
                    "etcd at {} answers for another cluster ({:x}, not {:x}); not using it",
                    member.endpoint,
                    member
                        .answer
                        .clone()
                        .and_then(|a| a.ok())
                        .unwrap_or_default(),
                    cluster.unwrap_or_default()
                );
            }
            member.stranger = stranger;
            let usable = member.usable();
            if several && usable != member.was_usable {
                if usable {
                    log::info!("etcd member {} answers again", member.endpoint);
                } else if !stranger {
                    log::warn!(
                        "etcd member {} does not answer; using the others ({})",
                        member.endpoint,
                        member.problem
                    );
                }
            }
            member.was_usable = usable;
        }

        let current = *shared.current.borrow();
        if !known[current].usable() {
            let n = known.len();
            let next = (1..n)
                .map(|k| (current + k) % n)
                .find(|&i| known[i].usable());
            if let Some(next) = next {
                log::info!("using etcd member {}", known[next].endpoint);
                shared.current.send_replace(next);
            }
        }

        let answering = known.iter().any(Known::answers);
        let decided = answering || known.iter().all(|m| m.answer.is_some());
        if !decided {
            return;
        }
        let problem = known
            .iter()
            .find(|m| !m.answers())
            .map(|m| m.problem.clone())
            .unwrap_or_default();
        let mut alarms: Vec<String> = known
            .iter()
            .filter(|m| m.answers())
            .flat_map(|m| m.alarms.iter().cloned())
            .collect();
        alarms.sort();
        alarms.dedup();
        drop(known);
        self.report_alarms(alarms);
        if shared.answering.get() != Some(answering) {
            if !answering {
                log::warn!("etcd does not answer: {problem}");
            } else if !shared.ever_answered.get() {
                log::info!(
                    "connected to etcd {}",
                    version.unwrap_or("(version unknown)")
                );
            } else {
                log::info!("etcd answers again");
                metrics::ETCD_RECONNECTS.add(1);
            }
            shared.answering.set(Some(answering));
            shared
                .ever_answered
                .set(shared.ever_answered.get() || answering);
        }
        let health = &shared.health;
        let problem = (!answering).then_some(problem);
        health.set(&shared.hub, &health.etcd_answers, answering, problem);
    }
}

/// What one status probe learned about a member.
struct Status {
    cluster: u64,
    version: String,
    /// The errors it reports, other than having no leader.
    errors: Vec<String>,
    /// The alarms raised on its cluster, as `/healthz` names them.
    alarms: Vec<String>,
}

/// The value reported by more than half of `members` (not just of those that answered).
fn majority(answers: impl Iterator<Item = u64>, members: usize) -> Option<u64> {
    let mut counts: Vec<(u64, usize)> = Vec::new();
    for value in answers {
        match counts.iter_mut().find(|(seen, _)| *seen == value) {
            Some((_, count)) => *count += 1,
            None => counts.push((value, 1)),
        }
    }
    counts
        .into_iter()
        .find(|&(_, count)| count > members / 2)
        .map(|(value, _)| value)
}

/// The options of every member's client; with `log_in`, `--etcd-user`'s credentials too.
fn connect_options(settings: &Settings, log_in: bool) -> ConnectOptions {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(REQUEST_TIMEOUT)
        // HTTP/2 pings notice a silent etcd (paused, partitioned) within a few seconds.
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    let security = &settings.security;
    if security.ca_pem.is_some() || security.identity_pem.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &security.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &security.identity_pem {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    if log_in && let Some((user, password)) = &security.user {
        options = options
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_changes_only_when_most_configured_members_agree() {
        assert_eq!(majority([7, 9, 7].into_iter(), 3), Some(7));
        assert_eq!(majority([9, 7, 7].into_iter(), 3), Some(7));
        // Two of three members down: the one that answers is no majority.
        assert_eq!(majority([9].into_iter(), 3), None);
        assert_eq!(majority([9, 7].into_iter(), 3), None);
        assert_eq!(majority([9, 7].into_iter(), 2), None);
        assert_eq!(majority([9, 9].into_iter(), 4), None);
        assert_eq!(majority([9].into_iter(), 1), Some(9));
        assert_eq!(majority(std::iter::empty(), 3), None);
    }

    #[test]
    fn only_an_answer_from_etcd_itself_keeps_a_member_in_use() {
        let status = |code, message: &str| {
            etcd_client::Error::GRpcStatus(tonic::Status::new(code, message.to_owned()))
        };
        let refused = status(Code::Unavailable, "tcp connect error: Connection refused");
        assert_eq!(classify(&refused), Failure::Silent);
        let no_leader = status(Code::Unavailable, "etcdserver: no leader");
        assert_eq!(classify(&no_leader), Failure::Busy);
        let overloaded = status(Code::ResourceExhausted, "etcdserver: too many requests");
        assert_eq!(classify(&overloaded), Failure::Busy);
        let gone = status(Code::NotFound, "etcdserver: requested lease not found");
        assert_eq!(classify(&gone), Failure::Final);
        assert!(lease_not_found(&gone));
        assert!(!lease_not_found(&no_leader));
        let full = status(
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        );
        assert_eq!(classify(&full), Failure::Final);
        assert!(no_space(&full) && !no_space(&overloaded));
        let denied = status(Code::PermissionDenied, "etcdserver: permission denied");
        assert_eq!(classify(&denied), Failure::Final);
    }
}
