//! Checks hound runs against the nodes registered through it (`check=http|tcp`): what a
//! registration asks for, and the `Checker` handle over the one shared checker thread that runs
//! them all (`runner.rs`), a probe at a time per node, never blocking anything else.

mod probe;
mod runner;

#[cfg(test)]
pub use probe::status_of;

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::error::{Error, Result};
use crate::http::query::Query;
use crate::hub::SocketId;
use crate::names::Node;
use crate::store::Store;

/// The longest `check_path` accepted.
pub const MAX_CHECK_PATH: usize = 1024;
/// `check_interval` without one, in seconds.
const DEFAULT_INTERVAL: u64 = 10;
/// `check_timeout` without one (or half the interval, if that is shorter).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The note of a checked node before its first check has finished.
pub const NOT_CHECKED_YET: &str = "not checked yet";

/// How a node is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Connect: passing if the connection is accepted.
    Tcp,
    /// `GET http://ip:port<path>`: 2xx passing, 429 warning, anything else critical.
    Http { path: String },
}

/// A check as `/etcd/register` asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub probe: Probe,
    /// Where to connect: the node's address (its ip must be an IP literal).
    pub target: SocketAddr,
    pub interval: Duration,
    pub timeout: Duration,
}

impl CheckSpec {
    /// Reads `check`, `check_path`, `check_interval` and `check_timeout` for `node`; `None`
    /// without `check`. Every bad value is a 400, and so is a check parameter without `check`,
    /// `check_path` without `check=http`, or a check of a node named by a host name (hound
    /// checks an address, and resolving names would stall its checker).
    pub fn parse(query: &Query, node: &Node) -> Result<Option<CheckSpec>> {
        let bad = |why: String| Err(Error::BadRequest(why));
        let Some(kind) = query.get("check") else {
            for name in ["check_path", "check_interval", "check_timeout"] {
                if query.get(name).is_some() {
                    return bad(format!("{name} needs check=http or check=tcp"));
                }
            }
            return Ok(None);
        };
        let probe = match kind {
            "tcp" if query.get("check_path").is_some() => {
                return bad("check_path needs check=http".into());
            }
            "tcp" => Probe::Tcp,
            "http" => Probe::Http {
                path: parse_path(query.get("check_path").unwrap_or("/"))?,
            },
            other => return bad(format!("check {other:?} is not http or tcp")),
        };
        let Some(ip) = node.ip() else {
            return bad(format!(
                "a check needs an IP address, not the host name {:?}",
                node.host.as_str()
            ));
        };
        let interval = match query.get("check_interval") {
            Some(text) => parse_interval(text)?,
            None => Duration::from_secs(DEFAULT_INTERVAL),
        };
        let timeout = match query.get("check_timeout") {
            Some(text) => parse_timeout(text, interval)?,
            None => DEFAULT_TIMEOUT.min(interval / 2),
        };
        Ok(Some(CheckSpec {
            probe,
            target: SocketAddr::new(ip, node.port),
            interval,
            timeout,
        }))
    }
}

/// `check_path`: starts with `/`, at most 1024 characters of visible ASCII (no spaces or
/// control characters, which could break the request line).
pub fn parse_path(path: &str) -> Result<String> {
    let visible = path.bytes().all(|b| b.is_ascii_graphic());
    if !path.starts_with('/') || path.len() > MAX_CHECK_PATH || !visible {
        return Err(Error::BadRequest(format!(
            "check_path {path:?} must start with / and hold at most {MAX_CHECK_PATH} visible \
             ASCII characters"
        )));
    }
    Ok(path.to_owned())
}

/// `check_interval`: whole seconds, 1–3600.
pub fn parse_interval(text: &str) -> Result<Duration> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u64>() {
        Ok(seconds) if digits_only && (1..=3600).contains(&seconds) => {
            Ok(Duration::from_secs(seconds))
        }
        _ => Err(Error::BadRequest(format!(
            "check_interval {text:?} is not a number of seconds from 1 to 3600"
        ))),
    }
}

/// `check_timeout`: seconds, a decimal with at most three places (`0.5`), above 0 and below
/// the interval.
pub fn parse_timeout(text: &str, interval: Duration) -> Result<Duration> {
    let bad = || {
        Error::BadRequest(format!(
            "check_timeout {text:?} is not a number of seconds above 0 and below the interval \
             ({} s)",
            interval.as_secs()
        ))
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || whole.len() > 4
        || fraction.len() > 3
        || !digits(whole)
        || !digits(fraction)
    {
        return Err(bad());
    }
    if text.ends_with('.') {
        return Err(bad());
    }
    let millis: u64 = format!("{whole}{fraction:0<3}")
        .parse()
        .map_err(|_| bad())?;
    let timeout = Duration::from_millis(millis);
    if timeout.is_zero() || timeout >= interval {
        return Err(bad());
    }
    Ok(timeout)
}

/// Identifies one running check.
pub type CheckId = u64;

/// A check to run, with where to report what it finds.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub spec: CheckSpec,
    pub service: String,
    pub node: Node,
    pub owner: SocketId,
}

