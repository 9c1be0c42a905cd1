//! Recovers the TCP socket behind tiny_http's upgraded stream so a socket thread can `poll` it.
//!
//! `Request::upgrade` hands back a `Box<dyn ReadWrite + Send>` that cannot be split, cloned or
//! given a timeout, and tiny_http exposes no descriptor. The socket is still the connection
//! from the request's peer to our port, so we find it among this process's descriptors by its
//! two addresses and use tiny_http's own descriptor, borrowed: tiny_http keeps it open for as
//! long as its box lives (its drop shuts the connection down), and the box lives here, so the
//! borrow ends first. Borrowing instead of `dup`-ing saves a descriptor per socket.

use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;

use tiny_http::ReadWrite;

use super::wire::Wire;
use crate::fds;

/// An upgraded connection as a plain `TcpStream`, plus what must live as long as it. Reads go
/// to the socket; writes go through the connection's [`Wire`], shared with the fan-out.
pub struct UpgradedStream {
    /// tiny_http's descriptor, borrowed: never closed through this.
    stream: ManuallyDrop<TcpStream>,
    wire: Arc<Wire>,
    /// tiny_http's descriptors for this connection.
    claimed: Vec<RawFd>,
    _upgraded: Box<dyn ReadWrite + Send>,
}

impl UpgradedStream {
    /// Finds the socket connected from `peer` to our `local_port` and attaches `wire` to it.
    pub fn claim(
        upgraded: Box<dyn ReadWrite + Send>,
        local_port: u16,
        peer: SocketAddr,
        wire: Arc<Wire>,
    ) -> io::Result<UpgradedStream> {
        // tiny_http holds each connection under two descriptors (a read and a write clone):
        // claim both, or the warden would take the other for an idle HTTP connection.
        let mut claimed: Vec<RawFd> = Vec::new();
        fds::for_each_connection(local_port, |fd, stream| {
            if stream.peer_addr().is_ok_and(|addr| addr == peer) {
                claimed.push(fd);
            }
            ControlFlow::Continue(())
        })?;
        let Some(&fd) = claimed.first() else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no socket from {peer} to port {local_port} among our descriptors"),
            ));
        };
        fds::claim(&claimed);
        // SAFETY: `fd` is one of tiny_http's descriptors for this connection, open for as long
        // as `upgraded` lives; the ManuallyDrop never closes it, and `upgraded` is dropped
        // after every use of the stream (fields drop after `Drop::drop`, which detaches).
        let stream = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        wire.attach(fd);
        Ok(UpgradedStream {
            stream,
            wire,
            claimed,
            _upgraded: upgraded,
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.stream
    }

    pub fn wire(&self) -> &Wire {
        &self.wire
    }
}

impl Drop for UpgradedStream {
    fn drop(&mut self) {
        // Before tiny_http's box closes the descriptor: the fan-out must stop writing to it,
        // and searches may look at its number again (see `fds::release`).
        self.wire.detach();
        fds::release(&self.claimed);
    }
}

impl Read for UpgradedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.stream).read(buf)
    }
}

impl io::Write for UpgradedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wire.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for UpgradedStream {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}
