//! The state every thread shares: the membership mirror, the subscriptions, and the fan-out that
//! delivers each message to its sockets without ever blocking on one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::describe::Status;
use crate::dns::zone::Zone;
use crate::election::{Campaign, Elections, Leadership};
use crate::error::{Error, Result};
use crate::membership::{Membership, Mirror};
use crate::message::{self, BROADCAST_NAMESPACE, Frame, KeyEvent};
use crate::metrics;
use crate::names::{EVERY_SERVICE, Node};
use crate::socket::close_code;
use crate::socket::mailbox::{Mailbox, Undelivered};

/// Early close requests kept for sockets that have not subscribed yet; past this the oldest is
/// dropped (it can only belong to a socket that ended before subscribing).
const CLOSED_EARLY_KEPT: usize = 1024;

/// Identifies one WebSocket for as long as hound runs.
pub type SocketId = u64;

/// What a change to one key did, as the watch saw it.
#[derive(Debug, Clone)]
pub enum Change {
    /// The key now holds this node.
    Put(Node),
    /// The key is gone: `KeyEvent::Delete` or `KeyEvent::Expire`.
    Removed(KeyEvent),
}

/// Who a custom event is for.
#[derive(Debug, Clone)]
pub enum Audience {
    /// Every socket, with namespace `*`.
    Everyone,
    /// The subscribers of each named service, with that service as namespace.
    Services(Vec<String>),
}

/// Whether hound can reach etcd and its watches run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    Unavailable(String),
}

/// What a socket was opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Register,
    Monitor,
    /// A server-sent event stream (`GET /etcd/watch`).
    Watch,
}

#[derive(Debug)]
struct Subscriber {
    mailbox: Mailbox,
    services: Vec<String>,
    kind: SocketKind,
}

#[derive(Debug)]
struct State {
    mirror: Mirror,
    /// The highest etcd revision of the service namespace applied to `mirror`.
    revision: i64,
    /// Every service's election, fed apart from the mirror (its own watch in etcd).
    elections: Elections,
    /// The highest etcd revision of the election namespace applied to `elections`.
    election_revision: i64,
    subscribers: HashMap<String, Vec<SocketId>>,
    sockets: HashMap<SocketId, Subscriber>,
    /// Sockets asked to close before they subscribed (a takeover while the older registration
    /// still waited for its own write): they close as soon as they subscribe.
    closed_early: HashMap<SocketId, u16>,
    health: Health,
    ever_healthy: bool,
    closing: bool,
}

