//! The one way bytes reach a WebSocket's TCP connection, shared by its socket thread and the
//! fan-out, so that the fan-out can write a message itself instead of waking the thread.
//!
//! Waking a thread costs far more than a non-blocking `send` on a connection whose buffer has
//! room (measured: about 20 µs per socket, most of the fan-out's time). So the fan-out sends
//! each frame straight away when it can: when it gets the lock without waiting, nothing is
//! queued or half-sent before it, and the connection takes the whole frame. Otherwise the
//! frame goes to the socket's queue and the thread is woken, as before. Whatever the kernel
//! does not take is kept here (`unsent`) and goes out before anything else, so frames never
//! interleave and keep their order. The socket thread's own writes (tungstenite's pongs, pings
//! and close frame) come through here too.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard, TryLockError};

/// Largest buffer of unsent bytes kept once it has drained.
const KEEP_CAPACITY: usize = 16 * 1024;

/// What became of a frame handed to [`Wire::try_send_now`].
#[derive(Debug, PartialEq, Eq)]
pub enum SendNow {
    /// On the wire (or dropped because the connection is broken: the thread will notice).
    Sent,
    /// Accepted, but part of it waits in `unsent`: the socket thread must wait for the
    /// connection to drain.
    Backlogged,
    /// Not sent: the caller must queue it.
    Queue,
}

/// The write side of one connection.
#[derive(Debug, Default)]
pub struct Wire {
    out: Mutex<Out>,
}

#[derive(Debug, Default)]
struct Out {
    /// The connection, from the moment the handshake is done until the thread lets it go.
    fd: Option<RawFd>,
    /// Bytes accepted but not yet taken by the kernel: the rest of a frame, and what follows.
    unsent: Vec<u8>,
    /// A close frame was (or is being) sent: no data frame may follow it.
    closed: bool,
}

impl Wire {
    fn lock(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts writing to `fd`, a connected socket that stays open until [`Wire::detach`].
    pub fn attach(&self, fd: RawFd) {
        self.lock().fd = Some(fd);
    }

    /// Stops every write to the connection; call it before the descriptor is closed.
    pub fn detach(&self) {
        let mut out = self.lock();
        out.fd = None;
        out.unsent = Vec::new();
    }

    /// No data frame may be sent from now on (a close frame follows).
    pub fn close_for_data(&self) {
        self.lock().closed = true;
    }

    /// The fan-out's fast path: sends `frame` at once if nothing must go before it and the
    /// socket thread is not writing right now. `queue_empty` is asked last, under the lock,
    /// where the socket thread also takes from the queue, so a frame never overtakes a queued
    /// one; once it answers true the frame is sent (or kept to be sent). Never waits: a busy
    /// lock means [`SendNow::Queue`].
    pub fn try_send_now(&self, frame: &[u8], queue_empty: impl FnOnce() -> bool) -> SendNow {
        let mut out = match self.out.try_lock() {
            Ok(out) => out,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return SendNow::Queue,
        };
        if out.fd.is_none() || out.closed || !out.unsent.is_empty() || !queue_empty() {
            return SendNow::Queue;
        }
        out.push(frame)
    }

    /// The socket thread's turn: sends what was left unsent, then frames from `next` (the
    /// queue) while the connection takes them whole. Returns whether bytes still wait for the
    /// connection to drain.
    pub fn pump<F: AsRef<[u8]>>(&self, mut next: impl FnMut() -> Option<F>) -> bool {
        let mut out = self.lock();
        out.flush_unsent();
        while out.unsent.is_empty() && !out.closed {
            let Some(frame) = next() else { break };
            out.push(frame.as_ref());
        }
        !out.unsent.is_empty()
    }

    /// How many bytes wait for the connection to drain.
    pub fn unsent_len(&self) -> usize {
        self.lock().unsent.len()
    }

    /// The socket thread's writes (tungstenite's frames): taken whole, sent as far as the
    /// connection takes them, the rest kept in order.
    pub fn write(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut out = self.lock();
        if out.fd.is_none() {
            return Err(io::ErrorKind::NotConnected.into());
        }
        if out.unsent.is_empty() {
            out.push(bytes);
        } else {
            out.unsent.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
}

impl Out {
    /// Sends `bytes` (nothing is unsent); keeps what the connection does not take.
    fn push(&mut self, bytes: &[u8]) -> SendNow {
        let sent = self.send(bytes);
        if sent == bytes.len() {
            SendNow::Sent
        } else {
            self.unsent.extend_from_slice(&bytes[sent..]);
            SendNow::Backlogged
        }
    }

    fn flush_unsent(&mut self) {
        if self.unsent.is_empty() {
            return;
        }
        let sent = self.send(&self.unsent);
        self.unsent.drain(..sent);
        // A backlog is rare and passing: do not keep its buffer for the socket's whole life.
        if self.unsent.is_empty() && self.unsent.capacity() > KEEP_CAPACITY {
            self.unsent = Vec::new();
        }
    }

    /// How much of `bytes` the connection took without blocking. A broken connection takes
    /// everything: the bytes are lost with it, and the socket thread learns of the break from
    /// its own `poll` and read.
    fn send(&self, bytes: &[u8]) -> usize {
        let Some(fd) = self.fd else {
            return bytes.len();
        };
        let mut sent = 0;
        while sent < bytes.len() {
            let rest = &bytes[sent..];
            // SAFETY: `fd` is an open socket while attached (the owner detaches before closing
            // it, under this lock); `rest` is a valid buffer of `rest.len()` bytes.
            let n = unsafe {
                libc::send(
                    fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                sent += n as usize;
                continue;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return sent,
                _ => return bytes.len(),
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut got = vec![0; len];
        stream.read_exact(&mut got).unwrap();
        got
    }

    #[test]
    fn sends_at_once_when_nothing_waits() {
        let (server, mut client) = pair();
        let wire = Wire::default();
        assert_eq!(wire.try_send_now(b"early", || true), SendNow::Queue);
        wire.attach(server.as_raw_fd());
        assert_eq!(wire.try_send_now(b"queued first", || false), SendNow::Queue);
        assert_eq!(wire.try_send_now(b"hello", || true), SendNow::Sent);
        assert_eq!(read_exactly(&mut client, 5), b"hello");
        wire.close_for_data();
        assert_eq!(wire.try_send_now(b"after close", || true), SendNow::Queue);
        wire.detach();
    }

    #[test]
    fn what_the_connection_does_not_take_goes_first_later_in_order() {
        let (server, mut client) = pair();
        let wire = Wire::default();
        wire.attach(server.as_raw_fd());
        // Far more than the socket buffers hold while the client does not read.
        let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        assert_eq!(wire.try_send_now(&big, || true), SendNow::Backlogged);
        assert!(wire.unsent_len() > 0);
        assert_eq!(wire.try_send_now(b"must wait", || true), SendNow::Queue);
        wire.write(b"pong").unwrap();
        let mut queue = vec![&b"tail"[..]].into_iter();
        let reader = std::thread::spawn(move || read_exactly(&mut client, big.len() + 8));
        let mut rounds = 0;
        while wire.pump(|| queue.next()) {
            rounds += 1;
            let mut writable = libc::pollfd {
                fd: server.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd, exclusively borrowed for the call.
            assert!(unsafe { libc::poll(&mut writable, 1, 5_000) } > 0, "drains");
        }
        let got = reader.join().unwrap();
        assert!(rounds > 0);
        assert_eq!(&got[got.len() - 8..], b"pongtail");
        assert!(
            got[..got.len() - 8]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 251) as u8)
        );
        wire.detach();
    }
}
