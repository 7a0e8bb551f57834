//! The Collector database: enrollment tokens, sensors, issued certificates and revocations.
//!
//! SQLite in `DATA_DIR/collector.db`, WAL journal, schema version in `PRAGMA user_version`.
//! Times are Unix seconds (UTC) except event times, which are Unix milliseconds as in OCSF.
//! Token secrets are stored only as SHA-256. Telemetry tables (events, gaps, sensor state,
//! commands) are described in [`ingest`] and [`commands`].
//!
//! Enrollment runs in one `BEGIN IMMEDIATE` transaction: it takes SQLite's write lock before
//! reading the token, so two enrolments racing for the last use of a token (in this process
//! or another) run one after the other and the second finds the use already spent. A failure
//! anywhere in the transaction rolls it back, leaving the token's use count and the sensor
//! table untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edr_pki::token::{TokenError, format_time};
use edr_pki::{EnrollmentToken, IssuedCertificate, RevocationSet, SensorId, TokenPolicy};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

/// Database file name inside the data directory.
pub(crate) const DB_FILE: &str = "collector.db";

pub(crate) mod codec;
pub(crate) mod commands;
pub(crate) mod ingest;
pub(crate) mod lock;
pub(crate) mod query;
pub(crate) mod retention;

const SCHEMA_VERSION: i64 = 7;

/// Page cache of the ingest connection, in KiB.
const INGEST_CACHE_KIB: i64 = 64 * 1024;

/// WAL size, in bytes, at which the ingest connection checkpoints.
const INGEST_CHECKPOINT_BYTES: i64 = 64 * 1024 * 1024;

/// Page size of a new database, in bytes; SQLite's default is 4,096. A commit writes each page
/// it changed to the WAL as one frame. The rows and index entries of a batch mostly land in
/// pages that earlier events of the batch changed already. So larger pages mean fewer frames,
/// fewer B-tree levels and less work per event: in alternating runs of
/// `cargo bench -p edr-windows --bench transport` on a 2-core VM, 16 KiB pages cut the
/// Collector's CPU time per event from about 7.7 to 7.2 µs. An existing database keeps the
/// page size it was created with.
pub(crate) const PAGE_SIZE: i64 = 16 * 1024;

/// Size, in bytes, the WAL is truncated to after a checkpoint.
const INGEST_WAL_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id            TEXT PRIMARY KEY,
    secret_sha256 BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    max_uses      INTEGER NOT NULL,
    uses          INTEGER NOT NULL DEFAULT 0,
    labels        TEXT NOT NULL,
    revoked_at    INTEGER
);
CREATE TABLE IF NOT EXISTS sensors (
    id           TEXT PRIMARY KEY,
    token_id     TEXT NOT NULL REFERENCES tokens(id),
    hostname     TEXT NOT NULL,
    host_facts   TEXT NOT NULL,
    capabilities BLOB NOT NULL,
    enrolled_at  INTEGER NOT NULL,
    revoked_at   INTEGER
);
CREATE TABLE IF NOT EXISTS certificates (
    serial      TEXT PRIMARY KEY,
    sensor_id   TEXT NOT NULL REFERENCES sensors(id),
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    issued_at   INTEGER NOT NULL,
    revoked_at  INTEGER
);
";

/// Tables added in schema version 2: telemetry, sensor state and commands.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS sensor_state (
    sensor_id             TEXT PRIMARY KEY,
    hwm                   INTEGER NOT NULL DEFAULT 0,
    duplicates            INTEGER NOT NULL DEFAULT 0,
    last_seen             INTEGER,
    health                TEXT,
    sensor_version        TEXT,
    os_build              TEXT,
    ocsf_version          TEXT,
    certificate_not_after INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    sensor_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    time        INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    class_uid   INTEGER NOT NULL,
    activity_id INTEGER,
    severity_id INTEGER,
    process_uid TEXT,
    user_name   TEXT,
    json        TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_sensor_seq ON events (sensor_id, seq);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE INDEX IF NOT EXISTS events_class ON events (class_uid, activity_id);
CREATE TABLE IF NOT EXISTS gaps (
    sensor_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    records     INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    detected_at INTEGER,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (sensor_id, seq)
);
CREATE TABLE IF NOT EXISTS commands (
    id           TEXT PRIMARY KEY,
    sensor_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    issued_at    INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    delivered_at INTEGER
);
CREATE INDEX IF NOT EXISTS commands_pending ON commands (sensor_id) WHERE delivered_at IS NULL;
CREATE TABLE IF NOT EXISTS command_results (
    command_id   TEXT PRIMARY KEY,
    sensor_id    TEXT NOT NULL,
    status       TEXT NOT NULL,
    completed_at INTEGER,
    detail       TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    received_via TEXT NOT NULL
);
";

/// Schema version 3 dropped the indexes on `severity_id`, `process_uid` and `user_name`,
/// which no query read then. Each insert into an index ordered by a random key such as a
/// process uid dirties a different page, and every commit writes that page to the WAL.
const SCHEMA_V3: &str = "
DROP INDEX IF EXISTS events_severity;
DROP INDEX IF EXISTS events_process;
DROP INDEX IF EXISTS events_user;
";

/// Schema version 4 restores them, and `events --where` on `severity_id`, `process.uid` and
/// `actor.user.name` now reads them: an analyst pivoting on one process or user across
/// millions of events must not scan the JSON of every row. Ingest pays for it (ADR 0005).
const SCHEMA_V4: &str = "
CREATE INDEX IF NOT EXISTS events_severity ON events (severity_id);
CREATE INDEX IF NOT EXISTS events_process ON events (process_uid) WHERE process_uid IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_user ON events (user_name) WHERE user_name IS NOT NULL;
";

