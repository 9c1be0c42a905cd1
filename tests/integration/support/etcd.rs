//! etcd: a single member, a 3-member cluster, a blocking client, and a direct prefix watch.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, send_signal, spawn_child, tail, try_request, unique};

/// A real etcd member on free loopback ports with its own data dir, killed on drop: a
/// single-member cluster from [`Etcd::start`], or one member of an [`EtcdCluster`].
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    /// The member's name and, for a member of a larger cluster, its `--initial-cluster` list
    /// and token (a single member lists only itself).
    name: String,
    cluster: Option<(String, String)>,
    /// Further flags, e.g. `--quota-backend-bytes`.
    extra_args: Vec<String>,
    /// Addresses besides loopback the member also takes clients on (the host side of a
    /// network namespace's link, for hounds in that namespace), on the same client port.
    extra_hosts: Vec<IpAddr>,
}

impl Etcd {
    /// The etcd binary: `$HOUND_TEST_ETCD`, else `etcd` on PATH.
    fn binary() -> PathBuf {
        std::env::var_os("HOUND_TEST_ETCD")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("etcd"))
    }

    /// Starts etcd and waits until it answers `/health`.
    pub fn start() -> Etcd {
        Etcd::start_with(None, &[])
    }

    /// Starts etcd with further flags (`--quota-backend-bytes 1048576`, say).
    pub fn start_with_args(args: &[&str]) -> Etcd {
        Etcd::start_with(None, args)
    }

    /// Starts a new single-member cluster on `client_port` (the address of a killed member,
    /// say) and waits until it answers `/health`.
    pub fn start_on(client_port: u16) -> Etcd {
        Etcd::start_with(Some(client_port), &[])
    }

    fn start_with(client_port: Option<u16>, args: &[&str]) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("hound-test-etcd-")
            .tempdir()
            .expect("create etcd temp dir");
        let mut etcd = Etcd {
            child: None,
            client_port: 0,
            peer_port: 0,
            dir,
            name: "default".to_owned(),
            cluster: None,
            extra_args: args.iter().map(|&arg| arg.to_owned()).collect(),
            extra_hosts: Vec::new(),
        };
        let mut last_log = String::new();
        for _attempt in 0..5 {
            etcd.client_port = client_port.unwrap_or_else(free_port);
            etcd.peer_port = free_port();
            if etcd.client_port != etcd.peer_port && etcd.launch() {
                return etcd;
            }
            // The ports were probably taken in the meantime: try again with new ones.
            last_log = etcd.log();
            etcd.kill();
            let _ = std::fs::remove_dir_all(etcd.data_dir());
        }
        panic!("etcd did not come up after 5 attempts; last log:\n{last_log}");
    }

    /// Spawns etcd on this instance's ports and data dir; true once it is healthy.
    fn launch(&mut self) -> bool {
        self.spawn();
        self.wait_healthy(Duration::from_secs(15))
    }

    /// Spawns etcd on this instance's ports and data dir without waiting for it.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("open etcd log");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let listen: Vec<String> = std::iter::once(client.clone())
            .chain(self.extra_hosts.iter().map(|host| self.url_on(*host)))
            .collect();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(Self::binary());
        let (initial_cluster, token, timing) = match &self.cluster {
            Some((members, token)) => (members.clone(), token.as_str(), ["50", "500"]),
            // A single member need not wait a full second before electing itself. Its token
            // stays etcd's default, so a wiped member comes back with the same cluster id.
            None => (
                format!("{}={peer}", self.name),
                "etcd-cluster",
                ["25", "250"],
            ),
        };
        command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(listen.join(","))
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .args(["--initial-cluster-state", "new"])
            .arg("--initial-cluster-token")
            .arg(token)
            .args([
                "--heartbeat-interval",
                timing[0],
                "--election-timeout",
                timing[1],
            ])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = spawn_child(command)
            .unwrap_or_else(|err| panic!("cannot run {:?}: {err}", Self::binary()));
        self.child = Some(child);
    }

    /// Polls `/health` until etcd says it is healthy; false if it exits or the deadline passes.
    fn wait_healthy(&mut self, within: Duration) -> bool {
        self.wait_for("/health", within)
    }

    /// Polls `path` until etcd answers it 200 (with `true` for `/health`); false if etcd exits
    /// or the deadline passes.
    fn wait_for(&mut self, path: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let addr: SocketAddr = ([127, 0, 0, 1], self.client_port).into();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().expect("try_wait etcd").is_some()
            {
                return false;
            }
            if let Ok(response) = try_request(addr, "GET", path, &[], b"")
                && response.status == 200
                && (path != "/health" || response.text().contains("true"))
            {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The member's name (`default` for a single member).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port clients connect to.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client URL on `host`, one of the extra addresses the member listens on.
    pub fn url_on(&self, host: IpAddr) -> String {
        format!("http://{}", SocketAddr::new(host, self.client_port))
    }

    /// The process id of the running etcd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd is not running").id()
    }

    /// What etcd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// A blocking client to change etcd behind hound's back.
    pub fn client(&self) -> EtcdClient {
        EtcdClient::connect(&self.url())
    }

    /// Stops etcd abruptly (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Same as [`Etcd::kill`]: fault tests want etcd gone at once.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Freezes etcd (SIGSTOP): its sockets stay open but nothing answers.
    pub fn pause(&self) {
        send_signal(self.pid(), libc::SIGSTOP);
    }

    /// Thaws a paused etcd (SIGCONT).
    pub fn resume(&self) {
        send_signal(self.pid(), libc::SIGCONT);
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.launch(),
            "etcd did not come back on its ports; log:\n{}",
            self.log()
        );
    }

    /// Starts etcd again on the same ports with the same data, and waits until it answers
    /// (`/version`) rather than until it is healthy: with an alarm raised it never is.
    pub fn restart_answering(&mut self) {
        self.kill();
        self.spawn();
        assert!(
            self.wait_for("/version", Duration::from_secs(15)),
            "etcd did not come back on its ports; log:\n{}",
            tail(&self.log(), 20)
        );
    }

    /// Starts etcd again on the same ports with an empty data dir: a cluster that forgot
    /// everything, leases included.
    pub fn restart_empty(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.data_dir()).expect("wipe etcd data dir");
        assert!(
            self.launch(),
            "etcd did not come back on its ports; log:\n{}",
            self.log()
        );
    }
}

