//! Command-line flags and environment variables, read raw and then validated into a [`Config`]
//! the rest of the program trusts.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use log::LevelFilter;

use crate::error::{Error, Result};
use crate::http::access::{Access, AllowedHosts, normalise_origin};
use crate::http::budget::EventLimits;
use crate::names;

pub const USAGE: &str = "\
hound — service self-registration and discovery sidecar for etcd

Usage: hound [OPTIONS]

Options:
  -b, --bind HOST              address to listen on              [env HOUND_BIND, default 127.0.0.1]
  -p, --port PORT              port to listen on (0 = any free)  [env HOUND_PORT, default 3000]
      --embedded               no etcd: keep registrations in this process (one host,
                               for trying hound and development) [env HOUND_EMBEDDED=1]
      --etcd URLS              comma-separated etcd endpoints    [env HOUND_ETCD, default http://127.0.0.1:2379]
      --ttl SECONDS            lease TTL of each registration    [env HOUND_TTL, default 15]
      --etcd-ca FILE           CA bundle for https:// endpoints  [env HOUND_ETCD_CA]
      --etcd-cert FILE         client certificate (with --etcd-key) [env HOUND_ETCD_CERT]
      --etcd-key FILE          client key                        [env HOUND_ETCD_KEY]
      --etcd-user USER         etcd user; the password comes from env HOUND_ETCD_PASSWORD
                                                                 [env HOUND_ETCD_USER]
      --namespace NAME         key prefix for registrations      [env HOUND_NAMESPACE, default service]
      --event-namespace NAME   key prefix for custom events      [env HOUND_EVENT_NAMESPACE, default event]
      --election-namespace NAME
                               key prefix for leader elections
                                            [env HOUND_ELECTION_NAMESPACE, default election]
      --ping-interval SECONDS  WebSocket ping interval           [env HOUND_PING_INTERVAL, default 15]
      --idle-timeout SECONDS   close an HTTP connection that waits this
                               long to read or write             [env HOUND_IDLE_TIMEOUT, default 15]
      --event-rate N           events a client may publish per second
                               (429 past it)                     [env HOUND_EVENT_RATE, default 50]
      --event-bytes N          bytes of events a client may publish
                               per second                  [env HOUND_EVENT_BYTES, default 524288]
      --event-rate-total N     events all clients together may publish
                               per second                  [env HOUND_EVENT_RATE_TOTAL, default 500]
      --event-bytes-total N    bytes of events all clients together
                               per second           [env HOUND_EVENT_BYTES_TOTAL, default 2097152]
      --max-connections N      answer 503 past this many open
                               connections        [env HOUND_MAX_CONNECTIONS, default from fd limit]
      --token TOKEN            require Authorization: Bearer TOKEN
                               (or ?token= on WebSocket routes)  [env HOUND_TOKEN]
      --allow-origin ORIGINS   comma-separated browser origins allowed
                               besides hound's own host          [env HOUND_ALLOW_ORIGIN]
      --allow-host HOSTS       comma-separated names hound answers to
                               besides IP addresses and localhost
                               (* for any)                       [env HOUND_ALLOW_HOST]
      --dns-port PORT          answer DNS on this port, UDP and TCP, at --bind
                               (0 = any free)                    [env HOUND_DNS_PORT, default off]
      --dns-domain DOMAIN      the domain DNS answers for        [env HOUND_DNS_DOMAIN, default hound.]
      --drain-grace SECONDS    on SIGTERM, mark every node draining and wait
                               this long before deregistering   [env HOUND_DRAIN_GRACE, default 0]
      --log-level LEVEL        error, warn, info, debug, trace   [env HOUND_LOG, default info]
      --log-format FORMAT      text, or json (one object a line) [env HOUND_LOG_FORMAT, default text]
  -r, --routes                 print the routes and exit
  -v, --version                print the version and exit
  -h, --help                   print this help and exit

A flag wins over its environment variable. SIGTERM or SIGINT deregisters every node (after
the drain grace) and exits.
";

/// What the invocation asks for.
#[derive(Debug)]
pub enum Invocation {
    Run(Box<Config>),
    Help,
    Version,
    Routes,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Use the in-process store instead of etcd.
    pub embedded: bool,
    pub etcd_endpoints: Vec<String>,
    pub etcd_security: EtcdSecurity,
    pub ttl: i64,
    pub namespace: String,
    pub event_namespace: String,
    /// Key prefix of the leader elections (`campaign=1`), without the trailing `/`.
    pub election_namespace: String,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub access: Access,
    /// Past this many open connections requests get 503; `None` derives it from the fd limit.
    pub max_connections: Option<usize>,
    pub event_limits: EventLimits,
    pub log_level: LevelFilter,
    pub log_format: LogFormat,
    /// The DNS server, if `--dns-port` is given.
    pub dns: Option<DnsSettings>,
    /// How long nodes stay registered as `draining` on SIGTERM before they are deregistered.
    pub drain_grace: Duration,
}

/// Where and for which domain hound answers DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// `0`: any port free for both UDP and TCP.
    pub port: u16,
    /// Fully qualified, lower case: `hound.`.
    pub domain: String,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `16:02:11 [INFO] registered …`, for people.
    Text,
    /// `{"time":"…","level":"INFO","message":"registered …"}`, for log shippers.
    Json,
}

