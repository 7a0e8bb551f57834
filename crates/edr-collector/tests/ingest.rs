//! Telemetry ingest against the real `edr-collector serve` on loopback: idempotent storage,
//! acks, rejection of invalid batches, heartbeats, metrics, and one `serve` per data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use edr_proto::v1::{
    BufferedRecord, CommandResult, CommandStatus, EventBatch, Gap, Heartbeat, SensorHealth,
    Versions, buffered_record, collector_message, sensor_message,
};

#[tokio::test(flavor = "multi_thread")]
async fn resent_batches_store_each_event_once() {
    let collector = Collector::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;

    assert_eq!(session.send(event_batch(1..=100)).await.unwrap(), 100);
    // The same batch again, then one overlapping the high-water mark, then one with a hole.
    assert_eq!(session.send(event_batch(1..=100)).await.unwrap(), 100);
    assert_eq!(session.send(event_batch(51..=150)).await.unwrap(), 150);
    assert_eq!(session.send(event_batch([160, 170])).await.unwrap(), 170);

    let seqs = stored_seqs(&collector, &identity.sensor_id);
    let expected: Vec<u64> = (1..=150).chain([160, 170]).collect();
    assert_eq!(seqs, expected);
    assert_eq!(
        collector.metric("edr_collector_duplicates_dropped_total"),
        150.0
    );
    assert_eq!(
        collector.metric("edr_collector_events_ingested_total"),
        152.0
    );
    assert_eq!(collector.metric("edr_collector_batches_stored_total"), 4.0);
    assert_eq!(collector.metric("edr_collector_active_streams"), 1.0);
}

#[test]
fn metrics_listener_answers_only_get_metrics() {
    let collector = Collector::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    assert!(collector.metrics().starts_with("HTTP/1.1 200 OK"));
    let other_path = collector.metrics_request("GET /admin");
    assert!(other_path.starts_with("HTTP/1.1 404"), "{other_path}");
    assert!(!other_path.contains("edr_collector_"), "{other_path}");
    let post = collector.metrics_request("POST /metrics");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
}

