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

fn dispatch(context: &Arc<Context>, mut request: Request) {
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
        Ok((route, _)) => match rest::answer(context, &mut request, &route) {
            Ok(reply) => respond_json(request, reply.status, reply.body),
            Err(err) => respond_error(request, &err),
        },
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
        Error::UpgradeRequired => Header::from_bytes(&b"Upgrade"[..], &b"websocket"[..]).ok(),
        _ => None,
    };
    if let Some(header) = extra_header {
        response.add_header(header);
    }
    if let Err(err) = request.respond(response) {
        log::debug!("could not send an error response: {err}");
    }
}
