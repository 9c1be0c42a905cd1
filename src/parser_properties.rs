//! Property tests for every parser of untrusted input: query strings (checked against a plain
//! reference decoder), routes, names, hosts, ports, monitor lists, node values and the event
//! body. Each must never panic, and what it accepts must satisfy the contract's rules.
//! `PROPTEST_CASES` raises the case count for a longer fuzzing run.

use crate::describe::{
    MAX_META_KEY, MAX_META_VALUE, MAX_TAG, MAX_TAGS, Status, parse_meta, parse_tags, parse_weight,
};
use crate::http::query::{Query, REPEATABLE, percent_decode};
use crate::http::rest::parse_event;
use crate::http::route::{Route, route};
use crate::http::upgrade::parameters;
use crate::names::{Host, Node, parse_monitor_list, parse_port, validate_service};
use proptest::prelude::*;

/// Strings biased towards the characters the parsers care about.
fn tricky() -> impl Strategy<Value = String> {
    prop::string::string_regex(r"[a-zA-Z0-9%+&=,:.\[\]/_\- \x00-\x1f\u{80}-\u{10ffff}]{0,80}")
        .expect("valid regex")
}

/// URL text made of pieces the decoder must tell apart: well-formed escapes of any byte, U+FFFD
/// spelled as escapes and literally, malformed escapes, separators, `+` and non-ASCII text.
fn url_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "%[0-9a-fA-F]{2}",
        Just("%EF%BF%BD".to_owned()),
        Just("%ef%bf".to_owned()),
        Just("%C3%A9".to_owned()),
        "%[+g-z%-]?[0-9a-fA-F]?",
        "[a-z0-9+=&]{1,3}",
        "[\u{80}-\u{10ffff}]",
        Just("\u{FFFD}".to_owned()),
    ];
    prop::collection::vec(piece, 0..10).prop_map(|pieces| pieces.concat())
}

/// The contract's decoding, written out plainly as the reference: `%` and two hex digits is a
/// byte, `+` is a space, anything else is itself; a malformed escape or a result that is not
/// UTF-8 is refused.
fn reference_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
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

/// What `Query::parse` must make of `query` by the reference: the pairs, or `None` for a 400.
fn reference_query(query: &str) -> Option<Vec<(String, String)>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let (name, value) = (reference_decode(name)?, reference_decode(value)?);
        if !REPEATABLE.contains(&name.as_str()) && pairs.iter().any(|(known, _)| *known == name) {
            return None;
        }
        pairs.push((name, value));
    }
    Some(pairs)
}

fn is_service_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

