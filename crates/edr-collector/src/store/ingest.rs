//! Idempotent event ingest.
//!
//! Tables: `events` contains one row per OCSF event (its indexed columns, and its JSON as
//! text or where [`super::codec`] describes), `frames` the compressed frames of events,
//! `gaps` one row per gap record, `sensor_state` one row per sensor that ever streamed, with
//! its high-water mark (HWM) of sequence numbers and its latest heartbeat.
//!
//! Idempotency: a batch is stored in a `BEGIN IMMEDIATE` transaction that reads the
//! sensor's HWM, inserts only the records with `seq > HWM`, and writes the new HWM (the
//! batch's `last_seq` if greater). Several batches share one transaction (group commit), so
//! one fsync covers many streams. Because the HWM and the records commit together, a batch
//! resent after a lost ack, a Collector crash or a sensor restart finds its records at or
//! below the HWM and inserts nothing. The unique index on `events (sensor_id, seq)` rejects
//! a duplicate that would slip past the HWM, failing the transaction rather than storing it
//! twice. The ack carries the HWM only after the commit returns; the durability of that commit
//! is set by [`super::SyncMode`].

use edr_proto::v1::{CommandResult, SensorHealth};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, Transaction, params};
use time::OffsetDateTime;

use super::commands::{ResultOutcome, id_preview};
use super::{Store, StoreError};
use crate::ingest::{EventBody, IndexedFields, Record, ValidBatch};

/// Counts from storing one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IngestOutcome {
    /// The sensor's HWM after the commit; the value to acknowledge.
    pub(crate) durable_seq: u64,
    /// OCSF events inserted.
    pub(crate) events: u64,
    /// Gap and command-result records inserted.
    pub(crate) other: u64,
    /// Records at or below the previous HWM, dropped as duplicates.
    pub(crate) duplicates: u64,
    /// Command results dropped because their command does not exist or belongs to another
    /// sensor (see [`super::commands`]).
    pub(crate) results_dropped: u64,
}

impl Store {
    /// Stores a group of batches, possibly of several sensors, in one transaction: for each
    /// batch, the records above its sensor's HWM are inserted and the HWM advanced. Batches
    /// of the same sensor are applied in order, so the second reads the HWM the first wrote.
    /// Either every batch of the group is stored or none is.
    pub(crate) fn ingest_group(
        &mut self,
        group: &[(String, ValidBatch)],
        now: OffsetDateTime,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        self.immediate(|tx| {
            group
                .iter()
                .map(|(sensor_id, batch)| ingest_one(tx, sensor_id, batch, now))
                .collect()
        })
    }

    /// Returns the state of the WAL file, `collector.db-wal`, as the file system shows it.
    pub(crate) fn wal_state(&self) -> WalState {
        // Without WAL mode, which SQLite may decline to enter, there is no WAL file at all.
        let journal_mode: Result<String, _> =
            self.conn
                .pragma_query_value(None, "journal_mode", |row| row.get(0));
        if !journal_mode.is_ok_and(|mode| mode.eq_ignore_ascii_case("wal")) {
            return WalState::NotWal;
        }
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        match std::fs::metadata(&wal) {
            Ok(metadata) => WalState::Bytes(metadata.len()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => WalState::Deleted,
            Err(_) => WalState::Unknown,
        }
    }

    /// Copies every committed page from the WAL into the database file, waiting for readers,
    /// and returns whether all of them were copied.
    pub(crate) fn checkpoint_full(&self) -> Result<bool, StoreError> {
        self.checkpoint("FULL")
    }

    /// Copies every committed page from the WAL into the database file and empties the WAL,
    /// so that `collector.db` alone contains every commit. Returns whether that succeeded,
    /// which a reader with an old snapshot prevents.
    pub(crate) fn checkpoint_truncate(&self) -> Result<bool, StoreError> {
        self.checkpoint("TRUNCATE")
    }

    fn checkpoint(&self, mode: &str) -> Result<bool, StoreError> {
        let (busy, log, copied): (i64, i64, i64) = self
            .conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .map_err(self.sqlite())?;
        Ok(busy == 0 && log == copied)
    }

    /// Records a heartbeat: last seen time, health as JSON, versions and certificate expiry.
    pub(crate) fn record_heartbeat(
        &self,
        sensor_id: &str,
        health: Option<&SensorHealth>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let versions = health.and_then(|h| h.versions.as_ref());
        self.conn
            .execute(
                "INSERT INTO sensor_state (sensor_id, last_seen, health, sensor_version, os_build,
                                           ocsf_version, certificate_not_after)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (sensor_id) DO UPDATE SET
                     last_seen = excluded.last_seen,
                     health = COALESCE(excluded.health, health),
                     sensor_version = COALESCE(excluded.sensor_version, sensor_version),
                     os_build = COALESCE(excluded.os_build, os_build),
                     ocsf_version = COALESCE(excluded.ocsf_version, ocsf_version),
                     certificate_not_after =
                         COALESCE(excluded.certificate_not_after, certificate_not_after)",
                params![
                    sensor_id,
                    now.unix_timestamp(),
                    health.map(|h| health_json(h).to_string()),
                    versions.map(|v| v.sensor_version.clone()),
                    versions.map(|v| v.os_build.clone()),
                    versions.map(|v| v.ocsf_version.clone()),
                    health
                        .and_then(|h| h.certificate_not_after.as_ref())
                        .map(|t| t.seconds)
                ],
            )
            .map_err(self.sqlite())?;
        Ok(())
    }
}

