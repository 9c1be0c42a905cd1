//! Exponential back-off with jitter for reconnects, so a fleet of hounds does not stampede etcd.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);
const LAST: Duration = Duration::from_secs(5);

/// Delays that double from 100 ms up to 5 s, each drawn uniformly from its upper half.
#[derive(Debug)]
pub struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { ceiling: FIRST }
    }

    /// The next delay to wait before retrying.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(LAST);
        ceiling / 2 + jitter(ceiling / 2)
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        self.ceiling = FIRST;
    }
}

/// A uniformly random duration below `max`, from the per-process random hasher keys.
fn jitter(max: Duration) -> Duration {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(std::time::Instant::now().elapsed().as_nanos());
    let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
    max.mul_f64(fraction)
}

/// Lets a repeated warning through once a minute, so an outage is logged, not flooded.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<std::time::Instant>,
}

impl Throttle {
    const QUIET: Duration = Duration::from_secs(60);

    /// Whether to log at warning level now; otherwise log at debug level.
    pub fn level(&mut self) -> log::Level {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Self::QUIET)
        {
            log::Level::Debug
        } else {
            self.last = Some(now);
            log::Level::Warn
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_bounds_and_reset() {
        let mut backoff = Backoff::new();
        let mut ceiling = FIRST;
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(LAST);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= FIRST);
    }

    #[test]
    fn throttle_warns_once_a_minute() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.level(), log::Level::Warn);
        assert_eq!(throttle.level(), log::Level::Debug);
    }

    #[test]
    fn jitter_varies() {
        let draws: std::collections::HashSet<Duration> =
            (0..20).map(|_| jitter(Duration::from_secs(1))).collect();
        assert!(draws.len() > 10);
    }
}
