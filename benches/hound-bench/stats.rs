//! Percentiles and the formatting of durations, rates and sizes.

use std::time::Duration;

/// Latency samples of one measurement.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    pub fn new(mut samples: Vec<Duration>) -> Samples {
        samples.sort_unstable();
        Samples { sorted: samples }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Nearest-rank percentile (`p` in 0..=100); zero without samples.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub fn p50(&self) -> Duration {
        self.percentile(50.0)
    }

    pub fn p99(&self) -> Duration {
        self.percentile(99.0)
    }

    pub fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or(Duration::ZERO)
    }
}

/// Milliseconds with a precision that suits the magnitude: `0.412 ms`, `12.3 ms`, `1520 ms`.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{ms:.3} ms")
    } else if ms < 100.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Milliseconds without the unit, for `a / b / c ms` triples.
pub fn ms_bare(d: Duration) -> String {
    let text = ms(d);
    text.trim_end_matches(" ms").to_owned()
}

/// `p50 / p99 / max` in milliseconds.
pub fn triple(samples: &Samples) -> String {
    format!(
        "{} / {} / {} ms",
        ms_bare(samples.p50()),
        ms_bare(samples.p99()),
        ms_bare(samples.max())
    )
}

/// `a / b` as a ratio with two decimals (`—` when `b` is zero).
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        f64::NAN
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

pub fn times(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "—".into()
    }
}

/// Bytes as MiB with two decimals, plus the exact count.
pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A rate with thousands separators: `12,345/s`.
pub fn rate(per_sec: f64) -> String {
    format!("{}/s", thousands(per_sec.round() as u64))
}

pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
