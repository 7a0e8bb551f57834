//! Token bucket that caps the drain rate.

use std::time::{Duration, Instant};

/// A token bucket refilled at `rate` tokens per second, holding at most one second of tokens.
///
/// A take succeeds while the bucket holds at least one token and may drive it negative, so a record
/// larger than one second of budget still passes, followed by a proportionally longer pause.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate_per_sec: u64, now: Instant) -> Self {
        // Rates are at most 1 GiB/s or a record count, far inside f64's exact integer range.
        #[expect(clippy::cast_precision_loss, reason = "rates are far below 2^52")]
        let rate = rate_per_sec.max(1) as f64;
        Self {
            rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }

    /// Tells whether a take may happen at `now`.
    pub(crate) fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Takes `amount` tokens; call only after [`TokenBucket::ready`] returned true.
    pub(crate) fn take(&mut self, amount: u64) {
        #[expect(clippy::cast_precision_loss, reason = "amounts are far below 2^52")]
        let amount = amount as f64;
        self.tokens -= amount;
    }

    /// Returns how long until a take may happen again.
    pub(crate) fn wait_time(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            // A tiny margin makes the bucket hold a whole token when the wait is over.
            Duration::from_secs_f64((1.0 - self.tokens + 1e-6) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_one_second_burst_then_waits() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, start);
        let mut taken = 0;
        while bucket.ready(start) {
            bucket.take(100);
            taken += 100;
        }
        assert_eq!(taken, 1000);
        let wait = bucket.wait_time(start);
        assert!(
            wait > Duration::ZERO && wait < Duration::from_millis(2),
            "{wait:?}"
        );
    }

    #[test]
    fn bucket_refills_at_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, start);
        bucket.take(1500);
        assert!(!bucket.ready(start));
        let wait = bucket.wait_time(start);
        assert!(wait >= Duration::from_millis(500) && wait < Duration::from_millis(502));
        assert!(bucket.ready(start + wait));
    }

    #[test]
    fn bucket_never_holds_more_than_one_second() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, start);
        let later = start + Duration::from_secs(3600);
        let mut takes = 0;
        while bucket.ready(later) {
            bucket.take(1);
            takes += 1;
        }
        assert_eq!(takes, 10);
    }
}
