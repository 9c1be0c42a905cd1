//! etcd as the checker sees it: calls that fail instead of panicking (a member may be frozen or
//! dead at any moment), and the recorder of etcd's own history of the namespace, revision by
//! revision, which every check compares hound's messages with.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use tokio::runtime::Runtime;

/// How long connecting to one member may take: a frozen member accepts TCP and then says
/// nothing, so this bounds how long one frozen member delays a call.
const CONNECT: Duration = Duration::from_secs(1);
/// How long one call may take on one member before the next member is tried.
const CALL: Duration = Duration::from_secs(2);

/// A current-thread runtime: each thread that talks to etcd has its own.
fn runtime() -> Runtime {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().build().expect("build a tokio runtime")
}

async fn connect(url: &str) -> Result<Client, String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT)
        .with_timeout(CALL)
        .with_require_leader(true);
    match tokio::time::timeout(CONNECT, Client::connect([url], Some(options))).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => Err(format!("{url}: {err}")),
        Err(_) => Err(format!("{url}: connect timed out")),
    }
}

/// A key as etcd holds it.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: String,
}

/// Blocking calls on whichever member answers, trying each in turn.
pub struct Etcd {
    runtime: Runtime,
    urls: Vec<String>,
    next: usize,
}

impl Etcd {
    pub fn new(urls: Vec<String>) -> Etcd {
        Etcd {
            runtime: runtime(),
            urls,
            next: 0,
        }
    }

    fn on_any<T, F, Fut>(&mut self, call: F) -> Result<T, String>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut errors = Vec::new();
        for _ in 0..self.urls.len() {
            let url = self.urls[self.next % self.urls.len()].clone();
            let result = self.runtime.block_on(async {
                let client = connect(&url).await?;
                match tokio::time::timeout(CALL, call(client)).await {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(err)) => Err(format!("{url}: {err}")),
                    Err(_) => Err(format!("{url}: timed out")),
                }
            });
            match result {
                Ok(value) => return Ok(value),
                Err(err) => errors.push(err),
            }
            // Stay on a member that answers; move on from one that did not.
            self.next += 1;
        }
        Err(errors.join("; "))
    }

    /// The store's revision and every key under `prefix`.
    pub fn get_prefix(&mut self, prefix: &str) -> Result<(i64, Vec<Kv>), String> {
        self.on_any(|mut client| async move {
            let response = client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await?;
            let revision = response.header().map_or(0, |h| h.revision());
            let kvs = response
                .kvs()
                .iter()
                .map(|kv| Kv {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                })
                .collect();
            Ok((revision, kvs))
        })
    }

    pub fn revision(&mut self) -> Result<i64, String> {
        self.get_prefix("\0").map(|(revision, _)| revision)
    }

    /// Whether the member at `url` is the cluster's leader (`None` if it does not answer).
    pub fn is_leader(&mut self, url: &str) -> Option<bool> {
        self.runtime.block_on(async {
            let mut client = connect(url).await.ok()?;
            let status = tokio::time::timeout(CALL, client.status())
                .await
                .ok()?
                .ok()?;
            Some(status.header()?.member_id() == status.leader())
        })
    }

    /// Compacts the history up to `revision` (physically: the gap is real at once).
    pub fn compact(&mut self, revision: i64) -> Result<(), String> {
        self.on_any(|mut client| async move {
            let options = etcd_client::CompactionOptions::new().with_physical();
            client.compact(revision, Some(options)).await.map(drop)
        })
    }
}

/// One change in etcd under the namespace, as the recorder received it.
#[derive(Debug, Clone)]
pub struct Event {
    pub revision: i64,
    pub key: String,
    pub put: bool,
    pub value: String,
    pub lease: i64,
    /// When the recorder received it: at or after etcd committed it.
    pub at: Instant,
}

/// etcd's own history of a key prefix, from the first revision on, recorded by a watch that
/// moves to another member when its member stops answering (a progress request unanswered for
/// `STALL`) and resumes from the last revision it has.
pub struct History {
    events: Mutex<Vec<Event>>,
    /// Every event up to this revision has been recorded.
    seen: AtomicI64,
    /// Periods in which the recorder had no working watch: receive times of events in them
    /// lag their commits by up to the period's length.
    stalls: Mutex<Vec<(Instant, Instant)>>,
    /// Set when the history can no longer be complete (it was compacted before being read).
    lost: Mutex<Option<String>>,
    stop: AtomicBool,
}

