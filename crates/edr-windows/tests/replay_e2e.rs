//! End-to-end delivery with real processes: `edr-collector serve` and `edr-windows replay` on
//! loopback, over mTLS, with both killed by SIGKILL in the middle of the stream.
//!
//! The recorded EVTX files come from `EDR_DATA_DIR` (default `<workspace>/../shared/data`);
//! the test is skipped with a message when they are absent. The `edr-collector` binary is
//! built once by running cargo from the test, into the same target directory.
//!
//! Unix only: it kills processes with SIGKILL and runs cargo, neither of which a Windows test
//! binary under Wine can do.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Collector, SENSOR, collector_binary, collector_cli, data_dir, run, wait_until};

fn replay(evtx: &Path, state: &Path) -> Child {
    Command::new(SENSOR)
        .arg("replay")
        .arg(evtx)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads every stored event back through `edr-collector events`, which also decompresses the
/// events the Collector stored with its dictionary.
fn stored_events(collector_bin: &Path, data: &Path) -> Vec<String> {
    collector_cli(
        collector_bin,
        data,
        &["events", "--format", "jsonl", "--limit", "100000000"],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn stored_count(database: &Path) -> u64 {
    let Ok(connection) =
        rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    connection
        .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
        .unwrap_or(0)
}

/// Returns the folder of recorded EVTX files, or `None` after printing why the test is
/// skipped.
fn recorded_evtx() -> Option<PathBuf> {
    let evtx = data_dir().join("evtx");
    if evtx.is_dir() {
        return Some(evtx);
    }
    eprintln!(
        "skipped: no recorded EVTX files in {}; set EDR_DATA_DIR to the folder holding evtx/",
        evtx.display()
    );
    None
}

/// Initialises a Collector in `data`, starts it on a free loopback port and enrolls a sensor
/// whose state goes to `state`.
fn enrolled(collector_bin: &Path, data: &Path, state: &Path) -> Collector {
    run(
        collector_bin,
        &["init", "--data-dir", data.to_str().unwrap()],
    );
    let collector = Collector::start(collector_bin, data, "127.0.0.1:0");
    let token = run(
        collector_bin,
        &["token", "create", "--data-dir", data.to_str().unwrap()],
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    run(
        Path::new(SENSOR),
        &[
            "enroll",
            "--collector",
            &format!("https://{}", collector.addr),
            "--token",
            &token,
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    collector
}

#[test]
fn kills_lose_and_duplicate_nothing() {
    let Some(evtx) = recorded_evtx() else {
        return;
    };
    let collector_bin = collector_binary();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("collector");
    let state = root.path().join("sensor");
    let database = data.join("collector.db");

    // What the pipeline must deliver: every event `convert` produces for the same files.
    let expected_file = root.path().join("expected.jsonl");
    run(
        Path::new(SENSOR),
        &[
            "convert",
            evtx.to_str().unwrap(),
            "--output",
            expected_file.to_str().unwrap(),
        ],
    );
    let mut expected: Vec<String> = std::fs::read_to_string(&expected_file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        expected.len() > 1000,
        "too few events to test with: {}",
        expected.len()
    );

    let collector = enrolled(&collector_bin, &data, &state);
    let listen = collector.addr.clone();

    // The Collector dies once the first events are stored, in the middle of the stream.
    let mut sensor = replay(&evtx, &state);
    wait_until(
        "the first events are stored",
        Duration::from_secs(60),
        || stored_count(&database) > 0,
    );
    collector.kill();
    let stored_before_kill = stored_count(&database);
    assert!(
        sensor.try_wait().unwrap().is_none(),
        "the replay ended although the Collector was killed before it acknowledged everything"
    );

    // The sensor keeps appending while disconnected, then dies too.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sensor.try_wait().unwrap().is_none(),
        "the replay ended without its Collector"
    );
    sensor.kill().unwrap();
    sensor.wait().unwrap();

    // The sensor restarts first and retries with backoff until the Collector is back.
    let sensor = replay(&evtx, &state);
    std::thread::sleep(Duration::from_millis(500));
    let _collector = Collector::start(&collector_bin, &data, &listen);
    let output = sensor.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the resumed replay failed: {summary}"
    );
    assert!(
        summary.contains("resumed an interrupted replay"),
        "{summary}"
    );

    let mut stored = stored_events(&collector_bin, &data);
    assert!(
        stored.len() as u64 > stored_before_kill,
        "nothing was stored after the restart"
    );
    assert_eq!(stored.len(), expected.len(), "stored event count differs");
    stored.sort_unstable();
    expected.sort_unstable();
    assert!(
        stored == expected,
        "stored events differ from the converted ones"
    );
}

#[test]
fn replay_gives_up_without_collector_and_resumes() {
    let Some(evtx) = recorded_evtx() else {
        return;
    };
    let collector_bin = collector_binary();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("collector");
    let state = root.path().join("sensor");
    let collector = enrolled(&collector_bin, &data, &state);
    let listen = collector.addr.clone();
    collector.kill();

    let replay_with_timeout = || {
        Command::new(SENSOR)
            .arg("replay")
            .arg(&evtx)
            .arg("--state-dir")
            .arg(&state)
            .args(["--timeout", "2"])
            .output()
            .unwrap()
    };
    let started = std::time::Instant::now();
    let output = replay_with_timeout();
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{message}");
    assert!(
        message.contains("acknowledged nothing for 2 s"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the replay took {:?} to give up",
        started.elapsed()
    );

    // The events wait in the ring buffer; the same replay sends them once the Collector is back.
    let _collector = Collector::start(&collector_bin, &data, &listen);
    let output = replay_with_timeout();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{summary}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stored = stored_events(&collector_bin, &data);
    let expected =
        String::from_utf8(run(Path::new(SENSOR), &["convert", evtx.to_str().unwrap()]).stdout)
            .unwrap()
            .lines()
            .count();
    assert_eq!(stored.len(), expected);
}

/// Runs `replay` of `inputs` with `--timeout 2` and returns its output.
fn replay_with_timeout(inputs: &Path, state: &Path) -> std::process::Output {
    Command::new(SENSOR)
        .arg("replay")
        .arg(inputs)
        .arg("--state-dir")
        .arg(state)
        .args(["--timeout", "2"])
        .output()
        .unwrap()
}

/// Enrolls a sensor and runs a replay of `inputs` while the Collector is down, so that every
/// event waits in the ring buffer under `state`. Returns the stopped Collector's address.
fn replay_into_buffer(collector_bin: &Path, data: &Path, state: &Path, inputs: &Path) -> String {
    let collector = enrolled(collector_bin, data, state);
    let listen = collector.addr.clone();
    collector.kill();
    let output = replay_with_timeout(inputs, state);
    assert!(
        !output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    listen
}

/// A Collector data directory and a sensor state directory whose ring buffer holds every event
/// of a replay that the stopped Collector did not acknowledge.
struct FilledBuffer {
    collector_bin: PathBuf,
    _root: tempfile::TempDir,
    data: PathBuf,
    state: PathBuf,
    listen: String,
}

impl FilledBuffer {
    /// Enrolls a sensor, stops the Collector and replays `inputs` into the buffer.
    fn new(inputs: &Path) -> Self {
        let collector_bin = collector_binary();
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("collector");
        let state = root.path().join("sensor");
        let listen = replay_into_buffer(&collector_bin, &data, &state, inputs);
        Self {
            collector_bin,
            _root: root,
            data,
            state,
            listen,
        }
    }

    /// Starts the Collector again and replays `inputs` once more, which drains the buffer.
    fn replay_again(&self, inputs: &Path) -> (Collector, std::process::Output) {
        let collector = Collector::start(&self.collector_bin, &self.data, &self.listen);
        let output = replay_with_timeout(inputs, &self.state);
        (collector, output)
    }
}

/// Returns the telemetry segment files of the ring buffer under `state`, oldest first.
fn telemetry_segments(state: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state.join("buffer").join("telemetry"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

/// Returns the gap rows the Collector stored: first and last sequence number, records, reason.
fn stored_gaps(database: &Path) -> Vec<(u64, u64, u64, String)> {
    let connection =
        rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut statement = connection
        .prepare("SELECT first_seq, last_seq, records, reason FROM gaps ORDER BY first_seq")
        .unwrap();
    statement
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn replay_reports_deleted_segment() {
    // The recorded ETL and EVTX files together fill more than one 32 MiB segment.
    if recorded_evtx().is_none() {
        return;
    }
    let inputs = data_dir();
    if !inputs.join("etl").is_dir() {
        eprintln!(
            "skipped: no recorded ETL files in {}; set EDR_DATA_DIR to the folder holding etl/",
            inputs.display()
        );
        return;
    }
    let filled = FilledBuffer::new(&inputs);

    // The oldest segment starts at 1; the next one is keyed one above its last record.
    let segments = telemetry_segments(&filled.state);
    assert!(segments.len() >= 2, "one segment only: {segments:?}");
    let next_key: u64 = segments[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let deleted = next_key - 1;
    std::fs::remove_file(&segments[0]).unwrap();

    let (_collector, output) = filled.replay_again(&inputs);
    let summary = String::from_utf8_lossy(&output.stdout);
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{summary}{message}");
    assert!(summary.contains(&format!("lost: {deleted}\n")), "{summary}");
    assert!(message.contains("events were lost"), "{message}");
    let gaps = stored_gaps(&filled.data.join("collector.db"));
    assert_eq!(
        gaps,
        vec![(1, deleted, deleted, "segment_missing_on_disk".to_owned())]
    );
}

#[test]
fn replay_counts_damaged_records_as_lost() {
    let Some(evtx) = recorded_evtx() else {
        return;
    };
    let filled = FilledBuffer::new(&evtx);

    let segments = telemetry_segments(&filled.state);
    let len = std::fs::metadata(&segments[0]).unwrap().len();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segments[0])
        .unwrap();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len / 2)).unwrap();
    std::io::Write::write_all(&mut file, &[0xFF; 8]).unwrap();
    drop(file);

    let (_collector, output) = filled.replay_again(&evtx);
    let summary = String::from_utf8_lossy(&output.stdout);
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{summary}{message}");
    assert!(!summary.contains("lost: 0\n"), "{summary}");
    assert!(summary.contains(" in 1 gap,"), "{summary}");
    assert!(
        summary.contains("acknowledged those too, except those counted as lost below"),
        "{summary}"
    );
    let gaps = stored_gaps(&filled.data.join("collector.db"));
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0].3, "damaged_on_disk");
}

#[test]
fn replay_rejects_invalid_checkpoint() {
    let Some(evtx) = recorded_evtx() else {
        return;
    };
    let filled = FilledBuffer::new(&evtx);
    let checkpoint = filled.state.join("buffer").join("replay-checkpoint.json");
    std::fs::write(&checkpoint, "{garbage\n").unwrap();

    let (_collector, output) = filled.replay_again(&evtx);
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{message}");
    assert!(
        message.contains(&format!(
            "invalid replay checkpoint {}",
            checkpoint.display()
        )),
        "{message}"
    );
    assert!(message.contains("delete the file"), "{message}");
    // Nothing was appended, so nothing can have been stored twice.
    assert_eq!(stored_count(&filled.data.join("collector.db")), 0);
    assert_eq!(std::fs::read_to_string(&checkpoint).unwrap(), "{garbage\n");
}
