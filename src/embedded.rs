//! The embedded store: registrations, leases and events in memory, for trying hound without etcd
//! and for single-host development. Same semantics as the etcd backend, on one host:
//! revisions increase with every write, every registration has a lease of `--ttl` seconds that
//! a keeper thread refreshes every TTL/3, and a lease that was not refreshed in time (the
//! process was paused, say) expires — its node is reported as EXPIRE — and is then registered
//! again, as the etcd backend does when etcd loses a lease.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::etcd::{ClusterStatus, CustomEvent};
use crate::hub::{Change, Health, Hub, SocketId};
use crate::keys::ServiceKeys;
use crate::membership::Mirror;
use crate::message::KeyEvent;
use crate::metrics;
use crate::names::Node;
use crate::owners::{self, Owners};
use crate::status::{Registered, StatusChange};

/// The member id `/etcd/leader` reports for both fields.
pub const MEMBER_ID: u64 = 1;
/// How often the keeper looks at the leases.
const KEEPER_TICK: Duration = Duration::from_millis(100);

/// One registration's lease.
#[derive(Debug)]
struct Lease {
    service: String,
    /// The node as registered, with its status.
    node: Registered,
    /// When the lease was last refreshed.
    refreshed: Instant,
}

#[derive(Debug)]
struct State {
    revision: i64,
    /// By key `<namespace>/<service>/<node>`.
    registrations: Owners<Lease>,
    /// Whether hound is draining (shutting down with a grace): new registrations are too.
    draining: bool,
}

/// The in-memory store. Clones share it.
#[derive(Debug, Clone)]
pub struct Embedded {
    state: Arc<Mutex<State>>,
    hub: Arc<Hub>,
    ttl: Duration,
    /// Only for log lines, which name keys as the etcd backend would.
    keys: ServiceKeys,
}

