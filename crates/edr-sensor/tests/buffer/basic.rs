//! Appending, draining, acknowledging, eviction and the rate cap.

use std::time::Duration;

use edr_sensor::buffer::{Buffer, BufferError, BufferOptions, GapReason, Lane, RecordKind};

use super::{drain_all, events, gaps, payload_for, segment_files, small_options};

#[test]
fn appended_records_drain_in_order_after_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    let mut expected = Vec::new();
    for index in 0..50u64 {
        let lane = if index % 5 == 0 {
            Lane::Priority
        } else {
            Lane::Telemetry
        };
        let seq = buffer.append(lane, &payload_for(index, 100)).unwrap();
        expected.push((seq, lane, payload_for(index, 100)));
    }
    assert!(
        buffer.drain(100).unwrap().is_empty(),
        "unsynced records were drained"
    );
    assert_eq!(buffer.sync().unwrap(), 50);
    let drained = drain_all(&mut buffer);
    assert_eq!(events(&drained), expected);
}

/// Drained payloads are slices of the bytes read from the segment, not copies: neighbours in a
/// segment lie one frame header apart in memory, and the bytes stay valid after later drains.
#[test]
fn drained_payloads_share_the_read_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for index in 0..3u64 {
        buffer
            .append(Lane::Telemetry, &payload_for(index, 100))
            .unwrap();
    }
    buffer.sync().unwrap();
    let drained = buffer.drain(3).unwrap();
    let payloads: Vec<_> = drained
        .iter()
        .map(|record| match &record.kind {
            RecordKind::Event(payload) => payload.clone(),
            RecordKind::Gap(gap) => panic!("unexpected gap {gap:?}"),
        })
        .collect();
    assert_eq!(payloads.len(), 3);
    for pair in payloads.windows(2) {
        let gap = pair[1].as_ptr() as usize - pair[0].as_ptr() as usize;
        assert_eq!(gap, pair[0].len() + FRAME_HEADER_BYTES);
    }

    buffer
        .append(Lane::Telemetry, &payload_for(3, 100))
        .unwrap();
    buffer.sync().unwrap();
    drain_all(&mut buffer);
    for (index, payload) in payloads.iter().enumerate() {
        assert_eq!(payload.as_ref(), payload_for(index as u64, 100).as_slice());
    }
}

/// Bytes of the header before each record's payload in a segment.
const FRAME_HEADER_BYTES: usize = 32;

#[test]
fn sequence_numbers_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for _ in 0..10 {
        buffer.append(Lane::Telemetry, b"x").unwrap();
    }
    buffer.sync().unwrap();
    drain_all(&mut buffer);
    buffer.ack(10).unwrap();
    buffer.close().unwrap();

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    assert_eq!(buffer.append(Lane::Telemetry, b"y").unwrap(), 11);
    buffer.sync().unwrap();
    let drained = drain_all(&mut buffer);
    assert_eq!(events(&drained), vec![(11, Lane::Telemetry, b"y".to_vec())]);
}

#[test]
fn sequence_numbers_not_reused_after_cursor_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for _ in 0..400 {
        buffer.append(Lane::Telemetry, &[7u8; 100]).unwrap();
    }
    buffer.sync().unwrap();
    drain_all(&mut buffer);
    buffer.ack(400).unwrap();
    buffer.close().unwrap();
    std::fs::remove_file(dir.path().join("cursor")).unwrap();

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    assert!(buffer.append(Lane::Telemetry, b"z").unwrap() > 400);
}

#[test]
fn unacked_records_are_sent_again_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for index in 0..20u64 {
        buffer
            .append(Lane::Telemetry, &payload_for(index, 10))
            .unwrap();
    }
    buffer.sync().unwrap();
    assert_eq!(drain_all(&mut buffer).len(), 20);
    buffer.ack(12).unwrap();
    drop(buffer);

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    let seqs: Vec<u64> = drain_all(&mut buffer)
        .iter()
        .map(|record| record.seq)
        .collect();
    assert_eq!(seqs, (13..=20).collect::<Vec<_>>());
}