const STALL: Duration = Duration::from_millis(1500);
const PROGRESS_EVERY: Duration = Duration::from_millis(400);

impl History {
    /// Starts recording `prefix` from revision 1 on the members at `urls`.
    pub fn start(urls: Vec<String>, prefix: String) -> Arc<History> {
        let history = Arc::new(History {
            events: Mutex::new(Vec::new()),
            seen: AtomicI64::new(0),
            stalls: Mutex::new(Vec::new()),
            lost: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let recorder = Arc::clone(&history);
        thread::Builder::new()
            .name("history".into())
            .spawn(move || runtime().block_on(recorder.record(urls, prefix)))
            .expect("spawn the history recorder");
        history
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn seen(&self) -> i64 {
        self.seen.load(Ordering::Acquire)
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    pub fn stalls(&self) -> Vec<(Instant, Instant)> {
        self.stalls.lock().unwrap().clone()
    }

    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap().clone()
    }

    /// Waits until every event up to `revision` is recorded; false after `within`.
    pub fn wait_for(&self, revision: i64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.seen() < revision {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    }

    async fn record(&self, urls: Vec<String>, prefix: String) {
        let mut member = 0;
        let mut last_good = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            let url = &urls[member % urls.len()];
            member += 1;
            if let Err(err) = self.watch_once(url, &prefix, &mut last_good).await {
                if err.starts_with("compacted") {
                    *self.lost.lock().unwrap() = Some(err);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// One watch on one member until it breaks or stalls.
    async fn watch_once(
        &self,
        url: &str,
        prefix: &str,
        last_good: &mut Instant,
    ) -> Result<(), String> {
        let mut client = connect(url).await?;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.seen() + 1);
        let mut stream = tokio::time::timeout(CALL, client.watch(prefix, Some(options)))
            .await
            .map_err(|_| format!("{url}: watch timed out"))?
            .map_err(|err| format!("{url}: {err}"))?;
        let mut answered = Instant::now();
        let mut asked = Instant::now()
            .checked_sub(PROGRESS_EVERY)
            .unwrap_or_else(Instant::now);
        let mut stalled_since = None;
        if last_good.elapsed() > STALL {
            stalled_since = Some(*last_good);
        }
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            if answered.elapsed() > STALL {
                return Err(format!("{url}: no answer for {STALL:?}"));
            }
            if asked.elapsed() >= PROGRESS_EVERY {
                asked = Instant::now();
                let _ = stream.request_progress().await;
            }
            let response = match tokio::time::timeout(PROGRESS_EVERY, stream.message()).await {
                Err(_) => continue,
                Ok(Err(err)) => return Err(format!("{url}: {err}")),
                Ok(Ok(None)) => return Err(format!("{url}: the watch ended")),
                Ok(Ok(Some(response))) => response,
            };
            let now = Instant::now();
            if response.compact_revision() > 0 {
                return Err(format!(
                    "compacted: etcd compacted revision {} before the recorder read it",
                    response.compact_revision()
                ));
            }
            if response.canceled() {
                return Err(format!(
                    "{url}: watch canceled: {}",
                    response.cancel_reason()
                ));
            }
            answered = now;
            *last_good = now;
            if let Some(since) = stalled_since.take() {
                self.stalls.lock().unwrap().push((since, now));
            }
            let mut top = self.seen();
            if response.events().is_empty() {
                // A progress notification: everything up to its header's revision is here.
                if !response.created()
                    && let Some(header) = response.header()
                {
                    top = top.max(header.revision());
                }
            } else {
                let mut events = self.events.lock().unwrap();
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    top = top.max(kv.mod_revision());
                    events.push(Event {
                        revision: kv.mod_revision(),
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        put: event.event_type() == EventType::Put,
                        value: String::from_utf8_lossy(kv.value()).into_owned(),
                        lease: kv.lease(),
                        at: now,
                    });
                }
            }
            self.seen.store(top, Ordering::Release);
        }
    }
}
