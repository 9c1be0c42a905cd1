//! Verifies that hound keeps apart two connections that come from one client address and port
//! to two of its own addresses (hound on `--bind 0.0.0.0`; the client on 127.0.0.1:P towards
//! 127.0.0.1 and 127.0.0.2): the WebSocket gets its SYNC and the PUT that follows, and the plain
//! HTTP keep-alive connection gets its own HTTP responses and nothing else, whichever of the two
//! is used first. The peer address and hound's port alone do not tell these connections apart.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::Instant;

use crate::support::*;

/// Rounds per order, each with a new source port and a new service.
const ROUNDS: usize = 3;
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER_LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Order {
    /// The plain connection (to 127.0.0.2) is used first, then the WebSocket (to 127.0.0.1).
    PlainFirst,
    /// The WebSocket (to 127.0.0.2) is used first, then the plain connection (to 127.0.0.1).
    WebSocketFirst,
}

#[test]
fn one_source_port_to_two_local_addresses_in_both_orders() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--bind", "0.0.0.0"]);
    run(&hound, Order::PlainFirst);
    run(&hound, Order::WebSocketFirst);
}

/// One connection of the pair, with both its ends for the messages.
struct Plain {
    stream: TcpStream,
    name: String,
}

fn run(hound: &Hound, order: Order) {
    let port = hound.addr().port();
    let (ws_to, plain_to) = match order {
        Order::PlainFirst => (CLIENT, OTHER_LOCAL),
        Order::WebSocketFirst => (OTHER_LOCAL, CLIENT),
    };
    for round in 0..ROUNDS {
        let service = format!("svc-{order:?}-{round}");
        let (ws_to, plain_to) = (
            SocketAddrV4::new(ws_to, port),
            SocketAddrV4::new(plain_to, port),
        );
        // Rounds alternate which connection is made first: it holds the lower descriptors in
        // hound, which a search by (peer address, port) meets first.
        let (ws_stream, plain_stream, from) = if round % 2 == 0 {
            let (plain, ws, from) = connect_from_one_port(plain_to, ws_to);
            (ws, plain, from)
        } else {
            connect_from_one_port(ws_to, plain_to)
        };
        let mut plain = Plain {
            stream: plain_stream,
            name: format!("plain HTTP connection {from} → {plain_to}"),
        };
        let ws_name = format!("WebSocket {from} → {ws_to}");
        let context = format!("{order:?}, round {round}");

        if order == Order::PlainFirst {
            plain.get_healthz(&context);
        }
        let mut ws = ws_handshake(
            ws_stream,
            SocketAddr::V4(ws_to),
            &monitor_path(&[&service]),
            &[],
        )
        .unwrap_or_else(|response| panic!("{context}: {ws_name} refused: {response:?}"));
        expect_on(
            &mut ws,
            &key_event(&service, "SYNC", &[]),
            &mut plain,
            &format!("{context}: {ws_name}"),
        );
        if order == Order::WebSocketFirst {
            plain.get_healthz(&context);
        }

        let node = register(hound, &service, "10.0.0.1", 80);
        expect_on(
            &mut ws,
            &key_event(&service, "PUT", &[("10.0.0.1", 80)]),
            &mut plain,
            &format!("{context}: {ws_name}"),
        );
        plain.assert_nothing_buffered(&context);
        // The keep-alive connection still speaks HTTP and nothing else.
        plain.get_healthz(&context);
        plain.assert_nothing_buffered(&context);
        expect_no_message(&mut ws, QUIET);

        close(ws);
        close(node);
    }
}

