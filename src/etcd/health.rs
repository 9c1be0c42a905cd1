//! What `/healthz` says about etcd: whether any member answers and whether it has raised an
//! alarm (the members' probes know), and whether both watches run (the watches know); OK only
//! when all agree.

use std::cell::{Cell, RefCell};

use crate::hub::{Health, Hub};

/// The service watch's name in log lines and in `/healthz`.
pub(super) const SERVICE_WATCH: &str = "service watch";
/// The event watch's name in log lines and in `/healthz`.
pub(super) const EVENT_WATCH: &str = "event watch";
/// The election watch's name in log lines and in `/healthz`.
pub(super) const ELECTION_WATCH: &str = "election watch";

/// What the probe and the watches know; `/healthz` is OK only when all agree.
#[derive(Debug, Default)]
pub(super) struct HealthState {
    pub etcd_answers: Cell<bool>,
    pub problem: RefCell<String>,
    /// The alarms etcd reports (`NOSPACE (member 8e9e…)`), comma-separated; empty if none.
    /// While one is raised etcd refuses writes, so hound is not healthy.
    pub alarms: RefCell<String>,
    pub services: WatchHealth,
    pub events: WatchHealth,
    pub elections: WatchHealth,
}

/// What one watch tells `/healthz`.
#[derive(Debug, Default)]
pub(super) struct WatchHealth {
    pub watched: Cell<bool>,
    /// Why the watch last broke, for `/healthz` while it is being reopened.
    pub problem: RefCell<String>,
}

impl HealthState {
    pub fn publish(&self, hub: &Hub) {
        let health = if !self.etcd_answers.get() {
            Health::Unavailable(format!("etcd does not answer: {}", self.problem.borrow()))
        } else if !self.alarms.borrow().is_empty() {
            Health::Unavailable(format!(
                "etcd raised an alarm: {}; it refuses writes until an operator clears it",
                self.alarms.borrow()
            ))
        } else if !self.services.watched.get()
            || !self.events.watched.get()
            || !self.elections.watched.get()
        {
            let mut why = Vec::new();
            for (name, watch) in [
                (SERVICE_WATCH, &self.services),
                (EVENT_WATCH, &self.events),
                (ELECTION_WATCH, &self.elections),
            ] {
                if !watch.watched.get() {
                    let problem = watch.problem.borrow();
                    let problem = if problem.is_empty() {
                        "opening"
                    } else {
                        problem.as_str()
                    };
                    why.push(format!("{name}: {problem}"));
                }
            }
            Health::Unavailable(format!(
                "the etcd watches are reconnecting: {}",
                why.join("; ")
            ))
        } else {
            Health::Ok
        };
        hub.set_health(health);
    }

    pub fn set(&self, hub: &Hub, flag: &Cell<bool>, value: bool, problem: Option<String>) {
        if let Some(problem) = problem {
            *self.problem.borrow_mut() = problem;
        }
        flag.set(value);
        self.publish(hub);
    }
}
