//! Loss accounting: ETW's per-session counters and the queue's overflows, as totals for the
//! heartbeat and as deltas that raise an alert.
//!
//! ETW's counters are 32-bit totals since the session started. A value lower than the previous
//! reading means the session was recreated, so the new value is counted whole.

use std::time::Instant;

use super::controller::SessionCounters;
use super::providers::SessionKind;

/// Losses counted since the sensor started, or in one polling interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossCounts {
    /// Events ETW dropped for lack of a free buffer (`EventsLost`).
    pub events_lost: u64,
    /// Buffers ETW dropped before the consumer read them (`RealTimeBuffersLost`).
    pub real_time_buffers_lost: u64,
}

impl LossCounts {
    /// Whether anything was lost.
    pub fn any(&self) -> bool {
        self.events_lost > 0 || self.real_time_buffers_lost > 0
    }
}

/// Tracks one session's counters between polls.
#[derive(Debug, Clone, Default)]
pub struct LossTracker {
    previous: Option<SessionCounters>,
    totals: LossCounts,
}

impl LossTracker {
    /// Records a reading and returns what was lost since the previous one.
    pub fn observe(&mut self, counters: SessionCounters) -> LossCounts {
        let delta = match self.previous {
            None => LossCounts {
                events_lost: u64::from(counters.events_lost),
                real_time_buffers_lost: u64::from(counters.real_time_buffers_lost),
            },
            Some(previous) => LossCounts {
                events_lost: counter_delta(previous.events_lost, counters.events_lost),
                real_time_buffers_lost: counter_delta(
                    previous.real_time_buffers_lost,
                    counters.real_time_buffers_lost,
                ),
            },
        };
        self.previous = Some(counters);
        self.totals.events_lost += delta.events_lost;
        self.totals.real_time_buffers_lost += delta.real_time_buffers_lost;
        delta
    }

    /// Losses since the tracker was created.
    pub fn totals(&self) -> LossCounts {
        self.totals
    }

    /// The last reading, if any.
    pub fn last_counters(&self) -> Option<SessionCounters> {
        self.previous
    }
}

fn counter_delta(previous: u32, current: u32) -> u64 {
    if current >= previous {
        u64::from(current - previous)
    } else {
        u64::from(current)
    }
}

/// One session's health for the heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionHealth {
    pub kind: SessionKind,
    pub losses: LossCounts,
    /// The last counters read, or `None` when no poll has succeeded yet.
    pub last_counters: Option<SessionCounters>,
    /// Polls that failed since the sensor started.
    pub failed_polls: u64,
}

/// The loader's health for the heartbeat: per-session losses plus queue overflows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderHealth {
    pub sessions: Vec<SessionHealth>,
    /// Records dropped because the queue was full, since the sensor started.
    pub queue_overflows: u64,
    pub queue_depth: u64,
    pub queue_capacity: u64,
}

impl LoaderHealth {
    /// Whether any loss has been counted since the sensor started.
    pub fn any_loss(&self) -> bool {
        self.queue_overflows > 0 || self.sessions.iter().any(|session| session.losses.any())
    }
}

/// What was lost in one polling interval; raised as an alert whenever it is not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossAlert {
    pub at: Instant,
    /// Per-session losses in the interval, only for sessions that lost something.
    pub sessions: Vec<(SessionKind, LossCounts)>,
    /// Queue overflows in the interval.
    pub queue_overflows: u64,
}

/// Receives loss alerts; the service forwards them to the log, the Event Log and the Collector.
pub trait LossSink: Send + Sync + 'static {
    fn alert(&self, alert: &LossAlert);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(events_lost: u32, real_time_buffers_lost: u32) -> SessionCounters {
        SessionCounters {
            events_lost,
            real_time_buffers_lost,
            ..SessionCounters::default()
        }
    }

    #[test]
    fn first_reading_counts_whole() {
        let mut tracker = LossTracker::default();
        let delta = tracker.observe(counters(3, 1));
        assert_eq!(
            delta,
            LossCounts {
                events_lost: 3,
                real_time_buffers_lost: 1
            }
        );
    }

    #[test]
    fn later_readings_count_difference() {
        let mut tracker = LossTracker::default();
        tracker.observe(counters(3, 1));
        assert!(!tracker.observe(counters(3, 1)).any());
        let delta = tracker.observe(counters(10, 4));
        assert_eq!(
            delta,
            LossCounts {
                events_lost: 7,
                real_time_buffers_lost: 3
            }
        );
        assert_eq!(
            tracker.totals(),
            LossCounts {
                events_lost: 10,
                real_time_buffers_lost: 4
            }
        );
    }

    #[test]
    fn counter_reset_counts_new_value() {
        let mut tracker = LossTracker::default();
        tracker.observe(counters(100, 0));
        let delta = tracker.observe(counters(5, 0));
        assert_eq!(delta.events_lost, 5);
        assert_eq!(tracker.totals().events_lost, 105);
    }
}
