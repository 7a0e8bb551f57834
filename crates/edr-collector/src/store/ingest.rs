//! Idempotent event ingest.
//!
//! Tables: `events` contains one row per OCSF event (the JSON, as text or compressed as
//! [`super::codec`] describes, plus indexed columns), `sensor_keys` a number for each sensor
//! that sent events, `gaps` one row per gap record, `sensor_state` one row per sensor that
//! ever streamed, with its high-water mark (HWM) of sequence numbers and its latest heartbeat.
//!
//! Idempotency: a batch is stored in a `BEGIN IMMEDIATE` transaction that reads the
//! sensor's HWM, inserts only the records with `seq > HWM`, and writes the new HWM (the
//! batch's `last_seq` if greater). Several batches share one transaction (group commit), so
//! one fsync covers many streams. Because the HWM and the records commit together, a batch
//! resent after a lost ack, a Collector crash or a sensor restart finds its records at or
//! below the HWM and inserts nothing. An event's row id is made of its sensor's number in
//! `sensor_keys` and its seq ([`super::SEQ_BITS`]), so the table itself rejects a duplicate
//! that would slip past the HWM, failing the transaction rather than storing it twice. The
//! ack carries the HWM only after the commit returns; the durability of that commit is set by
//! [`super::SyncMode`].

use edr_proto::v1::{CommandResult, SensorHealth};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{Store, StoreError};
use crate::ingest::{EventBody, Record, ValidBatch};

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
        let path = self.path.clone();
        let sqlite = move |error| StoreError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&sqlite)?;
        let mut outcomes = Vec::with_capacity(group.len());
        for (sensor_id, batch) in group {
            let Some(key) = sensor_key(&tx, sensor_id).map_err(&sqlite)? else {
                return Err(StoreError::TooManySensors {
                    path: self.path.clone(),
                    sensor_id: sensor_id.clone(),
                });
            };
            outcomes.push(ingest_one(&tx, sensor_id, key, batch, now).map_err(&sqlite)?);
        }
        tx.commit().map_err(&sqlite)?;
        Ok(outcomes)
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

/// Returns the key of `sensor_id` in `sensor_keys`, adding it if the sensor has none yet, or
/// `None` when every key up to [`super::MAX_SENSOR_KEY`] is taken.
fn sensor_key(tx: &Transaction<'_>, sensor_id: &str) -> Result<Option<i64>, rusqlite::Error> {
    let known = tx
        .prepare_cached("SELECT key FROM sensor_keys WHERE sensor_id = ?1")?
        .query_row(params![sensor_id], |row| row.get::<_, i64>(0))
        .optional()?;
    if let Some(key) = known {
        // A key above the limit comes from an upgrade of a database with more sensors, or
        // from an edit by hand; its row ids would not fit.
        return Ok((1..=super::MAX_SENSOR_KEY).contains(&key).then_some(key));
    }
    tx.prepare_cached("INSERT INTO sensor_keys (sensor_id) VALUES (?1)")?
        .execute(params![sensor_id])?;
    let key = tx.last_insert_rowid();
    // The transaction that took the key rolls back with the error, so the key stays free.
    Ok((1..=super::MAX_SENSOR_KEY).contains(&key).then_some(key))
}

/// Returns the row id of event `seq` of the sensor with key `key` (see [`super::SEQ_BITS`]).
/// Validation keeps `seq` at or below [`super::MAX_SEQ`].
fn event_row_id(key: i64, seq: u64) -> i64 {
    (key << super::SEQ_BITS) | to_sql_int(seq & super::MAX_SEQ)
}