impl Etcd {
    /// Starts etcd again with an empty data dir, as [`Etcd::restart_empty`] does, but first on
    /// another client port, where `fill` writes to it while nobody else can reach it; then on
    /// its own ports again. Clients come back to a store that has the old one's identity
    /// (member name, peer URL, cluster id) and whatever revision `fill` took it to.
    pub fn restart_empty_with(&mut self, fill: impl FnOnce(&mut EtcdClient)) {
        self.kill();
        std::fs::remove_dir_all(self.data_dir()).expect("wipe etcd data dir");
        let own_port = self.client_port;
        self.client_port = free_port();
        let hidden = self.client_port != self.peer_port && self.launch();
        let log = self.log();
        if hidden {
            fill(&mut self.client());
        }
        self.kill();
        self.client_port = own_port;
        assert!(hidden, "etcd did not start on a spare port; log:\n{log}");
        assert!(
            self.launch(),
            "etcd did not come back on its ports; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A paused etcd still dies of SIGKILL, but resume it anyway so nothing lingers.
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
        }
        self.kill();
        if thread::panicking() {
            eprintln!(
                "--- log of etcd on {} (last 10 lines) ---\n{}",
                self.url(),
                tail(&self.log(), 10)
            );
        }
        // The TempDir field removes the data dir after this.
    }
}

/// A real etcd cluster of several members on loopback, each with its own ports and data dir;
/// every member is killed on drop.
pub struct EtcdCluster {
    members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts `size` members (`m0`, `m1`, …) as one new cluster and waits until each answers
    /// `/health` (which needs an elected leader).
    pub fn start(size: usize) -> EtcdCluster {
        EtcdCluster::start_listening_also(size, |_| Vec::new())
    }

