//! Commands queued for sensors and their results.
//!
//! `commands` contains one row per queued command; `delivered_at` is set when the Command stream
//! sends it. `command_results` contains the first result received per command id, from either
//! the telemetry stream (the sensor's priority lane) or the Command stream; a second copy of
//! the same result is ignored, so both paths may deliver it.
//!
//! A result is stored only for a command that exists and was issued to the sensor that sends
//! it, as named by its client certificate. Any other result is dropped, so that one sensor
//! cannot complete another's command or fill the table with results of commands never issued.
//! Its detail is stored up to [`MAX_DETAIL_BYTES`].

use edr_proto::v1::CommandResult;
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use crate::log_limit::LogLimitByKey;

/// Largest result detail stored, in bytes of UTF-8. A longer detail is cut at a character
/// boundary and ends with a note of its full length.
pub(crate) const MAX_DETAIL_BYTES: usize = 64 * 1024;

/// The limit of the warnings about dropped command results, one per sensor and shared by both
/// streams. Every drop is counted in `edr_collector_command_results_dropped_total`, so a
/// sensor that sends many cannot flood the log.
pub(crate) static DROP_WARNINGS: LogLimitByKey = LogLimitByKey::new();

/// The outcome of [`insert_result`] for one result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResultOutcome {
    /// Stored as the command's result.
    Stored,
    /// The command has a result already, so this copy was ignored.
    Duplicate,
    /// Dropped because the sending sensor may not report it.
    Dropped(DropReason),
}

/// The reason a command result was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DropReason {
    /// No command has the result's id.
    #[error("no command has this id")]
    UnknownCommand,
    /// The command was issued to another sensor.
    #[error("the command was issued to sensor {owner}")]
    OtherSensor { owner: String },
}

/// Stores `result` from `sensor_id` if the command exists, was issued to that sensor and has
/// no result yet.
pub(crate) fn insert_result(
    conn: &Connection,
    sensor_id: &str,
    result: &CommandResult,
    received_via: &str,
    now: OffsetDateTime,
) -> Result<ResultOutcome, rusqlite::Error> {
    let owner: Option<String> = conn
        .prepare_cached("SELECT sensor_id FROM commands WHERE id = ?1")?
        .query_row(params![result.command_id], |row| row.get(0))
        .optional()?;
    match owner {
        None => return Ok(ResultOutcome::Dropped(DropReason::UnknownCommand)),
        Some(owner) if owner != sensor_id => {
            return Ok(ResultOutcome::Dropped(DropReason::OtherSensor { owner }));
        }
        Some(_) => {}
    }

    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO command_results
                 (command_id, sensor_id, status, completed_at, detail, received_at, received_via)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            result.command_id,
            sensor_id,
            super::ingest::status_name(result),
            result.completed_at.as_ref().map(|t| t.seconds),
            bounded_detail(&result.detail),
            now.unix_timestamp(),
            received_via
        ])?;
    Ok(if inserted == 0 {
        ResultOutcome::Duplicate
    } else {
        ResultOutcome::Stored
    })
}

/// Returns `detail` cut to at most [`MAX_DETAIL_BYTES`] with a note of its full length, or
/// whole when it fits.
fn bounded_detail(detail: &str) -> std::borrow::Cow<'_, str> {
    if detail.len() <= MAX_DETAIL_BYTES {
        return detail.into();
    }
    let note = format!(" [truncated: {} bytes in total]", detail.len());
    let mut end = MAX_DETAIL_BYTES - note.len();
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &detail[..end]).into()
}

/// Returns at most the first 64 characters of `command_id`, for a log line: the id comes from
/// the sensor and may be long.
pub(crate) fn id_preview(command_id: &str) -> String {
    command_id.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::Store;

    fn result(command_id: &str, detail: &str) -> CommandResult {
        CommandResult {
            command_id: command_id.to_string(),
            status: edr_proto::v1::CommandStatus::Succeeded.into(),
            detail: detail.to_string(),
            ..Default::default()
        }
    }

    /// The Command stream's path: only the command's own sensor stores a result, once.
    #[test]
    fn result_needs_the_commands_sensor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        store
            .conn
            .execute(
                "INSERT INTO commands (id, sensor_id, kind, issued_at, expires_at)
                 VALUES ('c1', 'sensor-a', 'ping', 0, 0)",
                [],
            )
            .unwrap();
        let now = OffsetDateTime::now_utc();
        let record = |sensor: &str, result: &CommandResult| {
            store.record_command_result(sensor, result, now).unwrap()
        };

        assert_eq!(
            record("sensor-b", &result("c1", "spoofed")),
            ResultOutcome::Dropped(DropReason::OtherSensor {
                owner: "sensor-a".into()
            })
        );
        assert_eq!(
            record("sensor-a", &result("c2", "")),
            ResultOutcome::Dropped(DropReason::UnknownCommand)
        );
        assert_eq!(
            record("sensor-a", &result("c1", "pong")),
            ResultOutcome::Stored
        );
        assert_eq!(
            record("sensor-a", &result("c1", "again")),
            ResultOutcome::Duplicate
        );
        let rows: Vec<(String, String)> = store
            .conn
            .prepare("SELECT command_id, detail FROM command_results")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, vec![("c1".to_string(), "pong".to_string())]);
    }

    /// A detail above the bound is cut at a character boundary and ends with its full length.
    #[test]
    fn long_detail_truncated_with_note() {
        let short = "é".repeat(MAX_DETAIL_BYTES / 2);
        assert_eq!(bounded_detail(&short), short.as_str());

        let long = "é".repeat(40_000);
        let bounded = bounded_detail(&long);
        assert!(bounded.len() <= MAX_DETAIL_BYTES, "{}", bounded.len());
        assert!(bounded.len() > MAX_DETAIL_BYTES - 40, "{}", bounded.len());
        assert!(
            bounded.ends_with("é [truncated: 80000 bytes in total]"),
            "{}",
            &bounded[bounded.len() - 60..]
        );
    }
}