#[test]
fn rewind_hands_out_unacked_records_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for _ in 0..200 {
        buffer.append(Lane::Telemetry, &[1u8; 200]).unwrap();
    }
    buffer.sync().unwrap();
    assert_eq!(drain_all(&mut buffer).len(), 200);
    buffer.ack(150).unwrap();
    buffer.rewind();
    let seqs: Vec<u64> = drain_all(&mut buffer)
        .iter()
        .map(|record| record.seq)
        .collect();
    assert_eq!(seqs, (151..=200).collect::<Vec<_>>());
    buffer.ack(200).unwrap();
    assert_eq!(buffer.metrics().buffered_records, 0);
}

#[test]
fn ack_deletes_closed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for _ in 0..300 {
        buffer.append(Lane::Telemetry, &[3u8; 100]).unwrap();
    }
    buffer.sync().unwrap();
    assert!(segment_files(dir.path(), Lane::Telemetry).len() > 3);
    let closed = segment_files(dir.path(), Lane::Telemetry).len();
    drain_all(&mut buffer);
    buffer.ack(300).unwrap();
    let metrics = buffer.metrics();
    assert_eq!(metrics.buffered_records, 0);
    assert_eq!(metrics.buffered_bytes, 0);
    assert_eq!(metrics.oldest_record_age, None);

    // The segments stay until a cursor that covers them is fsynced, one sync interval later.
    buffer.tick().unwrap();
    assert_eq!(segment_files(dir.path(), Lane::Telemetry).len(), closed);
    // A margin over the interval, because the deadline is read on a coarse clock.
    std::thread::sleep(small_options(dir.path()).sync_interval + Duration::from_millis(50));
    buffer.tick().unwrap();
    assert_eq!(segment_files(dir.path(), Lane::Telemetry).len(), 1);
}

#[test]
fn ack_survives_process_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for _ in 0..300 {
        buffer.append(Lane::Telemetry, &[3u8; 100]).unwrap();
    }
    buffer.sync().unwrap();
    drain_all(&mut buffer);
    buffer.ack(250).unwrap();
    // No drop, no close: the process ends without the final cursor fsync.
    std::mem::forget(buffer);

    let mut reopened = Buffer::open(small_options(dir.path())).unwrap();
    assert_eq!(reopened.acked_seq(), 250);
    let seqs: Vec<u64> = drain_all(&mut reopened)
        .iter()
        .map(|record| record.seq)
        .collect();
    assert_eq!(seqs, (251..=300).collect::<Vec<_>>());
    assert_eq!(reopened.metrics().missing_records, 0);
    // The cursor read at open is fsynced there, so the acknowledged segments go at once.
    let first_key = segment_files(dir.path(), Lane::Telemetry)
        .iter()
        .filter_map(|path| path.file_stem()?.to_str()?.parse::<u64>().ok())
        .min()
        .unwrap();
    assert!(
        first_key > 1,
        "acknowledged segments kept: first key {first_key}"
    );
}

#[test]
fn power_failure_after_ack_reports_no_gap() {
    // What a power failure can leave of `cursor.ack`, which is never fsynced: an empty file
    // (its data not yet written), zeros, or no file at all.
    for damage in ["empty", "zeros", "deleted"] {
        let dir = tempfile::tempdir().unwrap();
        let options = small_options(dir.path());
        let mut buffer = Buffer::open(options.clone()).unwrap();
        for _ in 0..300 {
            buffer.append(Lane::Telemetry, &[4u8; 100]).unwrap();
        }
        buffer.sync().unwrap();
        drain_all(&mut buffer);
        buffer.ack(100).unwrap();
        std::thread::sleep(options.sync_interval + Duration::from_millis(50));
        // Fsyncs a cursor of 100 and deletes the segments below it.
        buffer.tick().unwrap();
        buffer.ack(300).unwrap();
        std::mem::forget(buffer);
        let ack_cursor = dir.path().join("cursor.ack");
        match damage {
            "empty" => std::fs::write(&ack_cursor, []).unwrap(),
            "zeros" => std::fs::write(&ack_cursor, [0u8; 40]).unwrap(),
            _ => std::fs::remove_file(&ack_cursor).unwrap(),
        }

        let mut reopened = Buffer::open(options).unwrap();
        assert_eq!(reopened.acked_seq(), 100, "{damage}");
        assert_eq!(reopened.metrics().missing_records, 0, "{damage}");
        let records = drain_all(&mut reopened);
        assert!(gaps(&records).is_empty(), "{damage}: {:?}", gaps(&records));
        let seqs: Vec<u64> = records.iter().map(|record| record.seq).collect();
        assert_eq!(seqs, (101..=300).collect::<Vec<_>>(), "{damage}");
    }
}

