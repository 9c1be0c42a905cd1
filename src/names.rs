//! Validation of the names and addresses clients hand us: service names, hosts, ports, node values.

use std::fmt;
use std::net::IpAddr;

use crate::describe::{Description, Status};
use crate::error::{Error, Result};

/// The longest service name accepted.
pub const MAX_SERVICE_NAME: usize = 128;
/// The most services one socket may monitor.
pub const MAX_MONITORED: usize = 64;
/// The longest DNS host name accepted (RFC 1123).
const MAX_HOST_NAME: usize = 253;

/// Checks a service name: 1–128 characters of `A-Z a-z 0-9 . _ -`.
pub fn validate_service(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::BadRequest("service name is empty".into()));
    }
    if name.len() > MAX_SERVICE_NAME {
        return Err(Error::BadRequest(format!(
            "service name is longer than {MAX_SERVICE_NAME} characters"
        )));
    }
    if !name.bytes().all(is_service_byte) {
        return Err(Error::BadRequest(format!(
            "service name {name:?} may only contain A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

/// Whether `name` is a valid service name; used where bad names are skipped, not refused.
pub fn is_service_name(name: &str) -> bool {
    validate_service(name).is_ok()
}

fn is_service_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')
}

/// The `monitor` item that subscribes a socket to every service, present and future.
pub const EVERY_SERVICE: &str = "*";

/// Parses the `monitor` list: comma-separated names (or `*` for every service), empty items
/// ignored, duplicates dropped, at most [`MAX_MONITORED`] names.
pub fn parse_monitor_list(list: &str) -> Result<Vec<String>> {
    let items = list.split(',').map(str::trim);
    parse_distinct(items, MAX_MONITORED, "monitor", "services", |item| {
        if item == EVERY_SERVICE {
            Ok(())
        } else {
            validate_service(item)
        }
    })
}

/// The items of a list parameter that are not empty, each validated, duplicates dropped (the
/// first kept), at most `max` of them: else 400 naming the `param` and its `items`.
pub fn parse_distinct<'a>(
    items: impl Iterator<Item = &'a str>,
    max: usize,
    param: &str,
    what: &str,
    validate: impl Fn(&str) -> Result<()>,
) -> Result<Vec<String>> {
    let mut kept: Vec<String> = Vec::new();
    for item in items.filter(|item| !item.is_empty()) {
        validate(item)?;
        if !kept.iter().any(|known| known == item) {
            kept.push(item.to_owned());
        }
    }
    if kept.len() > max {
        return Err(Error::BadRequest(format!(
            "{param} lists more than {max} {what}"
        )));
    }
    Ok(kept)
}

/// Parses a port: an integer 1–65535, written in decimal digits only (no sign).
pub fn parse_port(text: &str) -> Result<u16> {
    parse_u16_from_1(text, "port")
}

/// Parses an integer 1–65535 written in decimal digits only (no sign): a port, a weight; else
/// 400 naming `what`.
pub fn parse_u16_from_1(text: &str, what: &str) -> Result<u16> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u16>() {
        Ok(value) if value != 0 && digits_only => Ok(value),
        _ => Err(Error::BadRequest(format!(
            "{what} {text:?} is not an integer from 1 to 65535"
        ))),
    }
}

/// A host a node is reachable at: an IP literal or a DNS host name, held in canonical form
/// (IP literals as the standard library prints them, host names in lower case without a
/// trailing dot). Hosts order numerically: IPv4 addresses, then IPv6, then names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Host(String);

impl Host {
    fn sort_key(&self) -> (u8, u128, &str) {
        match self.0.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => (0, u32::from(ip).into(), ""),
            Ok(IpAddr::V6(ip)) => (1, u128::from(ip), ""),
            Err(_) => (2, 0, &self.0),
        }
    }
}

impl Ord for Host {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl PartialOrd for Host {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Host {
    /// Parses an IPv4 or IPv6 literal (brackets allowed around IPv6) or an RFC 1123 host name.
    pub fn parse(text: &str) -> Result<Host> {
        let unbracketed = text
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'));
        if let Some(inner) = unbracketed {
            return match inner.parse::<std::net::Ipv6Addr>() {
                Ok(ip) => Ok(Host(ip.to_string())),
                Err(_) => Err(bad_host(text)),
            };
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Host(ip.to_string()));
        }
        if is_host_name(text) {
            let name = text.strip_suffix('.').unwrap_or(text);
            return Ok(Host(name.to_ascii_lowercase()));
        }
        Err(bad_host(text))
    }

    /// The host as clients see it in messages: IPv6 without brackets.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_ipv6(&self) -> bool {
        self.0.contains(':')
    }
}

fn bad_host(text: &str) -> Error {
    Error::BadRequest(format!(
        "ip {text:?} is neither an IP address nor a DNS host name"
    ))
}

