//! A few keep-alive streams on the current member, shared by every lease this hound keeps —
//! as etcd's own client shares one: each refresh names its lease, and each stream's reader
//! hands an answer to the keeper waiting for that lease.
//!
//! A stream per lease cost each registration the stream's buffers (two of 8 KiB in tonic),
//! reserved for the registration's whole life and barely touched (docs/performance.md,
//! section 7). etcd-client opens a keep-alive stream for one lease, and its `LeaseKeeper`
//! refreshes that one; its `pub-response-field` feature makes the keeper's fields public, so
//! a keeper for another lease can share the stream's sender.
//!
//! Why [`STREAMS`] and not one: etcd renews the leases of one stream one after another, and a
//! follower forwards each renewal to the leader and waits for its answer, so one stream renews
//! at most one lease per round trip between the members (0.5 ms apart, 2,000 a second: 10,000
//! registrations at the default TTL). Spread by id over a few streams, which etcd serves side
//! by side, the leases are renewed that many times faster.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::{Notify, oneshot};
use tokio::task::{AbortHandle, spawn_local};

use super::members::{Member, Members};

/// How many keep-alive streams the leases are spread over, by id. Each is opened by the first
/// refresh that needs it, so a hound with a few leases opens about as many streams.
const STREAMS: usize = 8;

/// What a refresh found, or why it has no answer.
#[derive(Debug)]
pub(super) enum Refreshed {
    /// etcd refreshed the lease.
    Alive,
    /// etcd no longer knows the lease.
    Gone,
    /// `member` is no longer the current member: refresh through the new one.
    Moved,
    /// The stream failed or ended before the answer came.
    Failed(etcd_client::Error),
}

/// The keep-alive streams every keeper of this hound refreshes through. Cloning shares them.
#[derive(Clone)]
pub(super) struct KeepAlives {
    shared: Rc<Shared>,
}

struct Shared {
    members: Members,
    /// The streams, each refreshing the leases whose ids fall to it ([`slot_of`]).
    slots: Vec<RefCell<Slot>>,
    /// Rung when an opening ends, however it ended: keepers that waited for it look again.
    opening_ended: Notify,
    /// Names each opening and stream, so a late finisher touches only its own.
    serials: Cell<u64>,
}

enum Slot {
    Closed,
    /// A keeper is opening a stream on this member (its first refresh is the opening's).
    Opening {
        serial: u64,
        member: usize,
    },
    Open(Rc<Stream>),
}

struct Stream {
    /// Which of the shared slots it is in.
    slot: usize,
    serial: u64,
    member: usize,
    keeper: LeaseKeeper,
    /// The keeper waiting for each lease's answer, by ticket (see [`Waiting`]).
    waiting: RefCell<HashMap<i64, (u64, oneshot::Sender<i64>)>>,
    tickets: Cell<u64>,
    reader: AbortHandle,
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A stream replaced (the current member changed) stops reading; its waiters see it end.
        self.reader.abort();
    }
}

/// What one refresh does next.
enum Next {
    Send(Rc<Stream>),
    WaitForOpening,
    Open,
}

impl KeepAlives {
    pub fn new(members: Members) -> KeepAlives {
        KeepAlives {
            shared: Rc::new(Shared {
                members,
                slots: (0..STREAMS).map(|_| RefCell::new(Slot::Closed)).collect(),
                opening_ended: Notify::new(),
                serials: Cell::new(0),
            }),
        }
    }

    /// Refreshes `lease` through `member`, on the stream open there or on one this opens. No
    /// deadline of its own: the keeper bounds the wait, and sends again through another member.
    pub async fn refresh(&self, member: &Member, lease: i64) -> Refreshed {
        let slot = slot_of(lease);
        loop {
            let next = match &*self.shared.slots[slot].borrow() {
                Slot::Open(stream) if stream.member == member.index() => Next::Send(stream.clone()),
                Slot::Opening {
                    member: opening, ..
                } if *opening == member.index() => Next::WaitForOpening,
                _ => Next::Open,
            };
            match next {
                Next::Send(stream) => return stream.refresh(lease).await,
                // One task runs at a time on the etcd thread, so the opening cannot end
                // between the look above and this wait's first poll: no wake-up is missed.
                Next::WaitForOpening => self.shared.opening_ended.notified().await,
                // A keeper that has not yet heard the member changed must not replace the
                // stream the others moved to.
                Next::Open if !self.shared.members.is_current(member) => return Refreshed::Moved,
                Next::Open => return self.open(slot, member, lease).await,
            }
        }
    }

    /// Gives up on the stream `lease` is refreshed on, if it is on `member`, after a refresh
    /// there went unanswered: the next refresh opens another (on whichever member is current
    /// then), as a keeper with a stream of its own did, and the refreshes waiting on this one
    /// end at once rather than each at its own deadline.
    pub fn retire(&self, member: &Member, lease: i64) {
        let mut slot = self.shared.slots[slot_of(lease)].borrow_mut();
        if !matches!(&*slot, Slot::Open(stream) if stream.member == member.index()) {
            return;
        }
        if let Slot::Open(stream) = std::mem::replace(&mut *slot, Slot::Closed) {
            drop(slot);
            log::debug!("retiring the keep-alive stream on member {}", stream.member);
            stream.reader.abort();
            // Dropping the waiters' senders ends each wait as failed.
            stream.waiting.borrow_mut().clear();
        }
    }

