//! Per-connection rate limits: a token bucket that slows a connection down instead of failing it.

use std::time::{Duration, Instant};

/// At most `n` units in any burst and `n` per minute sustained.
///
/// [`Rate::take`] never refuses: it may run the bucket into debt and answers how long the caller
/// must wait before going on. That also handles amounts larger than the whole bucket (one chunk
/// batch under a tiny byte budget), which then simply wait longer.
#[derive(Debug)]
pub(crate) struct Rate {
    per_sec: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Rate {
    /// `None` for 0, which means no limit.
    pub(crate) fn per_minute(n: u64, now: Instant) -> Option<Rate> {
        (n > 0).then(|| Rate { per_sec: n as f64 / 60.0, capacity: n as f64, tokens: n as f64, last: now })
    }

    /// Takes `n` units at `now`; the caller waits the returned time before using them.
    pub(crate) fn take(&mut self, n: u64, now: Instant) -> Duration {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.per_sec;
        self.last = now;
        self.tokens = (self.tokens + refill).min(self.capacity) - n as f64;
        if self.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-self.tokens / self.per_sec) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_unlimited() {
        assert!(Rate::per_minute(0, Instant::now()).is_none());
    }

    #[test]
    fn a_burst_passes_then_the_sustained_rate_applies() {
        let t0 = Instant::now();
        let mut rate = Rate::per_minute(60, t0).unwrap();
        for _ in 0..60 {
            assert_eq!(rate.take(1, t0), Duration::ZERO);
        }
        // Empty: the next unit comes one second later, the one after that two.
        assert_eq!(rate.take(1, t0), Duration::from_secs(1));
        assert_eq!(rate.take(1, t0), Duration::from_secs(2));
        // Having waited those two seconds, the debt is paid and the bucket empty.
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(rate.take(1, t2), Duration::from_secs(1));
    }

    #[test]
    fn idle_time_refills_only_up_to_the_capacity() {
        let t0 = Instant::now();
        let mut rate = Rate::per_minute(60, t0).unwrap();
        assert_eq!(rate.take(60, t0), Duration::ZERO);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(rate.take(60, later), Duration::ZERO);
        assert_eq!(rate.take(1, later), Duration::from_secs(1));
    }

    #[test]
    fn more_than_the_bucket_waits_in_proportion() {
        let t0 = Instant::now();
        let mut rate = Rate::per_minute(600, t0).unwrap();
        // 600 from the bucket, 1200 more at 10 per second.
        assert_eq!(rate.take(1800, t0), Duration::from_secs(120));
    }
}
