//! Verifies `--dns-port` with the real `dig`: A, AAAA and SRV (with the targets' addresses in
//! the additional section) over UDP and TCP, tag names, `.addr.` names, NXDOMAIN, REFUSED,
//! TC truncation and EDNS0, case, TTL 0, and that answers follow etcd. Then hostile input:
//! random and cut packets, a 10,000-label name, a TCP client that sends a length and nothing
//! else, a flood of idle TCP connections — none stops the others from being answered.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::*;

/// An etcd, a hound on it with DNS on a free port and `extra` flags, and its DNS address.
fn dns_hound(extra: &[&str]) -> (Etcd, Hound, SocketAddr) {
    let etcd = Etcd::start();
    let mut args = vec!["--dns-port", "0"];
    args.extend_from_slice(extra);
    let hound = Hound::start(&etcd, &args);
    let dns = hound.dns_addr();
    (etcd, hound, dns)
}

/// Writes `ip:port` nodes of `service` straight into etcd and waits until hound lists them.
fn put_nodes(etcd: &Etcd, hound: &Hound, service: &str, nodes: &[&str]) {
    let mut client = etcd.client();
    for node in nodes {
        client.put(&hound.key(service, node), node);
    }
    poll_until(PROMPT, "hound to see the nodes", || {
        hound.nodes(service).len() >= nodes.len()
    });
}

#[test]
fn a_aaaa_and_srv_with_their_addresses() {
    let _w = watchdog();
    let (etcd, hound, dns) = dns_hound(&[]);
    put_nodes(
        &etcd,
        &hound,
        "api",
        &[
            "10.0.0.2:81",
            "10.0.0.1:80",
            "[2001:db8::1]:8080",
            "db.example:5432",
        ],
    );

    let a = dig(dns, &["api.service.hound", "A"]);
    assert_eq!(a.status, "NOERROR", "{}", a.output);
    assert!(a.has_flag("aa"), "authoritative: {}", a.output);
    assert_eq!(a.answer_data(), ["10.0.0.1", "10.0.0.2"], "{}", a.output);
    assert!(a.answers.iter().all(|rr| rr.ttl == 0 && rr.kind == "A"));

    let aaaa = dig(dns, &["api.service.hound", "AAAA"]);
    assert_eq!(aaaa.answer_data(), ["2001:db8::1"], "{}", aaaa.output);

    for name in ["_api._tcp.service.hound", "api.service.hound"] {
        for transport in ["+notcp", "+tcp"] {
            let srv = dig(dns, &[name, "SRV", transport]);
            assert_eq!(srv.status, "NOERROR", "{}", srv.output);
            assert_eq!(
                srv.answer_data(),
                [
                    "1 1 80 10-0-0-1.addr.hound.",
                    "1 1 81 10-0-0-2.addr.hound.",
                    "1 1 8080 2001-db8--1.addr.hound.",
                    "1 1 5432 db.example."
                ],
                "{name} {transport}: {}",
                srv.output
            );
            let glue: Vec<(String, String)> = srv
                .additional
                .iter()
                .filter(|rr| rr.kind != "OPT")
                .map(|rr| (rr.name.clone(), rr.data.clone()))
                .collect();
            assert_eq!(
                glue,
                [
                    ("10-0-0-1.addr.hound.".to_owned(), "10.0.0.1".to_owned()),
                    ("10-0-0-2.addr.hound.".to_owned(), "10.0.0.2".to_owned()),
                    (
                        "2001-db8--1.addr.hound.".to_owned(),
                        "2001:db8::1".to_owned()
                    ),
                ],
                "{}",
                srv.output
            );
        }
    }

    // A target resolves on its own too.
    let target = dig(dns, &["10-0-0-2.addr.hound", "A"]);
    assert_eq!(target.answer_data(), ["10.0.0.2"], "{}", target.output);
    let target6 = dig(dns, &["2001-db8--1.addr.hound", "AAAA", "+tcp"]);
    assert_eq!(target6.answer_data(), ["2001:db8::1"], "{}", target6.output);

    // Names are case-insensitive, and the answer keeps the question's spelling.
    let shouted = dig(dns, &["ApI.SeRvIcE.HoUnD", "A"]);
    assert_eq!(shouted.answer_data(), ["10.0.0.1", "10.0.0.2"]);
    assert!(
        shouted
            .answers
            .iter()
            .all(|rr| rr.name == "ApI.SeRvIcE.HoUnD."),
        "{}",
        shouted.output
    );
}

