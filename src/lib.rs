//! hound: a sidecar that registers a service in etcd for as long as its WebSocket lives, and
//! pushes it the membership changes and custom events of the services it cares about.

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod app;
pub mod config;
pub mod context;
pub mod embedded;
pub mod error;
pub mod etcd;
pub mod http;
pub mod hub;
pub(crate) mod keys;
pub mod logging;
pub mod membership;
pub mod message;
pub mod metrics;
pub mod names;
pub(crate) mod owners;
pub mod reply;
pub mod session;
pub mod socket;
pub mod stack;
pub mod store;

pub use app::App;
pub use config::{Config, Invocation};
pub use error::{Error, Result};