/// Stores one batch inside the open transaction `tx`; `key` is the sensor's key.
fn ingest_one(
    tx: &Transaction<'_>,
    sensor_id: &str,
    key: i64,
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
    };
    let mut insert_event = tx.prepare_cached(
        "INSERT INTO events (id, sensor_id, seq, time, received_at, class_uid, activity_id,
                             severity_id, process_uid, user_name, json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
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
                // Text was checked to be UTF-8 by validation. Both forms are bound as borrowed
                // slices, which SQLite copies once.
                let json = match body {
                    EventBody::Json(bytes) => ToSqlOutput::Borrowed(ValueRef::Text(bytes)),
                    EventBody::Zstd(frame) => ToSqlOutput::Borrowed(ValueRef::Blob(frame)),
                };
                insert_event.execute(params![
                    event_row_id(key, *seq),
                    sensor_id,
                    to_sql_int(*seq),
                    fields.time.unwrap_or(received_ms),
                    received_at,
                    fields.class_uid,
                    fields.activity_id,
                    fields.severity_id,
                    fields.process_uid,
                    fields.user_name,
                    json
                ])?;
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
            Record::CommandResult { result, .. } => {
                super::commands::insert_result(tx, sensor_id, result, "telemetry", now)?;
                outcome.other += 1;
            }
        }
    }

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

