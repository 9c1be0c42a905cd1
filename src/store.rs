//! The narrow interface the rest of hound uses to register nodes, publish events and ask about
//! the cluster, with its two backends: etcd, and the embedded single-host store.
//!
//! Both feed the same [`Hub`](crate::hub::Hub), so the fan-out, the mirror and the socket code
//! do not know which one runs.

use std::time::Duration;

use crate::embedded::Embedded;
use crate::error::Result;
use crate::etcd::{ClusterStatus, CustomEvent, Etcd};
use crate::hub::SocketId;
use crate::names::Node;
use crate::status::StatusChange;

/// Where registrations live. Clones share the backend (the checker thread holds one).
#[derive(Debug, Clone)]
pub enum Store {
    Etcd(Etcd),
    Embedded(Embedded),
}

impl Store {
    /// Writes the registration and keeps it alive until [`Store::deregister`]; returns the
    /// revision of the write. A registration of the same key by another socket is taken over
    /// and that socket closed with 4000. `wanted` says whether the client still waits for
    /// the answer: a registration whose client has gone is not written (or is undone).
    ///
    /// With `campaign`, the node also campaigns for leadership of its service, on the
    /// registration's lease, in the same revision. A campaigning registration that takes over
    /// another campaigning one keeps its place in the election (the same lease, in both
    /// backends); one that does not campaign withdraws the older one's campaign.
    pub fn register(
        &self,
        service: &str,
        node: &Node,
        owner: SocketId,
        campaign: bool,
        wanted: &dyn Fn() -> bool,
    ) -> Result<i64> {
        match self {
            Store::Etcd(etcd) => etcd.register(service, node, owner, campaign, wanted),
            Store::Embedded(store) => store.register(service, node, owner, campaign, wanted),
        }
    }

    /// Deletes the registration `owner` holds, if it still holds it. Never blocks.
    pub fn deregister(&self, service: &str, node: &Node, owner: SocketId) {
        match self {
            Store::Etcd(etcd) => etcd.deregister(service, node, owner),
            Store::Embedded(store) => store.deregister(service, node, owner),
        }
    }

    /// Changes the status of the registration `owner` holds (if it still holds it): one write
    /// of the node's value on its lease when that changes what the node shows, none otherwise.
    /// Never blocks.
    pub fn report(&self, service: &str, node: &Node, owner: SocketId, change: StatusChange) {
        match self {
            Store::Etcd(etcd) => etcd.report(service, node, owner, change),
            Store::Embedded(store) => store.report(service, node, owner, &change),
        }
    }

    /// Marks every registration held now, and every one made from now on, `draining` (the
    /// start of a shutdown with a drain grace). Never blocks.
    pub fn drain_all(&self) {
        match self {
            Store::Etcd(etcd) => etcd.drain_all(),
            Store::Embedded(store) => store.drain_all(),
        }
    }

    /// Deletes every registration, waiting at most `timeout`.
    pub fn deregister_all(&self, timeout: Duration) -> Result<()> {
        match self {
            Store::Etcd(etcd) => etcd.deregister_all(timeout),
            Store::Embedded(store) => {
                store.deregister_all();
                Ok(())
            }
        }
    }

    pub fn status(&self) -> Result<ClusterStatus> {
        match self {
            Store::Etcd(etcd) => etcd.status(),
            Store::Embedded(_) => Ok(Embedded::status()),
        }
    }

    /// Delivers a custom event to every subscriber it targets, on every hound of the cluster.
    pub fn publish(&self, event: CustomEvent) -> Result<()> {
        match self {
            Store::Etcd(etcd) => etcd.publish(event),
            Store::Embedded(store) => {
                store.publish(&event);
                Ok(())
            }
        }
    }
}
