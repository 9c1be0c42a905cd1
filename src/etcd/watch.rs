//! The two watches (service namespace, event namespace), which share one loop that resumes
//! where it left off after a break, and follow the current etcd member.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions, WatchResponse};
use tokio::task::spawn_local;
use tokio::time::Instant;

use super::Settings;
use super::backoff::{Backoff, Throttle};
use super::events;
use super::health::{EVENT_WATCH, HealthState, SERVICE_WATCH, WatchHealth};
use super::marker;
use super::members::{Member, Members};
use crate::error::Error;
use crate::hub::{Change, Hub};
use crate::keys::{EventKeys, ServiceKeys};
use crate::membership::Mirror;
use crate::message::KeyEvent;
use crate::metrics;
use crate::names::Node;

/// Starts the two watches, which report to `/healthz` together with the members' probes.
pub(super) fn spawn(
    members: &Members,
    settings: &Settings,
    hub: &Arc<Hub>,
    health: &Rc<HealthState>,
) {
    let marker = settings.service_keys().store_marker();
    let services = ServiceFeed {
        keys: settings.service_keys(),
    };
    spawn_local(keep_watching(
        services,
        Watch::new(members, hub, health, &marker),
    ));
    let events = EventFeed {
        keys: settings.event_keys(),
    };
    spawn_local(keep_watching(
        events,
        Watch::new(members, hub, health, &marker),
    ));
    let elections = super::election::ElectionFeed::new(settings.election_keys());
    spawn_local(keep_watching(
        elections,
        Watch::new(members, hub, health, &marker),
    ));
}

/// Why a watch session ended.
pub(super) enum Break {
    /// The revision to resume from was compacted; etcd keeps history from this revision on.
    Compacted(i64),
    /// etcd is not the store we watched (its cluster id changed, its revision went backwards,
    /// or it lost the store marker: restored from an empty data dir, or replaced): re-read
    /// everything from scratch.
    Replaced(String),
    /// etcd-client reported an error: resume from the next revision after a back-off.
    Etcd(etcd_client::Error),
    /// Anything else: resume from the next revision after a back-off.
    Failed(String),
    /// hound moved to another etcd member: resume there at once.
    Moved,
}

impl Break {
    fn reason(&self) -> String {
        match self {
            Break::Compacted(_) => "fell behind a compaction".to_owned(),
            Break::Replaced(why) | Break::Failed(why) => why.clone(),
            Break::Etcd(err) => err.to_string(),
            Break::Moved => "moving to another etcd member".to_owned(),
        }
    }
}

impl From<etcd_client::Error> for Break {
    fn from(err: etcd_client::Error) -> Self {
        Break::Etcd(err)
    }
}

impl From<Error> for Break {
    fn from(err: Error) -> Self {
        Break::Failed(err.to_string())
    }
}

/// Where a watch stands: the next revision to watch from, and the store it belongs to.
#[derive(Debug, Default)]
pub(super) struct Position {
    pub resume_from: Option<i64>,
    pub cluster: Option<u64>,
    /// The store marker's value (`etcd/marker.rs`) when this watch first read it.
    store: Option<String>,
    /// The next re-read must SYNC every subscribed service, changed or not.
    resync_everyone: bool,
    /// The revision the next re-read reads at: the one a compaction left, so that the changes
    /// etcd still holds after it are replayed by the watch, not skipped. `None`: the latest.
    pub read_at: Option<i64>,
    /// The last watch delivered something after etcd created it, so it worked: after it
    /// breaks, retry after the shortest delay. (Being created alone proves little: a watch
    /// that etcd creates and then cancels at once would otherwise be retried in a hot loop.)
    delivered: bool,
}

impl Position {
    /// Checks a response header against what we know: a different cluster id, or a revision
    /// below what we already applied, means etcd was replaced or wiped.
    fn check(&mut self, header: Option<&etcd_client::ResponseHeader>) -> Result<(), Break> {
        let Some(header) = header else { return Ok(()) };
        match self.cluster {
            Some(known) if known != header.cluster_id() => {
                return Err(Break::Replaced(format!(
                    "etcd cluster id changed from {known:x} to {:x}",
                    header.cluster_id()
                )));
            }
            _ => self.cluster = Some(header.cluster_id()),
        }
        if let Some(next) = self.resume_from
            && header.revision() < next - 1
        {
            return Err(Break::Replaced(format!(
                "etcd revision went back from {} to {}",
                next - 1,
                header.revision()
            )));
        }
        Ok(())
    }
}

