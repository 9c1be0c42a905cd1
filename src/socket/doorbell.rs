//! How other threads reach a socket thread that sleeps in `poll`: an eventfd to wake it and a
//! close code to act on.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};

use rustix::event::{EventfdFlags, eventfd};

/// A socket thread's doorbell: the fan-out rings it after queueing a message, and anyone may
/// ask the socket to close with a code.
#[derive(Debug)]
pub struct Doorbell {
    wake: OwnedFd,
    close: AtomicU16,
}

impl Doorbell {
    pub fn new() -> io::Result<Doorbell> {
        let wake = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Doorbell {
            wake,
            close: AtomicU16::new(0),
        })
    }

    /// Wakes the socket thread. Never blocks: the eventfd is non-blocking and its counter
    /// cannot realistically overflow.
    pub fn ring(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Asks the socket to close with `code`; the first request wins.
    pub fn request_close(&self, code: u16) {
        let _ = self
            .close
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.ring();
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
        let _ = rustix::io::read(&self.wake, &mut counter);
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::close_code;

    #[test]
    fn first_close_request_wins() {
        let doorbell = Doorbell::new().unwrap();
        assert_eq!(doorbell.close_requested(), None);
        doorbell.request_close(close_code::SUPERSEDED);
        doorbell.request_close(close_code::GOING_AWAY);
        assert_eq!(doorbell.close_requested(), Some(close_code::SUPERSEDED));
    }

    #[test]
    fn drain_resets_the_doorbell() {
        let doorbell = Doorbell::new().unwrap();
        doorbell.ring();
        doorbell.ring();
        let mut counter = [0u8; 8];
        assert_eq!(rustix::io::read(&doorbell.wake, &mut counter).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(counter), 2);
        doorbell.ring();
        doorbell.drain();
        let err = rustix::io::read(&doorbell.wake, &mut counter).unwrap_err();
        assert_eq!(err, rustix::io::Errno::AGAIN);
    }
}
