//! Read-side queries for the CLI: events, sensor status, gaps and commands.

use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;

use super::codec::{CodecError, Dictionaries, JSON_FUNCTION, SCAN_COLUMNS, STORED_COLUMNS};
use super::{Store, StoreError, from_unix};

/// Filters of `edr-collector events` and `export`. Times are Unix milliseconds.
#[derive(Debug, Default, Clone)]
pub(crate) struct EventFilter {
    pub(crate) sensor_id: Option<String>,
    pub(crate) class_uid: Option<i64>,
    pub(crate) since_ms: Option<i64>,
    pub(crate) until_ms: Option<i64>,
    /// JSON paths (already validated, for example `$.process.file.name`) and values; a value
    /// that parses as an integer also matches the integer.
    pub(crate) conditions: Vec<(String, String)>,
    pub(crate) limit: Option<u64>,
}

/// One stored event.
#[derive(Debug)]
pub(crate) struct EventRow {
    pub(crate) sensor_id: String,
    pub(crate) seq: i64,
    pub(crate) time_ms: i64,
    pub(crate) class_uid: i64,
    pub(crate) activity_id: Option<i64>,
    pub(crate) severity_id: Option<i64>,
    pub(crate) process_uid: Option<String>,
    pub(crate) user_name: Option<String>,
    pub(crate) json: String,
}

/// Telemetry state of one sensor.
#[derive(Debug, Default)]
pub(crate) struct SensorStatus {
    pub(crate) hwm: u64,
    pub(crate) duplicates: u64,
    pub(crate) last_seen: Option<OffsetDateTime>,
    pub(crate) health_json: Option<String>,
    pub(crate) sensor_version: Option<String>,
    pub(crate) events: u64,
    pub(crate) gaps: u64,
    pub(crate) gap_records: u64,
}

/// One command with its result, if any.
#[derive(Debug)]
pub(crate) struct CommandRow {
    pub(crate) id: String,
    pub(crate) sensor_id: String,
    pub(crate) kind: String,
    pub(crate) issued_at: OffsetDateTime,
    pub(crate) expires_at: OffsetDateTime,
    pub(crate) delivered_at: Option<OffsetDateTime>,
    pub(crate) status: Option<String>,
    pub(crate) detail: Option<String>,
    pub(crate) received_via: Option<String>,
}

/// A stored event that cannot be read, which [`Store::for_each_event`] skipped: its JSON is
/// damaged, or one of its columns contains a value of the wrong type.
#[derive(Debug, thiserror::Error)]
#[error("event {sensor_id} seq {seq} cannot be read: {source}")]
pub(crate) struct DamagedEvent {
    pub(crate) sensor_id: String,
    /// The seq as stored; a number unless the row was edited by another program.
    pub(crate) seq: String,
    pub(crate) source: CodecError,
}

/// Counts of one [`Store::for_each_event`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventScan {
    /// Events passed to `each`.
    pub(crate) read: u64,
    /// Rows skipped because their JSON cannot be read.
    pub(crate) damaged: u64,
}