/// The next response of a watch, or why the watch ended: the stream broke or ended, etcd
/// canceled the watch (compaction or otherwise), or etcd is not the cluster we were watching.
async fn next_response(
    stream: &mut etcd_client::WatchStream,
    position: &mut Position,
) -> Result<WatchResponse, Break> {
    let response = match stream.message().await {
        Ok(Some(response)) => response,
        Ok(None) => return Err(Break::Failed("the watch stream ended".into())),
        Err(err) => return Err(err.into()),
    };
    if response.canceled() {
        if response.compact_revision() > 0 {
            return Err(Break::Compacted(response.compact_revision()));
        }
        return Err(Break::Failed(format!(
            "watch canceled: {}",
            response.cancel_reason()
        )));
    }
    position.check(response.header())?;
    Ok(response)
}

/// How long etcd may take to confirm a new watch. A watch neither confirmed nor refused in
/// that time (opened on a connection that went quiet while members failed over, say) is
/// opened again, rather than leaving hound unhealthy until something else breaks it.
const WATCH_CONFIRM: Duration = Duration::from_secs(5);

/// A watch session that lasted this long worked, even if it delivered nothing: after it
/// breaks, the back-off starts again from its shortest delay.
const WATCH_STABLE: Duration = Duration::from_secs(10);

/// How long a watch may take over a read it needs (the namespace, a lease, stored events)
/// through the members that answer.
const READ_DEADLINE: Duration = Duration::from_secs(2);

/// Opens a watch on `member` and waits for etcd's first answer (normally `created`).
async fn open_watch(
    member: &Member,
    prefix: &str,
    options: WatchOptions,
    position: &mut Position,
) -> Result<(etcd_client::WatchStream, WatchResponse), Break> {
    let mut client = member.client.clone();
    let opening = async {
        let mut stream = client.watch(prefix, Some(options)).await?;
        let first = next_response(&mut stream, position).await?;
        Ok::<_, Break>((stream, first))
    };
    match tokio::time::timeout(WATCH_CONFIRM, opening).await {
        Ok(opened) => opened,
        Err(_) => Err(Break::Failed(format!(
            "etcd did not confirm the watch within {WATCH_CONFIRM:?}"
        ))),
    }
}

/// One watch: the members it reads from, where it reports, and how far it got.
pub(super) struct Watch {
    pub members: Members,
    pub hub: Arc<Hub>,
    health: Rc<HealthState>,
    pub position: Position,
    backoff: Backoff,
    /// The store marker's key.
    marker: String,
}

impl Watch {
    fn new(members: &Members, hub: &Arc<Hub>, health: &Rc<HealthState>, marker: &str) -> Watch {
        Watch {
            members: members.clone(),
            hub: hub.clone(),
            health: health.clone(),
            position: Position::default(),
            backoff: Backoff::new(),
            marker: marker.to_owned(),
        }
    }

    /// Checks that etcd still holds the store marker this watch first read (reading it, or
    /// writing it if absent, the first time): a wiped store fools every response header,
    /// but not this. Done before a watch applies anything of a new session.
    pub async fn check_store(&mut self) -> Result<(), Break> {
        let deadline = Instant::now() + READ_DEADLINE;
        let found = marker::read_or_write(&self.members, &self.marker, deadline).await?;
        match &self.position.store {
            Some(known) if *known != found => Err(Break::Replaced(format!(
                "etcd lost its data: {} holds {found:?}, not {known:?}",
                self.marker
            ))),
            _ => {
                self.position.store = Some(found);
                Ok(())
            }
        }
    }
}

/// What one watch does with its prefix; the loop around it (open, resume, back off, reopen)
/// is [`keep_watching`], shared by every watch.
pub(super) trait Feed {
    /// Names the watch in log lines and in `/healthz`.
    const NAME: &'static str;

    /// The prefix watched.
    fn prefix(&self) -> &str;

    /// This watch's part of the health state.
    fn health(state: &HealthState) -> &WatchHealth;

