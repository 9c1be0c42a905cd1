//! Query strings: percent-decoded `name=value` pairs, each name at most once.

use crate::error::{Error, Result};

/// The decoded parameters of one request.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses `a=1&b=2`. A repeated name, or one that does not decode to UTF-8, is a 400.
    pub fn parse(query: &str) -> Result<Query> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let decode = |text: &str| {
                percent_decode(text).ok_or_else(|| {
                    Error::BadRequest(format!("query parameter {part:?} is not valid UTF-8"))
                })
            };
            let (name, value) = (decode(name)?, decode(value)?);
            if pairs.iter().any(|(known, _)| *known == name) {
                return Err(Error::BadRequest(format!(
                    "query parameter {name:?} is given more than once"
                )));
            }
            pairs.push((name, value));
        }
        Ok(Query { pairs })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value.as_str())
    }

    /// The value of a parameter that must be present.
    pub fn require(&self, name: &str) -> Result<&str> {
        self.get(name)
            .ok_or_else(|| Error::BadRequest(format!("query parameter {name:?} is required")))
    }
}

/// Decodes `%XX` escapes and `+` (as a space); `None` if the result is not UTF-8 or an escape
/// is malformed.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pairs() {
        let query = Query::parse("service=api&ip=%3A%3A1&port=80&monitor=a,b&flag").unwrap();
        assert_eq!(query.get("ip"), Some("::1"));
        assert_eq!(query.get("monitor"), Some("a,b"));
        assert_eq!(query.get("flag"), Some(""));
        assert_eq!(query.get("nope"), None);
        assert!(query.require("nope").is_err());
    }

    #[test]
    fn refuses_repeats_and_bad_escapes() {
        assert!(Query::parse("a=1&a=2").is_err());
        assert!(Query::parse("a=%zz").is_err());
        assert!(Query::parse("a=%f").is_err());
        assert!(Query::parse("a=%ff").is_err());
    }

    #[test]
    fn plus_is_space() {
        assert_eq!(percent_decode("a+b%2B").unwrap(), "a b+");
    }
}