#[test]
fn nxdomain_refused_tags_and_empty_answers() {
    let _w = watchdog();
    let (etcd, hound, dns) = dns_hound(&[]);
    put_nodes(&etcd, &hound, "api", &["10.0.0.1:80"]);
    put_nodes(&etcd, &hound, "names-only", &["db.example:5432"]);

    let missing = dig(dns, &["nope.service.hound", "A"]);
    assert_eq!(
        (missing.status.as_str(), missing.answers.len()),
        ("NXDOMAIN", 0),
        "{}",
        missing.output
    );
    assert_eq!(dig(dns, &["nope.hound", "A"]).status, "NXDOMAIN");
    assert_eq!(dig(dns, &["zz.addr.hound", "A"]).status, "NXDOMAIN");

    let outside = dig(dns, &["example.com", "A"]);
    assert_eq!(outside.status, "REFUSED", "{}", outside.output);
    assert_eq!(
        dig(dns, &["api.service.hound.example", "A", "+tcp"]).status,
        "REFUSED"
    );

    // No node carries tags yet: a tag of an existing service names no node, which is an
    // empty NOERROR like a service none of whose nodes qualify.
    let tagged = dig(dns, &["v2.api.service.hound", "A"]);
    assert_eq!(
        (tagged.status.as_str(), tagged.answers.len()),
        ("NOERROR", 0),
        "{}",
        tagged.output
    );
    let tagged_srv = dig(dns, &["v2.api.service.hound", "SRV", "+tcp"]);
    assert_eq!(
        (tagged_srv.status.as_str(), tagged_srv.answers.len()),
        ("NOERROR", 0)
    );

    // A service whose nodes are host names has no addresses, but SRV names them.
    let no_address = dig(dns, &["names-only.service.hound", "A"]);
    assert_eq!(
        (no_address.status.as_str(), no_address.answers.len()),
        ("NOERROR", 0)
    );
    let by_name = dig(dns, &["names-only.service.hound", "SRV"]);
    assert_eq!(
        by_name.answer_data(),
        ["1 1 5432 db.example."],
        "{}",
        by_name.output
    );

    // A type the zone has no records of, and the zone's own names.
    let txt = dig(dns, &["api.service.hound", "TXT"]);
    assert_eq!((txt.status.as_str(), txt.answers.len()), ("NOERROR", 0));
    for apex in ["hound", "service.hound"] {
        assert_eq!(dig(dns, &[apex, "A"]).status, "NOERROR", "{apex}");
    }

    // EDNS: hound answers version 0 with its own OPT record, and refuses later versions.
    let edns = dig(dns, &["api.service.hound", "A", "+edns=0"]);
    assert!(edns.output.contains("EDNS: version: 0"), "{}", edns.output);
    let later = dig(
        dns,
        &["api.service.hound", "A", "+edns=1", "+noednsnegotiation"],
    );
    assert_eq!(later.status, "BADVERS", "{}", later.output);
}

