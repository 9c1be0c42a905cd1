//! An upgraded connection, owned by its socket thread: reads go to the socket, writes through
//! the connection's [`Wire`], which the fan-out shares.

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use super::wire::Wire;

/// The TCP connection tiny_http handed over after the 101, non-blocking.
pub struct UpgradedStream {
    stream: Arc<TcpStream>,
    wire: Arc<Wire>,
}

impl UpgradedStream {
    /// Makes `stream` non-blocking and attaches `wire` to it.
    pub fn new(stream: TcpStream, wire: Arc<Wire>) -> io::Result<UpgradedStream> {
        stream.set_nonblocking(true)?;
        let stream = Arc::new(stream);
        wire.attach(stream.clone());
        Ok(UpgradedStream { stream, wire })
    }

    pub fn wire(&self) -> &Wire {
        &self.wire
    }
}

impl Drop for UpgradedStream {
    fn drop(&mut self) {
        // The wire's reference goes too, so the connection closes with this stream.
        self.wire.detach();
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

impl AsFd for UpgradedStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}
