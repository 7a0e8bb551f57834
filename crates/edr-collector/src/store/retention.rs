//! Retention: deletion of old events by age and by database size.
//!
//! Age: events whose OCSF `time` is older than the maximum age are deleted, and so are gap
//! records received before that time. Size: while the pages in use (page count minus free
//! pages, times the page size) exceed the maximum, the oldest stored events (lowest row id,
//! that is first received) are deleted in chunks of [`DELETE_CHUNK`]. Freed pages are reused
//! by later inserts; the file does not shrink. High-water marks are kept, so deleted events
//! are never stored again when a sensor resends them.

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

    /// Deletes one chunk of the oldest events; returns how many were deleted.
    pub(crate) fn delete_oldest_chunk(&self) -> Result<u64, StoreError> {
        let deleted = self
            .conn
            .execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?1)",
                params![DELETE_CHUNK],
            )
            .map_err(self.sqlite())?;
        Ok(deleted as u64)
    }
}
