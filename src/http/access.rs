//! Access rules: answer only to hound's own host names, refuse cross-site browser requests,
//! and require the token if one is set.

use tiny_http::Request;

use crate::error::{Error, Result};
use crate::http::query::Query;
use crate::http::route::Route;

/// Who may call hound.
#[derive(Clone, Default)]
pub struct Access {
    /// Required as `Authorization: Bearer …` (or `?token=` on WebSocket routes), if set.
    pub token: Option<String>,
    /// Origins allowed besides the request's own host, normalised (see [`normalise_origin`]).
    pub allowed_origins: Vec<String>,
    /// Names hound answers to besides IP addresses and localhost.
    pub allowed_hosts: AllowedHosts,
}

/// The host names in `Host` that hound answers to besides IP addresses, `localhost` and
/// `*.localhost` (`--allow-host`). A browser page on any other name may be a DNS-rebinding
/// attack: the attacker's name resolving to hound's address, which lets the page read hound's
/// answers as its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowedHosts {
    /// These names, lower case, without ports.
    #[default]
    None,
    Names(Vec<String>),
    /// `*`: any name (the check is off, as behind a proxy that checks names itself).
    Any,
}

impl AllowedHosts {
    /// Parses `--allow-host`: comma-separated names, or `*`.
    pub fn parse(list: &str) -> Result<AllowedHosts> {
        let names: Vec<String> = list
            .split(',')
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        if names.iter().any(|name| name == "*") {
            return Ok(AllowedHosts::Any);
        }
        if let Some(bad) = names.iter().find(|name| {
            !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }) {
            return Err(Error::Config(format!(
                "--allow-host {bad:?} is not a host name (give names without ports, or *)"
            )));
        }
        Ok(if names.is_empty() {
            AllowedHosts::None
        } else {
            AllowedHosts::Names(names)
        })
    }

    /// Whether hound answers to `host` (a `Host` header's value).
    fn admit(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        let loopback_name = name == "localhost" || name.ends_with(".localhost");
        match self {
            AllowedHosts::Any => true,
            _ if loopback_name || name.parse::<std::net::IpAddr>().is_ok() => true,
            AllowedHosts::Names(names) => names.contains(&name),
            AllowedHosts::None => false,
        }
    }
}

impl std::fmt::Debug for Access {
    // The token never appears in debug output or logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

impl Access {
    /// Checks a routed request: 403 for a `Host` that is not one of hound's names (but on
    /// `/healthz`), 401 without the token, 403 for a foreign `Origin` on a WebSocket upgrade or
    /// a POST.
    pub fn check(&self, request: &Request, route: &Route, query: &Query) -> Result<()> {
        // Without a Host header the client is no browser, and no rebinding page.
        if let Some(host) = header(request, "Host")
            && !matches!(route, Route::Healthz)
            && !self.allowed_hosts.admit(host)
        {
            return Err(Error::Forbidden(format!(
                "host {host:?} is not one of hound's names; allow it with --allow-host"
            )));
        }
        if let Some(token) = &self.token
            && !matches!(route, Route::Healthz | Route::Version)
        {
            let bearer = header(request, "Authorization").and_then(|value| {
                let (scheme, credentials) = value.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| credentials.trim().to_owned())
            });
            let from_query = match route {
                // Browsers cannot set headers on WebSockets or page loads.
                Route::Register | Route::Monitor | Route::Watch | Route::Dashboard => {
                    query.get("token").map(str::to_owned)
                }
                _ => None,
            };
            let presented = [bearer, from_query];
            if !presented
                .iter()
                .flatten()
                .any(|given| same_secret(given.as_bytes(), token.as_bytes()))
            {
                return Err(Error::Unauthorized);
            }
        }
        if matches!(
            route,
            Route::Register | Route::Monitor | Route::Watch | Route::Event
        ) && let Some(origin) = header(request, "Origin")
        {
            let own_host = header(request, "Host").unwrap_or_default();
            let origin = normalise_origin(origin);
            // Same origin counts only when the page reached hound by IP address or as
            // localhost: a page on a DNS name could be a rebinding attack, where the
            // attacker's name resolves to hound and Origin and Host agree. Names go in
            // --allow-origin.
            let same_site = addressed_directly(own_host)
                && authority_of(&origin).is_some_and(|authority| {
                    with_default_port(&authority, 80)
                        == with_default_port(&own_host.to_ascii_lowercase(), 80)
                });
            if !same_site && !self.allowed_origins.contains(&origin) {
                return Err(Error::Forbidden(format!(
                    "cross-site request from origin {origin:?} refused; allow it with --allow-origin"
                )));
            }
        }
        Ok(())
    }
}

