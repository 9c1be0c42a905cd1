//! One registration's lease on any member that answers: granted, its key written on it, kept
//! alive on a schedule derived from the TTL (and the key put back if it goes missing), and
//! deleted with a tombstone — each retried on another member when the one in use does not
//! answer.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, sleep, timeout};

use super::backoff::{Backoff, Throttle};
use super::keepalive::{KeepAlives, Refreshed};
use super::members::{Member, Members, lease_not_found, no_space};
use crate::error::Result;
use crate::keys::ElectionKeys;
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

/// The lease one registration's key is on, shared by the registry and the registration's
/// keeper: whoever ends the registration (a takeover, a deregistration, a client that went
/// away) deletes the key from this lease and revokes it, however far the keeper got. Every
/// write of the key goes on this one lease, and a keeper replaces it only once etcd has lost
/// it, so no other lease of the registration can hold the key.
#[derive(Debug, Default)]
pub(super) struct Lease {
    id: Cell<i64>,
    #[cfg(debug_assertions)]
    held: hold::Held,
}

impl Lease {
    /// The lease's id; 0 until one is granted.
    pub fn id(&self) -> i64 {
        self.id.get()
    }

    pub fn set(&self, id: i64) {
        self.id.set(id);
    }

    /// Called by whoever ends the registration, before anything else: in debug builds, lets a
    /// write held by the test hook reach etcd first (see [`hold`]); nothing otherwise.
    pub async fn release_held_write(&self) {
        #[cfg(debug_assertions)]
        hold::release(self).await;
    }
}

/// Grants a lease of `ttl` seconds through any member that answers before `deadline`. An
/// attempt given up may still grant one later: nothing is written on it, and it expires.
pub(super) async fn grant(members: &Members, ttl: i64, deadline: Instant) -> Result<i64> {
    let granted = members
        .call(deadline, |mut client| async move {
            client.lease_grant(ttl, None).await
        })
        .await?;
    Ok(granted.id())
}

/// A registration that campaigns for leadership of its service: its campaign key is named
/// after its lease, so each write builds it for the lease it writes on.
#[derive(Debug, Clone)]
pub(super) struct Campaigning {
    pub keys: ElectionKeys,
    pub service: String,
}

/// How a registration's key is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    /// A new registration: the key moves to its lease, whoever held it (the takeover rule).
    Always,
    /// A keeper putting its key back: only if no lease holds the key, so a keeper never takes
    /// it from a newer registration, on this hound or another.
    IfMissing,
    /// A new value for a key this lease holds (a status change): only if the key is still on
    /// this lease, so it never lands on a key another registration took, or one deleted.
    IfOurs,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    /// The key was written, at this revision.
    At(i64),
    /// The key is on this lease already (`Write::IfMissing` only; hound's mirror lagged).
    Already,
    /// Another lease holds the key (`Write::IfMissing` only): nothing was written.
    Held,
    /// etcd no longer knows the lease: nothing was written.
    LeaseGone,
}

