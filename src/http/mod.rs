//! The HTTP side: worker threads take requests from tiny_http, answer REST routes inline, and
//! hand validated WebSocket upgrades to their own threads. Errors become responses here only.

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
use query::Query;
use route::Route;

/// Serves requests until the server is unblocked at shutdown.
pub fn serve(server: Arc<tiny_http::Server>, context: Arc<Context>) {
    while let Ok(request) = server.recv() {
        let method = request.method().to_string();
        let path = request.url().split('?').next().unwrap_or("").to_owned();
        log::debug!("{method} {path} from {:?}", request.remote_addr());
        // A panic costs only its request: tiny_http answers a dropped request with 500.
        if catch_unwind(AssertUnwindSafe(|| dispatch(&context, request))).is_err() {
            log::error!("handling {method} {path} panicked; the request got a 500");
        }
    }
}

/// Largest request line plus headers hound answers; tiny_http itself sets no limit.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

fn dispatch(context: &Arc<Context>, request: Request) {
    let head_size = request.url().len()
        + request
            .headers()
            .iter()
            .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
            .sum::<usize>();
    if head_size > MAX_REQUEST_HEAD {
        respond_error(request, &Error::HeadTooLarge(MAX_REQUEST_HEAD));
        return;
    }
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let route = route::route(request.method().as_str(), path);
    let query = route.and_then(|route| Ok((route, Query::parse(query)?)));
    match query {
        Err(err) => respond_error(request, &err),
        Ok((route @ (Route::Register | Route::Monitor), query)) => {
            match upgrade::plan(&request, &route, &query) {
                Ok(plan) => crate::session::start(context.clone(), request, plan),
                Err(err) => respond_error(request, &err),
            }
        }
        // A body may trickle in for as long as the warden allows; read it on a thread of its
        // own so a slow client cannot occupy a worker.
        Ok((Route::Event, _)) => {
            let context = context.clone();
            let spawned = std::thread::Builder::new()
                .name("event-post".into())
                .stack_size(256 * 1024)
                .spawn(move || answer(&context, request, &Route::Event));
            if let Err(err) = spawned {
                log::error!("cannot start a thread for an event: {err}");
            }
        }
        Ok((route, _)) => answer(context, request, &route),
    }
}

fn answer(context: &Context, mut request: Request, route: &Route) {
    match rest::answer(context, &mut request, route) {
        Ok(reply) => respond_json(request, reply.status, reply.body),
        Err(err) => respond_error(request, &err),
    }
}

/// A response with `Content-Type: application/json`.
fn json_response(status: u16, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    let response = Response::from_string(body).with_status_code(status);
    match Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}

/// Sends a JSON body with `status`.
pub fn respond_json(request: Request, status: u16, body: String) {
    if let Err(err) = request.respond(json_response(status, body)) {
        log::debug!("could not send a response: {err}");
    }
}

/// The one place an [`Error`] becomes an HTTP answer: its status and `{"error": "..."}`.
pub fn respond_error(request: Request, err: &Error) {
    if let Error::Internal(_) = err {
        log::error!("{err}");
    }
    let body = format!("{{\"error\":{}}}", json_string(&err.to_string()));
    let status = err.status();
    let mut response = json_response(status, body);
    let extra_header = match err {
        Error::MethodNotAllowed(allowed) => {
            Header::from_bytes(&b"Allow"[..], allowed.as_bytes()).ok()
        }
        _ => None,
    };
    if let Some(header) = extra_header {
        response.add_header(header);
    }
    if let Err(err) = request.respond(response) {
        log::debug!("could not send an error response: {err}");
    }
}
