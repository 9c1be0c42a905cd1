//! The in-memory mirror of the service namespace: who is a member of which service.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::message::nodes_json;
use crate::names::Node;

/// One service's current members as the JSON list every message and REST read shares.
#[derive(Debug, Clone)]
pub struct Membership {
    json: Arc<str>,
}

impl Membership {
    fn of(nodes: &BTreeMap<String, Node>) -> Membership {
        let mut sorted: Vec<&Node> = nodes.values().collect();
        sorted.sort();
        // Two keys holding one address list it once; if they describe it differently, the
        // first in description order stands, so every hound lists the same one.
        sorted.dedup_by(|a, b| a.same_address(b));
        Membership {
            json: nodes_json(&sorted).into(),
        }
    }

    /// The membership of a service nobody has registered under.
    pub fn empty() -> Membership {
        Membership { json: "[]".into() }
    }

    /// `[{"ip":…,"port":…},…]`, sorted by (ip, port).
    pub fn json(&self) -> &str {
        &self.json
    }
}

#[derive(Debug)]
struct Service {
    /// Nodes by the key segment after `<namespace>/<service>/`.
    nodes: BTreeMap<String, Node>,
    membership: Membership,
}

impl Service {
    /// Recomputes the membership from the nodes; returns it if it differs from before. Two keys
    /// holding one address list it once, so adding or removing the second changes nothing.
    fn refresh(&mut self) -> Option<Membership> {
        let membership = Membership::of(&self.nodes);
        if membership.json() == self.membership.json() {
            return None;
        }
        self.membership = membership.clone();
        Some(membership)
    }
}

/// Every service with at least one node, as last read from etcd.
#[derive(Debug, Default)]
pub struct Mirror {
    services: BTreeMap<String, Service>,
}

impl Mirror {
    /// Records `node` under `service`/`key`. Returns the new membership when it changed: a PUT
    /// that rewrites a node with the same address (a lease takeover), or that adds an address
    /// another key already holds, changes nothing.
    pub fn put(&mut self, service: &str, key: &str, node: Node) -> Option<Membership> {
        let entry = self
            .services
            .entry(service.to_owned())
            .or_insert_with(|| Service {
                nodes: BTreeMap::new(),
                membership: Membership::empty(),
            });
        if entry.nodes.get(key) == Some(&node) {
            return None;
        }
        entry.nodes.insert(key.to_owned(), node);
        entry.refresh()
    }

    /// Forgets `service`/`key`. Returns the new membership when it changed (not when another
    /// key still holds the same address).
    pub fn remove(&mut self, service: &str, key: &str) -> Option<Membership> {
        let entry = self.services.get_mut(service)?;
        entry.nodes.remove(key)?;
        if entry.nodes.is_empty() {
            self.services.remove(service);
            return Some(Membership::empty());
        }
        entry.refresh()
    }

    /// Whether `service`/`key` holds a node.
    pub fn holds(&self, service: &str, key: &str) -> bool {
        self.services
            .get(service)
            .is_some_and(|s| s.nodes.contains_key(key))
    }

    /// The current membership of `service` (empty if unknown).
    pub fn membership(&self, service: &str) -> Membership {
        self.services
            .get(service)
            .map_or_else(Membership::empty, |s| s.membership.clone())
    }

