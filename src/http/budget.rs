//! The event budget: how many custom events, and how many bytes of them, one client and all
//! clients together may publish per second. Events are written to etcd, whose space is
//! finite: an unchecked flood raises etcd's NOSPACE alarm, and then every registration fails.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per-second allowances, each also the most that may be spent at once (a full bucket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventLimits {
    pub per_client_events: f64,
    pub per_client_bytes: f64,
    pub total_events: f64,
    pub total_bytes: f64,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            per_client_events: 50.0,
            per_client_bytes: 512.0 * 1024.0,
            total_events: 500.0,
            total_bytes: 2.0 * 1024.0 * 1024.0,
        }
    }
}

/// Clients tracked before idle ones (whose buckets have refilled) are forgotten.
const TRACKED_CLIENTS: usize = 4096;

/// A token bucket: `rate` tokens a second, at most `capacity` saved.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    rate: f64,
    capacity: f64,
    updated: Instant,
}

impl Bucket {
    fn full(rate: f64, capacity: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: capacity,
            rate,
            capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.updated = now;
    }

    /// How long until `cost` tokens are there (zero if they are).
    fn wait_for(&self, cost: f64) -> Duration {
        let missing = cost - self.tokens;
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(missing / self.rate)
    }
}

/// A client's (or everyone's) two buckets: events and bytes.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    events: Bucket,
    bytes: Bucket,
}

impl Allowance {
    fn new(events_per_second: f64, bytes_per_second: f64, now: Instant) -> Allowance {
        Allowance {
            events: Bucket::full(events_per_second, events_per_second.max(1.0), now),
            // One event of the largest allowed body must always fit.
            bytes: Bucket::full(
                bytes_per_second,
                bytes_per_second.max(crate::http::rest::MAX_EVENT_BODY as f64),
                now,
            ),
        }
    }

    fn refill(&mut self, now: Instant) {
        self.events.refill(now);
        self.bytes.refill(now);
    }

    fn wait_for(&self, bytes: f64) -> Duration {
        self.events.wait_for(1.0).max(self.bytes.wait_for(bytes))
    }

    fn spend(&mut self, bytes: f64) {
        self.events.tokens -= 1.0;
        self.bytes.tokens -= bytes;
    }

    fn is_full(&self) -> bool {
        self.events.tokens >= self.events.capacity && self.bytes.tokens >= self.bytes.capacity
    }
}

#[derive(Debug)]
struct State {
    total: Allowance,
    clients: HashMap<IpAddr, Allowance>,
}

/// The budget shared by every request.
#[derive(Debug)]
pub struct EventBudget {
    limits: EventLimits,
    state: Mutex<State>,
}

impl EventBudget {
    pub fn new(limits: EventLimits) -> EventBudget {
        let now = Instant::now();
        EventBudget {
            limits,
            state: Mutex::new(State {
                total: Allowance::new(limits.total_events, limits.total_bytes, now),
                clients: HashMap::new(),
            }),
        }
    }

    /// Spends one event of `bytes` for `client`, or, if the client's or everyone's allowance
    /// cannot pay for it, spends nothing and says how long to wait.
    pub fn spend(&self, client: IpAddr, bytes: usize, now: Instant) -> Result<(), Duration> {
        let bytes = bytes as f64;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let limits = self.limits;
        if state.clients.len() >= TRACKED_CLIENTS {
            state.clients.retain(|_, allowance| {
                allowance.refill(now);
                !allowance.is_full()
            });
            // Still full of busy clients (thousands of them): forget them all, which errs on
            // the lenient side, rather than scan the map on every event.
            if state.clients.len() >= TRACKED_CLIENTS / 2 {
                state.clients.clear();
            }
        }
        let State { total, clients } = &mut *state;
        let own = clients.entry(client_key(client)).or_insert_with(|| {
            Allowance::new(limits.per_client_events, limits.per_client_bytes, now)
        });
        own.refill(now);
        total.refill(now);
        let wait = own.wait_for(bytes).max(total.wait_for(bytes));
        if !wait.is_zero() {
            return Err(wait);
        }
        own.spend(bytes);
        total.spend(bytes);
        Ok(())
    }
}

/// Whom a budget belongs to: an IPv4 address, or an IPv6 /64 (one host can hold a whole /64
/// and would otherwise get a new budget with every address it takes).
fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> EventBudget {
        EventBudget::new(EventLimits {
            per_client_events: 2.0,
            per_client_bytes: 100_000.0,
            total_events: 3.0,
            total_bytes: 1_000_000.0,
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_client_gets_its_rate_and_waits_for_more() {
        let budget = budget();
        let now = Instant::now();
        assert!(budget.spend(A, 10, now).is_ok());
        assert!(budget.spend(A, 10, now).is_ok());
        let wait = budget.spend(A, 10, now).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        assert!(
            budget.spend(A, 10, now + wait).is_ok(),
            "refilled after the wait"
        );
    }

    #[test]
    fn everyone_together_is_capped_too_and_a_refusal_costs_nothing() {
        let budget = budget();
        let now = Instant::now();
        assert!(budget.spend(A, 10, now).is_ok());
        assert!(budget.spend(A, 10, now).is_ok());
        assert!(budget.spend(B, 10, now).is_ok());
        assert!(budget.spend(B, 10, now).is_err(), "the total of 3 is spent");
        assert!(budget.spend(A, 10, now).is_err());
        let later = now + Duration::from_secs(1);
        assert!(
            budget.spend(B, 10, later).is_ok(),
            "B's refusal did not spend its own"
        );
    }

    #[test]
    fn an_ipv6_64_is_one_client() {
        let budget = budget();
        let now = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(budget.spend(a, 10, now).is_ok());
        assert!(budget.spend(b, 10, now).is_ok());
        assert!(
            budget.spend(a, 10, now).is_err(),
            "same /64: its 2 are spent"
        );
        assert!(budget.spend(other, 10, now).is_ok(), "another /64");
    }

    #[test]
    fn bytes_count_and_one_largest_event_always_fits() {
        let budget = budget();
        let now = Instant::now();
        let largest = crate::http::rest::MAX_EVENT_BODY;
        assert!(budget.spend(A, largest, now).is_ok());
        // 100,000 − 65,536 bytes are left; the next 65,536 need 0.31 s more at 100,000/s.
        let wait = budget.spend(A, largest, now).unwrap_err();
        assert!(
            wait > Duration::from_millis(300) && wait < Duration::from_millis(320),
            "{wait:?}"
        );
    }
}
