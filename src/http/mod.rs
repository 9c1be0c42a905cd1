//! The HTTP side: worker threads take requests from tiny_http, answer REST routes inline, and
//! hand validated WebSocket upgrades to their own threads. Errors become responses here only.

pub mod access;
pub mod listener;
pub mod query;
pub mod rest;
pub mod route;
pub mod upgrade;
pub mod warden;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use tiny_http::{Header, Request, Response};

use crate::app::Context;
use crate::error::Error;
use crate::message::json_string;
use crate::metrics;
use query::Query;
use route::{Route, UNROUTED};

/// Largest request line plus headers hound answers; tiny_http itself sets no limit.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Serves requests until the listener stops at shutdown.
pub fn serve(listener: Arc<listener::Listener>, context: Arc<Context>) {
    while let Some(request) = listener.next_request() {
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
    let head_size = request.url().len()
        + request
            .headers()
            .iter()
            .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
            .sum::<usize>();
    if head_size > MAX_REQUEST_HEAD {
        respond_error(request, UNROUTED, &Error::HeadTooLarge(MAX_REQUEST_HEAD));
        return;
    }
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let route = match route::route(request.method().as_str(), path) {
        Ok(route) => route,
        Err(err) => return respond_error(request, UNROUTED, &err),
    };
    let label = route.label();
    // The warden's count is up to a sweep old; this request's own connection is at least one.
    let open = warden::open_connections().max(1) + context.hub.socket_count();
    // Probes and metrics still answer at the cap: that is when operators need them.
    if open > context.max_connections && !matches!(route, Route::Healthz | Route::Metrics) {
        let err = Error::Overloaded(format!(
            "too many open connections ({open}, limit {})",
            context.max_connections
        ));
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
        // A body may trickle in for as long as the warden allows; read it on a thread of its
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
    match rest::answer(context, &mut request, route) {
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

fn with_content_type<R: std::io::Read>(response: Response<R>, content_type: &str) -> Response<R> {
    match Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}

/// The one place an [`Error`] becomes an HTTP answer: its status and `{"error": "..."}`.
/// `route` labels the answer in the metrics.
pub fn respond_error(request: Request, route: &'static str, err: &Error) {
    if let Error::Internal(_) = err {
        log::error!("{err}");
    }
    let status = err.status();
    metrics::count_request(route, status);
    let body = format!("{{\"error\":{}}}", json_string(&err.to_string()));
    let mut response = with_content_type(
        Response::from_string(body).with_status_code(status),
        "application/json",
    );
    let extra_header = match err {
        Error::MethodNotAllowed(allowed) => Header::from_bytes(&b"Allow"[..], allowed.as_bytes()),
        Error::Unauthorized => Header::from_bytes(&b"WWW-Authenticate"[..], &b"Bearer"[..]),
        _ => Err(()),
    };
    if let Ok(header) = extra_header {
        response.add_header(header);
    }
    if let Err(err) = request.respond(response) {
        log::debug!("could not send an error response: {err}");
    }
}
