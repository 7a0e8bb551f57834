//! Health reported in heartbeats: events lost per source and reason, filled by any part of
//! the sensor, and the gap ranges the transport has seen.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use edr_proto::v1;

/// Gap ranges kept for heartbeats; older ones are dropped (the gap records themselves are the
/// durable account).
const MAX_GAP_RANGES: usize = 64;

/// Counters of lost events per (source, reason), shared by every part of the sensor that can
/// lose events. Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct LossCounters {
    counts: Arc<Mutex<BTreeMap<(String, String), u64>>>,
}

impl LossCounters {
    /// Adds `count` lost events from `source` for `reason`.
    pub fn add(&self, source: &str, reason: &str, count: u64) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts
            .entry((source.to_owned(), reason.to_owned()))
            .or_default() += count;
    }

    /// Returns the counters in the heartbeat's form, ordered by source and reason.
    pub fn snapshot(&self) -> Vec<v1::EventLoss> {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts
            .iter()
            .map(|((source, reason), count)| v1::EventLoss {
                source: source.clone(),
                reason: reason.clone(),
                count: *count,
            })
            .collect()
    }
}

/// The most recent gap ranges seen in drained records.
#[derive(Debug, Default)]
pub(crate) struct GapLog {
    ranges: VecDeque<v1::SequenceRange>,
}

impl GapLog {
    pub(crate) fn push(&mut self, first_seq: u64, last_seq: u64) {
        if self
            .ranges
            .iter()
            .any(|range| range.first_seq == first_seq && range.last_seq == last_seq)
        {
            return;
        }
        if self.ranges.len() == MAX_GAP_RANGES {
            self.ranges.pop_front();
        }
        self.ranges.push_back(v1::SequenceRange {
            first_seq,
            last_seq,
        });
    }

    pub(crate) fn ranges(&self) -> Vec<v1::SequenceRange> {
        self.ranges.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_add_up_per_source_and_reason() {
        let losses = LossCounters::default();
        let shared = losses.clone();
        losses.add("etw", "etw_buffer_overrun", 3);
        shared.add("etw", "etw_buffer_overrun", 2);
        losses.add("evtx", "ring_buffer_full", 1);
        let snapshot = losses.snapshot();
        assert_eq!(snapshot.len(), 2);
        assert_eq!(snapshot[0].source, "etw");
        assert_eq!(snapshot[0].count, 5);
        assert_eq!(snapshot[1].reason, "ring_buffer_full");
    }

    #[test]
    fn gap_log_deduplicates_and_bounds() {
        let mut log = GapLog::default();
        log.push(1, 2);
        log.push(1, 2);
        assert_eq!(log.ranges().len(), 1);
        for i in 0..100 {
            log.push(10 + i, 10 + i);
        }
        let ranges = log.ranges();
        assert_eq!(ranges.len(), MAX_GAP_RANGES);
        assert_eq!(ranges.last().map(|r| r.first_seq), Some(109));
    }
}
