//! The REST routes, answered inline from the mirror (reads) or through etcd (status, events).

use std::io::Read;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tiny_http::Request;

use crate::context::Context;
use crate::describe::{Status, parse_meta, validate_tag};
use crate::error::{Error, Result};
use crate::etcd::CustomEvent;
use crate::http::query::Query;
use crate::http::route::Route;
use crate::hub::{Audience, Health};
use crate::message::{json_string, nodes_json};
use crate::metrics;
use crate::names::{MAX_MONITORED, Node, validate_service};

/// How long reads made while hound is still starting wait for its first view of etcd.
const STARTUP_GRACE: Duration = Duration::from_secs(2);

/// The dashboard: one self-contained page, no external assets.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Largest body `POST /etcd/event` accepts.
pub const MAX_EVENT_BODY: usize = 64 * 1024;

/// A successful answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: &'static str,
    pub extra_headers: &'static [(&'static str, &'static str)],
}

const JSON: &str = "application/json";

pub fn ok(body: String) -> Result<Reply> {
    Ok(Reply {
        status: 200,
        body,
        content_type: JSON,
        extra_headers: &[],
    })
}

/// Answers a REST route.
pub fn answer(context: &Context, request: &mut Request, route: &Route) -> Result<Reply> {
    match route {
        Route::Healthz => Ok(match context.hub.health_after_start(STARTUP_GRACE) {
            Health::Ok => Reply {
                status: 200,
                body: r#"{"status":"ok"}"#.into(),
                content_type: JSON,
                extra_headers: &[],
            },
            Health::Unavailable(reason) => Reply {
                status: 503,
                body: format!(
                    "{{\"status\":\"unavailable\",\"reason\":{}}}",
                    json_string(&reason)
                ),
                content_type: JSON,
                extra_headers: &[],
            },
        }),
        Route::Version => ok(format!(
            "{{\"app\":\"hound\",\"version\":\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        Route::EtcdVersion => {
            let status = etcd_status(context)?;
            ok(format!("{{\"version\":{}}}", json_string(&status.version)))
        }
        Route::EtcdLeader => {
            let status = etcd_status(context)?;
            ok(format!(
                "{{\"leader\":{},\"member_id\":{}}}",
                status.leader, status.member_id
            ))
        }
        Route::ServiceLeader(service) => {
            validate_service(service)?;
            require_elections(context)?;
            ok(context.hub.leadership(service).json())
        }
        Route::Services => {
            require_mirror(context)?;
            let names: Vec<String> = context
                .hub
                .service_names()
                .iter()
                .map(|name| json_string(name))
                .collect();
            ok(format!("{{\"services\":[{}]}}", names.join(",")))
        }
        Route::ServiceNodes(service) => service_nodes(context, service, &Query::default()),
        Route::Event => {
            let (event, size) = read_event(request)?;
            if let Some(client) = request.remote_addr()
                && let Err(wait) = context.events.spend(client.ip(), size, Instant::now())
            {
                metrics::EVENTS_REFUSED.add(1);
                return Err(Error::TooManyRequests(wait));
            }
            context.store.publish(event)?;
            ok("{}".into())
        }
        Route::Metrics => Ok(Reply {
            status: 200,
            body: metrics::render(context.hub.socket_gauges(), context.hub.node_gauges()),
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            extra_headers: &[],
        }),
        Route::Dashboard => Ok(Reply {
            status: 200,
            body: DASHBOARD.to_owned(),
            content_type: "text/html; charset=utf-8",
            // Another site must not frame the page and trick clicks on its event form.
            extra_headers: &[
                ("X-Frame-Options", "DENY"),
                ("Content-Security-Policy", "frame-ancestors 'none'"),
            ],
        }),
        Route::Register | Route::Monitor => Err(Error::UpgradeRequired),
        // Answered by `http::dispatch` (the stream) and `http::discovery`.
        Route::Watch | Route::PrometheusSd => Err(Error::NotFound(route.label().into())),
    }
}

/// `GET /etcd/services/:service[?tag=T…&meta.KEY=V…&status=S…]`: the service's nodes, all of
/// them from the shared cached JSON, or those the filters admit.
pub fn service_nodes(context: &Context, service: &str, query: &Query) -> Result<Reply> {
    validate_service(service)?;
    let filter = NodeFilter::parse(query)?;
    require_mirror(context)?;
    if filter.admits_all() {
        let membership = context.hub.membership(service);
        return ok(format!("{{\"services\":{}}}", membership.json()));
    }
    let nodes = context
        .hub
        .nodes_by_service(Some(&[service.to_owned()]))
        .pop()
        .map(|(_, nodes)| nodes)
        .unwrap_or_default();
    let admitted: Vec<&Node> = nodes.iter().filter(|node| filter.admits(node)).collect();
    ok(format!("{{\"services\":{}}}", nodes_json(&admitted)))
}

/// The filters of `GET /etcd/services/:service`: every `tag` must be among the node's tags,
/// every `meta.KEY` must equal the node's, and its status must be one of the `status` values
/// (any, when none is given).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NodeFilter {
    tags: Vec<String>,
    meta: Vec<(String, String)>,
    statuses: Vec<Status>,
}

