//! Loss alerts from the loader, reported to the Collector two ways.
//!
//! - The counts go into the [`LossCounters`] that every heartbeat carries, keyed by source
//!   and reason: `(EdrSensor-Process, events_lost)`, `(EdrSensor-Bulk,
//!   real_time_buffers_lost)`, `(etw_record_queue, queue_full)`. `real_time_buffers_lost`
//!   counts ETW buffers, not events, because ETW does not say how many events a lost buffer
//!   held.
//! - An OCSF Detection Finding describing the interval's losses is appended to the ring
//!   buffer's priority lane. Eviction drops telemetry before priority records, so the finding
//!   reaches the Collector even when the telemetry around it was evicted.

use std::sync::atomic::{AtomicU64, Ordering};

use edr_ocsf::model::{Analytic, Device, Evidence, FindingInfo, Product};
use edr_ocsf::{Class, Event, Metadata, Severity};
use edr_sensor::buffer::Lane;
use edr_sensor::transport::{LossCounters, SharedBuffer, lock};
use serde_json::json;

use crate::loader::{LossAlert, LossSink};

/// Source name of queue overflows in the heartbeat's loss counters.
pub const QUEUE_LOSS_SOURCE: &str = "etw_record_queue";
/// Title of the sensor's own loss finding, for queries on the Collector.
pub const LOSS_FINDING_TITLE: &str = "Sensor lost telemetry";

/// Records loader losses in the heartbeat counters and the ring buffer's priority lane.
#[derive(Debug)]
pub struct LossReporter {
    losses: LossCounters,
    buffer: SharedBuffer,
    hostname: String,
    /// Findings raised since start, so that two in one millisecond get distinct uids.
    raised: AtomicU64,
}

impl LossReporter {
    /// Creates a reporter that adds to `losses` and appends findings to `buffer`.
    pub fn new(losses: LossCounters, buffer: SharedBuffer, hostname: String) -> Self {
        Self {
            losses,
            buffer,
            hostname,
            raised: AtomicU64::new(0),
        }
    }

    fn count(&self, alert: &LossAlert) {
        for (kind, counts) in &alert.sessions {
            let session = kind.session_name();
            if counts.events_lost > 0 {
                self.losses.add(session, "events_lost", counts.events_lost);
            }
            if counts.real_time_buffers_lost > 0 {
                self.losses.add(
                    session,
                    "real_time_buffers_lost",
                    counts.real_time_buffers_lost,
                );
            }
        }
        if alert.queue_overflows > 0 {
            self.losses
                .add(QUEUE_LOSS_SOURCE, "queue_full", alert.queue_overflows);
        }
    }
}

impl LossSink for LossReporter {
    fn alert(&self, alert: &LossAlert) {
        self.count(alert);

        let raised = self.raised.fetch_add(1, Ordering::Relaxed);
        let time_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let finding = loss_finding(alert, &self.hostname, time_ms as i64, raised);
        let payload = match serde_json::to_vec(&finding) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "cannot serialise the loss finding; the loss is still counted in the heartbeat");
                return;
            }
        };
        if let Err(error) = lock(&self.buffer).append(Lane::Priority, &payload) {
            tracing::error!(%error, "the ring buffer rejected the loss finding; the loss is still counted in the heartbeat");
        }
    }
}