/// Converts a protobuf `uint64` to SQLite's signed 64-bit integer; values above `i64::MAX`
/// (never produced by a sensor, whose counters start at 1) saturate.
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
    use edr_proto::v1::{BufferedRecord, EventBatch, buffered_record};

    use super::*;
    use crate::store::query::EventFilter;
    use crate::store::{MAX_SENSOR_KEY, SEQ_BITS};

    /// Returns a valid batch of events `seqs`, each with its seq as its `time`.
    fn batch(seqs: std::ops::RangeInclusive<u64>) -> ValidBatch {
        batch_with(seqs, |seq| i64::try_from(seq).unwrap())
    }

    /// Returns a valid batch of events `seqs` whose OCSF times `time_of` gives.
    fn batch_with(seqs: std::ops::RangeInclusive<u64>, time_of: impl Fn(u64) -> i64) -> ValidBatch {
        let records: Vec<_> = seqs
            .clone()
            .map(|seq| BufferedRecord {
                seq,
                kind: Some(buffered_record::Kind::OcsfEventJson(
                    format!(r#"{{"class_uid":1007,"time":{}}}"#, time_of(seq))
                        .into_bytes()
                        .into(),
                )),
            })
            .collect();
        let batch = EventBatch {
            first_seq: *seqs.start(),
            last_seq: *seqs.end(),
            records,
        };
        crate::ingest::validate(batch, usize::MAX).unwrap()
    }

    fn rows(store: &Store) -> Vec<(i64, String, i64)> {
        store
            .conn
            .prepare("SELECT id, sensor_id, seq FROM events ORDER BY id")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn seqs_of(store: &Store, sensor_id: &str) -> Vec<i64> {
        let filter = EventFilter {
            sensor_id: Some(sensor_id.into()),
            ..EventFilter::default()
        };
        let mut seqs = Vec::new();
        store
            .for_each_event(
                &filter,
                |row| {
                    assert_eq!(row.sensor_id, sensor_id);
                    seqs.push(row.seq);
                    Ok(())
                },
                |damaged| panic!("damaged row {damaged:?}"),
            )
            .unwrap();
        seqs
    }

    /// Row ids are the sensor's key times 2^44 plus the seq. A sensor filter finds its events
    /// by them, and they reject a duplicate that gets past the high-water mark.
    #[test]
    fn event_row_ids_are_sensor_key_and_seq() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        store
            .ingest_group(
                &[("b".into(), batch(1..=3)), ("a".into(), batch(1..=2))],
                now,
            )
            .unwrap();
        store
            .ingest_group(&[("b".into(), batch(4..=4))], now)
            .unwrap();
        let b = 1_i64 << SEQ_BITS;
        let a = 2_i64 << SEQ_BITS;
        assert_eq!(
            rows(&store),
            [
                (b | 1, "b".into(), 1),
                (b | 2, "b".into(), 2),
                (b | 3, "b".into(), 3),
                (b | 4, "b".into(), 4),
                (a | 1, "a".into(), 1),
                (a | 2, "a".into(), 2),
            ]
        );
        assert_eq!(seqs_of(&store, "a"), [1, 2]);
        assert_eq!(seqs_of(&store, "b"), [1, 2, 3, 4]);
        assert!(seqs_of(&store, "c").is_empty());
        assert_eq!(store.sensor_status("b").unwrap().events, 4);

        // Without the high-water mark, only the row id stops the second copy.
        store
            .conn
            .execute("UPDATE sensor_state SET hwm = 0 WHERE sensor_id = 'a'", [])
            .unwrap();
        let err = store
            .ingest_group(&[("a".into(), batch(2..=3))], now)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("UNIQUE constraint failed: events.id"),
            "{err}"
        );
        assert_eq!(rows(&store).len(), 6);
    }

    /// A sensor filter reads the sensor's row id range, not the whole table.
    #[test]
    fn sensor_filter_reads_its_row_id_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let filter = EventFilter {
            sensor_id: Some("a".into()),
            ..EventFilter::default()
        };
        let (conditions, values) = super::super::query::filter_sql(&filter);
        let plan: Vec<String> = store
            .conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT id FROM events WHERE 1 = 1{conditions}"
            ))
            .unwrap()
            .query_map(rusqlite::params_from_iter(values), |row| row.get(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter()
                .any(|step| step.contains("INTEGER PRIMARY KEY (rowid>? AND rowid<?)")),
            "{plan:?}"
        );
    }

    /// When every key is taken, a new sensor's batch fails as a whole and takes no key.
    #[test]
    fn new_sensor_fails_when_keys_run_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        store
            .conn
            .execute(
                "INSERT INTO sensor_keys (key, sensor_id) VALUES (?1, 'last')",
                params![MAX_SENSOR_KEY],
            )
            .unwrap();
        store
            .ingest_group(&[("last".into(), batch(1..=2))], now)
            .unwrap();

        let err = store
            .ingest_group(
                &[("last".into(), batch(3..=3)), ("new".into(), batch(1..=1))],
                now,
            )
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::TooManySensors { sensor_id, .. } if sensor_id == "new"),
            "{err}"
        );
        assert!(err.to_string().contains("524287 sensors"), "{err}");

        let keys: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM sensor_keys", [], |row| row.get(0))
            .unwrap();
        assert_eq!(keys, 1);
        assert_eq!(seqs_of(&store, "last"), [1, 2]);
        let last = MAX_SENSOR_KEY << SEQ_BITS;
        assert!(rows(&store).iter().all(|(id, _, seq)| *id == last | seq));
    }

    /// Size retention deletes the first received events, whatever their OCSF time: a sensor
    /// whose clock runs years ahead does not keep its events while the others' go.
    #[test]
    fn first_received_events_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path()).unwrap();
        let start = OffsetDateTime::now_utc();
        let seconds = |n| start + time::Duration::seconds(n);
        let far_future = 253_402_300_000_000;
        store
            .ingest_group(
                &[("future".into(), batch_with(1..=3, |_| far_future))],
                seconds(0),
            )
            .unwrap();
        store
            .ingest_group(
                &[("live".into(), batch_with(1..=3, |_| 1_700_000_000_000))],
                seconds(10),
            )
            .unwrap();
        store
            .ingest_group(
                &[("future".into(), batch_with(4..=5, |_| far_future))],
                seconds(20),
            )
            .unwrap();
        store
            .ingest_group(
                &[("past".into(), batch_with(1..=2, |_| 1_000))],
                seconds(30),
            )
            .unwrap();

        assert_eq!(store.delete_oldest(4).unwrap(), 4);
        assert_eq!(seqs_of(&store, "future"), [4, 5]);
        assert_eq!(seqs_of(&store, "live"), [2, 3]);
        assert_eq!(seqs_of(&store, "past"), [1, 2]);

        assert_eq!(store.delete_oldest(3).unwrap(), 3);
        assert!(seqs_of(&store, "live").is_empty());
        assert_eq!(seqs_of(&store, "future"), [5]);

        assert_eq!(store.delete_oldest(100).unwrap(), 3);
        assert!(rows(&store).is_empty());
    }
}
