//! The HTTP side: worker threads take requests from tiny_http, answer REST routes inline, and
//! hand validated WebSocket upgrades to their own threads. Errors become responses in `reply`.

pub mod access;
pub mod budget;
pub mod discovery;
pub mod listener;
pub mod query;
pub mod rest;
pub mod route;
pub mod upgrade;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use tiny_http::{Header, Request, Response};

use crate::context::Context;
use crate::metrics;
use crate::reply::{respond_error, with_content_type};
use query::Query;
use route::{Route, UNROUTED};

/// Serves requests until the listener stops at shutdown.
pub fn serve(context: Arc<Context>) {
    while let Some(request) = context.listener.next_request() {
        let method = request.method().to_string();
        // The path only: a `?token=` must never reach the log.
        let path = request.url().split('?').next().unwrap_or("").to_owned();
        log::debug!("{method} {path} from {:?}", request.remote_addr());
        // A panic costs only its request: tiny_http answers a dropped request with 500.
        if catch_unwind(AssertUnwindSafe(|| dispatch(&context, request))).is_err() {
            log::error!("handling {method} {path} panicked; the request got a 500");
        }
    }
}

fn dispatch(context: &Arc<Context>, request: Request) {
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let route = match route::route(request.method().as_str(), path) {
        Ok(route) => route,
        Err(err) => return respond_error(request, UNROUTED, &err),
    };
    let label = route.label();
    // Probes and metrics still answer at the cap: that is when operators need them.
    if !matches!(route, Route::Healthz | Route::Metrics)
        && let Err(err) = context.listener.admit()
    {
        return respond_error(request, label, &err);
    }
    let checked = Query::parse(query).and_then(|query| {
        context
            .access
            .check(&request, &route, &query)
            .map(|()| query)
    });
    let query = match checked {
        Ok(query) => query,
        Err(err) => return respond_error(request, label, &err),
    };
    match route {
        Route::Register | Route::Monitor => match upgrade::plan(&request, &route, &query) {
            Ok(plan) => crate::session::start(context.clone(), request, plan),
            Err(err) => respond_error(request, label, &err),
        },
        Route::Watch => match upgrade::event_stream_plan(&request, &route, &query) {
            Ok(plan) => crate::session::start(context.clone(), request, plan),
            Err(err) => respond_error(request, label, &err),
        },
        Route::ServiceNodes(ref service) => {
            let reply = rest::service_nodes(context, service, &query);
            answer_with(request, &route, reply);
        }
        Route::PrometheusSd => {
            let reply = discovery::prometheus_targets(context, &query);
            answer_with(request, &route, reply);
        }
        // A body may trickle in for as long as the connection timeouts allow; read it on a thread of its
        // own so a slow client cannot occupy a worker.
        Route::Event => {
            let context = context.clone();
            let spawned = std::thread::Builder::new()
                .name("event-post".into())
                .stack_size(256 * 1024)
                .spawn(move || answer(&context, request, &Route::Event));
            if let Err(err) = spawned {
                log::error!("cannot start a thread for an event: {err}");
            }
        }
        route => answer(context, request, &route),
    }
}

fn answer(context: &Context, mut request: Request, route: &Route) {
    let reply = rest::answer(context, &mut request, route);
    answer_with(request, route, reply);
}

/// Sends a REST reply, or the error in its place.
fn answer_with(request: Request, route: &Route, reply: crate::error::Result<rest::Reply>) {
    match reply {
        Ok(reply) => {
            metrics::count_request(route.label(), reply.status);
            let mut response = with_content_type(
                Response::from_string(reply.body).with_status_code(reply.status),
                reply.content_type,
            );
            for (name, value) in reply.extra_headers {
                if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                    response.add_header(header);
                }
            }
            if let Err(err) = request.respond(response) {
                log::debug!("could not send a response: {err}");
            }
        }
        Err(err) => respond_error(request, route.label(), &err),
    }
}