/// Shared by the HTTP workers (reads, subscriptions), the etcd thread (changes, events) and
/// the socket threads (unsubscribe).
#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    /// Notified when `revision` advances or a socket leaves.
    progress: Condvar,
    next_socket: AtomicU64,
    /// The DNS answers, when DNS is on: updated under the lock with every membership change,
    /// before the sockets hear of it.
    zone: OnceLock<Arc<Zone>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            state: Mutex::new(State {
                mirror: Mirror::default(),
                revision: 0,
                elections: Elections::default(),
                election_revision: 0,
                subscribers: HashMap::new(),
                sockets: HashMap::new(),
                closed_early: HashMap::new(),
                health: Health::Unavailable("not connected to etcd yet".into()),
                ever_healthy: false,
                closing: false,
            }),
            progress: Condvar::new(),
            next_socket: AtomicU64::new(1),
            zone: OnceLock::new(),
        }
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as any single update
        // leaves it, so keep serving rather than poisoning every later request.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh socket id.
    pub fn next_socket_id(&self) -> SocketId {
        self.next_socket.fetch_add(1, Ordering::Relaxed)
    }

    // ---- reads -------------------------------------------------------------------------

    /// Sorted names of the services with at least one node.
    pub fn service_names(&self) -> Vec<String> {
        self.lock().mirror.service_names()
    }

    /// Whether the mirror holds the registration `key` (`<ip>:<port>`) of `service`.
    pub fn holds(&self, service: &str, key: &str) -> bool {
        self.lock().mirror.holds(service, key)
    }

    /// The current membership of one service.
    pub fn membership(&self, service: &str) -> Membership {
        self.lock().mirror.membership(service)
    }

    /// The nodes of each of `services` (every service, if `None`), sorted by service.
    pub fn nodes_by_service(&self, services: Option<&[String]>) -> Vec<(String, Vec<Node>)> {
        let state = self.lock();
        let names = match services {
            Some(services) => services.to_vec(),
            None => state.mirror.service_names(),
        };
        names
            .into_iter()
            .map(|service| {
                let nodes = state.mirror.nodes(&service);
                (service, nodes)
            })
            .collect()
    }

    /// The nodes of every service by status, for `/metrics`.
    pub fn node_gauges(&self) -> metrics::NodeGauges {
        let state = self.lock();
        let mut gauges = metrics::NodeGauges::default();
        for service in state.mirror.service_names() {
            for node in state.mirror.nodes(&service) {
                *match node.health() {
                    Status::Passing => &mut gauges.passing,
                    Status::Warning => &mut gauges.warning,
                    Status::Critical => &mut gauges.critical,
                    Status::Draining => &mut gauges.draining,
                } += 1;
            }
        }
        gauges
    }

    /// Keeps `zone` in step with the mirror from now on, starting with what it holds now.
    pub fn attach_zone(&self, zone: Arc<Zone>) {
        let state = self.lock();
        for service in state.mirror.service_names() {
            zone.update(&service, state.mirror.nodes(&service));
        }
        let _ = self.zone.set(zone);
    }

    /// Tells the zone, if any, of `service`'s new membership.
    fn update_zone(&self, state: &State, service: &str) {
        if let Some(zone) = self.zone.get() {
            zone.update(service, state.mirror.nodes(service));
        }
    }

    #[cfg(test)]
    pub fn health(&self) -> Health {
        self.lock().health.clone()
    }

    pub fn set_health(&self, health: Health) {
        let mut state = self.lock();
        state.ever_healthy |= health == Health::Ok;
        state.health = health;
        drop(state);
        self.progress.notify_all();
    }

    /// The health, but while hound has never yet been healthy (it is starting), first waits up
    /// to `timeout` for that to change, so a probe right after start-up is not failed for
    /// nothing.
    pub fn health_after_start(&self, timeout: Duration) -> Health {
        let (_, state) = self.wait_until(timeout, |state| state.ever_healthy);
        state.health.clone()
    }

    #[cfg(test)]
    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    /// Waits until the mirror has applied etcd revision `revision`; false on timeout.
    pub fn wait_for_revision(&self, revision: i64, timeout: Duration) -> bool {
        self.wait_until(timeout, |state| state.revision >= revision)
            .0
    }

    /// Waits until `done` holds for the state (re-checked whenever `progress` is notified);
    /// returns whether it did, and the state as last seen.
    fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&State) -> bool,
    ) -> (bool, MutexGuard<'_, State>) {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !done(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (false, state);
            }
            state = self
                .progress
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        (true, state)
    }

    // ---- changes from etcd -------------------------------------------------------------

    /// Applies one key change at `revision` and tells the service's subscribers if the
    /// membership changed.
    pub fn apply(&self, service: &str, key: &str, change: Change, revision: i64) {
        let mut state = self.lock();
        let (event, membership) = match change {
            Change::Put(node) => (KeyEvent::Put, state.mirror.put(service, key, node)),
            Change::Removed(event) => (event, state.mirror.remove(service, key)),
        };
        if let Some(membership) = membership {
            self.update_zone(&state, service);
            let frame = message::service_event(service, event, membership.json());
            state.deliver_to_service(service, &frame);
        }
        state.advance(revision);
        drop(state);
        self.progress.notify_all();
    }

    /// Records that everything up to `revision` has been applied (watch progress).
    pub fn advance(&self, revision: i64) {
        self.lock().advance(revision);
        self.progress.notify_all();
    }

    /// Replaces the mirror with a fresh read taken at `revision` and sends `SYNC` to the
    /// subscribers of every service whose membership changed — or of every subscribed service,
    /// if `everyone`. Returns how many services changed.
    pub fn resync(&self, fresh: Mirror, revision: i64, everyone: bool) -> usize {
        let mut state = self.lock();
        let changed = state.mirror.replace(fresh);
        for (service, _) in &changed {
            self.update_zone(&state, service);
        }
        let mut services: Vec<String> =
            changed.iter().map(|(service, _)| service.clone()).collect();
        if everyone {
            services.extend(state.subscribers.keys().cloned());
            if state.subscribers.contains_key(EVERY_SERVICE) {
                services.extend(state.mirror.service_names());
            }
            services.retain(|service| service != EVERY_SERVICE);
            services.sort();
            services.dedup();
        }
        for service in &services {
            let membership = state.mirror.membership(service);
            let frame = message::service_event(service, KeyEvent::Sync, membership.json());
            state.deliver_to_service(service, &frame);
        }
        state.revision = revision;
        drop(state);
        self.progress.notify_all();
        changed.len()
    }

    // ---- elections ---------------------------------------------------------------------

    /// Who leads `service`, as its subscribers were told.
    pub fn leadership(&self, service: &str) -> Leadership {
        self.lock().elections.leadership(service)
    }

    /// Applies one change of a campaign key (`key` is the part after `<service>/`; `None`:
    /// deleted) at `revision`, and tells the service's subscribers if the leader changed.
    pub fn apply_campaign(
        &self,
        service: &str,
        key: &str,
        campaign: Option<Campaign>,
        revision: i64,
    ) {
        let mut state = self.lock();
        let changed = match campaign {
            Some(campaign) => state.elections.put(service, key, campaign, revision),
            None => state.elections.remove(service, key, revision),
        };
        if let Some(leadership) = changed {
            let frame = message::leader_event(service, &leadership);
            state.deliver_to_service(service, &frame);
        }
        state.election_revision = state.election_revision.max(revision);
        drop(state);
        self.progress.notify_all();
    }

    /// Records that the election namespace has been applied up to `revision`.
    pub fn advance_elections(&self, revision: i64) {
        let mut state = self.lock();
        state.election_revision = state.election_revision.max(revision);
        drop(state);
        self.progress.notify_all();
    }

    /// Replaces every election with a fresh read taken at `revision`, telling the subscribers
    /// of each service whose leader changed.
    pub fn resync_elections(&self, fresh: Elections, revision: i64) {
        let mut state = self.lock();
        for (service, leadership) in state.elections.replace(fresh, revision) {
            let frame = message::leader_event(&service, &leadership);
            state.deliver_to_service(&service, &frame);
        }
        state.election_revision = revision;
        drop(state);
        self.progress.notify_all();
    }

    /// Waits until the elections have applied etcd revision `revision`; false on timeout.
    pub fn wait_for_election_revision(&self, revision: i64, timeout: Duration) -> bool {
        self.wait_until(timeout, |state| state.election_revision >= revision)
            .0
    }

    /// Delivers a custom event.
    pub fn deliver_custom(&self, audience: &Audience, event_type: &str, event_body: &str) {
        let mut state = self.lock();
        match audience {
            Audience::Everyone => {
                let frame = message::custom_event(BROADCAST_NAMESPACE, event_type, event_body);
                let ids: Vec<SocketId> = state.sockets.keys().copied().collect();
                state.deliver(&ids, &frame);
            }
            Audience::Services(services) => {
                for service in services {
                    let frame = message::custom_event(service, event_type, event_body);
                    state.deliver_to_service(service, &frame);
                }
            }
        }
    }

    // ---- sockets -----------------------------------------------------------------------

    /// Subscribes socket `id` to `services`: queues a `SYNC` for each first, atomically with
    /// the subscription, so the socket sees every later change and nothing twice.
    pub fn subscribe(
        &self,
        id: SocketId,
        kind: SocketKind,
        services: Vec<String>,
        mailbox: Mailbox,
    ) -> Result<()> {
        let mut state = self.lock();
        if state.closing {
            return Err(Error::Unavailable("hound is shutting down".into()));
        }
        // A socket that watches everything is filed under `*` alone, so it is never reached
        // twice; its SYNCs cover every known service plus any it named.
        let (services, syncs) = if services.iter().any(|s| s == EVERY_SERVICE) {
            let mut syncs: Vec<String> = state.mirror.service_names();
            syncs.extend(services.into_iter().filter(|s| s != EVERY_SERVICE));
            syncs.sort();
            syncs.dedup();
            (vec![EVERY_SERVICE.to_owned()], syncs)
        } else {
            (services.clone(), services)
        };
        for service in &syncs {
            let membership = state.mirror.membership(service);
            let frame = message::service_event(service, KeyEvent::Sync, membership.json());
            if mailbox.send(&frame).is_err() {
                return Err(Error::Internal(
                    "socket queue is too small for its SYNC".into(),
                ));
            }
            // The leader follows the SYNC, when the service has one.
            let leadership = state.elections.leadership(service);
            if leadership.leader.is_some()
                && mailbox
                    .send(&message::leader_event(service, &leadership))
                    .is_err()
            {
                return Err(Error::Internal(
                    "socket queue is too small for its LEADER".into(),
                ));
            }
        }
        if let Some(code) = state.closed_early.remove(&id) {
            // Superseded before it could subscribe: it opens only to be closed, and hears
            // nothing else.
            mailbox.request_close(code);
            return Ok(());
        }
        for service in &services {
            state
                .subscribers
                .entry(service.clone())
                .or_default()
                .push(id);
        }
        state.sockets.insert(
            id,
            Subscriber {
                mailbox,
                services,
                kind,
            },
        );
        Ok(())
    }

    /// Forgets socket `id`; called by the socket thread as it ends.
    pub fn unsubscribe(&self, id: SocketId) {
        let mut state = self.lock();
        state.remove(id);
        state.closed_early.remove(&id);
        drop(state);
        self.progress.notify_all();
    }

    /// Asks socket `id` to close with `code` and stops sending to it; a socket that has not
    /// subscribed yet closes as soon as it does.
    pub fn close_socket(&self, id: SocketId, code: u16) {
        let mut state = self.lock();
        if let Some(subscriber) = state.sockets.get(&id) {
            subscriber.mailbox.request_close(code);
        } else {
            // Bounded: an entry for a socket that ended in the meantime is never taken.
            if state.closed_early.len() >= CLOSED_EARLY_KEPT {
                let oldest = state.closed_early.keys().min().copied();
                if let Some(oldest) = oldest {
                    state.closed_early.remove(&oldest);
                }
            }
            state.closed_early.insert(id, code);
        }
        state.remove(id);
    }

    /// Refuses new subscriptions and asks every socket to close with `code`.
    pub fn close_all(&self, code: u16) {
        let mut state = self.lock();
        state.closing = true;
        for subscriber in state.sockets.values() {
            subscriber.mailbox.request_close(code);
        }
    }

    /// How many services have at least one node.
    pub fn service_count(&self) -> usize {
        self.lock().mirror.service_count()
    }

    pub fn socket_count(&self) -> usize {
        self.lock().sockets.len()
    }

    /// Open sockets by kind, for `/metrics`.
    pub fn socket_gauges(&self) -> metrics::SocketGauges {
        let state = self.lock();
        let count = |kind| state.sockets.values().filter(|s| s.kind == kind).count();
        metrics::SocketGauges {
            register: count(SocketKind::Register),
            monitor: count(SocketKind::Monitor),
            watch: count(SocketKind::Watch),
        }
    }

    /// Waits until every socket has left; false on timeout.
    pub fn wait_for_no_sockets(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |state| state.sockets.is_empty()).0
    }
}

