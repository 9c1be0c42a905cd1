//! The etcd thread's command loop and the registrations it holds: grant, write, keep alive,
//! take over, delete.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch as latest;
use tokio::task::{AbortHandle, spawn_local};
use tokio::time::Instant;

use super::events::Publisher;
use super::health::HealthState;
use super::keepalive::KeepAlives;
use super::lease::{self, Campaigning, Kept, Lease, Write, Written};
use super::members::Members;
use super::watch;
use super::{Abandon, ClusterStatus, Command, Settings};
use crate::error::{Error, Result};
use crate::hub::{Hub, SocketId};
use crate::keys::{ElectionKeys, ServiceKeys};
use crate::metrics;
use crate::names::Node;
use crate::owners::{self, Owners, Replaced};
use crate::status::{Registered, StatusChange};

/// How one registration this hound holds is kept alive.
#[derive(Debug)]
struct Held {
    /// The current lease; the keeper replaces it if etcd forgets the old one.
    lease: Rc<Lease>,
    keeper: AbortHandle,
    /// The node with its status, and the channel that tells the keeper and the value writer
    /// how it reads now.
    registered: Registered,
    value: latest::Sender<Node>,
    /// Whether a value writer runs (it clears this as it ends). No handle is kept: a finished
    /// task's memory lives as long as any handle to it, and a thousand checked nodes would
    /// each keep one. Dropping `value` ends the writer after the write in flight, which lands
    /// only while the key is on this lease.
    writing: Rc<Cell<bool>>,
    /// Whether the registration campaigns, with a key on `lease`.
    campaign: bool,
}

impl Held {
    /// Stops the keeper; the value writer ends once `value` is dropped with this registration.
    fn stop_writing(&self) {
        self.keeper.abort();
    }
}

struct Registry {
    members: Members,
    /// The keep-alive stream every keeper refreshes its lease through.
    keep_alives: KeepAlives,
    settings: Rc<Settings>,
    keys: ServiceKeys,
    elections: ElectionKeys,
    hub: Arc<Hub>,
    held: Owners<Held>,
    /// Set by a drain: every registration, present and future, reads `draining`.
    draining: bool,
    /// Status writes in flight at once, at most [`STATUS_WRITES_IN_FLIGHT`].
    status_writes: Rc<Semaphore>,
}

/// How many status writes go to etcd at once; the rest wait their turn (in order per node).
const STATUS_WRITES_IN_FLIGHT: usize = 16;

/// Sets up the members, starts the watches, then serves commands until the handle is dropped.
pub(super) async fn serve(
    settings: Settings,
    hub: Arc<Hub>,
    mut commands: UnboundedReceiver<Command>,
    started: crossbeam_channel::Sender<Result<()>>,
) {
    let settings = Rc::new(settings);
    let health = Rc::new(HealthState::default());
    let members = match Members::start(settings.clone(), hub.clone(), health.clone()).await {
        Ok(members) => members,
        Err(err) => {
            let _ = started.send(Err(err));
            return;
        }
    };
    let _ = started.send(Ok(()));
    watch::spawn(&members, &settings, &hub, &health);
    let publisher = Rc::new(Publisher::new(members.clone(), settings.event_keys()));

    let mut registry = Registry {
        keep_alives: KeepAlives::new(members.clone()),
        members,
        keys: settings.service_keys(),
        elections: settings.election_keys(),
        settings,
        hub,
        held: Owners::default(),
        draining: false,
        status_writes: Rc::new(Semaphore::new(STATUS_WRITES_IN_FLIGHT)),
    };
    while let Some(command) = commands.recv().await {
        match command {
            // Registrations are handled one at a time so two sockets racing for one key
            // cannot leave the registry and etcd disagreeing about who holds it.
            Command::Register {
                service,
                node,
                owner,
                campaign,
                deadline,
                abandon,
                reply,
            } => {
                let deadline = Instant::from_std(deadline);
                let campaign = campaign.then(|| Campaigning {
                    keys: registry.elections.clone(),
                    service: service.clone(),
                });
                let registered =
                    registry.register(&service, &node, owner, campaign, deadline, &abandon);
                let _ = reply.send(registered.await);
            }
            Command::Deregister {
                service,
                node,
                owner,
            } => registry.deregister(&service, &node, owner),
            Command::Report {
                service,
                node,
                owner,
                change,
            } => registry.report(&service, &node, owner, &change),
            Command::DrainAll => registry.drain_all(),
            Command::DeregisterAll { deadline, reply } => {
                registry.deregister_all(Instant::from_std(deadline)).await;
                let _ = reply.send(Ok(()));
            }
            Command::Status { deadline, reply } => {
                let members = registry.members.clone();
                spawn_local(async move {
                    let _ = reply.send(status(&members, Instant::from_std(deadline)).await);
                });
            }
            Command::Publish {
                event,
                deadline,
                reply,
            } => {
                let publisher = publisher.clone();
                spawn_local(async move {
                    let deadline = Instant::from_std(deadline);
                    let _ = reply.send(publisher.publish(event, deadline).await);
                });
            }
        }
        metrics::REGISTRATIONS.store(registry.held.len() as u64, Ordering::Relaxed);
    }
}

