//! The WebSocket client: register/monitor sockets, reading and expecting messages, raw frames.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use super::{
    EtcdClient, Hound, HttpResponse, PROMPT, connect_v4, encode, query, set_socket_option,
    tcp_socket_v4,
};

/// A client WebSocket over a plain TCP stream, so read timeouts can be set on it.
pub type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket to `path_and_query` (e.g. `/etcd/monitor?monitor=a`); a non-101 answer
/// comes back as `Err` with its status and body.
pub fn ws_connect(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, HttpResponse> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    ws_handshake(stream, addr, path_and_query, headers)
}

/// Like [`ws_connect`] over a connection whose receive buffer is fixed at `rcvbuf` bytes (the
/// kernel doubles it) before connecting, so a client that stops reading backs up quickly.
pub fn ws_connect_small_buffer(
    addr: SocketAddr,
    path_and_query: &str,
    rcvbuf: usize,
) -> Result<Ws, HttpResponse> {
    let stream = connect_with_rcvbuf(addr, rcvbuf).expect("connect with a small buffer");
    ws_handshake(stream, addr, path_and_query, &[])
}

/// A TCP connection to the IPv4 `addr` whose `SO_RCVBUF` was set before the handshake (which
/// is when the window scale is agreed), and so never grows by autotuning.
pub fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> io::Result<TcpStream> {
    let SocketAddr::V4(v4) = addr else {
        panic!("connect_with_rcvbuf supports IPv4 only, not {addr}");
    };
    let stream = tcp_socket_v4(false)?;
    let size = i32::try_from(rcvbuf).expect("buffer size fits a c_int");
    set_socket_option(&stream, libc::SO_RCVBUF, size)?;
    connect_v4(&stream, v4)?;
    Ok(stream)
}

/// The client side of the WebSocket handshake over a connected `stream` (to `addr`, which goes
/// into the request's `Host`).
pub fn ws_handshake(
    stream: TcpStream,
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, HttpResponse> {
    let mut request = format!("ws://{addr}{path_and_query}")
        .into_client_request()
        .expect("build WebSocket request");
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            tungstenite::http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("set write timeout");
    match tungstenite::client(request, stream) {
        Ok((ws, _response)) => Ok(ws),
        Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => Err(HttpResponse {
            status: response.status().as_u16(),
            headers: response
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: response.body().clone().unwrap_or_default(),
        }),
        Err(HandshakeError::Failure(err)) => {
            panic!("WebSocket handshake to {path_and_query} failed: {err}")
        }
        Err(HandshakeError::Interrupted(_)) => {
            panic!("WebSocket handshake to {path_and_query} timed out")
        }
    }
}

/// Opens `path_and_query` and panics unless the upgrade succeeds.
pub fn ws_open(hound: &Hound, path_and_query: &str) -> Ws {
    ws_connect(hound.addr(), path_and_query, &[])
        .unwrap_or_else(|response| panic!("upgrade of {path_and_query} refused: {response:?}"))
}

/// The `/etcd/register` path for a node.
pub fn register_path(service: &str, ip: &str, port: u16) -> String {
    format!(
        "/etcd/register?{}",
        query(&[
            ("service", service),
            ("ip", ip),
            ("port", &port.to_string())
        ])
    )
}

/// Registers `service` at `ip:port`; panics unless the upgrade succeeds.
pub fn register(hound: &Hound, service: &str, ip: &str, port: u16) -> Ws {
    ws_open(hound, &register_path(service, ip, port))
}

/// Registers `service` at `ip:port` and also monitors `monitored`.
pub fn register_monitoring(
    hound: &Hound,
    service: &str,
    ip: &str,
    port: u16,
    monitored: &[&str],
) -> Ws {
    let path = format!(
        "{}&monitor={}",
        register_path(service, ip, port),
        encode(&monitored.join(","))
    );
    ws_open(hound, &path)
}

/// The `/etcd/monitor` path for `services`.
pub fn monitor_path(services: &[&str]) -> String {
    format!("/etcd/monitor?monitor={}", encode(&services.join(",")))
}

/// Monitors `services`; panics unless the upgrade succeeds.
pub fn monitor(hound: &Hound, services: &[&str]) -> Ws {
    ws_open(hound, &monitor_path(services))
}

/// Monitors `services` and reads the one `SYNC` each gets first, checking it against `nodes_of`.
pub fn monitor_synced(hound: &Hound, services: &[&str]) -> Ws {
    let mut ws = monitor(hound, services);
    let mut seen = Vec::new();
    for _ in services {
        let message = next_json(&mut ws, PROMPT);
        assert_eq!(
            message["body"]["key_event"], "SYNC",
            "expected SYNC first: {message}"
        );
        seen.push(message["namespace"].as_str().unwrap_or("").to_owned());
    }
    seen.sort();
    let mut expected: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(seen, expected, "one SYNC per monitored service");
    ws
}

/// What one read of a socket produced.
#[derive(Debug)]
pub enum Received {
    Json(Value),
    Closed(Option<(u16, String)>),
    TimedOut,
}

/// Reads the next text frame (skipping ping/pong) within `within`.
pub fn receive(ws: &mut Ws, within: Duration) -> Received {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Received::TimedOut;
        }
        ws.get_mut()
            .set_read_timeout(Some(left))
            .expect("set read timeout");
        match ws.read() {
            Ok(Message::Text(text)) => {
                let value = serde_json::from_str(text.as_str())
                    .unwrap_or_else(|err| panic!("text frame is not JSON ({err}): {text}"));
                return Received::Json(value);
            }
            Ok(Message::Binary(bytes)) => panic!("unexpected binary frame: {bytes:?}"),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Ok(Message::Close(frame)) => {
                return Received::Closed(
                    frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                );
            }
            Err(tungstenite::Error::Io(err))
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Received::TimedOut;
            }
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(_),
            ) => return Received::Closed(None),
            Err(tungstenite::Error::Io(_)) => return Received::Closed(None),
            Err(err) => panic!("reading the socket failed: {err}"),
        }
    }
}