/// The WAL file of the ingest connection, as [`Store::wal_state`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WalState {
    /// The database is not in WAL mode.
    NotWal,
    /// The file is gone while the connection is open. SQLite deletes it only when its last
    /// connection closes, so another program removed it. The commits not yet checkpointed,
    /// and every later one, are then only in the deleted file, and are lost when the process
    /// exits.
    Deleted,
    /// The file's size in bytes.
    Bytes(u64),
    /// The file could not be examined.
    Unknown,
}

/// Stores one batch inside the open transaction `tx`.
fn ingest_one(
    tx: &Transaction<'_>,
    sensor_id: &str,
    batch: &ValidBatch,
    now: OffsetDateTime,
) -> Result<IngestOutcome, rusqlite::Error> {
    let received_at = now.unix_timestamp();
    let received_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let hwm: u64 = tx
        .prepare_cached("SELECT hwm FROM sensor_state WHERE sensor_id = ?1")?
        .query_row(params![sensor_id], |row| row.get::<_, i64>(0))
        .optional()?
        .map_or(0, |hwm| u64::try_from(hwm).unwrap_or(0));

    let mut outcome = IngestOutcome {
        durable_seq: hwm.max(batch.last_seq),
        events: 0,
        other: 0,
        duplicates: 0,
        results_dropped: 0,
    };
    // The first dropped command result of the batch, for the one log line about all of them.
    let mut first_dropped = None;
    let mut rows = EventRows::new(tx, sensor_id, received_at, received_ms);
    let mut insert_frame =
        tx.prepare_cached("INSERT INTO frames (events, data) VALUES (?1, ?2)")?;
    // Row ids of the batch's frames, inserted when the first of their events is: a frame
    // whose events are all duplicates is not stored.
    let mut frame_ids: Vec<Option<i64>> = vec![None; batch.frames.len()];
    // Events of each frame that are stored, not dropped as duplicates; retention counts
    // them down and deletes the frame at zero.
    let mut stored = vec![0_i64; batch.frames.len()];
    for record in &batch.records {
        if let Record::Event {
            seq,
            body: EventBody::Framed { frame, .. },
            ..
        } = record
            && *seq > hwm
        {
            stored[*frame] += 1;
        }
    }
    let mut insert_gap = tx.prepare_cached(
        "INSERT INTO gaps (sensor_id, seq, first_seq, last_seq, records, bytes, reason,
                           detected_at, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for record in &batch.records {
        if record.seq() <= hwm {
            outcome.duplicates += 1;
            continue;
        }
        match record {
            Record::Event { seq, fields, body } => {
                // Text was checked to be UTF-8 by validation. It is bound as a borrowed slice,
                // which SQLite copies once, and so is a frame.
                let (json, frame_id, frame_index) = match body {
                    EventBody::Json(bytes) => {
                        (ToSqlOutput::Borrowed(ValueRef::Text(bytes)), None, None)
                    }
                    EventBody::Framed { frame, index } => {
                        let id = match frame_ids[*frame] {
                            Some(id) => id,
                            None => {
                                let data =
                                    ToSqlOutput::Borrowed(ValueRef::Blob(&batch.frames[*frame]));
                                insert_frame.execute(params![stored[*frame], data])?;
                                let id = tx.last_insert_rowid();
                                frame_ids[*frame] = Some(id);
                                id
                            }
                        };
                        let empty = ToSqlOutput::Borrowed(ValueRef::Blob(&[]));
                        (empty, Some(id), Some(*index))
                    }
                };
                rows.push(EventRow {
                    seq: to_sql_int(*seq),
                    fields,
                    json,
                    frame_id,
                    frame_index,
                })?;
                outcome.events += 1;
            }
            Record::Gap { seq, gap } => {
                insert_gap.execute(params![
                    sensor_id,
                    to_sql_int(*seq),
                    to_sql_int(gap.first_seq),
                    to_sql_int(gap.last_seq),
                    to_sql_int(gap.records),
                    to_sql_int(gap.bytes),
                    gap.reason,
                    gap.detected_at.as_ref().map(|t| t.seconds),
                    received_at
                ])?;
                outcome.other += 1;
            }
            Record::CommandResult { seq, result } => {
                match super::commands::insert_result(tx, sensor_id, result, "telemetry", now)? {
                    ResultOutcome::Stored | ResultOutcome::Duplicate => outcome.other += 1,
                    ResultOutcome::Dropped(reason) => {
                        outcome.results_dropped += 1;
                        first_dropped.get_or_insert((*seq, &result.command_id, reason));
                    }
                }
            }
        }
    }
    if let Some((seq, command_id, reason)) = first_dropped
        && let Some(suppressed) =
            super::commands::DROP_WARNINGS.allow_at(sensor_id, std::time::Instant::now())
    {
        tracing::warn!(
            %sensor_id,
            seq,
            command_id = ?id_preview(command_id),
            %reason,
            dropped = outcome.results_dropped,
            suppressed,
            "dropped command results of a batch that this sensor may not report; the first is named, and further drops of this sensor in the next 10 s are only counted in edr_collector_command_results_dropped_total"
        );
    }

    rows.flush()?;

    tx.prepare_cached(
        "INSERT INTO sensor_state (sensor_id, hwm, duplicates, last_seen)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (sensor_id) DO UPDATE SET
             hwm = MAX(hwm, excluded.hwm),
             duplicates = duplicates + excluded.duplicates,
             last_seen = excluded.last_seen",
    )?
    .execute(params![
        sensor_id,
        to_sql_int(outcome.durable_seq),
        to_sql_int(outcome.duplicates),
        received_at
    ])?;
    Ok(outcome)
}

/// Events inserted by one statement. With one statement per event, the writer thread spent
/// about 21,000 instructions per event, 30 % of them stepping, resetting and clearing the
/// statement (callgrind of the `store` bench's `commit_sync_full`). With 32 per statement it
/// spends about 14,700.
const EVENTS_PER_INSERT: usize = 32;

/// The columns of `events` that ingest sets, in the order [`EventRows`] binds them.
const EVENT_COLUMNS: &str = "sensor_id, seq, time, received_at, class_uid, activity_id, \
                             severity_id, process_uid, user_name, json, frame_id, frame_index";

/// Number of values in one row of [`EVENT_COLUMNS`].
const EVENT_VALUES: usize = 12;

/// Returns the statement that inserts `rows` events. A row that breaks a constraint rolls
/// back the whole transaction (`OR ROLLBACK`), as the writer does with any failure anyway.
/// With the default `OR ABORT`, SQLite copies each page that a statement of several rows
/// changes into a statement journal, to undo that statement alone. That cost a fifth of the
/// events per second with 1,000 sensors sending batches of 50 events.
fn insert_events_sql(rows: usize) -> String {
    let row = format!("({})", ["?"; EVENT_VALUES].join(", "));
    format!(
        "INSERT OR ROLLBACK INTO events ({EVENT_COLUMNS}) VALUES {}",
        vec![row; rows].join(", ")
    )
}

/// One event row waiting in [`EventRows`].
struct EventRow<'a> {
    seq: i64,
    fields: &'a IndexedFields,
    json: ToSqlOutput<'a>,
    frame_id: Option<i64>,
    frame_index: Option<u32>,
}

