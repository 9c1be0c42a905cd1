//! One registration's lease on any member that answers: written (grant and put), kept alive on
//! a schedule derived from the TTL, and deleted with a tombstone — each retried on another
//! member when the one in use does not answer.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp};
use tokio::task::spawn_local;
use tokio::time::{Instant, sleep, timeout};

use super::backoff::{Backoff, Throttle};
use super::members::{Member, Members, lease_not_found, no_space};
use crate::error::Result;
use crate::metrics;
use crate::names::Node;

/// How long hound keeps trying to delete a closed registration, or to revoke a lease it no
/// longer uses, while etcd does not answer. Past it the lease expires by itself: others see
/// EXPIRE rather than DELETE. (A whole cluster frozen for longer stops its leases' clocks too,
/// so they would still be there; hound does not wait forever for that.)
const CLEANUP_PATIENCE: Duration = Duration::from_secs(60);

/// When to refresh a lease and how long to wait for etcd's answer, derived from its TTL so a
/// stuck keep-alive is abandoned, and sent again through another member, long before the
/// lease can lapse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Schedule {
    ttl: Duration,
}

impl Schedule {
    pub fn for_ttl(ttl_seconds: i64) -> Schedule {
        Schedule {
            ttl: Duration::from_secs(ttl_seconds.max(1).unsigned_abs()),
        }
    }

    /// Refresh every TTL/3.
    pub fn period(&self) -> Duration {
        self.ttl / 3
    }

    /// How long to wait for the answer to a refresh after `unanswered` refreshes in a row went
    /// unanswered: TTL/6 at first, so a refresh stuck on a frozen member is sent again through
    /// another one with half the TTL left; then longer (up to TTL/2), for an etcd that is
    /// slow everywhere.
    pub fn answer_within(&self, unanswered: u32) -> Duration {
        (self.ttl / 6 * 2u32.pow(unanswered.min(2))).min(self.ttl / 2)
    }