    /// Gets ready to watch from `watch.position` and returns the options to watch with.
    async fn options(&self, watch: &mut Watch) -> Result<WatchOptions, Break>;

    /// Applies one response and moves `watch.position` past what it covered.
    async fn apply(&self, watch: &mut Watch, response: &WatchResponse);

    /// Catches up after the revision to resume from was compacted; etcd keeps history from
    /// `compacted_at` on. A feed that mirrors its prefix re-reads it at the next session as it
    /// was at that revision, and the watch replays every change after it.
    async fn catch_up(&self, watch: &mut Watch, compacted_at: i64) {
        log::warn!(
            "{} fell behind a compaction; re-reading {} at revision {compacted_at}",
            Self::NAME,
            self.prefix()
        );
        metrics::WATCH_RESYNCS.add(1);
        watch.position.resume_from = None;
        watch.position.read_at = Some(compacted_at);
    }

    /// Starts afresh after etcd was replaced or wiped (`why` says how).
    fn start_afresh(&self, why: &str, position: &mut Position);
}

/// Runs one watch for good: a session at a time, and after each break the feed's recovery
/// (compaction, replaced cluster) or a back-off. The back-off starts again from its shortest
/// delay after a session that delivered something or lasted [`WATCH_STABLE`]. A session
/// that ended because hound moved to another member is resumed there at once, and `/healthz`
/// does not hear of it unless the new session fails.
async fn keep_watching<F: Feed>(feed: F, mut watch: Watch) {
    let mut throttle = Throttle::default();
    loop {
        let opened = Instant::now();
        let outcome = session(&feed, &mut watch).await;
        if let Break::Moved = outcome {
            log::debug!("{} moves to another etcd member", F::NAME);
            continue;
        }
        let health = F::health(&watch.health);
        *health.problem.borrow_mut() = outcome.reason();
        watch.health.set(&watch.hub, &health.watched, false, None);
        if std::mem::take(&mut watch.position.delivered) || opened.elapsed() >= WATCH_STABLE {
            watch.backoff.reset();
        }
        match outcome {
            Break::Compacted(at) => feed.catch_up(&mut watch, at).await,
            Break::Replaced(why) => feed.start_afresh(&why, &mut watch.position),
            Break::Moved => {}
            Break::Failed(_) | Break::Etcd(_) => {
                let why = outcome.reason();
                log::log!(throttle.level(), "{} broke: {why}", F::NAME);
                tokio::time::sleep(watch.backoff.next_delay()).await;
            }
        }
    }
}

/// One watch session on the current member: opens the watch and applies its responses until
/// it breaks, or until hound moves to another member. (A response being applied is finished
/// first, so the position always matches what the hub applied.)
async fn session<F: Feed>(feed: &F, watch: &mut Watch) -> Break {
    let member = match watch.members.current() {
        Ok(member) => member,
        Err(err) => return err.into(),
    };
    let members = watch.members.clone();
    let moved = members.moved_from(&member);
    tokio::pin!(moved);
    let options = match feed.options(watch).await {
        Ok(options) => options,
        Err(end) => return end,
    };
    let opened = open_watch(&member, feed.prefix(), options, &mut watch.position);
    let (mut stream, first) = tokio::select! {
        opened = opened => match opened {
            Ok(opened) => opened,
            Err(end) => return blame(&members, &member, end),
        },
        () = &mut moved => return Break::Moved,
    };
    // After the watch is open, so that a store found intact now was the one watched.
    if let Err(end) = watch.check_store().await {
        return end;
    }
    let mut first = Some(first);
    loop {
        let response = match first.take() {
            Some(response) => response,
            None => tokio::select! {
                next = next_response(&mut stream, &mut watch.position) => match next {
                    Ok(response) => response,
                    Err(end) => return blame(&members, &member, end),
                },
                () = &mut moved => return Break::Moved,
            },
        };
        if !response.created() {
            watch.position.delivered = true;
        }
        if response.created() {
            let health = F::health(&watch.health);
            watch.health.set(&watch.hub, &health.watched, true, None);
        }
        feed.apply(watch, &response).await;
    }
}