#[tokio::test(flavor = "multi_thread")]
async fn high_water_mark_survives_restart() {
    let mut collector = Collector::start();
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(event_batch(1..=10)).await.unwrap(), 10);
    drop(session);

    collector.restart();
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(event_batch(1..=20)).await.unwrap(), 20);
    let seqs = stored_seqs(&collector, &identity.sensor_id);
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_batch_rejected_others_unaffected() {
    let collector = Collector::start_with(&["--max-records-per-batch", "50"]);
    let good = direct_identity(&collector);
    let bad = direct_identity(&collector);
    let mut good_session = TelemetrySession::open(&good).await;
    assert_eq!(good_session.send(event_batch(1..=5)).await.unwrap(), 5);

    let mut batch = event_batch(1..=3);
    batch.records[1].kind = Some(buffered_record::Kind::OcsfEventJson(
        br#"{"activity_id":1}"#.to_vec().into(),
    ));
    let cases = [
        (
            batch,
            "record seq 2 is not a valid OCSF event: missing field `class_uid`",
        ),
        (
            EventBatch {
                first_seq: 2,
                last_seq: 1,
                records: event_batch([2, 1]).records,
            },
            "seq 1 follows seq 2",
        ),
        (
            event_batch(1..=51),
            "51 records, more than the maximum of 50",
        ),
    ];
    for (batch, expected) in cases {
        let mut session = TelemetrySession::open(&bad).await;
        let status = session.send(batch).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }
    assert!(stored_seqs(&collector, &bad.sensor_id).is_empty());

    // The good stream is still open and storing.
    assert_eq!(good_session.send(event_batch(6..=9)).await.unwrap(), 9);
    assert_eq!(stored_seqs(&collector, &good.sensor_id).len(), 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn gaps_results_and_heartbeats_stored() {
    let collector = Collector::start();
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    // A result is stored only for a command issued to its sensor. This sensor was not
    // enrolled, so `command ping` rejects it and the command is inserted here.
    rusqlite::Connection::open(collector.data_dir().join("collector.db"))
        .unwrap()
        .execute(
            "INSERT INTO commands (id, sensor_id, kind, issued_at, expires_at)
             VALUES ('cmd-1', ?1, 'ping', 0, 0)",
            [&identity.sensor_id],
        )
        .unwrap();

    let records = vec![
        BufferedRecord {
            seq: 200,
            kind: Some(buffered_record::Kind::Gap(Gap {
                first_seq: 100,
                last_seq: 199,
                records: 100,
                bytes: 4096,
                reason: "evicted_buffer_full".into(),
                detected_at: None,
            })),
        },
        BufferedRecord {
            seq: 201,
            kind: Some(buffered_record::Kind::CommandResult(CommandResult {
                command_id: "cmd-1".into(),
                status: CommandStatus::Succeeded.into(),
                completed_at: None,
                detail: String::new(),
                output: None,
            })),
        },
    ];
    let batch = EventBatch {
        first_seq: 200,
        last_seq: 201,
        records,
    };
    assert_eq!(session.send(batch.clone()).await.unwrap(), 201);
    assert_eq!(session.send(batch).await.unwrap(), 201);

    let heartbeat = Heartbeat {
        sent_at: None,
        health: Some(SensorHealth {
            versions: Some(Versions {
                sensor_version: "9.9.9".into(),
                os_build: "26100".into(),
                ocsf_version: "1.8.0".into(),
            }),
            ..Default::default()
        }),
    };
    let reply = session
        .send_message(sensor_message::Kind::Heartbeat(heartbeat))
        .await
        .unwrap();
    assert!(
        matches!(reply, collector_message::Kind::HeartbeatAck(ack) if ack.sensor_id == identity.sensor_id)
    );

    let db = database(&collector);
    let gaps: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM gaps WHERE sensor_id = ?1 AND records = 100",
            [&identity.sensor_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(gaps, 1);
    let status: String = db
        .query_row(
            "SELECT status FROM command_results WHERE command_id = 'cmd-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "succeeded");
    let version: String = db
        .query_row(
            "SELECT sensor_version FROM sensor_state WHERE sensor_id = ?1",
            [&identity.sensor_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "9.9.9");
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_batches_acked_in_order() {
    let collector = Collector::start();
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    let batches: Vec<_> = (0..20)
        .map(|i| event_batch(i * 100 + 1..=i * 100 + 100))
        .collect();
    let acks = session.send_pipelined(batches).await.unwrap();
    let expected: Vec<u64> = (1..=20).map(|i| i * 100).collect();
    assert_eq!(acks, expected);
    assert_eq!(
        stored_seqs(&collector, &identity.sensor_id),
        (1..=2000).collect::<Vec<u64>>()
    );
}

/// Starts a second `serve` on the data directory of `collector` and returns its output once it
/// exits. Fails the test when it still runs after 20 s, that is when it was not rejected.
fn second_serve(collector: &Collector) -> std::process::Output {
    let data_dir = collector.data_dir();
    let mut child = std::process::Command::new(BIN)
        .args([
            "serve",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "a second serve on {} still ran after 20 s: {}",
                data_dir.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn second_serve_on_one_data_dir_exits() {
    let mut collector = Collector::start();
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(event_batch(1..=10)).await.unwrap(), 10);

    let rejected = second_serve(&collector);
    let message = String::from_utf8_lossy(&rejected.stderr);
    assert!(!rejected.status.success(), "{message}");
    assert!(
        message.contains("is locked by another process"),
        "{message}"
    );
    assert!(
        message.contains(&format!("PID {}", collector.child.id())),
        "{message}"
    );
    assert!(
        message.contains(&collector.data_dir().display().to_string()),
        "{message}"
    );

    // The first serve keeps storing, and the other commands run beside it.
    assert_eq!(session.send(event_batch(11..=20)).await.unwrap(), 20);
    let events = collector.cli(&["events", "--format", "jsonl", "--limit", "1000"]);
    assert!(events.status.success(), "{events:?}");
    assert_eq!(String::from_utf8_lossy(&events.stdout).lines().count(), 20);
    for args in [
        &["sensors", "list"][..],
        &["commands", "list"],
        &["token", "list"],
    ] {
        let out = collector.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let export_dir = tempfile::tempdir().unwrap();
    let export = collector.cli(&[
        "export",
        "--format",
        "jsonl",
        "--output",
        export_dir.path().to_str().unwrap(),
    ]);
    assert!(export.status.success(), "{export:?}");

    // The operating system drops the lock of a killed process: `restart` sends SIGKILL and
    // waits for the new serve's start-up line, and the new serve holds the lock in turn.
    drop(session);
    collector.restart();
    let rejected = second_serve(&collector);
    let message = String::from_utf8_lossy(&rejected.stderr);
    assert!(!rejected.status.success(), "{message}");
    assert!(
        message.contains(&format!("PID {}", collector.child.id())),
        "{message}"
    );
}

/// A WAL file deleted under `serve` is noticed at the next commit. That batch and every later
/// one are refused, and the commits still in the deleted file, the acknowledged ones
/// included, are copied into the database file. After a restart the resent batches are
/// stored exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn deleted_wal_stops_acks_until_restart() {
    let mut collector = Collector::start();
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(event_batch(1..=10)).await.unwrap(), 10);

    std::fs::remove_file(collector.data_dir().join("collector.db-wal")).unwrap();
    let refused = session.send(event_batch(11..=20)).await.unwrap_err();
    assert!(
        status_text(&refused).contains("collector.db-wal was deleted"),
        "{refused:?}"
    );
    drop(session);
    let mut session = TelemetrySession::open(&identity).await;
    let refused = session.send(event_batch(11..=20)).await.unwrap_err();
    assert!(
        status_text(&refused).contains("restart serve"),
        "{refused:?}"
    );
    drop(session);

    collector.restart();
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(event_batch(11..=30)).await.unwrap(), 30);
    let seqs = stored_seqs(&collector, &identity.sensor_id);
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>());
}

/// A graceful stop copies the WAL into the database file. So `collector.db` copied alone
/// afterwards, as a backup often is, contains every acknowledged event.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn graceful_stop_leaves_a_complete_database_file() {
    let mut collector = Collector::start();
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(event_batch(1..=10)).await.unwrap(), 10);
    drop(session);

    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &collector.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(collector.child.wait().unwrap().success());

    let backup = tempfile::tempdir().unwrap();
    std::fs::copy(
        collector.data_dir().join("collector.db"),
        backup.path().join("collector.db"),
    )
    .unwrap();
    let conn = rusqlite::Connection::open(backup.path().join("collector.db")).unwrap();
    let events: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
        .unwrap();
    assert_eq!(events, 10);
}