/// Inserts the events of one batch, [`EVENTS_PER_INSERT`] rows per statement, in the order
/// they are pushed.
struct EventRows<'a, 'tx> {
    tx: &'a Transaction<'tx>,
    sensor_id: &'a str,
    received_at: i64,
    received_ms: i64,
    waiting: Vec<EventRow<'a>>,
}

impl<'a, 'tx> EventRows<'a, 'tx> {
    fn new(
        tx: &'a Transaction<'tx>,
        sensor_id: &'a str,
        received_at: i64,
        received_ms: i64,
    ) -> Self {
        Self {
            tx,
            sensor_id,
            received_at,
            received_ms,
            waiting: Vec::with_capacity(EVENTS_PER_INSERT),
        }
    }

    fn push(&mut self, row: EventRow<'a>) -> Result<(), rusqlite::Error> {
        self.waiting.push(row);
        if self.waiting.len() == EVENTS_PER_INSERT {
            self.flush()?;
        }
        Ok(())
    }

    /// Inserts the waiting rows: all in one statement when there are [`EVENTS_PER_INSERT`],
    /// else one statement each, so that only two statements are ever prepared.
    fn flush(&mut self) -> Result<(), rusqlite::Error> {
        static MANY: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| insert_events_sql(EVENTS_PER_INSERT));
        static ONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| insert_events_sql(1));
        if self.waiting.len() == EVENTS_PER_INSERT {
            let mut statement = self.tx.prepare_cached(&MANY)?;
            for (position, row) in self.waiting.iter().enumerate() {
                self.bind(&mut statement, position * EVENT_VALUES, row)?;
            }
            statement.raw_execute()?;
        } else {
            let mut statement = self.tx.prepare_cached(&ONE)?;
            for row in &self.waiting {
                self.bind(&mut statement, 0, row)?;
                statement.raw_execute()?;
            }
        }
        self.waiting.clear();
        Ok(())
    }

    /// Binds `row` to the statement's parameters after the first `offset`.
    fn bind(
        &self,
        statement: &mut rusqlite::CachedStatement<'_>,
        offset: usize,
        row: &EventRow<'a>,
    ) -> Result<(), rusqlite::Error> {
        let fields = row.fields;
        statement.raw_bind_parameter(offset + 1, self.sensor_id)?;
        statement.raw_bind_parameter(offset + 2, row.seq)?;
        statement.raw_bind_parameter(offset + 3, fields.time.unwrap_or(self.received_ms))?;
        statement.raw_bind_parameter(offset + 4, self.received_at)?;
        statement.raw_bind_parameter(offset + 5, fields.class_uid)?;
        statement.raw_bind_parameter(offset + 6, fields.activity_id)?;
        statement.raw_bind_parameter(offset + 7, fields.severity_id)?;
        statement.raw_bind_parameter(offset + 8, fields.process_uid.as_deref())?;
        statement.raw_bind_parameter(offset + 9, fields.user_name.as_deref())?;
        statement.raw_bind_parameter(offset + 10, &row.json)?;
        statement.raw_bind_parameter(offset + 11, row.frame_id)?;
        statement.raw_bind_parameter(offset + 12, row.frame_index)?;
        Ok(())
    }
}

