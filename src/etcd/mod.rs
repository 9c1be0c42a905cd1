//! The only door to etcd: a blocking API over a private tokio runtime on one background thread,
//! which also keeps every lease alive and runs the watches that feed the [`Hub`].
//!
//! The pattern follows reqwest's blocking client: a named thread builds a current-thread runtime,
//! reports start-up success over a channel, then serves commands until every handle is dropped.

mod backoff;
mod election;
mod events;
mod health;
mod keepalive;
mod lease;
mod marker;
mod members;
mod registry;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::hub::{Audience, Hub, SocketId};
use crate::keys::{ElectionKeys, EventKeys, ServiceKeys};
use crate::names::Node;
use crate::status::StatusChange;

/// How long a blocking call waits for etcd before answering 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The etcd thread gives up on a command this long before its caller stops waiting, so that
/// what it did (or did not do) is what the caller is told.
const ANSWER_MARGIN: Duration = Duration::from_millis(300);
/// How often a caller waiting for etcd asks whether its client is still there.
const CLIENT_CHECK: Duration = Duration::from_millis(20);

/// What the etcd layer needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoints: Vec<String>,
    pub security: crate::config::EtcdSecurity,
    /// Lease TTL of each registration, in seconds.
    pub ttl: i64,
    /// Key prefix for registrations, without the trailing `/`.
    pub namespace: String,
    /// Key prefix for custom events, without the trailing `/`.
    pub event_namespace: String,
    /// Key prefix for leader elections, without the trailing `/`.
    pub election_namespace: String,
}

impl Settings {
    /// The layout of the registration keys under `namespace`.
    fn service_keys(&self) -> ServiceKeys {
        ServiceKeys::new(&self.namespace)
    }

    /// The layout of the event keys under `event_namespace`.
    fn event_keys(&self) -> EventKeys {
        EventKeys::new(&self.event_namespace)
    }

    /// The layout of the campaign keys under `election_namespace`.
    fn election_keys(&self) -> ElectionKeys {
        ElectionKeys::new(&self.election_namespace)
    }
}

/// What `GET /etcd/version` and `GET /etcd/leader` report.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub version: String,
    pub leader: u64,
    pub member_id: u64,
}

/// A custom event as POSTed, already validated.
#[derive(Debug, Clone)]
pub struct CustomEvent {
    pub event_type: String,
    pub event_body: String,
    pub audience: Audience,
}

type Reply<T> = crossbeam_channel::Sender<Result<T>>;

/// Set by the caller of a command that no longer wants it done: its client went away, or it
/// stopped waiting. The etcd thread drops such a command instead of running it, and stops one
/// it is running (undoing what it wrote).
#[derive(Debug, Default)]
struct Abandon {
    abandoned: AtomicBool,
    /// Wakes the etcd thread's task that runs the command (a permit is kept if none waits).
    wake: tokio::sync::Notify,
}

impl Abandon {
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// Returns once the command is abandoned.
    async fn abandoned(&self) {
        if !self.is_abandoned() {
            self.wake.notified().await;
        }
    }
}

#[derive(Debug)]
enum Command {
    Register {
        service: String,
        node: Node,
        owner: SocketId,
        /// Whether the node campaigns for leadership of its service.
        campaign: bool,
        deadline: Instant,
        abandon: Arc<Abandon>,
        reply: Reply<i64>,
    },
    Deregister {
        service: String,
        node: Node,
        owner: SocketId,
    },
    DeregisterAll {
        deadline: Instant,
        reply: Reply<()>,
    },
    Report {
        service: String,
        node: Node,
        owner: SocketId,
        change: StatusChange,
    },
    DrainAll,
    Status {
        deadline: Instant,
        reply: Reply<ClusterStatus>,
    },
    Publish {
        event: CustomEvent,
        deadline: Instant,
        reply: Reply<()>,
    },
}

/// The blocking handle; clones share the etcd thread. Dropping the last ends it (without
/// waiting for it).
#[derive(Debug, Clone)]
pub struct Etcd {
    commands: mpsc::UnboundedSender<Command>,
}

