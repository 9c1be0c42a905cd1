//! The etcd thread's command loop and the registrations it holds: grant, write, keep alive,
//! take over, delete.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::{AbortHandle, spawn_local};
use tokio::time::Instant;

use super::events::Publisher;
use super::health::HealthState;
use super::lease;
use super::members::Members;
use super::watch;
use super::{ClusterStatus, Command, Settings};
use crate::error::Result;
use crate::hub::{Hub, SocketId};
use crate::keys::ServiceKeys;
use crate::metrics;
use crate::names::Node;
use crate::owners::{self, Owners, Replaced};

/// How one registration this hound holds is kept alive.
#[derive(Debug)]
struct Held {
    /// The current lease; the keeper replaces it if etcd forgets the old one.
    lease: Rc<Cell<i64>>,
    keeper: AbortHandle,
}

struct Registry {
    members: Members,
    settings: Rc<Settings>,
    keys: ServiceKeys,
    hub: Arc<Hub>,
    held: Owners<Held>,
}

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
                reply,
            } => {
                let deadline = Instant::from_std(deadline);
                let registered = registry.register(&service, &node, owner, deadline);
                let _ = reply.send(registered.await);
            }
            Command::Deregister {
                service,
                node,
                owner,
            } => registry.deregister(&service, &node, owner),
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
    async fn register(
        &mut self,
        service: &str,
        node: &Node,
        owner: SocketId,
        deadline: Instant,
    ) -> Result<i64> {
        let key = self.keys.registration(service, node);
        let ttl = self.settings.ttl;
        let lease = Rc::new(Cell::new(0));
        let revision =
            lease::grant_and_put(&self.members, &key, node, ttl, deadline, &lease).await?;
        let keeper = spawn_local(lease::keep_alive(
            self.members.clone(),
            key.clone(),
            node.clone(),
            lease.clone(),
            ttl,
        ))
        .abort_handle();
        let replaced = self.held.hold(key.clone(), owner, Held { lease, keeper });
        if let Some(Replaced { lease: held, .. }) = &replaced {
            // The key now points at the new lease, so revoking the old one deletes nothing.
            held.keeper.abort();
            spawn_local(lease::revoke_later(self.members.clone(), held.lease.get()));
        }
        owners::registered(&self.hub, &key, owner, replaced.map(|r| r.owner));
        Ok(revision)
    }

    fn deregister(&mut self, service: &str, node: &Node, owner: SocketId) {
        let key = self.keys.registration(service, node);
        if let Some(held) = self.held.release(&key, owner) {
            spawn_local(self.delete(key, held, None));
        }
    }

    /// Deletes every registration, trying until `deadline`.
    async fn deregister_all(&mut self, deadline: Instant) {
        let held: Vec<(String, Held)> = self.held.drain().collect();
        let deletions: Vec<_> = held
            .into_iter()
            .map(|(key, held)| spawn_local(self.delete(key, held, Some(deadline))))
            .collect();
        for deletion in deletions {
            let _ = deletion.await;
        }
    }

    /// Stops keeping `held` alive and returns the deletion of `key` to run.
    fn delete(
        &self,
        key: String,
        held: Held,
        deadline: Option<Instant>,
    ) -> impl Future<Output = ()> + 'static {
        held.keeper.abort();
        let tombstone = self.keys.tombstone(&key);
        lease::delete(
            self.members.clone(),
            key,
            tombstone,
            held.lease.get(),
            deadline,
        )
    }
}
