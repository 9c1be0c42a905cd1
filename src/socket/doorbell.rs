//! How other threads reach a socket thread that sleeps in `ppoll`: a signal sent to that thread
//! alone, which interrupts its wait, and a close code to act on.
//!
//! Why a signal rather than an eventfd: an eventfd is a descriptor per socket, half of what a
//! socket costs in descriptors, and with a hard limit of 20,000 descriptors a host could not
//! hold 10,000 sockets. The wake-up signal is blocked on the socket thread except inside its
//! `ppoll` (an atomic unblock-and-wait), so a ring that comes while the thread is busy stays
//! pending and ends its next wait at once: no ring is lost, and no other system call on the
//! thread is ever interrupted. Other threads never receive it (`tgkill` names the thread).
//!
//! The signal is SIGURG: a standard signal is pending at most once (a real-time one queues an
//! entry per ring, which piles up while the socket is busy, and past the user's
//! `RLIMIT_SIGPENDING` rings fail); hound uses no out-of-band data, so nothing else sends it; and
//! its default action is to be ignored, so a stray one can never end the process.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

/// Which signal rings doorbells (see the module's notes). Its handler does nothing; the
/// interruption is the message.
const WAKE_SIGNAL: libc::c_int = libc::SIGURG;

extern "C" fn on_wake_signal(_: libc::c_int) {}

/// Installs the do-nothing handler once per process: ignored, the signal would not interrupt
/// `ppoll` at all. Every later call gets the first call's result.
fn install_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: `action` is fully initialised (zeroed, then handler, flags and an empty mask
        // set); the handler is async-signal-safe because it does nothing.
        let status = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_wake_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(WAKE_SIGNAL, &action, std::ptr::null_mut())
        };
        if status == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    });
    result.map_err(io::Error::from_raw_os_error)
}

/// A socket thread's doorbell: the fan-out rings it after queueing a message, and anyone may
/// ask the socket to close with a code. Made on the thread it wakes.
#[derive(Debug)]
pub struct Doorbell {
    /// The thread to wake (its kernel thread id).
    thread: libc::pid_t,
    /// The thread's signal mask before the wake-up signal was blocked: what `wait` unblocks.
    waiting_mask: libc::sigset_t,
    /// Rung since the thread last looked: further rings need no signal. Starts `true`: the
    /// thread has not looked yet, and its first look (see [`Doorbell::answer`]) is owed anyway.
    rung: AtomicBool,
    close: AtomicU16,
}

