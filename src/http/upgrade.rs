//! Validation of a WebSocket upgrade before any handshake: parameters (400), the Upgrade header
//! (426) and the WebSocket key and version (400); and of an event stream request: parameters
//! (400) and the Accept header (406).

use tiny_http::Request;
use tungstenite::handshake::derive_accept_key;

use crate::check::{CheckSpec, NOT_CHECKED_YET};
use crate::describe::{Description, Status, parse_meta, parse_tags, parse_weight};
use crate::error::{Error, Result};
use crate::http::query::Query;
use crate::http::route::Route;
use crate::names::{Host, Node, parse_monitor_list, parse_port, validate_service};
use crate::session::{Protocol, SocketPlan};

/// Validates an upgrade request for the register or monitor route.
pub fn plan(request: &Request, route: &Route, query: &Query) -> Result<SocketPlan> {
    let header = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_owned())
    };
    let (registration, services, check) = parameters(route, query)?;
    let campaign = campaign(route, query)?;
    let upgrade = header("Upgrade").unwrap_or_default();
    if !upgrade
        .split(',')
        .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
    {
        return Err(Error::UpgradeRequired);
    }
    // Checked before anything is registered: without it tiny_http cannot hand the connection
    // over, and a registration would take over a live socket only to fail.
    let connection_upgrade = request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("Connection"))
        .flat_map(|h| h.value.as_str().split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return Err(Error::UpgradeRequired);
    }
    let key = header("Sec-WebSocket-Key")
        .ok_or_else(|| Error::BadRequest("Sec-WebSocket-Key header is missing".into()))?;
    if header("Sec-WebSocket-Version").as_deref().map(str::trim) != Some("13") {
        return Err(Error::BadRequest("Sec-WebSocket-Version must be 13".into()));
    }
    Ok(SocketPlan {
        registration,
        campaign,
        services,
        check,
        protocol: Protocol::WebSocket {
            accept_key: derive_accept_key(key.trim().as_bytes()),
        },
        route: route.label(),
    })
}

/// Validates a request for the event stream route (`/etcd/watch`).
pub fn event_stream_plan(request: &Request, route: &Route, query: &Query) -> Result<SocketPlan> {
    // A HEAD would get the head and then the stream: only GET opens one.
    if request.method() != &tiny_http::Method::Get {
        return Err(Error::MethodNotAllowed("GET"));
    }
    let (registration, services, check) = parameters(route, query)?;
    let accept = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Accept"))
        .map(|h| h.value.as_str());
    if !accept.is_none_or(accepts_event_stream) {
        return Err(Error::NotAcceptable(
            "this route answers text/event-stream; send Accept: text/event-stream".into(),
        ));
    }
    Ok(SocketPlan {
        registration,
        campaign: false,
        services,
        check,
        protocol: Protocol::EventStream,
        route: route.label(),
    })
}

/// Whether an `Accept` header admits `text/event-stream` (itself, `text/*` or `*/*`, not
/// with `q=0`).
fn accepts_event_stream(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let refused = parts.any(|param| {
            param
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !refused && matches!(media.as_str(), "text/event-stream" | "text/*" | "*/*")
    })
}

/// The node to register (with its check, if any) and the services the socket hears about.
type Parameters = (Option<(String, Node)>, Vec<String>, Option<CheckSpec>);

/// Checks the query parameters of the register and monitor routes.
pub fn parameters(route: &Route, query: &Query) -> Result<Parameters> {
    match route {
        Route::Register => {
            let service = query.require("service")?;
            validate_service(service)?;
            let host = Host::parse(query.require("ip")?)?;
            let port = parse_port(query.require("port")?)?;
            let mut services = vec![service.to_owned()];
            for monitored in parse_monitor_list(query.get("monitor").unwrap_or(""))? {
                if !services.contains(&monitored) {
                    services.push(monitored);
                }
            }
            let about = description(query)?;
            let mut node = Node { host, port, about };
            let check = CheckSpec::parse(query, &node)?;
            if check.is_some() {
                // A checked node starts critical; its first good check makes it passing.
                node.about.status = Some(Status::Critical);
                node.about.note = Some(NOT_CHECKED_YET.to_owned());
            }
            Ok((Some((service.to_owned(), node)), services, check))
        }
        Route::Monitor | Route::Watch => {
            let services = parse_monitor_list(query.require("monitor")?)?;
            if services.is_empty() {
                return Err(Error::BadRequest("monitor names no service".into()));
            }
            Ok((None, services, None))
        }
        _ => Err(Error::NotFound("not a WebSocket route".into())),
    }
}

