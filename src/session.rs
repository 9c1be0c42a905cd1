//! The life of one WebSocket or event stream on its own thread: register (for the register
//! route), subscribe, complete the handshake, serve, and clean up however it ends — panics
//! included.

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use tiny_http::Request;
use tungstenite::WebSocket;
use tungstenite::protocol::Role;

use crate::check::{CheckId, CheckSpec, Checker};
use crate::context::Context;
use crate::error::Error;
use crate::http::listener::{Listener, SocketSlot};
use crate::hub::{Hub, SocketId, SocketKind};
use crate::message::{Frame, Framing};
use crate::metrics;
use crate::names::Node;
use crate::reply::respond_error;
use crate::socket::doorbell::Doorbell;
use crate::socket::mailbox::Mailbox;
use crate::socket::stream::UpgradedStream;
use crate::socket::wire::Wire;
use crate::socket::{self, Ending, event_stream, websocket_config};
use crate::status::parse_report;
use crate::store::Store;

/// Stack of a socket thread. The loop is shallow; small stacks keep 10,000 sockets cheap.
const SOCKET_STACK: usize = 128 * 1024;
/// Messages a socket may have waiting before it counts as too slow and is closed with 1013.
pub const QUEUE_CAPACITY: usize = 1024;
/// How long a registration waits for hound's own watch to show its key (read-your-writes).
const MIRROR_WAIT: Duration = Duration::from_secs(5);

/// What a validated upgrade asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketPlan {
    /// The node to register, under its service (register route only).
    pub registration: Option<(String, Node)>,
    /// Whether the registered node campaigns for leadership of its service (`campaign=1`).
    pub campaign: bool,
    /// Every service the socket hears about, each once.
    pub services: Vec<String>,
    /// hound's check of the registered node, if it asked for one.
    pub check: Option<CheckSpec>,
    /// How the connection carries messages.
    pub protocol: Protocol,
    /// The route's label, for metrics.
    pub route: &'static str,
}

/// What the connection becomes once it is taken from tiny_http.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// A WebSocket, answered with this `Sec-WebSocket-Accept` value.
    WebSocket { accept_key: String },
    /// A `text/event-stream` response that lasts as long as the connection.
    EventStream,
}

/// Moves a validated upgrade to its own thread.
pub fn start(context: Arc<Context>, request: Request, plan: SocketPlan) {
    let id = context.hub.next_socket_id();
    // Boxed so the thread's first frames, which live as long as the socket, stay small.
    let setup = Box::new((request, plan));
    let spawned = std::thread::Builder::new()
        .name(format!("socket-{id}"))
        .stack_size(SOCKET_STACK)
        .spawn(move || {
            let mut cleanup = Cleanup {
                hub: &context.hub,
                store: &context.store,
                checker: &context.checker,
                id,
                registration: None,
                check: None,
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                if let Some(mut open) = open(&context, &mut cleanup, setup) {
                    // The set-up's deep frames are gone; the loop below runs for the socket's
                    // whole life in a few shallow pages.
                    crate::stack::release_unused();
                    // Checked only once the socket serves: its SYNC reads "not checked yet",
                    // and the first finding's PUT reaches a socket that is already in its loop.
                    if let Some(spec) = open.check.take() {
                        start_check(&context.checker, &mut cleanup, spec);
                    }
                    serve(open, id, &context, cleanup.registration.as_ref());
                }
            }));
            if outcome.is_err() {
                log::error!("socket {id} panicked; it is closed and deregistered");
            }
        });
    if let Err(err) = spawned {
        // The request went down with the closure; tiny_http answers a dropped request with 500.
        log::error!("cannot start a socket thread: {err}");
    }
}

/// Starts hound's check of the socket's registered node, and arms `cleanup` to stop it.
///
/// Never inlined, like [`open`]: inlined, its locals (the job, the checker thread's lazy start,
/// channel internals aligned to 128 bytes) made the socket thread's outermost frame 2 KiB
/// larger, for monitors too, and that frame lives as long as the socket. The serving loop's
/// `ppoll`, and the signal frame the kernel pushes below it when the doorbell rings (about
/// 3.3 KiB with AVX-512 state), then reached one more stack page in every socket thread.
#[inline(never)]
fn start_check(checker: &Checker, cleanup: &mut Cleanup<'_>, spec: CheckSpec) {
    let Some((service, node)) = &cleanup.registration else {
        return;
    };
    match checker.start(spec, service, node, cleanup.id) {
        Ok(check) => cleanup.check = Some(check),
        Err(err) => log::error!("cannot check {service}/{node}: {err}"),
    }
}