impl Etcd {
    /// Starts the etcd thread. Fails only if the runtime or the client cannot be built (a bad
    /// endpoint URL); an unreachable etcd is not an error here: hound starts, reports 503 on
    /// `/healthz`, and keeps trying.
    pub fn start(settings: Settings, hub: Arc<Hub>) -> Result<Etcd> {
        let (commands, inbox) = mpsc::unbounded_channel();
        let (started_tx, started_rx) = crossbeam_channel::bounded::<Result<()>>(1);
        std::thread::Builder::new()
            .name("etcd".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = started_tx.send(Err(Error::Internal(format!(
                            "cannot build the etcd runtime: {err}"
                        ))));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, registry::serve(settings, hub, inbox, started_tx));
                // Do not wait for tasks stuck on an unreachable etcd: shutdown must stay quick.
                drop(local);
                runtime.shutdown_background();
            })
            .map_err(|err| Error::Internal(format!("cannot start the etcd thread: {err}")))?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok(Etcd { commands }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(Error::Internal(
                "the etcd thread died while starting".into(),
            )),
        }
    }

    /// Sends a command with the deadline the etcd thread works to, and waits `timeout` for
    /// its answer.
    fn call<T>(
        &self,
        command: impl FnOnce(Reply<T>, Instant) -> Command,
        timeout: Duration,
    ) -> Result<T> {
        self.call_while(
            |reply, deadline, _| command(reply, deadline),
            timeout,
            &|| true,
        )
    }

    /// Like [`Etcd::call`], while `wanted` says the caller's client is still there (asked
    /// every [`CLIENT_CHECK`]). A command whose caller stops waiting, for either reason, is
    /// abandoned: the etcd thread does not start it, or stops it.
    fn call_while<T>(
        &self,
        command: impl FnOnce(Reply<T>, Instant, Arc<Abandon>) -> Command,
        timeout: Duration,
        wanted: &dyn Fn() -> bool,
    ) -> Result<T> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let started = Instant::now();
        let deadline = started + timeout.saturating_sub(ANSWER_MARGIN);
        let abandon = Arc::new(Abandon::default());
        self.commands
            .send(command(reply, deadline, abandon.clone()))
            .map_err(|_| Error::Unavailable("the etcd thread has stopped".into()))?;
        // Bounded by `timeout`: every pass waits up to CLIENT_CHECK.
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            let outcome = match answer.recv_timeout(left.min(CLIENT_CHECK)) {
                Ok(result) => return result,
                Err(RecvTimeoutError::Timeout) if left <= CLIENT_CHECK => {
                    Err(Error::Unavailable("etcd did not answer in time".into()))
                }
                Err(RecvTimeoutError::Timeout) if !wanted() => Err(Error::Unavailable(
                    "the client went away before etcd answered".into(),
                )),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    Err(Error::Unavailable("the etcd thread has stopped".into()))
                }
            };
            abandon.abandon();
            return outcome;
        }
    }

    /// Grants a lease, writes the registration key and keeps the lease alive until
    /// [`Etcd::deregister`]. Returns the etcd revision of the write. A registration of the same
    /// key by another socket of this hound is taken over: that socket is closed with 4000.
    /// Once `wanted` says the client has gone, the registration is dropped if it has not
    /// started, or stopped and undone if it has. With `campaign`, the node's campaign key is
    /// written in the same transaction, on the same lease.
    pub fn register(
        &self,
        service: &str,
        node: &Node,
        owner: SocketId,
        campaign: bool,
        wanted: &dyn Fn() -> bool,
    ) -> Result<i64> {
        let (service, node) = (service.to_owned(), node.clone());
        self.call_while(
            |reply, deadline, abandon| Command::Register {
                service,
                node,
                owner,
                campaign,
                deadline,
                abandon,
                reply,
            },
            REQUEST_TIMEOUT,
            wanted,
        )
    }

    /// Deletes the registration held by `owner` (if it still holds it) and revokes its lease.
    /// Does not wait: socket threads must never block on etcd.
    pub fn deregister(&self, service: &str, node: &Node, owner: SocketId) {
        let _ = self.commands.send(Command::Deregister {
            service: service.to_owned(),
            node: node.clone(),
            owner,
        });
    }

    /// Changes the status of the registration `owner` holds; one write of its value if that
    /// changes how the node reads. Does not wait.
    pub fn report(&self, service: &str, node: &Node, owner: SocketId, change: StatusChange) {
        let _ = self.commands.send(Command::Report {
            service: service.to_owned(),
            node: node.clone(),
            owner,
            change,
        });
    }

    /// Marks every registration `draining`, now and from now on. Does not wait.
    pub fn drain_all(&self) {
        let _ = self.commands.send(Command::DrainAll);
    }

    /// Deletes every registration this hound holds, waiting at most `timeout`.
    pub fn deregister_all(&self, timeout: Duration) -> Result<()> {
        self.call(
            |reply, deadline| Command::DeregisterAll { deadline, reply },
            timeout,
        )
    }

    /// etcd's version, its leader and the member hound talks to.
    pub fn status(&self) -> Result<ClusterStatus> {
        self.call(
            |reply, deadline| Command::Status { deadline, reply },
            REQUEST_TIMEOUT,
        )
    }

    /// Writes a custom event so every hound on the cluster delivers it.
    pub fn publish(&self, event: CustomEvent) -> Result<()> {
        self.call(
            |reply, deadline| Command::Publish {
                event,
                deadline,
                reply,
            },
            REQUEST_TIMEOUT,
        )
    }
}
