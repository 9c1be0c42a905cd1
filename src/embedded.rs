//! The embedded store: registrations, leases and events in memory, for trying hound without etcd
//! and for single-host development. Same semantics as the etcd backend, on one host:
//! revisions increase with every write, every registration has a lease of `--ttl` seconds that
//! a keeper thread refreshes every TTL/3, and a lease that was not refreshed in time (the
//! process was paused, say) expires — its node is reported as EXPIRE — and is then registered
//! again, as the etcd backend does when etcd loses a lease.
//!
//! Elections follow etcd's too: a campaigning registration has a campaign named after its
//! lease with the create revision of its first write; a takeover by another campaigning
//! socket keeps it (as the etcd backend keeps the lease); a deregistration removes it; a lease
//! that expires loses it and campaigns again, at the back of the queue.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::election::Campaign;
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
    /// The registration's campaign, if it campaigns: its key (the lease id in hex) and
    /// create revision.
    campaign: Option<(String, i64)>,
}

#[derive(Debug)]
struct State {
    revision: i64,
    /// The last lease id handed out; campaigns are named after them.
    last_lease: i64,
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
                last_lease: 0,
                registrations: Owners::default(),
                draining: false,
            })),
            hub: hub.clone(),
            ttl: Duration::from_secs(ttl_seconds.max(1) as u64),
            keys: ServiceKeys::new(namespace),
        };
        hub.resync(Mirror::default(), 1, false);
        hub.advance_elections(1);
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

    /// Registers at once (campaigning with `campaign`), unless `wanted` says the client has
    /// already gone.
    pub fn register(
        &self,
        service: &str,
        node: &Node,
        owner: SocketId,
        campaign: bool,
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
        // A campaigning takeover of a campaigning registration keeps its campaign.
        let kept = state
            .registrations
            .lease(&key)
            .and_then(|held| held.campaign.clone())
            .filter(|_| campaign);
        let campaign = match kept {
            Some(kept) => Some(kept),
            None if campaign => {
                state.last_lease += 1;
                Some((format!("{:x}", state.last_lease), revision))
            }
            None => None,
        };
        let lease = Lease {
            service: service.to_owned(),
            node: registered,
            refreshed: Instant::now(),
            campaign: campaign.clone(),
        };
        let replaced = state.registrations.hold(key.clone(), owner, lease);
        let withdrawn = replaced
            .as_ref()
            .and_then(|replaced| replaced.lease.campaign.clone())
            .filter(|old| campaign.as_ref() != Some(old));
        // Counted before the hub is told: a client that sees the message and then reads
        // /metrics must find the count that goes with it.
        Self::count_registrations(&state);
        // Applied under the store lock so the hub sees writes in revision order.
        self.hub
            .apply(service, &node.to_string(), Change::Put(written), revision);
        if let Some((old, _)) = withdrawn {
            self.hub.apply_campaign(service, &old, None, revision);
        }
        match campaign {
            Some((lease, create_revision)) => {
                // The campaign's value is `ip:port`, as in etcd's election protocol.
                let campaign = Campaign {
                    create_revision,
                    value: node.to_string(),
                };
                self.hub
                    .apply_campaign(service, &lease, Some(campaign), revision);
            }
            None => self.hub.advance_elections(revision),
        }
        drop(state);
        owners::registered(&self.hub, &key, owner, replaced.map(|r| r.owner));
        Ok(revision)
    }

    pub fn deregister(&self, service: &str, node: &Node, owner: SocketId) {
        let key = self.keys.registration(service, node);
        let mut state = self.lock();
        let Some(lease) = state.registrations.release(&key, owner) else {
            return; // Taken over by a newer socket, or already gone.
        };
        state.revision += 1;
        let revision = state.revision;
        Self::count_registrations(&state);
        self.hub.apply(
            service,
            &node.to_string(),
            Change::Removed(KeyEvent::Delete),
            revision,
        );
        self.withdraw(&lease, &mut state);
    }

    /// Removes a lease's campaign, if any, as etcd does when the lease is revoked: in the
    /// revision after its key's deletion.
    fn withdraw(&self, lease: &Lease, state: &mut State) {
        if let Some((key, _)) = &lease.campaign {
            state.revision += 1;
            self.hub
                .apply_campaign(&lease.service, key, None, state.revision);
        }
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
            self.withdraw(&lease, &mut state);
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
            let mut guard = self.lock();
            let state = &mut *guard;
            for lease in state.registrations.leases_mut() {
                let age = now.duration_since(lease.refreshed);
                if age >= self.ttl / 3 {
                    lease.refreshed = now;
                }
                if age <= self.ttl {
                    continue;
                }
                let (service, node) = (lease.service.clone(), lease.node.node().clone());
                let full_key = self.keys.registration(&service, &node);
                log::warn!("lease of {full_key} is gone; registering it again");
                metrics::LEASE_REGRANTS.add(1);
                let key = node.to_string();
                state.revision += 1;
                let revision = state.revision;
                self.hub
                    .apply(&service, &key, Change::Removed(KeyEvent::Expire), revision);
                if let Some((campaign, _)) = lease.campaign.take() {
                    // The campaign went with the lease; the new lease campaigns afresh.
                    self.hub.apply_campaign(&service, &campaign, None, revision);
                    state.last_lease += 1;
                    lease.campaign = Some((format!("{:x}", state.last_lease), revision + 1));
                }
                state.revision += 1;
                let revision = state.revision;
                self.hub
                    .apply(&service, &key, Change::Put(node.clone()), revision);
                if let Some((campaign, create_revision)) = &lease.campaign {
                    let value = node.to_string();
                    let campaign_now = Campaign {
                        create_revision: *create_revision,
                        value,
                    };
                    self.hub
                        .apply_campaign(&service, campaign, Some(campaign_now), revision);
                }
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
            .register("api", &node("10.0.0.1:80"), 1, false, &|| true)
            .unwrap();
        let second = store
            .register("api", &node("10.0.0.1:80"), 2, false, &|| true)
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
    fn campaigns_keep_their_place_through_a_takeover_and_end_with_the_registration() {
        let hub = Arc::new(Hub::default());
        let store = Embedded::start(hub.clone(), 15, "service").unwrap();
        let (a, b) = (node("10.0.0.1:80"), node("10.0.0.2:80"));
        let first = store.register("api", &a, 1, true, &|| true).unwrap();
        store.register("api", &b, 2, true, &|| true).unwrap();
        let leading = hub.leadership("api");
        assert_eq!(
            (leading.leader.as_deref(), leading.rev),
            (Some("10.0.0.1:80"), first)
        );
        // Socket 3 takes 10.0.0.1:80 over and campaigns: it keeps the lead and the rev.
        let taken = store.register("api", &a, 3, true, &|| true).unwrap();
        assert!(hub.wait_for_election_revision(taken, Duration::ZERO));
        assert_eq!(hub.leadership("api"), leading);
        // Socket 4 takes it over without campaigning: the campaign is withdrawn.
        store.register("api", &a, 4, false, &|| true).unwrap();
        let next = hub.leadership("api");
        assert_eq!(next.leader.as_deref(), Some("10.0.0.2:80"));
        assert!(next.rev > leading.rev);
        store.deregister("api", &b, 2);
        let none = hub.leadership("api");
        assert_eq!(none.leader, None);
        assert!(none.rev > next.rev);
    }

    #[test]
    fn a_client_gone_before_its_registration_is_not_registered() {
        let hub = Arc::new(Hub::default());
        let store = Embedded::start(hub.clone(), 15, "service").unwrap();
        let gone = store.register("api", &node("10.0.0.1:80"), 1, false, &|| false);
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