/// Schema version 5 adds the zstd dictionaries that compress `events.json` (see [`codec`]).
/// Rows written earlier keep their JSON text, which readers still accept.
const SCHEMA_V5: &str = "
CREATE TABLE IF NOT EXISTS dictionaries (
    id         INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    samples    INTEGER NOT NULL,
    dict       BLOB NOT NULL
);
";

/// Schema version 6 keeps only events that are not Informational (`severity_id <> 1`) in
/// the severity index. Nearly every event is Informational, and an analyst looks up the few
/// others, so every insert of an Informational event now skips one B-tree. A query on
/// another severity repeats the index's condition so that SQLite uses it (see
/// [`query::SEVERITY_INDEXED`]).
const SCHEMA_V6: &str = "
DROP INDEX IF EXISTS events_severity;
CREATE INDEX IF NOT EXISTS events_severity ON events (severity_id) WHERE severity_id <> 1;
";

/// Schema version 7 stores events compressed in frames of several events (see [`codec`]):
/// the `frames` table, with the number of stored events in each frame, and the frame and
/// position of each event that is in one. Rows written earlier keep their JSON in `json`,
/// which readers still accept.
const SCHEMA_V7: &str = "
CREATE TABLE IF NOT EXISTS frames (
    id     INTEGER PRIMARY KEY,
    events INTEGER NOT NULL,
    data   BLOB NOT NULL
);
ALTER TABLE events ADD COLUMN frame_id INTEGER;
ALTER TABLE events ADD COLUMN frame_index INTEGER;
";

/// Turns a new database back into one of schema version 6, for tests of upgrades.
#[cfg(test)]
pub(crate) const UNDO_SCHEMA_V7: &str = "
DROP TABLE frames;
ALTER TABLE events DROP COLUMN frame_id;
ALTER TABLE events DROP COLUMN frame_index;
";

/// Rejects a data directory path that exists but is not a directory, which would otherwise
/// be reported as a database missing from it.
pub(crate) fn check_data_dir(data_dir: &Path) -> Result<(), StoreError> {
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(StoreError::NotADirectory {
            path: data_dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Checks that the database file at `path` exists and is not empty. Every command but `init`
/// calls it before SQLite opens the file, because SQLite would create a missing file and fill
/// Returns whether the database at `path` has a non-empty write-ahead log beside it.
fn has_write_ahead_log(path: &Path) -> bool {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).is_ok_and(|metadata| metadata.len() > 0)
}

/// Size of the smallest SQLite database: one page of the smallest page size.
const MIN_DATABASE_BYTES: u64 = 512;

/// an empty one with new tables.
pub(crate) fn check_database(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Missing {
            path: path.to_path_buf(),
        }),
        // SQLite's smallest page is 512 bytes, and a database has at least one page. SQLite
        // rejects most shorter files as "not a database", but starts a new database in a
        // 1-byte file as in an empty one.
        // A database whose pages are all still in its write-ahead log can be shorter; SQLite
        // reads it from there.
        Ok(metadata)
            if metadata.is_file()
                && metadata.len() < MIN_DATABASE_BYTES
                && !has_write_ahead_log(path) =>
        {
            Err(StoreError::Empty {
                path: path.to_path_buf(),
                bytes: metadata.len(),
            })
        }
        // Other failures, such as a denied permission, are left to SQLite, whose error names
        // the path and the cause.
        _ => Ok(()),
    }
}

/// Returns what to do about a failed SQLite call, as the end of [`StoreError::Sqlite`]'s
/// message. It is empty for errors that have no usual fix.
fn sqlite_hint(error: &rusqlite::Error) -> &'static str {
    use rusqlite::ErrorCode;
    let Some(code) = error.sqlite_error_code() else {
        return "";
    };
    match code {
        ErrorCode::NotADatabase => {
            ": the file is not an SQLite database: move it away and restore a backup, or run `edr-collector init` with a new --data-dir"
        }
        ErrorCode::DatabaseCorrupt => {
            ": the file is damaged: restore a backup (`sqlite3 FILE .recover` may save the rows that can still be read)"
        }
        ErrorCode::CannotOpen => {
            ": check that the path is a regular file, not a directory, and that its directory exists and is writable"
        }
        ErrorCode::ReadOnly | ErrorCode::PermissionDenied => {
            ": the file or its directory is read-only for this user: fix the owner, the permissions or the file attributes"
        }
        ErrorCode::DiskFull => ": the disk is full: free space and try again",
        ErrorCode::SystemIoFailure => {
            ": reading or writing the file failed: check the disk and the file system, and that no other program changed or removed collector.db-wal or collector.db-shm"
        }
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
            ": another process holds a lock on the database: try again"
        }
        _ => "",
    }
}

/// How SQLite syncs the write-ahead log, which decides what an ack promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SyncMode {
    /// fsync at every commit: an acked batch survives a power loss or OS crash.
    Full,
    /// fsync only at checkpoints: an acked batch survives a crash of the Collector process,
    /// but the last commits can be lost on power loss or OS crash.
    Normal,
}

