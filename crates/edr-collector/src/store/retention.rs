//! Retention: deletion of old events by age and by database size.
//!
//! Age: events whose OCSF `time` is older than the maximum age are deleted, and so are gap
//! records received before that time. Size: while the pages in use (page count minus free
//! pages, times the page size) exceed the maximum, the oldest stored events (lowest row id,
//! that is first received) are deleted in chunks of [`DELETE_CHUNK`]. Freed pages are reused
//! by later inserts; the file does not shrink. High-water marks are kept, so deleted events
//! are never stored again when a sensor resends them.
//!
//! Frames (see [`super::codec`]) are deleted once no event is left in them. Frames and events
//! are inserted in the same order, so every frame older than the frame of the oldest stored
//! event is empty. A frame whose events age retention deleted while an older frame still has
//! events (events received out of time order) stays until that older frame goes.

use rusqlite::params;
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
        &self,
        max_age: time::Duration,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let cutoff = now - max_age;
        let cutoff_ms = i64::try_from(cutoff.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let deleted = self
            .conn
            .execute("DELETE FROM events WHERE time < ?1", params![cutoff_ms])
            .map_err(self.sqlite())?;
        self.conn
            .execute(
                "DELETE FROM gaps WHERE received_at < ?1",
                params![cutoff.unix_timestamp()],
            )
            .map_err(self.sqlite())?;
        if deleted > 0 {
            self.delete_empty_frames()?;
        }
        Ok(deleted as u64)
    }

    /// Deletes the frames older than the frame of the oldest event stored in one, or every
    /// frame when no event is in one.
    fn delete_empty_frames(&self) -> Result<u64, StoreError> {
        let deleted = self
            .conn
            .execute(
                "DELETE FROM frames WHERE id < COALESCE(
                     (SELECT frame_id FROM events WHERE frame_id IS NOT NULL ORDER BY id LIMIT 1),
                     (SELECT MAX(id) + 1 FROM frames))",
                [],
            )
            .map_err(self.sqlite())?;
        Ok(deleted as u64)
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
    pub(crate) fn delete_oldest_chunk(&self) -> Result<u64, StoreError> {
        // Rows without a frame come first after an upgrade from schema version 6. Looking
        // for the oldest frame left is skipped while the chunks hold only such rows, so that
        // it does not scan them once per chunk.
        let framed: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(frame_id) FROM (SELECT frame_id FROM events ORDER BY id LIMIT ?1)",
                params![DELETE_CHUNK],
                |row| row.get(0),
            )
            .map_err(self.sqlite())?;
        let deleted = self
            .conn
            .execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?1)",
                params![DELETE_CHUNK],
            )
            .map_err(self.sqlite())?;
        if framed > 0 {
            self.delete_empty_frames()?;
        }
        Ok(deleted as u64)
    }
}
