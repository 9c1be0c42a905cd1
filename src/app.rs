//! Starting and stopping hound: the etcd thread, the HTTP workers, and the graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::etcd::{Etcd, Settings};
use crate::hub::Hub;
use crate::socket::signal::close_code;

/// HTTP worker threads. REST answers are quick (memory reads); etcd round trips are bounded.
const HTTP_WORKERS: usize = 4;
/// The whole shutdown must fit in 5 s even with etcd gone.
const DEREGISTER_BUDGET: Duration = Duration::from_millis(2500);
const SOCKET_CLOSE_BUDGET: Duration = Duration::from_millis(1500);

/// What request handlers and socket threads share.
#[derive(Debug)]
pub struct Context {
    pub hub: Arc<Hub>,
    pub etcd: Etcd,
    pub ping_interval: Duration,
    pub access: crate::http::access::Access,
    /// The port hound listens on (the one chosen, if 0 was asked for).
    pub port: u16,
}

/// A running hound.
pub struct App {
    server: Arc<tiny_http::Server>,
    stop_warden: Arc<AtomicBool>,
    context: Arc<Context>,
    workers: Vec<JoinHandle<()>>,
    local_addr: std::net::SocketAddr,
}

impl App {
    /// Binds the listener, starts the etcd thread and the HTTP workers.
    pub fn start(config: &Config) -> Result<App> {
        match crate::fds::raise_limit() {
            Ok(limit) => log::debug!("open file limit: {limit}"),
            Err(err) => log::warn!("cannot raise the open file limit: {err}"),
        }
        let server = tiny_http::Server::http(config.listen)
            .map_err(|err| Error::Config(format!("cannot listen on {}: {err}", config.listen)))?;
        let local_addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| Error::Internal("the listener has no IP address".into()))?;
        let hub = Arc::new(Hub::default());
        let settings = Settings {
            endpoints: config.etcd_endpoints.clone(),
            ttl: config.ttl,
            namespace: config.namespace.clone(),
            event_namespace: config.event_namespace.clone(),
        };
        let etcd = Etcd::start(settings, hub.clone())?;
        let context = Arc::new(Context {
            hub,
            etcd,
            ping_interval: config.ping_interval,
            access: config.access.clone(),
            port: local_addr.port(),
        });
        let server = Arc::new(server);
        let mut workers = Vec::new();
        for n in 0..HTTP_WORKERS {
            let (server, context) = (server.clone(), context.clone());
            let worker = std::thread::Builder::new()
                .name(format!("http-{n}"))
                .spawn(move || crate::http::serve(server, context))
                .map_err(|err| Error::Internal(format!("cannot start an HTTP worker: {err}")))?;
            workers.push(worker);
        }
        let stop_warden = Arc::new(AtomicBool::new(false));
        crate::http::warden::start(local_addr.port(), config.idle_timeout, stop_warden.clone())
            .map_err(|err| Error::Internal(format!("cannot start the connection warden: {err}")))?;
        log::info!(
            "listening on http://{local_addr} (etcd {}, namespace {:?}, ttl {} s)",
            config.etcd_endpoints.join(","),
            config.namespace,
            config.ttl
        );
        Ok(App {
            server,
            stop_warden,
            context,
            workers,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// Stops accepting, deregisters every node (others see DELETE), closes every socket with
    /// 1001, and returns within about 4 s even if etcd does not answer.
    pub fn shutdown(self) {
        let started = Instant::now();
        log::info!("shutting down");
        self.stop_warden.store(true, Ordering::Relaxed);
        for _ in &self.workers {
            self.server.unblock();
        }
        self.context.hub.close_all(close_code::GOING_AWAY);
        if let Err(err) = self.context.etcd.deregister_all(DEREGISTER_BUDGET) {
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