/// How hound proves itself to etcd: PEM contents read at start-up, and credentials.
#[derive(Clone, Default)]
pub struct EtcdSecurity {
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// User and password.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdSecurity {
    // The password and key never appear in logs or debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSecurity")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity_pem.is_some())
            .field("user", &self.user.as_ref().map(|(user, _)| user))
            .finish()
    }
}

/// Flags as given, before validation.
#[derive(Debug, Default)]
struct RawArgs {
    embedded: bool,
    bind: Option<String>,
    port: Option<String>,
    etcd: RawEtcdArgs,
    ttl: Option<String>,
    namespace: Option<String>,
    event_namespace: Option<String>,
    election_namespace: Option<String>,
    ping_interval: Option<String>,
    idle_timeout: Option<String>,
    token: Option<String>,
    max_connections: Option<String>,
    events: RawEventArgs,
    allow_origin: Option<String>,
    allow_host: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    dns_port: Option<String>,
    dns_domain: Option<String>,
    drain_grace: Option<String>,
}

/// The event budget's flags as given.
#[derive(Debug, Default)]
struct RawEventArgs {
    rate: Option<String>,
    bytes: Option<String>,
    rate_total: Option<String>,
    bytes_total: Option<String>,
}

/// The etcd flags as given: endpoints and security.
#[derive(Debug, Default)]
struct RawEtcdArgs {
    endpoints: Option<String>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    user: Option<String>,
}