#[test]
fn lost_cursors_report_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options(dir.path());
    let mut buffer = Buffer::open(options.clone()).unwrap();
    // An old record in the priority lane stays in its active segment after it is acknowledged.
    buffer.append(Lane::Priority, b"result").unwrap();
    for _ in 0..300 {
        buffer.append(Lane::Telemetry, &[4u8; 100]).unwrap();
    }
    buffer.sync().unwrap();
    drain_all(&mut buffer);
    buffer.ack(250).unwrap();
    buffer.close().unwrap();
    std::fs::remove_file(dir.path().join("cursor")).unwrap();
    std::fs::remove_file(dir.path().join("cursor.ack")).unwrap();

    let mut reopened = Buffer::open(options).unwrap();
    // The acknowledged telemetry segments are gone, and nothing records whether they were
    // acknowledged, so they are not reported as missing.
    assert_eq!(reopened.metrics().missing_records, 0);
    let records = drain_all(&mut reopened);
    assert!(gaps(&records).is_empty(), "{:?}", gaps(&records));
    assert_eq!(records.first().map(|record| record.seq), Some(1));
}

#[test]
fn acked_segments_deleted_before_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options(dir.path());
    let mut buffer = Buffer::open(options.clone()).unwrap();
    // Fill close to the capacity, acknowledge everything, then append as much again.
    let records = options.capacity_bytes / 200;
    for _ in 0..records {
        buffer.append(Lane::Telemetry, &[5u8; 150]).unwrap();
    }
    let last = buffer.sync().unwrap();
    drain_all(&mut buffer);
    buffer.ack(last).unwrap();
    for _ in 0..records {
        buffer.append(Lane::Telemetry, &[6u8; 150]).unwrap();
    }
    let metrics = buffer.metrics();
    assert_eq!(metrics.evicted_records, 0);
    assert_eq!(metrics.gap_records, 0);
    assert_eq!(metrics.buffered_records, records);
}

#[test]
fn ack_beyond_durable_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    buffer.append(Lane::Telemetry, b"a").unwrap();
    let error = buffer.ack(1).unwrap_err();
    assert!(matches!(
        error,
        BufferError::AckBeyondDurable {
            acked: 1,
            durable: 0
        }
    ));
    assert!(
        error
            .to_string()
            .contains("beyond the highest durable sequence number 0")
    );
}

#[test]
fn ack_ahead_of_drain_skips_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for _ in 0..30 {
        buffer.append(Lane::Telemetry, b"abc").unwrap();
    }
    buffer.sync().unwrap();
    buffer.ack(20).unwrap();
    assert_eq!(buffer.metrics().buffered_records, 10);
    let seqs: Vec<u64> = drain_all(&mut buffer)
        .iter()
        .map(|record| record.seq)
        .collect();
    assert_eq!(seqs, (21..=30).collect::<Vec<_>>());
}

#[test]
fn oversized_record_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    let error = buffer.append(Lane::Telemetry, &[0u8; 2000]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "record of 2000 bytes exceeds the limit of 1024 bytes: \
         split the event or raise buffer.max_record_bytes"
    );
    assert_eq!(buffer.append(Lane::Telemetry, b"ok").unwrap(), 1);
}