/// Tells the members when a watch broke because its member did not answer, so that everything
/// moves off that member rather than wait for its probe.
fn blame(members: &Members, member: &Member, end: Break) -> Break {
    if let Break::Etcd(err) = &end {
        members.failed(member, err);
    }
    end
}

/// The service watch mirrors the service namespace: it reads it once, then watches from the
/// next revision, and resumes from the last applied revision after a break (re-reading it if
/// compacted).
struct ServiceFeed {
    keys: ServiceKeys,
}

impl Feed for ServiceFeed {
    const NAME: &'static str = SERVICE_WATCH;

    fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    fn health(state: &HealthState) -> &WatchHealth {
        &state.services
    }

    /// Watches from the revision after the last one applied; with nothing to resume from,
    /// reads the namespace first and resyncs the hub with it.
    async fn options(&self, watch: &mut Watch) -> Result<WatchOptions, Break> {
        let start = match watch.position.resume_from {
            Some(revision) => revision,
            None => {
                // Before the read, so that a store wiped after it is not taken for the same.
                watch.check_store().await?;
                let at = watch.position.read_at.take();
                let (mirror, revision, cluster) =
                    read_services(&watch.members, &self.keys, at).await?;
                let everyone = std::mem::take(&mut watch.position.resync_everyone);
                let changed = watch.hub.resync(mirror, revision, everyone);
                watch.position.cluster = Some(cluster);
                log::info!(
                    "read {} at revision {revision}; {changed} services changed",
                    self.prefix()
                );
                revision + 1
            }
        };
        watch.position.resume_from = Some(start);
        Ok(WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(start))
    }

    async fn apply(&self, watch: &mut Watch, response: &WatchResponse) {
        let applied = apply_service_events(&watch.members, &self.keys, &watch.hub, response);
        if let Some(revision) = applied.await {
            watch.position.resume_from = Some(revision + 1);
        }
    }

    /// Re-reads the namespace at the next session and sends every socket a SYNC.
    fn start_afresh(&self, why: &str, position: &mut Position) {
        metrics::WATCH_RESYNCS.add(1);
        log::warn!(
            "{why}; re-reading {} and sending every socket a SYNC",
            self.prefix()
        );
        *position = Position {
            resync_everyone: true,
            ..Position::default()
        };
    }
}

/// Reads the whole service namespace into a fresh mirror, at `at` if etcd still holds it (else
/// at the latest revision), with the revision and cluster id it was read at.
async fn read_services(
    members: &Members,
    keys: &ServiceKeys,
    at: Option<i64>,
) -> Result<(Mirror, i64, u64), Error> {
    let (response, revision) = read_prefix(members, keys.prefix(), at).await?;
    let cluster = response.header().map_or(0, |h| h.cluster_id());
    let mut mirror = Mirror::default();
    for kv in response.kvs() {
        if let Some((service, key)) = parse_registration(keys, kv)
            && let Some(node) = parse_node(kv)
        {
            mirror.put(service, key, node);
        }
    }
    Ok((mirror, revision, cluster))
}

/// `(<service>, <node>)` of a registration key.
fn parse_registration<'a>(keys: &ServiceKeys, kv: &'a KeyValue) -> Option<(&'a str, &'a str)> {
    keys.parse_registration(kv.key_str().ok()?)
}

fn parse_node(kv: &KeyValue) -> Option<Node> {
    let node = kv.value_str().ok().and_then(crate::value::decode);
    if node.is_none() {
        log::warn!(
            "skipping key {}: its value {:?} is neither host:port nor JSON with an Addr",
            String::from_utf8_lossy(kv.key()),
            String::from_utf8_lossy(kv.value())
        );
    }
    node
}