/// Parses `args` (without the program name), falling back to `env` for each unset flag.
pub fn parse(args: Vec<OsString>, env: impl Fn(&str) -> Option<String>) -> Result<Invocation> {
    let mut args = pico_args::Arguments::from_vec(args);
    if args.contains(["-h", "--help"]) {
        return Ok(Invocation::Help);
    }
    if args.contains(["-v", "--version"]) {
        return Ok(Invocation::Version);
    }
    if args.contains(["-r", "--routes"]) {
        return Ok(Invocation::Routes);
    }
    let raw = RawArgs {
        embedded: args.contains("--embedded"),
        bind: flag(&mut args, ["-b", "--bind"])?,
        port: flag(&mut args, ["-p", "--port"])?,
        etcd: RawEtcdArgs {
            endpoints: flag(&mut args, "--etcd")?,
            ca: flag(&mut args, "--etcd-ca")?,
            cert: flag(&mut args, "--etcd-cert")?,
            key: flag(&mut args, "--etcd-key")?,
            user: flag(&mut args, "--etcd-user")?,
        },
        ttl: flag(&mut args, "--ttl")?,
        namespace: flag(&mut args, "--namespace")?,
        event_namespace: flag(&mut args, "--event-namespace")?,
        election_namespace: flag(&mut args, "--election-namespace")?,
        ping_interval: flag(&mut args, "--ping-interval")?,
        idle_timeout: flag(&mut args, "--idle-timeout")?,
        token: flag(&mut args, "--token")?,
        max_connections: flag(&mut args, "--max-connections")?,
        events: RawEventArgs {
            rate: flag(&mut args, "--event-rate")?,
            bytes: flag(&mut args, "--event-bytes")?,
            rate_total: flag(&mut args, "--event-rate-total")?,
            bytes_total: flag(&mut args, "--event-bytes-total")?,
        },
        allow_origin: flag(&mut args, "--allow-origin")?,
        allow_host: flag(&mut args, "--allow-host")?,
        log_level: flag(&mut args, "--log-level")?,
        log_format: flag(&mut args, "--log-format")?,
        dns_port: flag(&mut args, "--dns-port")?,
        dns_domain: flag(&mut args, "--dns-domain")?,
        drain_grace: flag(&mut args, "--drain-grace")?,
    };
    let rest = args.finish();
    if let Some(first) = rest.first() {
        let shown = first.to_string_lossy();
        let name = shown.split('=').next().unwrap_or_default();
        return Err(Error::Config(if USAGE.contains(&format!(" {name} ")) {
            format!("{name} is given more than once")
        } else if shown.starts_with('-') {
            format!("unknown flag {shown} (see hound --help)")
        } else {
            format!("unexpected argument {shown:?} (see hound --help)")
        }));
    }
    Config::from_raw(raw, env).map(|config| Invocation::Run(Box::new(config)))
}

fn flag<K: Into<pico_args::Keys>>(
    args: &mut pico_args::Arguments,
    keys: K,
) -> Result<Option<String>> {
    let keys = keys.into();
    args.opt_value_from_str::<_, String>(keys).map_err(|err| {
        Error::Config(match err {
            pico_args::Error::OptionWithoutAValue(name) => format!("{name} needs a value"),
            other => other.to_string(),
        })
    })
}

/// Where each setting comes from: its flag if given, else its environment variable.
struct Sources<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
}

impl Sources<'_> {
    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }

    /// The flag's value, else the variable's.
    fn given(&self, flag: Option<String>, var: &str) -> Option<String> {
        flag.or_else(|| self.var(var))
    }

    /// The flag's value, else the variable's, else `default`.
    fn pick(&self, flag: Option<String>, var: &str, default: &str) -> String {
        self.given(flag, var).unwrap_or_else(|| default.to_owned())
    }
}

impl Config {
    /// Validates one setting after another; the first bad one is the error reported.
    fn from_raw(raw: RawArgs, env: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let from = Sources { env: &env };
        let listen = listen_address(&from, raw.bind, raw.port)?;
        let embedded = embedded(&from, raw.embedded)?;
        let (etcd_endpoints, etcd_security) = etcd_settings(&from, raw.etcd, embedded)?;
        let ttl = ttl(&from.pick(raw.ttl, "HOUND_TTL", "15"))?;
        let (namespace, event_namespace) = namespaces(&from, raw.namespace, raw.event_namespace)?;
        let election_namespace = election_namespace(
            &from,
            raw.election_namespace,
            [&namespace, &event_namespace],
        )?;
        let ping = from.pick(raw.ping_interval, "HOUND_PING_INTERVAL", "15");
        let ping_interval = seconds("--ping-interval", &ping)?;
        let idle = from.pick(raw.idle_timeout, "HOUND_IDLE_TIMEOUT", "15");
        let idle_timeout = seconds("--idle-timeout", &idle)?;
        let access = access(&from, raw.token, raw.allow_origin, raw.allow_host)?;
        let max_connections =
            max_connections(from.given(raw.max_connections, "HOUND_MAX_CONNECTIONS"))?;
        let event_limits = event_limits(&from, raw.events)?;
        let log_level = log_level(&from.pick(raw.log_level, "HOUND_LOG", "info"))?;
        let log_format = log_format(&from.pick(raw.log_format, "HOUND_LOG_FORMAT", "text"))?;
        let dns = dns(&from, raw.dns_port, raw.dns_domain)?;
        let drain_grace = drain_grace(&from.pick(raw.drain_grace, "HOUND_DRAIN_GRACE", "0"))?;
        Ok(Config {
            listen,
            embedded,
            etcd_endpoints,
            etcd_security,
            ttl,
            namespace,
            event_namespace,
            election_namespace,
            ping_interval,
            idle_timeout,
            access,
            max_connections,
            event_limits,
            log_level,
            log_format,
            dns,
            drain_grace,
        })
    }
}

