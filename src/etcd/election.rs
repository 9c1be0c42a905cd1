//! The election watch: mirrors the election namespace into the hub's elections the way the
//! service watch mirrors the service namespace (read at R, watch from R+1, resume after a
//! break, re-read after a compaction), so every hound derives the same leader from the same
//! revisions.

use super::health::{ELECTION_WATCH, HealthState, WatchHealth};
use super::watch::{Break, Feed, Position, Watch, read_prefix};
use crate::election::{Campaign, Elections};
use crate::keys::ElectionKeys;
use crate::metrics;
use etcd_client::{EventType, KeyValue, WatchOptions, WatchResponse};

/// The election watch's feed.
pub(super) struct ElectionFeed {
    keys: ElectionKeys,
}

impl ElectionFeed {
    pub fn new(keys: ElectionKeys) -> ElectionFeed {
        ElectionFeed { keys }
    }

    /// Reads every campaign into fresh elections, at `at` if etcd still holds it (else at the
    /// latest revision), with the revision and cluster id read at.
    async fn read(&self, watch: &Watch, at: Option<i64>) -> Result<(Elections, i64, u64), Break> {
        let (response, revision) = read_prefix(&watch.members, self.keys.prefix(), at).await?;
        let cluster = response.header().map_or(0, |h| h.cluster_id());
        let mut elections = Elections::default();
        for kv in response.kvs() {
            if let Some((service, key, campaign)) = self.campaign(kv) {
                elections.put(service, key, campaign, revision);
            }
        }
        Ok((elections, revision, cluster))
    }

    /// `(service, key, campaign)` of a campaign key.
    fn campaign<'k>(&self, kv: &'k KeyValue) -> Option<(&'k str, &'k str, Campaign)> {
        let (service, key) = self.keys.parse_campaign(kv.key_str().ok()?)?;
        let campaign = Campaign {
            create_revision: kv.create_revision(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
        };
        Some((service, key, campaign))
    }
}

impl Feed for ElectionFeed {
    const NAME: &'static str = ELECTION_WATCH;

    fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    fn health(state: &HealthState) -> &WatchHealth {
        &state.elections
    }

    /// Watches from the revision after the last one applied; with nothing to resume from,
    /// reads the namespace first and resyncs the hub's elections with it.
    async fn options(&self, watch: &mut Watch) -> Result<WatchOptions, Break> {
        let start = match watch.position.resume_from {
            Some(revision) => revision,
            None => {
                watch.check_store().await?;
                let at = watch.position.read_at.take();
                let (elections, revision, cluster) = self.read(watch, at).await?;
                watch.hub.resync_elections(elections, revision);
                watch.position.cluster = Some(cluster);
                log::info!("read {} at revision {revision}", self.prefix());
                revision + 1
            }
        };
        watch.position.resume_from = Some(start);
        Ok(WatchOptions::new()
            .with_prefix()
            .with_progress_notify()
            .with_start_revision(start))
    }

    async fn apply(&self, watch: &mut Watch, response: &WatchResponse) {
        let mut last = None;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            last = Some(revision);
            let Some((service, key)) = kv
                .key_str()
                .ok()
                .and_then(|key| self.keys.parse_campaign(key))
            else {
                watch.hub.advance_elections(revision);
                continue;
            };
            let campaign = match event.event_type() {
                EventType::Put => self.campaign(kv).map(|(_, _, campaign)| campaign),
                EventType::Delete => None,
            };
            watch.hub.apply_campaign(service, key, campaign, revision);
        }
        if last.is_none() && !response.created() {
            // A progress notification vouches for every revision up to its header's.
            let revision = response.header().map_or(0, |h| h.revision());
            if revision > 0 {
                watch.hub.advance_elections(revision);
                last = Some(revision);
            }
        }
        if let Some(revision) = last {
            watch.position.resume_from = Some(revision + 1);
        }
    }

    /// Re-reads the namespace at the next session.
    fn start_afresh(&self, why: &str, position: &mut Position) {
        metrics::WATCH_RESYNCS.add(1);
        log::warn!("{why}; re-reading {}", self.prefix());
        *position = Position::default();
    }
}
