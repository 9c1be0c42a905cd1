//! The JSON messages hound pushes to sockets, serialised once and shared by every recipient,
//! in both framings: a WebSocket text frame, and a server-sent event.

use std::sync::{Arc, OnceLock};

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::names::Node;

/// Why a service message was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEvent {
    /// The current membership, sent on subscription and after a re-read of etcd.
    Sync,
    /// A node was added or changed.
    Put,
    /// A node was removed explicitly.
    Delete,
    /// A node vanished because its lease expired.
    Expire,
}

impl KeyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEvent::Sync => "SYNC",
            KeyEvent::Put => "PUT",
            KeyEvent::Delete => "DELETE",
            KeyEvent::Expire => "EXPIRE",
        }
    }
}

/// How a connection carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One WebSocket text frame per message.
    WebSocket,
    /// One server-sent event per message: `data: <json>` and an empty line.
    EventStream,
}

/// A message as it goes on the wire: one complete WebSocket text frame, and the same message as
/// a server-sent event, made the first time an event stream needs it. Frames a server sends
/// are not masked, so the same bytes serve every socket; cloning shares them.
#[derive(Debug, Clone)]
pub struct Frame {
    encoded: Arc<Encoded>,
}

#[derive(Debug)]
struct Encoded {
    bytes: Box<[u8]>,
    header_len: usize,
    /// Built once, by the first event stream the message goes to, and shared by the rest.
    event: OnceLock<Box<[u8]>>,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.encoded.bytes == other.encoded.bytes
    }
}

impl Eq for Frame {}

impl Frame {
    /// Frames `text` as one final, unmasked text frame (RFC 6455, section 5.2).
    pub fn text(text: &str) -> Frame {
        let payload = text.as_bytes();
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        let length = payload.len() as u64;
        let header_len = header.len(length);
        let mut bytes = Vec::with_capacity(header_len + payload.len());
        // Writing to a Vec cannot fail.
        let _ = header.format(length, &mut bytes);
        bytes.extend_from_slice(payload);
        Frame {
            encoded: Arc::new(Encoded {
                bytes: bytes.into(),
                header_len,
                event: OnceLock::new(),
            }),
        }
    }

    /// The whole frame, header included.
    pub fn wire(&self) -> &[u8] {
        &self.encoded.bytes
    }

    /// The message as one server-sent event. hound's messages are JSON without raw line
    /// breaks (serde_json escapes them), so one `data:` line carries each.
    pub fn event(&self) -> &[u8] {
        self.encoded.event.get_or_init(|| {
            let payload = &self.encoded.bytes[self.encoded.header_len..];
            let mut event = Vec::with_capacity(payload.len() + 8);
            event.extend_from_slice(b"data: ");
            event.extend_from_slice(payload);
            event.extend_from_slice(b"\n\n");
            event.into()
        })
    }

    /// The message in `framing`.
    pub fn framed(&self, framing: Framing) -> &[u8] {
        match framing {
            Framing::WebSocket => self.wire(),
            Framing::EventStream => self.event(),
        }
    }

    /// The message text.
    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        // The payload was a `&str` when the frame was made.
        std::str::from_utf8(&self.encoded.bytes[self.encoded.header_len..]).unwrap_or_default()
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self.wire()
    }
}

/// The namespace of a broadcast custom event.
pub const BROADCAST_NAMESPACE: &str = "*";

/// `[{"ip":"10.0.0.1","port":80},…]` for nodes already sorted by (ip, port), each with what
/// it sets of `tags`, `weight`, `meta`, `status` and `note` after its port (a 1.0 node sets
/// none, so 1.0 clients see exactly what they saw before).
pub fn nodes_json(nodes: &[&Node]) -> String {
    let mut json = String::with_capacity(2 + nodes.len() * 32);
    json.push('[');
    for (i, node) in nodes.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str("{\"ip\":");
        json.push_str(&json_string(node.host.as_str()));
        json.push_str(",\"port\":");
        json.push_str(&node.port.to_string());
        node.about.write_json_fields(&mut json);
        json.push('}');
    }
    json.push(']');
    json
}

/// `{"namespace":S,"body":{"key_event":E,"services":[…]}}`.
pub fn service_event(service: &str, event: KeyEvent, nodes_json: &str) -> Frame {
    let text = format!(
        "{{\"namespace\":{},\"body\":{{\"key_event\":\"{}\",\"services\":{}}}}}",
        json_string(service),
        event.as_str(),
        nodes_json
    );
    Frame::text(&text)
}

/// `{"namespace":S,"body":{"event_type":T,"event_body":B}}`; S is `*` for a broadcast.
pub fn custom_event(namespace: &str, event_type: &str, event_body: &str) -> Frame {
    let text = format!(
        "{{\"namespace\":{},\"body\":{{\"event_type\":{},\"event_body\":{}}}}}",
        json_string(namespace),
        json_string(event_type),
        json_string(event_body)
    );
    Frame::text(&text)
}