    /// Like [`EtcdCluster::start`], member `n` also taking clients on the addresses
    /// `extra_hosts(n)` (which must exist when it starts).
    pub fn start_listening_also(
        size: usize,
        extra_hosts: impl Fn(usize) -> Vec<IpAddr>,
    ) -> EtcdCluster {
        let mut last_logs = String::new();
        for _attempt in 0..3 {
            let token = unique("hound-test-cluster");
            let mut members: Vec<Etcd> = (0..size)
                .map(|n| Etcd {
                    child: None,
                    client_port: free_port(),
                    peer_port: free_port(),
                    dir: tempfile::Builder::new()
                        .prefix("hound-test-etcd-")
                        .tempdir()
                        .expect("create etcd temp dir"),
                    name: format!("m{n}"),
                    cluster: None,
                    extra_args: Vec::new(),
                    extra_hosts: extra_hosts(n),
                })
                .collect();
            let mut ports: Vec<u16> = members
                .iter()
                .flat_map(|m| [m.client_port, m.peer_port])
                .collect();
            ports.sort_unstable();
            ports.dedup();
            if ports.len() != 2 * size {
                continue;
            }
            let initial_cluster = members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            for member in &mut members {
                member.cluster = Some((initial_cluster.clone(), token.clone()));
                member.spawn();
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            let healthy = members.iter_mut().all(|member| {
                member.wait_healthy(deadline.saturating_duration_since(Instant::now()))
            });
            if healthy {
                return EtcdCluster { members };
            }
            // A port was probably taken in the meantime: try again with new ones.
            last_logs = members
                .iter()
                .map(|m| format!("--- {} ---\n{}", m.name, tail(&m.log(), 10)))
                .collect::<Vec<_>>()
                .join("\n");
        }
        panic!("the etcd cluster did not come up after 3 attempts; last logs:\n{last_logs}");
    }

    /// Every member's client URL, comma-separated, as `--etcd` takes them.
    pub fn urls(&self) -> String {
        self.members
            .iter()
            .map(Etcd::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn member(&self, index: usize) -> &Etcd {
        &self.members[index]
    }

    pub fn member_mut(&mut self, index: usize) -> &mut Etcd {
        &mut self.members[index]
    }

    /// The index of the member etcd knows by `id`, asking member `via`.
    pub fn index_of(&self, id: u64, via: usize) -> usize {
        let name = self.members[via]
            .client()
            .member_list()
            .into_iter()
            .find(|(member, _)| *member == id)
            .map(|(_, name)| name)
            .unwrap_or_else(|| panic!("no member with id {id:x}"));
        self.members
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("member {name} is not one of ours"))
    }
}

/// A key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub lease: i64,
}

/// What `Status` says about the member we are connected to.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub version: String,
    pub leader: u64,
    pub member_id: u64,
    pub cluster_id: u64,
}

/// A blocking etcd client over a private current-thread runtime, to change etcd behind hound's
/// back and to check what hound wrote.
pub struct EtcdClient {
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) client: etcd_client::Client,
}

impl EtcdClient {
    /// How long one etcd call may take.
    pub(super) const CALL: Duration = Duration::from_secs(5);

    pub fn connect(url: &str) -> EtcdClient {
        EtcdClient::connect_with(url, etcd_client::ConnectOptions::new())
    }

