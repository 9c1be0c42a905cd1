//! How other threads reach a socket thread that sleeps in `poll`: an eventfd to wake it and a
//! close code to act on.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

/// Close codes hound sends, with the reason text that goes with each.
pub mod close_code {
    /// hound is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The client sent a frame that is not UTF-8 text where text was required.
    pub const INVALID_DATA: u16 = 1007;
    /// The client sent a frame or message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The socket's queue filled up because the client does not read.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// A newer registration of the same node on this hound took over.
    pub const SUPERSEDED: u16 = 4000;

    /// The close reason sent with `code`.
    pub fn reason(code: u16) -> &'static str {
        match code {
            GOING_AWAY => "shutting down",
            PROTOCOL_ERROR => "protocol error",
            INVALID_DATA => "invalid data",
            TOO_BIG => "frame too big",
            TRY_AGAIN_LATER => "too slow: message queue full",
            SUPERSEDED => "superseded",
            _ => "",
        }
    }
}

/// A socket thread's doorbell: the fan-out rings it after queueing a message, and anyone may
/// ask the socket to close with a code.
#[derive(Debug)]
pub struct Signal {
    wake: File,
    close: AtomicU16,
}

impl Signal {
    pub fn new() -> io::Result<Signal> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor that
        // nothing else owns, so OwnedFd may take it.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above: `fd` is fresh and owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Not a connection: descriptor scans need not `dup` it to find that out.
        crate::fds::claim(&[fd]);
        Ok(Signal {
            wake: File::from(owned),
            close: AtomicU16::new(0),
        })
    }

    /// Wakes the socket thread. Never blocks: the eventfd is non-blocking and its counter
    /// cannot realistically overflow.
    pub fn wake(&self) {
        let _ = (&self.wake).write(&1u64.to_ne_bytes());
    }

    /// Asks the socket to close with `code`; the first request wins.
    pub fn request_close(&self, code: u16) {
        let _ = self
            .close
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.wake();
    }

    /// The close code someone asked for, if any.
    pub fn close_requested(&self) -> Option<u16> {
        match self.close.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Resets the doorbell after a wake-up.
    pub fn drain(&self) {
        let mut counter = [0u8; 8];
        let _ = (&self.wake).read(&mut counter);
    }

    pub fn raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        // Released before the field closes the descriptor (see `fds::release`).
        crate::fds::release(&[self.wake.as_raw_fd()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_close_request_wins() {
        let signal = Signal::new().unwrap();
        assert_eq!(signal.close_requested(), None);
        signal.request_close(close_code::SUPERSEDED);
        signal.request_close(close_code::GOING_AWAY);
        assert_eq!(signal.close_requested(), Some(close_code::SUPERSEDED));
    }

    #[test]
    fn drain_resets_the_doorbell() {
        let signal = Signal::new().unwrap();
        signal.wake();
        signal.wake();
        let mut counter = [0u8; 8];
        assert_eq!((&signal.wake).read(&mut counter).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(counter), 2);
        signal.wake();
        signal.drain();
        let err = (&signal.wake).read(&mut counter).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
