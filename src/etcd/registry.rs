//! The etcd thread's command loop and the registrations it holds: grant, write, keep alive,
//! take over, delete.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, PutOptions, TlsOptions, Txn,
    TxnOp,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::{AbortHandle, spawn_local};

use super::backoff::{Backoff, Throttle};
use super::events::Publisher;
use super::watch;
use super::{ClusterStatus, Command, REQUEST_TIMEOUT, Settings, unavailable};
use crate::error::{Error, Result};
use crate::hub::{Health, Hub, SocketId};
use crate::keys::ServiceKeys;
use crate::metrics;
use crate::names::Node;
use crate::owners::{self, Owners, Replaced};

/// How one registration this hound holds is kept alive.
#[derive(Debug)]
struct Held {
    /// The current lease; the keeper replaces it if etcd forgets the old one.
    lease: Rc<Cell<i64>>,
    keeper: AbortHandle,
}

struct Registry {
    client: Client,
    settings: Rc<Settings>,
    keys: ServiceKeys,
    hub: Arc<Hub>,
    held: Owners<Held>,
}

/// Connects, starts the watches, then serves commands until the handle is dropped.
pub(super) async fn serve(
    settings: Settings,
    hub: Arc<Hub>,
    mut commands: UnboundedReceiver<Command>,
    started: crossbeam_channel::Sender<Result<()>>,
) {
    let Some(client) = connect(&settings, &hub, &mut commands, started).await else {
        return;
    };

    let settings = Rc::new(settings);
    if settings.endpoints.len() > 1 {
        spawn_local(track_endpoints(client.clone(), settings.clone()));
    }
    watch::spawn(&client, &settings, &hub);
    let publisher = Rc::new(Publisher::new(client.clone(), settings.event_keys()));

    let mut registry = Registry {
        client,
        keys: settings.service_keys(),
        settings,
        hub,
        held: Owners::default(),
    };
    while let Some(command) = commands.recv().await {
        match command {
            // Registrations are handled one at a time so two sockets racing for one key
            // cannot leave the registry and etcd disagreeing about who holds it.
            Command::Register {
                service,
                node,
                owner,
                reply,
            } => {
                let _ = reply.send(registry.register(&service, &node, owner).await);
            }
            Command::Deregister {
                service,
                node,
                owner,
            } => registry.deregister(&service, &node, owner),
            Command::DeregisterAll { reply } => {
                registry.deregister_all().await;
                let _ = reply.send(Ok(()));
            }
            Command::Status { reply } => {
                let mut client = registry.client.clone();
                spawn_local(async move {
                    let _ = reply.send(status(&mut client).await);
                });
            }
            Command::Publish { event, reply } => {
                let publisher = publisher.clone();
                spawn_local(async move {
                    let _ = reply.send(publisher.publish(event).await);
                });
            }
        }
        metrics::REGISTRATIONS.store(registry.held.len() as u64, Ordering::Relaxed);
    }
}

