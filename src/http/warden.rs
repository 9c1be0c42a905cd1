//! The connection warden: enforces the timeouts tiny_http lacks, and frees tiny_http threads when
//! connections starve.
//!
//! tiny_http sets no timeouts and hides its sockets, so several times a second the warden finds
//! them (see `fds`) and asks the kernel about each:
//! - a connection that has received nothing for `idle`, or been sent nothing for `2 × idle`
//!   (a request trickling in that never completes), is shut down;
//! - tiny_http 0.12's thread pool can leave a new connection queued behind busy threads when two
//!   arrive at once (its idle-thread count lags a wake-up), and a pool thread stays busy for as
//!   long as its keep-alive connection lives. When a connection's request has sat unread for
//!   `STARVING`, the warden shuts down the connection that has been idle longest, which ends one
//!   pool thread's task so it serves the waiting one.
//!
//! WebSockets are not its business: their threads ping them, and their descriptors are claimed.

use std::collections::{HashMap, HashSet};
use std::net::{Shutdown, SocketAddr};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::fds::{self, Activity};

/// How often the warden looks.
const ROUND: Duration = Duration::from_millis(200);
/// A request unread for this long is waiting for a tiny_http thread.
const STARVING: Duration = Duration::from_millis(300);
/// A connection that never sent a byte, silent this long, may be closed to free a thread for a
/// starving one; an answered keep-alive connection after `EVICTABLE_ANSWERED`.
const EVICTABLE_SILENT: Duration = Duration::from_millis(300);
const EVICTABLE_ANSWERED: Duration = Duration::from_secs(1);

/// Open HTTP connections (not WebSockets) at the last sweep.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// How many HTTP connections (not WebSockets) were open at the last sweep.
pub fn open_connections() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// Starts the warden for connections to `port`.
pub fn start(port: u16, idle: Duration, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("warden".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(ROUND);
                if let Err(err) = sweep(port, idle) {
                    log::warn!("the connection warden cannot list descriptors: {err}");
                }
            }
        })
        .map(|_| ())
}

fn sweep(port: u16, idle: Duration) -> std::io::Result<()> {
    // Only what the kernel says is kept past the scan: a duplicate descriptor outliving it could
    // be taken by a concurrent claim for tiny_http's, and stay claimed after it is closed.
    let mut open: Vec<(SocketAddr, Activity)> = Vec::new();
    let mut peers = HashSet::new();
    fds::for_each_connection(port, |_, stream| {
        // tiny_http holds each connection twice (a read and a write clone): count it once.
        if let Ok(peer) = stream.peer_addr()
            && peers.insert(peer)
            && let Ok(activity) = fds::activity(stream)
            && activity.established
        {
            open.push((peer, activity));
        }
        ControlFlow::Continue(())
    })?;
    OPEN.store(open.len(), Ordering::Relaxed);
    let (expired, mut open): (Vec<_>, Vec<_>) = open
        .into_iter()
        .partition(|(_, a)| a.since_received >= idle || a.since_sent >= idle * 2);
    let mut victims: HashMap<SocketAddr, &'static str> = expired
        .iter()
        .map(|(peer, _)| (*peer, "timed out"))
        .collect();
    let starving = open
        .iter()
        .filter(|(_, a)| a.unread > 0 && a.since_received >= STARVING)
        .count();
    if starving > 0 {
        // Idle keep-alive connections (answered, quiet since) and silent ones (never sent a
        // byte) hold a tiny_http thread each; a connection being answered by hound (received,
        // not yet answered) is never evicted.
        open.retain(|(_, a)| {
            let silent = a.received == 0 && a.since_received >= EVICTABLE_SILENT;
            let idle_keep_alive = a.answered
                && a.since_received >= EVICTABLE_ANSWERED
                && a.since_sent >= EVICTABLE_ANSWERED;
            a.unread == 0 && (silent || idle_keep_alive)
        });
        open.sort_by_key(|(_, a)| std::cmp::Reverse(a.since_received));
        for (peer, _) in open.iter().take(starving) {
            victims.insert(*peer, "idle while another waits for a thread");
        }
    }
    if victims.is_empty() {
        return Ok(());
    }
    fds::for_each_connection(port, |_, stream| {
        if let Ok(peer) = stream.peer_addr()
            && let Some(why) = victims.remove(&peer)
        {
            log::debug!("dropping HTTP connection from {peer}: {why}");
            let _ = stream.shutdown(Shutdown::Both);
        }
        ControlFlow::Continue(())
    })
}
