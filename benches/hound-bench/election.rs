//! Leader change (issue 15): how soon monitors on another hound hear of a new leader after the
//! leader's socket closes, against a plain etcd watch of the election seeing the old leader's
//! key go, measured in the same rounds.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::etcd::{EtcdClient, Watcher};
use crate::procs::{Etcd, Hound};
use crate::report::{Report, Row, Verdict};
use crate::stats::{Samples, ms, ratio, times, triple};
use crate::{NAMESPACE, Options, ws};

const PROMPT: Duration = Duration::from_secs(5);
const SERVICE: &str = "lead";
const ELECTION: &str = "election/lead/";

/// Reads until a LEADER whose leader has port `port` (`None`: no leader); returns its rev.
fn wait_leader(monitor: &mut ws::Ws, port: Option<u64>) -> Result<i64, String> {
    let deadline = Instant::now() + PROMPT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let text = ws::read_text(monitor, left)?;
        let message: Value =
            serde_json::from_str(text.as_str()).map_err(|err| format!("not JSON: {err}"))?;
        let body = &message["body"];
        if body["key_event"] == "LEADER" && body["leader"]["port"].as_u64() == port {
            return body["rev"].as_i64().ok_or("LEADER without rev".into());
        }
    }
}

fn campaign(hound: &Hound, port: u32) -> Result<ws::Ws, String> {
    let path = format!("/etcd/register?service={SERVICE}&ip=10.0.0.3&port={port}&campaign=1");
    ws::connect(hound.addr(), &path, PROMPT)
}

/// Each round: a leader and a queued campaigner on one hound, a monitor on another; the
/// leader's socket closes; measured until the plain watch sees its campaign key deleted
/// (the moment etcd's election has the next leader), and until the monitor gets LEADER.
pub fn leader_change(options: &Options, etcd: &Etcd, report: &mut Report) -> Result<(), String> {
    let rounds = options.pick(100, 20);
    let (campaigners, _) = Hound::start(&etcd.url(), NAMESPACE, 0)?;
    let (other, _) = Hound::start(&etcd.url(), NAMESPACE, 0)?;
    let reader = EtcdClient::connect(&etcd.url())?;
    let watcher = Watcher::start(&etcd.url(), ELECTION)?;
    let mut monitor = ws::connect(
        other.addr(),
        &format!("/etcd/monitor?monitor={SERVICE}"),
        PROMPT,
    )?;
    ws::read_text(&mut monitor, PROMPT)?;

    let (mut to_watch, mut to_leader) = (Vec::new(), Vec::new());
    let mut last_rev = 0;
    for round in 0..rounds {
        let (first, second) = (30_000 + 2 * round, 30_001 + 2 * round);
        let mut leader = campaign(&campaigners, first)?;
        let rev = wait_leader(&mut monitor, Some(u64::from(first)))?;
        let next = campaign(&campaigners, second)?;
        let value = format!("10.0.0.3:{first}");
        let key = reader
            .get_prefix(ELECTION)?
            .into_iter()
            .find(|(_, v)| *v == value)
            .map(|(k, _)| k)
            .ok_or_else(|| format!("no campaign key holds {value}"))?;
        watcher.drain();
        let closing = Instant::now();
        ws::send_close(&mut leader);
        let deleted = watcher
            .wait_for(PROMPT, |e| !e.put && e.key == key)
            .ok_or_else(|| format!("the plain watch did not see {key} go"))?;
        to_watch.push(deleted.at - closing);
        let new_rev = wait_leader(&mut monitor, Some(u64::from(second)))?;
        to_leader.push(closing.elapsed());
        if new_rev <= rev || rev <= last_rev {
            return Err(format!("rev did not rise: {last_rev}, {rev}, {new_rev}"));
        }
        last_rev = new_rev;
        ws::finish_close(leader, Duration::from_secs(2));
        let mut next = next;
        ws::send_close(&mut next);
        wait_leader(&mut monitor, None)?;
        ws::finish_close(next, Duration::from_secs(2));
    }
    let (to_watch, to_leader) = (Samples::new(to_watch), Samples::new(to_leader));
    let factor = ratio(to_leader.p99(), to_watch.p99());
    report.row(Row {
        section: "8",
        what: format!(
            "Leader change: leader's close frame sent → `LEADER` at a monitor on another hound \
             (p50 / p99 / max), {rounds} rounds; baseline: a plain etcd watch sees the leader's \
             campaign key deleted"
        ),
        hound: triple(&to_leader),
        baseline: triple(&to_watch),
        ratio: format!("{} (p99)", times(factor)),
        target: "p99 ≤ 2× the plain watch".into(),
        verdict: Verdict::from(factor <= 2.0),
    });
    eprintln!(
        "hound-bench: leader change p99 {} vs plain watch p99 {}",
        ms(to_leader.p99()),
        ms(to_watch.p99())
    );
    Ok(())
}
