use std::io::Result as IoResult;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::connection::Connection;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

pub(crate) enum Stream {
    // hound patch: shared by the read and the write half (see `try_clone`)
    Http(Arc<Connection>),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Clone for Stream {
    fn clone(&self) -> Self {
        match self {
            // hound patch: a plain connection's halves share its socket, so a connection
            // holds one descriptor, not two, and making the halves cannot fail for want of a
            // descriptor (0.12 panicked the accept thread then).
            Stream::Http(tcp_stream) => Stream::Http(tcp_stream.clone()),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Stream::Https(ssl_stream.clone()),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(Arc::new(tcp_stream))
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => (&**tcp_stream).read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => (&**tcp_stream).write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => (&**tcp_stream).flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    // hound patch: what both halves share
    shared: Arc<Shared>,
}

/// hound patch: what the two halves of a connection share.
#[derive(Default)]
struct Shared {
    /// Set when the connection was handed to the application (`Request::upgrade_into_tcp`):
    /// neither half may shut the socket down after that.
    handed_over: AtomicBool,
    /// Counts the connection in `Server::num_connections` until both halves are gone (the
    /// last request read from it answered) or it is handed over.
    count: Mutex<Option<ConnectionCount>>,
}

/// hound patch: one open connection in a server's count, for as long as it lives.
struct ConnectionCount(Arc<AtomicUsize>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RefinedTcpStream {
    pub(crate) fn new<S>(stream: S) -> (RefinedTcpStream, RefinedTcpStream)
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let (read, write) = (stream.clone(), stream);
        let shared = Arc::new(Shared::default());

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            shared: shared.clone(),
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            shared,
        };

        (read, write)
    }

    /// hound patch: the plain TCP socket under this stream, for the application to own. Both
    /// halves stop shutting the socket down when dropped; tiny-http's descriptor is closed once
    /// both are gone (the returned stream is a new descriptor of the same socket). `None` for
    /// TLS and Unix connections.
    pub(crate) fn into_tcp(self) -> Option<IoResult<TcpStream>> {
        let tcp_stream = self.tcp()?;
        self.shared.handed_over.store(true, Ordering::Release);
        self.uncount();
        Some(tcp_stream.try_clone())
    }

    /// hound patch: the plain TCP socket under this stream; `None` for TLS and Unix.
    fn tcp(&self) -> Option<&TcpStream> {
        match &self.stream {
            Stream::Http(connection) => match &**connection {
                Connection::Tcp(tcp_stream) => Some(tcp_stream),
                #[cfg(unix)]
                Connection::Unix(_) => None,
            },
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => None,
        }
    }

    /// hound patch: whether the peer has closed the connection or it broke, found by a peek
    /// that does not wait (the socket is non-blocking for that moment only: nothing else reads
    /// it while its request waits for an answer). `false` for TLS and Unix connections.
    pub(crate) fn peer_gone(&self) -> bool {
        let tcp_stream = match self.tcp() {
            Some(tcp_stream) => tcp_stream,
            None => return false,
        };
        if tcp_stream.set_nonblocking(true).is_err() {
            return false;
        }
        let peeked = tcp_stream.peek(&mut [0; 1]);
        let _ = tcp_stream.set_nonblocking(false);
        match peeked {
            Ok(0) => true,
            Ok(_) => false,
            Err(err) => !matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
        }
    }

    /// hound patch: counts the connection in `count` until both halves are gone or it is
    /// handed over.
    pub(crate) fn count_in(&self, count: &Arc<AtomicUsize>) {
        count.fetch_add(1, Ordering::Relaxed);
        *self.lock_count() = Some(ConnectionCount(count.clone()));
    }

    fn uncount(&self) {
        self.lock_count().take();
    }

    fn lock_count(&self) -> std::sync::MutexGuard<'_, Option<ConnectionCount>> {
        self.shared
            .count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.shared.handed_over.load(Ordering::Acquire) {
            return;
        }
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        self.stream.read(buf)
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.stream.flush()
    }
}
