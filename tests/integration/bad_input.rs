//! Verifies that bad input — malformed requests, huge headers, silent clients, odd WebSocket
//! frames — neither crashes hound, stalls other clients, nor leaves a registration behind.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use tungstenite::Message;

use crate::support::*;

#[test]
fn malformed_request_lines_do_not_hurt() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &[]);
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /etcd/event HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    ] {
        let answer = raw_exchange(hound.addr(), garbage, Duration::from_secs(3));
        if !answer.is_empty() {
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1."), "answer to {garbage:?}: {text}");
        }
        assert_responsive(&mut hound);
    }
}

#[test]
fn a_huge_header_does_not_hurt() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &[]);
    let mut request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    // Refusing it or answering it are both fine; crashing or stalling is not.
    let answer = raw_exchange(hound.addr(), &request, Duration::from_secs(5));
    if !answer.is_empty() {
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1."), "answer: {text}");
    }
    assert_responsive(&mut hound);
}

#[test]
fn silent_and_half_sent_clients_do_not_stall_others() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &[]);
    let silent: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(hound.addr()).expect("connect"))
        .collect();
    let mut half = TcpStream::connect(hound.addr()).expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("write half a request");
    let mut half_body = TcpStream::connect(hound.addr()).expect("connect");
    half_body
        .write_all(
            b"POST /etcd/event HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"event_",
        )
        .expect("write half a body");
    for _ in 0..5 {
        assert_responsive(&mut hound);
    }
    let mut ws = monitor_synced(&hound, &["api"]);
    etcd.client()
        .put(&hound.key("api", "10.0.0.1:80"), "10.0.0.1:80");
    expect_message(&mut ws, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    drop(silent);
}

#[test]
fn a_binary_frame_leaves_no_registration_behind() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut client = etcd.client();
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut ws, PROMPT);
    let _ = ws.send(Message::Binary(vec![0u8, 1, 2, 3].into()));
    assert_responsive(&mut hound);
    // Whether hound ignores the frame or closes the socket, once the client is gone so is the key.
    close(ws);
    poll_until(PROMPT, "the registration to be removed", || {
        !registered(&mut client, &hound, "api", "10.0.0.1:80")
    });
    assert_responsive(&mut hound);
}

#[test]
fn invalid_utf8_text_leaves_no_registration_behind() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut client = etcd.client();
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut ws, PROMPT);
    write_raw(&mut ws, &raw_frame(0x1, &[0xff, 0xfe, 0xc3, 0x28], None));
    assert_responsive(&mut hound);
    vanish(ws);
    poll_until(PROMPT, "the registration to be removed", || {
        !registered(&mut client, &hound, "api", "10.0.0.1:80")
    });
}

#[test]
fn a_frame_over_64_kib_closes_with_1009_and_deregisters() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut ws, PROMPT);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    let payload = vec![b'x'; 100 * 1024];
    write_raw(&mut ws, &raw_frame(0x1, &payload, None));
    assert_eq!(
        read_close(&mut ws, PROMPT).map(|(code, _)| code),
        Some(1009)
    );
    expect_message(&mut watcher, &key_event("api", "DELETE", &[]));
    assert!(!registered(&mut client, &hound, "api", "10.0.0.1:80"));
    assert_responsive(&mut hound);
}

#[test]
fn an_announced_10_mb_frame_closes_with_1009() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut client = etcd.client();
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut ws, PROMPT);
    // Announce 10 MB but send only a little: hound must judge the header, not wait for the body.
    write_raw(
        &mut ws,
        &raw_frame(0x2, &[0u8; 1024], Some(10 * 1024 * 1024)),
    );
    assert_eq!(
        read_close(&mut ws, PROMPT).map(|(code, _)| code),
        Some(1009)
    );
    poll_until(PROMPT, "the registration to be removed", || {
        !registered(&mut client, &hound, "api", "10.0.0.1:80")
    });
    assert_responsive(&mut hound);
}

#[test]
fn a_10_mb_event_body_is_413_and_hurts_nothing() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &[]);
    let mut listener = monitor_synced(&hound, &["a"]);
    let length = 10 * 1024 * 1024;
    let mut stream = TcpStream::connect(hound.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "POST /etcd/event HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n{{\"event_type\":\"t\",\
         \"services\":[\"a\"],\"event_body\":\"",
        hound.addr()
    );
    stream.write_all(head.as_bytes()).expect("write the head");
    // Send the body from another thread while reading the answer here: hound may answer
    // before it has read it all, and then stops reading.
    let mut writer = stream.try_clone().expect("clone the stream");
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < length {
            if writer.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
    });
    let response = read_response(&mut stream).expect("an answer to a 10 MB body");
    response.assert_error(413);
    drop(stream);
    let _ = sender.join();
    assert_responsive(&mut hound);
    expect_no_message(&mut listener, QUIET);
}

