//! One thread per WebSocket: it sleeps in `ppoll` on its socket until the client sends, the
//! connection drains, or its doorbell rings; it writes what the fan-out queued, answers pings,
//! pings the client, and notices a close or a dead peer.
//!
//! Blocking I/O needs a thread per connection; `ppoll` lets that one thread wait for both the
//! client and the fan-out without a timer tick, so an idle socket costs no CPU.

pub mod close_code;
pub mod doorbell;
pub mod event_stream;
pub mod mailbox;
pub mod stream;
pub mod wire;

use std::io;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::message::Frame;
use doorbell::Doorbell;
use stream::UpgradedStream;

/// How long a closing socket waits for the client's close frame before dropping the TCP
/// connection.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Messages written per wake-up before flushing, so one busy socket cannot hog its loop.
const WRITE_BATCH: usize = 64;
/// Bytes waiting for a client to read past which hound stops reading from it.
const READ_PAUSE_BACKLOG: usize = 64 * 1024;
/// Largest frame or message a client may send.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Why a socket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The client closed (close frame or TCP close).
    ClientClosed,
    /// hound closed it with this code.
    Closed(u16),
    /// The client stopped answering pings or the connection broke.
    PeerLost(String),
}

/// The tungstenite settings for hound's sockets: small read buffers (hound mostly writes),
/// and a 64 KiB limit on what a client may send.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(16 * 1024)
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
}

/// Serves one upgraded socket until it ends. Each text frame the client sends goes to
/// `on_text` (a register socket's status reports); it must not block.
pub fn serve(
    mut ws: WebSocket<UpgradedStream>,
    inbox: Receiver<Frame>,
    doorbell: &Doorbell,
    ping_interval: Duration,
    on_text: &mut dyn FnMut(&str),
) -> Ending {
    let mut next_ping = Instant::now() + ping_interval;
    let mut unanswered_pings = 0u32;
    let mut closing: Option<(u16, Instant)> = None;
    let mut write_blocked;
    loop {
        // Rings from here on wake the wait below; what earlier ones announced is looked at now.
        doorbell.answer();
        // Outgoing: a close request wins over queued messages.
        if closing.is_none()
            && let Some(code) = doorbell.close_requested()
        {
            ws.get_ref().wire().close_for_data();
            let frame = CloseFrame {
                code: code.into(),
                reason: close_code::reason(code).into(),
            };
            let _ = ws.close(Some(frame));
            closing = Some((code, Instant::now() + CLOSE_GRACE));
        }
        // tungstenite's frames (close, pong, ping) go to the wire first, then the queue.
        if let Err(err) = ws.flush() {
            return lost(closing, err);
        }
        let mut batch = 0;
        write_blocked = ws.get_ref().wire().pump(|| {
            batch += 1;
            if batch > WRITE_BATCH {
                return None;
            }
            inbox.try_recv().ok()
        });
        // More already queued (a batch was cut short): go round without sleeping.
        let more_queued = !write_blocked && closing.is_none() && !inbox.is_empty();

        let now = Instant::now();
        let deadline = closing.map_or(next_ping, |(_, until)| until.min(next_ping));
        let timeout = if more_queued {
            Duration::ZERO
        } else {
            deadline.saturating_duration_since(now)
        };
        // A client that sends (pings, say) but does not read would make hound's replies pile
        // up without bound: past a backlog, stop reading and let TCP push back on it.
        let read_paused = ws.get_ref().wire().unsent_len() > READ_PAUSE_BACKLOG;
        let mut events = 0;
        if !read_paused {
            events |= libc::POLLIN;
        }
        if write_blocked {
            events |= libc::POLLOUT;
        }
        let socket_ready = match doorbell.wait(ws.get_ref(), events, timeout) {
            Ok(ready) => ready,
            Err(err) => return Ending::PeerLost(format!("poll failed: {err}")),
        };

        // Incoming: read every complete frame available.
        if socket_ready {
            loop {
                match ws.read() {
                    Ok(Message::Close(_)) => {
                        // tungstenite has queued the close reply; from here no data frame
                        // from the fan-out may reach the wire after it.
                        ws.get_ref().wire().close_for_data();
                        let _ = ws.flush();
                        return closing
                            .map_or(Ending::ClientClosed, |(code, _)| Ending::Closed(code));
                    }
                    // Any frame proves the peer alive; a text frame may be a status report,
                    // and binary frames carry nothing hound acts on.
                    Ok(Message::Text(text)) => {
                        unanswered_pings = 0;
                        on_text(text.as_str());
                    }
                    Ok(_) => unanswered_pings = 0,
                    Err(tungstenite::Error::Io(err)) if would_block(&err) => break,
                    Err(tungstenite::Error::Capacity(_)) => {
                        doorbell.request_close(close_code::TOO_BIG);
                        break;
                    }
                    Err(tungstenite::Error::Utf8(_)) => {
                        doorbell.request_close(close_code::INVALID_DATA);
                        break;
                    }
                    Err(err) => return lost(closing, err),
                }
                if ws.get_ref().wire().unsent_len() > READ_PAUSE_BACKLOG {
                    break;
                }
            }
        }

        let now = Instant::now();
        if let Some((code, until)) = closing {
            if now >= until {
                return Ending::Closed(code);
            }
        } else if now >= next_ping {
            if unanswered_pings >= 2 {
                return Ending::PeerLost("no pong for two ping intervals".into());
            }
            if let Err(err) = ws.write(Message::Ping(Default::default())) {
                return lost(closing, err);
            }
            unanswered_pings += 1;
            next_ping = now + ping_interval;
        }
    }
}

fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// The ending for an error that ends the connection.
fn lost(closing: Option<(u16, Instant)>, err: tungstenite::Error) -> Ending {
    match (closing, err) {
        (Some((code, _)), _) => Ending::Closed(code),
        (None, tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
            Ending::ClientClosed
        }
        (
            None,
            tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ),
        ) => Ending::ClientClosed,
        (None, err) => Ending::PeerLost(err.to_string()),
    }
}
