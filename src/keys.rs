//! The etcd key layout, the one place that builds and parses keys: registrations
//! `<namespace>/<service>/<node>`, their tombstones `<namespace>/~deregistered/<service>/<node>`,
//! the store marker `<namespace>/~store`, and custom events
//! `<event-namespace>/<instance>-<sequence>`, and election campaigns
//! `<election-namespace>/<service>/<lease id in hex>`.

use crate::names::{Node, is_service_name};

/// The key segment under `<namespace>/` that marks explicit deregistrations. `~` cannot appear in
/// a service name, so it never collides with a service.
const TOMBSTONE_SEGMENT: &str = "~deregistered";
/// The key under `<namespace>/` of the store marker; no service name, for the same reason.
const MARKER_SEGMENT: &str = "~store";

/// The keys of the service namespace: registrations and their tombstones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceKeys {
    /// `<namespace>/`.
    prefix: String,
    /// `<namespace>/~deregistered/`.
    tombstone_prefix: String,
}

impl ServiceKeys {
    /// The layout under `namespace` (given without the trailing `/`).
    pub fn new(namespace: &str) -> ServiceKeys {
        ServiceKeys {
            prefix: format!("{namespace}/"),
            tombstone_prefix: format!("{namespace}/{TOMBSTONE_SEGMENT}/"),
        }
    }

    /// `<namespace>/`, the prefix the service watch reads and covers.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<namespace>/<service>/<node>`, the key of one registration.
    pub fn registration(&self, service: &str, node: &Node) -> String {
        format!("{}{service}/{node}", self.prefix)
    }

    /// `<namespace>/~deregistered/<service>/<node>` for the registration key
    /// `<namespace>/<service>/<node>`: written in the same revision as the deletion, it tells
    /// every hound the node was deregistered on purpose rather than expired.
    pub fn tombstone(&self, registration_key: &str) -> String {
        let rest = registration_key
            .strip_prefix(&self.prefix)
            .unwrap_or(registration_key);
        format!("{}{rest}", self.tombstone_prefix)
    }

    /// `<namespace>/~store`: a value hound writes once, by which it recognises the store
    /// (see `etcd/marker.rs`).
    pub fn store_marker(&self) -> String {
        format!("{}{MARKER_SEGMENT}", self.prefix)
    }

    /// `(<service>, <node>)` of a key under the namespace whose service segment is a valid
    /// service name and whose node segment is not empty (the node segment is not checked
    /// further: the value says where the node is). Tombstones are not registrations.
    pub fn parse_registration<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        split_service_node(key.strip_prefix(&self.prefix)?)
    }

    /// `(<service>, <node>)` of the registration a tombstone key marks as deregistered.
    pub fn parse_tombstone<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        split_service_node(key.strip_prefix(&self.tombstone_prefix)?)
    }
}

fn split_service_node(rest: &str) -> Option<(&str, &str)> {
    let (service, node) = rest.split_once('/')?;
    (is_service_name(service) && !node.is_empty()).then_some((service, node))
}

/// The keys of the event namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventKeys {
    /// `<event-namespace>/`.
    prefix: String,
}

impl EventKeys {
    /// The layout under `event_namespace` (given without the trailing `/`).
    pub fn new(event_namespace: &str) -> EventKeys {
        EventKeys {
            prefix: format!("{event_namespace}/"),
        }
    }

    /// `<event-namespace>/`, the prefix the event watch covers.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<event-namespace>/<instance>-<sequence>`: the sequence in eight or more hex digits, so
    /// one publisher's keys never repeat.
    pub fn event(&self, instance: &str, sequence: u64) -> String {
        format!("{}{instance}-{sequence:08x}", self.prefix)
    }
}

/// The keys of the election namespace, in etcd's own election layout (`concurrency.Election`,
/// which `etcdctl elect` uses): the election of `<service>` is the prefix
/// `<election-namespace>/<service>`, and each campaign is a key under it named after the
/// campaigner's lease, so `etcdctl elect <election-namespace>/<service>` joins the same election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ElectionKeys {
    /// `<election-namespace>/`.
    prefix: String,
}

impl ElectionKeys {
    /// The layout under `election_namespace` (given without the trailing `/`).
    pub fn new(election_namespace: &str) -> ElectionKeys {
        ElectionKeys {
            prefix: format!("{election_namespace}/"),
        }
    }