    pub(super) fn call<T, F>(
        &mut self,
        what: &str,
        call: impl FnOnce(etcd_client::Client) -> F,
    ) -> T
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client.clone();
        self.runtime
            .block_on(async { tokio::time::timeout(Self::CALL, call(client)).await })
            .unwrap_or_else(|_| panic!("etcd {what} timed out"))
            .unwrap_or_else(|err| panic!("etcd {what} failed: {err}"))
    }

    /// Puts `value` under `key`, or says why etcd refused it.
    pub fn try_put(&mut self, key: &str, value: &str) -> Result<(), String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        let client = self.client.clone();
        let put = async move {
            let mut client = client;
            tokio::time::timeout(Self::CALL, client.put(key, value, None)).await
        };
        match self.runtime.block_on(put) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    }

    /// Every alarm raised on the cluster, as `(member id, alarm name)`.
    pub fn alarms(&mut self) -> Vec<(u64, String)> {
        use etcd_client::{AlarmAction, AlarmType};
        let response = self.call("alarm list", |mut c| async move {
            c.alarm(AlarmAction::Get, AlarmType::None, None).await
        });
        response
            .alarms()
            .iter()
            .map(|a| (a.member_id(), a.alarm().as_str_name().to_owned()))
            .collect()
    }

    /// Clears every alarm, as `etcdctl alarm disarm` does.
    pub fn disarm_alarms(&mut self) {
        use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
        let raised = self.call("alarm list", |mut c| async move {
            c.alarm(AlarmAction::Get, AlarmType::None, None).await
        });
        for alarm in raised.alarms() {
            let mut options = AlarmOptions::new();
            options.with_member(alarm.member_id());
            let kind = alarm.alarm();
            self.call("alarm disarm", |mut c| async move {
                c.alarm(AlarmAction::Deactivate, kind, Some(options)).await
            });
        }
    }

    /// Defragments the member this client talks to, giving compacted space back.
    pub fn defragment(&mut self) {
        self.call("defragment", |mut c| async move { c.defragment().await });
    }

    pub fn put(&mut self, key: &str, value: &str) {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call("put", |mut c| async move { c.put(key, value, None).await });
    }

    pub fn put_with_lease(&mut self, key: &str, value: &str, lease: i64) {
        let (key, value) = (key.to_owned(), value.to_owned());
        let options = etcd_client::PutOptions::new().with_lease(lease);
        self.call("put", |mut c| async move {
            c.put(key, value, Some(options)).await
        });
    }

    pub fn delete(&mut self, key: &str) {
        let key = key.to_owned();
        self.call("delete", |mut c| async move { c.delete(key, None).await });
    }

    pub fn get(&mut self, key: &str) -> Option<Entry> {
        let key = key.to_owned();
        let response = self.call("get", |mut c| async move { c.get(key, None).await });
        response.kvs().first().map(entry)
    }

    /// Every key under `prefix`, in key order, or why etcd could not say (while the cluster
    /// elects a leader, say) — for polling through faults.
    pub fn try_get_prefix(&mut self, prefix: &str) -> Result<Vec<Entry>, String> {
        let prefix = prefix.to_owned();
        let options = etcd_client::GetOptions::new().with_prefix();
        let client = self.client.clone();
        let read = async move {
            let mut client = client;
            tokio::time::timeout(Self::CALL, client.get(prefix, Some(options))).await
        };
        match self.runtime.block_on(read) {
            Ok(Ok(response)) => Ok(response.kvs().iter().map(entry).collect()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    }

    /// Every key under `prefix`, in key order.
    pub fn get_prefix(&mut self, prefix: &str) -> Vec<Entry> {
        let prefix = prefix.to_owned();
        let options = etcd_client::GetOptions::new().with_prefix();
        let response = self.call(
            "get",
            |mut c| async move { c.get(prefix, Some(options)).await },
        );
        response.kvs().iter().map(entry).collect()
    }

    pub fn lease_grant(&mut self, ttl: i64) -> i64 {
        self.call("lease grant", |mut c| async move {
            c.lease_grant(ttl, None).await
        })
        .id()
    }

    pub fn lease_revoke(&mut self, id: i64) {
        self.call(
            "lease revoke",
            |mut c| async move { c.lease_revoke(id).await },
        );
    }

    /// The TTL the lease was granted with, or `None` if it no longer exists.
    pub fn lease_granted_ttl(&mut self, id: i64) -> Option<i64> {
        let response = self.call("lease time-to-live", |mut c| async move {
            c.lease_time_to_live(id, None).await
        });
        (response.ttl() > 0).then(|| response.granted_ttl())
    }

    /// Runs `ops` as one transaction (one revision; events in the order of `ops`).
    pub fn txn(&mut self, ops: Vec<etcd_client::TxnOp>) {
        let txn = etcd_client::Txn::new().and_then(ops);
        self.call("txn", |mut c| async move { c.txn(txn).await });
    }

    /// The store's current revision.
    pub fn revision(&mut self) -> i64 {
        let options = etcd_client::GetOptions::new().with_count_only();
        let response = self.call(
            "get",
            |mut c| async move { c.get("\0", Some(options)).await },
        );
        response.header().expect("get has a header").revision()
    }

    /// Compacts the history up to `revision` and waits until it is physically gone.
    pub fn compact(&mut self, revision: i64) {
        let options = etcd_client::CompactionOptions::new().with_physical();
        self.call("compact", |mut c| async move {
            c.compact(revision, Some(options)).await
        });
    }

    /// `(id, name)` of every member.
    pub fn member_list(&mut self) -> Vec<(u64, String)> {
        let response = self.call("member list", |mut c| async move { c.member_list().await });
        response
            .members()
            .iter()
            .map(|m| (m.id(), m.name().to_owned()))
            .collect()
    }

    pub fn status(&mut self) -> MemberStatus {
        let response = self.call("status", |mut c| async move { c.status().await });
        let header = response.header().expect("status has a header");
        MemberStatus {
            version: response.version().to_owned(),
            leader: response.leader(),
            member_id: header.member_id(),
            cluster_id: header.cluster_id(),
        }
    }
}

/// One event a [`PrefixWatch`] saw, or the end of its watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    Put { key: String, revision: i64 },
    Delete { key: String, revision: i64 },
    Broken(String),
}

