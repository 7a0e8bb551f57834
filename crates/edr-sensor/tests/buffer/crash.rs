//! A writer process killed with SIGKILL at random moments, over many rounds: every record whose
//! append had been reported durable must be present once and in order after each restart.
//!
//! The writer is this test binary run again with `EDR_BUFFER_CRASH_CHILD` set to the buffer
//! directory. It prints `durable N` after each group commit and `acked N` after each
//! acknowledgement. Rounds: 20 by default, `EDR_BUFFER_CRASH_ROUNDS` for more.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edr_sensor::buffer::{Buffer, BufferOptions, Lane, RecordKind};

use super::{drain_all, payload_for};

const CHILD_ENV: &str = "EDR_BUFFER_CRASH_CHILD";

fn crash_options(directory: &Path) -> BufferOptions {
    BufferOptions {
        directory: directory.to_owned(),
        capacity_bytes: 256 << 20,
        segment_bytes: 1 << 20,
        sync_interval: Duration::from_millis(5),
        max_record_bytes: 4096,
        drain_rate_bytes_per_sec: None,
        drain_rate_records_per_sec: None,
    }
}

/// Lane and payload length are functions of the sequence number, so the checker can recompute
/// every record.
fn shape(seq: u64) -> (Lane, usize) {
    let lane = if seq.is_multiple_of(7) {
        Lane::Priority
    } else {
        Lane::Telemetry
    };
    (lane, (seq.wrapping_mul(2_654_435_761) % 2048) as usize)
}

/// The writer: appends forever, reports durability, and acknowledges part of what it drains.
#[test]
fn crash_writer_child() {
    let Some(directory) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut buffer = Buffer::open(crash_options(Path::new(&directory))).unwrap();
    let mut out = std::io::stdout().lock();
    let mut round = 0u64;
    loop {
        round += 1;
        for _ in 0..200 {
            let seq = buffer.metrics().next_seq;
            let (lane, len) = shape(seq);
            assert_eq!(buffer.append(lane, &payload_for(seq, len)).unwrap(), seq);
        }
        let durable = buffer.sync().unwrap();
        writeln!(out, "durable {durable}").unwrap();
        out.flush().unwrap();

        // Act as the Collector now and then: drain, and acknowledge half of it.
        if round.is_multiple_of(3) {
            let drained = buffer.drain(2000).unwrap();
            if let Some(record) = drained.get(drained.len() / 2) {
                buffer.ack(record.seq).unwrap();
                writeln!(out, "acked {}", record.seq).unwrap();
                out.flush().unwrap();
            }
            buffer.rewind();
        }
    }
}

#[test]
fn killed_writer_loses_no_durable_record() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let rounds: u64 = std::env::var("EDR_BUFFER_CRASH_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash test seed {seed}, {rounds} rounds");
    let mut random = seed;

    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_owned();
    // Numbers handed out by a killed writer whose records were still in its memory: they were
    // never durable, and the restarted writer never hands them out again.
    let mut holes = std::collections::BTreeSet::new();
    let exe = std::env::current_exe().unwrap();
    let mut reported_durable = 0u64;
    let mut reported_acked = 0u64;

    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "crash::crash_writer_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut durable = 0u64;
            let mut acked = 0u64;
            let mut line = Vec::new();
            // Only complete lines count: a line cut by the kill is ignored.
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                if line.ends_with(b"\n") {
                    let text = String::from_utf8_lossy(&line);
                    let mut words = text.split_whitespace();
                    match (
                        words.next(),
                        words.next().and_then(|n| n.parse::<u64>().ok()),
                    ) {
                        (Some("durable"), Some(n)) => durable = durable.max(n),
                        (Some("acked"), Some(n)) => acked = acked.max(n),
                        _ => {}
                    }
                }
                line.clear();
            }
            (durable, acked)
        });

        // xorshift: a kill between 30 and 330 ms after the start, the open included.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        std::thread::sleep(Duration::from_millis(30 + random % 300));
        child.kill().unwrap();
        child.wait().unwrap();
        let (durable, acked) = reader.join().unwrap();
        reported_durable = reported_durable.max(durable);
        reported_acked = reported_acked.max(acked);

        // Restart and check: everything above the acknowledged number and up to the durable one
        // is present, once, in order, with its exact bytes.
        let mut buffer = Buffer::open(crash_options(&dir_path)).unwrap();
        let drained = drain_all(&mut buffer);
        let mut previous = 0u64;
        for record in &drained {
            assert!(
                record.seq > previous,
                "round {round}: {} after {previous}",
                record.seq
            );
            assert!(
                record.seq > reported_acked,
                "round {round}: acknowledged {} sent again",
                record.seq
            );
            previous = record.seq;
            let (lane, len) = shape(record.seq);
            assert_eq!(record.lane, lane, "round {round}: lane of {}", record.seq);
            match &record.kind {
                RecordKind::Event(payload) => {
                    assert_eq!(
                        payload,
                        &payload_for(record.seq, len),
                        "round {round}: bytes of {}",
                        record.seq
                    )
                }
                RecordKind::Gap(gap) => panic!("round {round}: unexpected gap {gap:?}"),
            }
        }
        // An acknowledgement may have reached the cursor just before the kill, unreported, so
        // the check starts after the acknowledged number stored on disk.
        let acked = buffer.acked_seq();
        assert!(
            acked >= reported_acked,
            "round {round}: acknowledgement {reported_acked} lost"
        );
        let present: Vec<u64> = drained.iter().map(|record| record.seq).collect();
        for seq in (acked + 1..=reported_durable).filter(|seq| !holes.contains(seq)) {
            assert!(
                present.binary_search(&seq).is_ok(),
                "round {round}: durable record {seq} lost (acked {acked}, present {:?}..{:?} of {}, durable {reported_durable})",
                present.first(),
                present.last(),
                present.len()
            );
        }
        let metrics = buffer.metrics();
        assert_eq!(metrics.damaged_records_skipped, 0, "round {round}");
        for seq in reported_durable + 1..metrics.next_seq {
            if present.binary_search(&seq).is_err() {
                holes.insert(seq);
            }
        }
        println!(
            "round {round}: durable {reported_durable}, acked {reported_acked}, present {}",
            drained.len()
        );
    }
    assert!(
        reported_durable > 0,
        "the writer never reported a durable record"
    );
}
