//! Retention: deletion of old events by age and by database size.
//!
//! Age: events whose OCSF `time` is older than the maximum age are deleted, and so are gap
//! records received before that time. Size: while the pages in use (page count minus free
//! pages, times the page size) exceed the maximum, the oldest stored events (lowest row id,
//! that is first received) are deleted in chunks of [`DELETE_CHUNK`]. Freed pages are reused
//! by later inserts; the file does not shrink. High-water marks are kept, so deleted events
//! are never stored again when a sensor resends them.
//!
//! Each frame (see [`super::codec`]) counts its stored events. A deletion counts down the
//! frames of the events it deletes and deletes each frame that reaches zero, in the same
//! transaction.

use std::collections::HashMap;

use rusqlite::types::ValueRef;
use rusqlite::{Transaction, params};
use time::OffsetDateTime;

use super::{Store, StoreError};

/// Events deleted per transaction, so ingest waits at most one chunk.
pub(crate) const DELETE_CHUNK: i64 = 10_000;

/// Events deleted by one retention pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetentionOutcome {
    pub(crate) by_age: u64,
    pub(crate) by_size: u64,
}

impl Store {
    /// Deletes events older than `max_age` before `now`.
    pub(crate) fn delete_older_than(
        &mut self,
        max_age: time::Duration,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let cutoff = now - max_age;
        let cutoff_ms = i64::try_from(cutoff.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        self.immediate(|tx| {
            let deleted = delete_events(tx, "time < ?1", cutoff_ms)?;
            tx.execute(
                "DELETE FROM gaps WHERE received_at < ?1",
                params![cutoff.unix_timestamp()],
            )?;
            Ok(deleted)
        })
    }

    /// Returns the bytes of database pages in use.
    pub(crate) fn used_bytes(&self) -> Result<u64, StoreError> {
        let pragma = |name: &str| {
            self.conn
                .pragma_query_value(None, name, |row| row.get::<_, i64>(0))
                .map_err(self.sqlite())
        };
        let used_pages = pragma("page_count")? - pragma("freelist_count")?;
        Ok(u64::try_from(used_pages * pragma("page_size")?).unwrap_or(0))
    }

    /// Deletes one chunk of the oldest events, and the frames it empties; returns how many
    /// events were deleted.
    pub(crate) fn delete_oldest_chunk(&mut self) -> Result<u64, StoreError> {
        self.immediate(|tx| {
            delete_events(
                tx,
                "id IN (SELECT id FROM events ORDER BY id LIMIT ?1)",
                DELETE_CHUNK,
            )
        })
    }
}

/// Deletes the events that match `condition` (binding `value` as `?1`), counts down the
/// frames they were in, and deletes the frames left without events. Returns how many events
/// were deleted.
fn delete_events(tx: &Transaction<'_>, condition: &str, value: i64) -> rusqlite::Result<u64> {
    let mut emptied: HashMap<i64, i64> = HashMap::new();
    let mut deleted = 0;
    {
        let mut stmt = tx.prepare(&format!(
            "DELETE FROM events WHERE {condition} RETURNING frame_id"
        ))?;
        let mut rows = stmt.query(params![value])?;
        while let Some(row) = rows.next()? {
            deleted += 1;
            // A value of another type, written by another program, names no frame.
            if let ValueRef::Integer(frame) = row.get_ref(0)? {
                *emptied.entry(frame).or_default() += 1;
            }
        }
    }
    let mut count_down = tx.prepare("UPDATE frames SET events = events - ?2 WHERE id = ?1")?;
    let mut delete_frame = tx.prepare("DELETE FROM frames WHERE id = ?1 AND events <= 0")?;
    for (frame, events) in emptied {
        count_down.execute(params![frame, events])?;
        delete_frame.execute(params![frame])?;
    }
    Ok(deleted)
}
