//! Who leads each service: every campaign under the election namespace, ordered as etcd's own
//! election orders them (lowest create revision first), and the leadership each service's
//! subscribers were last told of.
//!
//! Both backends feed it (the etcd backend from its election watch, the embedded one from its
//! registrations), so every hound on one etcd cluster derives the same leader from the same
//! revisions, as it derives the same membership.

use std::collections::{BTreeMap, HashMap};

use crate::message::json_string;
use crate::names::Node;

/// One campaign key, as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    /// The key's create revision: the lowest leads.
    pub create_revision: i64,
    /// The campaigner's value: `ip:port` for hound's own campaigns, anything for others'.
    pub value: String,
}

/// Who leads one service's election, and the fencing token that goes with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    /// The leader's value; `None` when nobody campaigns.
    pub leader: Option<String>,
    /// The leader key's create revision; with no leader, the revision at which the last
    /// campaigner left (0 if none ever campaigned). It only rises: every new key's create
    /// revision is above every revision before it.
    pub rev: i64,
}

impl Leadership {
    /// `{"ip":…,"port":…}` for a `host:port` value, `{"value":"…"}` for any other (another
    /// client's campaign), `null` without a leader.
    pub fn leader_json(&self) -> String {
        match &self.leader {
            None => "null".to_owned(),
            Some(value) => match Node::parse_value(value) {
                Some(node) => format!(
                    "{{\"ip\":{},\"port\":{}}}",
                    json_string(node.host.as_str()),
                    node.port
                ),
                None => format!("{{\"value\":{}}}", json_string(value)),
            },
        }
    }

    /// `{"leader":…,"rev":N}`, the answer of `GET /etcd/leader/:service`.
    pub fn json(&self) -> String {
        format!("{{\"leader\":{},\"rev\":{}}}", self.leader_json(), self.rev)
    }
}

/// One service's campaigns.
#[derive(Debug, Default)]
struct Election {
    /// `(create revision, key)` → value; the first leads. The key breaks ties (one etcd
    /// transaction can create two keys at one revision) the same way on every hound.
    queue: BTreeMap<(i64, String), String>,
    /// key → create revision, to find a key's place in `queue`.
    revisions: HashMap<String, i64>,
    /// What the subscribers were last told.
    told: Leadership,
}

impl Election {
    fn current(&self) -> Option<Leadership> {
        self.queue
            .iter()
            .next()
            .map(|((rev, _), value)| Leadership {
                leader: Some(value.clone()),
                rev: *rev,
            })
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.revisions.remove(key) {
            Some(rev) => self.queue.remove(&(rev, key.to_owned())).is_some(),
            None => false,
        }
    }

    /// Records the leadership after a change at `revision`; the new one if it differs from
    /// what the subscribers were told.
    fn settle(&mut self, revision: i64) -> Option<Leadership> {
        let now = match self.current() {
            Some(leadership) => leadership,
            None if self.told.leader.is_none() => return None,
            None => Leadership {
                leader: None,
                rev: revision,
            },
        };
        (now != self.told).then(|| {
            self.told = now.clone();
            now
        })
    }
}

/// Every service's election. Keys are the part after `<election-namespace>/<service>/`.
#[derive(Debug, Default)]
pub struct Elections {
    services: HashMap<String, Election>,
}

impl Elections {
    /// Records that `key` of `service` holds `campaign` (at `revision`); the new leadership if
    /// the leader changed.
    pub fn put(
        &mut self,
        service: &str,
        key: &str,
        campaign: Campaign,
        revision: i64,
    ) -> Option<Leadership> {
        let election = self.services.entry(service.to_owned()).or_default();
        election.remove(key);
        election
            .revisions
            .insert(key.to_owned(), campaign.create_revision);
        election
            .queue
            .insert((campaign.create_revision, key.to_owned()), campaign.value);
        election.settle(revision)
    }

    /// Records that `key` of `service` is gone (at `revision`); the new leadership if the
    /// leader changed.
    pub fn remove(&mut self, service: &str, key: &str, revision: i64) -> Option<Leadership> {
        let election = self.services.get_mut(service)?;
        if !election.remove(key) {
            return None;
        }
        election.settle(revision)
    }