/// The next message as JSON; panics on a timeout or a close.
pub fn next_json(ws: &mut Ws, within: Duration) -> Value {
    match receive(ws, within) {
        Received::Json(value) => value,
        Received::Closed(frame) => panic!("socket closed ({frame:?}) while waiting for a message"),
        Received::TimedOut => panic!("no message within {within:?}"),
    }
}

/// Asserts that no message arrives within `within` (keep it short: [`QUIET`]).
pub fn expect_no_message(ws: &mut Ws, within: Duration) {
    match receive(ws, within) {
        Received::TimedOut => {}
        Received::Json(value) => panic!("unexpected message: {value}"),
        Received::Closed(frame) => panic!("socket closed unexpectedly: {frame:?}"),
    }
}

/// Reads until the server's close frame; returns its code and reason (`None` if the connection
/// ended without one). Messages before it are skipped.
pub fn read_close(ws: &mut Ws, within: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive(ws, left) {
            Received::Json(_) => continue,
            Received::Closed(frame) => return frame,
            Received::TimedOut => panic!("socket was not closed within {within:?}"),
        }
    }
}

/// Closes the socket from our side with a normal close frame and waits for the server's echo.
pub fn close(mut ws: Ws) {
    let _ = ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }));
    let deadline = Instant::now() + PROMPT;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = ws.get_mut().set_read_timeout(Some(left));
        match ws.read() {
            Ok(_) => continue,
            Err(_) => break,
        }
    }
}

/// Drops the connection without a close frame (as a crashed client would).
pub fn vanish(ws: Ws) {
    let _ = ws.get_ref().shutdown(Shutdown::Both);
}

/// A service event as the contract shapes it.
pub fn key_event(service: &str, event: &str, nodes: &[(&str, u16)]) -> Value {
    let services: Vec<Value> = nodes
        .iter()
        .map(|(ip, port)| json!({"ip": ip, "port": port}))
        .collect();
    json!({"namespace": service, "body": {"key_event": event, "services": services}})
}

/// A custom event as the contract shapes it.
pub fn custom_event(namespace: &str, event_type: &str, event_body: &str) -> Value {
    json!({"namespace": namespace, "body": {"event_type": event_type, "event_body": event_body}})
}

/// Reads the next message and asserts it equals `expected`.
pub fn expect_message(ws: &mut Ws, expected: &Value) {
    let message = next_json(ws, PROMPT);
    assert_eq!(&message, expected, "unexpected message");
}

/// Reads messages until one has `key_event` == `event` for `service`; panics on anything that
/// is not a `PUT` or `SYNC` of that service on the way, and after `within`.
pub fn wait_for_event(ws: &mut Ws, service: &str, event: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive(ws, left) {
            Received::Json(message) => {
                if message["namespace"] == service && message["body"]["key_event"] == event {
                    return message;
                }
                let kind = message["body"]["key_event"].as_str().unwrap_or("");
                assert!(
                    message["namespace"] == service && (kind == "PUT" || kind == "SYNC"),
                    "unexpected message while waiting for {event} of {service}: {message}"
                );
            }
            Received::Closed(frame) => {
                panic!("socket closed ({frame:?}) while waiting for {event} of {service}")
            }
            Received::TimedOut => panic!("no {event} of {service} within {within:?}"),
        }
    }
}

/// A masked client frame with any opcode and payload, for frames tungstenite will not build
/// (invalid UTF-8 text) or lengths we announce but never send.
pub fn raw_frame(opcode: u8, payload: &[u8], announced_len: Option<u64>) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let len = announced_len.unwrap_or(payload.len() as u64);
    let mut frame = vec![0x80 | (opcode & 0x0f)];
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&len.to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Writes raw bytes under the socket (ignoring a peer that already hung up).
pub fn write_raw(ws: &mut Ws, bytes: &[u8]) {
    let stream = ws.get_mut();
    let _ = stream.write_all(bytes);
    let _ = stream.flush();
}

/// Whether hound's registration of `host_port` under `service` is in etcd.
pub fn registered(etcd: &mut EtcdClient, hound: &Hound, service: &str, host_port: &str) -> bool {
    etcd.get(&hound.key(service, host_port)).is_some()
}

/// Asserts that nothing is stored under hound's namespace but its store marker
/// (`<namespace>/~store`, written once when hound first reads etcd; API.md §2).
pub fn assert_namespace_empty(etcd: &mut EtcdClient, hound: &Hound, what: &str) {
    let marker = format!("{}~store", hound.prefix());
    let mut entries = etcd.get_prefix(&hound.prefix());
    entries.retain(|entry| entry.key != marker);
    assert!(
        entries.is_empty(),
        "{what}: expected nothing under {}, found {entries:?}",
        hound.prefix()
    );
}