proptest! {
    #[test]
    fn query_strings_never_panic(text in tricky()) {
        if let Ok(query) = Query::parse(&text) {
            // Whatever was accepted can be read back without panicking.
            let _ = query.get("service");
        }
        let _ = percent_decode(&text);
    }

    #[test]
    fn percent_encoding_round_trips(name in "[a-z]{1,8}", value in any::<String>()) {
        let encoded: String = value
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect();
        let query = Query::parse(&format!("{name}={encoded}")).unwrap();
        prop_assert_eq!(query.get(&name), Some(value.as_str()));
    }

    #[test]
    fn percent_decoding_matches_the_reference(text in url_text()) {
        prop_assert_eq!(percent_decode(&text), reference_decode(&text), "{:?}", text);
    }

    #[test]
    fn query_parsing_matches_the_reference(query in url_text()) {
        match (Query::parse(&query), reference_query(&query)) {
            (Ok(parsed), Some(pairs)) => {
                for (name, _) in &pairs {
                    let expected: Vec<&str> = pairs
                        .iter()
                        .filter(|(known, _)| known == name)
                        .map(|(_, value)| value.as_str())
                        .collect();
                    let got: Vec<&str> = parsed.get_all(name).collect();
                    prop_assert_eq!(got, expected, "{:?}", query);
                }
            }
            (Err(err), None) => prop_assert_eq!(err.status(), 400),
            (parsed, expected) => {
                prop_assert!(false, "{:?}: got {:?}, expected {:?}", query, parsed, expected);
            }
        }
    }

    #[test]
    fn escaped_bytes_decode_exactly_when_they_are_utf8(
        chunks in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1..3),
                Just(vec![0xEF, 0xBF, 0xBD]),
                Just(vec![0xEF, 0xBF]),
                any::<char>().prop_map(|c| c.to_string().into_bytes()),
            ],
            0..8,
        )
    ) {
        let bytes = chunks.concat();
        let encoded: String = bytes.iter().map(|b| format!("%{b:02x}")).collect();
        let expected = String::from_utf8(bytes).ok();
        prop_assert_eq!(percent_decode(&encoded), expected.clone());
        let query = Query::parse(&format!("v={encoded}"));
        prop_assert_eq!(query.ok().and_then(|q| q.get("v").map(str::to_owned)), expected);
    }

    #[test]
    fn a_malformed_escape_is_always_refused(
        before in "[a-z0-9=+]{0,4}",
        inner in "%([g-zG-Z+ %-][0-9a-fA-F]?|[0-9a-fA-F][g-zG-Z+ %-])",
        after in "[a-z0-9=+]{0,4}",
        cut in "%[0-9a-fA-F]?",
    ) {
        for text in [format!("{before}{inner}{after}"), format!("{before}{cut}")] {
            let refused = Query::parse(&text).map_err(|err| err.status()).err();
            prop_assert_eq!(refused, Some(400), "{:?}", text);
            prop_assert_eq!(percent_decode(&text), None, "{:?}", text);
        }
    }

    #[test]
    fn routing_never_panics(method in "[A-Z]{0,8}", path in tricky()) {
        if let Ok(Route::ServiceNodes(service)) = route(&method, &path) {
            prop_assert!(!service.contains('/') || path.contains("%2F") || path.contains("%2f"));
        }
    }

    #[test]
    fn accepted_service_names_follow_the_rules(name in tricky()) {
        if validate_service(&name).is_ok() {
            prop_assert!((1..=128).contains(&name.len()));
            prop_assert!(name.chars().all(is_service_char));
        }
    }

    #[test]
    fn valid_service_names_are_accepted(name in "[A-Za-z0-9._-]{1,128}") {
        prop_assert!(validate_service(&name).is_ok());
    }

    #[test]
    fn monitor_lists_are_bounded_and_valid(list in tricky()) {
        if let Ok(names) = parse_monitor_list(&list) {
            prop_assert!(names.len() <= 64);
            for name in &names {
                prop_assert!(validate_service(name).is_ok());
            }
        }
    }

    #[test]
    fn ports_are_1_to_65535(text in "[-+0-9a-z ]{0,7}") {
        if let Ok(port) = parse_port(&text) {
            prop_assert!(port >= 1);
            prop_assert!(text.bytes().all(|b| b.is_ascii_digit()));
            prop_assert_eq!(port.to_string(), text.trim_start_matches('0'));
        }
    }

    #[test]
    fn hosts_are_canonical(text in tricky()) {
        if let Ok(host) = Host::parse(&text) {
            let again = Host::parse(host.as_str()).expect("a canonical host parses");
            prop_assert_eq!(again.as_str(), host.as_str());
            prop_assert!(host.as_str().len() <= 253 || host.as_str().contains(':'));
        }
    }

    #[test]
    fn any_ip_address_is_a_host(ip in any::<std::net::IpAddr>(), port in 1u16..) {
        let host = Host::parse(&ip.to_string()).unwrap();
        let node = Node::at(host, port);
        prop_assert_eq!(Node::parse_value(&node.to_string()), Some(node));
    }

    #[test]
    fn node_values_never_panic_and_round_trip(value in tricky()) {
        if let Some(node) = Node::parse_value(&value) {
            prop_assert_eq!(Node::parse_value(&node.to_string()), Some(node));
        }
    }

    #[test]
    fn event_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_event(&body);
    }

    #[test]
    fn accepted_events_are_well_formed(
        event_type in ".{0,20}",
        services in prop::collection::vec(tricky(), 0..4),
        broadcast in any::<Option<bool>>(),
    ) {
        let body = serde_json::json!({
            "event_type": event_type,
            "services": services,
            "broadcast": broadcast,
        });
        if let Ok(event) = parse_event(body.to_string().as_bytes()) {
            prop_assert!(!event.event_type.is_empty());
            match event.audience {
                crate::hub::Audience::Everyone => prop_assert_eq!(broadcast, Some(true)),
                crate::hub::Audience::Services(names) => {
                    prop_assert!(!names.is_empty());
                    for name in names {
                        prop_assert!(validate_service(&name).is_ok());
                    }
                }
            }
        }
    }

    #[test]
    fn socket_parameters_never_panic(query in tricky()) {
        if let Ok(query) = Query::parse(&query) {
            let _ = parameters(&Route::Register, &query);
            let _ = parameters(&Route::Monitor, &query);
        }
    }

    #[test]
    fn accepted_tags_follow_the_rules(list in tricky()) {
        if let Ok(tags) = parse_tags(&list) {
            prop_assert!(tags.len() <= MAX_TAGS);
            for (i, tag) in tags.iter().enumerate() {
                prop_assert!((1..=MAX_TAG).contains(&tag.len()));
                prop_assert!(tag.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b)));
                prop_assert!(!tags[..i].contains(tag), "each tag once");
            }
        }
    }

    #[test]
    fn valid_tag_lists_are_accepted(tags in prop::collection::vec("[A-Za-z0-9.:_-]{1,64}", 0..=32)) {
        let parsed = parse_tags(&tags.join(",")).unwrap();
        let mut expected: Vec<&String> = Vec::new();
        for tag in &tags {
            if !expected.contains(&tag) {
                expected.push(tag);
            }
        }
        prop_assert_eq!(parsed.iter().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn weights_are_1_to_65535(text in "[-+0-9a-z .]{0,7}") {
        if let Ok(weight) = parse_weight(&text) {
            prop_assert!(weight >= 1);
            prop_assert!(text.bytes().all(|b| b.is_ascii_digit()));
            prop_assert_eq!(weight.to_string(), text.trim_start_matches('0'));
        }
    }

    #[test]
    fn accepted_meta_follows_the_rules(
        pairs in prop::collection::vec((tricky(), tricky()), 0..6),
        long in ".{0,600}",
    ) {
        let mut named: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(key, value)| (format!("meta.{key}"), value))
            .collect();
        named.push(("meta.long".into(), long));
        if let Ok(meta) = parse_meta(named.iter().map(|(n, v)| (n.as_str(), v.as_str()))) {
            for (key, value) in &meta {
                prop_assert!((1..=MAX_META_KEY).contains(&key.len()));
                prop_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
                prop_assert!(value.len() <= MAX_META_VALUE);
            }
            prop_assert!(meta.windows(2).all(|w| w[0].0 < w[1].0), "sorted, each key once");
        }
    }

    #[test]
    fn register_queries_with_descriptions_never_panic(
        tags in tricky(), weight in tricky(), key in tricky(), value in tricky(),
    ) {
        let text = format!(
            "service=api&ip=10.0.0.1&port=80&tags={}&weight={}&meta.{}={}",
            form(&tags), form(&weight), form(&key), form(&value)
        );
        if let Ok(query) = Query::parse(&text)
            && let Ok((Some((_, node)), _, _)) = parameters(&Route::Register, &query)
        {
            prop_assert_eq!(node.about.status, None);
            prop_assert_eq!(crate::value::decode(&crate::value::encode(&node)), Some(node));
        }
    }

    #[test]
    fn etcd_values_never_panic_and_round_trip(value in tricky(), json in json_value()) {
        for text in [value, json] {
            if let Some(node) = crate::value::decode(&text) {
                prop_assert_eq!(crate::value::decode(&crate::value::encode(&node)), Some(node));
            }
        }
    }

    #[test]
    fn statuses_parse_only_their_names(text in "[a-z]{0,9}") {
        if let Ok(status) = Status::parse(&text) {
            prop_assert_eq!(status.as_str(), text);
        }
    }

    #[test]
    fn status_frames_never_panic_and_follow_the_rules(
        text in tricky(),
        status in prop::sample::select(vec!["passing", "warning", "critical", "draining", "ok", ""]),
        note in ".{0,300}",
    ) {
        let frame = serde_json::json!({"status": status, "note": note}).to_string();
        for text in [text, frame] {
            if let Some(change) = crate::status::parse_report(&text) {
                let crate::status::StatusChange::Reported(status, note) = change else {
                    panic!("a frame is a report");
                };
                prop_assert!(Status::parse(status.as_str()).is_ok());
                prop_assert!(note.is_none_or(|n| !n.is_empty() && n.len() <= 256));
            }
        }
    }

    #[test]
    fn check_parameters_follow_the_rules(
        interval in "[-+0-9a-z .]{0,6}",
        timeout in "[-+0-9a-z .]{0,7}",
        path in tricky(),
    ) {
        if let Ok(every) = crate::check::parse_interval(&interval) {
            prop_assert!((1..=3600).contains(&every.as_secs()));
            prop_assert!(every.subsec_nanos() == 0);
            if let Ok(within) = crate::check::parse_timeout(&timeout, every) {
                prop_assert!(!within.is_zero() && within < every);
            }
        }
        if let Ok(path) = crate::check::parse_path(&path) {
            prop_assert!(path.starts_with('/') && path.len() <= 1024);
            prop_assert!(path.bytes().all(|b| b.is_ascii_graphic()));
        }
    }

    #[test]
    fn decimal_timeouts_read_exactly(millis in 1u64..3_600_000) {
        let text = format!("{}.{:03}", millis / 1000, millis % 1000);
        let interval = std::time::Duration::from_secs(3600);
        prop_assert_eq!(
            crate::check::parse_timeout(&text, interval).unwrap(),
            std::time::Duration::from_millis(millis)
        );
    }

    #[test]
    fn http_status_lines_never_panic(head in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Some((status, note)) = crate::check::status_of(&head) {
            prop_assert!(status == Status::Passing || note.is_some());
        }
    }
}

/// `text` percent-encoded byte by byte, so any text survives a query string.
fn form(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// JSON values shaped like registration values, right and wrong: an `Addr` of tricky text and
/// `Metadata` whose fields have the right names and any types.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
        tricky().prop_map(serde_json::Value::from),
        prop::collection::vec(tricky(), 0..4).prop_map(serde_json::Value::from),
    ];
    let fields = prop::collection::vec(
        (
            prop::sample::select(vec!["tags", "weight", "meta", "status", "note", "x"]),
            prop_oneof![
                leaf.clone(),
                prop::collection::btree_map(tricky(), leaf, 0..3)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ],
        ),
        0..5,
    );
    (tricky(), fields).prop_map(|(addr, fields)| {
        let metadata: serde_json::Map<String, serde_json::Value> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        serde_json::json!({"Addr": addr, "Metadata": metadata}).to_string()
    })
}