#[test]
fn full_buffer_evicts_telemetry_and_reports_gap() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options(dir.path());
    let mut buffer = Buffer::open(options.clone()).unwrap();
    let mut priority = Vec::new();
    for index in 0..1000u64 {
        let lane = if index % 50 == 0 {
            Lane::Priority
        } else {
            Lane::Telemetry
        };
        let seq = buffer.append(lane, &payload_for(index, 200)).unwrap();
        if lane == Lane::Priority {
            priority.push(seq);
        }
        assert!(buffer.metrics().disk_bytes <= options.capacity_bytes);
    }
    buffer.sync().unwrap();

    let metrics = buffer.metrics();
    assert!(metrics.evicted_records > 0);
    assert!(metrics.gap_records > 0);
    let drained = drain_all(&mut buffer);
    let delivered: Vec<u64> = drained.iter().map(|record| record.seq).collect();
    assert!(delivered.windows(2).all(|pair| pair[0] < pair[1]));

    // Every priority record survives, and every missing telemetry record is covered by a gap.
    let kept = events(&drained);
    for seq in &priority {
        assert!(
            kept.iter().any(|(kept_seq, _, _)| kept_seq == seq),
            "priority {seq} lost"
        );
    }
    let gap_list = gaps(&drained);
    assert!(
        gap_list
            .iter()
            .all(|gap| gap.reason == GapReason::TelemetryEvicted)
    );
    let evicted_in_gaps: u64 = gap_list.iter().map(|gap| gap.records).sum();
    assert_eq!(evicted_in_gaps, metrics.evicted_records);
    let gap_total = gap_list.len() as u64;
    for seq in 1..=1000 + gap_total {
        let present = delivered.contains(&seq);
        let covered = gap_list
            .iter()
            .any(|gap| gap.first_seq <= seq && seq <= gap.last_seq);
        assert!(
            present || covered,
            "record {seq} vanished without a gap record"
        );
    }
    let lost = 1000 - kept.len() as u64;
    assert_eq!(lost, metrics.evicted_records);
}

#[test]
fn priority_evicted_only_without_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for index in 0..20u64 {
        buffer
            .append(Lane::Telemetry, &payload_for(index, 100))
            .unwrap();
    }
    let mut first_eviction = None;
    for index in 0..600u64 {
        buffer
            .append(Lane::Priority, &payload_for(index, 200))
            .unwrap();
        let evicted = buffer.metrics().evicted_records;
        if evicted > 0 && first_eviction.is_none() {
            first_eviction = Some(evicted);
        }
    }
    // The first eviction takes the one telemetry segment with all 20 records.
    assert_eq!(first_eviction, Some(20));
    buffer.sync().unwrap();
    let drained = drain_all(&mut buffer);
    assert!(
        gaps(&drained)
            .iter()
            .any(|gap| gap.reason == GapReason::PriorityEvicted),
        "priority lane never overflowed"
    );
    assert!(
        !events(&drained)
            .iter()
            .any(|(_, lane, _)| *lane == Lane::Telemetry),
        "telemetry outlived evicted priority records"
    );
}

#[test]
fn drain_rate_cap_limits_bytes_per_second() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = small_options(dir.path());
    options.drain_rate_bytes_per_sec = Some(2000);
    let mut buffer = Buffer::open(options).unwrap();
    for _ in 0..20 {
        buffer.append(Lane::Telemetry, &[0u8; 500]).unwrap();
    }
    buffer.sync().unwrap();
    // Draining for 100 ms at 2000 bytes/s allows the one-second burst (2000 bytes), the refill
    // (200 bytes) and one record of overdraft: 5 records of 500 bytes, never 6.
    let start = std::time::Instant::now();
    let mut drained = 0;
    while start.elapsed() < Duration::from_millis(100) {
        drained += buffer.drain(100).unwrap().len();
    }
    assert!((4..=5).contains(&drained), "drained {drained}");
    let wait = buffer.drain_wait();
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(1000),
        "{wait:?}"
    );
}

#[test]
fn metrics_count_buffered_records_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for _ in 0..10 {
        buffer.append(Lane::Telemetry, &[0u8; 68]).unwrap();
    }
    buffer.sync().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let metrics = buffer.metrics();
    assert_eq!(metrics.buffered_records, 10);
    assert_eq!(metrics.buffered_bytes, 10 * 100);
    assert!(metrics.oldest_record_age.unwrap() >= Duration::from_millis(20));
    assert_eq!(metrics.durable_seq, 10);
    assert_eq!(metrics.next_seq, 11);
    drain_all(&mut buffer);
    buffer.ack(4).unwrap();
    assert_eq!(buffer.metrics().buffered_records, 6);
}

#[test]
fn tick_syncs_after_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = small_options(dir.path());
    options.sync_interval = Duration::from_millis(30);
    let mut buffer = Buffer::open(options).unwrap();
    let seq = buffer.append(Lane::Telemetry, b"a").unwrap();
    assert_eq!(buffer.tick().unwrap(), 0);
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(buffer.tick().unwrap(), seq);
}