/// `--drain-grace`: 0 (no drain: deregister at once, as in 1.0) to 3600 seconds.
fn drain_grace(text: &str) -> Result<Duration> {
    match text.parse::<u64>() {
        Ok(seconds) if seconds <= 3_600 => Ok(Duration::from_secs(seconds)),
        _ => Err(Error::Config(format!(
            "--drain-grace {text:?} is not a number of seconds from 0 to 3600"
        ))),
    }
}

/// `--bind` and `--port`: the address to listen on.
fn listen_address(
    from: &Sources,
    bind: Option<String>,
    port: Option<String>,
) -> Result<SocketAddr> {
    let bind = from.pick(bind, "HOUND_BIND", "127.0.0.1");
    let port = from.pick(port, "HOUND_PORT", "3000");
    let port: u16 = port
        .parse()
        .map_err(|_| Error::Config(format!("--port {port:?} is not a port number (0-65535)")))?;
    resolve(&bind, port)
}

/// `--embedded`, or `HOUND_EMBEDDED` set to 1 or true.
fn embedded(from: &Sources, flag: bool) -> Result<bool> {
    if flag {
        return Ok(true);
    }
    match from.var("HOUND_EMBEDDED").as_deref() {
        None | Some("" | "0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(Error::Config(format!(
            "HOUND_EMBEDDED={other:?} is not 1, true, 0 or false"
        ))),
    }
}

/// The etcd endpoints and how hound proves itself to them. With `--embedded` no etcd flag
/// may be given.
fn etcd_settings(
    from: &Sources,
    raw: RawEtcdArgs,
    embedded: bool,
) -> Result<(Vec<String>, EtcdSecurity)> {
    let given = [&raw.endpoints, &raw.user, &raw.ca, &raw.cert, &raw.key];
    if embedded && given.iter().any(|flag| flag.is_some()) {
        return Err(Error::Config(
            "--embedded runs without etcd; drop the --etcd flags".into(),
        ));
    }
    let list = from.pick(raw.endpoints, "HOUND_ETCD", "http://127.0.0.1:2379");
    let endpoints = parse_endpoints(&list)?;
    let ca_pem = match from.given(raw.ca, "HOUND_ETCD_CA") {
        Some(path) => Some(read_pem("--etcd-ca", path, PEM_CERTIFICATE)?),
        None => None,
    };
    let cert = from.given(raw.cert, "HOUND_ETCD_CERT");
    let key = from.given(raw.key, "HOUND_ETCD_KEY");
    let identity_pem = match (cert, key) {
        (Some(cert), Some(key)) => Some((
            read_pem("--etcd-cert", cert, PEM_CERTIFICATE)?,
            read_pem("--etcd-key", key, PEM_KEY)?,
        )),
        (None, None) => None,
        _ => {
            return Err(Error::Config(
                "--etcd-cert and --etcd-key go together".into(),
            ));
        }
    };
    check_tls(&endpoints, ca_pem.is_some(), identity_pem.is_some())?;
    let user = etcd_user(from, raw.user)?;
    let security = EtcdSecurity {
        ca_pem,
        identity_pem,
        user,
    };
    Ok((endpoints, security))
}