#[test]
fn garbage_after_an_upgrade_ends_that_socket_only_and_deregisters() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut client = etcd.client();
    let mut watcher = monitor_synced(&hound, &["api"]);
    let mut ws = register(&hound, "api", "10.0.0.1", 80);
    let _ = next_json(&mut ws, PROMPT);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.1", 80)]));
    // Not a WebSocket frame: reserved bits and opcode, no mask, then noise.
    let mut garbage = vec![0xff, 0x7f, 0x00, 0x13, 0x37];
    garbage.extend((0..4096u32).map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8));
    write_raw(&mut ws, &garbage);
    // hound ends the socket (without a close frame, or with 1002 at most) ...
    let ending = read_close(&mut ws, PROMPT);
    assert!(
        matches!(ending, None | Some((1002, _))),
        "the socket should end as a protocol error: {ending:?}"
    );
    // ... deregisters its node, and the other socket and hound are fine.
    expect_message(&mut watcher, &key_event("api", "DELETE", &[]));
    assert!(!registered(&mut client, &hound, "api", "10.0.0.1:80"));
    assert_responsive(&mut hound);
    let _again = register(&hound, "api", "10.0.0.2", 80);
    expect_message(&mut watcher, &key_event("api", "PUT", &[("10.0.0.2", 80)]));
}

#[test]
fn a_100_kb_request_line_is_431_or_closed_and_hurts_nothing() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &[]);
    let mut request = b"GET /etcd/services/".to_vec();
    request.extend(std::iter::repeat_n(b'a', 100 * 1024));
    request.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(hound.addr(), &request, Duration::from_secs(5));
    if answer.is_empty() {
        eprintln!("100 KB request line: connection closed without an answer");
    } else {
        let response = read_response(&mut &answer[..]).expect("an HTTP answer");
        eprintln!("100 KB request line: {response:?}");
        response.assert_error(431);
    }
    assert_responsive(&mut hound);
}

/// A client that sends pings as fast as it can and never reads: hound's pongs cannot leave, so
/// hound must stop reading it and let TCP push back, instead of buffering replies without end.
#[test]
fn a_client_that_floods_pings_and_never_reads_is_pushed_back() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let mut hound = Hound::start(&etcd, &[]);
    let mut ws = monitor_synced(&hound, &["api"]);
    let stream = ws.get_mut();
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let pings: Vec<u8> = raw_frame(0x9, &[b'p'; 125], None).repeat(512);
    // Kernel buffers on both sides hold some megabytes; a hound that kept reading would take
    // everything the client writes.
    let ceiling = 64 * 1024 * 1024;
    let mut written = 0;
    let pushed_back = loop {
        match stream.write(&pings) {
            Ok(n) => written += n,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break true;
            }
            Err(err) => panic!("hound dropped the flooding client: {err}"),
        }
        if written > ceiling {
            break false;
        }
    };
    assert!(
        pushed_back,
        "hound kept reading after {written} bytes of pings it could not answer"
    );
    assert_responsive(&mut hound);
}

#[test]
fn a_malformed_percent_escape_in_a_query_is_400_and_registers_nothing() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &[]);
    let mut client = etcd.client();
    // `%+f` was once read as the byte 0x0f; every malformed escape is refused now.
    for path in [
        "/etcd/services/x?%+f=1",
        "/etcd/services?x=%g1",
        "/etcd/services/x?x=%4",
        "/etcd/services/x?x=1%",
    ] {
        hound.get(path).assert_error(400);
    }
    // An otherwise valid registration: refused before any upgrade, nothing written.
    let path = format!("{}&x=%+f", register_path("api", "10.0.0.1", 80));
    match ws_connect(hound.addr(), &path, &[]) {
        Ok(_) => panic!("{path} was upgraded; expected 400"),
        Err(response) => response.assert_error(400),
    }
    assert_namespace_empty(&mut client, &hound, "after a malformed escape");
    assert_eq!(hound.nodes("api"), pairs(&[]));
}

/// An upgrade without `Connection: Upgrade` cannot be handed over by tiny_http: it must be
/// refused (426) before anything is registered, not register, take over the live socket of the
/// same node and then fail.
#[test]
fn an_upgrade_without_connection_upgrade_is_426_and_takes_nothing_over() {
    let _w = watchdog();
    let etcd = Etcd::start();
    let hound = Hound::start(&etcd, &["--ttl", "30"]);
    let mut client = etcd.client();
    let mut live = register(&hound, "api", "10.0.0.1", 80);
    expect_message(&mut live, &key_event("api", "SYNC", &[("10.0.0.1", 80)]));
    let path = register_path("api", "10.0.0.1", 80);
    for connection in ["", "Connection: keep-alive\r\n"] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n{connection}\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            hound.addr()
        );
        let answer = raw_exchange(hound.addr(), request.as_bytes(), Duration::from_secs(2));
        read_response(&mut &answer[..])
            .expect("an HTTP answer")
            .assert_error(426);
    }
    // Nothing was taken over: the live socket hears nothing and still owns the key.
    expect_no_message(&mut live, QUIET);
    assert!(registered(&mut client, &hound, "api", "10.0.0.1:80"));
    // Split over two lines, the token still counts.
    let split = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        hound.addr()
    );
    let answer = raw_exchange(hound.addr(), split.as_bytes(), Duration::from_millis(500));
    assert!(
        answer.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // That one took the node over; the first two took nothing.
    assert_eq!(
        read_close(&mut live, PROMPT),
        Some((4000, "superseded".to_owned()))
    );
}
