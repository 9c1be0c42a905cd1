//! Custom events: written under the event namespace by any hound, delivered by every hound.

use std::cell::Cell;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::time::Instant as Deadline;

use super::CustomEvent;
use super::members::{Members, lease_not_found};
use crate::error::{Error, Result};
use crate::hub::Audience;
use crate::keys::EventKeys;

/// How long an event key lives in etcd. Long enough for a hound whose watch reconnects to
/// replay it, short enough that events never pile up.
const EVENT_LEASE_TTL: i64 = 60;
/// A shared event lease is used for this long, then replaced, so every event outlives its
/// write by at least `EVENT_LEASE_TTL - EVENT_LEASE_REUSE` seconds.
const EVENT_LEASE_REUSE: Duration = Duration::from_secs(30);

/// The value stored for one event.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StoredEvent {
    pub event_type: String,
    #[serde(default)]
    pub event_body: String,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub broadcast: bool,
}

impl StoredEvent {
    pub fn audience(&self) -> Audience {
        if self.broadcast {
            Audience::Everyone
        } else {
            Audience::Services(self.services.clone())
        }
    }
}

/// Writes events under `<event-namespace>/<instance>-<sequence>` on a shared short lease.
pub(super) struct Publisher {
    members: Members,
    keys: EventKeys,
    instance: String,
    sequence: Cell<u64>,
    lease: Cell<Option<(i64, Instant)>>,
}

impl Publisher {
    pub fn new(members: Members, keys: EventKeys) -> Publisher {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Publisher {
            members,
            keys,
            instance: format!("{:x}-{:x}", std::process::id(), started.as_micros()),
            sequence: Cell::new(0),
            lease: Cell::new(None),
        }
    }

    /// Writes `event` through any member that answers before `deadline`.
    pub async fn publish(&self, event: CustomEvent, deadline: Deadline) -> Result<()> {
        let (services, broadcast) = match event.audience {
            Audience::Everyone => (Vec::new(), true),
            Audience::Services(services) => (services, false),
        };
        let stored = StoredEvent {
            event_type: event.event_type,
            event_body: event.event_body,
            services,
            broadcast,
        };
        let value = serde_json::to_string(&stored)
            .map_err(|err| Error::Internal(format!("cannot encode the event: {err}")))?;
        let sequence = self.sequence.get() + 1;
        self.sequence.set(sequence);
        let key = self.keys.event(&self.instance, sequence);
        // The shared lease may be gone (revoked behind hound's back, or etcd lost its data):
        // then a fresh one is taken at once and the write tried again, so no POST fails for
        // the rest of the lease's reuse period. Twice is enough: the second lease is new.
        for _ in 0..2 {
            let lease = self.lease(deadline).await?;
            if self.write(&key, &value, lease, deadline).await? {
                return Ok(());
            }
            log::warn!("the event lease {lease:x} is gone; taking a new one");
            self.lease.set(None);
        }
        Err(Error::Unavailable(
            "etcd forgot two event leases in a row".into(),
        ))
    }

    /// Writes `value` under `key` on `lease`; false if etcd no longer knows the lease.
    async fn write(&self, key: &str, value: &str, lease: i64, deadline: Deadline) -> Result<bool> {
        // Written only if the key is new: an attempt given up on one member may still land
        // after the retry on another, and must not deliver the event twice.
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        self.members
            .call(deadline, |mut client| {
                let txn = txn.clone();
                async move {
                    match client.txn(txn).await {
                        Ok(_) => Ok(true),
                        Err(err) if lease_not_found(&err) => Ok(false),
                        Err(err) => Err(err),
                    }
                }
            })
            .await
    }

    async fn lease(&self, deadline: Deadline) -> Result<i64> {
        if let Some((lease, granted)) = self.lease.get()
            && granted.elapsed() < EVENT_LEASE_REUSE
        {
            return Ok(lease);
        }
        let lease = self
            .members
            .call(deadline, |mut client| async move {
                client.lease_grant(EVENT_LEASE_TTL, None).await
            })
            .await?
            .id();
        self.lease.set(Some((lease, Instant::now())));
        Ok(lease)
    }
}

/// Decodes a stored event; `None` (with a warning) for a value some other writer put there.
pub(super) fn decode(key: &str, value: &[u8]) -> Option<StoredEvent> {
    match serde_json::from_slice::<StoredEvent>(value) {
        Ok(event) if !event.event_type.is_empty() => Some(event),
        _ => {
            log::warn!("skipping event key {key}: its value is not a hound event");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_accepts_our_shape_and_skips_others() {
        let event = decode("k", br#"{"event_type":"t","services":["a"]}"#).unwrap();
        assert_eq!(event.event_body, "");
        assert!(matches!(event.audience(), Audience::Services(s) if s == ["a"]));
        let event = decode("k", br#"{"event_type":"t","broadcast":true}"#).unwrap();
        assert!(matches!(event.audience(), Audience::Everyone));
        assert!(decode("k", b"not json").is_none());
        assert!(decode("k", br#"{"event_type":""}"#).is_none());
    }
}