/// Converts a protobuf `uint64` to SQLite's signed 64-bit integer; values above `i64::MAX`
/// saturate. Validation rejects sequence numbers and gap fields above it, because a saturated
/// one would be stored as another number than the one acknowledged.
pub(crate) fn to_sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Renders a heartbeat's health as JSON for the `sensor_state.health` column, which
/// `sensors list` prints: losses, buffer usage and gaps, versions and the expiry of the
/// certificate the sensor uses.
fn health_json(health: &SensorHealth) -> serde_json::Value {
    let lost: Vec<_> = health
        .events_lost
        .iter()
        .map(|loss| {
            serde_json::json!({"source": loss.source, "reason": loss.reason, "count": loss.count})
        })
        .collect();
    let buffer = health.buffer.as_ref().map(|b| {
        let gaps: Vec<_> = b
            .gaps
            .iter()
            .map(|g| serde_json::json!([g.first_seq, g.last_seq]))
            .collect();
        serde_json::json!({"used_bytes": b.used_bytes, "capacity_bytes": b.capacity_bytes, "gaps": gaps})
    });
    let versions = health.versions.as_ref().map(|v| {
        serde_json::json!({"sensor": v.sensor_version, "os_build": v.os_build, "ocsf": v.ocsf_version})
    });
    let certificate_not_after = health
        .certificate_not_after
        .as_ref()
        .and_then(|at| OffsetDateTime::from_unix_timestamp(at.seconds).ok())
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    serde_json::json!({
        "events_lost": lost,
        "buffer": buffer,
        "versions": versions,
        "certificate_not_after": certificate_not_after,
    })
}

