//! The crate's one error type; `http::respond` turns it into a status code and a JSON body.

use std::fmt;

/// A `Result` whose error is hound's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while serving a request, each variant saying what the caller
/// should do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request itself is wrong (a bad name, port, body): fix the request. HTTP 400.
    BadRequest(String),
    /// The token is missing or wrong: send `Authorization: Bearer TOKEN`. HTTP 401.
    Unauthorized,
    /// A browser page on another site asked: allow its origin with `--allow-origin`. HTTP 403.
    Forbidden(String),
    /// No such route: check the path. HTTP 404.
    NotFound(String),
    /// The route exists but not with this method. HTTP 405.
    MethodNotAllowed(&'static str),
    /// The client accepts none of the media types the route answers with: fix `Accept`.
    /// HTTP 406.
    NotAcceptable(String),
    /// A WebSocket route was called without `Upgrade: websocket`. HTTP 426.
    UpgradeRequired,
    /// The request body is larger than hound accepts. HTTP 413.
    PayloadTooLarge(usize),
    /// The request line and headers are larger than hound accepts. HTTP 431.
    HeadTooLarge(usize),
    /// The body is not declared as JSON. HTTP 415.
    UnsupportedMediaType,
    /// The client, or all clients together, published more events than the budget allows:
    /// retry after the duration given (in `Retry-After`). HTTP 429.
    TooManyRequests(std::time::Duration),
    /// etcd cannot be reached or did not answer in time: retry later. HTTP 503.
    Unavailable(String),
    /// hound holds as many connections as it allows: retry later. HTTP 503.
    Overloaded(String),
    /// hound failed in a way the client cannot fix; the log says more. HTTP 500.
    Internal(String),
    /// A bad command-line flag or environment value: fix the invocation. Exit code 2.
    Config(String),
}

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) | Error::Config(_) => 400,
            Error::Unauthorized => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::NotAcceptable(_) => 406,
            Error::PayloadTooLarge(_) => 413,
            Error::UnsupportedMediaType => 415,
            Error::HeadTooLarge(_) => 431,
            Error::TooManyRequests(_) => 429,
            Error::UpgradeRequired => 426,
            Error::Unavailable(_) | Error::Overloaded(_) => 503,
            Error::Internal(_) => 500,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadRequest(why)
            | Error::Config(why)
            | Error::Forbidden(why)
            | Error::NotAcceptable(why)
            | Error::Overloaded(why) => f.write_str(why),
            Error::Unauthorized => {
                f.write_str("a valid token is required (Authorization: Bearer TOKEN)")
            }
            Error::NotFound(path) => write!(f, "no route for {path}"),
            Error::MethodNotAllowed(allowed) => write!(f, "method not allowed; use {allowed}"),
            Error::UpgradeRequired => {
                f.write_str("this is a WebSocket route; send Upgrade: websocket")
            }
            Error::PayloadTooLarge(limit) => write!(f, "request body is larger than {limit} bytes"),
            Error::UnsupportedMediaType => f.write_str("Content-Type must be application/json"),
            Error::HeadTooLarge(limit) => {
                write!(f, "request line and headers are larger than {limit} bytes")
            }
            Error::TooManyRequests(wait) => write!(
                f,
                "too many events; retry in {} s",
                retry_after_seconds(*wait)
            ),
            Error::Unavailable(why) => write!(f, "etcd is unavailable: {why}"),
            Error::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// A wait as `Retry-After` gives it: whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}
