//! The thread of one server-sent event stream (`GET /etcd/watch`): the monitor socket's loop
//! with event framing. It sleeps in `ppoll` until the fan-out rings or the connection drains,
//! writes a comment line every ping interval, and notices the client leaving.
//!
//! The stream costs what a monitor socket costs (one thread, one descriptor, the same queue,
//! wire and doorbell); only the framing differs, and each message's event is built once.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::doorbell::Doorbell;
use super::stream::UpgradedStream;
use super::{Ending, WRITE_BATCH};
use crate::message::{Frame, Framing};

/// The comment line that keeps an idle stream (and any proxy on its way) alive.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";
/// Reads of client bytes per wake-up: a client has nothing to say on an event stream, so what
/// it sends is read and dropped, a bounded amount at a time.
const READS_PER_WAKE: usize = 16;

/// One queued message, framed as an event for the wire.
struct Event(Frame);

impl AsRef<[u8]> for Event {
    fn as_ref(&self) -> &[u8] {
        self.0.framed(Framing::EventStream)
    }
}

/// Serves one event stream until it ends. A client that takes nothing for two keep-alive
/// intervals is gone, like a socket that misses two pongs; a full queue closes the stream as
/// it closes a socket with 1013.
pub fn serve(
    mut stream: UpgradedStream,
    inbox: Receiver<Frame>,
    doorbell: &Doorbell,
    keep_alive: Duration,
) -> Ending {
    let mut next_keep_alive = Instant::now() + keep_alive;
    let mut stuck_since: Option<Instant> = None;
    loop {
        doorbell.answer();
        if let Some(code) = doorbell.close_requested() {
            stream.wire().close_for_data();
            return Ending::Closed(code);
        }
        let mut batch = 0;
        let write_blocked = stream.wire().pump(|| {
            batch += 1;
            if batch > WRITE_BATCH {
                return None;
            }
            inbox.try_recv().ok().map(Event)
        });
        let now = Instant::now();
        if !write_blocked {
            stuck_since = None;
        } else if stuck_since.is_some_and(|since| now - since >= keep_alive * 2) {
            return Ending::PeerLost("the client read nothing for two keep-alive intervals".into());
        } else if stuck_since.is_none() {
            stuck_since = Some(now);
        }
        if now >= next_keep_alive {
            if let Err(err) = stream.wire().write(KEEP_ALIVE) {
                return Ending::PeerLost(err.to_string());
            }
            next_keep_alive = now + keep_alive;
            continue;
        }
        let more_queued = !write_blocked && !inbox.is_empty();
        let timeout = if more_queued {
            Duration::ZERO
        } else {
            let wake = stuck_since.map_or(next_keep_alive, |since| {
                next_keep_alive.min(since + keep_alive * 2)
            });
            wake.saturating_duration_since(now)
        };
        let mut events = libc::POLLIN;
        if write_blocked {
            events |= libc::POLLOUT;
        }
        let socket_ready = match doorbell.wait(&stream, events, timeout) {
            Ok(ready) => ready,
            Err(err) => return Ending::PeerLost(format!("poll failed: {err}")),
        };
        if socket_ready && let Some(ending) = drain_input(&mut stream) {
            return ending;
        }
    }
}

/// Reads and drops what the client sent; the ending if it closed or the connection broke.
fn drain_input(stream: &mut UpgradedStream) -> Option<Ending> {
    let mut scratch = [0u8; 512];
    for _ in 0..READS_PER_WAKE {
        match stream.read(&mut scratch) {
            Ok(0) => return Some(Ending::ClientClosed),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return None,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {
                return Some(Ending::ClientClosed);
            }
            Err(err) => return Some(Ending::PeerLost(err.to_string())),
        }
    }
    None
}
