//! Blocking WebSocket clients, for registrations and single monitors. Thousands of sockets are
//! opened and held by the pool shared with the integration tests (`ws_pool`).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, Utf8Bytes, WebSocket};

use crate::ws_pool::{client_config, handshake_failure};
pub use crate::ws_pool::{key_event, ports};

pub type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket (blocking handshake); a refusal comes back as `Err("HTTP 503: …")`.
pub fn connect(addr: SocketAddr, path_and_query: &str, timeout: Duration) -> Result<Ws, String> {
    let request = format!("ws://{addr}{path_and_query}")
        .into_client_request()
        .map_err(|err| format!("bad request: {err}"))?;
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|err| format!("connect: {err}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|err| format!("socket options: {err}"))?;
    match tungstenite::client::client_with_config(request, stream, Some(client_config())) {
        Ok((ws, _)) => Ok(ws),
        Err(HandshakeError::Failure(err)) => Err(handshake_failure(&err)),
        Err(HandshakeError::Interrupted(_)) => Err("handshake timed out".into()),
    }
}

/// The next text frame within `within` (pings are answered by tungstenite on the way).
pub fn read_text(ws: &mut Ws, within: Duration) -> Result<Utf8Bytes, String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no message within {within:?}"));
        }
        let _ = ws.get_mut().set_read_timeout(Some(left));
        match ws.read() {
            Ok(Message::Text(text)) => return Ok(text),
            Ok(Message::Close(frame)) => return Err(format!("closed by hound: {frame:?}")),
            Ok(_) => {}
            Err(tungstenite::Error::Io(err))
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(err) => return Err(format!("read: {err}")),
        }
    }
}

/// Sends a normal close frame without waiting for anything.
pub fn send_close(ws: &mut Ws) {
    let _ = ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bench".into(),
    }));
    let _ = ws.flush();
}

/// Reads until hound's close echo (or the end of the connection), at most `within`.
pub fn finish_close(mut ws: Ws, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = ws
            .get_mut()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))));
        if ws.read().is_err() {
            return;
        }
    }
}