/// What a registration says about its node: `tags`, `weight` and `meta.KEY` (all optional).
fn description(query: &Query) -> Result<Description> {
    let mut about = Description::default();
    if let Some(tags) = query.get("tags") {
        about.tags = parse_tags(tags)?;
    }
    if let Some(weight) = query.get("weight") {
        about.weight = parse_weight(weight)?;
    }
    about.meta = parse_meta(query.pairs())?;
    Ok(about)
}

/// `campaign=1` on the register route: the node campaigns for leadership of its service
/// (`campaign=0`, or none, does not). Any other value, or the parameter on another route, is
/// a 400.
fn campaign(route: &Route, query: &Query) -> Result<bool> {
    match (route, query.get("campaign")) {
        (_, None) => Ok(false),
        (Route::Register, Some("1")) => Ok(true),
        (Route::Register, Some("0")) => Ok(false),
        (Route::Register, Some(other)) => Err(Error::BadRequest(format!(
            "campaign must be 1 or 0, not {other:?}"
        ))),
        (_, Some(_)) => Err(Error::BadRequest(
            "campaign is a parameter of /etcd/register only".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(route: Route, query: &str) -> Result<Parameters> {
        parameters(&route, &Query::parse(query)?)
    }

    #[test]
    fn register_parameters() {
        let (registration, services, check) = params(
            Route::Register,
            "service=api&ip=::1&port=8080&monitor=db,api",
        )
        .unwrap();
        let (service, node) = registration.unwrap();
        assert_eq!(
            (service.as_str(), node.to_string().as_str()),
            ("api", "[::1]:8080")
        );
        assert_eq!(services, ["api", "db"]);
        assert_eq!(check, None);
    }

    #[test]
    fn bad_register_parameters_are_400() {
        for query in [
            "ip=1.2.3.4&port=1",
            "service=api&port=1",
            "service=api&ip=1.2.3.4",
            "service=a/b&ip=1.2.3.4&port=1",
            "service=a%20b&ip=1.2.3.4&port=1",
            "service=api&ip=1.2.3.4.5&port=1",
            "service=api&ip=1.2.3.4&port=0",
            "service=api&ip=1.2.3.4&port=65536",
            "service=api&ip=1.2.3.4&port=x",
            "service=api&ip=1.2.3.4&port=1&monitor=a/b",
        ] {
            let err = params(Route::Register, query).unwrap_err();
            assert_eq!(err.status(), 400, "{query}");
        }
    }

    #[test]
    fn campaign_is_1_or_0_on_register_only() {
        let query = |text| Query::parse(text).unwrap();
        assert!(campaign(&Route::Register, &query("campaign=1")).unwrap());
        assert!(!campaign(&Route::Register, &query("campaign=0")).unwrap());
        assert!(!campaign(&Route::Register, &query("service=a")).unwrap());
        for (route, text) in [
            (Route::Register, "campaign=yes"),
            (Route::Register, "campaign="),
            (Route::Register, "campaign=2"),
            (Route::Monitor, "monitor=a&campaign=1"),
        ] {
            let err = campaign(&route, &query(text)).unwrap_err();
            assert_eq!(err.status(), 400, "{text}");
        }
    }

    #[test]
    fn event_streams_need_an_accept_that_admits_them() {
        for accept in [
            "text/event-stream",
            "*/*",
            "text/html, text/*;q=0.5",
            "TEXT/EVENT-STREAM",
        ] {
            assert!(accepts_event_stream(accept), "{accept}");
        }
        for accept in ["application/json", "text/event-stream;q=0", "text/html"] {
            assert!(!accepts_event_stream(accept), "{accept}");
        }
        assert_eq!(params(Route::Watch, "monitor=a").unwrap().1, ["a"]);
        assert_eq!(params(Route::Watch, "").unwrap_err().status(), 400);
    }

    #[test]
    fn monitor_requires_names() {
        assert_eq!(params(Route::Monitor, "monitor=a,b").unwrap().1, ["a", "b"]);
        for query in ["", "monitor=", "monitor=,", "monitor=a%2Fb"] {
            assert_eq!(
                params(Route::Monitor, query).unwrap_err().status(),
                400,
                "{query}"
            );
        }
    }
}