/// Keeps the client's balanced channel to the members that answer. etcd-client balances over
/// every endpoint it was given and keeps sending some requests to a dead one, so each member is
/// probed on its own every second: one that stops answering is taken out of the channel (never
/// the last), and put back when it answers again — as a member of the same cluster as the
/// others. An address that answers for another cluster (a member replaced by a stranger, a
/// port reused) stays out, or hound would register nodes where nobody watches.
async fn track_endpoints(mut client: Client, settings: Rc<Settings>) {
    let endpoints = &settings.endpoints;
    let mut probes: Vec<Option<Client>> = vec![None; endpoints.len()];
    let mut in_channel = vec![true; endpoints.len()];
    let mut warned_stranger = vec![false; endpoints.len()];
    // Start from the cluster hound is already talking to, so that strangers are recognised
    // even while too few members answer to form a majority.
    let mut cluster = match tokio::time::timeout(Duration::from_secs(1), client.status()).await {
        Ok(Ok(status)) => status.header().map(|h| h.cluster_id()),
        _ => None,
    };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut answers = Vec::with_capacity(endpoints.len());
        for (i, endpoint) in endpoints.iter().enumerate() {
            answers.push(probe_endpoint(&mut probes[i], endpoint, &settings).await);
        }
        // The cluster changes only when a majority of the configured members says so: a whole
        // cluster replaced (restored from a backup, say) is followed, while a stray address,
        // or a few strangers while the real members are down, is not.
        if let Some(agreed) = majority(answers.iter().flatten().copied(), endpoints.len())
            && cluster != Some(agreed)
        {
            if let Some(previous) = cluster {
                log::warn!(
                    "most etcd members now answer for cluster {agreed:x}, not {previous:x}; following them"
                );
            }
            cluster = Some(agreed);
        }
        for (i, endpoint) in endpoints.iter().enumerate() {
            let stranger = cluster.is_some() && answers[i].is_some() && answers[i] != cluster;
            if stranger && !warned_stranger[i] {
                log::warn!(
                    "etcd at {endpoint} answers for another cluster ({:x}, not {:x}); not using it",
                    answers[i].unwrap_or_default(),
                    cluster.unwrap_or_default()
                );
            }
            warned_stranger[i] = stranger;
            let usable = answers[i].is_some() && !stranger;
            let live = in_channel.iter().filter(|&&used| used).count();
            if !usable && in_channel[i] && live > 1 {
                match client.remove_endpoint(endpoint).await {
                    Ok(()) => {
                        if !stranger {
                            log::warn!("etcd member {endpoint} does not answer; using the others");
                        }
                        in_channel[i] = false;
                    }
                    Err(err) => log::debug!("cannot set {endpoint} aside: {err}"),
                }
            } else if usable && !in_channel[i] {
                match client.add_endpoint(endpoint).await {
                    Ok(()) => {
                        log::info!("etcd member {endpoint} answers again");
                        in_channel[i] = true;
                    }
                    Err(err) => log::debug!("cannot take {endpoint} back: {err}"),
                }
            }
        }
    }
}

/// The value reported by more than half of `members` (not just of those that answered).
fn majority(answers: impl Iterator<Item = u64>, members: usize) -> Option<u64> {
    let mut counts: Vec<(u64, usize)> = Vec::new();
    for value in answers {
        match counts.iter_mut().find(|(seen, _)| *seen == value) {
            Some((_, count)) => *count += 1,
            None => counts.push((value, 1)),
        }
    }
    counts
        .into_iter()
        .find(|&(_, count)| count > members / 2)
        .map(|(value, _)| value)
}

/// The cluster id one member reports when asked for its status within a second, through a
/// client of its own; `None` if it does not answer.
async fn probe_endpoint(
    probe: &mut Option<Client>,
    endpoint: &str,
    settings: &Settings,
) -> Option<u64> {
    if probe.is_none() {
        let connect = Client::connect([endpoint], Some(connect_options(settings)));
        match tokio::time::timeout(Duration::from_secs(1), connect).await {
            Ok(Ok(client)) => *probe = Some(client),
            _ => return None,
        }
    }
    let client = probe.as_mut()?;
    match tokio::time::timeout(Duration::from_secs(1), client.status()).await {
        Ok(Ok(status)) => Some(status.header().map_or(0, |h| h.cluster_id())),
        _ => None,
    }
}