/// Returns the status name stored for a command result.
pub(crate) fn status_name(result: &CommandResult) -> &'static str {
    use edr_proto::v1::CommandStatus;
    match result.status() {
        CommandStatus::Unspecified => "unspecified",
        CommandStatus::Succeeded => "succeeded",
        CommandStatus::Failed => "failed",
        CommandStatus::Expired => "expired",
        CommandStatus::Unsupported => "unsupported",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use edr_proto::v1::{BufferedRecord, EventBatch, Gap, buffered_record};

    use super::*;
    use crate::ingest::validate;

    /// Returns an event whose indexed fields all differ with `seq`, or are absent for some.
    fn event(seq: u64) -> String {
        let user = if seq.is_multiple_of(3) {
            String::new()
        } else {
            format!(r#","actor":{{"user":{{"name":"user-{seq}"}}}}"#)
        };
        format!(
            r#"{{"class_uid":{},"activity_id":{},"severity_id":{},"time":{},"process":{{"uid":"p-{seq}"}}{user}}}"#,
            1000 + seq,
            seq % 7,
            seq % 5,
            1_700_000_000_000 + seq
        )
    }

    /// Returns a validated batch of the events `first` to `last`.
    fn events(first: u64, last: u64) -> ValidBatch {
        let records = (first..=last)
            .map(|seq| BufferedRecord {
                seq,
                kind: Some(buffered_record::Kind::OcsfEventJson(event(seq).into())),
            })
            .collect();
        let batch = EventBatch {
            first_seq: first,
            last_seq: last,
            records,
        };
        validate(batch, usize::MAX).unwrap()
    }

    /// A row that breaks the unique index fails the whole group and leaves nothing of it
    /// behind. Once the conflicting row is gone, the same batch is stored in full.
    #[test]
    fn conflict_rolls_back_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        store
            .conn
            .execute(
                "INSERT INTO events (sensor_id, seq, time, received_at, class_uid, json)
                 VALUES ('sensor-a', 40, 0, 0, 1, '{}')",
                [],
            )
            .unwrap();
        let count = |store: &Store| -> i64 {
            store
                .conn
                .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
                .unwrap()
        };
        let error = store
            .ingest_group(&[("sensor-a".to_string(), events(1, 70))], now)
            .unwrap_err();
        assert!(error.to_string().contains("UNIQUE"), "{error}");
        assert_eq!(count(&store), 1);
        assert!(store.conn.is_autocommit());

        store
            .conn
            .execute("DELETE FROM events WHERE seq = 40", [])
            .unwrap();
        let outcome = store
            .ingest_group(&[("sensor-a".to_string(), events(1, 70))], now)
            .unwrap();
        assert_eq!(outcome[0].events, 70);
        assert_eq!(count(&store), 70);
    }

    /// Events stored several to a statement keep each their own columns: a batch of more
    /// than two statements' worth, starting below the HWM, with a gap record among them.
    #[test]
    fn each_event_keeps_its_columns() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        store
            .ingest_group(&[("sensor-a".to_string(), events(1, 5))], now)
            .unwrap();

        let last = 3 + 2 * EVENTS_PER_INSERT as u64 + 7;
        let records = (3..=last)
            .map(|seq| BufferedRecord {
                seq,
                kind: Some(if seq == 40 {
                    buffered_record::Kind::Gap(Gap {
                        first_seq: 1,
                        last_seq: 2,
                        ..Default::default()
                    })
                } else {
                    buffered_record::Kind::OcsfEventJson(event(seq).into())
                }),
            })
            .collect();
        let batch = validate(
            EventBatch {
                first_seq: 3,
                last_seq: last,
                records,
            },
            usize::MAX,
        )
        .unwrap();
        let outcome = store
            .ingest_group(&[("sensor-a".to_string(), batch)], now)
            .unwrap();
        assert_eq!(
            outcome[0],
            IngestOutcome {
                durable_seq: last,
                events: last - 5 - 1,
                other: 1,
                duplicates: 3,
                results_dropped: 0,
            }
        );

        let mut statement = store
            .conn
            .prepare(
                "SELECT sensor_id, seq, time, class_uid, activity_id, severity_id, process_uid,
                        user_name, json FROM events ORDER BY seq",
            )
            .unwrap();
        let rows: Vec<_> = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, u64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, Option<String>>(7)?,
                    row.get::<_, String>(8)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<_> = (1..=last)
            .filter(|&seq| seq != 40)
            .map(|seq| {
                (
                    "sensor-a".to_string(),
                    seq,
                    1_700_000_000_000 + seq as i64,
                    1000 + seq as i64,
                    (seq % 7) as i64,
                    (seq % 5) as i64,
                    format!("p-{seq}"),
                    (seq % 3 != 0).then(|| format!("user-{seq}")),
                    event(seq),
                )
            })
            .collect();
        assert_eq!(rows, expected);
    }
}