/// Applies one watch response in order and returns the highest revision it covered.
async fn apply_service_events(
    members: &Members,
    keys: &ServiceKeys,
    hub: &Hub,
    response: &WatchResponse,
) -> Option<i64> {
    // Registrations deregistered explicitly by a hound in this response: `(service, node)`.
    let tombstones: HashSet<(&str, &str)> = response
        .events()
        .iter()
        .filter(|event| event.event_type() == EventType::Put)
        .filter_map(|event| keys.parse_tombstone(event.kv()?.key_str().ok()?))
        .collect();
    let mut lease_alive: HashMap<i64, bool> = HashMap::new();
    let mut last = None;
    for event in response.events() {
        let Some(kv) = event.kv() else { continue };
        let revision = kv.mod_revision();
        last = Some(revision);
        let Some((service, key)) = parse_registration(keys, kv) else {
            hub.advance(revision);
            continue;
        };
        let change = match event.event_type() {
            EventType::Put => match parse_node(kv) {
                Some(node) => Change::Put(node),
                // A key that held a node and now holds garbage is no longer a node.
                None => Change::Removed(KeyEvent::Delete),
            },
            EventType::Delete => {
                let lease = event.prev_kv().map_or(0, |prev| prev.lease());
                let expired = if tombstones.contains(&(service, key)) || lease == 0 {
                    false
                } else if let Some(alive) = lease_alive.get(&lease) {
                    !alive
                } else {
                    let alive = lease_is_alive(members, lease).await;
                    lease_alive.insert(lease, alive);
                    !alive
                };
                Change::Removed(if expired {
                    KeyEvent::Expire
                } else {
                    KeyEvent::Delete
                })
            }
        };
        hub.apply(service, key, change, revision);
    }
    if last.is_none() && !response.created() {
        // A progress notification: every event up to the header revision has been sent.
        // (A `created` response is not one: events from the start revision may follow it.)
        let revision = response.header().map_or(0, |h| h.revision());
        hub.advance(revision);
        return (revision > 0).then_some(revision);
    }
    last
}

/// Whether etcd still knows `lease`. A key removed while its lease lives was deleted on purpose;
/// one whose lease is gone expired. If etcd cannot tell us, call it a deletion.
async fn lease_is_alive(members: &Members, lease: i64) -> bool {
    let deadline = Instant::now() + READ_DEADLINE;
    let asked = members.call(deadline, |mut client| async move {
        client.lease_time_to_live(lease, None).await
    });
    match asked.await {
        Ok(answer) => answer.ttl() > 0,
        Err(err) => {
            log::debug!("cannot ask etcd about lease {lease:x}: {err}");
            true
        }
    }
}

/// The event watch delivers custom events written under the event namespace, resuming after a
/// break; if the revision to resume from was compacted, it replays the events still stored.
struct EventFeed {
    keys: EventKeys,
}

impl Feed for EventFeed {
    const NAME: &'static str = EVENT_WATCH;

    fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    fn health(state: &HealthState) -> &WatchHealth {
        &state.events
    }

    /// Watches from the revision to resume from, or from now.
    async fn options(&self, watch: &mut Watch) -> Result<WatchOptions, Break> {
        let mut options = WatchOptions::new()
            .with_prefix()
            .with_progress_notify()
            .with_filters([etcd_client::WatchFilterType::NoDelete]);
        if let Some(revision) = watch.position.resume_from {
            options = options.with_start_revision(revision);
        }
        Ok(options)
    }

    async fn apply(&self, watch: &mut Watch, response: &WatchResponse) {
        let position = &mut watch.position;
        let header_revision = response.header().map_or(0, |h| h.revision());
        for event in response.events() {
            if let Some(kv) = event.kv() {
                deliver_stored_event(&watch.hub, kv);
                position.resume_from = Some(kv.mod_revision() + 1);
            }
        }
        // A fresh watch starts after the revision it was created at; a progress notification
        // vouches for everything up to its revision. A resumed watch's `created` answer does
        // not: the replayed events follow it.
        let fresh = response.created() && position.resume_from.is_none();
        let progress = !response.created() && response.events().is_empty();
        if (fresh || progress) && header_revision > 0 {
            position.resume_from = Some(header_revision + 1);
        }
    }

    /// Replays the events still stored from the revision to resume from, then watches on.
    async fn catch_up(&self, watch: &mut Watch, _compacted_at: i64) {
        log::warn!("{EVENT_WATCH} fell behind a compaction; replaying stored events");
        let from = watch.position.resume_from;
        match replay_stored_events(&watch.members, self.prefix(), &watch.hub, from).await {
            Ok(revision) => watch.position.resume_from = Some(revision + 1),
            Err(err) => {
                log::warn!("cannot replay events: {err}");
                tokio::time::sleep(watch.backoff.next_delay()).await;
            }
        }
    }

