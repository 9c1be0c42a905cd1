//! The life of one WebSocket on its own thread: register (for the register route), subscribe,
//! complete the handshake, serve, and clean up however it ends — panics included.

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use tiny_http::{Header, Request, Response};
use tungstenite::WebSocket;
use tungstenite::protocol::Role;

use crate::app::Context;
use crate::error::Error;
use crate::http::respond_error;
use crate::http::upgrade::SocketPlan;
use crate::hub::{Mailbox, SocketId, SocketKind};
use crate::message::Frame;
use crate::metrics;
use crate::names::Node;
use crate::socket::signal::Signal;
use crate::socket::stream::UpgradedStream;
use crate::socket::wire::Wire;
use crate::socket::{self, Ending, websocket_config};

/// Stack of a socket thread. The loop is shallow; small stacks keep 10,000 sockets cheap.
const SOCKET_STACK: usize = 128 * 1024;
/// Messages a socket may have waiting before it counts as too slow and is closed with 1013.
pub const QUEUE_CAPACITY: usize = 1024;
/// How long a registration waits for hound's own watch to show its key (read-your-writes).
const MIRROR_WAIT: Duration = Duration::from_secs(5);

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
                context: &context,
                id,
                registration: None,
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                if let Some(open) = open(&mut cleanup, setup) {
                    // The set-up's deep frames are gone; the loop below runs for the socket's
                    // whole life in a few shallow pages.
                    crate::stack::release_unused();
                    serve(open, id, context.ping_interval);
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

/// Undoes what a socket set up, when its thread ends for any reason.
struct Cleanup<'a> {
    context: &'a Context,
    id: SocketId,
    registration: Option<(String, Node)>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.context.hub.unsubscribe(self.id);
        if let Some((service, node)) = &self.registration {
            self.context.store.deregister(service, node, self.id);
        }
    }
}

/// A socket past its handshake, ready to serve.
struct Open {
    ws: WebSocket<UpgradedStream>,
    inbox: Receiver<Frame>,
    signal: Arc<Signal>,
    peer: SocketAddr,
}

/// Registers (for the register route), subscribes and completes the handshake; `None` if the
/// socket could not be opened (the client got its answer). Never inlined: its frames are deep
/// and must be gone before the socket settles into its loop.
#[inline(never)]
fn open(cleanup: &mut Cleanup<'_>, setup: Box<(Request, SocketPlan)>) -> Option<Open> {
    let (request, plan) = *setup;
    let plan = &plan;
    let context = cleanup.context;
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
        let revision = match context.store.register(service, node, id) {
            Ok(revision) => revision,
            Err(err) => {
                log::warn!("could not register {service}/{node} for {peer}: {err}");
                respond_error(request, plan.route, &err);
                return None;
            }
        };
        if !context.hub.wait_for_revision(revision, MIRROR_WAIT) {
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
    let signal = match Signal::new() {
        Ok(signal) => Arc::new(signal),
        Err(err) => {
            respond_error(
                request,
                plan.route,
                &Error::Internal(format!("cannot create an eventfd: {err}")),
            );
            return None;
        }
    };
    // Room for the SYNCs on top of the usual queue (a `*` socket gets one per service).
    let syncs = plan.services.len() + context.hub.service_count();
    let wire = Arc::new(Wire::default());
    let (mailbox, inbox) = Mailbox::new(QUEUE_CAPACITY + syncs, wire.clone(), signal.clone());
    let kind = if plan.registration.is_some() {
        SocketKind::Register
    } else {
        SocketKind::Monitor
    };
    if let Err(err) = context
        .hub
        .subscribe(id, kind, plan.services.clone(), mailbox)
    {
        respond_error(request, plan.route, &err);
        return None;
    }
    let ws = match handshake(request, &plan.accept_key, context.port, peer, wire) {
        Ok(stream) => {
            metrics::count_request(plan.route, 101);
            WebSocket::from_raw_socket(stream, Role::Server, Some(websocket_config()))
        }
        Err(err) => {
            log::error!("socket {id} from {peer}: {err}");
            return None;
        }
    };
    log::debug!(
        "socket {id} from {peer} open, subscribed to {:?}",
        plan.services
    );
    Some(Open {
        ws,
        inbox,
        signal,
        peer,
    })
}

/// Serves an open socket until it ends.
fn serve(open: Open, id: SocketId, ping_interval: Duration) {
    let ending = socket::serve(open.ws, open.inbox, &open.signal, ping_interval);
    match ending {
        Ending::PeerLost(why) => log::info!("socket {id} from {} lost: {why}", open.peer),
        other => log::debug!("socket {id} from {} ended: {other:?}", open.peer),
    }
}

/// Sends the 101 and takes over the connection.
fn handshake(
    request: Request,
    accept_key: &str,
    port: u16,
    peer: SocketAddr,
    wire: Arc<Wire>,
) -> Result<UpgradedStream, String> {
    let accept = Header::from_bytes(&b"Sec-WebSocket-Accept"[..], accept_key.as_bytes())
        .map_err(|()| "the accept key is not a valid header value".to_owned())?;
    let response = Response::empty(101).with_header(accept);
    let upgraded = request.upgrade("websocket", response);
    UpgradedStream::claim(upgraded, port, peer, wire).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::Embedded;
    use crate::hub::Hub;
    use crate::store::Store;

    #[test]
    fn a_panicking_socket_thread_cleans_up() {
        let hub = Arc::new(Hub::default());
        let store = Embedded::start(hub.clone(), 15, "service").unwrap();
        let context = Context {
            hub: hub.clone(),
            store: Store::Embedded(store),
            ping_interval: Duration::from_secs(15),
            access: Default::default(),
            port: 0,
            max_connections: 10,
        };
        let node = Node::parse_value("10.0.0.1:80").unwrap();
        let outcome = std::thread::scope(|scope| {
            scope
                .spawn(|| -> () {
                    let _cleanup = Cleanup {
                        context: &context,
                        id: 7,
                        registration: Some(("api".into(), node.clone())),
                    };
                    context.store.register("api", &node, 7).unwrap();
                    let signal = Arc::new(Signal::new().unwrap());
                    let (mailbox, _inbox) = Mailbox::new(4, Arc::default(), signal);
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
