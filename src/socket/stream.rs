//! Recovers the TCP socket behind tiny_http's upgraded stream so a socket thread can `poll` it.
//!
//! `Request::upgrade` hands back a `Box<dyn ReadWrite + Send>` that cannot be split, cloned or
//! given a timeout, and tiny_http exposes no descriptor. The socket is still the connection
//! from the request's peer to our port, so we find it among this process's descriptors by its
//! two addresses, `dup` it into a `TcpStream` we own, and keep tiny_http's box alive (its drop
//! shuts the connection down) until we are done.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use tiny_http::ReadWrite;

/// Descriptors already known to belong to upgraded sockets (tiny_http's and our duplicates).
/// A search skips them, so finding a new socket costs a directory read, not a `dup` of every
/// open connection.
static CLAIMED: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);

fn claimed() -> MutexGuard<'static, Option<HashSet<RawFd>>> {
    CLAIMED.lock().unwrap_or_else(|p| p.into_inner())
}

/// An upgraded connection as a plain `TcpStream`, plus what must live as long as it.
pub struct UpgradedStream {
    stream: TcpStream,
    original_fd: RawFd,
    _upgraded: Box<dyn ReadWrite + Send>,
}

impl UpgradedStream {
    /// Finds the socket connected from `peer` to our `local_port`.
    pub fn claim(
        upgraded: Box<dyn ReadWrite + Send>,
        local_port: u16,
        peer: SocketAddr,
    ) -> io::Result<UpgradedStream> {
        let known = claimed().clone().unwrap_or_default();
        for entry in std::fs::read_dir("/proc/self/fd")? {
            let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok())
            else {
                continue;
            };
            if fd <= 2 || known.contains(&fd) {
                continue;
            }
            // SAFETY: the borrow lives only for the `dup` below. If another thread closed `fd`
            // since the directory was read, `dup` fails with EBADF; if the number was reused,
            // we duplicate some other file, whose addresses will not match, and drop it.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            let Ok(duplicate) = borrowed.try_clone_to_owned() else {
                continue;
            };
            let stream = TcpStream::from(duplicate);
            let matches = stream.peer_addr().is_ok_and(|addr| addr == peer)
                && stream.local_addr().is_ok_and(|addr| addr.port() == local_port);
            if matches {
                claimed()
                    .get_or_insert_with(HashSet::new)
                    .extend([fd, stream.as_raw_fd()]);
                return Ok(UpgradedStream {
                    stream,
                    original_fd: fd,
                    _upgraded: upgraded,
                });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no socket from {peer} to port {local_port} among our descriptors"),
        ))
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.stream
    }
}

impl Drop for UpgradedStream {
    fn drop(&mut self) {
        // Unclaim before the fields close the descriptors: a number unclaimed while still
        // open is harmless (a search would only find foreign addresses on it), whereas one
        // closed while still claimed could be reused by a new connection that a search skips.
        if let Some(set) = claimed().as_mut() {
            set.remove(&self.original_fd);
            set.remove(&self.stream.as_raw_fd());
        }
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
