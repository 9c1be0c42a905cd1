//! Our own TCP connections, found among the process's descriptors. tiny_http hides its sockets;
//! the WebSocket threads need theirs to `poll`, and the connection warden needs every other one
//! to enforce timeouts.

use std::collections::HashSet;
use std::io;
use std::net::TcpStream;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Descriptors that belong to upgraded WebSockets (tiny_http's two per connection, eventfds). Searches
/// skip them, so a search costs a directory read rather than a `dup` of every open connection.
static CLAIMED: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);

/// Held for the whole of a scan.
static SCAN: Mutex<()> = Mutex::new(());

fn claimed() -> MutexGuard<'static, Option<HashSet<RawFd>>> {
    CLAIMED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks descriptors as owned by a WebSocket thread.
pub fn claim(fds: &[RawFd]) {
    claimed().get_or_insert_with(HashSet::new).extend(fds);
}

/// Gives descriptors back. Call it *before* closing them: a number released while still open
/// is harmless (a search only finds foreign addresses on it), whereas one closed while still
/// claimed could be reused by a new connection that searches would then skip.
pub fn release(fds: &[RawFd]) {
    if let Some(set) = claimed().as_mut() {
        for fd in fds {
            set.remove(fd);
        }
    }
}

/// Calls `visit` with a duplicate of every unclaimed TCP connection whose local port is
/// `local_port` (and the number it duplicates), until `visit` breaks.
///
/// Which numbers are open is asked of the kernel in one `poll` per few thousand numbers (an
/// unused number answers `POLLNVAL`), skipping claimed ones without a system call: listing
/// `/proc/self/fd` instead costs a directory entry, and a dentry, for every descriptor,
/// thousands of claimed WebSocket descriptors included, several times a second.
///
/// Each duplicate is closed before the next number is looked at, so a scan never meets its own
/// duplicates (a `dup` takes the lowest free number, which may lie ahead) and reports them as
/// connections: numbers closed a moment later, which a claim would keep skipping after the
/// kernel hands them to a new connection.
pub fn for_each_connection(
    local_port: u16,
    mut visit: impl FnMut(RawFd, &TcpStream) -> ControlFlow<()>,
) -> io::Result<()> {
    // One scan at a time: a scan's temporary duplicates are descriptors too, with the same
    // peer as the connection they copy, and another scan must not take them for tiny_http's.
    let _one_at_a_time = SCAN.lock().unwrap_or_else(|p| p.into_inner());
    for fd in open_unclaimed_descriptors()? {
        // SAFETY: the borrow lives only for the `dup` below. If another thread closed `fd`
        // since it was seen open, `dup` fails with EBADF; if the number was reused, we
        // duplicate some other file, whose addresses will not match, and drop it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let Ok(duplicate) = borrowed.try_clone_to_owned() else {
            continue;
        };
        let stream = TcpStream::from(duplicate);
        let ours = stream.peer_addr().is_ok()
            && stream
                .local_addr()
                .is_ok_and(|addr| addr.port() == local_port);
        let flow = if ours {
            visit(fd, &stream)
        } else {
            ControlFlow::Continue(())
        };
        drop(stream);
        if flow.is_break() {
            break;
        }
    }
    Ok(())
}

/// The numbers above stderr that are open now and not claimed.
fn open_unclaimed_descriptors() -> io::Result<Vec<RawFd>> {
    /// Numbers asked about per `poll`, at most; poll refuses more entries than the
    /// descriptor limit, which may be lower.
    const CHUNK: usize = 1024;
    let chunk_len = usize::try_from(soft_limit()?).map_or(CHUNK, |limit| limit.clamp(1, CHUNK));
    let end = descriptor_table_size()?;
    let mut candidates: Vec<libc::pollfd> = {
        let claimed = claimed();
        (3..end)
            .filter(|fd| !claimed.as_ref().is_some_and(|set| set.contains(fd)))
            .map(|fd| libc::pollfd {
                fd,
                events: 0,
                revents: 0,
            })
            .collect()
    };
    for chunk in candidates.chunks_mut(chunk_len) {
        // SAFETY: `chunk` is a valid, exclusively borrowed array of `chunk.len()` pollfd; a
        // zero timeout never blocks.
        let status = unsafe { libc::poll(chunk.as_mut_ptr(), chunk.len() as libc::nfds_t, 0) };
        if status < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(candidates
        .iter()
        .filter(|entry| entry.revents & libc::POLLNVAL == 0)
        .map(|entry| entry.fd)
        .collect())
}

/// One past the highest descriptor number this process can have open now: the size of its
/// descriptor table (`FDSize` in `/proc/self/status`), which never shrinks.
fn descriptor_table_size() -> io::Result<RawFd> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("FDSize:"))
        .and_then(|size| size.trim().parse::<RawFd>().ok())
        .ok_or_else(|| io::Error::other("no FDSize in /proc/self/status"))
}

