//! The DNS server (`--dns-port`): A, AAAA and SRV answers from the mirror over UDP and TCP.
//!
//! Threads, as everywhere in hound, do blocking I/O: one per UDP socket (several sockets share
//! the port with `SO_REUSEPORT`, so the kernel spreads clients over the cores), one accepting
//! TCP connections, and one per TCP connection, at most [`MAX_TCP_CONNECTIONS`] at once, each
//! bounded by `--idle-timeout`.
//!
//! - `zone.rs`: the answers, prepared when a membership changes.
//! - `answer.rs`: one query in, one response out.

pub mod answer;
pub mod zone;

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

use answer::{Responder, Transport};
use zone::Zone;

/// TCP connections served at once; more are closed as soon as they are accepted (RFC 7766
/// lets a server do that), so a flood of idle connections costs a bounded number of threads.
pub const MAX_TCP_CONNECTIONS: usize = 64;
/// UDP sockets (and threads) at most: one per core is what the kernel can spread queries over.
const MAX_UDP_SOCKETS: usize = 4;
/// Stack of a TCP connection thread: the buffers live on the heap.
const TCP_STACK: usize = 128 * 1024;
/// The receive buffer asked for each UDP socket, so a burst waits in the kernel rather than
/// being dropped (the kernel caps it at `net.core.rmem_max`).
const UDP_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;
/// Tries at finding a port free for both UDP and TCP when `--dns-port 0` asks for any.
const PORT_TRIES: usize = 16;

/// A running DNS server.
#[derive(Debug)]
pub struct DnsServer {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    udp: Vec<Arc<UdpSocket>>,
    tcp: Arc<TcpListener>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `zone` on UDP and TCP at `ip`:`port` (`0`: a port free for both). TCP
    /// connections may idle, or take to send a query, `idle_timeout`.
    pub fn start(
        ip: IpAddr,
        port: u16,
        zone: Arc<Zone>,
        idle_timeout: Duration,
    ) -> io::Result<DnsServer> {
        let udp_count = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_UDP_SOCKETS);
        let (udp, tcp) = bind_both(SocketAddr::new(ip, port), udp_count)?;
        let local_addr = tcp.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let responder = Arc::new(Responder::new(zone));
        let udp: Vec<Arc<UdpSocket>> = udp.into_iter().map(Arc::new).collect();
        let tcp = Arc::new(tcp);
        let mut threads = Vec::new();
        for (n, socket) in udp.iter().enumerate() {
            let (socket, responder, stopping) =
                (socket.clone(), responder.clone(), stopping.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{n}"))
                    .spawn(move || serve_udp(&socket, &responder, &stopping))?,
            );
        }
        let (listener, accept_stopping) = (tcp.clone(), stopping.clone());
        threads.push(
            std::thread::Builder::new()
                .name("dns-tcp-accept".into())
                .spawn(move || accept_tcp(&listener, &responder, &accept_stopping, idle_timeout))?,
        );
        Ok(DnsServer {
            local_addr,
            stopping,
            udp,
            tcp,
            threads,
        })
    }

    /// The address both transports listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops answering: wakes the UDP and accepting threads (shutting a socket's reading down
    /// ends a blocked `recv` or `accept` on Linux) and waits for them. Open TCP connections end
    /// at their next read.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Release);
        for socket in &self.udp {
            let _ = rustix::net::shutdown(socket.as_fd(), rustix::net::Shutdown::Read);
        }
        let _ = rustix::net::shutdown(self.tcp.as_fd(), rustix::net::Shutdown::Read);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// `count` UDP sockets sharing `addr` and a TCP listener on the same port.
