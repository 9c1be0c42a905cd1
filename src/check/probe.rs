//! One check of one node in flight, driven by the checker thread's `poll`: a non-blocking
//! connect, then for `check=http` a `GET` and the status line of the answer. Nothing here
//! blocks; each step says what it waits for, or what it found.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::{CheckSpec, Probe};
use crate::describe::Status;

/// What a check found: the status and, unless it passed, why.
pub type Finding = (Status, Option<String>);

/// The most of an answer read while looking for its status line.
const MAX_HEAD: usize = 4096;

/// A check between its start and its finding.
#[derive(Debug)]
pub struct InFlight {
    stream: TcpStream,
    stage: Stage,
    /// The HTTP request, sent once connected (`None` for a TCP check).
    request: Option<Vec<u8>>,
    pub deadline: Instant,
    timeout: Duration,
}

#[derive(Debug)]
enum Stage {
    Connecting,
    /// Sending the request; this much of it has gone.
    Sending(usize),
    /// Reading the answer's head.
    Reading(Vec<u8>),
}

impl InFlight {
    /// Starts checking as `spec` says; a finding at once if not even the connect could start.
    pub fn start(spec: &CheckSpec, now: Instant) -> Result<InFlight, Finding> {
        let family = match spec.target {
            SocketAddr::V4(_) => AddressFamily::INET,
            SocketAddr::V6(_) => AddressFamily::INET6,
        };
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)
            .map_err(|err| critical(format!("cannot open a socket: {err}")))?;
        match rustix::net::connect(&fd, &spec.target) {
            Ok(()) | Err(Errno::INPROGRESS) => {}
            Err(err) => return Err(unreachable(err)),
        }
        Ok(InFlight {
            stream: TcpStream::from(fd),
            stage: Stage::Connecting,
            request: match &spec.probe {
                Probe::Tcp => None,
                Probe::Http { path } => Some(request(path, spec.target)),
            },
            deadline: now + spec.timeout,
            timeout: spec.timeout,
        })
    }

    /// The socket, to poll.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// What to poll for.
    pub fn interest(&self) -> PollFlags {
        match self.stage {
            Stage::Connecting | Stage::Sending(_) => PollFlags::OUT,
            Stage::Reading(_) => PollFlags::IN,
        }
    }

    /// What a check that ran out of time found.
    pub fn expired(&self) -> Finding {
        let what = match self.stage {
            Stage::Connecting => "no connection",
            Stage::Sending(_) | Stage::Reading(_) => "no answer",
        };
        critical(format!("{what} within {}", seconds(self.timeout)))
    }

    /// Goes as far as the socket allows now (`poll` reported `revents`); the finding once
    /// there is one.
    pub fn advance(&mut self, revents: PollFlags) -> Option<Finding> {
        if revents.is_empty() {
            return None;
        }
        if let Stage::Connecting = self.stage {
            match rustix::net::sockopt::socket_error(&self.stream) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Some(unreachable(err)),
                Err(err) => return Some(unreachable(err)),
            }
            if self.request.is_none() {
                return Some((Status::Passing, None));
            }
            self.stage = Stage::Sending(0);
        }
        if let Stage::Sending(sent) = &mut self.stage {
            let request = self.request.as_deref().unwrap_or_default();
            while *sent < request.len() {
                match self.stream.write(&request[*sent..]) {
                    Ok(0) => return Some(critical("the connection closed".into())),
                    Ok(n) => *sent += n,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => return None,
                    Err(err) => return Some(critical(format!("cannot send the request: {err}"))),
                }
            }
            self.stage = Stage::Reading(Vec::with_capacity(256));
            // The answer may not be there yet: wait for it.
            return None;
        }
        if let Stage::Reading(head) = &mut self.stage {
            let mut buffer = [0u8; 1024];
            loop {
                match self.stream.read(&mut buffer) {
                    Ok(0) => {
                        return Some(
                            status_of(head)
                                .unwrap_or_else(|| critical("closed without an answer".into())),
                        );
                    }
                    Ok(n) => {
                        head.extend_from_slice(&buffer[..n]);
                        if let Some(finding) = status_of(head) {
                            return Some(finding);
                        }
                        if head.len() > MAX_HEAD {
                            return Some(critical("the answer is not HTTP".into()));
                        }
                    }
                    Err(err) if err.kind() == ErrorKind::WouldBlock => return None,
                    Err(err) => return Some(critical(format!("cannot read the answer: {err}"))),
                }
            }
        }
        None
    }
}

/// `GET <path> HTTP/1.1` to `target`, closing after the answer.
fn request(path: &str, target: SocketAddr) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: hound-check\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// The finding of an answer whose head starts with `head`, once its status line is complete:
/// 2xx passing, 429 warning, anything else (or not HTTP) critical.
pub fn status_of(head: &[u8]) -> Option<Finding> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = String::from_utf8_lossy(&head[..end]);
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    Some(match code {
        Some(code) if version.starts_with("HTTP/") && (100..=999).contains(&code) => match code {
            200..=299 => (Status::Passing, None),
            429 => (Status::Warning, Some("HTTP 429".into())),
            _ => critical(format!("HTTP {code}")),
        },
        _ => critical("the answer is not HTTP".into()),
    })
}

fn critical(note: String) -> Finding {
    (Status::Critical, Some(note))
}

fn unreachable(err: Errno) -> Finding {
    critical(format!("cannot connect: {}", std::io::Error::from(err)))
}

/// `2 s`, `0.5 s`.
fn seconds(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            status_of(b"HTTP/1.1 200 OK\r\n"),
            Some((Status::Passing, None))
        );
        assert_eq!(status_of(b"HTTP/1.0 204\n"), Some((Status::Passing, None)));
        assert_eq!(
            status_of(b"HTTP/1.1 429 Too Many\r\n").unwrap().0,
            Status::Warning
        );
        assert_eq!(
            status_of(b"HTTP/1.1 500 Oops\r\n"),
            Some(critical("HTTP 500".into()))
        );
        assert_eq!(
            status_of(b"HTTP/1.1 301 Moved\r\n").unwrap().0,
            Status::Critical
        );
        assert_eq!(
            status_of(b"SSH-2.0-OpenSSH\r\n").unwrap().0,
            Status::Critical
        );
        assert_eq!(status_of(b"HTTP/1.1 200"), None, "not a whole line yet");
    }

    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(seconds(Duration::from_secs(2)), "2 s");
        assert_eq!(seconds(Duration::from_millis(500)), "0.5 s");
    }
}