#[test]
fn zero_interval_makes_every_append_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = small_options(dir.path());
    options.sync_interval = Duration::ZERO;
    let mut buffer = Buffer::open(options).unwrap();
    let seq = buffer.append(Lane::Priority, b"alert").unwrap();
    assert_eq!(buffer.durable_seq(), seq);
}

#[test]
fn inconsistent_options_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = small_options(dir.path());
    options.capacity_bytes = options.segment_bytes * 2;
    let error = Buffer::open(options).unwrap_err();
    assert!(error.to_string().contains("below four segments"), "{error}");
}

#[test]
fn burst_commits_every_32_mib() {
    let dir = tempfile::tempdir().unwrap();
    let options = BufferOptions {
        capacity_bytes: 256 << 20,
        segment_bytes: 16 << 20,
        sync_interval: Duration::from_secs(1),
        ..small_options(dir.path())
    };
    let mut buffer = Buffer::open(options).unwrap();
    let payload = [9u8; 992];
    // 1,024 bytes per frame with its header, so the 32,768th append reaches 32 MiB.
    let started = std::time::Instant::now();
    for _ in 1..32_768 {
        buffer.append(Lane::Telemetry, &payload).unwrap();
    }
    let before = buffer.durable_seq();
    let seq = buffer.append(Lane::Telemetry, &payload).unwrap();
    if started.elapsed() < Duration::from_secs(1) {
        assert_eq!(before, 0, "a group commit before 32 MiB");
    }
    assert_eq!(buffer.durable_seq(), seq);
}

#[test]
fn evicted_gap_records_are_carried_forward() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options(dir.path());
    let mut buffer = Buffer::open(options.clone()).unwrap();
    // With no telemetry to evict, priority segments go, and with them the gap records of
    // earlier evictions.
    for _ in 0..257 {
        buffer.append(Lane::Priority, &[9u8; 879]).unwrap();
    }
    let evicted = buffer.metrics().evicted_records;
    assert!(evicted > 100, "evicted {evicted}");
    buffer.close().unwrap();

    let mut reopened = Buffer::open(options).unwrap();
    assert_eq!(reopened.metrics().missing_records, 0);
    let records = drain_all(&mut reopened);
    let gaps = gaps(&records);
    assert!(
        gaps.iter()
            .all(|gap| gap.reason == GapReason::PriorityEvicted),
        "{gaps:?}"
    );
    // The gap records left report every evicted record, from the first number on.
    assert_eq!(gaps.iter().map(|gap| gap.first_seq).min(), Some(1));
    let reported: u64 = gaps.iter().map(|gap| gap.records).sum();
    let events = records.len() - gaps.len();
    assert_eq!(reported as usize + events, 257, "{gaps:?}");
}

#[test]
fn carried_gap_keeps_range_below_ack() {
    // The gap record of a telemetry eviction reports numbers below its own, so the Collector
    // can acknowledge past that range before the gap record reaches it. When the gap record
    // is then evicted with its priority segment, the range must still reach the Collector.
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    let mut last = 0;
    let gap_seq = loop {
        let seq = buffer.append(Lane::Telemetry, &[1u8; 969]).unwrap();
        if seq > last + 1 {
            break seq - 1;
        }
        last = seq;
    };
    buffer.sync().unwrap();
    let mut delivered = Vec::new();
    while delivered
        .last()
        .is_none_or(|record: &edr_sensor::buffer::Record| record.seq + 1 < gap_seq)
    {
        delivered.extend(buffer.drain(1).unwrap());
    }
    buffer.ack(delivered.last().unwrap().seq).unwrap();
    for _ in 0..80 {
        buffer.append(Lane::Priority, &[2u8; 969]).unwrap();
    }
    buffer.sync().unwrap();

    let rest = drain_all(&mut buffer);
    let gaps = gaps(&rest);
    let seen: std::collections::HashSet<u64> = delivered
        .iter()
        .chain(&rest)
        .map(|record| record.seq)
        .collect();
    for seq in (1..gap_seq).filter(|seq| !seen.contains(seq)) {
        assert!(
            gaps.iter()
                .any(|gap| gap.first_seq <= seq && seq <= gap.last_seq),
            "record {seq} lost without a gap that covers it: {gaps:?}"
        );
    }
}