/// What the member that answers says about the cluster, and its own id.
async fn status(members: &Members, deadline: Instant) -> Result<ClusterStatus> {
    let status = members
        .call(deadline, |mut client| async move { client.status().await })
        .await?;
    Ok(ClusterStatus {
        version: status.version().to_owned(),
        leader: status.leader(),
        member_id: status.header().map_or(0, |h| h.member_id()),
    })
}

impl Registry {
    /// Registers `node` for `owner`, unless or until `abandon` says its client has gone: then
    /// the command is dropped, or stopped and what it wrote deleted.
    async fn register(
        &mut self,
        service: &str,
        node: &Node,
        owner: SocketId,
        campaign: Option<Campaigning>,
        deadline: Instant,
        abandon: &Abandon,
    ) -> Result<i64> {
        let gone = || Error::Unavailable("the client went away before it was registered".into());
        if abandon.is_abandoned() {
            log::debug!("not registering {service}/{node}: its client has gone");
            return Err(gone());
        }
        let key = self.keys.registration(service, node);
        let mut registered = Registered::new(node.clone());
        if self.draining {
            registered.change(&StatusChange::Drain);
        }
        if let Some(campaign) = &campaign
            && let Some(revision) = self
                .take_over_campaign(&key, &registered, owner, campaign, deadline, abandon)
                .await?
        {
            return Ok(revision);
        }
        let node = registered.node();
        let lease = Rc::new(Lease::default());
        let written = tokio::select! {
            written = self.write_new(&key, node, &lease, campaign.as_ref(), deadline) => written,
            () = abandon.abandoned() => Err(gone()),
        };
        let revision = match written {
            Ok(revision) => revision,
            Err(err) => {
                // A write still on its way lands on this lease, which the deletion revokes.
                if lease.id() != 0 {
                    spawn_local(self.delete(key, lease, None));
                }
                return Err(err);
            }
        };
        let (value, reading) = latest::channel(node.clone());
        let is_campaigning = campaign.is_some();
        let keeper = spawn_local(lease::keep_alive(
            self.members.clone(),
            self.keep_alives.clone(),
            self.kept(service, node, key.clone(), reading, campaign),
            lease.clone(),
        ))
        .abort_handle();
        let held = Held {
            lease,
            keeper,
            registered,
            value,
            writing: Rc::default(),
            campaign: is_campaigning,
        };
        let replaced = self.held.hold(key.clone(), owner, held);
        if let Some(Replaced { lease: held, .. }) = &replaced {
            // The key now points at the new lease, so revoking the old one deletes nothing;
            // and whatever the old keeper was writing, it writes only a missing key (and the
            // old value writer only a key on its own lease).
            held.stop_writing();
            held.lease.release_held_write().await;
            spawn_local(lease::revoke_later(self.members.clone(), held.lease.id()));
        }
        owners::registered(&self.hub, &key, owner, replaced.map(|r| r.owner));
        Ok(revision)
    }

    /// A campaigning registration of a key this hound holds for a campaigning socket takes it
    /// over on the same lease, rather than on a new one as other takeovers do: the campaign
    /// key is named after the lease, so it keeps its create revision and the node its place
    /// in the election (a leader stays leader, with the same `rev`). The key is written again
    /// on that lease (with the campaign key), and the older socket is closed with 4000. The
    /// keeper and the value writer stay; what the node now says (its description, its check's
    /// first status) is the new registration's.
    /// `None` if there is no such registration or etcd lost its lease: then the caller
    /// registers on a new lease as usual.
    async fn take_over_campaign(
        &mut self,
        key: &str,
        registered: &Registered,
        owner: SocketId,
        campaign: &Campaigning,
        deadline: Instant,
        abandon: &Abandon,
    ) -> Result<Option<i64>> {
        let lease = match self.held.lease(key) {
            Some(held) if held.campaign && held.lease.id() != 0 => held.lease.clone(),
            _ => return Ok(None),
        };
        let (members, id, node) = (&self.members, lease.id(), registered.node());
        let written = tokio::select! {
            written = lease::write(members, key, node, id, Write::Always, Some(campaign), deadline)
                => written?,
            () = abandon.abandoned() => return Err(Error::Unavailable(
                "the client went away before it was registered".into(),
            )),
        };
        let Written::At(revision) = written else {
            return Ok(None);
        };
        // The registration may have ended while the write was on its way: then it is not
        // ours to take over any more, and a new lease is the safe course.
        if self
            .held
            .lease(key)
            .is_none_or(|held| !Rc::ptr_eq(&held.lease, &lease))
        {
            return Ok(None);
        }
        let previous = self.held.transfer(key, owner);
        if let Some(held) = self.held.held_by_mut(key, owner) {
            // The old registration's value writer may still have a write of its status on the
            // way, on this same lease: told of the new value, it writes that once more after.
            // A keeper that puts the key back writes it too.
            held.value.send_replace(node.clone());
            held.registered = registered.clone();
        }
        owners::registered(&self.hub, key, owner, previous);
        Ok(Some(revision))
    }

