//! What a node says about itself beyond its address — tags, weight, `meta.KEY` pairs — and its
//! health status, with the rules `/etcd/register` checks them by.

use std::fmt;

use crate::error::{Error, Result};
use crate::names::{parse_distinct, parse_u16_from_1};

/// The most tags one node may carry.
pub const MAX_TAGS: usize = 32;
/// The longest tag accepted.
pub const MAX_TAG: usize = 64;
/// The most `meta.KEY` pairs one node may carry.
pub const MAX_META: usize = 64;
/// The longest meta key accepted (Consul's rule).
pub const MAX_META_KEY: usize = 128;
/// The longest meta value accepted, in bytes of UTF-8.
pub const MAX_META_VALUE: usize = 512;
/// The longest note a status may carry, in bytes of UTF-8.
pub const MAX_NOTE: usize = 256;
/// The query parameter prefix of a meta pair: `meta.KEY=VALUE`.
pub const META_PREFIX: &str = "meta.";

/// A node's health. Ordered from best to worst, then `Draining`, only so descriptions order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Passing,
    Warning,
    Critical,
    Draining,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
            Status::Draining => "draining",
        }
    }

    /// Parses one of the four names; anything else is a 400.
    pub fn parse(text: &str) -> Result<Status> {
        match text {
            "passing" => Ok(Status::Passing),
            "warning" => Ok(Status::Warning),
            "critical" => Ok(Status::Critical),
            "draining" => Ok(Status::Draining),
            _ => Err(Error::BadRequest(format!(
                "status {text:?} is not one of passing, warning, critical, draining"
            ))),
        }
    }

    /// Whether discovery counts a node with this status: "healthy" is passing or warning.
    pub fn is_healthy(self) -> bool {
        matches!(self, Status::Passing | Status::Warning)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything about a node but its address. The default describes a 1.0 node: no tags,
/// weight 1, no meta, passing without saying so.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Description {
    /// In the order given, each once.
    pub tags: Vec<String>,
    /// 1–65535; 1 unless set.
    pub weight: u16,
    /// Sorted by key, each key once.
    pub meta: Vec<(String, String)>,
    /// `None` for a node that is passing and has no check: its status is not shown. A
    /// checked node always has one, so others can tell it is checked.
    pub status: Option<Status>,
    /// Why the status is what it is, as the check or the service said.
    pub note: Option<String>,
}

impl Default for Description {
    fn default() -> Self {
        Description {
            tags: Vec::new(),
            weight: 1,
            meta: Vec::new(),
            status: None,
            note: None,
        }
    }
}

impl Description {
    /// The status discovery reports: passing unless one is set.
    pub fn effective_status(&self) -> Status {
        self.status.unwrap_or(Status::Passing)
    }

    /// Appends what is set as JSON object members, each with a leading comma:
    /// `,"tags":[…]` (when any), `,"weight":N` (when not 1), `,"meta":{…}` (when any),
    /// `,"status":"…"` and `,"note":"…"` (when set). The one spelling of these fields, shared
    /// by messages, REST answers and the value in etcd; nothing is appended for a 1.0 node.
    pub fn write_json_fields(&self, json: &mut String) {
        if !self.tags.is_empty() {
            json.push_str(",\"tags\":[");
            for (i, tag) in self.tags.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push_str(&json_string(tag));
            }
            json.push(']');
        }
        if self.weight != 1 {
            json.push_str(",\"weight\":");
            json.push_str(&self.weight.to_string());
        }
        if !self.meta.is_empty() {
            json.push_str(",\"meta\":{");
            for (i, (key, value)) in self.meta.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push_str(&json_string(key));
                json.push(':');
                json.push_str(&json_string(value));
            }
            json.push('}');
        }
        if let Some(status) = self.status {
            json.push_str(",\"status\":\"");
            json.push_str(status.as_str());
            json.push('"');
        }
        if let Some(note) = &self.note {
            json.push_str(",\"note\":");
            json.push_str(&json_string(note));
        }
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Whether `byte` may appear in a tag: `A-Z a-z 0-9 . _ : -`.
pub fn is_tag_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-')
}

/// Checks one tag: 1–64 characters of `A-Z a-z 0-9 . _ : -`.
pub fn validate_tag(tag: &str) -> Result<()> {
    if tag.is_empty() || tag.len() > MAX_TAG || !tag.bytes().all(is_tag_byte) {
        return Err(Error::BadRequest(format!(
            "tag {tag:?} must be 1 to {MAX_TAG} characters of A-Z a-z 0-9 . _ : -"
        )));
    }
    Ok(())
}

