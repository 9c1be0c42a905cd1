//! Recovers the TCP socket behind tiny_http's upgraded stream so a socket thread can `poll` it.
//!
//! `Request::upgrade` hands back a `Box<dyn ReadWrite + Send>` that cannot be split, cloned or
//! given a timeout, and tiny_http exposes no descriptor. The socket is still the connection
//! from the request's peer to our port, so we find it among this process's descriptors by its
//! two addresses, `dup` it into a `TcpStream` we own, and keep tiny_http's box alive (its drop
//! shuts the connection down) until we are done.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, RawFd};

use tiny_http::ReadWrite;

use crate::fds;

/// An upgraded connection as a plain `TcpStream`, plus what must live as long as it.
pub struct UpgradedStream {
    stream: TcpStream,
    /// tiny_http's descriptors for this connection and our duplicate.
    claimed: Vec<RawFd>,
    _upgraded: Box<dyn ReadWrite + Send>,
}

impl UpgradedStream {
    /// Finds the socket connected from `peer` to our `local_port`.
    pub fn claim(
        upgraded: Box<dyn ReadWrite + Send>,
        local_port: u16,
        peer: SocketAddr,
    ) -> io::Result<UpgradedStream> {
        // tiny_http holds each connection under two descriptors (a read and a write clone):
        // claim both, or the warden would take the other for an idle HTTP connection.
        let mut found: Vec<(RawFd, TcpStream)> = Vec::new();
        fds::for_each_connection(local_port, |fd, stream| {
            if stream.peer_addr().is_ok_and(|addr| addr == peer) {
                found.push((fd, stream));
            }
            ControlFlow::Continue(())
        })?;
        let mut claimed: Vec<RawFd> = found.iter().map(|(fd, _)| *fd).collect();
        let Some((_, stream)) = found.pop() else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no socket from {peer} to port {local_port} among our descriptors"),
            ));
        };
        claimed.push(stream.as_raw_fd());
        fds::claim(&claimed);
        Ok(UpgradedStream {
            stream,
            claimed,
            _upgraded: upgraded,
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.stream
    }
}

impl Drop for UpgradedStream {
    fn drop(&mut self) {
        // Released here, before the fields close the descriptors (see `fds::release`).
        fds::release(&self.claimed);
    }
}

impl Read for UpgradedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for UpgradedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl AsRawFd for UpgradedStream {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}
