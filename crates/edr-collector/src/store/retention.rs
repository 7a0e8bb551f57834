//! Retention: deletion of old events by age and by database size.
//!
//! Age: events whose OCSF `time` is older than the maximum age are deleted, and so are gap
//! records received before that time. Size: while the pages in use (page count minus free
//! pages, times the page size) exceed the maximum, the first received events are deleted in
//! chunks of [`DELETE_CHUNK`]. Row ids group events by sensor (schema version 7) and follow
//! the order in which each sensor's events arrived. So a chunk is taken from the starts of
//! the sensors' row id ranges: again and again, from the range whose first event was
//! received earliest, up to the receive time of the next range's first event. The OCSF
//! `time` is not used, so a sensor with a wrong clock cannot keep its events at the expense
//! of the others'. Freed pages are reused by later inserts; the file does not shrink.
//! High-water marks are kept, so deleted events are never stored again when a sensor resends
//! them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;

use super::{Store, StoreError};

/// Events deleted per transaction, so ingest waits at most one chunk.
pub(crate) const DELETE_CHUNK: u64 = 10_000;

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
        self.delete_oldest(DELETE_CHUNK)
    }

    /// Deletes up to `count` of the first received events; returns how many were deleted.
    pub(crate) fn delete_oldest(&self, count: u64) -> Result<u64, StoreError> {
        // Each row id range with its first event's receive time, earliest on top. Range 0
        // contains the rows that kept their ids in the upgrade to schema version 7.
        let mut ranges = BinaryHeap::new();
        let mut stmt = self
            .conn
            .prepare("SELECT 0 UNION ALL SELECT key FROM sensor_keys WHERE key <= ?1")
            .map_err(self.sqlite())?;
        let keys = stmt
            .query_map(params![super::MAX_SENSOR_KEY], |row| row.get::<_, i64>(0))
            .map_err(self.sqlite())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sqlite())?;
        for key in keys {
            if let Some(first) = self.first_received(key)? {
                ranges.push(Reverse((first, key)));
            }
        }

        let mut deleted = 0;
        while deleted < count {
            let Some(Reverse((_, key))) = ranges.pop() else {
                break;
            };
            let until = ranges.peek().map_or(i64::MAX, |Reverse((next, _))| *next);
            let (low, high) = key_range(key);
            let rows = self
                .conn
                .execute(
                    "DELETE FROM events WHERE id IN (
                         SELECT id FROM events
                         WHERE id BETWEEN ?1 AND ?2 AND CAST(received_at AS INTEGER) <= ?3
                         ORDER BY id LIMIT ?4)",
                    params![
                        low,
                        high,
                        until,
                        i64::try_from(count - deleted).unwrap_or(i64::MAX)
                    ],
                )
                .map_err(self.sqlite())?;
            deleted += rows as u64;
            // The range's first event always qualifies, so a range that gives nothing is
            // damaged; it is left out for the rest of this call.
            if rows == 0 {
                continue;
            }
            if let Some(first) = self.first_received(key)? {
                ranges.push(Reverse((first, key)));
            }
        }
        Ok(deleted)
    }

    /// Returns the receive time of the first event in the row id range of sensor key `key`.
    fn first_received(&self, key: i64) -> Result<Option<i64>, StoreError> {
        let (low, high) = key_range(key);
        self.conn
            .prepare_cached(
                "SELECT CAST(received_at AS INTEGER) FROM events WHERE id BETWEEN ?1 AND ?2
                 ORDER BY id LIMIT 1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![low, high], |row| row.get::<_, i64>(0))
                    .optional()
            })
            .map_err(self.sqlite())
    }
}

/// Returns the lowest and highest row id of sensor key `key`.
fn key_range(key: i64) -> (i64, i64) {
    let low = key << super::SEQ_BITS;
    (low, low | i64::try_from(super::MAX_SEQ).unwrap_or(i64::MAX))
}
