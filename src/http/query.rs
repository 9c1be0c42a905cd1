//! Query strings: `name=value` pairs decoded by `form_urlencoded` (`+` is a space), each name at
//! most once; a malformed percent escape, or text that does not decode to UTF-8, is a 400.

use std::fmt;

use crate::error::{Error, Result};

/// The names that may be given more than once: the filters of `GET /etcd/services/:service`
/// (`?tag=a&tag=b` means both).
pub const REPEATABLE: &[&str] = &["tag", "status"];

/// The decoded parameters of one request.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses `a=1&b=2`. A repeated name, a malformed escape (`%g1`, `%+f`, a trailing `%`) or
    /// a pair that does not decode to UTF-8 is a 400.
    pub fn parse(query: &str) -> Result<Query> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = decode_pair(part)
                .map_err(|why| Error::BadRequest(format!("query parameter {part:?} {why}")))?;
            if !REPEATABLE.contains(&name.as_str()) && pairs.iter().any(|(known, _)| *known == name)
            {
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

    /// Every value of `name`, in the order given (a [`REPEATABLE`] name may have several).
    pub fn get_all<'q>(&'q self, name: &'q str) -> impl Iterator<Item = &'q str> + 'q {
        self.pairs
            .iter()
            .filter(move |(known, _)| known == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every parameter, in the order given.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// The value of a parameter that must be present.
    pub fn require(&self, name: &str) -> Result<&str> {
        self.get(name)
            .ok_or_else(|| Error::BadRequest(format!("query parameter {name:?} is required")))
    }
}

/// Decodes `%XX` escapes and `+` (as a space); `None` if an escape is malformed or the result is
/// not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    // form_urlencoded splits at `&` and `=`; escaped, they decode to themselves, so the whole
    // text comes back as one name.
    let whole = text.replace('&', "%26").replace('=', "%3D");
    decode_pair(&whole).ok().map(|(name, _)| name)
}

/// Why part of a URL cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undecodable {
    MalformedEscape,
    NotUtf8,
}

impl fmt::Display for Undecodable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Undecodable::MalformedEscape => "has a malformed percent escape",
            Undecodable::NotUtf8 => "is not valid UTF-8",
        })
    }
}

/// Decodes one `name=value` (split at the first `=`; without one, the value is empty).
fn decode_pair(part: &str) -> Result<(String, String), Undecodable> {
    // form_urlencoded passes a malformed escape through as text, and decodes bytes that are not
    // UTF-8 to U+FFFD; hound refuses both rather than guess what the client meant.
    if !escapes_are_well_formed(part) {
        return Err(Undecodable::MalformedEscape);
    }
    let (name, value) = form_urlencoded::parse(part.as_bytes())
        .next()
        .unwrap_or_default();
    if replaced_bytes(part, &[&name, &value]) {
        return Err(Undecodable::NotUtf8);
    }
    Ok((name.into_owned(), value.into_owned()))
}

/// Whether every `%` starts an escape of exactly two hex digits (`%+f` is not one, though
/// `u8::from_str_radix` would read `+f` as 15).
fn escapes_are_well_formed(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes
        .iter()
        .enumerate()
        .filter(|&(_, &byte)| byte == b'%')
        .all(|(at, _)| {
            bytes
                .get(at + 1..at + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
        })
}

/// What form_urlencoded decodes bytes that are not UTF-8 to.
const REPLACEMENT: char = char::REPLACEMENT_CHARACTER;

/// Whether decoding `raw` replaced bytes that were not UTF-8 with U+FFFD. `raw` may spell that
/// character itself, literally or as `%EF%BF%BD`, and only those spellings decode to a genuine
/// one: escaped bytes cannot borrow a literal character's bytes, since a character never
/// begins with a continuation byte. So any U+FFFD beyond them marks bytes that were not UTF-8.
fn replaced_bytes(raw: &str, decoded: &[&str]) -> bool {
    let found: usize = decoded
        .iter()
        .map(|text| text.matches(REPLACEMENT).count())
        .sum();
    found > 0 && {
        let spelled = raw.matches(REPLACEMENT).count()
            + raw.to_ascii_uppercase().matches("%EF%BF%BD").count();
        found > spelled
    }
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
    fn splits_at_the_first_equals_sign_and_skips_empty_pairs() {
        let query = Query::parse("&a=b=c&&=x&").unwrap();
        assert_eq!(query.get("a"), Some("b=c"));
        assert_eq!(query.get(""), Some("x"));
        assert!(Query::parse("").unwrap().get("").is_none());
    }

    #[test]
    fn refuses_repeats_and_bad_escapes() {
        assert!(Query::parse("a=1&a=2").is_err());
        assert!(Query::parse("a=%zz").is_err());
        assert!(Query::parse("a=%f").is_err());
        assert!(Query::parse("a=%ff").is_err());
    }

    #[test]
    fn malformed_escapes_are_400() {
        for query in [
            "%+f=1", "a=%+f", "a=%-1", "a=%g1", "a=%1g", "a=%", "a=%4", "%=1", "a=%%41", "a=b%",
        ] {
            let err = Query::parse(query).unwrap_err();
            assert_eq!(err.status(), 400, "{query}");
            assert!(
                err.to_string().contains("malformed percent escape"),
                "{err}"
            );
        }
        for text in ["%+f", "%g1", "%", "%4", "a%2"] {
            assert_eq!(percent_decode(text), None, "{text:?}");
        }
    }

    #[test]
    fn text_that_is_not_utf8_is_400() {
        for query in [
            "a=%ff",
            "%C3=1",
            "a=%EF%BF",
            "a=%E0%EF%BF%BD",
            "a=%ED%A0%80",
        ] {
            let err = Query::parse(query).unwrap_err();
            assert_eq!(err.status(), 400, "{query}");
            assert!(err.to_string().contains("not valid UTF-8"), "{err}");
        }
    }

    #[test]
    fn a_spelled_replacement_character_is_text() {
        let query = Query::parse("a=%EF%BF%BD&b=\u{FFFD}&c=%ef%bf%bd%C3%A9").unwrap();
        assert_eq!(query.get("a"), Some("\u{FFFD}"));
        assert_eq!(query.get("b"), Some("\u{FFFD}"));
        assert_eq!(query.get("c"), Some("\u{FFFD}é"));
    }

    #[test]
    fn plus_is_space() {
        assert_eq!(percent_decode("a+b%2B").unwrap(), "a b+");
    }

    #[test]
    fn percent_decode_keeps_separators() {
        assert_eq!(percent_decode("a=b&c%3D").unwrap(), "a=b&c=");
        assert_eq!(percent_decode("").unwrap(), "");
        assert_eq!(percent_decode("a%20b").unwrap(), "a b");
    }
}
