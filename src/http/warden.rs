//! The connection warden: drops HTTP connections that sit idle or dribble a request that never
//! completes. tiny_http sets no timeouts and hides its sockets, so once a second the warden
//! finds them (see `fds`) and asks the kernel how long each has been quiet.

use std::net::Shutdown;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::fds;

/// How often the warden looks.
const ROUND: Duration = Duration::from_secs(1);

/// Starts the warden for connections to `port`: a connection that has received nothing for
/// `idle`, or has been sent nothing for `2 × idle` (a request trickling in that never gets an
/// answer), is shut down. WebSockets are not its business: their threads ping them.
pub fn start(port: u16, idle: Duration, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("warden".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(ROUND);
                let swept = fds::for_each_connection(port, |_, stream| {
                    if let Ok(quiet) = fds::quiet(&stream)
                        && (quiet.since_received >= idle || quiet.since_sent >= idle * 2)
                    {
                        log::debug!(
                            "dropping connection from {:?}: quiet for {:?}/{:?}",
                            stream.peer_addr(),
                            quiet.since_received,
                            quiet.since_sent
                        );
                        let _ = stream.shutdown(Shutdown::Both);
                    }
                    ControlFlow::Continue(())
                });
                if let Err(err) = swept {
                    log::warn!("the connection warden cannot list descriptors: {err}");
                }
            }
        })
        .map(|_| ())
}
