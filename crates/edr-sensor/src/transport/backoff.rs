//! Reconnect delays: exponential growth of the cap, full jitter below it.

use std::time::Duration;

/// Reconnect delays for consecutive failed attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// Returns the delay before the next attempt and counts one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = jittered_delay(self.initial, self.max, self.failures, self.rng.f64());
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Starts over after a connection that worked.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Returns the longest delay.
    pub(crate) fn max_delay(&self) -> Duration {
        self.max
    }
}

/// Evidence, from a streaming session that ended, of whether the Collector worked.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SessionSigns {
    /// An ack freed records.
    pub(crate) acked: bool,
    /// A heartbeat was acknowledged.
    pub(crate) heartbeat_acked: bool,
    /// Batches were still waiting for their ack when the session ended.
    pub(crate) unacked_batches: bool,
}

/// Returns whether a session that ended with an error worked well enough to start the backoff
/// over: the Collector acknowledged records in it, or acknowledged a heartbeat and left no
/// batch without an ack (a sensor with nothing to send), or the session lasted as long as the
/// longest delay.
pub(crate) fn session_worked(signs: SessionSigns, lasted: Duration, max_delay: Duration) -> bool {
    signs.acked || (signs.heartbeat_acked && !signs.unacked_batches) || lasted >= max_delay
}

/// Computes the delay for the attempt after `failures` failures: `unit` (in `[0, 1)`) times
/// `min(max, initial * 2^failures)`.
pub(crate) fn jittered_delay(
    initial: Duration,
    max: Duration,
    failures: u32,
    unit: f64,
) -> Duration {
    let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
    let cap = initial.saturating_mul(factor).min(max);
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn cap_doubles_per_failure() {
        let caps: Vec<Duration> = (0..4)
            .map(|failures| jittered_delay(INITIAL, MAX, failures, 1.0))
            .collect();
        assert_eq!(
            caps,
            [100, 200, 400, 800].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn cap_stops_at_maximum() {
        assert_eq!(jittered_delay(INITIAL, MAX, 10, 1.0), MAX);
        assert_eq!(jittered_delay(INITIAL, MAX, u32::MAX, 1.0), MAX);
    }

    #[test]
    fn jitter_spans_zero_to_cap() {
        assert_eq!(jittered_delay(INITIAL, MAX, 3, 0.0), Duration::ZERO);
        assert_eq!(
            jittered_delay(INITIAL, MAX, 3, 0.5),
            Duration::from_millis(400)
        );
    }

    #[test]
    fn short_sessions_without_acks_count_as_failures() {
        let short = Duration::from_millis(300);
        let signs = |acked, heartbeat_acked, unacked_batches| SessionSigns {
            acked,
            heartbeat_acked,
            unacked_batches,
        };
        // A Collector that takes the heartbeat and refuses the batch.
        assert!(!session_worked(signs(false, true, true), short, MAX));
        assert!(!session_worked(signs(false, false, true), short, MAX));
        assert!(!session_worked(signs(false, false, false), short, MAX));
        // Records acknowledged, or an idle sensor's heartbeat.
        assert!(session_worked(signs(true, false, true), short, MAX));
        assert!(session_worked(signs(false, true, false), short, MAX));
        assert!(session_worked(signs(false, false, true), MAX, MAX));
    }

    #[test]
    fn delays_stay_below_cap_and_reset() {
        let mut backoff = Backoff::new(INITIAL, MAX);
        for failures in 0..20u32 {
            let cap = jittered_delay(INITIAL, MAX, failures, 1.0);
            assert!(backoff.next_delay() <= cap);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= INITIAL);
    }
}