/// Writes `key` (holding `node`) on `lease` as `how` says, through any member that answers
/// before `deadline`. Every attempt writes the same value on the same lease, so one given up
/// that still reaches etcd later changes nothing; and once the registration ends its lease
/// is revoked, so such a write fails then.
///
/// With `campaign`, the campaign key `<election-namespace>/<service>/<lease hex>` is put in
/// the same transaction, on the same lease, with the node as its value. etcd's `Campaign`
/// puts it only if it does not exist; a put of an existing key keeps its create revision, so
/// writing it again (a takeover on the same lease, a key put back) never moves the node back
/// in the election, and a new lease's key cannot exist yet.
pub(super) async fn write(
    members: &Members,
    key: &str,
    node: &Node,
    lease: i64,
    how: Write,
    campaign: Option<&Campaigning>,
    deadline: Instant,
) -> Result<Written> {
    let on_lease = || Some(PutOptions::new().with_lease(lease));
    // Only the registration's value is hound's JSON; the campaign key's stays `ip:port`, as
    // etcd's election protocol (and `etcdctl elect`) has it.
    let mut puts = vec![TxnOp::put(key, crate::value::encode(node), on_lease())];
    if let Some(campaign) = campaign {
        let campaign_key = campaign.keys.campaign(&campaign.service, lease);
        puts.push(TxnOp::put(campaign_key, node.to_string(), on_lease()));
    }
    let txn = match how {
        Write::Always => Txn::new().and_then(puts),
        Write::IfOurs => Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, lease)])
            .and_then(puts)
            .or_else([TxnOp::get(key, None)]),
        Write::IfMissing => Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(puts)
            .or_else([TxnOp::get(key, None)]),
    };
    members
        .call(deadline, |mut client| {
            let txn = txn.clone();
            async move {
                match client.txn(txn).await {
                    Ok(answer) if answer.succeeded() => {
                        Ok(Written::At(answer.header().map_or(0, |h| h.revision())))
                    }
                    Ok(answer) => {
                        let holder = answer.op_responses().into_iter().find_map(|r| match r {
                            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.lease()),
                            _ => None,
                        });
                        Ok(if holder == Some(lease) {
                            Written::Already
                        } else {
                            Written::Held
                        })
                    }
                    Err(err) if lease_not_found(&err) => Ok(Written::LeaseGone),
                    Err(err) => Err(err),
                }
            }
        })
        .await
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

/// Why a keeper stopped refreshing through one member.
enum Ended {
    /// etcd says the lease is gone.
    LeaseGone,
    /// The lease lives, but hound's mirror lacks the key: put it back.
    KeyMissing,
    /// The current member changed: reopen on the new one at once.
    Moved,
    /// The member did not answer within the schedule's deadline.
    Unanswered(Duration),
    /// The keep-alive stream failed.
    Failed(etcd_client::Error),
}

/// What one keeper keeps: a registration's key, and how to tell whether etcd still holds it.
pub(super) struct Kept {
    pub key: String,
    /// The node as it should read now (its status changes); a put-back writes the latest.
    pub node: watch::Receiver<Node>,
    pub ttl: i64,
    /// The registration's campaign, written again with its key.
    pub campaign: Option<Campaigning>,
    /// Whether hound's mirror of the namespace (fed by its watch) holds the key.
    pub in_mirror: Box<dyn Fn() -> bool>,
}

