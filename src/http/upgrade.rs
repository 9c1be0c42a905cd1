//! Validation of a WebSocket upgrade before any handshake: parameters (400), the Upgrade header
//! (426) and the WebSocket key and version (400).

use tiny_http::Request;
use tungstenite::handshake::derive_accept_key;

use crate::error::{Error, Result};
use crate::http::query::Query;
use crate::http::route::Route;
use crate::names::{Host, Node, parse_monitor_list, parse_port, validate_service};
use crate::session::SocketPlan;

/// Validates an upgrade request for the register or monitor route.
pub fn plan(request: &Request, route: &Route, query: &Query) -> Result<SocketPlan> {
    let header = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_owned())
    };
    let (registration, services) = parameters(route, query)?;
    let upgrade = header("Upgrade").unwrap_or_default();
    if !upgrade
        .split(',')
        .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
    {
        return Err(Error::UpgradeRequired);
    }
    let key = header("Sec-WebSocket-Key")
        .ok_or_else(|| Error::BadRequest("Sec-WebSocket-Key header is missing".into()))?;
    if header("Sec-WebSocket-Version").as_deref().map(str::trim) != Some("13") {
        return Err(Error::BadRequest("Sec-WebSocket-Version must be 13".into()));
    }
    Ok(SocketPlan {
        registration,
        services,
        accept_key: derive_accept_key(key.trim().as_bytes()),
        route: route.label(),
    })
}

type Parameters = (Option<(String, Node)>, Vec<String>);

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
            Ok((Some((service.to_owned(), Node { host, port })), services))
        }
        Route::Monitor => {
            let services = parse_monitor_list(query.require("monitor")?)?;
            if services.is_empty() {
                return Err(Error::BadRequest("monitor names no service".into()));
            }
            Ok((None, services))
        }
        _ => Err(Error::NotFound("not a WebSocket route".into())),
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
        let (registration, services) = params(
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
