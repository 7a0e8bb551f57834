//! Commands queued for sensors and their results.
//!
//! `commands` holds one row per queued command; `delivered_at` is set when the Command stream
//! sends it. `command_results` holds the first result received per command id, from either
//! the telemetry stream (the sensor's priority lane) or the Command stream; a second copy of
//! the same result is ignored, so both paths may deliver it.

use edr_proto::v1::CommandResult;
use rusqlite::{Connection, params};
use time::OffsetDateTime;

/// Stores `result` unless a result for the same command id exists.
pub(crate) fn insert_result(
    conn: &Connection,
    sensor_id: &str,
    result: &CommandResult,
    received_via: &str,
    now: OffsetDateTime,
) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO command_results
             (command_id, sensor_id, status, completed_at, detail, received_at, received_via)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        result.command_id,
        sensor_id,
        super::ingest::status_name(result),
        result.completed_at.as_ref().map(|t| t.seconds),
        result.detail,
        now.unix_timestamp(),
        received_via
    ])?;
    Ok(())
}
