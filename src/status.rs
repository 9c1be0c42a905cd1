//! A registered node's status and the one rule, shared by both backends, that makes it: what
//! the service reported over its socket, what hound's check found, and drain.
//!
//! The worse of the report and the check stands (passing < warning < critical < draining), so
//! neither can hide the other's bad news, and a service that says `draining` stays out of the
//! healthy answers whatever its check finds; hound's own drain (SIGTERM with `--drain-grace`)
//! overrides both. A node without a check that is passing shows no status at all, as in 1.0; a
//! checked node always shows one.

use crate::describe::{Description, MAX_NOTE, Status};
use crate::names::Node;

/// A change to one registration's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    /// The service said so in a `{"status":…,"note":…}` frame on its register socket.
    Reported(Status, Option<String>),
    /// hound's check of the node found this.
    Checked(Status, Option<String>),
    /// hound is shutting down with a drain grace.
    Drain,
}

/// Reads a status frame a service sent on its register socket:
/// `{"status":"passing"|"warning"|"critical"|"draining","note":"…"}` with an optional note of
/// at most 256 bytes. `None` for anything else, which hound ignores as it always has.
pub fn parse_report(text: &str) -> Option<StatusChange> {
    let serde_json::Value::Object(frame) = serde_json::from_str(text).ok()? else {
        return None;
    };
    let status = Status::parse(frame.get("status")?.as_str()?).ok()?;
    let note = match frame.get("note") {
        None | Some(serde_json::Value::Null) => None,
        Some(note) => {
            let note = note.as_str()?;
            if note.len() > MAX_NOTE {
                return None;
            }
            (!note.is_empty()).then(|| note.to_owned())
        }
    };
    Some(StatusChange::Reported(status, note))
}

/// What one registration's status is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Condition {
    reported: Option<(Status, Option<String>)>,
    checked: Option<(Status, Option<String>)>,
    drained: bool,
}

impl Condition {
    /// The status and note the node shows (`None`: passing, shown as nothing).
    fn shown(&self) -> (Option<Status>, Option<String>) {
        if self.drained {
            return (Some(Status::Draining), None);
        }
        let worst = [&self.reported, &self.checked]
            .into_iter()
            .flatten()
            .max_by_key(|(status, _)| *status);
        match worst {
            Some((Status::Passing, _)) | None if self.checked.is_none() => (None, None),
            Some((status, note)) => (Some(*status), note.clone()),
            None => (None, None),
        }
    }
}

/// A registration as its backend holds it: the node as written, and what its status is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    node: Node,
    condition: Condition,
}

impl Registered {
    /// `node` as registered: a checked node (one whose description already carries a status,
    /// set by the upgrade's checks) starts as the check says it must, `critical`.
    pub fn new(node: Node) -> Registered {
        let condition = Condition {
            checked: node
                .about
                .status
                .map(|status| (status, node.about.note.clone())),
            ..Condition::default()
        };
        Registered { node, condition }
    }

    /// The node as it is now.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Applies `change`; the node as it now reads if that changed it (one write), `None` if
    /// the node reads the same (no write).
    pub fn change(&mut self, change: &StatusChange) -> Option<&Node> {
        match change {
            StatusChange::Reported(status, note) => {
                self.condition.reported = Some((*status, note.clone()));
            }
            StatusChange::Checked(status, note) => {
                self.condition.checked = Some((*status, note.clone()));
            }
            StatusChange::Drain => self.condition.drained = true,
        }
        let (status, note) = self.condition.shown();
        if self.node.about.status == status && self.node.about.note == note {
            return None;
        }
        self.node.about = Description {
            status,
            note,
            ..std::mem::take(&mut self.node.about)
        };
        Some(&self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    fn plain() -> Registered {
        Registered::new(Node::parse_value("10.0.0.1:80").unwrap())
    }

    fn checked() -> Registered {
        let mut node = Node::parse_value("10.0.0.1:80").unwrap();
        node.about.status = Some(Critical);
        node.about.note = Some("not checked yet".into());
        Registered::new(node)
    }

    fn shown(registered: &Registered) -> (Option<Status>, Option<&str>) {
        let about = &registered.node().about;
        (about.status, about.note.as_deref())
    }

    #[test]
    fn an_unchecked_passing_node_shows_no_status() {
        let mut node = plain();
        assert_eq!(node.change(&StatusChange::Reported(Passing, None)), None);
        let warned = StatusChange::Reported(Warning, Some("slow".into()));
        assert!(node.change(&warned).is_some());
        assert_eq!(shown(&node), (Some(Warning), Some("slow")));
        assert_eq!(node.change(&warned), None, "unchanged: no write");
        assert!(
            node.change(&StatusChange::Reported(Passing, Some("fine".into())))
                .is_some()
        );
        assert_eq!(shown(&node), (None, None), "back to 1.0's look");
    }

    #[test]
    fn a_checked_node_always_shows_its_status() {
        let mut node = checked();
        assert_eq!(shown(&node), (Some(Critical), Some("not checked yet")));
        assert!(node.change(&StatusChange::Checked(Passing, None)).is_some());
        assert_eq!(shown(&node), (Some(Passing), None));
        assert_eq!(node.change(&StatusChange::Checked(Passing, None)), None);
    }

    #[test]
    fn the_worse_of_report_and_check_stands_and_drain_overrides() {
        let mut node = checked();
        node.change(&StatusChange::Checked(Passing, None));
        node.change(&StatusChange::Reported(Warning, Some("busy".into())));
        assert_eq!(shown(&node), (Some(Warning), Some("busy")));
        node.change(&StatusChange::Checked(Critical, Some("HTTP 500".into())));
        assert_eq!(shown(&node), (Some(Critical), Some("HTTP 500")));
        node.change(&StatusChange::Reported(Draining, None));
        node.change(&StatusChange::Checked(Passing, None));
        assert_eq!(shown(&node), (Some(Draining), None), "draining sticks");
        let mut node = plain();
        node.change(&StatusChange::Reported(Critical, Some("db down".into())));
        node.change(&StatusChange::Drain);
        assert_eq!(shown(&node), (Some(Draining), None));
        assert_eq!(node.change(&StatusChange::Reported(Passing, None)), None);
    }

    #[test]
    fn status_frames() {
        assert_eq!(
            parse_report(r#"{"status":"warning","note":"slow disk"}"#),
            Some(StatusChange::Reported(Warning, Some("slow disk".into())))
        );
        assert_eq!(
            parse_report(r#"{"status":"draining"}"#),
            Some(StatusChange::Reported(Draining, None))
        );
        let long = format!(r#"{{"status":"critical","note":"{}"}}"#, "x".repeat(257));
        for ignored in [
            "hello",
            "{}",
            r#"{"status":"ok"}"#,
            r#"{"status":1}"#,
            r#"{"status":"passing","note":3}"#,
            r#"["passing"]"#,
            long.as_str(),
        ] {
            assert_eq!(parse_report(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn tags_weight_and_meta_are_kept() {
        let mut node = Node::parse_value("10.0.0.1:80").unwrap();
        node.about.tags = vec!["v2".into()];
        node.about.weight = 7;
        let mut registered = Registered::new(node);
        let changed = registered
            .change(&StatusChange::Reported(Critical, None))
            .unwrap();
        assert_eq!((changed.about.tags.len(), changed.about.weight), (1, 7));
    }
}