fn header<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// The name or address in a `Host` header, without its port and an IPv6 literal's brackets.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() && !name.ends_with(':') => name,
        _ => host,
    };
    name.trim_start_matches('[').trim_end_matches(']')
}

/// Whether a `Host` header names an IP address or `localhost`, not a DNS name.
fn addressed_directly(host: &str) -> bool {
    let name = host_name(host);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let differences = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    differences == 0 && given.len() == expected.len()
}

/// `scheme://host[:port]` in lower case without a trailing slash.
pub fn normalise_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `host:port` of a normalised origin, with the scheme's default port made explicit.
fn authority_of(origin: &str) -> Option<String> {
    let (scheme, authority) = origin.split_once("://")?;
    let default = match scheme {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => return None,
    };
    Some(with_default_port(authority, default))
}

/// `authority` with `:port` appended when it has none (IPv6 literals are bracketed).
fn with_default_port(authority: &str, default: u16) -> String {
    let has_port = match authority.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }

    #[test]
    fn only_addresses_and_localhost_count_as_direct() {
        for host in [
            "127.0.0.1:3000",
            "localhost:3000",
            "LOCALHOST",
            "[::1]:3000",
            "10.0.0.1",
        ] {
            assert!(addressed_directly(host), "{host}");
        }
        for host in [
            "evil.example:3000",
            "evil.example",
            "",
            "127.0.0.1.evil.example",
        ] {
            assert!(!addressed_directly(host), "{host}");
        }
    }

    #[test]
    fn hound_answers_to_addresses_localhost_and_allowed_names_only() {
        let none = AllowedHosts::default();
        for host in [
            "127.0.0.1:3000",
            "10.0.0.7",
            "[::1]:3000",
            "[fe80::1]",
            "localhost:3000",
            "api.localhost",
            "LOCALHOST",
        ] {
            assert!(none.admit(host), "{host}");
        }
        for host in [
            "attacker.example:3000",
            "attacker.example",
            "",
            "localhost.evil",
        ] {
            assert!(!none.admit(host), "{host}");
        }
        let named = AllowedHosts::parse(" Hound.internal ,sidecar").unwrap();
        assert!(named.admit("hound.internal:80"));
        assert!(named.admit("SIDECAR"));
        assert!(!named.admit("attacker.example"));
        assert!(
            AllowedHosts::parse("a,*")
                .unwrap()
                .admit("attacker.example")
        );
        assert_eq!(AllowedHosts::parse(" , ").unwrap(), AllowedHosts::None);
        assert!(AllowedHosts::parse("hound:80").is_err());
        assert!(AllowedHosts::parse("http://hound").is_err());
    }

    #[test]
    fn origins_get_their_default_ports() {
        assert_eq!(authority_of("http://a.example").unwrap(), "a.example:80");
        assert_eq!(authority_of("https://a.example").unwrap(), "a.example:443");
        assert_eq!(
            authority_of("http://a.example:3000").unwrap(),
            "a.example:3000"
        );
        assert_eq!(authority_of("http://[::1]").unwrap(), "[::1]:80");
        assert_eq!(authority_of("http://[::1]:8").unwrap(), "[::1]:8");
        assert!(authority_of("null").is_none());
        assert!(authority_of("file://x").is_none());
        assert_eq!(normalise_origin(" HTTP://A.example/ "), "http://a.example");
    }
}