impl Store {
    /// Calls `each` for every event matching `filter`, oldest first, without holding all rows
    /// in memory. A row whose JSON cannot be read goes to `damaged` instead, and the scan goes
    /// on. Such a row also goes to `damaged` when a `--where` condition cannot be checked on
    /// it, because it might match. `filter.limit` caps the events passed to `each`, so the
    /// damaged rows do not count toward it.
    pub(crate) fn for_each_event(
        &self,
        filter: &EventFilter,
        mut each: impl FnMut(EventRow) -> Result<(), StoreError>,
        mut damaged: impl FnMut(DamagedEvent),
    ) -> Result<EventScan, StoreError> {
        let (conditions, values) = filter_sql(filter);
        let dictionaries = self.dictionaries()?;
        let mut scan = EventScan::default();
        let mut after: Option<RowKey> = None;
        loop {
            let remaining = match filter.limit {
                Some(limit) if scan.read >= limit => break,
                Some(limit) => Some(limit - scan.read),
                None => None,
            };

            // The first pass runs the filter alone. When it skipped damaged rows and the limit
            // is not reached yet, the next pass continues after the last row seen, by the
            // same key the rows are sorted on, and requests only the events still missing.
            let (sql, values) = page_sql(&conditions, &values, after.as_ref(), remaining);
            let mut stmt = self.conn.prepare(&sql).map_err(self.sqlite())?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(values))
                .map_err(self.sqlite())?;
            let mut returned: u64 = 0;
            while let Some(row) = rows.next().map_err(self.sqlite())? {
                returned += 1;
                let (key, event) = self.read_event(row, &dictionaries)?;
                after = Some(key);
                match event {
                    Ok(event) => {
                        scan.read += 1;
                        each(event)?;
                    }
                    Err(event) => {
                        scan.damaged += 1;
                        damaged(event);
                    }
                }
            }

            // Without a limit the pass read every matching row, and with one, so did a pass
            // that returned fewer rows than it requested. Otherwise the check at the top of
            // the loop decides whether damaged rows left events to read.
            if remaining.is_none_or(|remaining| returned < remaining) {
                break;
            }
        }
        Ok(scan)
    }

    /// Reads one row of the query built by [`page_sql`]. The sort key is kept as stored, so
    /// that a row with a value of the wrong type in any column, the key included, is still
    /// returned as damaged and the scan can continue after it.
    fn read_event(
        &self,
        row: &rusqlite::Row<'_>,
        dictionaries: &Dictionaries,
    ) -> Result<(RowKey, Result<EventRow, DamagedEvent>), StoreError> {
        let key = RowKey {
            sensor_id: row.get(0).map_err(self.sqlite())?,
            seq: row.get(1).map_err(self.sqlite())?,
            time: row.get(2).map_err(self.sqlite())?,
        };
        let event = (|| {
            Ok(EventRow {
                sensor_id: column(row, 0)?,
                seq: column(row, 1)?,
                time_ms: datable(column(row, 2)?)?,
                class_uid: column(row, 3)?,
                activity_id: column(row, 4)?,
                severity_id: column(row, 5)?,
                process_uid: column(row, 6)?,
                user_name: column(row, 7)?,
                json: dictionaries.scanned(
                    row.get_ref(8)?,
                    row.get_ref(9)?,
                    row.get_ref(10)?,
                    |id| {
                        self.conn
                            .prepare_cached("SELECT data FROM frames WHERE id = ?1")?
                            .query_row([id], |row| row.get(0))
                            .optional()
                    },
                )??,
            })
        })();
        match event {
            Ok(event) => Ok((key, Ok(event))),
            Err(ReadError::Damaged(source)) => {
                let damaged = DamagedEvent {
                    sensor_id: stored_text(&key.sensor_id),
                    seq: stored_text(&key.seq),
                    source,
                };
                Ok((key, Err(damaged)))
            }
            Err(ReadError::Sqlite(source)) => Err(self.sqlite()(source)),
        }
    }

    /// Returns the telemetry state of `sensor_id`; all zero when it never streamed.
    pub(crate) fn sensor_status(&self, sensor_id: &str) -> Result<SensorStatus, StoreError> {
        let state = self
            .conn
            .query_row(
                "SELECT hwm, duplicates, last_seen, health, sensor_version
                 FROM sensor_state WHERE sensor_id = ?1",
                params![sensor_id],
                |row| {
                    Ok(SensorStatus {
                        hwm: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                        duplicates: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                        last_seen: row.get::<_, Option<i64>>(2)?.map(from_unix),
                        health_json: row.get(3)?,
                        sensor_version: row.get(4)?,
                        ..SensorStatus::default()
                    })
                },
            )
            .optional()
            .map_err(self.sqlite())?;
        let mut status = state.unwrap_or_default();
        // A gap of damaged bytes has `records` 0 (unknown), so each sequence number in its
        // range counts as a lost record, as in the sensor's replay summary.
        // `TOTAL` sums as a float, where `SUM` fails with "integer overflow", because databases
        // written before validation checked gap records can contain counts near `i64::MAX`.
        // The float is exact up to 2^53 records and saturates when converted below.
        let (events, gaps, gap_records): (i64, i64, f64) = self
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM events WHERE sensor_id = ?1),
                        COUNT(*),
                        TOTAL(CASE WHEN records > 0 THEN records
                                   ELSE MAX(last_seq - first_seq + 1, 0) END)
                 FROM gaps WHERE sensor_id = ?1",
                params![sensor_id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .map_err(self.sqlite())?;
        status.events = u64::try_from(events).unwrap_or(0);
        status.gaps = u64::try_from(gaps).unwrap_or(0);
        // `as` saturates at the bounds of `u64` and turns a negative sum into 0.
        status.gap_records = gap_records as u64;
        Ok(status)
    }

    /// Queues a command for `sensor_id`, which must be enrolled and not revoked.
    pub(crate) fn queue_command(
        &self,
        sensor_id: &str,
        kind: &str,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<String, StoreError> {
        let revoked: Option<Option<i64>> = self
            .conn
            .query_row(
                "SELECT revoked_at FROM sensors WHERE id = ?1",
                params![sensor_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.sqlite())?;
        match revoked {
            None => {
                return Err(StoreError::UnknownSensor {
                    id: sensor_id.to_string(),
                });
            }
            Some(Some(at)) => {
                return Err(StoreError::RevokedSensor {
                    id: sensor_id.to_string(),
                    revoked_at: super::from_unix(at)
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_else(|_| at.to_string()),
                });
            }
            Some(None) => {}
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.conn
            .execute(
                "INSERT INTO commands (id, sensor_id, kind, issued_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id,
                    sensor_id,
                    kind,
                    now.unix_timestamp(),
                    expires_at.unix_timestamp()
                ],
            )
            .map_err(self.sqlite())?;
        Ok(id)
    }

    /// Returns undelivered, unexpired commands of `sensor_id`, oldest first.
    pub(crate) fn pending_commands(
        &self,
        sensor_id: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<CommandRow>, StoreError> {
        self.select_commands(
            "WHERE c.sensor_id = ?1 AND c.delivered_at IS NULL AND c.expires_at > ?2",
            params![sensor_id, now.unix_timestamp()],
        )
    }

    /// Marks a command as sent to the sensor.
    pub(crate) fn mark_delivered(&self, id: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE commands SET delivered_at = ?2 WHERE id = ?1 AND delivered_at IS NULL",
                params![id, now.unix_timestamp()],
            )
            .map_err(self.sqlite())?;
        Ok(())
    }

    /// Stores a result received on the Command stream; a second copy is ignored.
    pub(crate) fn record_command_result(
        &self,
        sensor_id: &str,
        result: &edr_proto::v1::CommandResult,
        now: OffsetDateTime,
    ) -> Result<super::commands::ResultOutcome, StoreError> {
        super::commands::insert_result(&self.conn, sensor_id, result, "command", now)
            .map_err(self.sqlite())
    }

    /// Returns every command with its result, newest first.
    pub(crate) fn list_commands(&self) -> Result<Vec<CommandRow>, StoreError> {
        let mut rows = self.select_commands("", params![])?;
        rows.reverse();
        Ok(rows)
    }

    fn select_commands(
        &self,
        condition: &str,
        values: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<CommandRow>, StoreError> {
        let sql = format!(
            "SELECT c.id, c.sensor_id, c.kind, c.issued_at, c.expires_at, c.delivered_at,
                    r.status, r.detail, r.received_via
             FROM commands c LEFT JOIN command_results r ON r.command_id = c.id
             {condition} ORDER BY c.issued_at, c.rowid"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.sqlite())?;
        let rows = stmt
            .query_map(values, |row| {
                Ok(CommandRow {
                    id: row.get(0)?,
                    sensor_id: row.get(1)?,
                    kind: row.get(2)?,
                    issued_at: from_unix(row.get(3)?),
                    expires_at: from_unix(row.get(4)?),
                    delivered_at: row.get::<_, Option<i64>>(5)?.map(from_unix),
                    status: row.get(6)?,
                    detail: row.get(7)?,
                    received_via: row.get(8)?,
                })
            })
            .map_err(self.sqlite())?;
        rows.collect::<Result<_, _>>().map_err(self.sqlite())
    }
}

/// The reason a row could not be read in [`Store::read_event`].
enum ReadError {
    /// The row is damaged. The scan reports it and goes on.
    Damaged(CodecError),
    /// The query itself failed, so the scan stops.
    Sqlite(rusqlite::Error),
}

impl From<CodecError> for ReadError {
    fn from(source: CodecError) -> Self {
        Self::Damaged(source)
    }
}

impl From<rusqlite::Error> for ReadError {
    fn from(source: rusqlite::Error) -> Self {
        Self::Sqlite(source)
    }
}

/// Reads column `index` of an `events` row. A value of the wrong type, which only another
/// program can store, makes the row damaged.
fn column<T: rusqlite::types::FromSql>(
    row: &rusqlite::Row<'_>,
    index: usize,
) -> Result<T, ReadError> {
    row.get(index).map_err(|err| match err {
        rusqlite::Error::InvalidColumnType(_, name, kind) => {
            ReadError::Damaged(CodecError::Damaged(format!(
                "invalid {name} column: it contains the {kind} value \"{}\"",
                stored_text(&row.get::<_, Value>(index).unwrap_or(Value::Null))
            )))
        }
        rusqlite::Error::IntegralValueOutOfRange(_, value) => ReadError::Damaged(
            CodecError::Damaged(format!("invalid column {index}: {value} is out of range")),
        ),
        other => ReadError::Sqlite(other),
    })
}

/// Returns `ms` if a date can show it. Ingest indexes only such times, so another program
/// stored any other.
fn datable(ms: i64) -> Result<i64, ReadError> {
    if crate::ingest::is_datable(ms) {
        Ok(ms)
    } else {
        Err(ReadError::Damaged(CodecError::Damaged(format!(
            "invalid time column: {ms} is not a time between the years -9999 and 9999"
        ))))
    }
}

/// Renders a stored value for a message: text as it is, anything else in short.
fn stored_text(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_string(),
        Value::Integer(n) => n.to_string(),
        Value::Real(x) => x.to_string(),
        Value::Text(text) => text.chars().take(64).collect(),
        Value::Blob(bytes) => format!("a BLOB of {} bytes", bytes.len()),
    }
}

/// The sort key of `events` rows in [`Store::for_each_event`], as stored. It is unique because
/// `(sensor_id, seq)` is.
#[derive(Debug)]
struct RowKey {
    sensor_id: Value,
    seq: Value,
    time: Value,
}

/// Builds one pass of [`Store::for_each_event`]: the rows that match `conditions` (from
/// [`filter_sql`], which bind `values`), sorted, after the row `after` when set, at most
/// `limit` of them when set.
fn page_sql(
    conditions: &str,
    values: &[Value],
    after: Option<&RowKey>,
    limit: Option<u64>,
) -> (String, Vec<Value>) {
    let mut sql = format!(
        "SELECT sensor_id, seq, time, class_uid, activity_id, severity_id, process_uid,
                user_name, {SCAN_COLUMNS}
         FROM events WHERE 1 = 1{conditions}"
    );
    let mut values = values.to_vec();
    if let Some(key) = after {
        values.push(key.time.clone());
        values.push(key.sensor_id.clone());
        values.push(key.seq.clone());
        let last = values.len();
        sql.push_str(&format!(
            " AND (time, sensor_id, seq) > (?{}, ?{}, ?{last})",
            last - 2,
            last - 1
        ));
    }
    sql.push_str(" ORDER BY time, sensor_id, seq");
    if let Some(limit) = limit {
        values.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" LIMIT ?{}", values.len()));
    }
    (sql, values)
}

