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
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use rustix::io::Errno;
use rustix::net::SendFlags;

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
    stream: Option<Arc<TcpStream>>,
    /// Bytes accepted but not yet taken by the kernel: the rest of a frame, and what follows.
    unsent: Vec<u8>,
    /// A close frame was (or is being) sent: no data frame may follow it.
    closed: bool,
}

impl Wire {
    fn lock(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts writing to `stream`, a connected, non-blocking socket.
    pub fn attach(&self, stream: Arc<TcpStream>) {
        self.lock().stream = Some(stream);
    }

    /// Stops every write to the connection and lets go of it.
    pub fn detach(&self) {
        let mut out = self.lock();
        out.stream = None;
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
        if out.stream.is_none() || out.closed || !out.unsent.is_empty() || !queue_empty() {
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
        if out.stream.is_none() {
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
        let Some(stream) = &self.stream else {
            return bytes.len();
        };
        let mut sent = 0;
        while sent < bytes.len() {
            // MSG_NOSIGNAL: a peer gone away must not raise SIGPIPE.
            match rustix::net::send(
                stream,
                &bytes[sent..],
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => sent += n,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return sent,
                Err(_) => return bytes.len(),
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{PollFd, PollFlags, Timespec};
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (Arc::new(server), client)
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
        wire.attach(server);
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
        wire.attach(server.clone());
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
            let mut writable = [PollFd::new(&*server, PollFlags::OUT)];
            let five_seconds = Timespec {
                tv_sec: 5,
                tv_nsec: 0,
            };
            assert!(
                rustix::event::poll(&mut writable, Some(&five_seconds)).unwrap() > 0,
                "drains"
            );
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