/// Parses `tags=a,b`: comma-separated tags, empty items ignored (as in `monitor`), duplicates
/// dropped, at most [`MAX_TAGS`].
pub fn parse_tags(list: &str) -> Result<Vec<String>> {
    parse_distinct(list.split(','), MAX_TAGS, "tags", "tags", validate_tag)
}

/// Parses `weight=N`: an integer 1–65535 in decimal digits only.
pub fn parse_weight(text: &str) -> Result<u16> {
    parse_u16_from_1(text, "weight")
}

/// Whether `byte` may appear in a meta key: `A-Z a-z 0-9 _ -`.
fn is_meta_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-')
}

/// Checks one meta pair: KEY 1–128 characters of `A-Z a-z 0-9 _ -`, VALUE at most 512 bytes.
pub fn validate_meta(key: &str, value: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_META_KEY || !key.bytes().all(is_meta_key_byte) {
        return Err(Error::BadRequest(format!(
            "meta key {key:?} must be 1 to {MAX_META_KEY} characters of A-Z a-z 0-9 _ -"
        )));
    }
    if value.len() > MAX_META_VALUE {
        return Err(Error::BadRequest(format!(
            "meta.{key} is longer than {MAX_META_VALUE} bytes"
        )));
    }
    Ok(())
}

/// Collects the `meta.KEY=VALUE` pairs among a query's parameters, checked and sorted by key.
/// Each name is given at most once (the query parser refuses repeats), so keys are unique.
pub fn parse_meta<'q>(
    pairs: impl Iterator<Item = (&'q str, &'q str)>,
) -> Result<Vec<(String, String)>> {
    let mut meta: Vec<(String, String)> = Vec::new();
    for (name, value) in pairs {
        let Some(key) = name.strip_prefix(META_PREFIX) else {
            continue;
        };
        validate_meta(key, value)?;
        if meta.len() == MAX_META {
            return Err(Error::BadRequest(format!(
                "more than {MAX_META} meta keys are given"
            )));
        }
        meta.push((key.to_owned(), value.to_owned()));
    }
    meta.sort();
    meta.dedup_by(|a, b| a.0 == b.0);
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(parse_tags("v2,canary,,v2").unwrap(), ["v2", "canary"]);
        assert!(parse_tags("").unwrap().is_empty());
        assert_eq!(parse_tags("a.b:c_d-e").unwrap(), ["a.b:c_d-e"]);
        for bad in ["a b", "a/b", "é", "a;b"] {
            assert!(parse_tags(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_tags(&"x".repeat(65)).is_err());
        assert!(parse_tags(&"x".repeat(64)).is_ok());
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        assert!(parse_tags(&many.join(",")).is_err());
        assert_eq!(parse_tags(&many[..32].join(",")).unwrap().len(), 32);
    }

    #[test]
    fn weights() {
        assert_eq!(parse_weight("1").unwrap(), 1);
        assert_eq!(parse_weight("65535").unwrap(), 65535);
        for bad in ["0", "65536", "-1", "+1", "", "1.5", " 1"] {
            assert!(parse_weight(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn meta_pairs() {
        let pairs = [
            ("service", "api"),
            ("meta.zone", "eu-1"),
            ("meta.a_B-9", ""),
        ];
        assert_eq!(
            parse_meta(pairs.into_iter()).unwrap(),
            [
                ("a_B-9".to_owned(), String::new()),
                ("zone".to_owned(), "eu-1".to_owned())
            ]
        );
        for bad in [("meta.", "x"), ("meta.a.b", "x"), ("meta.a b", "x")] {
            assert!(parse_meta([bad].into_iter()).is_err(), "{bad:?} accepted");
        }
        let long = "é".repeat(257);
        assert!(parse_meta([("meta.k", long.as_str())].into_iter()).is_err());
        let names: Vec<String> = (0..65).map(|i| format!("meta.k{i}")).collect();
        assert!(parse_meta(names.iter().map(|n| (n.as_str(), "v"))).is_err());
        assert_eq!(
            parse_meta(names[..64].iter().map(|n| (n.as_str(), "v")))
                .unwrap()
                .len(),
            64
        );
    }

    #[test]
    fn statuses() {
        for status in [
            Status::Passing,
            Status::Warning,
            Status::Critical,
            Status::Draining,
        ] {
            assert_eq!(Status::parse(status.as_str()).unwrap(), status);
        }
        assert!(Status::parse("ok").is_err());
        assert!(Status::Warning.is_healthy() && !Status::Draining.is_healthy());
    }
}