/// What a PEM certificate file must contain.
const PEM_CERTIFICATE: &str = "-----BEGIN CERTIFICATE";
/// What a PEM key file must contain.
const PEM_KEY: &str = "PRIVATE KEY-----";

/// Reads and sanity-checks a PEM file now, so a wrong path or file is one clear error at
/// start-up rather than an endless 503 with a transport error.
fn read_pem(flag: &str, path: String, marker: &str) -> Result<Vec<u8>> {
    let pem = std::fs::read(&path)
        .map_err(|err| Error::Config(format!("{flag} {path:?} cannot be read: {err}")))?;
    if !String::from_utf8_lossy(&pem).contains(marker) {
        return Err(Error::Config(format!(
            "{flag} {path:?} holds no PEM {}",
            marker
                .trim_start_matches("-----BEGIN ")
                .to_ascii_lowercase()
        )));
    }
    Ok(pem)
}

/// Certificates go with https:// endpoints only, and https:// needs a CA: hound trusts none
/// by default.
fn check_tls(endpoints: &[String], has_ca: bool, has_identity: bool) -> Result<()> {
    let uses_tls = endpoints.iter().any(|e| e.starts_with("https://"));
    if (has_ca || has_identity) && !uses_tls {
        return Err(Error::Config(
            "--etcd-ca, --etcd-cert and --etcd-key need https:// endpoints".into(),
        ));
    }
    if uses_tls && !has_ca {
        return Err(Error::Config(
            "https:// endpoints need --etcd-ca (hound trusts no CA by default)".into(),
        ));
    }
    if uses_tls && endpoints.iter().any(|e| e.starts_with("http://")) {
        return Err(Error::Config(
            "--etcd endpoints must be all http:// or all https://".into(),
        ));
    }
    Ok(())
}

/// `--etcd-user` with its password, which only the environment may hold.
fn etcd_user(from: &Sources, user: Option<String>) -> Result<Option<(String, String)>> {
    let Some(user) = from.given(user, "HOUND_ETCD_USER") else {
        return Ok(None);
    };
    let password = from.var("HOUND_ETCD_PASSWORD").ok_or_else(|| {
        Error::Config(format!(
            "--etcd-user {user:?} needs its password in HOUND_ETCD_PASSWORD"
        ))
    })?;
    Ok(Some((user, password)))
}

/// `--dns-port` and `--dns-domain`: DNS is off unless a port is given.
fn dns(
    from: &Sources,
    port: Option<String>,
    domain: Option<String>,
) -> Result<Option<DnsSettings>> {
    let domain = from.pick(domain, "HOUND_DNS_DOMAIN", "hound.");
    let domain = crate::dns::zone::parse_domain(&domain)?.to_string();
    let Some(port) = from.given(port, "HOUND_DNS_PORT") else {
        return Ok(None);
    };
    let port = port.parse::<u16>().map_err(|_| {
        Error::Config(format!(
            "--dns-port {port:?} is not a port number (0-65535)"
        ))
    })?;
    Ok(Some(DnsSettings { port, domain }))
}

/// `--ttl`: whole seconds from 1 to a day.
fn ttl(text: &str) -> Result<i64> {
    match text.parse::<i64>() {
        Ok(ttl) if (1..=86_400).contains(&ttl) => Ok(ttl),
        _ => Err(Error::Config(format!(
            "--ttl {text:?} is not a number of seconds from 1 to 86400"
        ))),
    }
}

/// `--namespace` and `--event-namespace`: each valid, and neither inside the other, so the
/// service watch never sees events and the event watch never sees registrations.
fn namespaces(
    from: &Sources,
    namespace: Option<String>,
    event_namespace: Option<String>,
) -> Result<(String, String)> {
    let namespace = from.pick(namespace, "HOUND_NAMESPACE", "service");
    check_namespace("--namespace", &namespace)?;
    let event_namespace = from.pick(event_namespace, "HOUND_EVENT_NAMESPACE", "event");
    check_namespace("--event-namespace", &event_namespace)?;
    let nested = |outer: &str, inner: &str| inner.starts_with(&format!("{outer}/"));
    if namespace == event_namespace
        || nested(&namespace, &event_namespace)
        || nested(&event_namespace, &namespace)
    {
        return Err(Error::Config(
            "--namespace and --event-namespace must differ and not contain each other".into(),
        ));
    }
    Ok((namespace, event_namespace))
}

