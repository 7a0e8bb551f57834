//! Rate limits of warning lines that a client can cause at will, such as rejected connections
//! and dropped command results. At most one line per [`LOG_INTERVAL`] is logged, and it carries
//! the number of lines suppressed since the previous one.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Minimum time between two lines of one limit.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Keys whose limit [`LogLimitByKey`] keeps. When it is full, limits idle for a whole interval
/// are dropped.
const MAX_KEYS: usize = 4096;

/// One limit: the time of the last line logged and the lines suppressed since.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// Returns the number of lines suppressed since the last one when a line may be logged
    /// now, or `None` when this one has to be suppressed.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// Returns what [`LogLimit::allow`] returns for a line at `now`.
    pub(crate) fn allow_at(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < LOG_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        let suppressed = self.suppressed;
        self.last = Some(now);
        self.suppressed = 0;
        Some(suppressed)
    }
}

/// One [`LogLimit`] per key, such as a sensor id, so that one client's lines do not hide
/// another's.
#[derive(Debug, Default)]
pub(crate) struct LogLimitByKey {
    limits: Mutex<Option<HashMap<String, LogLimit>>>,
}

impl LogLimitByKey {
    pub(crate) const fn new() -> Self {
        Self {
            limits: Mutex::new(None),
        }
    }

    /// Returns what [`LogLimit::allow`] returns for a line about `key` at `now`. Beyond
    /// [`MAX_KEYS`] active keys, a new key's lines are suppressed until one goes idle.
    pub(crate) fn allow_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut limits = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        let limits = limits.get_or_insert_with(HashMap::new);
        if let Some(limit) = limits.get_mut(key) {
            return limit.allow_at(now);
        }
        if limits.len() >= MAX_KEYS {
            limits.retain(|_, limit| {
                limit
                    .last
                    .is_some_and(|last| now.saturating_duration_since(last) < LOG_INTERVAL)
            });
            if limits.len() >= MAX_KEYS {
                return None;
            }
        }
        limits.entry(key.to_owned()).or_default().allow_at(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_suppressed_count() {
        let mut limit = LogLimit::default();
        let start = Instant::now();
        assert_eq!(limit.allow_at(start), Some(0));
        assert_eq!(limit.allow_at(start + Duration::from_secs(1)), None);
        assert_eq!(limit.allow_at(start + Duration::from_secs(9)), None);
        assert_eq!(limit.allow_at(start + LOG_INTERVAL), Some(2));
        assert_eq!(limit.allow_at(start + Duration::from_secs(11)), None);
    }

    #[test]
    fn keys_limited_separately() {
        let limits = LogLimitByKey::new();
        let start = Instant::now();
        assert_eq!(limits.allow_at("a", start), Some(0));
        assert_eq!(limits.allow_at("a", start + Duration::from_secs(9)), None);
        // Another key's line is not held back by the first one's.
        assert_eq!(
            limits.allow_at("b", start + Duration::from_secs(9)),
            Some(0)
        );
        assert_eq!(limits.allow_at("a", start + LOG_INTERVAL), Some(1));
        assert_eq!(limits.allow_at("a", start + Duration::from_secs(11)), None);
    }
}
