//! Routing: a pure function from method and path to a [`Route`], and the route table `--routes`
//! prints.

use crate::error::{Error, Result};
use crate::http::query::percent_decode;

/// Every route hound serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Version,
    EtcdVersion,
    EtcdLeader,
    /// `GET /etcd/leader/:service`: who leads the service's election.
    ServiceLeader(String),
    Services,
    ServiceNodes(String),
    Event,
    Register,
    Monitor,
    /// `GET /etcd/watch`: a monitor socket's messages as server-sent events.
    Watch,
    /// `GET /v1/sd/prometheus`: Prometheus HTTP service discovery.
    PrometheusSd,
    Metrics,
    Dashboard,
}

impl Route {
    /// The route's pattern, as `--routes` lists it and metrics label it.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Version => "/version",
            Route::EtcdVersion => "/etcd/version",
            Route::EtcdLeader => "/etcd/leader",
            Route::ServiceLeader(_) => "/etcd/leader/:service",
            Route::Services => "/etcd/services",
            Route::ServiceNodes(_) => "/etcd/services/:service",
            Route::Event => "/etcd/event",
            Route::Register => "/etcd/register",
            Route::Monitor => "/etcd/monitor",
            Route::Watch => "/etcd/watch",
            Route::PrometheusSd => "/v1/sd/prometheus",
            Route::Metrics => "/metrics",
            Route::Dashboard => "/",
        }
    }
}

/// The metrics label of requests that matched no route.
pub const UNROUTED: &str = "unrouted";

/// `(method, path, meaning)` for `hound --routes` and the docs.
pub const ROUTES: &[(&str, &str, &str)] = &[
    (
        "GET",
        "/healthz",
        "200 while etcd answers and the watches run, else 503 with the reason",
    ),
    ("GET", "/version", "hound's name and version"),
    ("GET", "/etcd/version", "the etcd server's version"),
    (
        "GET",
        "/etcd/leader",
        "the leader etcd believes in, and the member hound talks to",
    ),
    (
        "GET",
        "/etcd/leader/:service",
        "who leads the service's election (campaign=1), and its fencing rev",
    ),
    (
        "GET",
        "/etcd/services",
        "the services with at least one node, sorted",
    ),
    (
        "GET",
        "/etcd/services/:service",
        "the nodes of one service, sorted by (ip, port)",
    ),
    (
        "POST",
        "/etcd/event",
        "emit a custom event to some services or to all (JSON body)",
    ),
    (
        "WS",
        "/etcd/register",
        "?service=&ip=&port=[&monitor=][&campaign=1] register a node while the socket lives; \
         get events",
    ),
    (
        "WS",
        "/etcd/monitor",
        "?monitor=A,B get the events of the monitored services",
    ),
    (
        "GET",
        "/etcd/watch",
        "?monitor=A,B the events of the monitored services as server-sent events",
    ),
    (
        "GET",
        "/v1/sd/prometheus",
        "[?service=A,B] healthy nodes as Prometheus HTTP service discovery targets",
    ),
    (
        "GET",
        "/metrics",
        "counters and gauges in the Prometheus text format",
    ),
    (
        "GET",
        "/",
        "a live dashboard of services, nodes and events (HTML)",
    ),
];

/// The route table as `hound --routes` prints it.
pub fn describe_routes() -> String {
    ROUTES
        .iter()
        .map(|(method, path, meaning)| format!("{method:<5}{path:<25}{meaning}\n"))
        .collect()
}

/// Finds the route for `method` and `path` (the URL without its query): 404 for an unknown
/// path, 405 for a known path with the wrong method.
pub fn route(method: &str, path: &str) -> Result<Route> {
    let (route, allowed) = match path {
        "/healthz" => (Route::Healthz, "GET"),
        "/version" => (Route::Version, "GET"),
        "/etcd/version" => (Route::EtcdVersion, "GET"),
        "/etcd/leader" => (Route::EtcdLeader, "GET"),
        "/etcd/services" => (Route::Services, "GET"),
        "/etcd/event" => (Route::Event, "POST"),
        "/etcd/register" => (Route::Register, "GET"),
        "/etcd/monitor" => (Route::Monitor, "GET"),
        "/etcd/watch" => (Route::Watch, "GET"),
        "/v1/sd/prometheus" => (Route::PrometheusSd, "GET"),
        "/metrics" => (Route::Metrics, "GET"),
        "/" => (Route::Dashboard, "GET"),
        _ => {
            let decode = |service: &str| {
                percent_decode(service)
                    .ok_or_else(|| Error::BadRequest("service name is not valid UTF-8".into()))
            };
            if let Some(service) = path.strip_prefix("/etcd/services/")
                && !service.contains('/')
            {
                (Route::ServiceNodes(decode(service)?), "GET")
            } else if let Some(service) = path.strip_prefix("/etcd/leader/")
                && !service.contains('/')
            {
                (Route::ServiceLeader(decode(service)?), "GET")
            } else {
                return Err(Error::NotFound(path.to_owned()));
            }
        }
    };
    if method == allowed || (allowed == "GET" && method == "HEAD") {
        Ok(route)
    } else {
        Err(Error::MethodNotAllowed(allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_routes() {
        assert_eq!(route("GET", "/healthz").unwrap(), Route::Healthz);
        assert_eq!(route("GET", "/etcd/services").unwrap(), Route::Services);
        assert_eq!(
            route("GET", "/etcd/services/api").unwrap(),
            Route::ServiceNodes("api".into())
        );
        assert_eq!(
            route("GET", "/etcd/services/a%20b").unwrap(),
            Route::ServiceNodes("a b".into())
        );
        assert_eq!(
            route("GET", "/etcd/leader/api").unwrap(),
            Route::ServiceLeader("api".into())
        );
        assert_eq!(route("POST", "/etcd/event").unwrap(), Route::Event);
        assert_eq!(route("GET", "/etcd/register").unwrap(), Route::Register);
        assert_eq!(route("GET", "/etcd/monitor").unwrap(), Route::Monitor);
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405() {
        assert_eq!(route("GET", "/nope").unwrap_err().status(), 404);
        assert_eq!(
            route("GET", "/etcd/services/a/b").unwrap_err().status(),
            404
        );
        assert_eq!(route("POST", "/healthz").unwrap_err().status(), 405);
        assert_eq!(route("GET", "/etcd/event").unwrap_err().status(), 405);
        assert_eq!(
            route("DELETE", "/etcd/services/x").unwrap_err().status(),
            405
        );
    }

    #[test]
    fn labels_match_the_table() {
        for (method, path, _) in ROUTES {
            let concrete = path.replace(":service", "api");
            let method = if *method == "WS" { "GET" } else { method };
            assert_eq!(route(method, &concrete).unwrap().label(), *path);
        }
    }

    #[test]
    fn every_route_is_listed() {
        let listing = describe_routes();
        for (_, path, _) in ROUTES {
            assert!(listing.contains(path));
        }
        assert_eq!(listing.lines().count(), 14);
    }
}