    /// Grants a lease (recorded in `lease` at once) and writes `key` on it, taking the key
    /// over from any other lease, with the campaign key if it campaigns; the revision of the
    /// write.
    async fn write_new(
        &self,
        key: &str,
        node: &Node,
        lease: &Lease,
        campaign: Option<&Campaigning>,
        deadline: Instant,
    ) -> Result<i64> {
        let members = &self.members;
        lease.set(lease::grant(members, self.settings.ttl, deadline).await?);
        let always = Write::Always;
        match lease::write(members, key, node, lease.id(), always, campaign, deadline).await? {
            Written::At(revision) => Ok(revision),
            // An unconditional write either lands or finds its lease gone.
            _ => Err(Error::Unavailable(
                "the registration's lease was revoked before its key was written".into(),
            )),
        }
    }

    /// What the keeper of `key` (`node` under `service`) keeps, with a look at hound's mirror
    /// to tell whether the key is still in etcd.
    fn kept(
        &self,
        service: &str,
        node: &Node,
        key: String,
        reading: latest::Receiver<Node>,
        campaign: Option<Campaigning>,
    ) -> Kept {
        let (hub, service, node_key) = (self.hub.clone(), service.to_owned(), node.to_string());
        Kept {
            key,
            node: reading,
            ttl: self.settings.ttl,
            campaign,
            in_mirror: Box::new(move || hub.holds(&service, &node_key)),
        }
    }

    fn deregister(&mut self, service: &str, node: &Node, owner: SocketId) {
        let key = self.keys.registration(service, node);
        if let Some(held) = self.held.release(&key, owner) {
            held.stop_writing();
            spawn_local(self.delete(key, held.lease, None));
        }
    }

    /// Applies a status change to the registration `owner` holds: if the node now reads
    /// differently, its value writer writes it (one write), else nothing happens.
    fn report(&mut self, service: &str, node: &Node, owner: SocketId, change: &StatusChange) {
        let key = self.keys.registration(service, node);
        if let Some(held) = self.held.held_by_mut(&key, owner) {
            Self::rewrite(&self.members, &self.status_writes, key, held, change);
        }
    }

    /// Marks every registration `draining`, and every later one.
    fn drain_all(&mut self) {
        self.draining = true;
        let members = self.members.clone();
        for (key, held) in self.held.iter_mut() {
            let change = &StatusChange::Drain;
            Self::rewrite(&members, &self.status_writes, key.to_owned(), held, change);
        }
    }

    /// Applies `change` to `held`, handing the node to its value writer if it now reads
    /// differently: a writer still running writes it after its current write (it looks for
    /// newer values before it ends, and nothing else runs on this thread in between); else a
    /// new one starts.
    fn rewrite(
        members: &Members,
        writes: &Rc<Semaphore>,
        key: String,
        held: &mut Held,
        change: &StatusChange,
    ) {
        let Some(node) = held.registered.change(change) else {
            return;
        };
        held.value.send_replace(node.clone());
        if !held.writing.replace(true) {
            let mut wanted = held.value.subscribe();
            wanted.mark_changed();
            let writer = lease::write_value(
                members.clone(),
                key,
                held.lease.clone(),
                wanted,
                writes.clone(),
                held.writing.clone(),
            );
            drop(spawn_local(writer));
        }
    }

    /// Deletes every registration, trying until `deadline`.
    async fn deregister_all(&mut self, deadline: Instant) {
        let held: Vec<(String, Held)> = self.held.drain().collect();
        let deletions: Vec<_> = held
            .into_iter()
            .map(|(key, held)| {
                held.stop_writing();
                spawn_local(self.delete(key, held.lease, Some(deadline)))
            })
            .collect();
        for deletion in deletions {
            let _ = deletion.await;
        }
    }

    /// The deletion of `key` from `lease`, and the lease's revocation, to run once nothing
    /// keeps the lease alive.
    fn delete(
        &self,
        key: String,
        lease: Rc<Lease>,
        deadline: Option<Instant>,
    ) -> impl Future<Output = ()> + 'static {
        let (members, tombstone) = (self.members.clone(), self.keys.tombstone(&key));
        async move {
            lease.release_held_write().await;
            lease::delete(members, key, tombstone, lease.id(), deadline).await;
        }
    }
}