    /// `<election-namespace>/`, the prefix the election watch reads and covers.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<election-namespace>/<service>/<lease>`: etcd's `Campaign` names its key
    /// `fmt.Sprintf("%s/%x", prefix, leaseID)`, lower-case hex without padding.
    pub fn campaign(&self, service: &str, lease: i64) -> String {
        format!("{}{service}/{lease:x}", self.prefix)
    }

    /// `(<service>, <rest>)` of a key in the election of a valid service name. Like etcd's
    /// election, every key under `<election-namespace>/<service>/` takes part, whatever its
    /// last segment.
    pub fn parse_campaign<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        split_service_node(key.strip_prefix(&self.prefix)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_round_trip() {
        let keys = ServiceKeys::new("service");
        assert_eq!(keys.prefix(), "service/");
        for (service, value) in [
            ("api", "10.0.0.1:80"),
            ("A-z_0.9", "[::1]:8080"),
            ("db", "db.local:5432"),
        ] {
            let key = keys.registration(service, &Node::parse_value(value).unwrap());
            assert_eq!(key, format!("service/{service}/{value}"));
            assert_eq!(keys.parse_registration(&key), Some((service, value)));
        }
    }

    #[test]
    fn nested_namespaces_round_trip() {
        let keys = ServiceKeys::new("team/prod");
        let key = keys.registration("api", &Node::parse_value("10.0.0.1:80").unwrap());
        assert_eq!(key, "team/prod/api/10.0.0.1:80");
        assert_eq!(keys.parse_registration(&key), Some(("api", "10.0.0.1:80")));
        let tombstone = keys.tombstone(&key);
        assert_eq!(tombstone, "team/prod/~deregistered/api/10.0.0.1:80");
        assert_eq!(
            keys.parse_tombstone(&tombstone),
            Some(("api", "10.0.0.1:80"))
        );
    }

    #[test]
    fn tombstones_round_trip_and_are_not_registrations() {
        let keys = ServiceKeys::new("service");
        let key = keys.registration("api", &Node::parse_value("[::1]:80").unwrap());
        let tombstone = keys.tombstone(&key);
        assert_eq!(tombstone, "service/~deregistered/api/[::1]:80");
        assert_eq!(keys.parse_tombstone(&tombstone), Some(("api", "[::1]:80")));
        assert_eq!(keys.parse_registration(&tombstone), None);
        assert_eq!(keys.parse_tombstone(&key), None);
        assert_eq!(keys.store_marker(), "service/~store");
        assert_eq!(keys.parse_registration(&keys.store_marker()), None);
        assert_eq!(keys.parse_tombstone(&keys.store_marker()), None);
    }

    #[test]
    fn foreign_keys_do_not_parse() {
        let keys = ServiceKeys::new("service");
        for key in [
            "service",
            "service/",
            "service/api",
            "service/api/",
            "service//10.0.0.1:80",
            "service/a b/10.0.0.1:80",
            "other/api/10.0.0.1:80",
            "services/api/10.0.0.1:80",
            "service/~deregistered/api",
        ] {
            assert_eq!(keys.parse_registration(key), None, "{key:?}");
            assert_eq!(keys.parse_tombstone(key), None, "{key:?}");
        }
        // The node segment is whatever follows the service: the value says where the node is.
        assert_eq!(
            keys.parse_registration("service/api/a/b"),
            Some(("api", "a/b"))
        );
    }

    #[test]
    fn event_keys() {
        let keys = EventKeys::new("event");
        assert_eq!(keys.prefix(), "event/");
        assert_eq!(keys.event("1f-2a", 1), "event/1f-2a-00000001");
        assert_eq!(keys.event("1f-2a", 0x1_0000_0000), "event/1f-2a-100000000");
    }

    #[test]
    fn campaigns_are_named_as_etcd_names_them() {
        let keys = ElectionKeys::new("election");
        assert_eq!(keys.prefix(), "election/");
        let key = keys.campaign("api", 0x694d_7a1b_2c3d_0e0f);
        assert_eq!(key, "election/api/694d7a1b2c3d0e0f");
        assert_eq!(keys.campaign("api", 0x1f), "election/api/1f");
        assert_eq!(keys.parse_campaign(&key), Some(("api", "694d7a1b2c3d0e0f")));
        assert_eq!(keys.parse_campaign("election/a b/1"), None);
        assert_eq!(keys.parse_campaign("election/api/"), None);
        assert_eq!(keys.parse_campaign("service/api/1"), None);
    }
}