/// Undoes what a socket set up, when its thread ends for any reason.
struct Cleanup<'a> {
    hub: &'a Hub,
    store: &'a Store,
    checker: &'a Checker,
    id: SocketId,
    registration: Option<(String, Node)>,
    check: Option<CheckId>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
        if let Some(check) = self.check {
            self.checker.stop(check);
        }
        if let Some((service, node)) = &self.registration {
            self.store.deregister(service, node, self.id);
        }
    }
}

/// A socket past its handshake, ready to serve.
struct Open {
    connection: Connection,
    inbox: Receiver<Frame>,
    doorbell: Arc<Doorbell>,
    peer: SocketAddr,
    /// The check to start once the socket serves (register route, `check=` given).
    check: Option<CheckSpec>,
    /// Counts the socket against `--max-connections` until it ends.
    _slot: SocketSlot,
}

/// The connection a socket thread serves.
// One per thread, moved once into the serving loop: boxing the larger variant would only add
// a heap allocation per socket.
#[allow(clippy::large_enum_variant)]
enum Connection {
    WebSocket(WebSocket<UpgradedStream>),
    EventStream(UpgradedStream),
}

/// Registers (for the register route), subscribes and completes the handshake; `None` if the
/// socket could not be opened (the client got its answer). Never inlined: its frames are deep
/// and must be gone before the socket settles into its loop.
#[inline(never)]
fn open(
    context: &Context,
    cleanup: &mut Cleanup<'_>,
    setup: Box<(Request, SocketPlan)>,
) -> Option<Open> {
    let (request, plan) = *setup;
    let plan = &plan;
    let id = cleanup.id;
    let Some(peer) = request.remote_addr().copied() else {
        respond_error(
            request,
            plan.route,
            &Error::BadRequest("no peer address".into()),
        );
        return None;
    };
    if let Some((service, node)) = &plan.registration {
        // Armed before the attempt: if etcd answers after we gave up, the deregistration the
        // guard queues behind the registration undoes it, so a 503 never leaves a node behind.
        cleanup.registration = Some((service.clone(), node.clone()));
        // A client that leaves while etcd is slow is not registered behind its back.
        let wanted = || !request.client_gone();
        let campaign = plan.campaign;
        let revision = match context.store.register(service, node, id, campaign, &wanted) {
            Ok(revision) => revision,
            Err(err) => {
                log::warn!("could not register {service}/{node} for {peer}: {err}");
                respond_error(request, plan.route, &err);
                return None;
            }
        };
        // The campaign key was written in the same revision: its first LEADER, and REST,
        // already know of it.
        let caught_up = context.hub.wait_for_revision(revision, MIRROR_WAIT)
            && (!campaign
                || context
                    .hub
                    .wait_for_election_revision(revision, MIRROR_WAIT));
        if !caught_up {
            let err = Error::Unavailable("hound's watch did not catch up with etcd".into());
            respond_error(request, plan.route, &err);
            return None;
        }
    }
    if !context.hub.wait_for_revision(1, MIRROR_WAIT) {
        let err = Error::Unavailable("hound has not read the service namespace yet".into());
        respond_error(request, plan.route, &err);
        return None;
    }
    let doorbell = match Doorbell::new() {
        Ok(doorbell) => Arc::new(doorbell),
        Err(err) => {
            respond_error(
                request,
                plan.route,
                &Error::Internal(format!("cannot set up the socket thread's doorbell: {err}")),
            );
            return None;
        }
    };
    // Room for the SYNCs, and a LEADER after each, on top of the usual queue (a `*` socket
    // gets them for every service).
    let syncs = 2 * (plan.services.len() + context.hub.service_count());
    let wire = Arc::new(Wire::default());
    let (mailbox, inbox) = Mailbox::new(QUEUE_CAPACITY + syncs, wire.clone(), doorbell.clone());
    let (kind, framing) = match (&plan.registration, &plan.protocol) {
        (_, Protocol::EventStream) => (SocketKind::Watch, Framing::EventStream),
        (Some(_), _) => (SocketKind::Register, Framing::WebSocket),
        (None, _) => (SocketKind::Monitor, Framing::WebSocket),
    };
    let mailbox = mailbox.with_framing(framing);
    if let Err(err) = context
        .hub
        .subscribe(id, kind, plan.services.clone(), mailbox)
    {
        respond_error(request, plan.route, &err);
        return None;
    }
    let slot = context.listener.socket_slot();
    let connection = match handshake(request, &plan.protocol, wire) {
        Ok((stream, early_bytes)) => {
            metrics::count_request(plan.route, handshake_status(&plan.protocol));
            match plan.protocol {
                Protocol::WebSocket { .. } => {
                    let config = Some(websocket_config());
                    Connection::WebSocket(WebSocket::from_partially_read(
                        stream,
                        early_bytes,
                        Role::Server,
                        config,
                    ))
                }
                // An event stream's client has nothing to say; what it sent early is dropped.
                Protocol::EventStream => Connection::EventStream(stream),
            }
        }
        Err(err) => {
            // The client went away during the handshake, or hound is out of descriptors.
            log::warn!("socket {id} from {peer}: the handshake failed: {err}");
            return None;
        }
    };
    log::debug!(
        "socket {id} from {peer} open, subscribed to {:?}",
        plan.services
    );
    Some(Open {
        connection,
        inbox,
        doorbell,
        peer,
        check: plan.check.clone(),
        _slot: slot,
    })
}