/// `{"namespace":S,"body":{"key_event":"LEADER","leader":L,"rev":N}}`: who leads the
/// service's election (see `election.rs`).
pub fn leader_event(service: &str, leadership: &crate::election::Leadership) -> Frame {
    let text = format!(
        "{{\"namespace\":{},\"body\":{{\"key_event\":\"LEADER\",\"leader\":{},\"rev\":{}}}}}",
        json_string(service),
        leadership.leader_json(),
        leadership.rev
    );
    Frame::text(&text)
}

/// A JSON string literal with every character escaped as JSON requires.
pub fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(frame: &Frame) -> Value {
        serde_json::from_str(frame.as_str()).expect("valid JSON")
    }

    #[test]
    fn service_event_shape() {
        let nodes = [
            Node::parse_value("10.0.0.1:80").unwrap(),
            Node::parse_value("[::1]:8080").unwrap(),
        ];
        let refs: Vec<&Node> = nodes.iter().collect();
        let frame = service_event("engine", KeyEvent::Put, &nodes_json(&refs));
        assert_eq!(
            parse(&frame),
            json!({"namespace":"engine","body":{"key_event":"PUT","services":[
                {"ip":"10.0.0.1","port":80},{"ip":"::1","port":8080}]}})
        );
    }

    #[test]
    fn a_node_carries_only_what_it_sets() {
        let mut node = Node::parse_value("10.0.0.7:8080").unwrap();
        node.about.tags = vec!["v2".into()];
        node.about.meta = vec![("zone".into(), "eu \"1\"".into())];
        let frame = service_event("api", KeyEvent::Put, &nodes_json(&[&node]));
        assert_eq!(
            parse(&frame)["body"]["services"],
            json!([{"ip":"10.0.0.7","port":8080,"tags":["v2"],"meta":{"zone":"eu \"1\""}}])
        );
        node.about.weight = 3;
        node.about.status = Some(crate::describe::Status::Critical);
        node.about.note = Some("HTTP 500".into());
        let frame = service_event("api", KeyEvent::Put, &nodes_json(&[&node]));
        assert_eq!(
            parse(&frame)["body"]["services"][0],
            json!({"ip":"10.0.0.7","port":8080,"tags":["v2"],"weight":3,
                "meta":{"zone":"eu \"1\""},"status":"critical","note":"HTTP 500"})
        );
    }

    #[test]
    fn empty_membership_is_an_empty_list() {
        let frame = service_event("api", KeyEvent::Sync, &nodes_json(&[]));
        assert_eq!(
            parse(&frame),
            json!({"namespace":"api","body":{"key_event":"SYNC","services":[]}})
        );
    }

    #[test]
    fn custom_event_escapes_its_strings() {
        let frame = custom_event("*", "say \"hi\"", "line\nbreak\u{1}");
        assert_eq!(
            parse(&frame),
            json!({"namespace":"*","body":{"event_type":"say \"hi\"","event_body":"line\nbreak\u{1}"}})
        );
    }

    #[test]
    fn frames_carry_the_three_length_encodings() {
        for len in [0usize, 125, 126, 0xFFFF, 0x10000] {
            let text = "x".repeat(len);
            let frame = Frame::text(&text);
            let mut reader = std::io::Cursor::new(frame.wire().to_vec());
            let parsed = tungstenite::protocol::frame::FrameHeader::parse(&mut reader)
                .expect("a valid header")
                .expect("a complete header");
            assert_eq!(parsed.1, len as u64, "length of a {len}-byte frame");
            assert!(parsed.0.is_final && parsed.0.mask.is_none());
            assert_eq!(reader.position() as usize + len, frame.wire().len());
            assert_eq!(frame.as_str(), text);
        }
    }

    #[test]
    fn an_event_is_one_data_line_built_once_and_shared() {
        let frame = custom_event("*", "t", "line\nbreak");
        let copy = frame.clone();
        let event = frame.event();
        assert!(event.starts_with(b"data: {") && event.ends_with(b"}\n\n"));
        assert_eq!(
            event.iter().filter(|&&b| b == b'\n').count(),
            2,
            "one line, one blank"
        );
        assert_eq!(&event[6..event.len() - 2], frame.as_str().as_bytes());
        assert!(
            std::ptr::eq(copy.event(), event),
            "shared by every recipient"
        );
        assert_eq!(frame.framed(Framing::WebSocket), frame.wire());
    }

    #[test]
    fn every_key_event_has_its_wire_name() {
        let names: Vec<&str> = [
            KeyEvent::Sync,
            KeyEvent::Put,
            KeyEvent::Delete,
            KeyEvent::Expire,
        ]
        .iter()
        .map(|e| e.as_str())
        .collect();
        assert_eq!(names, ["SYNC", "PUT", "DELETE", "EXPIRE"]);
    }
}