/// Sets TCP_NODELAY on a listening socket; Linux gives it to every connection accepted from it.
/// Without it, a large answer written in several pieces waits on the client's delayed ACK
/// (up to 40 ms per piece).
pub fn set_nodelay(listener: &std::net::TcpListener) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor, and a pointer to a c_int with its exact size.
    let status = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The soft and hard limits on open descriptors.
fn limits() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// The soft limit on open descriptors.
fn soft_limit() -> io::Result<u64> {
    limits().map(|limit| limit.rlim_cur)
}

/// Raises the soft limit on open descriptors to the hard limit (each WebSocket holds three)
/// and returns the new soft limit.
pub fn raise_limit() -> io::Result<u64> {
    let mut limit = limits()?;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// `TCP_ESTABLISHED` from the kernel's `tcp_states.h` (libc does not export it).
const TCP_ESTABLISHED: u8 = 1;

/// What the kernel knows of a connection's traffic (TCP_INFO and FIONREAD).
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    pub since_received: Duration,
    pub since_sent: Duration,
    /// Bytes received from the peer, ever.
    pub received: u64,
    /// Whether we ever sent the peer data.
    pub answered: bool,
    /// Bytes received but not yet read by anyone.
    pub unread: usize,
    /// Still open both ways (not yet shut down by either side).
    pub established: bool,
}

pub fn activity(stream: &TcpStream) -> io::Result<Activity> {
    // SAFETY: tcp_info is plain old data; zeroes are a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes and `len` holds the buffer's size.
    let status = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the valid pointer given.
    if unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &raw mut unread) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Activity {
        since_received: Duration::from_millis(info.tcpi_last_data_recv.into()),
        since_sent: Duration::from_millis(info.tcpi_last_data_sent.into()),
        received: info.tcpi_bytes_received,
        answered: info.tcpi_data_segs_out > 0,
        unread: usize::try_from(unread).unwrap_or(0),
        established: info.tcpi_state == TCP_ESTABLISHED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn finds_connections_on_a_port_and_skips_claimed_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let mut found = Vec::new();
        for_each_connection(port, |fd, stream| {
            assert_eq!(stream.peer_addr().unwrap(), peer);
            found.push(fd);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(found, [server_side.as_raw_fd()]);

        claim(&[server_side.as_raw_fd()]);
        let mut after_claim = 0;
        for_each_connection(port, |_, _| {
            after_claim += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        release(&[server_side.as_raw_fd()]);
        assert_eq!(after_claim, 0);

        let before = activity(&server_side).unwrap();
        assert_eq!(
            (before.received, before.unread, before.answered),
            (0, 0, false)
        );
        client.write_all(b"xy").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut after = activity(&server_side).unwrap();
        while after.unread < 2 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
            after = activity(&server_side).unwrap();
        }
        assert_eq!((after.received, after.unread), (2, 2));
        assert!(after.since_received < Duration::from_secs(5));
    }

    #[test]
    fn a_scan_reports_each_connection_once_and_never_its_own_duplicates() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..8 {
            clients.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
            servers.push(listener.accept().unwrap().0);
        }
        // Many open files, so the scan's own duplicates are numbered above the connections,
        // where a scan that looked at numbers opened after it started would meet them.
        let limit = raise_limit().unwrap();
        let fillers: Vec<std::fs::File> = (0..limit.min(3_000) / 2)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let mut expected: Vec<RawFd> = servers.iter().map(|s| s.as_raw_fd()).collect();
        expected.sort();
        for _ in 0..20 {
            let mut found = Vec::new();
            for_each_connection(port, |fd, _| {
                found.push(fd);
                ControlFlow::Continue(())
            })
            .unwrap();
            found.sort();
            assert_eq!(found, expected);
        }
        drop(fillers);
    }
}