impl State {
    fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// Delivers to the subscribers of `service` and to the sockets that watch everything.
    fn deliver_to_service(&mut self, service: &str, frame: &Frame) {
        let mut ids = self.subscribers.get(service).cloned().unwrap_or_default();
        if let Some(everything) = self.subscribers.get(EVERY_SERVICE) {
            ids.extend(everything);
        }
        self.deliver(&ids, frame);
    }

    /// Queues `frame` for each socket without blocking; a socket whose queue is full is closed
    /// with 1013 and dropped from every subscription.
    fn deliver(&mut self, ids: &[SocketId], frame: &Frame) {
        let mut gone = Vec::new();
        for id in ids {
            let Some(subscriber) = self.sockets.get(id) else {
                continue;
            };
            let mailbox = &subscriber.mailbox;
            match mailbox.send(frame) {
                Ok(()) => {}
                Err(Undelivered::Full) => {
                    metrics::SLOW_SOCKETS_CLOSED.add(1);
                    log::warn!("socket {id} does not read its messages; closing it (1013)");
                    mailbox.request_close(close_code::TRY_AGAIN_LATER);
                    gone.push(*id);
                }
                Err(Undelivered::Gone) => gone.push(*id),
            }
        }
        for id in gone {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: SocketId) {
        let Some(subscriber) = self.sockets.remove(&id) else {
            return;
        };
        for service in &subscriber.services {
            if let Some(ids) = self.subscribers.get_mut(service) {
                ids.retain(|known| *known != id);
                if ids.is_empty() {
                    self.subscribers.remove(service);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::doorbell::Doorbell;
    use crossbeam_channel::Receiver;
    use std::sync::Arc;

    fn socket(
        hub: &Hub,
        services: &[&str],
        capacity: usize,
    ) -> (SocketId, Receiver<Frame>, Arc<Doorbell>) {
        let doorbell = Arc::new(Doorbell::new().unwrap());
        let (mailbox, inbox) = Mailbox::new(capacity, Arc::default(), doorbell.clone());
        let id = hub.next_socket_id();
        hub.subscribe(
            id,
            SocketKind::Monitor,
            services.iter().map(|s| s.to_string()).collect(),
            mailbox,
        )
        .unwrap();
        (id, inbox, doorbell)
    }

    fn node(value: &str) -> Node {
        Node::parse_value(value).unwrap()
    }

    fn texts(inbox: &Receiver<Frame>) -> Vec<String> {
        inbox.try_iter().map(|f| f.as_str().to_owned()).collect()
    }

    #[test]
    fn sync_comes_first_then_changes() {
        let hub = Hub::default();
        hub.apply("api", "a", Change::Put(node("10.0.0.1:80")), 5);
        let (_, inbox, _) = socket(&hub, &["api"], 16);
        hub.apply("api", "b", Change::Put(node("10.0.0.2:80")), 6);
        hub.apply("api", "a", Change::Removed(KeyEvent::Expire), 7);
        let got = texts(&inbox);
        assert_eq!(got.len(), 3);
        assert!(got[0].contains("SYNC") && got[0].contains("10.0.0.1"));
        assert!(got[1].contains("PUT") && got[1].contains("10.0.0.2"));
        assert!(got[2].contains("EXPIRE") && !got[2].contains("10.0.0.1"));
        assert_eq!(hub.revision(), 7);
    }

    #[test]
    fn a_full_queue_closes_only_that_socket() {
        let hub = Hub::default();
        let (slow, _slow_inbox, slow_doorbell) = socket(&hub, &["api"], 2);
        let (_, fast_inbox, _) = socket(&hub, &["api"], 64);
        for port in 1..=10 {
            hub.apply(
                "api",
                &port.to_string(),
                Change::Put(node(&format!("10.0.0.1:{port}"))),
                port,
            );
            let _ = texts(&fast_inbox);
        }
        assert_eq!(
            slow_doorbell.close_requested(),
            Some(close_code::TRY_AGAIN_LATER)
        );
        assert_eq!(hub.socket_count(), 1);
        hub.apply("api", "x", Change::Put(node("10.0.0.9:1")), 11);
        assert_eq!(texts(&fast_inbox).len(), 1);
        hub.unsubscribe(slow);
    }

    #[test]
    fn custom_events_reach_their_audience() {
        let hub = Hub::default();
        let (_, a, _) = socket(&hub, &["a"], 16);
        let (_, b, _) = socket(&hub, &["b"], 16);
        let _ = (texts(&a), texts(&b));
        hub.deliver_custom(&Audience::Services(vec!["a".into()]), "t", "x");
        assert_eq!(texts(&a).len(), 1);
        assert!(texts(&b).is_empty());
        hub.deliver_custom(&Audience::Everyone, "t", "x");
        assert!(texts(&a)[0].contains("\"namespace\":\"*\""));
        assert_eq!(texts(&b).len(), 1);
    }

    #[test]
    fn watching_everything_includes_later_services_once() {
        let hub = Hub::default();
        hub.apply("a", "k", Change::Put(node("10.0.0.1:1")), 1);
        let (_, all, _) = socket(&hub, &["*", "b"], 16);
        let first = texts(&all);
        assert_eq!(first.len(), 2, "SYNC for a and b: {first:?}");
        hub.apply("c", "k", Change::Put(node("10.0.0.3:1")), 2);
        hub.deliver_custom(&Audience::Services(vec!["c".into()]), "t", "x");
        let later = texts(&all);
        assert_eq!(later.len(), 2, "{later:?}");
        assert!(later[0].contains("\"namespace\":\"c\"") && later[0].contains("PUT"));
        assert!(later[1].contains("event_type"));
    }

    #[test]
    fn wait_for_revision_times_out_and_succeeds() {
        let hub = Hub::default();
        assert!(!hub.wait_for_revision(3, Duration::from_millis(10)));
        hub.advance(3);
        assert!(hub.wait_for_revision(3, Duration::from_millis(10)));
    }

    #[test]
    fn a_socket_superseded_before_it_subscribed_closes_when_it_does() {
        let hub = Hub::default();
        hub.close_socket(9, close_code::SUPERSEDED);
        let doorbell = Arc::new(Doorbell::new().unwrap());
        let (mailbox, inbox) = Mailbox::new(4, Arc::default(), doorbell.clone());
        hub.subscribe(9, SocketKind::Register, vec!["api".into()], mailbox)
            .unwrap();
        assert_eq!(doorbell.close_requested(), Some(close_code::SUPERSEDED));
        assert_eq!(hub.socket_count(), 0, "it hears nothing more");
        assert_eq!(
            texts(&inbox).len(),
            1,
            "its SYNC, which the close overtakes"
        );
        hub.unsubscribe(9);
        assert!(hub.lock().closed_early.is_empty());
    }

    #[test]
    fn the_leader_follows_the_sync_and_every_change() {
        let hub = Hub::default();
        let campaign = |create_revision, value: &str| {
            Some(Campaign {
                create_revision,
                value: value.into(),
            })
        };
        hub.apply_campaign("api", "a1", campaign(3, "10.0.0.1:80"), 3);
        let (_, inbox, _) = socket(&hub, &["api", "db"], 16);
        let first = texts(&inbox);
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(first[0].contains("SYNC") && first[0].contains("\"api\""));
        assert_eq!(
            first[1],
            r#"{"namespace":"api","body":{"key_event":"LEADER","leader":{"ip":"10.0.0.1","port":80},"rev":3}}"#
        );
        assert!(first[2].contains("SYNC") && first[2].contains("\"db\""));
        hub.apply_campaign("api", "b2", campaign(4, "etcdctl"), 4);
        assert!(
            texts(&inbox).is_empty(),
            "a queued campaigner changes nothing"
        );
        hub.apply_campaign("api", "a1", None, 5);
        assert_eq!(
            texts(&inbox),
            [
                r#"{"namespace":"api","body":{"key_event":"LEADER","leader":{"value":"etcdctl"},"rev":4}}"#
            ]
        );
        hub.apply_campaign("api", "b2", None, 6);
        assert_eq!(
            texts(&inbox),
            [r#"{"namespace":"api","body":{"key_event":"LEADER","leader":null,"rev":6}}"#]
        );
        assert!(hub.wait_for_election_revision(6, Duration::ZERO));
        assert_eq!(hub.leadership("api").json(), r#"{"leader":null,"rev":6}"#);
    }

    #[test]
    fn closing_refuses_new_subscribers() {
        let hub = Hub::default();
        let (_, _, doorbell) = socket(&hub, &["a"], 4);
        hub.close_all(close_code::GOING_AWAY);
        assert_eq!(doorbell.close_requested(), Some(close_code::GOING_AWAY));
        let (mailbox, _) = Mailbox::new(4, Arc::default(), Arc::new(Doorbell::new().unwrap()));
        assert!(
            hub.subscribe(99, SocketKind::Monitor, vec!["a".into()], mailbox)
                .is_err()
        );
    }
}
