//! Talking to etcd directly: a blocking client for the writes the bench makes behind hound's
//! back, and a plain etcd-client watch that is the floor hound's fan-out is compared with.

use std::future::Future;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use etcd_client::{Client, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use tokio::runtime::Runtime;

/// How long one etcd call may take.
const CALL: Duration = Duration::from_secs(10);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// A blocking etcd client on a private current-thread runtime.
pub struct EtcdClient {
    runtime: Runtime,
    client: Client,
}

impl EtcdClient {
    pub fn connect(url: &str) -> Result<EtcdClient, String> {
        let runtime = runtime();
        let client = runtime
            .block_on(async {
                tokio::time::timeout(CALL, Client::connect([url.to_owned()], None)).await
            })
            .map_err(|_| format!("connecting to etcd at {url} timed out"))?
            .map_err(|err| format!("cannot connect to etcd at {url}: {err}"))?;
        Ok(EtcdClient { runtime, client })
    }

    fn call<T, F>(&self, what: &str, call: impl FnOnce(Client) -> F) -> Result<T, String>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client.clone();
        self.runtime
            .block_on(async { tokio::time::timeout(CALL, call(client)).await })
            .map_err(|_| format!("etcd {what} timed out"))?
            .map_err(|err| format!("etcd {what} failed: {err}"))
    }

    pub fn put(&self, key: &str, value: &str) -> Result<(), String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call("put", |mut c| async move { c.put(key, value, None).await })
            .map(|_| ())
    }

    /// Writes many keys, up to 100 per transaction (etcd allows 128 operations in one).
    pub fn put_many(&self, pairs: &[(String, String)]) -> Result<(), String> {
        for batch in pairs.chunks(100) {
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                .collect();
            self.call("txn", |mut c| async move {
                c.txn(Txn::new().and_then(ops)).await
            })?;
        }
        Ok(())
    }

    /// Every (key, value) under `prefix`, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, String> {
        let prefix = prefix.to_owned();
        let response = self.call("get", |mut c| async move {
            c.get(prefix, Some(GetOptions::new().with_prefix())).await
        })?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect())
    }

    /// A prefix range read, as the gRPC baseline of the REST read: how many keys came back.
    pub fn range_count(&self, prefix: &str) -> Result<usize, String> {
        let prefix = prefix.to_owned();
        let response = self.call("get", |mut c| async move {
            c.get(prefix, Some(GetOptions::new().with_prefix())).await
        })?;
        Ok(response.kvs().len())
    }
}

/// One change the plain watch saw, stamped when the bench received it.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub put: bool,
    pub key: String,
    pub value: String,
    pub at: Instant,
}

/// A plain etcd-client prefix watch on its own thread and runtime: the floor hound cannot beat
/// (hound's own watch is the same kind of stream, plus the fan-out).
pub struct Watcher {
    events: Receiver<WatchEvent>,
}

impl Watcher {
    /// Starts watching `prefix`; returns once etcd has confirmed the watch.
    pub fn start(url: &str, prefix: &str) -> Result<Watcher, String> {
        let (events_tx, events) = crossbeam_channel::unbounded();
        let (ready_tx, ready) = crossbeam_channel::bounded(1);
        let (url, prefix) = (url.to_owned(), prefix.to_owned());
        thread::Builder::new()
            .name("etcd-watch".into())
            .spawn(move || watch_loop(&url, &prefix, &events_tx, &ready_tx))
            .map_err(|err| err.to_string())?;
        match ready.recv_timeout(CALL) {
            Ok(Ok(())) => Ok(Watcher { events }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err("the etcd watch was not created within 10 s".into()),
        }
    }

    /// Drops the events received so far.
    pub fn drain(&self) {
        while self.events.try_recv().is_ok() {}
    }

    /// Waits for the first event that `wanted` accepts; others are dropped.
    pub fn wait_for(
        &self,
        within: Duration,
        wanted: impl Fn(&WatchEvent) -> bool,
    ) -> Option<WatchEvent> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if wanted(&event) => return Some(event),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

fn watch_loop(
    url: &str,
    prefix: &str,
    events: &Sender<WatchEvent>,
    ready: &Sender<Result<(), String>>,
) {
    let runtime = runtime();
    runtime.block_on(async {
        let mut client = match Client::connect([url.to_owned()], None).await {
            Ok(client) => client,
            Err(err) => {
                let _ = ready.send(Err(format!("watch client: {err}")));
                return;
            }
        };
        let mut stream = match client
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await
        {
            Ok(stream) => stream,
            Err(err) => {
                let _ = ready.send(Err(format!("watch: {err}")));
                return;
            }
        };
        let mut confirmed = false;
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) | Err(_) => return,
            };
            let at = Instant::now();
            if !confirmed && message.created() {
                confirmed = true;
                let _ = ready.send(Ok(()));
            }
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                let sent = events.send(WatchEvent {
                    put: event.event_type() == EventType::Put,
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                    at,
                });
                if sent.is_err() {
                    return;
                }
            }
        }
    });
}