/// Errors from the database.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The data directory path exists but is not a directory.
    #[error("the data directory \"{}\" is not a directory: pass the directory that contains collector.db, or a new one for `edr-collector init`", path.display())]
    NotADirectory { path: PathBuf },
    /// The database file does not exist.
    #[error("no Collector database at \"{}\": run `edr-collector init --data-dir DIR` first", path.display())]
    Missing { path: PathBuf },
    /// The database file is shorter than one SQLite page. SQLite would treat a 0- or 1-byte
    /// file as a new database and create empty tables, and the tokens, sensors and
    /// revocations it held would be lost unseen.
    #[error("the Collector database \"{}\" is {bytes} bytes long, too short to be a database, so its tokens, sensors, revocations and telemetry are gone: restore it from a backup, or remove the data directory and run `edr-collector init --data-dir DIR` to start over", path.display())]
    Empty { path: PathBuf, bytes: u64 },
    /// SQLite failed. The message names SQLite's error, so it is not also the error's source,
    /// which would print it a second time.
    #[error("database error in \"{}\": {error}{}", path.display(), sqlite_hint(error))]
    Sqlite {
        path: PathBuf,
        error: rusqlite::Error,
    },
    /// The ingest connection cannot write to the database.
    #[error("the database \"{}\" is read-only for this process, so serve could not store telemetry: make the file and its directory writable for this user (check the owner, the permissions and file attributes such as immutable)", path.display())]
    ReadOnly { path: PathBuf },
    /// The schema version is newer or older than this build understands.
    #[error("the database \"{}\" has schema version {found}, this Collector expects {SCHEMA_VERSION}: use a matching Collector version", path.display())]
    SchemaVersion { path: PathBuf, found: i64 },
    /// The file is an SQLite database with tables but no schema version, so another program
    /// wrote it.
    #[error("\"{}\" is an SQLite database that this Collector did not create (it has tables but no schema version): move it away, or pass the --data-dir of an existing Collector or a new directory", path.display())]
    Foreign { path: PathBuf },
    /// A dictionary could not be stored.
    #[error("event data in \"{}\": {source}", path.display())]
    Codec {
        path: PathBuf,
        source: codec::CodecError,
    },
    /// Another process holds the serve lock of the data directory (see [`lock`]).
    #[error("the data directory \"{}\" is locked by another process ({}): stop the Collector serving it first, or give this one a different --data-dir", data_dir.display(), describe_pid(*.pid))]
    Locked { data_dir: PathBuf, pid: Option<u32> },
    /// The serve lock file could not be opened, locked or written.
    #[error("failed to {action} the lock file \"{}\": {source}", path.display())]
    LockFile {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// No token with this id exists.
    #[error("no enrollment token with id \"{id}\": list tokens with `edr-collector token list`")]
    UnknownTokenId { id: String },
    /// No sensor with this id exists.
    #[error("no sensor with id \"{id}\": list sensors with `edr-collector sensors list`")]
    UnknownSensor { id: String },
    /// The sensor exists but was revoked, so it can no longer connect to receive a command.
    #[error(
        "sensor \"{id}\" was revoked at {revoked_at} and can no longer connect, so it would never receive the command: enroll the machine again with a new token and use its new sensor id"
    )]
    RevokedSensor {
        id: String,
        /// RFC 3339 time of the revocation.
        revoked_at: String,
    },
}

/// Names the process that holds the serve lock, for [`StoreError::Locked`].
fn describe_pid(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("PID {pid} by its lock file, the last serve to take the lock"),
        None => "its lock file names no PID yet".to_string(),
    }
}

/// Reasons an enrollment is rejected or fails.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnrollError {
    /// The token id is unknown or the secret does not match; the two are not distinguished.
    #[error(
        "enrollment token {id} is not valid for this Collector: create a new one with `edr-collector token create`"
    )]
    UnknownToken { id: String },
    /// The token was revoked.
    #[error(
        "enrollment token {id} was revoked at {revoked_at}: create a new one with `edr-collector token create`"
    )]
    TokenRevoked { id: String, revoked_at: String },
    /// The token expired or has no uses left.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Signing the certificate failed.
    #[error("failed to issue the sensor certificate: {0}")]
    Issue(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A token row, without its secret hash.
#[derive(Debug)]
pub(crate) struct TokenRow {
    pub(crate) id: String,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) policy: TokenPolicy,
    pub(crate) uses: u32,
    pub(crate) revoked_at: Option<OffsetDateTime>,
}

/// A sensor row with its newest certificate.
#[derive(Debug)]
pub(crate) struct SensorRow {
    pub(crate) id: String,
    pub(crate) hostname: String,
    pub(crate) token_id: String,
    pub(crate) enrolled_at: OffsetDateTime,
    pub(crate) certificate_not_after: Option<OffsetDateTime>,
    pub(crate) revoked_at: Option<OffsetDateTime>,
}

/// Data the enrollment service stores about a new sensor besides its certificate.
#[derive(Debug)]
pub(crate) struct NewSensor {
    pub(crate) hostname: String,
    pub(crate) host_facts_json: String,
    pub(crate) capabilities: Vec<u8>,
}

