//! `GET /v1/sd/prometheus`: the healthy nodes as Prometheus HTTP service discovery targets
//! (the `http_sd_configs` format), one target group per node, labelled like Consul's.

use serde_json::{Map, Value, json};

use crate::context::Context;
use crate::error::Result;
use crate::http::query::Query;
use crate::http::rest::{Reply, ok, require_mirror};
use crate::names::{Node, validate_service};

/// The target groups of the services `?service=A,B` names (every service without it).
pub fn prometheus_targets(context: &Context, query: &Query) -> Result<Reply> {
    let services = match query.get("service") {
        Some(list) => Some(service_list(list)?),
        None => None,
    };
    require_mirror(context)?;
    let nodes = context.hub.nodes_by_service(services.as_deref());
    let groups: Vec<Value> = nodes
        .iter()
        .flat_map(|(service, nodes)| {
            nodes
                .iter()
                .filter(|node| node.is_healthy())
                .map(move |node| target_group(service, node))
        })
        .collect();
    ok(Value::Array(groups).to_string())
}

/// `A,B`: valid service names, empty items ignored, each once.
fn service_list(list: &str) -> Result<Vec<String>> {
    let mut services: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        validate_service(name)?;
        if !services.iter().any(|known| known == name) {
            services.push(name.to_owned());
        }
    }
    Ok(services)
}

/// `{"targets":["ip:port"],"labels":{…}}` for one node. Tags are joined as Consul's are for
/// Prometheus, with the separator at both ends (`,a,b,`), so a relabel regex `.*,a,.*` finds
/// a tag wherever it stands.
fn target_group(service: &str, node: &Node) -> Value {
    let mut labels = Map::new();
    labels.insert("__meta_hound_service".into(), service.into());
    labels.insert("__meta_hound_status".into(), node.status().into());
    labels.insert(
        "__meta_hound_tags".into(),
        format!(",{},", node.tags().join(",")).into(),
    );
    for (key, value) in node.meta() {
        labels.insert(format!("__meta_hound_meta_{key}"), value.as_str().into());
    }
    json!({"targets": [node.to_string()], "labels": labels})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_per_node_with_its_labels() {
        let node = Node::parse_value("[::1]:8080").unwrap();
        assert_eq!(
            target_group("api", &node),
            json!({"targets":["[::1]:8080"],"labels":{
                "__meta_hound_service":"api",
                "__meta_hound_status":"passing",
                "__meta_hound_tags":",,"}})
        );
    }

    #[test]
    fn labels_follow_tags_meta_and_status() {
        let mut node = Node::parse_value("10.0.0.1:80").unwrap();
        node.about.tags = vec!["a".into(), "b".into()];
        node.about.meta = vec![("zone".into(), "eu-1".into())];
        node.about.status = Some(crate::describe::Status::Warning);
        assert_eq!(
            target_group("api", &node),
            json!({"targets":["10.0.0.1:80"],"labels":{
                "__meta_hound_service":"api",
                "__meta_hound_status":"warning",
                "__meta_hound_tags":",a,b,",
                "__meta_hound_meta_zone":"eu-1"}})
        );
    }

    #[test]
    fn service_lists_are_checked() {
        assert_eq!(service_list("a,,b,a").unwrap(), ["a", "b"]);
        assert!(service_list("").unwrap().is_empty());
        assert_eq!(service_list("a/b").unwrap_err().status(), 400);
    }
}