/// A direct etcd watch on a key prefix, on a thread of its own, that records every event: to
/// see what any watcher of the cluster sees, independently of hound.
pub struct PrefixWatch {
    events: mpsc::Receiver<Watched>,
}

impl PrefixWatch {
    /// Watches `prefix` on the etcd at `url` from `from_revision` (so nothing written since is
    /// missed); returns once etcd has accepted the watch.
    pub fn start(url: &str, prefix: &str, from_revision: i64) -> PrefixWatch {
        let (events, received) = mpsc::channel();
        let (ready, accepted) = mpsc::channel();
        let (url, prefix) = (url.to_owned(), prefix.to_owned());
        thread::Builder::new()
            .name(format!("watch {prefix}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build tokio runtime");
                runtime.block_on(async move {
                    let options = etcd_client::WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(from_revision);
                    let started = async {
                        let mut client = etcd_client::Client::connect([url], None).await?;
                        client.watch(prefix, Some(options)).await
                    };
                    let mut stream = match tokio::time::timeout(EtcdClient::CALL, started).await {
                        Ok(Ok(stream)) => {
                            let _ = ready.send(Ok(()));
                            stream
                        }
                        Ok(Err(err)) => return drop(ready.send(Err(err.to_string()))),
                        Err(_) => return drop(ready.send(Err("timed out".to_owned()))),
                    };
                    loop {
                        let notes = match stream.message().await {
                            Ok(Some(response)) => response
                                .events()
                                .iter()
                                .filter_map(|event| {
                                    let kv = event.kv()?;
                                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                                    let revision = kv.mod_revision();
                                    Some(match event.event_type() {
                                        etcd_client::EventType::Put => {
                                            Watched::Put { key, revision }
                                        }
                                        etcd_client::EventType::Delete => {
                                            Watched::Delete { key, revision }
                                        }
                                    })
                                })
                                .collect(),
                            Ok(None) => vec![Watched::Broken("the stream ended".to_owned())],
                            Err(err) => vec![Watched::Broken(err.to_string())],
                        };
                        let broken = notes.iter().any(|n| matches!(n, Watched::Broken(_)));
                        for note in notes {
                            if events.send(note).is_err() {
                                return;
                            }
                        }
                        if broken {
                            return;
                        }
                    }
                });
            })
            .expect("spawn watch thread");
        match accepted.recv_timeout(EtcdClient::CALL + Duration::from_secs(1)) {
            Ok(Ok(())) => PrefixWatch { events: received },
            Ok(Err(err)) => panic!("cannot watch the prefix: {err}"),
            Err(_) => panic!("the watch thread did not start"),
        }
    }

    /// Everything seen since the last call.
    pub fn seen(&self) -> Vec<Watched> {
        self.events.try_iter().collect()
    }
}

fn entry(kv: &etcd_client::KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        lease: kv.lease(),
    }
}

/// The value hound writes for a node at `host_port` that sets nothing else: etcd's naming
/// `Endpoint` JSON, `{"Addr":"host:port"}`.
pub fn naming_value(host_port: &str) -> String {
    serde_json::json!({ "Addr": host_port }).to_string()
}

/// The address a registration value names: the `Addr` of etcd's naming JSON (what hound
/// writes), or a plain 1.0 `host:port` (what tests write themselves).
pub fn addr_of(value: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(parsed) => parsed["Addr"]
            .as_str()
            .unwrap_or_else(|| panic!("{value:?} has no Addr"))
            .to_owned(),
        Err(_) => value.to_owned(),
    }
}