fn bind_both(addr: SocketAddr, count: usize) -> io::Result<(Vec<UdpSocket>, TcpListener)> {
    let mut last_error = None;
    // Bounded: a fixed port is tried once; any port until one is free for both transports.
    let tries = if addr.port() == 0 { PORT_TRIES } else { 1 };
    for _ in 0..tries {
        let first = udp_socket(addr)?;
        let bound = first.local_addr()?;
        match tcp_listener(bound) {
            Ok(tcp) => {
                let mut udp = vec![first];
                for _ in 1..count {
                    udp.push(udp_socket(bound)?);
                }
                return Ok((udp, tcp));
            }
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no port free for both UDP and TCP")))
}

fn family(addr: SocketAddr) -> AddressFamily {
    match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket =
        rustix::net::socket_with(family(addr), SocketType::DGRAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_reuseport(&socket, true)?;
    // Best effort: the default buffer still works, it only drops sooner under a burst.
    let _ = sockopt::set_socket_recv_buffer_size(&socket, UDP_RECEIVE_BUFFER);
    rustix::net::bind(&socket, &addr)?;
    Ok(UdpSocket::from(socket))
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket =
        rustix::net::socket_with(family(addr), SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    sockopt::set_tcp_nodelay(&socket, true)?;
    rustix::net::bind(&socket, &addr)?;
    rustix::net::listen(&socket, 128)?;
    Ok(TcpListener::from(socket))
}

/// Answers datagrams until stopped.
fn serve_udp(socket: &UdpSocket, responder: &Responder, stopping: &AtomicBool) {
    // The largest datagram there is: a longer query would arrive cut and look malformed.
    let mut query = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(4096);
    while !stopping.load(Ordering::Acquire) {
        let (len, peer) = match socket.recv_from(&mut query) {
            Ok(got) => got,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                if !stopping.load(Ordering::Acquire) {
                    log::warn!("DNS over UDP: {err}");
                }
                continue;
            }
        };
        if stopping.load(Ordering::Acquire) {
            break;
        }
        if responder.answer(&query[..len], Transport::Udp, &mut out)
            && let Err(err) = socket.send_to(&out, peer)
        {
            log::debug!("DNS answer to {peer} not sent: {err}");
        }
    }
}

/// Accepts TCP connections until stopped, each served on its own thread up to the cap.
fn accept_tcp(
    listener: &TcpListener,
    responder: &Arc<Responder>,
    stopping: &AtomicBool,
    idle_timeout: Duration,
) {
    let open = Arc::new(AtomicUsize::new(0));
    while !stopping.load(Ordering::Acquire) {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) => {
                if !stopping.load(Ordering::Acquire) {
                    log::warn!("DNS over TCP: accept failed: {err}");
                    // Out of descriptors, most likely: let some close before trying again.
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_TCP_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            log::debug!("DNS over TCP: {MAX_TCP_CONNECTIONS} connections open; closing {peer}'s");
            continue;
        }
        let slot = OpenSlot(open.clone());
        let responder = responder.clone();
        let spawned = std::thread::Builder::new()
            .name("dns-tcp".into())
            .stack_size(TCP_STACK)
            .spawn(move || {
                let _slot = slot;
                serve_tcp(stream, &responder, idle_timeout);
            });
        if let Err(err) = spawned {
            log::warn!("DNS over TCP: cannot start a thread for {peer}: {err}");
        }
    }
}

/// One open TCP connection, counted until its thread ends.
struct OpenSlot(Arc<AtomicUsize>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers the queries of one TCP connection (RFC 7766: each framed by a two-byte length)
/// until the client closes it, idles `idle_timeout`, or takes longer than that to send one
/// query or to read one answer.
fn serve_tcp(mut stream: TcpStream, responder: &Responder, idle_timeout: Duration) {
    let mut query = Vec::new();
    let mut out = Vec::new();
    if stream.set_write_timeout(Some(idle_timeout)).is_err() {
        return;
    }
    loop {
        let deadline = Instant::now() + idle_timeout;
        let mut length = [0u8; 2];
        if read_exact_by(&mut stream, &mut length, deadline).is_err() {
            return;
        }
        query.resize(usize::from(u16::from_be_bytes(length)), 0);
        if read_exact_by(&mut stream, &mut query, deadline).is_err() {
            return;
        }
        if !responder.answer(&query, Transport::Tcp, &mut out) {
            continue;
        }
        let Ok(length) = u16::try_from(out.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(2 + out.len());
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&out);
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}

/// Fills `buf` from `stream`, failing at `deadline` however slowly the bytes trickle in.
fn read_exact_by(stream: &mut TcpStream, mut buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_wakes_every_thread() {
        let zone = Arc::new(Zone::new("hound.").unwrap());
        let server = DnsServer::start(
            IpAddr::from([127, 0, 0, 1]),
            0,
            zone,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_ne!(server.local_addr().port(), 0);
        let started = Instant::now();
        server.stop();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stop took {:?}",
            started.elapsed()
        );
    }
}