/// Serves an open socket until it ends.
fn serve(open: Open, id: SocketId, context: &Context, registration: Option<&(String, Node)>) {
    let ping_interval = context.ping_interval;
    // A register socket's text frames may report its node's status; a monitor's mean nothing.
    let mut on_text = |text: &str| {
        if let Some((service, node)) = registration
            && let Some(change) = parse_report(text)
        {
            log::debug!("socket {id} reports {service}/{node}: {change:?}");
            context.store.report(service, node, id, change);
        }
    };
    let ending = match open.connection {
        Connection::WebSocket(ws) => {
            socket::serve(ws, open.inbox, &open.doorbell, ping_interval, &mut on_text)
        }
        Connection::EventStream(stream) => {
            event_stream::serve(stream, open.inbox, &open.doorbell, ping_interval)
        }
    };
    match ending {
        Ending::PeerLost(why) => log::info!("socket {id} from {} lost: {why}", open.peer),
        other => log::debug!("socket {id} from {} ended: {other:?}", open.peer),
    }
}

/// The status the handshake answers with: 101 for a WebSocket, 200 for an event stream.
fn handshake_status(protocol: &Protocol) -> u16 {
    match protocol {
        Protocol::WebSocket { .. } => 101,
        Protocol::EventStream => 200,
    }
}

/// Sends the 101 (or the event stream's head) and takes over the connection, with any bytes
/// the client sent early.
fn handshake(
    request: Request,
    protocol: &Protocol,
    wire: Arc<Wire>,
) -> std::io::Result<(UpgradedStream, Vec<u8>)> {
    let handed_over = match protocol {
        Protocol::WebSocket { accept_key } => Listener::hand_over(request, accept_key)?,
        Protocol::EventStream => Listener::hand_over_event_stream(request)?,
    };
    let stream = UpgradedStream::new(handed_over.stream, wire)?;
    Ok((stream, handed_over.early_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::Embedded;

    #[test]
    fn a_panicking_socket_thread_cleans_up() {
        let hub = Arc::new(Hub::default());
        let store = Store::Embedded(Embedded::start(hub.clone(), 15, "service").unwrap());
        let node = Node::parse_value("10.0.0.1:80").unwrap();
        let checker = Checker::new(store.clone());
        let outcome = std::thread::scope(|scope| {
            scope
                .spawn(|| -> () {
                    let _cleanup = Cleanup {
                        hub: &hub,
                        store: &store,
                        checker: &checker,
                        id: 7,
                        registration: Some(("api".into(), node.clone())),
                        check: None,
                    };
                    store.register("api", &node, 7, true, &|| true).unwrap();
                    let doorbell = Arc::new(Doorbell::new().unwrap());
                    let (mailbox, _inbox) = Mailbox::new(4, Arc::default(), doorbell);
                    hub.subscribe(7, SocketKind::Register, vec!["api".into()], mailbox)
                        .unwrap();
                    assert_eq!(hub.service_names(), ["api"]);
                    panic!("a bug in a socket thread");
                })
                .join()
        });
        assert!(outcome.is_err(), "the thread panicked");
        assert!(hub.service_names().is_empty(), "the node was deregistered");
        assert_eq!(hub.socket_count(), 0, "the socket was unsubscribed");
    }
}