    /// How long re-registering after a lost lease may try before starting over.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Grants a lease of `ttl` seconds and writes `key` on it, through any member that answers
/// before `deadline`, and stores the lease in `granted`; returns the revision of the write.
/// `granted` gets each lease as soon as it is granted, so that a deletion that cuts this
/// short deletes the key from the lease its put (perhaps still on its way) puts it on.
pub(super) async fn grant_and_put(
    members: &Members,
    key: &str,
    node: &Node,
    ttl: i64,
    deadline: Instant,
    granted: &Cell<i64>,
) -> Result<i64> {
    let value = node.to_string();
    // Leases granted by attempts that did not finish. Such an attempt's put may still arrive
    // (from a member that froze holding it) and would move the key onto a lease nobody keeps
    // alive; revoked first, that put finds no lease and fails.
    let abandoned = RefCell::new(Vec::<i64>::new());
    let written = members
        .call(deadline, |mut client| {
            let (abandoned, value) = (&abandoned, value.clone());
            async move {
                let pending = abandoned.borrow().clone();
                for lease in pending {
                    revoke_on(&mut client, lease).await?;
                    abandoned.borrow_mut().retain(|&l| l != lease);
                }
                let lease = client.lease_grant(ttl, None).await?.id();
                abandoned.borrow_mut().push(lease);
                granted.set(lease);
                let options = PutOptions::new().with_lease(lease);
                let put = client.put(key, value, Some(options)).await?;
                abandoned.borrow_mut().retain(|&l| l != lease);
                Ok(put.header().map_or(0, |h| h.revision()))
            }
        })
        .await;
    for lease in abandoned.into_inner() {
        spawn_local(revoke_later(members.clone(), lease));
    }
    written
}

/// Revokes `lease` through `client`; a lease already gone counts as revoked.
async fn revoke_on(
    client: &mut etcd_client::Client,
    lease: i64,
) -> std::result::Result<(), etcd_client::Error> {
    match client.lease_revoke(lease).await {
        Err(err) if !lease_not_found(&err) => Err(err),
        _ => Ok(()),
    }
}

/// Revokes `lease` through any member that answers, trying for [`CLEANUP_PATIENCE`].
pub(super) async fn revoke_later(members: Members, lease: i64) {
    let deadline = Instant::now() + CLEANUP_PATIENCE;
    revoke(&members, lease, deadline).await;
}

async fn revoke(members: &Members, lease: i64, deadline: Instant) {
    let revoked = members
        .call_until(deadline, |mut client| async move {
            revoke_on(&mut client, lease).await
        })
        .await;
    if let Err(err) = revoked {
        log::debug!("could not revoke lease {lease:x}: {err}");
    }
}

/// Deletes `key` if it still belongs to `lease`, writing `tombstone` in the same revision so
/// every hound's watch reports DELETE rather than EXPIRE, then revokes the lease (which also
/// removes the tombstone). A failed attempt is retried through the members that answer until
/// etcd has done it, or has answered that the key is no longer on the lease (it expired, or a
/// newer registration took it), or `deadline` passes.
pub(super) async fn delete(
    members: Members,
    key: String,
    tombstone: String,
    lease: i64,
    deadline: Option<Instant>,
) {
    let deadline = deadline.unwrap_or_else(|| Instant::now() + CLEANUP_PATIENCE);
    let still_ours = Compare::lease(key.as_str(), CompareOp::Equal, lease);
    let txn = Txn::new().when([still_ours.clone()]).and_then([
        TxnOp::delete(key.as_str(), None),
        TxnOp::put(tombstone, "", Some(PutOptions::new().with_lease(lease))),
    ]);
    // etcd out of space (NOSPACE) refuses the tombstone's put but not a deletion: the key
    // goes at once all the same, though others may then report EXPIRE.
    let bare = Txn::new()
        .when([still_ours])
        .and_then([TxnOp::delete(key.as_str(), None)]);
    // Repeating it is safe: once the key is gone the comparison fails and nothing is written.
    let deleted = members
        .call_until(deadline, |mut client| {
            let (txn, bare) = (txn.clone(), bare.clone());
            async move {
                match client.txn(txn).await {
                    Err(err) if no_space(&err) => client.txn(bare).await,
                    done => done,
                }
            }
        })
        .await;
    if let Err(err) = deleted {
        log::warn!("could not delete {key}: {err}; its lease will expire instead");
    }
    revoke(&members, lease, deadline).await;
}

/// How one keep-alive stream ended.
enum Ended {
    /// etcd says the lease is gone.
    LeaseGone,
    /// The current member changed: reopen on the new one at once.
    Moved,
    /// The member did not answer within the schedule's deadline.
    Unanswered(Duration),
    /// The stream failed.
    Failed(etcd_client::Error),
}

/// Keeps one registration's lease alive for as long as the task runs (the registry aborts it
/// when the registration ends). Each refresh goes through the current member; one that is not
/// answered in time is sent again through another. If etcd no longer knows the lease (it
/// expired while no member answered, or etcd lost its data), registers the node again with a
/// fresh lease, which it stores in `lease`.
pub(super) async fn keep_alive(
    members: Members,
    key: String,
    node: Node,
    lease: Rc<Cell<i64>>,
    ttl: i64,
) {
    let schedule = Schedule::for_ttl(ttl);
    let mut backoff = Backoff::new();
    let mut throttle = Throttle::default();
    let mut unanswered = 0;
    let mut lost = false;
    // Runs until aborted; every pass waits on etcd, a deadline or the back-off.
    loop {
        if lost {
            let deadline = Instant::now() + schedule.ttl();
            match grant_and_put(&members, &key, &node, ttl, deadline, &lease).await {
                Ok(_) => {
                    lost = false;
                    metrics::LEASE_REGRANTS.add(1);
                    log::info!("registered {key} again with a new lease");
                    backoff.reset();
                }
                Err(err) => {
                    log::log!(throttle.level(), "could not register {key} again: {err}");
                    sleep(backoff.next_delay()).await;
                }
            }
            continue;
        }
        let member = match members.current() {
            Ok(member) => member,
            Err(err) => {
                log::log!(throttle.level(), "cannot keep {key} alive: {err}");
                sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let kept = keep_on(
            &member,
            lease.get(),
            schedule,
            &mut unanswered,
            &mut backoff,
        );
        let ended = tokio::select! {
            ended = kept => ended,
            () = members.moved_from(&member) => Ended::Moved,
        };
        match ended {
            Ended::LeaseGone => {
                log::warn!("lease of {key} is gone; registering it again");
                lost = true;
            }
            Ended::Moved => {}
            Ended::Unanswered(within) => {
                log::log!(
                    throttle.level(),
                    "keep-alive of {key} not answered within {within:?}; sending it again"
                );
                members.unanswered(&member, within);
                sleep(backoff.next_delay()).await;
            }
            Ended::Failed(err) => {
                log::log!(
                    throttle.level(),
                    "keep-alive of {key} failed: {err}; retrying"
                );
                members.failed(&member, &err);
                sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Refreshes `lease` through `member` every period until something ends the stream.
async fn keep_on(
    member: &Member,
    lease: i64,
    schedule: Schedule,
    unanswered: &mut u32,
    backoff: &mut Backoff,
) -> Ended {
    // Opening the stream sends the first refresh and waits for its answer.
    let within = schedule.answer_within(*unanswered);
    let mut client = member.client.clone();
    let (mut keeper, mut answers) = match timeout(within, client.lease_keep_alive(lease)).await {
        Ok(Ok(pair)) => pair,
        // etcd-client's way of saying etcd answered TTL 0 to the first refresh.
        Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) if why == "lease not found" => {
            return Ended::LeaseGone;
        }
        Ok(Err(err)) => return Ended::Failed(err),
        Err(_) => {
            *unanswered += 1;
            return Ended::Unanswered(within);
        }
    };
    *unanswered = 0;
    backoff.reset();
    // Runs until the stream ends; every pass sleeps a period.
    loop {
        sleep(schedule.period()).await;
        let within = schedule.answer_within(*unanswered);
        match refresh(&mut keeper, &mut answers, within).await {
            Ok(true) => {}
            Ok(false) => return Ended::LeaseGone,
            Err(ended) => {
                if matches!(ended, Ended::Unanswered(_)) {
                    *unanswered += 1;
                }
                return ended;
            }
        }
    }
}

/// Sends one refresh and waits `within` for its answer: whether the lease is still alive.
async fn refresh(
    keeper: &mut LeaseKeeper,
    answers: &mut LeaseKeepAliveStream,
    within: Duration,
) -> std::result::Result<bool, Ended> {
    keeper.keep_alive().await.map_err(Ended::Failed)?;
    match timeout(within, answers.message()).await {
        Ok(Ok(Some(answer))) => Ok(answer.ttl() > 0),
        Ok(Ok(None)) => Err(Ended::Failed(etcd_client::Error::LeaseKeepAliveError(
            "keep-alive stream ended".into(),
        ))),
        Ok(Err(err)) => Err(Ended::Failed(err)),
        Err(_) => Err(Ended::Unanswered(within)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_refresh_is_sent_again_with_half_the_ttl_left() {
        let schedule = Schedule::for_ttl(3);
        assert_eq!(schedule.period(), Duration::from_secs(1));
        assert_eq!(schedule.answer_within(0), Duration::from_millis(500));
        // The refresh after the last answered one, stuck for its whole deadline, then sent
        // again (with a longer deadline) through another member: all within the TTL.
        let worst = schedule.period() + schedule.answer_within(0) + schedule.answer_within(1);
        assert!(worst < schedule.ttl(), "{worst:?}");
        assert_eq!(schedule.answer_within(1), Duration::from_secs(1));
        assert_eq!(schedule.answer_within(2), Duration::from_millis(1500));
        assert_eq!(schedule.answer_within(9), Duration::from_millis(1500));
    }

    #[test]
    fn schedules_follow_the_ttl() {
        let schedule = Schedule::for_ttl(15);
        assert_eq!(schedule.period(), Duration::from_secs(5));
        assert_eq!(schedule.answer_within(0), Duration::from_millis(2500));
        assert_eq!(Schedule::for_ttl(0), Schedule::for_ttl(1));
    }
}
