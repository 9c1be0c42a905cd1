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
use super::lease::{self, Kept, Lease, Write, Written};
use super::members::Members;
use super::watch;
use super::{Abandon, ClusterStatus, Command, Settings};
use crate::error::{Error, Result};
use crate::hub::{Hub, SocketId};
use crate::keys::ServiceKeys;
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
}

impl Held {
    /// Stops the keeper; the value writer ends once `value` is dropped with this registration.
    fn stop_writing(&self) {
        self.keeper.abort();
    }
}

struct Registry {
    members: Members,
    settings: Rc<Settings>,
    keys: ServiceKeys,
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
        members,
        keys: settings.service_keys(),
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
                deadline,
                abandon,
                reply,
            } => {
                let deadline = Instant::from_std(deadline);
                let registered = registry.register(&service, &node, owner, deadline, &abandon);
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
        let node = registered.node();
        let lease = Rc::new(Lease::default());
        let written = tokio::select! {
            written = self.write_new(&key, node, &lease, deadline) => written,
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
        let keeper = spawn_local(lease::keep_alive(
            self.members.clone(),
            self.kept(service, node, key.clone(), reading),
            lease.clone(),
        ))
        .abort_handle();
        let held = Held {
            lease,
            keeper,
            registered,
            value,
            writing: Rc::default(),
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

    /// Grants a lease (recorded in `lease` at once) and writes `key` on it, taking the key
    /// over from any other lease; the revision of the write.
    async fn write_new(
        &self,
        key: &str,
        node: &Node,
        lease: &Lease,
        deadline: Instant,
    ) -> Result<i64> {
        let members = &self.members;
        lease.set(lease::grant(members, self.settings.ttl, deadline).await?);
        match lease::write(members, key, node, lease.id(), Write::Always, deadline).await? {
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
    ) -> Kept {
        let (hub, service, node_key) = (self.hub.clone(), service.to_owned(), node.to_string());
        Kept {
            key,
            node: reading,
            ttl: self.settings.ttl,
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