fn connect_options(settings: &Settings) -> ConnectOptions {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(REQUEST_TIMEOUT)
        // HTTP/2 pings notice a silent etcd (paused, partitioned) within a few seconds.
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    let security = &settings.security;
    if security.ca_pem.is_some() || security.identity_pem.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &security.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &security.identity_pem {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    if let Some((user, password)) = &security.user {
        options = options
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    options
}

/// Builds the client. Without credentials that needs no round trip; with a user it
/// authenticates, so an etcd that is down or refuses the password is retried with back-off
/// (commands meanwhile answer 503) and reported once as an error and as `/healthz`'s reason.
/// `None` if the settings themselves are unusable (reported to `start`) or hound is stopping.
async fn connect(
    settings: &Settings,
    hub: &Hub,
    commands: &mut UnboundedReceiver<Command>,
    started: crossbeam_channel::Sender<Result<()>>,
) -> Option<Client> {
    let mut started = Some(started);
    let mut backoff = Backoff::new();
    let mut reported = false;
    loop {
        let attempt = Client::connect(&settings.endpoints, Some(connect_options(settings))).await;
        let err = match attempt {
            Ok(client) => {
                if let Some(started) = started.take() {
                    let _ = started.send(Ok(()));
                }
                return Some(client);
            }
            Err(err) => err,
        };
        if matches!(
            err,
            etcd_client::Error::InvalidArgs(_)
                | etcd_client::Error::InvalidUri(_)
                | etcd_client::Error::EndpointError(_)
        ) {
            if let Some(started) = started.take() {
                let _ = started.send(Err(Error::Config(format!(
                    "cannot use etcd endpoints {}: {err}",
                    settings.endpoints.join(",")
                ))));
            }
            return None;
        }
        let reason = format!("cannot connect to etcd: {err}");
        if !reported {
            log::error!("{reason}");
            reported = true;
        }
        hub.set_health(Health::Unavailable(reason.clone()));
        if let Some(started) = started.take() {
            let _ = started.send(Ok(()));
        }
        let retry = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(retry);
        loop {
            tokio::select! {
                _ = &mut retry => break,
                command = commands.recv() => match command {
                    Some(command) => refuse(command, &reason),
                    None => return None,
                },
            }
        }
    }
}

/// Answers a command that cannot run because hound has no etcd client yet.
fn refuse(command: Command, reason: &str) {
    let err = || Error::Unavailable(reason.to_owned());
    match command {
        Command::Register { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Command::DeregisterAll { reply } | Command::Publish { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Command::Status { reply } => {
            let _ = reply.send(Err(err()));
        }
        Command::Deregister { .. } => {}
    }
}

async fn status(client: &mut Client) -> Result<ClusterStatus> {
    let status = client.status().await.map_err(unavailable)?;
    Ok(ClusterStatus {
        version: status.version().to_owned(),
        leader: status.leader(),
        member_id: status.header().map_or(0, |h| h.member_id()),
    })
}

impl Registry {
    async fn register(&mut self, service: &str, node: &Node, owner: SocketId) -> Result<i64> {
        let key = self.keys.registration(service, node);
        let (lease, revision) = grant_and_put(&mut self.client, &key, node, self.settings.ttl)
            .await
            .map_err(unavailable)?;
        let lease = Rc::new(Cell::new(lease));
        let keeper = spawn_local(keep_alive(
            self.client.clone(),
            key.clone(),
            node.clone(),
            lease.clone(),
            self.settings.ttl,
        ))
        .abort_handle();
        let replaced = self.held.hold(key.clone(), owner, Held { lease, keeper });
        if let Some(Replaced { lease: held, .. }) = &replaced {
            // The key now points at the new lease, so revoking the old one deletes nothing.
            held.keeper.abort();
            let mut client = self.client.clone();
            let old_lease = held.lease.get();
            spawn_local(async move {
                let _ = client.lease_revoke(old_lease).await;
            });
        }
        owners::registered(&self.hub, &key, owner, replaced.map(|r| r.owner));
        Ok(revision)
    }

    fn deregister(&mut self, service: &str, node: &Node, owner: SocketId) {
        let key = self.keys.registration(service, node);
        if let Some(held) = self.held.release(&key, owner) {
            held.keeper.abort();
            let tombstone = self.keys.tombstone(&key);
            spawn_local(delete_registration(
                self.client.clone(),
                key,
                tombstone,
                held.lease.get(),
            ));
        }
    }

    async fn deregister_all(&mut self) {
        let mut deletions = Vec::new();
        for (key, held) in self.held.drain() {
            held.keeper.abort();
            let tombstone = self.keys.tombstone(&key);
            deletions.push(spawn_local(delete_registration(
                self.client.clone(),
                key,
                tombstone,
                held.lease.get(),
            )));
        }
        for deletion in deletions {
            let _ = deletion.await;
        }
    }
}

async fn grant_and_put(
    client: &mut Client,
    key: &str,
    node: &Node,
    ttl: i64,
) -> std::result::Result<(i64, i64), etcd_client::Error> {
    let lease = client.lease_grant(ttl, None).await?.id();
    let put = client
        .put(
            key,
            node.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await;
    match put {
        Ok(response) => Ok((lease, response.header().map_or(0, |h| h.revision()))),
        Err(err) => {
            let _ = client.lease_revoke(lease).await;
            Err(err)
        }
    }
}

/// Deletes the key if it still belongs to `lease`, writing a tombstone in the same revision
/// so every hound's watch reports DELETE rather than EXPIRE, then revokes the lease (which
/// also removes the tombstone).
async fn delete_registration(mut client: Client, key: String, tombstone: String, lease: i64) {
    let txn = Txn::new()
        .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
        .and_then([
            TxnOp::delete(key.as_str(), None),
            TxnOp::put(tombstone, "", Some(PutOptions::new().with_lease(lease))),
        ]);
    if let Err(err) = client.txn(txn).await {
        log::warn!("could not delete {key}: {err}; its lease will expire instead");
    }
    if let Err(err) = client.lease_revoke(lease).await {
        log::debug!("could not revoke lease {lease:x} of {key}: {err}");
    }
}

/// Keeps one registration's lease alive every TTL/3. If etcd no longer knows the lease
/// (it expired while etcd was unreachable, or etcd lost its data), registers the node again
/// with a fresh lease.
async fn keep_alive(mut client: Client, key: String, node: Node, lease: Rc<Cell<i64>>, ttl: i64) {
    let period = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
    let mut backoff = Backoff::new();
    let mut throttle = Throttle::default();
    loop {
        match keep_lease_alive(&mut client, lease.get(), period, &mut backoff).await {
            Ok(()) => {
                log::warn!("lease of {key} is gone; registering it again");
                match grant_and_put(&mut client, &key, &node, ttl).await {
                    Ok((fresh, _)) => {
                        lease.set(fresh);
                        metrics::LEASE_REGRANTS.add(1);
                        log::info!("registered {key} again with a new lease");
                        backoff.reset();
                    }
                    Err(err) => {
                        log::log!(throttle.level(), "could not register {key} again: {err}");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
            Err(err) => {
                log::log!(
                    throttle.level(),
                    "keep-alive of {key} failed: {err}; retrying"
                );
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Refreshes `lease` until etcd says it is gone (`Ok`) or the stream fails (`Err`).
async fn keep_lease_alive(
    client: &mut Client,
    lease: i64,
    period: Duration,
    backoff: &mut Backoff,
) -> std::result::Result<(), etcd_client::Error> {
    let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
        Ok(pair) => pair,
        // etcd-client's way of saying etcd answered TTL 0 to the first request.
        Err(etcd_client::Error::LeaseKeepAliveError(why)) if why == "lease not found" => {
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    loop {
        keeper.keep_alive().await?;
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, responses.message()).await;
        match answer {
            Ok(Ok(Some(response))) if response.ttl() > 0 => backoff.reset(),
            Ok(Ok(Some(_))) => return Ok(()),
            Ok(Ok(None)) => {
                return Err(etcd_client::Error::LeaseKeepAliveError(
                    "keep-alive stream ended".into(),
                ));
            }
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                return Err(etcd_client::Error::LeaseKeepAliveError(
                    "no keep-alive answer in time".into(),
                ));
            }
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::majority;

    #[test]
    fn the_cluster_changes_only_when_most_configured_members_agree() {
        assert_eq!(majority([7, 9, 7].into_iter(), 3), Some(7));
        assert_eq!(majority([9, 7, 7].into_iter(), 3), Some(7));
        // Two of three members down: the one that answers is no majority.
        assert_eq!(majority([9].into_iter(), 3), None);
        assert_eq!(majority([9, 7].into_iter(), 3), None);
        assert_eq!(majority([9, 7].into_iter(), 2), None);
        assert_eq!(majority([9, 9].into_iter(), 4), None);
        assert_eq!(majority([9].into_iter(), 1), Some(9));
        assert_eq!(majority(std::iter::empty(), 3), None);
    }
}
