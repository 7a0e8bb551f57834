//! The operator commands against data stored by a real `serve`: `events`, `sensors list`,
//! `command ping` with `commands list`, `export`, and retention.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::time::Duration;

use edr_proto::v1::command_client::CommandClient;
use edr_proto::v1::{
    BufferedRecord, CommandResult, CommandStatus, EventBatch, Gap, Heartbeat, Pong, SensorHealth,
    Versions, buffered_record, command_result, sensor_message,
};
use edr_sensor::enrollment::connect_mtls;

fn stdout(output: &std::process::Output) -> String {
    assert!(output.status.success(), "command failed: {output:?}");
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Builds a batch with events whose process name and class vary with the sequence number.
fn mixed_batch(seqs: std::ops::RangeInclusive<u64>) -> EventBatch {
    let records: Vec<_> = seqs
        .map(|seq| {
            let (class, name) = if seq % 2 == 0 { (1007, "cmd.exe") } else { (4003, "svchost.exe") };
            let json = format!(
                r#"{{"class_uid":{class},"activity_id":1,"time":{},"process":{{"uid":"p{seq}","pid":{seq},"file":{{"name":"{name}"}}}}}}"#,
                1_700_000_000_000_u64 + seq * 1000
            );
            BufferedRecord {
                seq,
                kind: Some(buffered_record::Kind::OcsfEventJson(json.into_bytes().into())),
            }
        })
        .collect();
    EventBatch {
        first_seq: records[0].seq,
        last_seq: records[records.len() - 1].seq,
        records,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_filters_select_rows() {
    let collector = Collector::start();
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(mixed_batch(1..=20)).await.unwrap(), 20);

    let lines = |args: &[&str]| {
        let mut full = vec!["events", "--format", "jsonl"];
        full.extend_from_slice(args);
        if !args.contains(&"--limit") {
            full.extend(["--limit", "1000"]);
        }
        stdout(&collector.cli(&full)).lines().count()
    };
    assert_eq!(lines(&[]), 20);
    assert_eq!(lines(&["--where", "process.file.name=cmd.exe"]), 10);
    assert_eq!(lines(&["--where", "process.pid=4"]), 1);
    assert_eq!(lines(&["--class", "Process Activity"]), 10);
    assert_eq!(
        lines(&["--class", "4003", "--where", "process.file.name=cmd.exe"]),
        0
    );
    assert_eq!(lines(&["--sensor", &identity.sensor_id, "--limit", "3"]), 3);
    assert_eq!(lines(&["--sensor", "someone-else"]), 0);
    // Event times are 2023-11-14T22:13:21Z plus seq seconds.
    assert_eq!(lines(&["--since", "2023-11-14T22:13:31Z"]), 10);
    assert_eq!(lines(&["--until", "2023-11-14T22:13:31Z"]), 10);
    assert_eq!(lines(&["--since", "1h"]), 0);

    let table = stdout(&collector.cli(&["events", "--limit", "2"]));
    assert!(table.starts_with("TIME"), "{table}");
    assert!(table.contains("2023-11-14T22:13:21.000Z"), "{table}");
    assert_eq!(table.lines().count(), 3);

    for (args, expected) in [
        (
            vec!["events", "--class", "nope"],
            "unknown OCSF class \"nope\"",
        ),
        (
            vec!["events", "--where", "a..b=x"],
            "invalid --where field \"a..b\"",
        ),
        (vec!["events", "--where", "novalue"], "use FIELD=VALUE"),
        (
            vec!["events", "--since", "yesterday"],
            "invalid time \"yesterday\" for --since",
        ),
    ] {
        let out = collector.cli(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sensors_list_shows_gaps_and_last_seen() {
    let collector = Collector::start();
    let token = collector.token(&[]);
    let root = tempfile::tempdir().unwrap();
    let identity = enroll_at(&collector, &token, &root.path().join("s"))
        .await
        .unwrap();
    let before = stdout(&collector.cli(&["sensors", "list"]));
    assert!(before.contains("never"), "{before}");

    let mut session = TelemetrySession::open(&identity).await;
    let mut batch = mixed_batch(1..=4);
    batch.records.push(BufferedRecord {
        seq: 142,
        kind: Some(buffered_record::Kind::Gap(Gap {
            first_seq: 100,
            last_seq: 141,
            records: 42,
            bytes: 1000,
            reason: "evicted_buffer_full".into(),
            detected_at: None,
        })),
    });
    batch.last_seq = 142;
    assert_eq!(session.send(batch.clone()).await.unwrap(), 142);
    assert_eq!(session.send(batch).await.unwrap(), 142);

    let listing = stdout(&collector.cli(&["sensors", "list"]));
    let line = listing
        .lines()
        .find(|l| l.starts_with(&identity.sensor_id))
        .unwrap();
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert!(!line.contains("never"), "{line}");
    assert!(columns.contains(&"1"), "{line}");
    assert!(line.contains("1 (42)"), "gaps column missing in {line}");
    // EVENTS, HWM, DUPLICATES.
    assert!(
        line.contains("         4         142           5"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_result_reaches_commands_list() {
    let collector = Collector::start();
    let token = collector.token(&[]);
    let root = tempfile::tempdir().unwrap();
    let identity = enroll_at(&collector, &token, &root.path().join("s"))
        .await
        .unwrap();

    let unknown = collector.cli(&["command", "ping", "not-a-sensor"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("no sensor with id \"not-a-sensor\""),
        "{}",
        stderr(&unknown)
    );

    let first = stdout(&collector.cli(&["command", "ping", &identity.sensor_id, "--ttl", "1m"]));
    let first = first.trim().to_string();
    let second = stdout(&collector.cli(&["command", "ping", &identity.sensor_id]));
    let second = second.trim().to_string();
    let listing = stdout(&collector.cli(&["commands", "list"]));
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&first) && l.contains("queued")),
        "{listing}"
    );

    // Both are delivered on the Command stream.
    let (results_tx, results_rx) = tokio::sync::mpsc::channel(4);
    let channel = connect_mtls(&identity).await.unwrap();
    let mut envelopes = CommandClient::new(channel)
        .stream(tokio_stream::wrappers::ReceiverStream::new(results_rx))
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    while received.len() < 2 {
        let envelope = tokio::time::timeout(Duration::from_secs(10), envelopes.message())
            .await
            .expect("no envelope within 10 s")
            .unwrap()
            .unwrap();
        received.push(envelope.command_id);
    }
    assert_eq!(received, vec![first.clone(), second.clone()]);

    // The first result comes on the Command stream, the second through telemetry, twice.
    let result = |id: &str| CommandResult {
        command_id: id.to_string(),
        status: CommandStatus::Succeeded.into(),
        completed_at: None,
        detail: String::new(),
        output: Some(command_result::Output::Pong(Pong {})),
    };
    results_tx.send(result(&first)).await.unwrap();
    let mut session = TelemetrySession::open(&identity).await;
    let batch = EventBatch {
        first_seq: 1,
        last_seq: 1,
        records: vec![BufferedRecord {
            seq: 1,
            kind: Some(buffered_record::Kind::CommandResult(result(&second))),
        }],
    };
    assert_eq!(session.send(batch.clone()).await.unwrap(), 1);
    assert_eq!(session.send(batch).await.unwrap(), 1);
    results_tx.send(result(&second)).await.unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listing = stdout(&collector.cli(&["commands", "list"]));
        let line = |id: &str| {
            listing
                .lines()
                .find(|l| l.starts_with(id))
                .unwrap()
                .to_string()
        };
        if line(&first).contains("succeeded") {
            assert!(line(&first).contains("command"), "{listing}");
            assert!(line(&second).contains("succeeded"), "{listing}");
            assert!(line(&second).contains("telemetry"), "{listing}");
            assert_eq!(listing.lines().count(), 3, "{listing}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no result in {listing}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One sensor cannot complete another's command or store results of commands never issued.
/// Such results are dropped, logged and counted, and their batch is still acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn results_only_from_the_commands_sensor() {
    let collector = Collector::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let token = collector.token(&["--uses", "2"]);
    let root = tempfile::tempdir().unwrap();
    let s1 = enroll_at(&collector, &token, &root.path().join("s1"))
        .await
        .unwrap();
    let s2 = enroll_at(&collector, &token, &root.path().join("s2"))
        .await
        .unwrap();
    let ping = stdout(&collector.cli(&["command", "ping", &s2.sensor_id]));
    let ping = ping.trim().to_string();

    let record = |seq: u64, command_id: &str, detail: &str| BufferedRecord {
        seq,
        kind: Some(buffered_record::Kind::CommandResult(CommandResult {
            command_id: command_id.to_string(),
            status: CommandStatus::Succeeded.into(),
            completed_at: None,
            detail: detail.to_string(),
            output: Some(command_result::Output::Pong(Pong {})),
        })),
    };
    let mut session = TelemetrySession::open(&s1).await;
    let forged = EventBatch {
        first_seq: 1,
        last_seq: 2,
        records: vec![
            record(1, &ping, "spoofed by s1"),
            record(2, "not-a-command", "x"),
        ],
    };
    assert_eq!(session.send(forged).await.unwrap(), 2);

    let line = |listing: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(&ping))
            .unwrap()
            .to_string()
    };
    let listing = stdout(&collector.cli(&["commands", "list"]));
    assert!(line(&listing).contains("queued"), "{listing}");
    assert!(!listing.contains("spoofed"), "{listing}");
    assert_eq!(
        collector.metric("edr_collector_command_results_dropped_total"),
        2.0
    );
    assert_eq!(collector.metric("edr_collector_records_other_total"), 0.0);
    let stored: i64 = database(&collector)
        .query_row("SELECT COUNT(*) FROM command_results", [], |row| row.get(0))
        .unwrap();
    assert_eq!(stored, 0);
    let log = collector.log.lock().unwrap().join("\n");
    let warning = log
        .lines()
        .find(|l| l.contains("dropped command results"))
        .unwrap_or_else(|| panic!("no warning in {log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains(&s1.sensor_id), "{warning}");
    assert!(warning.contains(&ping), "{warning}");
    assert!(warning.contains("dropped=2"), "{warning}");

    // The sensor that the command was issued to still completes it.
    let mut session = TelemetrySession::open(&s2).await;
    let own = EventBatch {
        first_seq: 1,
        last_seq: 1,
        records: vec![record(1, &ping, "pong from s2")],
    };
    assert_eq!(session.send(own).await.unwrap(), 1);
    let listing = stdout(&collector.cli(&["commands", "list"]));
    assert!(line(&listing).contains("succeeded"), "{listing}");
    assert!(line(&listing).contains("pong from s2"), "{listing}");
}

/// Text that a sensor controls reaches table output with its control characters escaped, so
/// it can neither send escape sequences to the terminal nor start a fake row.
#[tokio::test(flavor = "multi_thread")]
async fn tables_escape_sensor_text() {
    let collector = Collector::start();
    let token = collector.token(&[]);
    let root = tempfile::tempdir().unwrap();
    let identity = enroll_at(&collector, &token, &root.path().join("s"))
        .await
        .unwrap();
    let ping = stdout(&collector.cli(&["command", "ping", &identity.sensor_id]));
    let ping = ping.trim().to_string();
    let hostile = "x\u{1b}[31m\r\nFAKE-ROW\u{9b}2K\u{7f}";
    let escaped = "x\\u{1b}[31m\\u{d}\\u{a}FAKE-ROW\\u{9b}2K\\u{7f}";

    let mut session = TelemetrySession::open(&identity).await;
    let heartbeat = Heartbeat {
        sent_at: None,
        health: Some(SensorHealth {
            versions: Some(Versions {
                sensor_version: hostile.into(),
                os_build: hostile.into(),
                ocsf_version: "1.8.0".into(),
            }),
            ..Default::default()
        }),
    };
    session
        .send_message(sensor_message::Kind::Heartbeat(heartbeat))
        .await
        .unwrap();
    let event = serde_json::json!({
        "class_uid": 1007,
        "time": 1_764_979_200_000_i64,
        "process": {"uid": hostile},
        "actor": {"user": {"name": hostile}},
    });
    let result = CommandResult {
        command_id: ping.clone(),
        status: CommandStatus::Failed.into(),
        completed_at: None,
        detail: hostile.into(),
        output: None,
    };
    let batch = EventBatch {
        first_seq: 1,
        last_seq: 2,
        records: vec![
            BufferedRecord {
                seq: 1,
                kind: Some(buffered_record::Kind::OcsfEventJson(
                    event.to_string().into_bytes().into(),
                )),
            },
            BufferedRecord {
                seq: 2,
                kind: Some(buffered_record::Kind::CommandResult(result)),
            },
        ],
    };
    assert_eq!(session.send(batch).await.unwrap(), 2);

    let tables: [&[&str]; 3] = [
        &["sensors", "list"],
        &["events", "--format", "table"],
        &["commands", "list"],
    ];
    for args in tables {
        let table = stdout(&collector.cli(args));
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?}: {table:?}"
        );
        assert_eq!(table.lines().count(), 2, "{args:?}: {table}");
        assert!(table.contains(escaped), "{args:?}: {table}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn export_writes_security_lake_layout() {
    let collector = Collector::start();
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(mixed_batch(1..=10)).await.unwrap(), 10);

    let out = tempfile::tempdir().unwrap();
    let output = out.path().to_str().unwrap();
    let result = collector.cli(&[
        "export",
        "--format",
        "jsonl",
        "--output",
        output,
        "--region",
        "eu-west-1",
        "--account-id",
        "123456789012",
    ]);
    assert!(result.status.success(), "{result:?}");
    for (source, count) in [("edr-process-activity", 5), ("edr-dns-activity", 5)] {
        let dir = out.path().join(format!(
            "ext/{source}/region=eu-west-1/accountId=123456789012/eventDay=20231114"
        ));
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert_eq!(text.lines().count(), count);
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(value["class_uid"].is_i64());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_export_leaves_no_files() {
    let collector = Collector::start();
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(mixed_batch(1..=10)).await.unwrap(), 10);

    for format in ["jsonl", "parquet"] {
        // Seq 1 opens the DNS partition; seq 2 then fails, because a plain file takes the path
        // of the process partition's directory.
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(out.path().join("ext")).unwrap();
        let blocker = out.path().join("ext/edr-process-activity");
        std::fs::write(&blocker, "not a directory").unwrap();
        let result = collector.cli(&[
            "export",
            "--format",
            format,
            "--output",
            out.path().to_str().unwrap(),
        ]);
        assert!(!result.status.success(), "{result:?}");
        assert!(
            stderr(&result).contains("edr-process-activity"),
            "{}",
            stderr(&result)
        );

        // Neither files nor the partition directories the export created stay behind.
        let mut left = Vec::new();
        let mut dirs = vec![out.path().to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path.clone());
                }
                if path != blocker && path != out.path().join("ext") {
                    left.push(path);
                }
            }
        }
        assert!(left.is_empty(), "{format}: left behind: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn export_to_a_file_is_rejected() {
    let collector = Collector::start();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("events.jsonl");
    std::fs::write(&file, "kept").unwrap();
    let result = collector.cli(&[
        "export",
        "--format",
        "jsonl",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(!result.status.success(), "{result:?}");
    assert!(
        stderr(&result).contains("is not a directory"),
        "{}",
        stderr(&result)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept");
}

/// One row of an exported Parquet file, read back with the parquet crate's record reader.
#[derive(Debug, PartialEq)]
struct ParquetRow {
    time: i64,
    sensor_id: String,
    seq: i64,
    class_uid: i64,
    activity_id: Option<i64>,
    severity_id: Option<i64>,
    process_uid: Option<String>,
    user_name: Option<String>,
    event: String,
}

fn read_parquet(path: &std::path::Path) -> Vec<ParquetRow> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let metadata = reader.metadata();
    for column in metadata.row_group(0).columns() {
        assert!(
            matches!(column.compression(), parquet::basic::Compression::ZSTD(_)),
            "column {} is {:?}, not zstd",
            column.column_path(),
            column.compression()
        );
    }
    let optional_long = |field: &Field| match field {
        Field::Null => None,
        Field::Long(value) => Some(*value),
        other => panic!("expected a long or null, got {other:?}"),
    };
    let optional_string = |field: &Field| match field {
        Field::Null => None,
        Field::Str(value) => Some(value.clone()),
        other => panic!("expected a string or null, got {other:?}"),
    };
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            let fields: Vec<(String, Field)> = row
                .get_column_iter()
                .map(|(name, field)| (name.clone(), field.clone()))
                .collect();
            let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "time",
                    "sensor_id",
                    "seq",
                    "class_uid",
                    "activity_id",
                    "severity_id",
                    "process_uid",
                    "user_name",
                    "event"
                ]
            );
            let Field::TimestampMillis(time) = fields[0].1 else {
                panic!("time is {:?}", fields[0].1)
            };
            ParquetRow {
                time,
                sensor_id: optional_string(&fields[1].1).unwrap(),
                seq: optional_long(&fields[2].1).unwrap(),
                class_uid: optional_long(&fields[3].1).unwrap(),
                activity_id: optional_long(&fields[4].1),
                severity_id: optional_long(&fields[5].1),
                process_uid: optional_string(&fields[6].1),
                user_name: optional_string(&fields[7].1),
                event: optional_string(&fields[8].1).unwrap(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn export_parquet_matches_store() {
    let collector = Collector::start();
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(mixed_batch(1..=30)).await.unwrap(), 30);

    let out = tempfile::tempdir().unwrap();
    let result = collector.cli(&[
        "export",
        "--format",
        "parquet",
        "--output",
        out.path().to_str().unwrap(),
    ]);
    assert!(result.status.success(), "{result:?}");

    let db = database(&collector);
    for (source, class_uid) in [("edr-process-activity", 1007), ("edr-dns-activity", 4003)] {
        let dir = out.path().join(format!(
            "ext/{source}/region=local/accountId=000000000000/eventDay=20231114"
        ));
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(
            files[0].extension().and_then(|e| e.to_str()),
            Some("parquet")
        );
        let exported = read_parquet(&files[0]);

        let mut stmt = db
            .prepare(
                "SELECT time, sensor_id, seq, class_uid, activity_id, severity_id, process_uid,
                        user_name, json
                 FROM events WHERE class_uid = ?1 ORDER BY time, sensor_id, seq",
            )
            .unwrap();
        let stored: Vec<ParquetRow> = stmt
            .query_map([class_uid], |row| {
                Ok(ParquetRow {
                    time: row.get(0)?,
                    sensor_id: row.get(1)?,
                    seq: row.get(2)?,
                    class_uid: row.get(3)?,
                    activity_id: row.get(4)?,
                    severity_id: row.get(5)?,
                    process_uid: row.get(6)?,
                    user_name: row.get(7)?,
                    event: row.get(8)?,
                })
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(stored.len(), 15, "{source}");
        assert_eq!(exported.len(), stored.len(), "{source}");
        assert_eq!(exported, stored, "{source}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_old_events_for_good() {
    let collector =
        Collector::start_with(&["--retention-max-age", "1d", "--retention-interval", "300ms"]);
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    // Events from 2023 are older than one day.
    assert_eq!(session.send(event_batch(1..=10)).await.unwrap(), 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !stored_seqs(&collector, &identity.sensor_id).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "retention deleted nothing in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The high-water mark stays: a resend does not bring the events back.
    assert_eq!(session.send(event_batch(1..=10)).await.unwrap(), 10);
    assert!(stored_seqs(&collector, &identity.sensor_id).is_empty());
}

#[test]
fn events_into_closed_pipe_exits_quietly() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let init = run(&["init", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(init.status.success(), "init failed: {init:?}");
    let mut child = std::process::Command::new(BIN)
        .args(["events", "--data-dir", data_dir.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // With the read end closed, every write fails with a broken pipe, as after `| head -1`.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();

    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stderr(&output), "");
}

/// Stores events through `serve`: 1..=4000 train the compression dictionary, and 5001..=5100
/// are stored compressed with it. Then damages the rows of `damaged` by pointing each past the
/// end of its frame. Returns the sensor id.
async fn serve_with_damaged_rows(collector: &Collector, damaged: &[i64]) -> String {
    let identity = direct_identity(collector);
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(mixed_batch(1..=4000)).await.unwrap(), 4000);

    // The ingest writer adopts a finished dictionary only after it stores a batch, so gap
    // records follow until the dictionary is committed.
    let db = rusqlite::Connection::open(collector.data_dir().join("collector.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let count = |sql: &str| db.query_row(sql, [], |row| row.get::<_, i64>(0)).unwrap();
    let mut next_seq = 4001;
    while count("SELECT COUNT(*) FROM dictionaries") == 0 {
        assert!(
            next_seq < 5000,
            "no dictionary trained after {next_seq} batches"
        );
        let gap = BufferedRecord {
            seq: next_seq,
            kind: Some(buffered_record::Kind::Gap(Gap {
                first_seq: next_seq,
                last_seq: next_seq,
                records: 1,
                bytes: 1,
                reason: "test".into(),
                detected_at: None,
            })),
        };
        let batch = EventBatch {
            first_seq: next_seq,
            last_seq: next_seq,
            records: vec![gap],
        };
        assert_eq!(session.send(batch).await.unwrap(), next_seq);
        next_seq += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(session.send(mixed_batch(5001..=5100)).await.unwrap(), 5100);
    assert_eq!(
        count("SELECT COUNT(*) FROM events WHERE seq > 5000 AND frame_index IS NOT NULL"),
        100
    );

    for seq in damaged {
        db.execute("UPDATE events SET frame_index = 1000 WHERE seq = ?1", [seq])
            .unwrap();
    }
    identity.sensor_id
}

/// Returns the seqs of the events in JSON lines, sorted.
fn seqs_of(jsonl: &str) -> Vec<i64> {
    let mut seqs: Vec<i64> = jsonl
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            // mixed_batch sets process.pid to the seq.
            event["process"]["pid"].as_i64().unwrap()
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

/// Checks that `stderr` has one warning line per damaged seq, naming the sensor and the seq,
/// and contains the summary.
fn assert_damage_reported(stderr: &str, sensor_id: &str, damaged: &[i64], written: &str) {
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("warning: skipped event"))
        .collect();
    assert_eq!(warnings.len(), damaged.len(), "{stderr}");
    for (line, seq) in warnings.iter().zip(damaged) {
        assert!(
            line.contains(&format!(
                "event {sensor_id} seq {seq}: stored event is damaged"
            )),
            "{line}"
        );
    }
    let summary = format!(
        "skipped {} stored events that cannot be read (see the warnings above) and {written}",
        damaged.len()
    );
    assert!(stderr.contains(&summary), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_skips_damaged_rows() {
    let collector = Collector::start();
    let damaged = [5010, 5011, 5050];
    let sensor_id = serve_with_damaged_rows(&collector, &damaged).await;
    let readable: Vec<i64> = (1..=4000)
        .chain(5001..=5100)
        .filter(|seq| !damaged.contains(seq))
        .collect();

    let out = collector.cli(&["events", "--format", "jsonl", "--limit", "100000"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(seqs_of(&printed), readable);
    assert_damage_reported(&err, &sensor_id, &damaged, "printed the other 4097");

    // Event 5001 has the time 2023-11-14T23:36:41Z. Skipped rows do not count toward --limit,
    // so 12 events are printed.
    let out = collector.cli(&[
        "events",
        "--format",
        "jsonl",
        "--since",
        "2023-11-14T23:36:41Z",
        "--limit",
        "12",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let expected: Vec<i64> = (5001..=5009).chain(5012..=5014).collect();
    assert_eq!(seqs_of(&printed), expected);
    assert_damage_reported(&err, &sensor_id, &[5010, 5011], "printed the other 12");

    // A --where condition cannot be checked on a damaged row, so the row is reported.
    let out = collector.cli(&["events", "--format", "jsonl", "--where", "process.pid=5010"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "");
    assert_damage_reported(&err, &sensor_id, &damaged, "printed the other 0");

    // A time range before the damaged rows reports nothing and succeeds.
    let out = collector.cli(&[
        "events",
        "--format",
        "jsonl",
        "--until",
        "2023-11-14T23:36:50Z",
        "--where",
        "process.pid=5001",
    ]);
    assert_eq!(seqs_of(&stdout(&out)), [5001]);
    assert_eq!(stderr(&out), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn export_skips_damaged_rows() {
    let collector = Collector::start();
    let damaged = [5010, 5011, 5050];
    let sensor_id = serve_with_damaged_rows(&collector, &damaged).await;

    let out_dir = tempfile::tempdir().unwrap();
    let out = collector.cli(&[
        "export",
        "--format",
        "jsonl",
        "--output",
        out_dir.path().to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("exported 4097 events"), "{err}");
    assert_damage_reported(&err, &sensor_id, &damaged, "exported the other 4097");

    // Every readable event is in the files, each once.
    let mut exported = String::new();
    for source in ["edr-process-activity", "edr-dns-activity"] {
        let dir = out_dir.path().join(format!(
            "ext/{source}/region=local/accountId=000000000000/eventDay=20231114"
        ));
        for file in std::fs::read_dir(&dir).unwrap() {
            exported.push_str(&std::fs::read_to_string(file.unwrap().path()).unwrap());
        }
    }
    let readable: Vec<i64> = (1..=4000)
        .chain(5001..=5100)
        .filter(|seq| !damaged.contains(seq))
        .collect();
    assert_eq!(seqs_of(&exported), readable);
}
