//! A minimal HTTP/1.1 keep-alive client and the closed-loop throughput runner used for both
//! hound's REST reads and etcd's JSON gateway, so both sides pay the same client costs.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::stats::Samples;

/// Reads one response (status line, headers, body by Content-Length or chunked) into `body`.
pub fn read_response(reader: &mut BufReader<TcpStream>, body: &mut Vec<u8>) -> io::Result<u16> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("status {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
    }
    body.clear();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            line.clear();
            reader.read_line(&mut line)?;
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        reader.read_exact(body)?;
    } else if close {
        reader.read_to_end(body)?;
    }
    Ok(status)
}

/// One closed-loop throughput measurement.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub requests: u64,
    pub per_sec: f64,
    pub latency: Samples,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// `threads` clients, each on its own keep-alive connection, send `request` back to back for
/// `warmup + measure`; only requests completed inside the measured window count. `check` is
/// asked about the first response's body of each connection (a sanity check, not a timing).
pub fn run(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    threads: usize,
    warmup: Duration,
    measure: Duration,
    check: fn(&[u8]) -> Result<(), String>,
) -> Throughput {
    let start = Instant::now();
    let window = (start + warmup, start + warmup + measure);
    let handles: Vec<_> = (0..threads)
        .map(|n| {
            let request = request.clone();
            thread::Builder::new()
                .name(format!("http-client-{n}"))
                .spawn(move || client_loop(addr, &request, window, check))
                .expect("spawn an HTTP client thread")
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for handle in handles {
        let (samples, errs, first) = handle.join().expect("HTTP client thread panicked");
        latencies.extend(samples);
        errors += errs;
        first_error = first_error.or(first);
    }
    let requests = latencies.len() as u64;
    Throughput {
        requests,
        per_sec: requests as f64 / measure.as_secs_f64(),
        latency: Samples::new(latencies),
        errors,
        first_error,
    }
}

fn client_loop(
    addr: SocketAddr,
    request: &[u8],
    (from, until): (Instant, Instant),
    check: fn(&[u8]) -> Result<(), String>,
) -> (Vec<Duration>, u64, Option<String>) {
    let mut latencies = Vec::with_capacity(200_000);
    let mut errors = 0u64;
    let mut first_error: Option<String> = None;
    let mut body = Vec::with_capacity(256 * 1024);
    let mut fail = |errors: &mut u64, what: String| {
        *errors += 1;
        if first_error.is_none() {
            first_error = Some(what);
        }
    };
    'connections: while Instant::now() < until {
        let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => stream,
            Err(err) => {
                fail(&mut errors, format!("connect: {err}"));
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut writer = match stream.try_clone() {
            Ok(writer) => writer,
            Err(err) => {
                fail(&mut errors, format!("clone: {err}"));
                continue;
            }
        };
        let mut reader = BufReader::with_capacity(64 * 1024, stream);
        let mut checked = false;
        loop {
            let sent = Instant::now();
            if sent >= until {
                break 'connections;
            }
            if let Err(err) = writer.write_all(request) {
                fail(&mut errors, format!("write: {err}"));
                continue 'connections;
            }
            match read_response(&mut reader, &mut body) {
                Ok(200) => {}
                Ok(status) => {
                    fail(
                        &mut errors,
                        format!("status {status}: {}", String::from_utf8_lossy(&body)),
                    );
                    continue 'connections;
                }
                Err(err) => {
                    fail(&mut errors, format!("read: {err}"));
                    continue 'connections;
                }
            }
            let done = Instant::now();
            if !checked {
                if let Err(err) = check(&body) {
                    fail(&mut errors, err);
                }
                checked = true;
            }
            if sent >= from && done <= until {
                latencies.push(done - sent);
            }
        }
    }
    (latencies, errors, first_error)
}

/// Standard base64 (with padding), for etcd's JSON gateway.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The end of the range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