/// RFC 1123 host name: dot-separated labels of 1–63 letters, digits and inner hyphens.
/// A name made only of digits and dots is refused, so `999.1.1.1` is not taken as a host name.
fn is_host_name(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > MAX_HOST_NAME {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    labels_ok && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// One member of a service: where it can be reached, and what it says about itself. Ordered by
/// (ip, port) as the contract sorts (then by description, so the order is total).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Node {
    pub host: Host,
    pub port: u16,
    /// Tags, weight, meta and status; the default for a 1.0 node.
    pub about: Description,
}

impl Node {
    /// A node at `host:port` that says nothing about itself.
    pub fn at(host: Host, port: u16) -> Node {
        Node {
            host,
            port,
            about: Description::default(),
        }
    }

    /// Whether `other` is at the same address (whatever either says about itself).
    pub fn same_address(&self, other: &Node) -> bool {
        self.host == other.host && self.port == other.port
    }

    /// Parses an address `host:port`, split at the last `:`, brackets stripped: the 1.0
    /// registration value, and the `Addr` of a 2.0 one (`value.rs` reads both).
    /// Returns `None` for anything else: such keys are skipped, never fatal.
    pub fn parse_value(value: &str) -> Option<Node> {
        let (host, port) = value.rsplit_once(':')?;
        let port = parse_port(port).ok()?;
        // An unbracketed IPv6 value such as `::1:80` would split inside the address; only the
        // bracketed form is unambiguous, so require it for IPv6.
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => match inner.parse::<std::net::Ipv6Addr>() {
                Ok(ip) => Host(ip.to_string()),
                Err(_) => return None,
            },
            None if host.contains(':') => return None,
            None => Host::parse(host).ok()?,
        };
        Some(Node::at(host, port))
    }
}

impl Node {
    /// Whether discovery answers (DNS, Prometheus service discovery) include this node: the one
    /// place health filters them. Healthy is passing or warning; a node without a status is
    /// passing.
    pub fn is_healthy(&self) -> bool {
        self.about.effective_status().is_healthy()
    }

    /// The node's status as discovery reports it; see [`Node::is_healthy`].
    pub fn status(&self) -> &'static str {
        self.about.effective_status().as_str()
    }

    /// The node's status as a value.
    pub fn health(&self) -> Status {
        self.about.effective_status()
    }

    /// The node's tags, in the order it gave them.
    pub fn tags(&self) -> &[String] {
        &self.about.tags
    }

    /// The node's `meta.KEY=VALUE` pairs, sorted by key.
    pub fn meta(&self) -> &[(String, String)] {
        &self.about.meta
    }

    /// The node's SRV weight; 1 (the contract's default) unless it set one.
    pub fn weight(&self) -> u16 {
        self.about.weight
    }

    /// The node's host as an IP address, if it is an IP literal rather than a host name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.0.parse().ok()
    }
}

/// The `ip:port` form used both as the last key segment and as the value; IPv6 in brackets.
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.is_ipv6() {
            write!(f, "[{}]:{}", self.host.0, self.port)
        } else {
            write!(f, "{}:{}", self.host.0, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        assert!(validate_service("api").is_ok());
        assert!(validate_service("A-z_0.9").is_ok());
        assert!(validate_service(&"x".repeat(128)).is_ok());
        for bad in ["", "a/b", "a b", "é", "*", "a,b"] {
            assert!(validate_service(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_service(&"x".repeat(129)).is_err());
    }

    #[test]
    fn monitor_lists() {
        assert_eq!(parse_monitor_list("a,,b,a").unwrap(), vec!["a", "b"]);
        assert_eq!(parse_monitor_list("*,a").unwrap(), vec!["*", "a"]);
        assert!(parse_monitor_list("a*").is_err());
        assert!(parse_monitor_list("").unwrap().is_empty());
        assert!(parse_monitor_list("a,b/c").is_err());
        let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        assert!(parse_monitor_list(&many.join(",")).is_err());
        assert_eq!(parse_monitor_list(&many[..64].join(",")).unwrap().len(), 64);
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("1").unwrap(), 1);
        assert_eq!(parse_port("65535").unwrap(), 65535);
        assert_eq!(parse_port("080").unwrap(), 80);
        for bad in ["0", "65536", "-1", "+1", "abc", "", "8080 "] {
            assert!(parse_port(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(Host::parse("10.0.0.1").unwrap().as_str(), "10.0.0.1");
        assert_eq!(Host::parse("::1").unwrap().as_str(), "::1");
        assert_eq!(Host::parse("[0:0::1]").unwrap().as_str(), "::1");
        assert_eq!(
            Host::parse("Db-1.Example.com.").unwrap().as_str(),
            "db-1.example.com"
        );
        for bad in [
            "",
            "999.1.1.1",
            "-a.com",
            "a..b",
            "a b",
            "[10.0.0.1]",
            "a_b",
            "1.2.3",
        ] {
            assert!(Host::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Host::parse(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn node_values_round_trip() {
        let v4 = Node::parse_value("10.0.0.1:80").unwrap();
        assert_eq!((v4.host.as_str(), v4.port), ("10.0.0.1", 80));
        assert_eq!(v4.to_string(), "10.0.0.1:80");
        let v6 = Node::parse_value("[::1]:8080").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8080));
        assert_eq!(v6.to_string(), "[::1]:8080");
        let named = Node::parse_value("db.local:5432").unwrap();
        assert_eq!(named.to_string(), "db.local:5432");
    }

    #[test]
    fn unparsable_values_are_none() {
        for bad in [
            "",
            "10.0.0.1",
            "10.0.0.1:0",
            "10.0.0.1:x",
            "::1:80",
            "[::1]",
            ":80",
            "a b:1",
        ] {
            assert!(Node::parse_value(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn nodes_sort_by_ip_then_port() {
        let mut nodes: Vec<Node> = [
            "b.example:1",
            "[::1]:1",
            "10.0.0.10:1",
            "10.0.0.2:1",
            "10.0.0.1:9",
            "10.0.0.1:2",
            "a.example:1",
        ]
        .iter()
        .map(|v| Node::parse_value(v).unwrap())
        .collect();
        nodes.sort();
        let shown: Vec<String> = nodes.iter().map(Node::to_string).collect();
        assert_eq!(
            shown,
            [
                "10.0.0.1:2",
                "10.0.0.1:9",
                "10.0.0.2:1",
                "10.0.0.10:1",
                "[::1]:1",
                "a.example:1",
                "b.example:1"
            ]
        );
    }
}
