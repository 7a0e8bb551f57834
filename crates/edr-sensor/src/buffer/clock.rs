//! The monotonic clock read once per append.
//!
//! On Linux it is `CLOCK_MONOTONIC_COARSE`, which the vDSO serves from the time of the last
//! timer tick without reading the TSC. Its resolution is one tick (`clock_getres` reports 4 ms
//! with `HZ=250`), so append times advance in steps of a tick and the sync deadline can pass one
//! tick late. A precise read cost about a tenth of the time of an append in a CPU profile of the
//! append bench on a 2-core VM. Elsewhere it is [`std::time::Instant`], counted from the first
//! reading in the process.

use std::time::Duration;

/// A reading of the monotonic clock, in nanoseconds since an arbitrary fixed point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CoarseInstant(u64);

impl CoarseInstant {
    /// Reads the clock.
    #[cfg(target_os = "linux")]
    pub(crate) fn now() -> Self {
        let time = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
        // The monotonic clock counts from boot, so neither field is negative and the sum fits
        // in 64 bits for 584 years of uptime.
        let secs = u64::try_from(time.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(time.tv_nsec).unwrap_or(0);
        Self(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
    }

    /// Reads the clock.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn now() -> Self {
        use std::sync::OnceLock;
        use std::time::Instant;

        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        let elapsed = origin.elapsed().as_nanos();
        Self(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    /// Returns the reading `duration` later, or `None` when it does not fit in 64 bits of
    /// nanoseconds.
    pub(crate) fn checked_add(self, duration: Duration) -> Option<Self> {
        let nanos = u64::try_from(duration.as_nanos()).ok()?;
        self.0.checked_add(nanos).map(Self)
    }

    /// Returns the whole milliseconds elapsed from `earlier` to `self`, or 0 when `earlier` is
    /// later.
    pub(crate) fn millis_since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0) / 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_advances_with_sleep() {
        let start = CoarseInstant::now();
        std::thread::sleep(Duration::from_millis(30));
        let end = CoarseInstant::now();
        assert!(end >= start);
        // One tick of coarse resolution at most is lost at each end.
        assert!(end.millis_since(start) >= 20, "{start:?} to {end:?}");
        assert_eq!(start.millis_since(end), 0);
    }

    #[test]
    fn deadline_addition_overflows_to_none() {
        let start = CoarseInstant(u64::MAX - 5);
        assert_eq!(
            start.checked_add(Duration::from_nanos(5)),
            Some(CoarseInstant(u64::MAX))
        );
        assert_eq!(start.checked_add(Duration::from_nanos(6)), None);
        assert_eq!(start.checked_add(Duration::MAX), None);
    }
}
