//! The value of a registration key in etcd, built and parsed only here: the JSON that etcd's
//! own naming resolver reads (`go.etcd.io/etcd/client/v3/naming/endpoints`, an `Endpoint`
//! `{"Addr":…,"Metadata":…}`), so a grpc-go client dialing `etcd:///<namespace>/<service>`
//! finds hound's nodes; and, when reading, 1.0's plain `host:port` too.

use serde_json::{Map, Value};

use crate::describe::{
    MAX_META, MAX_NOTE, MAX_TAGS, Status, parse_weight, validate_meta, validate_tag,
};
use crate::names::Node;

/// `{"Addr":"host:port"}`, with `"Metadata":{…}` holding what the node sets (omitted when it
/// sets nothing: etcd's `Endpoint.Metadata` is optional).
pub fn encode(node: &Node) -> String {
    let address = serde_json::Value::String(node.to_string()).to_string();
    let mut metadata = String::new();
    node.about.write_json_fields(&mut metadata);
    match metadata.strip_prefix(',') {
        Some(fields) => format!("{{\"Addr\":{address},\"Metadata\":{{{fields}}}}}"),
        None => format!("{{\"Addr\":{address}}}"),
    }
}

/// Reads a registration value: a JSON object with a string `Addr` (2.0, or any client of
/// etcd's naming API), or a plain `host:port` (1.0). `None` for anything else; the caller
/// skips the key with a warning. What `Metadata` holds that hound does not understand, or
/// that breaks its rules, is left out, never a reason to drop the node: another writer's
/// metadata is its own business.
pub fn decode(value: &str) -> Option<Node> {
    if !value.trim_start().starts_with('{') {
        return Node::parse_value(value);
    }
    let Value::Object(object) = serde_json::from_str::<Value>(value).ok()? else {
        return None;
    };
    let mut node = Node::parse_value(object.get("Addr")?.as_str()?)?;
    if let Some(Value::Object(metadata)) = object.get("Metadata") {
        read_metadata(metadata, &mut node);
    }
    Some(node)
}

fn read_metadata(metadata: &Map<String, Value>, node: &mut Node) {
    let about = &mut node.about;
    if let Some(Value::Array(tags)) = metadata.get("tags") {
        for tag in tags.iter().filter_map(Value::as_str) {
            if validate_tag(tag).is_ok()
                && about.tags.len() < MAX_TAGS
                && !about.tags.iter().any(|known| known == tag)
            {
                about.tags.push(tag.to_owned());
            }
        }
    }
    if let Some(weight) = metadata.get("weight").and_then(Value::as_u64)
        && let Ok(weight) = parse_weight(&weight.to_string())
    {
        about.weight = weight;
    }
    if let Some(Value::Object(meta)) = metadata.get("meta") {
        for (key, value) in meta {
            if let Some(value) = value.as_str()
                && validate_meta(key, value).is_ok()
                && about.meta.len() < MAX_META
            {
                about.meta.push((key.clone(), value.to_owned()));
            }
        }
        about.meta.sort();
    }
    if let Some(status) = metadata.get("status").and_then(Value::as_str) {
        about.status = Status::parse(status).ok();
    }
    if let Some(note) = metadata.get("note").and_then(Value::as_str)
        && note.len() <= MAX_NOTE
    {
        about.note = Some(note.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn described() -> Node {
        let mut node = Node::parse_value("10.0.0.7:8080").unwrap();
        node.about.tags = vec!["v2".into(), "canary".into()];
        node.about.weight = 10;
        node.about.meta = vec![("zone".into(), "eu-1".into())];
        node.about.status = Some(Status::Passing);
        node
    }

    #[test]
    fn the_value_is_etcds_naming_endpoint() {
        let value: Value = serde_json::from_str(&encode(&described())).unwrap();
        assert_eq!(
            value,
            json!({"Addr":"10.0.0.7:8080","Metadata":{"tags":["v2","canary"],"weight":10,
                "meta":{"zone":"eu-1"},"status":"passing"}})
        );
        let plain = Node::parse_value("[::1]:80").unwrap();
        assert_eq!(encode(&plain), r#"{"Addr":"[::1]:80"}"#);
    }

    #[test]
    fn values_round_trip() {
        for node in [described(), Node::parse_value("db.local:5432").unwrap()] {
            assert_eq!(decode(&encode(&node)), Some(node));
        }
    }

    #[test]
    fn plain_values_and_foreign_json_are_read() {
        assert_eq!(
            decode("10.0.0.1:80"),
            Some(Node::parse_value("10.0.0.1:80").unwrap())
        );
        // What etcd's endpoints manager writes for an endpoint without metadata.
        assert_eq!(
            decode(r#"{"Addr":"10.0.0.1:80","Metadata":null}"#),
            Some(Node::parse_value("10.0.0.1:80").unwrap())
        );
        // Metadata hound does not understand is left out; the node stays.
        let node = decode(
            r#"{"Addr":"10.0.0.1:80","Metadata":{"tags":["ok","bad tag",3],"weight":0,"meta":{"a.b":"x","k":"v"},"status":"fine","x":1}}"#,
        )
        .unwrap();
        assert_eq!(node.about.tags, ["ok"]);
        assert_eq!(node.about.weight, 1);
        assert_eq!(node.about.meta, [("k".to_owned(), "v".to_owned())]);
        assert_eq!(node.about.status, None);
    }

    #[test]
    fn anything_else_is_none() {
        for bad in [
            "",
            "{",
            "{}",
            "[]",
            r#"{"Addr":80}"#,
            r#"{"Addr":"10.0.0.1"}"#,
            r#"{"addr":"10.0.0.1:80"}"#,
            "10.0.0.1",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