impl NodeFilter {
    /// Reads the filters; a malformed tag, meta key or status is a 400.
    pub fn parse(query: &Query) -> Result<NodeFilter> {
        let mut filter = NodeFilter::default();
        for tag in query.get_all("tag") {
            validate_tag(tag)?;
            filter.tags.push(tag.to_owned());
        }
        filter.meta = parse_meta(query.pairs())?;
        for status in query.get_all("status") {
            filter.statuses.push(Status::parse(status)?);
        }
        Ok(filter)
    }

    fn admits_all(&self) -> bool {
        *self == NodeFilter::default()
    }

    pub fn admits(&self, node: &Node) -> bool {
        self.tags.iter().all(|tag| node.tags().contains(tag))
            && self
                .meta
                .iter()
                .all(|pair| node.meta().iter().any(|own| own == pair))
            && (self.statuses.is_empty() || self.statuses.contains(&node.health()))
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    fn filter(query: &str) -> Result<NodeFilter> {
        NodeFilter::parse(&Query::parse(query)?)
    }

    #[test]
    fn filters_admit_what_matches_every_rule() {
        let mut node = Node::parse_value("10.0.0.1:80").unwrap();
        node.about.tags = vec!["a".into(), "b".into()];
        node.about.meta = vec![("zone".into(), "eu".into())];
        assert!(filter("").unwrap().admits_all());
        for admitted in [
            "tag=a",
            "tag=a&tag=b",
            "meta.zone=eu",
            "status=passing",
            "status=critical&status=passing",
        ] {
            assert!(filter(admitted).unwrap().admits(&node), "{admitted}");
        }
        for refused in [
            "tag=c",
            "tag=a&tag=c",
            "meta.zone=us",
            "meta.rack=1",
            "status=warning",
        ] {
            assert!(!filter(refused).unwrap().admits(&node), "{refused}");
        }
        node.about.status = Some(Status::Draining);
        assert!(filter("status=draining").unwrap().admits(&node));
        for bad in ["tag=", "tag=a%20b", "status=up", "meta.a.b=1"] {
            assert_eq!(filter(bad).unwrap_err().status(), 400, "{bad}");
        }
    }
}

/// Asks etcd for its status, answering 503 at once while hound knows etcd is unreachable
/// rather than tying up a worker until the request times out.
fn etcd_status(context: &Context) -> Result<crate::etcd::ClusterStatus> {
    if let Health::Unavailable(reason) = context.hub.health_after_start(STARTUP_GRACE) {
        return Err(Error::Unavailable(reason));
    }
    context.store.status()
}

/// Reads of the mirror answer from memory, but only once it has been filled from etcd (waiting
/// a little for that while hound starts).
pub fn require_mirror(context: &Context) -> Result<()> {
    if !context.hub.wait_for_revision(1, STARTUP_GRACE) {
        return Err(Error::Unavailable(
            "the service namespace has not been read yet".into(),
        ));
    }
    Ok(())
}

/// The elections answer from memory too, once they have been read from etcd.
fn require_elections(context: &Context) -> Result<()> {
    if !context.hub.wait_for_election_revision(1, STARTUP_GRACE) {
        return Err(Error::Unavailable(
            "the election namespace has not been read yet".into(),
        ));
    }
    Ok(())
}

/// The body of `POST /etcd/event`.
#[derive(Debug, Deserialize)]
struct EventRequest {
    event_type: Option<String>,
    #[serde(default)]
    event_body: Option<String>,
    #[serde(default)]
    services: Option<Vec<String>>,
    #[serde(default)]
    broadcast: Option<bool>,
}

/// Reads an event, checking its content type (415), size (413) and shape (400) in that order;
/// returns it with its body's size.
fn read_event(request: &mut Request) -> Result<(CustomEvent, usize)> {
    let is_json = request.headers().iter().any(|header| {
        header.field.equiv("Content-Type")
            && header
                .value
                .as_str()
                .split(';')
                .next()
                .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
    });
    if !is_json {
        return Err(Error::UnsupportedMediaType);
    }
    if request
        .body_length()
        .is_some_and(|length| length > MAX_EVENT_BODY)
    {
        return Err(Error::PayloadTooLarge(MAX_EVENT_BODY));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_EVENT_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|err| Error::BadRequest(format!("could not read the body: {err}")))?;
    if body.len() > MAX_EVENT_BODY {
        return Err(Error::PayloadTooLarge(MAX_EVENT_BODY));
    }
    parse_event(&body).map(|event| (event, body.len()))
}

/// Validates an event body.
pub fn parse_event(body: &[u8]) -> Result<CustomEvent> {
    let bad = |err: serde_json::Error| {
        Error::BadRequest(format!("body is not a JSON event object: {err}"))
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
    if !value.is_object() {
        return Err(Error::BadRequest("body must be a JSON object".into()));
    }
    let request: EventRequest = serde_json::from_value(value).map_err(bad)?;
    let event_type = match request.event_type {
        Some(event_type) if !event_type.is_empty() => event_type,
        _ => {
            return Err(Error::BadRequest(
                "event_type is required and must not be empty".into(),
            ));
        }
    };
    let mut services = request.services.unwrap_or_default();
    for service in &services {
        validate_service(service)?;
    }
    services.sort();
    services.dedup();
    // A `*` socket receives one message per service named: an event naming thousands could
    // fill a socket's queue at once, however fast it reads.
    if services.len() > MAX_MONITORED {
        return Err(Error::BadRequest(format!(
            "services lists more than {MAX_MONITORED} services"
        )));
    }
    let audience = if request.broadcast == Some(true) {
        Audience::Everyone
    } else if services.is_empty() {
        return Err(Error::BadRequest(
            "give a non-empty services list or broadcast: true".into(),
        ));
    } else {
        Audience::Services(services)
    };
    Ok(CustomEvent {
        event_type,
        event_body: request.event_body.unwrap_or_default(),
        audience,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(body: &str) -> u16 {
        match parse_event(body.as_bytes()) {
            Ok(_) => 200,
            Err(err) => err.status(),
        }
    }

    #[test]
    fn an_event_names_at_most_64_services() {
        let names = |n: usize| (0..n).map(|i| format!("\"s{i}\"")).collect::<Vec<_>>();
        let body = |n| {
            format!(
                r#"{{"event_type":"t","services":[{}]}}"#,
                names(n).join(",")
            )
        };
        assert_eq!(status_of(&body(MAX_MONITORED)), 200);
        assert_eq!(status_of(&body(MAX_MONITORED + 1)), 400);
        let repeated = format!(
            r#"{{"event_type":"t","services":[{}]}}"#,
            vec!["\"a\""; 500].join(",")
        );
        assert_eq!(status_of(&repeated), 200, "duplicates count once");
    }

    #[test]
    fn valid_events() {
        let event =
            parse_event(br#"{"event_type":"t","event_body":"b","services":["a","a"]}"#).unwrap();
        assert!(matches!(event.audience, Audience::Services(ref s) if s == &["a"]));
        assert_eq!(event.event_body, "b");
        let event = parse_event(br#"{"event_type":"t","broadcast":true}"#).unwrap();
        assert!(matches!(event.audience, Audience::Everyone));
        assert_eq!(event.event_body, "");
    }

    #[test]
    fn invalid_events_are_400() {
        for body in [
            "",
            "nope",
            "[]",
            r#"{"event_body":"b","broadcast":true}"#,
            r#"{"event_type":"","broadcast":true}"#,
            r#"{"event_type":"t"}"#,
            r#"{"event_type":"t","services":[]}"#,
            r#"{"event_type":"t","broadcast":false}"#,
            r#"{"event_type":"t","services":["a/b"]}"#,
            r#"{"event_type":"t","services":"a"}"#,
            r#"{"event_type":1,"broadcast":true}"#,
            r#"{"event_type":"t","broadcast":"yes"}"#,
            r#"["t",null,["a"],false]"#,
        ] {
            assert_eq!(status_of(body), 400, "{body}");
        }
    }
}