/// An open database connection.
#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Creates the database (or opens an existing one) in `data_dir`.
    pub(crate) fn create(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, true)
    }

    /// Opens the existing database in `data_dir`.
    pub(crate) fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, false)
    }

    fn open_with(data_dir: &Path, create: bool) -> Result<Self, StoreError> {
        check_data_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        if !create {
            check_database(&path)?;
        }
        let sqlite = |error| StoreError::Sqlite {
            path: path.clone(),
            error,
        };
        let conn = Connection::open(&path).map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;

        // Checked before any write, because switching the journal mode or creating the tables
        // would change a database that belongs to another program.
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(sqlite)?;
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            .map_err(sqlite)?;
        if version == 0 && tables > 0 {
            return Err(StoreError::Foreign { path });
        }

        // Only a database without any table yet gets the page size. SQLite ignores the
        // setting in a file that is already in WAL mode, so such a file, empty as it is, is
        // switched out of WAL and rebuilt by a VACUUM.
        if version == 0 && tables == 0 {
            conn.pragma_update(None, "page_size", PAGE_SIZE)
                .map_err(sqlite)?;
            let page_size: i64 = conn
                .pragma_query_value(None, "page_size", |row| row.get(0))
                .map_err(sqlite)?;
            if page_size != PAGE_SIZE {
                conn.pragma_update(None, "journal_mode", "DELETE")
                    .map_err(sqlite)?;
                conn.pragma_update(None, "page_size", PAGE_SIZE)
                    .map_err(sqlite)?;
                conn.execute_batch("VACUUM").map_err(sqlite)?;
            }
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sqlite)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite)?;
        // Each step brings the schema from one version to the next; a new database runs all.
        // They run in one transaction with the new version number, so an upgrade that stops
        // half way leaves the old version, whose steps run again at the next start.
        let steps: [&str; 7] = [
            SCHEMA, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7,
        ];
        match usize::try_from(version) {
            Ok(done) if done < steps.len() => {
                let mut conn = conn;
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(sqlite)?;
                for step in &steps[done..] {
                    tx.execute_batch(step).map_err(sqlite)?;
                }
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(sqlite)?;
                tx.commit().map_err(sqlite)?;
                return Ok(Self { conn, path });
            }
            _ if version == SCHEMA_VERSION => {}
            _ => {
                return Err(StoreError::SchemaVersion {
                    path,
                    found: version,
                });
            }
        }
        Ok(Self { conn, path })
    }

    /// Sets how commits are synced; see [`SyncMode`]. New connections start with `Full`.
    pub(crate) fn set_sync_mode(&self, mode: SyncMode) -> Result<(), StoreError> {
        let value = match mode {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        self.conn
            .pragma_update(None, "synchronous", value)
            .map_err(self.sqlite())
    }

    /// Configures the connection that the ingest writer uses. Commits are synced as `mode`
    /// sets, and the page cache and WAL checkpoint interval are sized for a steady stream of
    /// inserts. Neither of the two sizes changes what a commit promises.
    pub(crate) fn configure_for_ingest(&self, mode: SyncMode) -> Result<(), StoreError> {
        // SQLite opens a file it may not write to read-only, without an error, and only the
        // first write would fail.
        if self
            .conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(self.sqlite())?
        {
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.set_sync_mode(mode)?;
        // Every insert touches one leaf page in each index on `events`, at positions spread
        // over the whole index (times and process uids do not arrive in order). SQLite's
        // default cache of 2 MB evicts those pages between batches, so each batch reads them
        // back; 64 MiB keeps the index leaves of several million events in memory.
        self.conn
            .pragma_update(None, "cache_size", -INGEST_CACHE_KIB)
            .map_err(self.sqlite())?;
        // A checkpoint copies every page changed since the last one into the database file
        // and fsyncs it. Checkpointing after 64 MiB of WAL instead of SQLite's 1,000 pages
        // writes an index page changed by many commits once per checkpoint.
        let page_size: i64 = self
            .conn
            .pragma_query_value(None, "page_size", |row| row.get(0))
            .map_err(self.sqlite())?;
        self.conn
            .pragma_update(
                None,
                "wal_autocheckpoint",
                INGEST_CHECKPOINT_BYTES / page_size.max(512),
            )
            .map_err(self.sqlite())?;
        // Truncate the WAL back to this size after a checkpoint, so it does not keep its peak.
        self.conn
            .pragma_update(None, "journal_size_limit", INGEST_WAL_LIMIT_BYTES)
            .map_err(self.sqlite())
    }

    /// Stores a trained dictionary; `samples` is the number of events it was trained on.
    pub(crate) fn insert_dictionary(
        &self,
        bytes: &[u8],
        samples: usize,
        now: OffsetDateTime,
    ) -> Result<codec::Dictionary, StoreError> {
        let dictionary = codec::Dictionary::new(bytes).map_err(|source| StoreError::Codec {
            path: self.path.clone(),
            source,
        })?;
        // zstd derives a trained dictionary's id from its content, so training again on the
        // same events gives the same id, and the stored row is then reused.
        let stored: Option<rusqlite::types::Value> = self
            .conn
            .query_row(
                "SELECT dict FROM dictionaries WHERE id = ?1",
                params![dictionary.id()],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.sqlite())?;
        let damaged = match &stored {
            Some(rusqlite::types::Value::Blob(stored)) => {
                !codec::Dictionary::new(stored).is_ok_and(|d| d.id() == dictionary.id())
            }
            Some(_) => true,
            None => false,
        };
        if let (Some(stored), false) = (&stored, damaged)
            && !matches!(stored, rusqlite::types::Value::Blob(blob) if blob == bytes)
        {
            return Err(StoreError::Codec {
                path: self.path.clone(),
                source: codec::CodecError::InvalidDictionary(format!(
                    "a different dictionary with id {} is already stored",
                    dictionary.id()
                )),
            });
        }
        if damaged {
            // The events compressed with the damaged row cannot be read anyway. If this
            // dictionary came from the same events, it reads them again. If not, their
            // checksums show it, and they stay reported as damaged.
            tracing::warn!(
                dictionary_id = dictionary.id(),
                "replacing a damaged dictionary row with a newly trained dictionary of the same id"
            );
        }
        self.conn
            .execute(
                "INSERT INTO dictionaries (id, created_at, samples, dict) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at,
                     samples = excluded.samples, dict = excluded.dict
                 WHERE ?5",
                params![
                    dictionary.id(),
                    now.unix_timestamp(),
                    i64::try_from(samples).unwrap_or(i64::MAX),
                    bytes,
                    damaged
                ],
            )
            .map_err(self.sqlite())?;
        Ok(dictionary)
    }

    /// Returns the newest usable stored dictionary, the one ingest compresses with. Rows that
    /// zstd rejects are skipped with a warning; events compressed with them fail to read, each
    /// with the dictionary named.
    pub(crate) fn newest_dictionary(&self) -> Result<Option<codec::Dictionary>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, dict FROM dictionaries ORDER BY created_at DESC, rowid DESC")
            .map_err(self.sqlite())?;
        let mut rows = stmt.query([]).map_err(self.sqlite())?;
        while let Some(row) = rows.next().map_err(self.sqlite())? {
            let id: i64 = row.get(0).map_err(self.sqlite())?;
            let outcome = match row.get_ref(1).map_err(self.sqlite())? {
                rusqlite::types::ValueRef::Blob(bytes) => codec::Dictionary::new(bytes),
                other => Err(codec::CodecError::InvalidDictionary(format!(
                    "it is a {} value, not a BLOB",
                    other.data_type()
                ))),
            };
            match outcome {
                Ok(dictionary) => return Ok(Some(dictionary)),
                Err(err) => {
                    tracing::warn!(dictionary_id = id, error = %err, path = %self.path.display(), "skipping a stored compression dictionary that cannot be used");
                }
            }
        }
        Ok(None)
    }

    /// Loads the dictionaries for reading and registers [`codec::JSON_FUNCTION`] with them.
    pub(crate) fn dictionaries(&self) -> Result<codec::Dictionaries, StoreError> {
        // The SQL function owns one copy and the caller another; there is rarely more than one
        // dictionary of 64 KiB.
        codec::Dictionaries::load(&self.conn)
            .and_then(|for_sql| for_sql.register(&self.conn))
            .and_then(|()| codec::Dictionaries::load(&self.conn))
            .map_err(self.sqlite())
    }

    /// Runs `work` in a `BEGIN IMMEDIATE` transaction and commits it; any error rolls it back.
    fn immediate<T>(
        &mut self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let sqlite = |error| StoreError::Sqlite {
            path: self.path.clone(),
            error,
        };
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                let value = work(&tx)?;
                tx.commit()?;
                Ok(value)
            });
        result.map_err(sqlite)
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |error| StoreError::Sqlite {
            path: self.path.clone(),
            error,
        }
    }

    pub(crate) fn insert_token(
        &self,
        token: &EnrollmentToken,
        policy: &TokenPolicy,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&policy.labels).unwrap_or_else(|_| "{}".into());
        self.conn
            .execute(
                "INSERT INTO tokens (id, secret_sha256, created_at, expires_at, max_uses, labels)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    token.id(),
                    token.secret_hash().to_vec(),
                    now.unix_timestamp(),
                    policy.expires_at.unix_timestamp(),
                    policy.max_uses,
                    labels
                ],
            )
            .map_err(self.sqlite())?;
        Ok(())
    }

    pub(crate) fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, created_at, expires_at, max_uses, uses, labels, revoked_at
                 FROM tokens ORDER BY created_at, id",
            )
            .map_err(self.sqlite())?;
        let rows = stmt
            .query_map([], |row| {
                let labels: String = row.get(5)?;
                Ok(TokenRow {
                    id: row.get(0)?,
                    created_at: from_unix(row.get(1)?),
                    policy: TokenPolicy {
                        expires_at: from_unix(row.get(2)?),
                        max_uses: row.get(3)?,
                        labels: serde_json::from_str(&labels).unwrap_or_default(),
                    },
                    uses: row.get(4)?,
                    revoked_at: row.get::<_, Option<i64>>(6)?.map(from_unix),
                })
            })
            .map_err(self.sqlite())?;
        rows.collect::<Result<_, _>>().map_err(self.sqlite())
    }

    pub(crate) fn revoke_token(&self, id: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        let changed = self
            .conn
            .execute(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                params![id, now.unix_timestamp()],
            )
            .map_err(self.sqlite())?;
        if changed == 0 {
            return Err(StoreError::UnknownTokenId { id: id.to_string() });
        }
        Ok(())
    }

    /// Consumes one use of `token` and records a new sensor with the certificate `issue`
    /// returns, all in one transaction.
    pub(crate) fn enroll(
        &mut self,
        token: &EnrollmentToken,
        sensor: &NewSensor,
        now: OffsetDateTime,
        issue: impl FnOnce(SensorId) -> Result<IssuedCertificate, String>,
    ) -> Result<IssuedCertificate, EnrollError> {
        let path = self.path.clone();
        let sqlite = move |error| StoreError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&sqlite)?;

        let id = token.id();
        let row = tx
            .query_row(
                "SELECT secret_sha256, expires_at, max_uses, uses, labels, revoked_at
                 FROM tokens WHERE id = ?1",
                params![id],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, u32>(2)?,
                        row.get::<_, u32>(3)?,
                        row.get::<_, Option<i64>>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(&sqlite)?;
        let Some((secret_hash, expires_at, max_uses, uses, revoked_at)) = row else {
            return Err(EnrollError::UnknownToken { id });
        };
        if !token.secret_matches(&secret_hash) {
            return Err(EnrollError::UnknownToken { id });
        }
        if let Some(revoked_at) = revoked_at {
            return Err(EnrollError::TokenRevoked {
                id,
                revoked_at: format_time(from_unix(revoked_at)),
            });
        }
        let policy = TokenPolicy {
            expires_at: from_unix(expires_at),
            max_uses,
            labels: BTreeMap::new(),
        };
        policy.check_usable(&id, uses, now)?;

        let sensor_id = uuid::Uuid::new_v4();
        let issued = issue(sensor_id).map_err(EnrollError::Issue)?;
        tx.execute(
            "INSERT INTO sensors (id, token_id, hostname, host_facts, capabilities, enrolled_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                sensor_id.to_string(),
                id,
                sensor.hostname,
                sensor.host_facts_json,
                sensor.capabilities,
                now.unix_timestamp()
            ],
        )
        .map_err(&sqlite)?;
        insert_certificate(&tx, &issued, now).map_err(&sqlite)?;
        tx.execute(
            "UPDATE tokens SET uses = uses + 1 WHERE id = ?1",
            params![id],
        )
        .map_err(&sqlite)?;
        tx.commit().map_err(&sqlite)?;
        Ok(issued)
    }

    /// Returns when the sensor was revoked, or `None` while it is active.
    pub(crate) fn sensor_revoked_at(
        &self,
        sensor_id: SensorId,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let revoked: Option<Option<i64>> = self
            .conn
            .query_row(
                "SELECT revoked_at FROM sensors WHERE id = ?1",
                params![sensor_id.to_string()],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.sqlite())?;
        match revoked {
            None => Err(StoreError::UnknownSensor {
                id: sensor_id.to_string(),
            }),
            Some(at) => Ok(at.map(from_unix)),
        }
    }

    pub(crate) fn record_certificate(
        &self,
        issued: &IssuedCertificate,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        insert_certificate(&self.conn, issued, now).map_err(self.sqlite())
    }

    pub(crate) fn list_sensors(&self) -> Result<Vec<SensorRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT s.id, s.hostname, s.token_id, s.enrolled_at, s.revoked_at,
                        (SELECT MAX(c.not_after) FROM certificates c WHERE c.sensor_id = s.id)
                 FROM sensors s ORDER BY s.enrolled_at, s.id",
            )
            .map_err(self.sqlite())?;
        let rows = stmt
            .query_map([], |row| {
                Ok(SensorRow {
                    id: row.get(0)?,
                    hostname: row.get(1)?,
                    token_id: row.get(2)?,
                    enrolled_at: from_unix(row.get(3)?),
                    revoked_at: row.get::<_, Option<i64>>(4)?.map(from_unix),
                    certificate_not_after: row.get::<_, Option<i64>>(5)?.map(from_unix),
                })
            })
            .map_err(self.sqlite())?;
        rows.collect::<Result<_, _>>().map_err(self.sqlite())
    }

    pub(crate) fn revoke_sensor(&self, id: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        let changed = self
            .conn
            .execute(
                "UPDATE sensors SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                params![id, now.unix_timestamp()],
            )
            .map_err(self.sqlite())?;
        if changed == 0 {
            return Err(StoreError::UnknownSensor { id: id.to_string() });
        }
        Ok(())
    }

    /// Reads every revoked sensor and certificate serial.
    pub(crate) fn revocation_set(&self) -> Result<RevocationSet, StoreError> {
        let mut set = RevocationSet::default();
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM sensors WHERE revoked_at IS NOT NULL")
            .map_err(self.sqlite())?;
        let ids = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(self.sqlite())?;
        for id in ids {
            // Ids are written by this program as UUIDs; skip any row edited by hand.
            if let Ok(id) = uuid::Uuid::parse_str(&id.map_err(self.sqlite())?) {
                set.revoke_sensor(id);
            }
        }
        let mut stmt = self
            .conn
            .prepare("SELECT serial FROM certificates WHERE revoked_at IS NOT NULL")
            .map_err(self.sqlite())?;
        let serials = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(self.sqlite())?;
        for serial in serials {
            if let Ok(bytes) = hex::decode(serial.map_err(self.sqlite())?) {
                set.revoke_serial(&bytes);
            }
        }
        Ok(set)
    }
}