#[test]
fn answers_follow_etcd() {
    let _w = watchdog();
    let (etcd, hound, dns) = dns_hound(&["--dns-domain", "SD.Example"]);
    put_nodes(&etcd, &hound, "api", &["10.0.0.1:80"]);
    assert_eq!(
        dig(dns, &["api.service.sd.example", "A"]).answer_data(),
        ["10.0.0.1"]
    );
    assert_eq!(
        dig(dns, &["api.service.hound", "A"]).status,
        "REFUSED",
        "another domain"
    );

    let mut client = etcd.client();
    client.put(&hound.key("api", "10.0.0.3:80"), "10.0.0.3:80");
    client.delete(&hound.key("api", "10.0.0.1:80"));
    poll_until(PROMPT, "DNS to answer the new membership", || {
        dig(dns, &["api.service.sd.example", "A"]).answer_data() == ["10.0.0.3"]
    });
    client.delete(&hound.key("api", "10.0.0.3:80"));
    poll_until(PROMPT, "a service without nodes to be NXDOMAIN", || {
        dig(dns, &["api.service.sd.example", "A"]).status == "NXDOMAIN"
    });

    // A node registered over a WebSocket is in DNS once the handshake is done.
    let _ws = register(&hound, "web", "10.9.9.9", 443);
    let srv = dig(dns, &["_web._tcp.service.sd.example", "SRV", "+tcp"]);
    assert_eq!(
        srv.answer_data(),
        ["1 1 443 10-9-9-9.addr.sd.example."],
        "{}",
        srv.output
    );
}

#[test]
fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let _w = watchdog();
    let (etcd, hound, dns) = dns_hound(&[]);
    // 40 addresses: 40 × 16 bytes of A records do not fit 512 bytes.
    let nodes: Vec<String> = (1..=40).map(|i| format!("10.1.0.{i}:80")).collect();
    let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
    put_nodes(&etcd, &hound, "big", &refs);

    let cut = dig(dns, &["big.service.hound", "A", "+noedns", "+ignore"]);
    assert!(
        cut.has_flag("tc"),
        "TC over UDP without EDNS: {}",
        cut.output
    );
    assert!(cut.answers.is_empty(), "{}", cut.output);

    let retried = dig(dns, &["big.service.hound", "A", "+noedns"]);
    assert!(
        retried.output.contains("Truncated, retrying in TCP mode"),
        "{}",
        retried.output
    );
    assert_eq!(retried.answers.len(), 40, "{}", retried.output);

    let over_tcp = dig(dns, &["big.service.hound", "A", "+tcp"]);
    assert!(!over_tcp.has_flag("tc"));
    assert_eq!(over_tcp.answers.len(), 40);

    // The client's EDNS0 size counts: 4096 bytes take all 40, 512 do not.
    let roomy = dig(dns, &["big.service.hound", "A", "+bufsize=4096", "+ignore"]);
    assert!(!roomy.has_flag("tc"), "{}", roomy.output);
    assert_eq!(roomy.answers.len(), 40);
    let tight = dig(dns, &["big.service.hound", "A", "+bufsize=512", "+ignore"]);
    assert!(tight.has_flag("tc"), "{}", tight.output);

    // 40 SRV records (about 1,600 bytes) do not fit 1,232 either: TC, no answers.
    let srv = dig(
        dns,
        &["big.service.hound", "SRV", "+bufsize=1232", "+ignore"],
    );
    assert!(
        srv.has_flag("tc") && srv.answers.is_empty(),
        "{}",
        srv.output
    );
}

/// A deterministic stream of pseudo-random bytes (xorshift), so a failure can be replayed.
fn noise(seed: u64) -> impl FnMut() -> u8 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 24) as u8
    }
}

/// Asserts that a normal query still gets its answer over UDP and over TCP.
fn still_answered(dns: SocketAddr, id: u16) {
    let query = raw_query(id, "api.service.hound.", 1);
    let answer = udp_exchange(dns, &query, PROMPT).expect("an answer over UDP");
    assert_eq!(rcode_and_answers(&answer, id), (0, 1));
    let answer = tcp_exchange(dns, &query).expect("an answer over TCP");
    assert_eq!(rcode_and_answers(&answer, id), (0, 1));
}