impl Embedded {
    /// Starts the store and its lease keeper, and tells the hub it is ready.
    pub fn start(hub: Arc<Hub>, ttl_seconds: i64, namespace: &str) -> std::io::Result<Embedded> {
        let store = Embedded {
            state: Arc::new(Mutex::new(State {
                revision: 1,
                registrations: Owners::default(),
                draining: false,
            })),
            hub: hub.clone(),
            ttl: Duration::from_secs(ttl_seconds.max(1) as u64),
            keys: ServiceKeys::new(namespace),
        };
        hub.resync(Mirror::default(), 1, false);
        hub.set_health(Health::Ok);
        let keeper = store.clone();
        std::thread::Builder::new()
            .name("lease-keeper".into())
            .stack_size(64 * 1024)
            .spawn(move || keeper.keep_leases())?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_registrations(state: &State) {
        metrics::REGISTRATIONS.store(
            state.registrations.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Registers at once, unless `wanted` says the client has already gone.
    pub fn register(
        &self,
        service: &str,
        node: &Node,
        owner: SocketId,
        wanted: &dyn Fn() -> bool,
    ) -> crate::Result<i64> {
        if !wanted() {
            return Err(crate::Error::Unavailable(
                "the client went away before its registration was written".into(),
            ));
        }
        let key = self.keys.registration(service, node);
        let mut state = self.lock();
        state.revision += 1;
        let revision = state.revision;
        let mut registered = Registered::new(node.clone());
        if state.draining {
            registered.change(&StatusChange::Drain);
        }
        let written = registered.node().clone();
        let lease = Lease {
            service: service.to_owned(),
            node: registered,
            refreshed: Instant::now(),
        };
        let replaced = state.registrations.hold(key.clone(), owner, lease);
        // Counted before the hub is told: a client that sees the message and then reads
        // /metrics must find the count that goes with it.
        Self::count_registrations(&state);
        // Applied under the store lock so the hub sees writes in revision order.
        self.hub
            .apply(service, &node.to_string(), Change::Put(written), revision);
        drop(state);
        owners::registered(&self.hub, &key, owner, replaced.map(|r| r.owner));
        Ok(revision)
    }

    pub fn deregister(&self, service: &str, node: &Node, owner: SocketId) {
        let key = self.keys.registration(service, node);
        let mut state = self.lock();
        if state.registrations.release(&key, owner).is_none() {
            return; // Taken over by a newer socket, or already gone.
        }
        state.revision += 1;
        let revision = state.revision;
        Self::count_registrations(&state);
        self.hub.apply(
            service,
            &node.to_string(),
            Change::Removed(KeyEvent::Delete),
            revision,
        );
    }

    /// Applies a status change to the registration `owner` holds; a PUT only if the node now
    /// reads differently.
    pub fn report(&self, service: &str, node: &Node, owner: SocketId, change: &StatusChange) {
        let key = self.keys.registration(service, node);
        let mut state = self.lock();
        let Some(lease) = state.registrations.held_by_mut(&key, owner) else {
            return; // Taken over, or gone.
        };
        let Some(changed) = lease.node.change(change).cloned() else {
            return;
        };
        metrics::STATUS_WRITES.add(1);
        state.revision += 1;
        let revision = state.revision;
        self.hub
            .apply(service, &node.to_string(), Change::Put(changed), revision);
    }

    /// Marks every registration `draining`, and every later one.
    pub fn drain_all(&self) {
        let mut state = self.lock();
        state.draining = true;
        let mut changed = Vec::new();
        for lease in state.registrations.leases_mut() {
            if let Some(node) = lease.node.change(&StatusChange::Drain) {
                changed.push((lease.service.clone(), node.clone()));
            }
        }
        for (service, node) in changed {
            metrics::STATUS_WRITES.add(1);
            state.revision += 1;
            let revision = state.revision;
            self.hub
                .apply(&service, &node.to_string(), Change::Put(node), revision);
        }
    }

    pub fn deregister_all(&self) {
        let mut state = self.lock();
        let held: Vec<Lease> = state
            .registrations
            .drain()
            .map(|(_, lease)| lease)
            .collect();
        Self::count_registrations(&state);
        for lease in held {
            state.revision += 1;
            self.hub.apply(
                &lease.service,
                &lease.node.node().to_string(),
                Change::Removed(KeyEvent::Delete),
                state.revision,
            );
        }
    }

    pub fn status() -> ClusterStatus {
        ClusterStatus {
            version: "embedded".into(),
            leader: MEMBER_ID,
            member_id: MEMBER_ID,
        }
    }

    pub fn publish(&self, event: &CustomEvent) {
        self.hub
            .deliver_custom(&event.audience, &event.event_type, &event.event_body);
    }

    /// Refreshes every lease each TTL/3. A lease found older than its TTL expired while this
    /// thread could not run: its node is reported as EXPIRE, then registered again.
    fn keep_leases(self) {
        loop {
            std::thread::sleep(KEEPER_TICK);
            let now = Instant::now();
            let mut state = self.lock();
            let mut expired = Vec::new();
            for lease in state.registrations.leases_mut() {
                let age = now.duration_since(lease.refreshed);
                if age > self.ttl {
                    expired.push((lease.service.clone(), lease.node.node().clone()));
                }
                if age >= self.ttl / 3 {
                    lease.refreshed = now;
                }
            }
            for (service, node) in expired {
                let full_key = self.keys.registration(&service, &node);
                log::warn!("lease of {full_key} is gone; registering it again");
                metrics::LEASE_REGRANTS.add(1);
                let key = node.to_string();
                state.revision += 1;
                let revision = state.revision;
                self.hub
                    .apply(&service, &key, Change::Removed(KeyEvent::Expire), revision);
                state.revision += 1;
                let revision = state.revision;
                self.hub.apply(&service, &key, Change::Put(node), revision);
                log::info!("registered {full_key} again with a new lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::SocketKind;
    use crate::socket::close_code;
    use crate::socket::doorbell::Doorbell;
    use crate::socket::mailbox::Mailbox;

    fn node(value: &str) -> Node {
        Node::parse_value(value).unwrap()
    }

    #[test]
    fn register_takeover_and_deregister() {
        let hub = Arc::new(Hub::default());
        let store = Embedded::start(hub.clone(), 15, "service").unwrap();
        let doorbell = Arc::new(Doorbell::new().unwrap());
        let (mailbox, inbox) = Mailbox::new(16, Arc::default(), doorbell.clone());
        hub.subscribe(1, SocketKind::Register, vec!["api".into()], mailbox)
            .unwrap();
        let first = store
            .register("api", &node("10.0.0.1:80"), 1, &|| true)
            .unwrap();
        let second = store
            .register("api", &node("10.0.0.1:80"), 2, &|| true)
            .unwrap();
        assert!(second > first);
        assert_eq!(doorbell.close_requested(), Some(close_code::SUPERSEDED));
        assert_eq!(
            hub.membership("api").json(),
            r#"[{"ip":"10.0.0.1","port":80}]"#
        );
        store.deregister("api", &node("10.0.0.1:80"), 1);
        assert_eq!(
            hub.service_names(),
            ["api"],
            "the old owner cannot delete it"
        );
        store.deregister("api", &node("10.0.0.1:80"), 2);
        assert!(hub.service_names().is_empty());
        let messages: Vec<String> = inbox.try_iter().map(|f| f.as_str().to_owned()).collect();
        assert!(messages[0].contains("SYNC"));
        assert!(messages[1].contains("PUT"));
    }

    #[test]
    fn a_client_gone_before_its_registration_is_not_registered() {
        let hub = Arc::new(Hub::default());
        let store = Embedded::start(hub.clone(), 15, "service").unwrap();
        let gone = store.register("api", &node("10.0.0.1:80"), 1, &|| false);
        assert!(
            matches!(gone, Err(crate::Error::Unavailable(_))),
            "{gone:?}"
        );
        assert!(hub.service_names().is_empty());
        assert_eq!(hub.revision(), 1, "nothing was written");
    }

    #[test]
    fn status_names_one_member() {
        let status = Embedded::status();
        assert_eq!(
            (status.version.as_str(), status.leader, status.member_id),
            ("embedded", 1, 1)
        );
    }
}