/// Builds the Detection Finding for one interval's losses, raised at `time_ms` on `hostname`.
pub fn loss_finding(alert: &LossAlert, hostname: &str, time_ms: i64, raised: u64) -> Box<Event> {
    let metadata = Metadata::new(Product {
        name: "edr-windows".to_owned(),
        vendor_name: "EDR".to_owned(),
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
    });
    // Activity 1 is Create: each alert is a new finding about a new interval.
    let mut event = Box::new(Event::new(Class::DetectionFinding, 1, time_ms, metadata));
    event.set_severity(Severity::High);
    event.is_alert = Some(true);
    event.device = Some(Device::windows(hostname));

    let mut parts = Vec::new();
    let mut sessions = serde_json::Map::new();
    for (kind, counts) in &alert.sessions {
        parts.push(format!(
            "ETW session {} lost {} events and {} real-time buffers",
            kind.session_name(),
            counts.events_lost,
            counts.real_time_buffers_lost
        ));
        sessions.insert(
            kind.session_name().to_owned(),
            json!({
                "events_lost": counts.events_lost,
                "real_time_buffers_lost": counts.real_time_buffers_lost,
            }),
        );
    }
    if alert.queue_overflows > 0 {
        parts.push(format!(
            "the record queue was full and dropped {} records",
            alert.queue_overflows
        ));
    }
    let description = parts.join("; ");

    event.message = Some(format!("{LOSS_FINDING_TITLE}: {description}"));
    event.finding_info = Some(FindingInfo {
        uid: format!("{hostname}-telemetry-loss-{time_ms}-{raised}"),
        title: Some(LOSS_FINDING_TITLE.to_owned()),
        desc: Some(description),
        types: Some(vec!["Sensor Health".to_owned()]),
        analytic: Some(Analytic {
            name: "ETW loss accounting".to_owned(),
            uid: None,
            type_id: 99,
            type_name: "Other",
        }),
        ..FindingInfo::default()
    });
    event.evidences = Some(vec![Evidence {
        data: Some(json!({
            "sessions": sessions,
            "queue_overflows": alert.queue_overflows,
        })),
        ..Evidence::default()
    }]);
    event
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use edr_sensor::buffer::{Buffer, BufferOptions, RecordKind};

    use super::*;
    use crate::loader::{LossCounts, SessionKind};

    fn alert() -> LossAlert {
        LossAlert {
            at: Instant::now(),
            sessions: vec![
                (
                    SessionKind::Process,
                    LossCounts {
                        events_lost: 7,
                        real_time_buffers_lost: 0,
                    },
                ),
                (
                    SessionKind::Bulk,
                    LossCounts {
                        events_lost: 0,
                        real_time_buffers_lost: 2,
                    },
                ),
            ],
            queue_overflows: 5,
        }
    }

    fn reporter(dir: &std::path::Path) -> (LossReporter, LossCounters, SharedBuffer) {
        let buffer = Arc::new(Mutex::new(
            Buffer::open(BufferOptions::new(dir.join("buffer"))).unwrap(),
        ));
        let losses = LossCounters::default();
        let reporter = LossReporter::new(losses.clone(), Arc::clone(&buffer), "host-1".into());
        (reporter, losses, buffer)
    }

    #[test]
    fn alert_counted_in_heartbeat_losses() {
        let dir = tempfile::tempdir().unwrap();
        let (reporter, losses, _buffer) = reporter(dir.path());
        reporter.alert(&alert());
        reporter.alert(&alert());

        let snapshot = losses.snapshot();
        let count = |source: &str, reason: &str| {
            snapshot
                .iter()
                .find(|loss| loss.source == source && loss.reason == reason)
                .map(|loss| loss.count)
        };
        assert_eq!(count("EdrSensor-Process", "events_lost"), Some(14));
        assert_eq!(count("EdrSensor-Bulk", "real_time_buffers_lost"), Some(4));
        assert_eq!(count(QUEUE_LOSS_SOURCE, "queue_full"), Some(10));
        assert_eq!(
            count("EdrSensor-Process", "real_time_buffers_lost"),
            None,
            "a zero count was reported"
        );
    }

    #[test]
    fn alert_appends_finding_to_priority_lane() {
        let dir = tempfile::tempdir().unwrap();
        let (reporter, _losses, buffer) = reporter(dir.path());
        reporter.alert(&alert());
        lock(&buffer).sync().unwrap();

        let records = lock(&buffer).drain(16).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].lane, Lane::Priority);
        let RecordKind::Event(payload) = &records[0].kind else {
            panic!("expected an event record, got {:?}", records[0].kind);
        };
        let finding: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(finding["class_uid"], 2004);
        assert_eq!(finding["finding_info"]["title"], LOSS_FINDING_TITLE);
        assert_eq!(finding["device"]["hostname"], "host-1");
        assert_eq!(
            finding["evidences"][0]["data"]["sessions"]["EdrSensor-Process"]["events_lost"],
            7
        );
        assert_eq!(finding["evidences"][0]["data"]["queue_overflows"], 5);
    }

    #[test]
    fn finding_uids_distinct_within_millisecond() {
        let first = loss_finding(&alert(), "h", 1000, 0);
        let second = loss_finding(&alert(), "h", 1000, 1);
        assert_ne!(
            first.finding_info.as_ref().map(|info| info.uid.clone()),
            second.finding_info.as_ref().map(|info| info.uid.clone())
        );
    }

    #[test]
    fn finding_valid_against_ocsf_schema() {
        let data = std::env::var_os("EDR_DATA_DIR").map_or_else(
            || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
            std::path::PathBuf::from,
        );
        let Ok(schema) = edr_ocsf::Schema::load(&edr_ocsf::schema_dir(&data)) else {
            eprintln!(
                "skipped: no OCSF schema under {}; set EDR_DATA_DIR to the folder holding it",
                data.display()
            );
            return;
        };
        let finding = serde_json::to_value(loss_finding(&alert(), "host-1", 1000, 0)).unwrap();
        schema.validate(&finding).unwrap();
    }
}