#[test]
fn hostile_packets_do_no_harm() {
    let _w = watchdog();
    let (etcd, mut hound, dns) = dns_hound(&[]);
    put_nodes(&etcd, &hound, "api", &["10.0.0.1:80"]);
    still_answered(dns, 1);

    // Random datagrams of every size up to 600 bytes; and a good query cut at every length.
    let mut byte = noise(0x5eed);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for len in 0..600 {
        let packet: Vec<u8> = (0..len).map(|_| byte()).collect();
        socket.send_to(&packet, dns).expect("send noise");
    }
    let whole = raw_query(7, "api.service.hound.", 1);
    for cut in 0..whole.len() {
        socket
            .send_to(&whole[..cut], dns)
            .expect("send a cut query");
        if cut >= 12 {
            let answer = udp_exchange(dns, &whole[..cut], PROMPT).expect("FORMERR for a cut query");
            assert_eq!(rcode_and_answers(&answer, 7).0, 1, "FORMERR at {cut} bytes");
        }
    }
    // Random bytes behind a valid header, over TCP.
    for round in 0..50 {
        let mut packet = whole[..12].to_vec();
        packet.extend((0..round * 7).map(|_| byte()));
        let _ = tcp_exchange(dns, &packet);
    }
    still_answered(dns, 2);

    // A name of 10,000 labels: 20 kB, far past the 255 bytes a name may take.
    let mut huge = raw_query(9, "x.", 1);
    huge.truncate(12);
    for _ in 0..10_000 {
        huge.extend_from_slice(&[1, b'a']);
    }
    huge.extend_from_slice(&[0, 0, 1, 0, 1]);
    if let Some(answer) = udp_exchange(dns, &huge, PROMPT) {
        assert_eq!(rcode_and_answers(&answer, 9).0, 1, "FORMERR");
    }
    if let Ok(answer) = tcp_exchange(dns, &huge) {
        assert_eq!(rcode_and_answers(&answer, 9).0, 1, "FORMERR");
    }
    // A compression pointer that points at itself.
    let mut looped = whole[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    if let Some(answer) = udp_exchange(dns, &looped, PROMPT) {
        assert_eq!(rcode_and_answers(&answer, 7).0, 1, "FORMERR");
    }
    still_answered(dns, 3);
    assert!(hound.is_running(), "hound survived");
}

#[test]
fn a_tcp_client_that_sends_a_length_only_is_dropped_and_no_one_waits_for_it() {
    let _w = watchdog();
    let (etcd, mut hound, dns) = dns_hound(&["--idle-timeout", "2"]);
    put_nodes(&etcd, &hound, "api", &["10.0.0.1:80"]);

    let mut stalled = TcpStream::connect(dns).expect("connect");
    use std::io::Write;
    stalled.write_all(&[0x01, 0x00]).expect("send a length");
    let started = Instant::now();
    // Others are answered meanwhile, at once.
    still_answered(dns, 4);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "answered while one stalls"
    );

    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = [0u8; 16];
    let read = stalled.read(&mut rest);
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "hound closed the stalled connection: {read:?}"
    );
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "closed after the 2 s idle timeout, not {waited:?}"
    );

    // A flood of idle connections past the cap: the extra ones are closed at once, UDP goes on,
    // and once the idle ones time out TCP answers again.
    let flood_started = Instant::now();
    let idle: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(dns).expect("connect"))
        .collect();
    let closed_by_hound = |stream: &TcpStream| {
        stream.set_nonblocking(true).expect("non-blocking");
        match stream.peek(&mut [0u8; 1]) {
            Ok(n) => n == 0,
            Err(err) => err.kind() != std::io::ErrorKind::WouldBlock,
        }
    };
    poll_until(PROMPT, "the connections past the cap to be closed", || {
        idle.iter().filter(|s| closed_by_hound(s)).count() >= 80 - 64
    });
    assert!(
        flood_started.elapsed() < Duration::from_millis(1500),
        "closed at once, not by the idle timeout"
    );
    let answer = udp_exchange(dns, &raw_query(5, "api.service.hound.", 1), PROMPT).expect("UDP");
    assert_eq!(rcode_and_answers(&answer, 5), (0, 1));
    drop(idle);
    poll_until(PROMPT, "TCP to answer after the flood", || {
        tcp_exchange(dns, &raw_query(6, "api.service.hound.", 1)).is_ok()
    });
    assert!(hound.is_running());
}