fn insert_certificate(
    conn: &Connection,
    issued: &IssuedCertificate,
    now: OffsetDateTime,
) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO certificates (serial, sensor_id, not_before, not_after, issued_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            hex::encode(&issued.serial),
            issued.sensor_id.to_string(),
            issued.validity.not_before().unix_timestamp(),
            issued.validity.not_after().unix_timestamp(),
            now.unix_timestamp()
        ],
    )?;
    Ok(())
}

/// Converts stored Unix seconds; out-of-range values (only possible by editing the database
/// by hand) become the epoch.
fn from_unix(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_pki::{CollectorCa, ParsedCsr, Validity};
    use std::sync::Arc;
    use time::Duration as TimeDuration;

    fn setup() -> (tempfile::TempDir, Arc<CollectorCa>) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CollectorCa::create(&dir.path().join("ca"), "Test CA").unwrap();
        Store::create(dir.path()).unwrap();
        (dir, Arc::new(ca))
    }

    fn new_token(store: &Store, ca: &CollectorCa, max_uses: u32) -> EnrollmentToken {
        let token = EnrollmentToken::generate(ca.fingerprint()).unwrap();
        let now = OffsetDateTime::now_utc();
        let policy = TokenPolicy {
            expires_at: now + TimeDuration::hours(1),
            max_uses,
            labels: BTreeMap::new(),
        };
        store.insert_token(&token, &policy, now).unwrap();
        token
    }

    fn sensor() -> NewSensor {
        NewSensor {
            hostname: "host".into(),
            host_facts_json: "{}".into(),
            capabilities: vec![],
        }
    }

    fn issuer(ca: &CollectorCa) -> impl FnOnce(SensorId) -> Result<IssuedCertificate, String> + '_ {
        move |id| {
            let key = rcgen::KeyPair::generate().unwrap();
            let pem = rcgen::CertificateParams::default()
                .serialize_request(&key)
                .unwrap()
                .pem()
                .unwrap();
            let csr = ParsedCsr::from_pem(&pem).unwrap();
            edr_pki::csr::sign_client_certificate(
                ca,
                &csr,
                id,
                Validity::starting_now(TimeDuration::days(1)),
            )
            .map_err(|err| err.to_string())
        }
    }

    #[test]
    fn version_5_database_gets_partial_severity_index() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::create(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(UNDO_SCHEMA_V7).unwrap();
        conn.execute_batch(
            "DROP INDEX events_severity; CREATE INDEX events_severity ON events (severity_id);",
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 5).unwrap();
        drop(conn);

        let store = Store::open(dir.path()).unwrap();
        let sql: String = store
            .conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'events_severity'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(sql.ends_with("WHERE severity_id <> 1"), "{sql}");
    }

    /// `.cargo/config.toml` builds SQLite without memory management and memory statistics,
    /// whose global mutexes the ingest writer took for every page and allocation.
    #[test]
    fn sqlite_is_built_without_global_mutexes() {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }

    /// A new database gets [`PAGE_SIZE`]; one created with SQLite's default keeps its pages.
    /// Either way the ingest connection checkpoints after the same number of WAL bytes.
    #[test]
    fn page_size_of_new_and_old_databases() {
        let pragma = |store: &Store, name: &str| -> i64 {
            store
                .conn
                .pragma_query_value(None, name, |row| row.get(0))
                .unwrap()
        };
        let new = tempfile::tempdir().unwrap();
        let store = Store::create(new.path()).unwrap();
        store.configure_for_ingest(SyncMode::Full).unwrap();
        assert_eq!(pragma(&store, "page_size"), PAGE_SIZE);
        assert_eq!(
            pragma(&store, "wal_autocheckpoint"),
            INGEST_CHECKPOINT_BYTES / PAGE_SIZE
        );

        let old = tempfile::tempdir().unwrap();
        let conn = Connection::open(old.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "page_size", 4096).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let store = Store::open(old.path()).unwrap();
        store.configure_for_ingest(SyncMode::Full).unwrap();
        assert_eq!(pragma(&store, "page_size"), 4096);
        assert_eq!(
            pragma(&store, "wal_autocheckpoint"),
            INGEST_CHECKPOINT_BYTES / 4096
        );
        assert_eq!(pragma(&store, "user_version"), SCHEMA_VERSION);
    }

    /// SQLite opens a file it may not write as read-only, without an error. So the ingest
    /// connection must reject it before `serve` accepts telemetry it could not store.
    #[test]
    fn read_only_database_is_rejected_for_ingest() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::create(dir.path()).unwrap());
        let path = dir.path().join(DB_FILE);
        let store = Store {
            conn: Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap(),
            path: path.clone(),
        };
        let err = store.configure_for_ingest(SyncMode::Full).unwrap_err();
        assert!(
            matches!(&err, StoreError::ReadOnly { path: p } if *p == path),
            "{err}"
        );
        assert!(err.to_string().contains("writable"), "{err}");
    }

    /// A file that is not an SQLite database gets SQLite's message and what to do about it,
    /// once.
    #[test]
    fn file_that_is_not_sqlite_gets_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x5a_u8; 8192]).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("file is not a database"), "{message}");
        assert!(message.contains("restore a backup"), "{message}");
        assert!(std::error::Error::source(&err).is_none(), "{message}");
    }

    /// A data directory path that is a file is named as such, not as a missing database.
    #[test]
    fn data_dir_that_is_a_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        for err in [
            Store::open(&file).unwrap_err(),
            Store::create(&file).unwrap_err(),
        ] {
            assert!(
                matches!(&err, StoreError::NotADirectory { path } if *path == file),
                "{err}"
            );
        }
    }

    /// A file that another program left in WAL mode with no table yet still gets the page
    /// size of a new database.
    #[test]
    fn empty_wal_file_gets_large_pages() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        drop(conn);
        let store = Store::open(dir.path()).unwrap();
        let page_size: i64 = store
            .conn
            .pragma_query_value(None, "page_size", |row| row.get(0))
            .unwrap();
        assert_eq!(page_size, PAGE_SIZE);
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn version_3_database_gets_lookup_indexes() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::create(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(UNDO_SCHEMA_V7).unwrap();
        conn.execute_batch(SCHEMA_V3).unwrap();
        conn.pragma_update(None, "user_version", 3).unwrap();
        drop(conn);

        let store = Store::open(dir.path()).unwrap();
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mut stmt = store
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' ORDER BY name")
            .unwrap();
        let indexes: Vec<String> = stmt
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            indexes,
            [
                "events_class",
                "events_process",
                "events_sensor_seq",
                "events_severity",
                "events_time",
                "events_user"
            ]
        );
    }

    #[test]
    fn where_on_indexed_fields_matches_the_json() {
        use query::EventFilter;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        // The second row's process_uid comes from actor.process.uid, so `process.uid=p1` must
        // not match it although its column holds p1.
        let rows = [
            (1, Some("p1"), None, None, r#"{"process":{"uid":"p1"}}"#),
            (
                2,
                Some("p1"),
                None,
                None,
                r#"{"actor":{"process":{"uid":"p1"}}}"#,
            ),
            (
                3,
                Some("p2"),
                Some("alice"),
                Some(3),
                r#"{"process":{"uid":"p2"},"actor":{"user":{"name":"alice"}},"severity_id":3}"#,
            ),
            (4, None, Some("alice"), None, r#"{"user":{"name":"alice"}}"#),
        ];
        for (seq, process_uid, user_name, severity_id, json) in rows {
            store
                .conn
                .execute(
                    "INSERT INTO events (sensor_id, seq, time, received_at, class_uid, activity_id,
                                         severity_id, process_uid, user_name, json)
                     VALUES ('s', ?1, ?1, 0, 1007, 1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![seq, severity_id, process_uid, user_name, json],
                )
                .unwrap();
        }
        let seqs = |path: &str, value: &str| {
            let filter = EventFilter {
                conditions: vec![(path.to_owned(), value.to_owned())],
                ..EventFilter::default()
            };
            let mut found = Vec::new();
            store
                .for_each_event(
                    &filter,
                    |row| {
                        found.push(row.seq);
                        Ok(())
                    },
                    |damaged| panic!("{damaged}"),
                )
                .unwrap();
            found
        };
        assert_eq!(seqs("$.process.uid", "p1"), [1]);
        assert_eq!(seqs("$.actor.process.uid", "p1"), [2]);
        assert_eq!(seqs("$.actor.user.name", "alice"), [3]);
        assert_eq!(seqs("$.user.name", "alice"), [4]);
        assert_eq!(seqs("$.severity_id", "3"), [3]);
        assert!(seqs("$.severity_id", "high").is_empty());
    }

    #[test]
    fn foreign_database_is_rejected_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE events (x); CREATE TABLE notes (y);")
            .unwrap();
        drop(conn);

        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        let err = Store::create(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");

        let conn = Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master ORDER BY name")
            .unwrap();
        let tables: Vec<String> = stmt
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(tables, ["events", "notes"]);
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(journal, "delete");
    }

    #[test]
    fn newer_schema_version_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::create(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaVersion { found, .. } if found == SCHEMA_VERSION + 1),
            "{err}"
        );
    }

    #[test]
    fn concurrent_enrolments_respect_max_uses() {
        let (dir, ca) = setup();
        let token = new_token(&Store::open(dir.path()).unwrap(), &ca, 1);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (dir, ca, token) = (dir.path(), Arc::clone(&ca), token.clone());
                    scope.spawn(move || {
                        let mut store = Store::open(dir).unwrap();
                        store
                            .enroll(&token, &sensor(), OffsetDateTime::now_utc(), issuer(&ca))
                            .is_ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "{results:?}");
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list_sensors().unwrap().len(), 1);
        assert_eq!(store.list_tokens().unwrap()[0].uses, 1);
    }

    #[test]
    fn failed_issue_consumes_nothing() {
        let (dir, ca) = setup();
        let mut store = Store::open(dir.path()).unwrap();
        let token = new_token(&store, &ca, 1);
        let err = store
            .enroll(&token, &sensor(), OffsetDateTime::now_utc(), |_| {
                Err("signing failed".into())
            })
            .unwrap_err();
        assert!(matches!(err, EnrollError::Issue(_)), "{err}");
        assert_eq!(store.list_tokens().unwrap()[0].uses, 0);
        assert!(store.list_sensors().unwrap().is_empty());
    }

    #[test]
    fn wrong_secret_is_unknown_token() {
        let (dir, ca) = setup();
        let mut store = Store::open(dir.path()).unwrap();
        let token = new_token(&store, &ca, 1);
        let forged_text = token.to_text();
        // Same id, different secret: regenerate and splice the id in.
        let other = EnrollmentToken::generate(ca.fingerprint())
            .unwrap()
            .to_text();
        let forged = format!("{}{}", &forged_text[..21], &other[21..other.len() - 9]);
        let check = hex::encode(&edr_pki::sha256(forged.as_bytes())[..4]);
        let forged = EnrollmentToken::parse(&format!("{forged}.{check}")).unwrap();
        assert_eq!(forged.id(), token.id());
        let err = store
            .enroll(&forged, &sensor(), OffsetDateTime::now_utc(), issuer(&ca))
            .unwrap_err();
        assert!(matches!(err, EnrollError::UnknownToken { .. }), "{err}");
    }

    #[test]
    fn revoked_sensor_enters_revocation_set() {
        let (dir, ca) = setup();
        let mut store = Store::open(dir.path()).unwrap();
        let token = new_token(&store, &ca, 1);
        let issued = store
            .enroll(&token, &sensor(), OffsetDateTime::now_utc(), issuer(&ca))
            .unwrap();
        assert!(store.revocation_set().unwrap().is_empty());
        store
            .revoke_sensor(&issued.sensor_id.to_string(), OffsetDateTime::now_utc())
            .unwrap();
        assert!(
            store
                .revocation_set()
                .unwrap()
                .is_revoked(&issued.serial, Some(issued.sensor_id))
        );
        let err = store
            .revoke_sensor("nope", OffsetDateTime::now_utc())
            .unwrap_err();
        assert!(err.to_string().contains("sensors list"), "{err}");
    }
}