impl Doorbell {
    /// A doorbell for the calling thread, which from now on receives the wake-up signal only
    /// inside [`Doorbell::wait`].
    ///
    /// Rings before the thread's first [`Doorbell::answer`] send no signal: the thread must
    /// answer and look (at its queue, for a close request) before it first waits, and that
    /// look sees whatever those rings announced. Until then a signal would only stay pending,
    /// end the first wait at once, and have the kernel push its frame (3.3 KiB with AVX-512
    /// state) below `ppoll`: in every socket, whose SYNCs the socket thread itself queues before
    /// its loop, that was the deepest the stack of an idle socket ever reached.
    pub fn new() -> io::Result<Doorbell> {
        install_handler()?;
        // SAFETY: both sets are initialised by sigemptyset/pthread_sigmask before being read.
        let waiting_mask = unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            libc::sigaddset(&mut block, WAKE_SIGNAL);
            let status = libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut previous);
            if status != 0 {
                return Err(io::Error::from_raw_os_error(status));
            }
            libc::sigdelset(&mut previous, WAKE_SIGNAL);
            previous
        };
        Ok(Doorbell {
            thread: rustix::thread::gettid().as_raw_nonzero().get(),
            waiting_mask,
            rung: AtomicBool::new(true),
            close: AtomicU16::new(0),
        })
    }

    /// Wakes the socket thread. Never blocks; one signal per wait however often it rings.
    pub fn ring(&self) {
        if self.rung.swap(true, Ordering::AcqRel) {
            return;
        }
        // SAFETY: tgkill takes no pointers. Sent only while the thread is subscribed (the hub
        // stops ringing a socket before its thread ends), so the id names our socket thread;
        // an error (the thread just ended) needs no handling.
        unsafe {
            libc::syscall(libc::SYS_tgkill, libc::getpid(), self.thread, WAKE_SIGNAL);
        }
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

    /// Forgets the rings so far: call it before looking at what they announced (the queue, a
    /// close request), so that a ring after the look wakes the next [`Doorbell::wait`]. A
    /// thread must call it, then look, before its first wait (see [`Doorbell::new`]).
    pub fn answer(&self) {
        // A read-modify-write, not a store: a ringer whose swap finds `true` is then ordered
        // before this, so whatever it published (a close request) is seen by the look that
        // follows; one whose swap comes after finds `false` and sends the signal.
        self.rung.swap(false, Ordering::AcqRel);
    }

    /// Sleeps until `socket` has one of `events` (any error or hang-up too), the doorbell rings,
    /// or `timeout` passes. Returns whether the socket is ready. Call it on the doorbell's thread.
    pub fn wait(
        &self,
        socket: &impl AsFd,
        events: libc::c_short,
        timeout: Duration,
    ) -> io::Result<bool> {
        let mut entry = libc::pollfd {
            fd: socket.as_fd().as_raw_fd(),
            events,
            revents: 0,
        };
        let timeout = libc::timespec {
            // A wait longer than 2^62 s is as good as forever (and `time_t` is 64 bits here).
            tv_sec: timeout.as_secs().min(1 << 62) as _,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
        };
        // SAFETY: one valid pollfd, a valid timespec and a valid signal set, all borrowed for
        // the call only.
        let count = unsafe { libc::ppoll(&mut entry, 1, &timeout, &self.waiting_mask) };
        if count < 0 {
            let err = io::Error::last_os_error();
            // A ring (or any signal) ends the wait early: not an error.
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(err);
        }
        Ok(entry.revents != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::close_code;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn first_close_request_wins() {
        let doorbell = Doorbell::new().unwrap();
        doorbell.answer();
        assert_eq!(doorbell.close_requested(), None);
        doorbell.request_close(close_code::SUPERSEDED);
        doorbell.request_close(close_code::GOING_AWAY);
        assert_eq!(doorbell.close_requested(), Some(close_code::SUPERSEDED));
        doorbell.answer();
    }

    #[test]
    fn a_ring_from_another_thread_ends_a_wait_and_one_before_it_is_not_lost() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (quiet, _) = listener.accept().unwrap();
        let doorbell = Arc::new(Doorbell::new().unwrap());
        let long = Duration::from_secs(10);

        // Rung before the first look: no signal, the look is owed anyway and sees the close
        // request; the wait after it lasts its timeout.
        doorbell.request_close(close_code::GOING_AWAY);
        doorbell.answer();
        assert_eq!(doorbell.close_requested(), Some(close_code::GOING_AWAY));
        let started = Instant::now();
        let short = Duration::from_millis(30);
        assert!(!doorbell.wait(&quiet, libc::POLLIN, short).unwrap());
        assert!(
            started.elapsed() >= short,
            "a signal was sent before the first look"
        );

        // Rung after a look, before the wait: the pending signal ends it at once.
        doorbell.ring();
        let started = Instant::now();
        assert!(!doorbell.wait(&quiet, libc::POLLIN, long).unwrap());
        assert!(started.elapsed() < long / 2, "the early ring was lost");
        doorbell.answer();

        // Rung from another thread during the wait.
        let ringer = {
            let doorbell = doorbell.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                doorbell.ring();
            })
        };
        let started = Instant::now();
        assert!(!doorbell.wait(&quiet, libc::POLLIN, long).unwrap());
        assert!(
            started.elapsed() < long / 2,
            "the ring did not wake the wait"
        );
        ringer.join().unwrap();
        doorbell.answer();

        // Not rung: the wait lasts its timeout.
        let started = Instant::now();
        let short = Duration::from_millis(30);
        assert!(!doorbell.wait(&quiet, libc::POLLIN, short).unwrap());
        assert!(started.elapsed() >= short);
    }
}