    /// Opens a stream on `member` with `lease`'s refresh (etcd-client's way to open one) and,
    /// if the lease lives, makes it the stream everyone uses.
    async fn open(&self, slot: usize, member: &Member, lease: i64) -> Refreshed {
        let serial = self.next_serial();
        // Replacing an open stream drops it (it is on a member no longer current).
        *self.shared.slots[slot].borrow_mut() = Slot::Opening {
            serial,
            member: member.index(),
        };
        // Whatever ends the opening (an answer, a failure, the keeper's deadline or abort),
        // the slot does not stay `Opening`, and those waiting for it look again.
        let _ended = OpeningEnded {
            shared: &self.shared,
            slot,
            serial,
        };
        let mut client = member.client.clone();
        // Boxed: opening is brief, and a keeper's task keeps room for its largest state.
        let opened = Box::pin(client.lease_keep_alive(lease)).await;
        match opened {
            Ok((keeper, answers)) => {
                self.install(slot, serial, member, keeper, answers);
                Refreshed::Alive
            }
            // etcd-client's way of saying etcd answered TTL 0 to the first refresh.
            Err(etcd_client::Error::LeaseKeepAliveError(why)) if why == "lease not found" => {
                Refreshed::Gone
            }
            Err(err) => Refreshed::Failed(err),
        }
    }

    fn install(
        &self,
        slot: usize,
        serial: u64,
        member: &Member,
        keeper: LeaseKeeper,
        answers: LeaseKeepAliveStream,
    ) {
        let mut opening = self.shared.slots[slot].borrow_mut();
        // Another keeper, told the member changed, may have started another opening meanwhile.
        if !matches!(*opening, Slot::Opening { serial: ours, .. } if ours == serial) {
            return;
        }
        let stream = Rc::new_cyclic(|stream| Stream {
            slot,
            serial,
            member: member.index(),
            keeper,
            waiting: RefCell::default(),
            tickets: Cell::new(0),
            reader: spawn_local(read_answers(
                answers,
                stream.clone(),
                self.shared.clone(),
                member.clone(),
            ))
            .abort_handle(),
        });
        *opening = Slot::Open(stream);
    }

    fn next_serial(&self) -> u64 {
        let serial = self.shared.serials.get() + 1;
        self.shared.serials.set(serial);
        serial
    }
}

impl Stream {
    async fn refresh(self: Rc<Self>, lease: i64) -> Refreshed {
        let ticket = self.tickets.get() + 1;
        self.tickets.set(ticket);
        let (answer, answered) = oneshot::channel();
        // A keeper waits for one answer at a time; an older wait for the same lease (given up)
        // is replaced.
        self.waiting.borrow_mut().insert(lease, (ticket, answer));
        let _waiting = Waiting {
            stream: &self,
            lease,
            ticket,
        };
        // The stream's own keeper refreshes the lease it was opened for; a keeper with the
        // same sender and another id refreshes that one on the same stream.
        let mut keeper = LeaseKeeper {
            id: lease,
            sender: self.keeper.sender.clone(),
        };
        if keeper.keep_alive().await.is_err() {
            return Refreshed::Failed(ended());
        }
        match answered.await {
            Ok(ttl) if ttl > 0 => Refreshed::Alive,
            Ok(_) => Refreshed::Gone,
            Err(_) => Refreshed::Failed(ended()),
        }
    }
}

/// Which stream refreshes `lease`. etcd's lease ids are spread evenly enough (a member's id
/// bits and a counter) for their low bits to spread the leases.
fn slot_of(lease: i64) -> usize {
    (lease.unsigned_abs() % STREAMS as u64) as usize
}

fn ended() -> etcd_client::Error {
    etcd_client::Error::LeaseKeepAliveError("keep-alive stream ended".into())
}

/// Hands each answer on `answers` to the keeper waiting for its lease. When the stream ends,
/// reports a failure of `member`, ends every wait (their answers will not come), and clears
/// the slot so the next refresh opens a new stream.
async fn read_answers(
    mut answers: LeaseKeepAliveStream,
    stream: Weak<Stream>,
    shared: Rc<Shared>,
    member: Member,
) {
    let failure = loop {
        match answers.message().await {
            Ok(Some(answer)) => {
                let Some(stream) = stream.upgrade() else {
                    return;
                };
                if let Some((_, waiter)) = stream.waiting.borrow_mut().remove(&answer.id()) {
                    let _ = waiter.send(answer.ttl());
                }
            }
            Ok(None) => break None,
            Err(err) => break Some(err),
        }
    };
    if let Some(err) = &failure {
        log::debug!("keep-alive stream failed: {err}");
        shared.members.failed(&member, err);
    }
    let Some(stream) = stream.upgrade() else {
        return;
    };
    // Dropping the waiters' senders ends each wait as failed.
    stream.waiting.borrow_mut().clear();
    let mut slot = shared.slots[stream.slot].borrow_mut();
    if matches!(&*slot, Slot::Open(open) if open.serial == stream.serial) {
        *slot = Slot::Closed;
    }
}

/// Takes a keeper's wait off the stream however the refresh ends, unless an answer (or a
/// newer wait for the lease) took it off already: a keeper given up on, or aborted, leaves
/// nothing behind.
struct Waiting<'a> {
    stream: &'a Stream,
    lease: i64,
    ticket: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self.stream.waiting.borrow_mut();
        if waiting
            .get(&self.lease)
            .is_some_and(|(ticket, _)| *ticket == self.ticket)
        {
            waiting.remove(&self.lease);
        }
    }
}

/// Ends an opening: the slot leaves `Opening` (to `Open` if it succeeded, else `Closed`), and
/// keepers waiting for it look again.
struct OpeningEnded<'a> {
    shared: &'a Shared,
    slot: usize,
    serial: u64,
}

impl Drop for OpeningEnded<'_> {
    fn drop(&mut self) {
        let mut slot = self.shared.slots[self.slot].borrow_mut();
        if matches!(*slot, Slot::Opening { serial, .. } if serial == self.serial) {
            *slot = Slot::Closed;
        }
        drop(slot);
        self.shared.opening_ended.notify_waiters();
    }
}
