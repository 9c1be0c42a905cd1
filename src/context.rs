//! What request handlers and socket threads share, built once at start and passed down.

use std::sync::Arc;
use std::time::Duration;

use crate::check::Checker;
use crate::http::access::Access;
use crate::http::budget::EventBudget;
use crate::http::listener::Listener;
use crate::hub::Hub;
use crate::store::Store;

#[derive(Debug)]
pub struct Context {
    pub hub: Arc<Hub>,
    pub store: Store,
    /// Runs the checks registrations ask for (`check=http|tcp`).
    pub checker: Checker,
    /// The HTTP front door: tiny_http, its limits, the connection count, the hand-over.
    pub listener: Listener,
    pub ping_interval: Duration,
    pub access: Access,
    /// How many events each client and all clients may publish.
    pub events: EventBudget,
}
