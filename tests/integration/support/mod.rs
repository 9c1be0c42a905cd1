//! The harness: a real etcd per test, the real `hound` binary, and small blocking HTTP, WebSocket
//! and etcd clients that every wait bounds with a deadline. One file per part; everything public
//! is re-exported here, so a test module needs only `use crate::support::*;`.

#![allow(dead_code)] // Not every test module uses every helper.

mod backend;
mod checked;
mod dns;
mod etcd;
mod hound;
mod http;
mod metrics;
mod procs;
mod secure;
mod watchdog;
mod ws;
/// The epoll WebSocket client that opens and holds thousands of sockets, shared with the bench
/// as one source file.
#[path = "../../shared/ws_pool.rs"]
mod ws_pool;

pub use backend::*;
pub use checked::*;
pub use dns::*;
pub use etcd::*;
pub use hound::*;
pub use http::*;
pub use metrics::*;
pub use procs::*;
pub use watchdog::*;
pub use ws::*;
// Not a glob: `key_event` here is the contract's message builder, not the pool's parser.
pub use ws_pool::{Pool, ProbeResult, bind_v4, connect_v4, set_socket_option, tcp_socket_v4};
