//! Which socket holds each registration of this hound, and the takeover rule both backends
//! follow: a second registration of the same key by another socket takes it over, and the older
//! socket is closed with 4000. The backends keep their own lease mechanics in `L`.

use std::collections::HashMap;

use crate::hub::{Hub, SocketId};
use crate::socket::close_code;

/// The registrations this hound holds, by key, each with its owner and the backend's lease.
#[derive(Debug)]
pub(crate) struct Owners<L> {
    held: HashMap<String, Holding<L>>,
}

#[derive(Debug)]
struct Holding<L> {
    owner: SocketId,
    lease: L,
}

/// A registration replaced by a newer one of the same key.
#[derive(Debug)]
pub(crate) struct Replaced<L> {
    pub owner: SocketId,
    /// The lease the key no longer points at: the backend lets it go.
    pub lease: L,
}

impl<L> Default for Owners<L> {
    fn default() -> Self {
        Owners {
            held: HashMap::new(),
        }
    }
}

impl<L> Owners<L> {
    /// Records `owner` as the holder of `key`, written on `lease`; returns the registration it
    /// replaces, if any. Call [`registered`] once the write is done.
    pub fn hold(&mut self, key: String, owner: SocketId, lease: L) -> Option<Replaced<L>> {
        self.held
            .insert(key, Holding { owner, lease })
            .map(|previous| Replaced {
                owner: previous.owner,
                lease: previous.lease,
            })
    }

    /// The backend's lease of `key`, if this hound holds it.
    pub fn lease(&self, key: &str) -> Option<&L> {
        self.held.get(key).map(|held| &held.lease)
    }

    /// Makes `owner` the holder of `key`, keeping its lease (a takeover that keeps the node's
    /// place in its election); returns the previous holder, or `None` if `key` is not held.
    pub fn transfer(&mut self, key: &str, owner: SocketId) -> Option<SocketId> {
        let held = self.held.get_mut(key)?;
        Some(std::mem::replace(&mut held.owner, owner))
    }

    /// Forgets `key` if `owner` still holds it and returns its lease for the backend to delete;
    /// `None` if a newer socket took it over (that socket's registration stays) or it is gone.
    pub fn release(&mut self, key: &str, owner: SocketId) -> Option<L> {
        if self.held.get(key).is_none_or(|held| held.owner != owner) {
            return None;
        }
        log::info!("deregistering {key} (socket {owner})");
        self.held.remove(key).map(|held| held.lease)
    }

    /// The lease of `key` if `owner` holds it (a socket taken over holds nothing).
    pub fn held_by_mut(&mut self, key: &str, owner: SocketId) -> Option<&mut L> {
        self.held
            .get_mut(key)
            .filter(|held| held.owner == owner)
            .map(|held| &mut held.lease)
    }

    /// Forgets every registration, handing back each key and lease.
    pub fn drain(&mut self) -> impl Iterator<Item = (String, L)> + '_ {
        self.held.drain().map(|(key, held)| (key, held.lease))
    }

    /// Every registration held, with its key.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut L)> + '_ {
        self.held
            .iter_mut()
            .map(|(key, held)| (key.as_str(), &mut held.lease))
    }

    /// The leases of every registration held.
    pub fn leases_mut(&mut self) -> impl Iterator<Item = &mut L> + '_ {
        self.held.values_mut().map(|held| &mut held.lease)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }
}

/// Applies the takeover rule once `owner`'s registration of `key` is written: if it replaced
/// another socket's (`previous` is that socket), the older socket is closed with 4000, since
/// the node now lives on the newer one. Logs the registration either way.
pub(crate) fn registered(hub: &Hub, key: &str, owner: SocketId, previous: Option<SocketId>) {
    match previous {
        Some(previous) if previous != owner => {
            hub.close_socket(previous, close_code::SUPERSEDED);
            log::info!("registered {key} (socket {owner}, took over from socket {previous})");
        }
        _ => log::info!("registered {key} (socket {owner})"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::SocketKind;
    use crate::socket::doorbell::Doorbell;
    use crate::socket::mailbox::Mailbox;

    #[test]
    fn a_newer_holder_replaces_the_older_and_only_it_can_release() {
        let mut owners = Owners::default();
        assert!(owners.hold("k".into(), 1, "first").is_none());
        let replaced = owners.hold("k".into(), 2, "second").unwrap();
        assert_eq!((replaced.owner, replaced.lease), (1, "first"));
        assert_eq!(owners.len(), 1);
        assert_eq!(
            owners.release("k", 1),
            None,
            "the old owner cannot release it"
        );
        assert_eq!(owners.lease("k"), Some(&"second"));
        assert_eq!(owners.transfer("k", 3), Some(2));
        assert_eq!(owners.transfer("nope", 3), None);
        assert_eq!(owners.release("k", 2), None, "it was handed to 3");
        assert_eq!(owners.transfer("k", 2), Some(3));
        assert_eq!(owners.release("k", 2), Some("second"));
        assert_eq!(owners.release("k", 2), None);
        assert_eq!(owners.len(), 0);
    }

    #[test]
    fn drain_hands_back_every_lease() {
        let mut owners = Owners::default();
        owners.hold("a".into(), 1, 10);
        owners.hold("b".into(), 2, 20);
        for lease in owners.leases_mut() {
            *lease += 1;
        }
        let mut drained: Vec<(String, i32)> = owners.drain().collect();
        drained.sort();
        assert_eq!(drained, [("a".into(), 11), ("b".into(), 21)]);
        assert_eq!(owners.len(), 0);
    }

    #[test]
    fn only_another_socket_is_superseded() {
        let hub = Hub::default();
        let doorbell = Arc::new(Doorbell::new().unwrap());
        let (mailbox, _inbox) = Mailbox::new(4, Arc::default(), doorbell.clone());
        hub.subscribe(1, SocketKind::Register, vec!["api".into()], mailbox)
            .unwrap();
        registered(&hub, "service/api/10.0.0.1:80", 1, None);
        registered(&hub, "service/api/10.0.0.1:80", 1, Some(1));
        assert_eq!(doorbell.close_requested(), None);
        registered(&hub, "service/api/10.0.0.1:80", 2, Some(1));
        assert_eq!(doorbell.close_requested(), Some(close_code::SUPERSEDED));
    }
}