    /// Watches from now: events of a cluster that is gone cannot be replayed.
    fn start_afresh(&self, why: &str, position: &mut Position) {
        log::warn!("{why}; watching events afresh");
        *position = Position::default();
    }
}

/// Reads every key under `prefix` through any member that answers: at revision `at` if given
/// and etcd has not compacted it meanwhile, else at the latest. Returns the response and the
/// revision it shows.
pub(super) async fn read_prefix(
    members: &Members,
    prefix: &str,
    at: Option<i64>,
) -> Result<(etcd_client::GetResponse, i64), Error> {
    let deadline = Instant::now() + READ_DEADLINE;
    if let Some(at) = at {
        let options = GetOptions::new().with_prefix().with_revision(at);
        let read = members
            .call(deadline, |mut client| {
                let options = options.clone();
                async move {
                    match client.get(prefix, Some(options)).await {
                        // Compacted again meanwhile: not an error, read the latest instead.
                        Err(err) if compacted(&err) => Ok(None),
                        read => read.map(Some),
                    }
                }
            })
            .await?;
        match read {
            Some(response) => return Ok((response, at)),
            None => log::info!("revision {at} of {prefix} is compacted too; reading the latest"),
        }
    }
    let response = members
        .call(deadline, |mut client| async move {
            client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
        })
        .await?;
    let revision = response.header().map_or(0, |h| h.revision());
    Ok((response, revision))
}

/// Whether etcd refused a read because its revision is compacted.
fn compacted(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("required revision has been compacted"))
}

fn deliver_stored_event(hub: &Hub, kv: &KeyValue) {
    let key = String::from_utf8_lossy(kv.key());
    if let Some(event) = events::decode(&key, kv.value()) {
        hub.deliver_custom(&event.audience(), &event.event_type, &event.event_body);
    }
}

/// Delivers the stored events written at or after `from`, oldest first; returns the revision read.
async fn replay_stored_events(
    members: &Members,
    prefix: &str,
    hub: &Hub,
    from: Option<i64>,
) -> Result<i64, Error> {
    let (response, revision) = read_prefix(members, prefix, None).await?;
    let mut kvs: Vec<&KeyValue> = response
        .kvs()
        .iter()
        .filter(|kv| from.is_none_or(|from| kv.mod_revision() >= from))
        .collect();
    kvs.sort_by_key(|kv| kv.mod_revision());
    for kv in kvs {
        deliver_stored_event(hub, kv);
    }
    Ok(revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Health;

    fn reason(hub: &Hub) -> String {
        match hub.health() {
            Health::Ok => "ok".into(),
            Health::Unavailable(why) => why,
        }
    }

    #[test]
    fn healthz_names_the_watch_that_is_down_and_why() {
        let hub = Hub::default();
        let health = HealthState::default();
        health.set(&hub, &health.etcd_answers, false, Some("refused".into()));
        assert_eq!(reason(&hub), "etcd does not answer: refused");
        health.set(&hub, &health.etcd_answers, true, None);
        assert_eq!(
            reason(&hub),
            "the etcd watches are reconnecting: service watch: opening; event watch: opening; \
             election watch: opening"
        );
        health.set(&hub, &ServiceFeed::health(&health).watched, true, None);
        health.set(&hub, &health.elections.watched, true, None);
        *EventFeed::health(&health).problem.borrow_mut() = Break::Compacted(1).reason();
        health.set(&hub, &EventFeed::health(&health).watched, false, None);
        assert_eq!(
            reason(&hub),
            "the etcd watches are reconnecting: event watch: fell behind a compaction"
        );
        health.set(&hub, &EventFeed::health(&health).watched, true, None);
        assert_eq!(reason(&hub), "ok");
        *health.alarms.borrow_mut() = "NOSPACE (member 8e9e)".into();
        health.publish(&hub);
        assert_eq!(
            reason(&hub),
            "etcd raised an alarm: NOSPACE (member 8e9e); it refuses writes until an operator \
             clears it"
        );
        health.alarms.borrow_mut().clear();
        health.publish(&hub);
        assert_eq!(reason(&hub), "ok");
        assert_eq!(
            (ServiceFeed::NAME, EventFeed::NAME),
            (SERVICE_WATCH, EVENT_WATCH)
        );
    }
}
