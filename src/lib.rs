//! hound: a sidecar that registers a service in etcd for as long as its WebSocket lives, and
//! pushes it the membership changes and custom events of the services it cares about.
//!
//! The library is what the `hound` binary needs: [`config`] to read the invocation, [`App`] to
//! run, [`logging`] to set up the log, and [`describe_routes`] for `--routes`. Everything else is
//! private to the crate.

#![forbid(unsafe_op_in_unsafe_fn)]

mod app;
mod check;
pub mod config;
mod context;
mod describe;
mod dns;
mod election;
mod embedded;
mod error;
mod etcd;
mod http;
mod hub;
mod keys;
pub mod logging;
mod membership;
mod message;
mod metrics;
mod names;
mod owners;
mod reply;
mod session;
mod socket;
mod stack;
mod status;
mod store;
mod value;

#[cfg(test)]
mod parser_properties;

pub use app::App;
pub use config::{Config, Invocation};
pub use error::{Error, Result};
pub use http::route::describe_routes;