    /// The leadership of `service` as its subscribers know it.
    pub fn leadership(&self, service: &str) -> Leadership {
        self.services
            .get(service)
            .map(|election| election.told.clone())
            .unwrap_or_default()
    }

    /// Takes the campaigns of `fresh` (a read of the whole namespace at `revision`) and
    /// returns each service whose leadership changed, with the new one.
    pub fn replace(&mut self, fresh: Elections, revision: i64) -> Vec<(String, Leadership)> {
        let mut changed = Vec::new();
        let mut old = std::mem::take(&mut self.services);
        for (service, mut election) in fresh.services {
            election.told = old
                .remove(&service)
                .map(|known| known.told)
                .unwrap_or_default();
            if let Some(leadership) = election.settle(revision) {
                changed.push((service.clone(), leadership));
            }
            self.services.insert(service, election);
        }
        // Services nobody campaigns for any more.
        for (service, mut election) in old {
            election.queue.clear();
            election.revisions.clear();
            if let Some(leadership) = election.settle(revision) {
                changed.push((service.clone(), leadership));
            }
            self.services.insert(service, election);
        }
        changed.sort_by(|a, b| a.0.cmp(&b.0));
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(create_revision: i64, value: &str) -> Campaign {
        Campaign {
            create_revision,
            value: value.into(),
        }
    }

    fn leader(value: &str, rev: i64) -> Option<Leadership> {
        Some(Leadership {
            leader: Some(value.into()),
            rev,
        })
    }

    #[test]
    fn the_lowest_create_revision_leads_and_rev_only_rises() {
        let mut elections = Elections::default();
        assert_eq!(elections.leadership("api"), Leadership::default());
        assert_eq!(
            elections.put("api", "b", campaign(5, "10.0.0.1:80"), 5),
            leader("10.0.0.1:80", 5)
        );
        assert_eq!(
            elections.put("api", "a", campaign(7, "10.0.0.2:80"), 7),
            None
        );
        // A put that keeps the key's create revision (a takeover) changes nothing.
        assert_eq!(
            elections.put("api", "b", campaign(5, "10.0.0.1:80"), 8),
            None
        );
        assert_eq!(elections.remove("api", "a", 9), None);
        assert_eq!(elections.put("api", "c", campaign(10, "x"), 10), None);
        assert_eq!(elections.remove("api", "b", 11), leader("x", 10));
        assert_eq!(
            elections.remove("api", "c", 12),
            Some(Leadership {
                leader: None,
                rev: 12
            })
        );
        assert_eq!(elections.remove("api", "c", 13), None);
        assert_eq!(elections.leadership("api").rev, 12);
    }

    #[test]
    fn a_resync_reports_only_what_changed() {
        let mut elections = Elections::default();
        elections.put("api", "a", campaign(3, "10.0.0.1:80"), 3);
        elections.put("db", "a", campaign(4, "10.0.0.1:5432"), 4);
        let mut fresh = Elections::default();
        fresh.put("api", "a", campaign(3, "10.0.0.1:80"), 3);
        fresh.put("web", "z", campaign(9, "10.0.0.9:80"), 9);
        let changed = elections.replace(fresh, 20);
        assert_eq!(
            changed,
            [
                (
                    "db".to_owned(),
                    Leadership {
                        leader: None,
                        rev: 20
                    }
                ),
                ("web".to_owned(), leader("10.0.0.9:80", 9).unwrap()),
            ]
        );
        assert_eq!(
            elections.leadership("api"),
            leader("10.0.0.1:80", 3).unwrap()
        );
    }

    #[test]
    fn leaders_are_nodes_or_raw_values() {
        let node = leader("[::1]:8080", 4).unwrap();
        assert_eq!(
            node.json(),
            r#"{"leader":{"ip":"::1","port":8080},"rev":4}"#
        );
        let other = leader("worker \"7\"", 6).unwrap();
        assert_eq!(
            other.json(),
            r#"{"leader":{"value":"worker \"7\""},"rev":6}"#
        );
        assert_eq!(Leadership::default().json(), r#"{"leader":null,"rev":0}"#);
    }
}