/// The condition of the partial index `events_severity`, written exactly as in the schema:
/// SQLite uses a partial index only for a query that contains its condition.
pub(crate) const SEVERITY_INDEXED: &str = "severity_id <> 1";

/// Builds the SQL conditions of `filter`, each starting with ` AND `, and the values they bind
/// as `?1`, `?2`, ... in order.
fn filter_sql(filter: &EventFilter) -> (String, Vec<Value>) {
    let mut sql = String::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(sensor_id) = &filter.sensor_id {
        values.push(Value::Text(sensor_id.clone()));
        sql.push_str(&format!(" AND sensor_id = ?{}", values.len()));
    }
    if let Some(class_uid) = filter.class_uid {
        values.push(Value::Integer(class_uid));
        sql.push_str(&format!(" AND class_uid = ?{}", values.len()));
    }
    if let Some(since) = filter.since_ms {
        values.push(Value::Integer(since));
        sql.push_str(&format!(" AND time >= ?{}", values.len()));
    }
    if let Some(until) = filter.until_ms {
        values.push(Value::Integer(until));
        sql.push_str(&format!(" AND time < ?{}", values.len()));
    }
    for (path, value) in &filter.conditions {
        // The indexed column narrows the rows and `json_extract` below decides. The column
        // alone is not enough: `process_uid` falls back to `actor.process.uid`, and
        // `user_name` to `user.name`, when the event lacks the first field.
        let column = match path.as_str() {
            "$.severity_id" => value
                .parse::<i64>()
                .ok()
                .map(|n| ("severity_id", Value::Integer(n))),
            "$.process.uid" => Some(("process_uid", Value::Text(value.clone()))),
            "$.actor.user.name" => Some(("user_name", Value::Text(value.clone()))),
            _ => None,
        };
        if let Some((column, column_value)) = column {
            let severity_indexed = column == "severity_id" && column_value != Value::Integer(1);
            values.push(column_value);
            sql.push_str(&format!(" AND {column} = ?{}", values.len()));
            if severity_indexed {
                sql.push_str(&format!(" AND {SEVERITY_INDEXED}"));
            }
        }
        values.push(Value::Text(path.clone()));
        let path_index = values.len();
        values.push(Value::Text(value.clone()));
        let text_index = values.len();
        let json = format!("{JSON_FUNCTION}({STORED_COLUMNS})");
        let matches = match value.parse::<i64>() {
            Ok(number) => {
                values.push(Value::Integer(number));
                format!(
                    "json_extract({json}, ?{path_index}) IN (?{text_index}, ?{})",
                    values.len()
                )
            }
            Err(_) => format!("json_extract({json}, ?{path_index}) = ?{text_index}"),
        };
        // The function returns NULL for a row it cannot read, invalid JSON included. Such a
        // row passes, so that the caller reports it as damaged instead of dropping it unseen.
        sql.push_str(&format!(" AND ({json} IS NULL OR {matches})"));
    }
    (sql, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The severity index contains only events that are not Informational. A lookup of another
    /// severity uses it, and a lookup of Informational events runs without it.
    #[test]
    fn severity_lookup_uses_the_partial_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        store.dictionaries().unwrap();
        for (severity, uses_index) in [("4", true), ("1", false)] {
            let filter = EventFilter {
                conditions: vec![("$.severity_id".into(), severity.into())],
                ..EventFilter::default()
            };
            let (conditions, values) = filter_sql(&filter);
            let (sql, values) = page_sql(&conditions, &values, None, None);
            let plan: Vec<String> = store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(rusqlite::params_from_iter(values), |row| row.get(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(
                plan.iter().any(|step| step.contains("events_severity")),
                uses_index,
                "severity {severity}: {plan:?}"
            );
        }
    }

    /// Databases written before validation checked gap records can hold counts whose sum
    /// overflows SQLite's integers; the status still reads, with a saturated total.
    #[test]
    fn sensor_status_survives_huge_gap_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        for seq in [3, 4] {
            store
                .conn
                .execute(
                    "INSERT INTO gaps (sensor_id, seq, first_seq, last_seq, records, bytes,
                                       reason, received_at)
                     VALUES ('sensor-a', ?1, 1, 2, ?2, ?2, 'evicted_buffer_full', 0)",
                    params![seq, i64::MAX],
                )
                .unwrap();
        }
        let status = store.sensor_status("sensor-a").unwrap();
        assert_eq!(status.gaps, 2);
        assert_eq!(status.gap_records, u64::MAX);
    }

    /// A gap of damaged bytes does not know how many records it lost (`records` 0): each
    /// number of its range counts, and the empty range of damage between two consecutive
    /// records counts none.
    #[test]
    fn damaged_gaps_count_their_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        for (seq, first, last, records) in [(10, 1, 3, 3), (11, 5, 7, 0), (12, 9, 8, 0)] {
            store
                .conn
                .execute(
                    "INSERT INTO gaps (sensor_id, seq, first_seq, last_seq, records, bytes,
                                       reason, received_at)
                     VALUES ('sensor-a', ?1, ?2, ?3, ?4, 64, 'damaged_on_disk', 0)",
                    params![seq, first, last, records],
                )
                .unwrap();
        }
        let status = store.sensor_status("sensor-a").unwrap();
        assert_eq!(status.gaps, 3);
        assert_eq!(status.gap_records, 6);
    }
}