    /// The nodes of `service`, sorted by (ip, port), each once (empty if unknown).
    pub fn nodes(&self, service: &str) -> Vec<Node> {
        let mut nodes: Vec<Node> = self
            .services
            .get(service)
            .map(|s| s.nodes.values().cloned().collect())
            .unwrap_or_default();
        nodes.sort();
        nodes.dedup_by(|a, b| a.same_address(b));
        nodes
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The names of all services with at least one node, sorted.
    pub fn service_names(&self) -> Vec<String> {
        self.services.keys().cloned().collect()
    }

    /// Replaces the whole mirror with a fresh read of etcd and returns every service whose
    /// membership differs from before, with its new membership.
    pub fn replace(&mut self, fresh: Mirror) -> Vec<(String, Membership)> {
        let mut changed = Vec::new();
        for (name, service) in &fresh.services {
            let same = self
                .services
                .get(name)
                .is_some_and(|old| old.membership.json() == service.membership.json());
            if !same {
                changed.push((name.clone(), service.membership.clone()));
            }
        }
        for name in self.services.keys() {
            if !fresh.services.contains_key(name) {
                changed.push((name.clone(), Membership::empty()));
            }
        }
        *self = fresh;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(value: &str) -> Node {
        Node::parse_value(value).unwrap()
    }

    #[test]
    fn put_and_remove_report_changes() {
        let mut mirror = Mirror::default();
        let m = mirror
            .put("api", "10.0.0.2:80", node("10.0.0.2:80"))
            .unwrap();
        assert_eq!(m.json(), r#"[{"ip":"10.0.0.2","port":80}]"#);
        let m = mirror
            .put("api", "10.0.0.1:80", node("10.0.0.1:80"))
            .unwrap();
        assert_eq!(
            m.json(),
            r#"[{"ip":"10.0.0.1","port":80},{"ip":"10.0.0.2","port":80}]"#
        );
        assert!(
            mirror
                .put("api", "10.0.0.1:80", node("10.0.0.1:80"))
                .is_none()
        );
        assert_eq!(mirror.service_names(), ["api"]);
        mirror.remove("api", "10.0.0.1:80").unwrap();
        assert!(mirror.remove("api", "10.0.0.1:80").is_none());
        let m = mirror.remove("api", "10.0.0.2:80").unwrap();
        assert_eq!(m.json(), "[]");
        assert!(mirror.service_names().is_empty());
        assert_eq!(mirror.membership("api").json(), "[]");
    }

    #[test]
    fn a_second_key_with_a_listed_address_changes_nothing() {
        let mut mirror = Mirror::default();
        assert!(mirror.put("api", "a", node("10.0.0.1:80")).is_some());
        assert!(mirror.put("api", "b", node("10.0.0.1:80")).is_none());
        assert!(
            mirror.remove("api", "a").is_none(),
            "b still lists the address"
        );
        assert_eq!(
            mirror.membership("api").json(),
            r#"[{"ip":"10.0.0.1","port":80}]"#
        );
        assert_eq!(mirror.remove("api", "b").unwrap().json(), "[]");
    }

    #[test]
    fn a_changed_description_is_a_change() {
        let mut mirror = Mirror::default();
        mirror.put("api", "k", node("10.0.0.1:80"));
        let mut tagged = node("10.0.0.1:80");
        tagged.about.tags = vec!["v2".into()];
        let m = mirror.put("api", "k", tagged.clone()).unwrap();
        assert_eq!(m.json(), r#"[{"ip":"10.0.0.1","port":80,"tags":["v2"]}]"#);
        assert!(mirror.put("api", "k", tagged.clone()).is_none());
        // Another key with the same address but another description is still listed once.
        assert!(mirror.put("api", "other", node("10.0.0.1:80")).is_some());
        assert_eq!(mirror.nodes("api").len(), 1);
        assert_eq!(
            mirror.membership("api").json(),
            r#"[{"ip":"10.0.0.1","port":80}]"#,
            "the first in description order stands"
        );
    }

    #[test]
    fn replace_reports_only_differences() {
        let mut mirror = Mirror::default();
        mirror.put("a", "k", node("10.0.0.1:1"));
        mirror.put("b", "k", node("10.0.0.1:1"));
        let mut fresh = Mirror::default();
        fresh.put("a", "k", node("10.0.0.1:1"));
        fresh.put("c", "k", node("10.0.0.1:1"));
        let mut changed: Vec<String> = mirror.replace(fresh).into_iter().map(|(s, _)| s).collect();
        changed.sort();
        assert_eq!(changed, ["b", "c"]);
        assert_eq!(mirror.service_names(), ["a", "c"]);
    }
}
