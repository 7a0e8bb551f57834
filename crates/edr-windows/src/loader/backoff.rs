//! Retry delays, a clock that tests can drive, and a limiter for repeated log messages.

use std::time::{Duration, Instant};

/// The time source and sleep the loader uses, so tests run retries without waiting.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
    /// Blocks the calling thread for `duration`.
    fn sleep(&self, duration: Duration);
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// Exponential backoff: `initial`, doubled after each attempt, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Creates a backoff whose first delay is `initial` and whose delays never exceed `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            next: initial.min(max),
            max,
        }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }
}

/// Lets a message through at most once per `interval` and counts the ones it held back.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimiter {
    /// The interval for loss and resource messages: at most one per minute each.
    pub const LOSS_INTERVAL: Duration = Duration::from_secs(60);

    /// Creates a limiter that allows one message per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(held_back)` when a message may be logged now, with the number of messages
    /// held back since the last one, or `None` when this one must be held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let due = match self.last {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= self.interval,
        };
        if due {
            self.last = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_until_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![500, 1000, 2000, 3000, 3000]);
    }

    #[test]
    fn limiter_allows_once_per_interval() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(Duration::from_secs(60));
        assert_eq!(limiter.allow(start), Some(0));
        assert_eq!(limiter.allow(start + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow(start + Duration::from_secs(59)), None);
        assert_eq!(limiter.allow(start + Duration::from_secs(60)), Some(2));
        assert_eq!(limiter.allow(start + Duration::from_secs(61)), None);
    }
}
