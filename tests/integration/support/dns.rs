//! DNS from the client's side: `dig` (Debian's dnsutils) run and its answer parsed, raw
//! queries over UDP and TCP for the hostile-input tests, and hound's DNS address from its log.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Hound, PROMPT, poll_for, spawn_child, wait_with_deadline};

/// `$HOUND_TEST_DIG`, else `dig` on PATH (`.ci/test` installs Debian's dnsutils).
pub fn dig_program() -> String {
    std::env::var("HOUND_TEST_DIG").unwrap_or_else(|_| "dig".into())
}

/// One resource record as dig prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    pub name: String,
    pub ttl: u32,
    pub kind: String,
    pub data: String,
}

/// What dig printed for one query.
#[derive(Debug)]
pub struct Dig {
    /// `NOERROR`, `NXDOMAIN`, `REFUSED`, …
    pub status: String,
    /// The header flags: `qr`, `aa`, `tc`, …
    pub flags: Vec<String>,
    pub answers: Vec<Rr>,
    pub additional: Vec<Rr>,
    /// dig's whole output, for assertion messages.
    pub output: String,
}

impl Dig {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The data of every answer, in order.
    pub fn answer_data(&self) -> Vec<String> {
        self.answers.iter().map(|rr| rr.data.clone()).collect()
    }
}

/// Runs `dig @addr -p port <args>` (one try, 2 s) and parses what it prints.
pub fn dig(addr: SocketAddr, args: &[&str]) -> Dig {
    let mut command = Command::new(dig_program());
    command
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+tries=1", "+time=2"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_child(command).unwrap_or_else(|err| {
        panic!(
            "cannot run {}: {err}; install Debian's dnsutils (.ci/test does)",
            dig_program()
        )
    });
    let mut stdout = child.stdout.take().expect("dig stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let status = wait_with_deadline(&mut child, Duration::from_secs(15));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let output = reader.join().expect("dig reader");
    parse_dig(&output).unwrap_or_else(|| panic!("dig {args:?} gave no answer:\n{output}"))
}

/// Parses dig's default output; `None` if it holds no answer header.
fn parse_dig(output: &str) -> Option<Dig> {
    let mut status = None;
    let mut flags = Vec::new();
    let mut answers = Vec::new();
    let mut additional = Vec::new();
    let mut section = "";
    for line in output.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            // A retry over TCP prints a second header: the last one counts.
            status = Some(rest.split(',').next()?.trim().to_owned());
            answers.clear();
            additional.clear();
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            flags = rest
                .split(';')
                .next()?
                .split_whitespace()
                .map(str::to_owned)
                .collect();
        } else if let Some(name) = line
            .strip_prefix(";; ")
            .and_then(|l| l.strip_suffix(" SECTION:"))
        {
            section = match name {
                "ANSWER" => "answer",
                "ADDITIONAL" => "additional",
                _ => "",
            };
        } else if line.trim().is_empty() || line.starts_with(';') {
            if line.trim().is_empty() {
                section = "";
            }
        } else if !section.is_empty() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 5 {
                continue;
            }
            let rr = Rr {
                name: fields[0].to_owned(),
                ttl: fields[1].parse().ok()?,
                kind: fields[3].to_owned(),
                data: fields[4..].join(" "),
            };
            if section == "answer" {
                answers.push(rr);
            } else {
                additional.push(rr);
            }
        }
    }
    Some(Dig {
        status: status?,
        flags,
        answers,
        additional,
        output: output.to_owned(),
    })
}

impl Hound {
    /// Where hound answers DNS, from its log line `answering DNS for D on ADDR (UDP and TCP)`.
    pub fn dns_addr(&self) -> SocketAddr {
        poll_for(PROMPT, "hound to log its DNS address", || {
            let log = self.stderr();
            let line = log.lines().find(|l| l.contains("answering DNS for"))?;
            let rest = line.split(" on ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }
}

/// A DNS query for `name` (dotted, absolute) and `qtype`, with ID `id`, built byte by byte so
/// tests can break it at will.
pub fn raw_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut packet = Vec::new();
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet
}

/// Sends `packet` over UDP and returns the answer, if one comes within `within`.
pub fn udp_exchange(addr: SocketAddr, packet: &[u8], within: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    socket.set_read_timeout(Some(within)).expect("timeout");
    socket.send_to(packet, addr).expect("send a datagram");
    let mut buf = vec![0u8; 65_536];
    match socket.recv_from(&mut buf) {
        Ok((len, _)) => Some(buf[..len].to_vec()),
        Err(_) => None,
    }
}

/// Sends `packet` over a fresh TCP connection (length-prefixed) and returns the answer.
pub fn tcp_exchange(addr: SocketAddr, packet: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, PROMPT)?;
    stream.set_read_timeout(Some(PROMPT))?;
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed)?;
    let mut length = [0u8; 2];
    stream.read_exact(&mut length)?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut answer)?;
    Ok(answer)
}

/// The RCODE and answer count of a raw response, after checking its ID and QR bit.
pub fn rcode_and_answers(response: &[u8], id: u16) -> (u8, u16) {
    assert!(response.len() >= 12, "short response {response:?}");
    assert_eq!(
        u16::from_be_bytes([response[0], response[1]]),
        id,
        "the query's ID"
    );
    assert!(response[2] & 0x80 != 0, "QR set");
    (
        response[3] & 0x0f,
        u16::from_be_bytes([response[6], response[7]]),
    )
}