/// Two blocking TCP connections from the same 127.0.0.1:P (both sockets `SO_REUSEADDR`, which
/// lets a bound port be shared by sockets that never listen): to `first`, then to `second`.
fn connect_from_one_port(
    first: SocketAddrV4,
    second: SocketAddrV4,
) -> (TcpStream, TcpStream, SocketAddrV4) {
    let bound = |port: u16| {
        let socket = tcp_socket_v4(false).expect("socket");
        set_socket_option(&socket, libc::SO_REUSEADDR, 1).expect("SO_REUSEADDR");
        bind_v4(&socket, SocketAddrV4::new(CLIENT, port)).expect("bind the client port");
        socket
    };
    let a = bound(0);
    let from = match a.local_addr().expect("local address") {
        SocketAddr::V4(v4) => v4,
        other => panic!("bound to {other}"),
    };
    let b = bound(from.port());
    connect_v4(&a, first).unwrap_or_else(|err| panic!("connect {from} → {first}: {err}"));
    connect_v4(&b, second).unwrap_or_else(|err| panic!("connect {from} → {second}: {err}"));
    (a, b, from)
}

/// The next message on `ws` must be `expected`; a failure says what reached the plain
/// connection meanwhile (where a WebSocket's frames go when hound takes the wrong socket).
fn expect_on(ws: &mut Ws, expected: &serde_json::Value, plain: &mut Plain, what: &str) {
    match receive(ws, PROMPT) {
        Received::Json(message) => assert_eq!(&message, expected, "{what}: unexpected message"),
        other => {
            let stray = plain.buffered();
            panic!(
                "{what}: expected {expected}, got {other:?}; meanwhile the {} received `{}`",
                plain.name,
                stray.escape_ascii()
            )
        }
    }
}

impl Plain {
    /// `GET /healthz` on the keep-alive connection: the answer must be HTTP, 200, and alone.
    fn get_healthz(&mut self, context: &str) {
        let request = "GET /healthz HTTP/1.1\r\nHost: hound\r\n\r\n";
        self.stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|err| panic!("{context}: writing to the {}: {err}", self.name));
        let (response, after) = self.read_response(context);
        assert_eq!(
            response.status, 200,
            "{context}: /healthz on the {}: {response:?}",
            self.name
        );
        assert!(
            after.is_empty(),
            "{context}: the {} received {} bytes after its HTTP response: `{}`",
            self.name,
            after.len(),
            after.escape_ascii()
        );
    }

    /// Reads one response with a `Content-Length` (hound's are), and whatever came after it.
    fn read_response(&mut self, context: &str) -> (HttpResponse, Vec<u8>) {
        let deadline = Instant::now() + PROMPT;
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        let length = loop {
            if let Some(length) = response_length(&bytes) {
                break length;
            }
            let start = &bytes[..bytes.len().min(STATUS_START.len())];
            assert!(
                STATUS_START.starts_with(start),
                "{context}: the {} received bytes that are not an HTTP response: `{}`",
                self.name,
                bytes.escape_ascii()
            );
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{context}: no complete HTTP response on the {} within {PROMPT:?}; got `{}`",
                self.name,
                bytes.escape_ascii()
            );
            self.stream
                .set_read_timeout(Some(left))
                .expect("read timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "{context}: the {} was closed; got `{}`",
                    self.name,
                    bytes.escape_ascii()
                ),
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(err) => panic!("{context}: reading the {}: {err}", self.name),
            }
        };
        let response = read_response(&mut &bytes[..length])
            .unwrap_or_else(|err| panic!("{context}: bad response on the {}: {err}", self.name));
        (response, bytes[length..].to_vec())
    }

    /// Whatever the connection has received and not been read, without waiting.
    fn buffered(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        self.stream.set_nonblocking(true).expect("non-blocking");
        // Bounded: a stray WebSocket stream would be a few small frames.
        for _ in 0..64 {
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
        self.stream.set_nonblocking(false).expect("blocking");
        bytes
    }

    fn assert_nothing_buffered(&mut self, context: &str) {
        let stray = self.buffered();
        assert!(
            stray.is_empty(),
            "{context}: the {} received {} bytes it never asked for: `{}`",
            self.name,
            stray.len(),
            stray.escape_ascii()
        );
    }
}

/// How every response of hound's starts.
const STATUS_START: &[u8] = b"HTTP/1.1 ";

/// The length of the complete response at the start of `bytes` (head and `Content-Length`
/// body), once it has all arrived.
fn response_length(bytes: &[u8]) -> Option<usize> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let body_len: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (bytes.len() >= head_end + body_len).then_some(head_end + body_len)
}