/// What the checker thread is told.
#[derive(Debug)]
enum Command {
    Start(CheckId, Box<Job>),
    Stop(CheckId),
}

/// The handle over the checker thread, started by the first check; stopping a check is a
/// message, never a wait. Results go to the store as status changes of the node.
#[derive(Debug)]
pub struct Checker {
    store: Store,
    commands: OnceLock<Sender<Command>>,
    next_id: Mutex<CheckId>,
}

impl Checker {
    pub fn new(store: Store) -> Checker {
        Checker {
            store,
            commands: OnceLock::new(),
            next_id: Mutex::new(0),
        }
    }

    /// Starts checking `node` (registered under `service` by `owner`) as `spec` says; its
    /// results are reported as the node's `Checked` status. Fails only if the checker thread
    /// cannot be started.
    pub fn start(
        &self,
        spec: CheckSpec,
        service: &str,
        node: &Node,
        owner: SocketId,
    ) -> Result<CheckId> {
        let id = {
            let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        let job = Job {
            spec,
            service: service.to_owned(),
            node: node.clone(),
            owner,
        };
        self.sender()?
            .send(Command::Start(id, Box::new(job)))
            .map_err(|_| Error::Internal("the checker thread has stopped".into()))?;
        Ok(id)
    }

    /// Stops check `id`; what it was doing is dropped.
    pub fn stop(&self, id: CheckId) {
        if let Some(commands) = self.commands.get() {
            let _ = commands.send(Command::Stop(id));
        }
    }

    fn sender(&self) -> Result<&Sender<Command>> {
        if let Some(sender) = self.commands.get() {
            return Ok(sender);
        }
        let (sender, inbox) = crossbeam_channel::unbounded();
        let store = self.store.clone();
        let spawned = std::thread::Builder::new()
            .name("checker".into())
            .stack_size(256 * 1024)
            .spawn(move || runner::run(inbox, store));
        if let Err(err) = spawned {
            return Err(Error::Internal(format!(
                "cannot start the checker thread: {err}"
            )));
        }
        // Two first checks at once: the loser's thread sees its channel closed and ends.
        Ok(self.commands.get_or_init(|| sender))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(query: &str) -> Result<Option<CheckSpec>> {
        let node = Node::parse_value("10.0.0.1:80").unwrap();
        CheckSpec::parse(&Query::parse(query).unwrap(), &node)
    }

    #[test]
    fn checks_and_their_defaults() {
        assert_eq!(spec("").unwrap(), None);
        let tcp = spec("check=tcp").unwrap().unwrap();
        assert_eq!(tcp.probe, Probe::Tcp);
        assert_eq!(tcp.target, "10.0.0.1:80".parse().unwrap());
        assert_eq!(
            (tcp.interval, tcp.timeout),
            (Duration::from_secs(10), Duration::from_secs(2))
        );
        let http = spec("check=http&check_path=/health?x=1&check_interval=1")
            .unwrap()
            .unwrap();
        assert_eq!(
            http.probe,
            Probe::Http {
                path: "/health?x=1".into()
            }
        );
        assert_eq!(
            http.timeout,
            Duration::from_millis(500),
            "half of a 1 s interval"
        );
        let quick = spec("check=http&check_interval=3&check_timeout=0.25")
            .unwrap()
            .unwrap();
        assert_eq!(quick.timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_checks_are_400() {
        for bad in [
            "check=udp",
            "check=",
            "check_interval=5",
            "check_path=/",
            "check=tcp&check_path=/",
            "check=http&check_path=health",
            "check=http&check_path=/a%20b",
            "check=tcp&check_interval=0",
            "check=tcp&check_interval=3601",
            "check=tcp&check_interval=1.5",
            "check=tcp&check_timeout=0",
            "check=tcp&check_timeout=10",
            "check=tcp&check_interval=2&check_timeout=2",
            "check=tcp&check_timeout=-1",
            "check=tcp&check_timeout=1.",
            "check=tcp&check_timeout=.5",
            "check=tcp&check_timeout=0.0001",
        ] {
            assert_eq!(spec(bad).unwrap_err().status(), 400, "{bad}");
        }
        let named = Node::parse_value("db.local:80").unwrap();
        let query = Query::parse("check=tcp").unwrap();
        assert_eq!(CheckSpec::parse(&query, &named).unwrap_err().status(), 400);
    }
}