/// `--election-namespace`: valid, and apart from the other two namespaces, so that no watch
/// sees another's keys.
fn election_namespace(from: &Sources, flag: Option<String>, others: [&str; 2]) -> Result<String> {
    let namespace = from.pick(flag, "HOUND_ELECTION_NAMESPACE", "election");
    check_namespace("--election-namespace", &namespace)?;
    let nested = |outer: &str, inner: &str| inner.starts_with(&format!("{outer}/"));
    if others
        .iter()
        .any(|other| *other == namespace || nested(other, &namespace) || nested(&namespace, other))
    {
        return Err(Error::Config(
            "--election-namespace must differ from --namespace and --event-namespace and not \
             contain either or lie inside one"
                .into(),
        ));
    }
    Ok(namespace)
}

/// `--token`, `--allow-origin` and `--allow-host`: who may use hound.
fn access(
    from: &Sources,
    token: Option<String>,
    allow_origin: Option<String>,
    allow_host: Option<String>,
) -> Result<Access> {
    let token = from.given(token, "HOUND_TOKEN");
    if token
        .as_deref()
        .is_some_and(|t| t.is_empty() || t.chars().any(char::is_whitespace))
    {
        return Err(Error::Config(
            "--token must be non-empty and without spaces".into(),
        ));
    }
    let allowed_origins = from
        .given(allow_origin, "HOUND_ALLOW_ORIGIN")
        .unwrap_or_default()
        .split(',')
        .map(normalise_origin)
        .filter(|origin| !origin.is_empty())
        .collect();
    let allowed_hosts = AllowedHosts::parse(
        &from
            .given(allow_host, "HOUND_ALLOW_HOST")
            .unwrap_or_default(),
    )?;
    Ok(Access {
        token,
        allowed_origins,
        allowed_hosts,
    })
}

/// `--max-connections`: a positive number, if given.
fn max_connections(given: Option<String>) -> Result<Option<usize>> {
    let Some(text) = given else { return Ok(None) };
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(Error::Config(format!(
            "--max-connections {text:?} is not a positive number"
        ))),
    }
}

/// The event budget: four positive numbers a second, each with a default.
fn event_limits(from: &Sources, raw: RawEventArgs) -> Result<EventLimits> {
    let defaults = EventLimits::default();
    let per_second = |given: Option<String>, flag: &str, var: &str, default: f64| {
        let Some(text) = from.given(given, var) else {
            return Ok(default);
        };
        match text.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n as f64),
            _ => Err(Error::Config(format!(
                "{flag} {text:?} is not a positive whole number"
            ))),
        }
    };
    Ok(EventLimits {
        per_client_events: per_second(
            raw.rate,
            "--event-rate",
            "HOUND_EVENT_RATE",
            defaults.per_client_events,
        )?,
        per_client_bytes: per_second(
            raw.bytes,
            "--event-bytes",
            "HOUND_EVENT_BYTES",
            defaults.per_client_bytes,
        )?,
        total_events: per_second(
            raw.rate_total,
            "--event-rate-total",
            "HOUND_EVENT_RATE_TOTAL",
            defaults.total_events,
        )?,
        total_bytes: per_second(
            raw.bytes_total,
            "--event-bytes-total",
            "HOUND_EVENT_BYTES_TOTAL",
            defaults.total_bytes,
        )?,
    })
}

/// `--log-level`, in any case.
fn log_level(level: &str) -> Result<LevelFilter> {
    one_of(
        "--log-level",
        level,
        &[
            ("error", LevelFilter::Error),
            ("warn", LevelFilter::Warn),
            ("info", LevelFilter::Info),
            ("debug", LevelFilter::Debug),
            ("trace", LevelFilter::Trace),
        ],
    )
}

