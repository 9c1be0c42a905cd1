//! The one place an [`Error`] becomes an HTTP answer: its status and `{"error": "..."}`.

use std::io::Read;

use tiny_http::{Header, Request, Response};

use crate::error::{Error, retry_after_seconds};
use crate::message::json_string;
use crate::metrics;

/// The JSON body that answers `err`.
pub fn error_json(err: &Error) -> String {
    format!("{{\"error\":{}}}", json_string(&err.to_string()))
}

/// Answers `request` with `err`; `route` labels the answer in the metrics.
pub fn respond_error(request: Request, route: &'static str, err: &Error) {
    if let Error::Internal(_) = err {
        log::error!("{err}");
    }
    let status = err.status();
    metrics::count_request(route, status);
    let mut response = with_content_type(
        Response::from_string(error_json(err)).with_status_code(status),
        "application/json",
    );
    let extra_header = match err {
        Error::MethodNotAllowed(allowed) => Header::from_bytes(&b"Allow"[..], allowed.as_bytes()),
        Error::Unauthorized => Header::from_bytes(&b"WWW-Authenticate"[..], &b"Bearer"[..]),
        Error::TooManyRequests(wait) => Header::from_bytes(
            &b"Retry-After"[..],
            retry_after_seconds(*wait).to_string().as_bytes(),
        ),
        _ => Err(()),
    };
    if let Ok(header) = extra_header {
        response.add_header(header);
    }
    if let Err(err) = request.respond(response) {
        log::debug!("could not send an error response: {err}");
    }
}

pub fn with_content_type<R: Read>(response: Response<R>, content_type: &str) -> Response<R> {
    match Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}
