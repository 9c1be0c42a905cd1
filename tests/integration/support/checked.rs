//! Services for hound to check: a real HTTP server whose answer the test sets (a status code,
//! or silence), and a TCP port that is open or closed. Both bind port 0 on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the HTTP server does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Answers with this status code.
    Status(u16),
    /// Reads the request and never answers (the connection stays open).
    Silence,
}

/// An HTTP server on 127.0.0.1 answering every request as told; stopped on drop.
pub struct CheckedHttp {
    addr: SocketAddr,
    /// 0 means silence.
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    /// Every path requested, in order.
    paths: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl CheckedHttp {
    pub fn start(answer: Answer) -> CheckedHttp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a checked HTTP server");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("its address");
        let status = Arc::new(AtomicU16::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let mut server = CheckedHttp {
            addr,
            status: status.clone(),
            stop: stop.clone(),
            paths: paths.clone(),
            thread: None,
        };
        server.set(answer);
        let thread = std::thread::spawn(move || {
            // Silent connections are kept open until the server stops.
            let mut held: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Some(stream) = answer_one(stream, &status, &paths) {
                            held.push(stream);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        server.thread = Some(thread);
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, answer like this.
    pub fn set(&self, answer: Answer) {
        let code = match answer {
            Answer::Status(code) => code,
            Answer::Silence => 0,
        };
        self.status.store(code, Ordering::Release);
    }

    /// The paths requested so far.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// Reads one request head and answers it (or, for silence, hands the stream back to hold).
fn answer_one(
    mut stream: TcpStream,
    status: &AtomicU16,
    paths: &Mutex<Vec<String>>,
) -> Option<TcpStream> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    if let Some(path) = text.split_whitespace().nth(1) {
        paths.lock().unwrap().push(path.to_owned());
    }
    match status.load(Ordering::Acquire) {
        0 => Some(stream),
        code => {
            let answer = format!(
                "HTTP/1.1 {code} Set By Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes());
            None
        }
    }
}

impl Drop for CheckedHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A TCP port on 127.0.0.1 that accepts connections while open.
pub struct CheckedPort {
    addr: SocketAddr,
    listener: Option<TcpListener>,
}

impl CheckedPort {
    pub fn open() -> CheckedPort {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a checked port");
        let addr = listener.local_addr().expect("its address");
        CheckedPort {
            addr,
            listener: Some(listener),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening: connections are refused.
    pub fn close(&mut self) {
        self.listener = None;
    }

    /// Listens on the same port again (the kernel accepts connections into its backlog, which
    /// is all a TCP check needs).
    pub fn reopen(&mut self) {
        self.listener = Some(TcpListener::bind(self.addr).expect("listen on the same port again"));
    }
}