/// `--log-format`, in any case.
fn log_format(format: &str) -> Result<LogFormat> {
    one_of(
        "--log-format",
        format,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    )
}

/// The choice `text` names, in any case.
fn one_of<T: Copy>(flag: &str, text: &str, choices: &[(&str, T)]) -> Result<T> {
    let wanted = text.to_ascii_lowercase();
    match choices.iter().find(|(name, _)| *name == wanted) {
        Some(&(_, choice)) => Ok(choice),
        None => {
            let names: Vec<&str> = choices.iter().map(|&(name, _)| name).collect();
            Err(Error::Config(format!(
                "{flag} {text:?} is not one of {}",
                names.join(", ")
            )))
        }
    }
}

/// A duration flag: whole seconds from 1 to 3600.
fn seconds(flag: &str, text: &str) -> Result<Duration> {
    match text.parse::<u64>() {
        Ok(seconds) if (1..=3_600).contains(&seconds) => Ok(Duration::from_secs(seconds)),
        _ => Err(Error::Config(format!(
            "{flag} {text:?} is not a number of seconds from 1 to 3600"
        ))),
    }
}

fn resolve(bind: &str, port: u16) -> Result<SocketAddr> {
    let host = bind.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| Error::Config(format!("--bind {bind:?} is not an address to listen on")))
}

fn parse_endpoints(list: &str) -> Result<Vec<String>> {
    let endpoints: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    if endpoints.is_empty() {
        return Err(Error::Config("--etcd lists no endpoint".into()));
    }
    for endpoint in &endpoints {
        let rest = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"));
        let has_host_port = rest.is_some_and(|rest| {
            rest.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.trim_end_matches('/').parse::<u16>().is_ok()
            })
        });
        if !has_host_port {
            return Err(Error::Config(format!(
                "--etcd endpoint {endpoint:?} is not http://host:port or https://host:port"
            )));
        }
    }
    Ok(endpoints)
}

