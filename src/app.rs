//! Starting and stopping hound: the etcd thread, the HTTP workers, and the graceful shutdown.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{Resource, getrlimit, setrlimit};

use crate::check::Checker;
use crate::config::Config;
use crate::context::Context;
use crate::dns::DnsServer;
use crate::dns::zone::Zone;
use crate::embedded::Embedded;
use crate::error::{Error, Result};
use crate::etcd::{Etcd, Settings};
use crate::http::budget::EventBudget;
use crate::http::listener::{ConnectionCaps, Listener};
use crate::hub::Hub;
use crate::socket::close_code;
use crate::store::Store;

/// HTTP worker threads. REST answers are quick (memory reads); etcd round trips are bounded.
const HTTP_WORKERS: usize = 4;
/// The whole shutdown must fit in 5 s even with etcd gone.
const DEREGISTER_BUDGET: Duration = Duration::from_millis(2500);
const SOCKET_CLOSE_BUDGET: Duration = Duration::from_millis(1500);
/// Descriptors kept back from the connection cap for etcd, the listener, files, and the
/// hand-over's momentary duplicate of each upgraded connection. Every connection, HTTP or
/// WebSocket, holds one descriptor (tiny_http's halves share it; a socket thread's doorbell is a
/// signal, not an eventfd).
const FD_RESERVE: u64 = 256;

/// A running hound.
pub struct App {
    context: Arc<Context>,
    workers: Vec<JoinHandle<()>>,
    local_addr: std::net::SocketAddr,
    dns: Option<DnsServer>,
    /// `--drain-grace`: how long nodes stay registered as `draining` before the shutdown
    /// deregisters them.
    drain_grace: Duration,
}

impl App {
    /// Binds the listener, starts the etcd thread and the HTTP workers.
    pub fn start(config: &Config) -> Result<App> {
        let fd_limit = match raise_fd_limit() {
            Ok(limit) => limit,
            Err(err) => {
                log::warn!("cannot raise the open file limit: {err}");
                1024
            }
        };
        let fd_budget = usize::try_from(fd_limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
        let caps = ConnectionCaps::new(config.max_connections, fd_budget);
        log::debug!(
            "open file limit {fd_limit}; at most {} connections ({} for /healthz and /metrics)",
            caps.requests,
            caps.accepted
        );
        let listener = Listener::bind(config.listen, config.idle_timeout, caps)
            .map_err(|err| Error::Config(format!("cannot listen on {}: {err}", config.listen)))?;
        let local_addr = listener.local_addr();
        let hub = Arc::new(Hub::default());
        let settings = Settings {
            endpoints: config.etcd_endpoints.clone(),
            security: config.etcd_security.clone(),
            ttl: config.ttl,
            namespace: config.namespace.clone(),
            event_namespace: config.event_namespace.clone(),
            election_namespace: config.election_namespace.clone(),
        };
        let store = if config.embedded {
            log::warn!(
                "embedded mode: registrations live in this process only (single host, for \
                 development); use --etcd for a cluster"
            );
            let embedded =
                Embedded::start(hub.clone(), config.ttl, &config.namespace).map_err(|err| {
                    Error::Internal(format!("cannot start the embedded store: {err}"))
                })?;
            Store::Embedded(embedded)
        } else {
            Store::Etcd(Etcd::start(settings, hub.clone())?)
        };
        let checker = Checker::new(store.clone());
        let context = Arc::new(Context {
            hub,
            store,
            checker,
            listener,
            ping_interval: config.ping_interval,
            access: config.access.clone(),
            events: EventBudget::new(config.event_limits),
        });
        let dns = match &config.dns {
            Some(settings) => Some(start_dns(config, settings, &context.hub)?),
            None => None,
        };
        let mut workers = Vec::new();
        for n in 0..HTTP_WORKERS {
            let context = context.clone();
            let worker = std::thread::Builder::new()
                .name(format!("http-{n}"))
                .spawn(move || crate::http::serve(context))
                .map_err(|err| Error::Internal(format!("cannot start an HTTP worker: {err}")))?;
            workers.push(worker);
        }
        let backend = if config.embedded {
            "embedded store".to_owned()
        } else {
            format!("etcd {}", config.etcd_endpoints.join(","))
        };
        log::info!(
            "listening on http://{local_addr} ({backend}, namespace {:?}, ttl {} s)",
            config.namespace,
            config.ttl
        );
        Ok(App {
            context,
            workers,
            local_addr,
            dns,
            drain_grace: config.drain_grace,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// With a drain grace, first marks every node `draining` (others see a PUT) and waits the
    /// grace out, still serving: in-flight work finishes while clients move away. Then stops
    /// accepting, deregisters every node (others see DELETE), closes every socket with 1001,
    /// and returns within about 4 s more even if etcd does not answer.
    pub fn shutdown(self) {
        if !self.drain_grace.is_zero() {
            log::info!(
                "draining: every node reads draining for {} s before it is deregistered",
                self.drain_grace.as_secs()
            );
            self.context.store.drain_all();
            std::thread::sleep(self.drain_grace);
        }
        let started = Instant::now();
        log::info!("shutting down");
        self.context.listener.stop();
        if let Some(dns) = self.dns {
            dns.stop();
        }
        self.context.hub.close_all(close_code::GOING_AWAY);
        if let Err(err) = self.context.store.deregister_all(DEREGISTER_BUDGET) {
            log::warn!("could not deregister everything: {err}; leases will expire");
        }
        if !self.context.hub.wait_for_no_sockets(SOCKET_CLOSE_BUDGET) {
            log::warn!(
                "{} sockets did not finish closing",
                self.context.hub.socket_count()
            );
        }
        for worker in self.workers {
            let _ = worker.join();
        }
        log::info!("stopped in {} ms", started.elapsed().as_millis());
    }
}

/// Starts the DNS server on `--bind`'s address, answering from the hub's mirror.
fn start_dns(
    config: &Config,
    settings: &crate::config::DnsSettings,
    hub: &Hub,
) -> Result<DnsServer> {
    let zone = Arc::new(Zone::new(&settings.domain)?);
    hub.attach_zone(zone.clone());
    let server = DnsServer::start(config.listen.ip(), settings.port, zone, config.idle_timeout)
        .map_err(|err| {
            Error::Config(format!(
                "cannot answer DNS on {}:{}: {err}",
                config.listen.ip(),
                settings.port
            ))
        })?;
    log::info!(
        "answering DNS for {} on {} (UDP and TCP)",
        settings.domain,
        server.local_addr()
    );
    Ok(server)
}

/// Raises the soft limit on open descriptors to the hard limit and returns it.
fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit)?;
    }
    // No limit at all is as good as the largest number.
    Ok(limit.current.unwrap_or(u64::MAX))
}