/// Keeps one registration's lease alive for as long as the task runs (the registry aborts it
/// when the registration ends). Each refresh goes through the current member, on the stream
/// all keepers share ([`KeepAlives`]); one that is not
/// answered in time is sent again through another. If etcd no longer knows the lease (it
/// expired while no member answered, or etcd lost its data), takes a fresh one, which it
/// stores in `lease`, and writes the key on it again. If the key goes missing while the lease
/// lives (another hound's registration of the same node ended, say), puts it back. Both
/// writes are made only if no lease holds the key: a keeper never takes it from another.
pub(super) async fn keep_alive(
    members: Members,
    keep_alives: KeepAlives,
    kept: Kept,
    lease: Rc<Lease>,
) {
    // A keeper lives as long as its registration, and its task reserves room for the largest
    // state it can be in for all that time: unboxed, the etcd requests of its rare branches
    // (a new lease, a key put back) and of opening the stream made it 18 KiB per registration,
    // mostly never touched (and resident all the same where the allocator reused memory other
    // work had touched, a status write's say). Boxed, those requests take memory only while
    // they run (docs/performance.md, section 7).
    let key = kept.key.as_str();
    let schedule = Schedule::for_ttl(kept.ttl);
    let mut backoff = Backoff::new();
    let mut throttle = Throttle::default();
    let mut unanswered = 0;
    let mut lost = false;
    // Whether the key may be missing from etcd, and whether that is because the lease was lost.
    let mut put_back = false;
    let mut regranted = false;
    // Runs until aborted; every pass waits on etcd, a deadline or the back-off.
    loop {
        if lost {
            let deadline = Instant::now() + schedule.ttl();
            match Box::pin(grant(&members, kept.ttl, deadline)).await {
                Ok(id) => {
                    lease.set(id);
                    (lost, put_back, regranted) = (false, true, true);
                    metrics::LEASE_REGRANTS.add(1);
                    backoff.reset();
                }
                Err(err) => {
                    log::log!(throttle.level(), "could not register {key} again: {err}");
                    sleep(backoff.next_delay()).await;
                }
            }
            continue;
        }
        if put_back {
            let deadline = Instant::now() + schedule.ttl();
            match Box::pin(put_key_back(&members, &kept, &lease, deadline)).await {
                Ok(Written::At(_)) if regranted => {
                    log::info!("registered {key} again with a new lease");
                }
                Ok(Written::At(_)) => log::warn!("{key} had gone from etcd; put it back"),
                Ok(Written::Already) => {}
                Ok(Written::Held) => log::info!(
                    "{key} is held by another registration (through another hound, say); \
                     keeping ours, to put the key back if that one ends"
                ),
                Ok(Written::LeaseGone) => {
                    log::warn!("lease of {key} is gone; registering it again");
                    lost = true;
                    continue;
                }
                Err(err) => {
                    log::log!(throttle.level(), "could not put {key} back: {err}");
                    sleep(backoff.next_delay()).await;
                    continue;
                }
            }
            (put_back, regranted) = (false, false);
            backoff.reset();
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
        let kept_on = keep_on(
            &keep_alives,
            &member,
            lease.id(),
            schedule,
            &mut unanswered,
            &mut backoff,
            &*kept.in_mirror,
        );
        let ended = tokio::select! {
            ended = kept_on => ended,
            () = members.moved_from(&member) => Ended::Moved,
        };
        match ended {
            Ended::LeaseGone => {
                log::warn!("lease of {key} is gone; registering it again");
                lost = true;
            }
            Ended::KeyMissing => put_back = true,
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

/// Writes the kept key on `lease` if no lease holds it.
async fn put_key_back(
    members: &Members,
    kept: &Kept,
    lease: &Rc<Lease>,
    deadline: Instant,
) -> Result<Written> {
    #[cfg(debug_assertions)]
    if hold::armed() {
        let (members, key, node, id, campaign) = (
            members.clone(),
            kept.key.clone(),
            kept.node.borrow().clone(),
            lease.id(),
            kept.campaign.clone(),
        );
        let held = async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            let how = Write::IfMissing;
            let written = write(&members, &key, &node, id, how, campaign.as_ref(), deadline).await;
            log::warn!("test hook: the held write of {key} on lease {id:x}: {written:?}");
        };
        hold::park(lease, &kept.key, held).await;
    }
    let node = kept.node.borrow().clone();
    write(
        members,
        &kept.key,
        &node,
        lease.id(),
        Write::IfMissing,
        kept.campaign.as_ref(),
        deadline,
    )
    .await
}

/// Writes the latest value of a registration's node (its status changed) on its lease, and
/// again while newer values came during the write, then ends (clearing `writing`): the
/// registry starts it again on the next change. (A task per registration that lived as long
/// as it did would keep its largest state, an etcd request's, for each of thousands of
/// registrations.) A write that fails is retried with back-off until it lands, the key turns
/// out not to be this lease's (taken over or deleted: nothing to write), the lease is gone
/// (the keeper registers again, with the latest value), or the registration has ended (its
/// sender is dropped).
pub(super) async fn write_value(
    members: Members,
    key: String,
    lease: Rc<Lease>,
    mut wanted: watch::Receiver<Node>,
    writes: Rc<Semaphore>,
    writing: Rc<Cell<bool>>,
) {
    /// Clears the registration's "a writer runs" flag however the writer ends.
    struct Done(Rc<Cell<bool>>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.set(false);
        }
    }
    let _done = Done(writing);
    let mut throttle = Throttle::default();
    // The registry hands over a receiver that has not seen the latest value: write it, and
    // once more for each change that comes meanwhile.
    while wanted.has_changed().unwrap_or(false) {
        let mut backoff = Backoff::new();
        loop {
            // A burst of changes (a thousand checks finding their nodes at once) waits here
            // rather than putting a thousand requests, and their buffers, in flight together.
            let Ok(_permit) = writes.acquire().await else {
                return;
            };
            let node = wanted.borrow_and_update().clone();
            let deadline = Instant::now() + Duration::from_secs(3);
            // Boxed: a waiting writer holds a few words, the request's state only while it runs.
            let written = Box::pin(write(
                &members,
                &key,
                &node,
                lease.id(),
                Write::IfOurs,
                // A status change leaves the campaign key's value (`ip:port`) as it is.
                None,
                deadline,
            ));
            match written.await {
                Ok(Written::At(_)) => {
                    metrics::STATUS_WRITES.add(1);
                    log::debug!("wrote {key} as {}", node.status());
                    break;
                }
                Ok(written) => {
                    log::debug!("not writing {key}'s new status: {written:?}");
                    break;
                }
                Err(err) => {
                    log::log!(throttle.level(), "could not write {key}'s status: {err}");
                    sleep(backoff.next_delay()).await;
                    if wanted.has_changed().is_err() {
                        return; // The registration has ended: nothing more to write.
                    }
                }
            }
        }
    }
}

/// A test-only hook, compiled into debug builds and armed by the environment variable
/// `HOUND_TEST_HOLD_PUT_BACK`: a keeper's write that puts its key back is held — as if stuck
/// in flight on a member that froze — until its registration ends, and the registry then lets
/// it reach etcd before it does anything else about the registration. That is the worst moment
/// for such a write to land (after a newer registration's write, before the old lease's
/// revocation), and the integration tests force it with this (issue 12 #12).
#[cfg(debug_assertions)]
mod hold {
    use std::cell::RefCell;
    use std::future::Future;
    use std::rc::Rc;
    use std::sync::OnceLock;

    use tokio::sync::Notify;
    use tokio::task::{JoinHandle, spawn_local};

    use super::Lease;

    /// A write held for one registration.
    #[derive(Debug, Default)]
    pub(super) struct Held {
        write: RefCell<Option<JoinHandle<()>>>,
        released: Notify,
    }

    pub(super) fn armed() -> bool {
        static ARMED: OnceLock<bool> = OnceLock::new();
        *ARMED.get_or_init(|| std::env::var_os("HOUND_TEST_HOLD_PUT_BACK").is_some())
    }

    /// Holds `write` until the registration ends; the keeper waits until it is aborted.
    pub(super) async fn park(
        lease: &Rc<Lease>,
        key: &str,
        write: impl Future<Output = ()> + 'static,
    ) {
        log::warn!(
            "test hook: holding the write of {key} on lease {:x} until its registration ends",
            lease.id()
        );
        let released = lease.clone();
        let task = spawn_local(async move {
            released.held.released.notified().await;
            write.await;
        });
        *lease.held.write.borrow_mut() = Some(task);
        std::future::pending::<()>().await;
    }

    /// Lets the held write, if any, reach etcd, and waits until it has.
    pub(super) async fn release(lease: &Lease) {
        let task = lease.held.write.borrow_mut().take();
        if let Some(task) = task {
            lease.held.released.notify_one();
            let _ = task.await;
        }
    }
}

/// Refreshes `lease` through `member` at once, then every period, until something ends it.
/// After each refresh but the first (by then hound's watch has seen a write of the key),
/// checks that the key is in the mirror.
async fn keep_on(
    keep_alives: &KeepAlives,
    member: &Member,
    lease: i64,
    schedule: Schedule,
    unanswered: &mut u32,
    backoff: &mut Backoff,
    in_mirror: &dyn Fn() -> bool,
) -> Ended {
    let mut first = true;
    // Runs until a refresh ends it; every pass but the first sleeps a period.
    loop {
        if !first {
            sleep(schedule.period()).await;
        }
        let within = schedule.answer_within(*unanswered);
        match timeout(within, keep_alives.refresh(member, lease)).await {
            Ok(Refreshed::Alive) => {
                *unanswered = 0;
                if first {
                    backoff.reset();
                } else if !in_mirror() {
                    return Ended::KeyMissing;
                }
            }
            Ok(Refreshed::Gone) => return Ended::LeaseGone,
            Ok(Refreshed::Moved) => return Ended::Moved,
            Ok(Refreshed::Failed(err)) => return Ended::Failed(err),
            Err(_) => {
                keep_alives.retire(member, lease);
                *unanswered += 1;
                return Ended::Unanswered(within);
            }
        }
        first = false;
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