/// A namespace is one or more service-name-like segments separated by `/`.
fn check_namespace(flag: &str, namespace: &str) -> Result<()> {
    let ok = !namespace.is_empty() && namespace.split('/').all(names::is_service_name);
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{flag} {namespace:?} must be non-empty segments of A-Z a-z 0-9 . _ - separated by /"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        match parse(args.iter().map(OsString::from).collect(), lookup)? {
            Invocation::Run(config) => Ok(*config),
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let config = run(&[], &[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(config.etcd_endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(config.ttl, 15);
        assert_eq!(config.drain_grace, Duration::ZERO);
        let drained = run(&["--drain-grace", "2"], &[("HOUND_DRAIN_GRACE", "9")]).unwrap();
        assert_eq!(drained.drain_grace, Duration::from_secs(2), "the flag wins");
        let from_env = run(&[], &[("HOUND_DRAIN_GRACE", "9")]).unwrap();
        assert_eq!(from_env.drain_grace, Duration::from_secs(9));
        assert_eq!(
            (config.namespace.as_str(), config.event_namespace.as_str()),
            ("service", "event")
        );
        assert_eq!(config.election_namespace, "election");
        let env = run(&[], &[("HOUND_ELECTION_NAMESPACE", "leaders")]).unwrap();
        assert_eq!(env.election_namespace, "leaders");
        let flag = run(
            &["--election-namespace=a/b"],
            &[("HOUND_ELECTION_NAMESPACE", "x")],
        );
        assert_eq!(flag.unwrap().election_namespace, "a/b");
        assert_eq!(config.ping_interval, Duration::from_secs(15));
        assert_eq!(config.log_level, LevelFilter::Info);
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn dns_is_off_unless_a_port_is_given() {
        assert_eq!(run(&[], &[]).unwrap().dns, None);
        let dns = run(
            &["--dns-port", "5353"],
            &[("HOUND_DNS_DOMAIN", "SD.Example")],
        )
        .unwrap()
        .dns
        .unwrap();
        assert_eq!((dns.port, dns.domain.as_str()), (5353, "sd.example."));
        let env = run(&[], &[("HOUND_DNS_PORT", "0")]).unwrap().dns.unwrap();
        assert_eq!((env.port, env.domain.as_str()), (0, "hound."));
    }

    #[test]
    fn log_format_comes_from_the_flag_or_the_environment() {
        let json = run(&[], &[("HOUND_LOG_FORMAT", "json")]).unwrap();
        assert_eq!(json.log_format, LogFormat::Json);
        let flag_wins = run(&["--log-format", "TEXT"], &[("HOUND_LOG_FORMAT", "json")]).unwrap();
        assert_eq!(flag_wins.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_win_over_env() {
        let env = [
            ("HOUND_PORT", "81"),
            ("HOUND_TTL", "7"),
            ("HOUND_BIND", "0.0.0.0"),
        ];
        let config = run(&["--port=80"], &env).unwrap();
        assert_eq!(config.listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!(config.ttl, 7);
    }

    #[test]
    fn several_endpoints() {
        let config = run(&["--etcd", "http://a:1, http://b:2"], &[]).unwrap();
        assert_eq!(config.etcd_endpoints, ["http://a:1", "http://b:2"]);
    }

    #[test]
    fn bad_values_are_config_errors() {
        for args in [
            &["--port", "abc"][..],
            &["--port", "70000"],
            &["--ttl", "0"],
            &["--ttl", "x"],
            &["--etcd", "127.0.0.1:2379"],
            &["--etcd", ""],
            &["--etcd-ca", "/nonexistent/ca.pem", "--etcd", "https://a:1"],
            &["--etcd-ca", "Cargo.toml"],
            &["--etcd-cert", "Cargo.toml", "--etcd", "https://a:1"],
            &["--etcd-user", "root"],
            &[
                "--etcd",
                "https://a:1,http://b:2",
                "--etcd-ca",
                "src/config.rs",
            ],
            &["--etcd", "https://a:1"],
            &["--namespace", "a b"],
            &["--namespace", "same", "--event-namespace", "same"],
            &["--namespace", "a", "--event-namespace", "a/b"],
            &["--election-namespace", "service"],
            &["--election-namespace", "event/x"],
            &["--election-namespace", "a//b"],
            &["--log-level", "loud"],
            &["--log-format", "xml"],
            &["--ping-interval", "0"],
            &["--idle-timeout", "x"],
            &["--max-connections", "0"],
            &["--bogus"],
            &["--ttl", "5", "--ttl", "6"],
            &["stray"],
            &["--embedded", "--etcd", "http://a:1"],
            &["--port"],
            &["--dns-port", "x"],
            &["--drain-grace", "-1"],
            &["--drain-grace", "3601"],
            &["--drain-grace", "x"],
            &["--dns-port", "70000"],
            &["--dns-port", "53", "--dns-domain", "a b"],
        ] {
            let err = run(args, &[]).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{args:?} gave {err:?}");
            assert!(!err.to_string().contains('\n'), "{args:?}: one line please");
        }
    }

    #[test]
    fn a_bad_choice_names_the_choices() {
        let level = run(&["--log-level", "loud"], &[]).unwrap_err().to_string();
        assert!(
            level.ends_with(r#"--log-level "loud" is not one of error, warn, info, debug, trace"#)
        );
        let format = run(&[], &[("HOUND_LOG_FORMAT", "xml")])
            .unwrap_err()
            .to_string();
        assert!(format.ends_with(r#"--log-format "xml" is not one of text, json"#));
    }

    #[test]
    fn help_version_routes() {
        let parse_one = |flag: &str| parse(vec![OsString::from(flag)], |_| None).unwrap();
        assert!(matches!(parse_one("-h"), Invocation::Help));
        assert!(matches!(parse_one("--version"), Invocation::Version));
        assert!(matches!(parse_one("-r"), Invocation::Routes));
    }
}
