//! Truncated, zeroed and bit-flipped segment files and cursors.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use edr_sensor::buffer::{Buffer, GapReason, Lane};

use super::{drain_all, events, gaps, payload_for, segment_files, small_options};

const RECORD_LEN: usize = 100;
const FRAME_LEN: u64 = 32 + RECORD_LEN as u64;
const HEADER_LEN: u64 = 32;

/// Writes `count` telemetry records and closes the buffer; returns the directory.
fn filled(count: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for index in 1..=count {
        buffer
            .append(Lane::Telemetry, &payload_for(index, RECORD_LEN))
            .unwrap();
    }
    buffer.close().unwrap();
    dir
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let mut file = OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(bytes).unwrap();
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

fn seqs(records: &[(u64, Lane, Vec<u8>)]) -> Vec<u64> {
    records.iter().map(|(seq, _, _)| *seq).collect()
}

fn check_payloads(records: &[(u64, Lane, Vec<u8>)]) {
    for (seq, _, payload) in records {
        assert_eq!(payload, &payload_for(*seq, RECORD_LEN), "payload of {seq}");
    }
}

#[test]
fn torn_tail_is_truncated_at_last_good_record() {
    let dir = filled(10);
    let segment = segment_files(dir.path(), Lane::Telemetry).pop().unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(len - 50).unwrap();

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    let metrics = buffer.metrics();
    assert_eq!(metrics.torn_bytes_truncated, FRAME_LEN - 50);
    assert_eq!(metrics.damaged_records_skipped, 0);
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), len - FRAME_LEN);
    let drained = events(&drain_all(&mut buffer));
    assert_eq!(seqs(&drained), (1..=9).collect::<Vec<_>>());
    check_payloads(&drained);
    // Record 10 was durable before the damage: its number may have reached the Collector, so it
    // is never handed out again.
    assert_eq!(buffer.append(Lane::Telemetry, b"next").unwrap(), 11);
}

#[test]
fn truncation_inside_header_is_recovered() {
    let dir = filled(3);
    let segment = segment_files(dir.path(), Lane::Telemetry).pop().unwrap();
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(HEADER_LEN + 10).unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    assert!(drain_all(&mut buffer).is_empty());
    let seq = buffer.append(Lane::Telemetry, b"after").unwrap();
    buffer.sync().unwrap();
    assert_eq!(seqs(&events(&drain_all(&mut buffer))), vec![seq]);
}

#[test]
fn segment_truncated_to_zero_is_rewritten() {
    let dir = filled(3);
    let segment = segment_files(dir.path(), Lane::Telemetry).pop().unwrap();
    std::fs::write(&segment, b"").unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    assert!(drain_all(&mut buffer).is_empty());
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), HEADER_LEN);
    assert_eq!(buffer.append(Lane::Telemetry, b"after").unwrap(), 4);
}

#[test]
fn bit_flip_in_middle_record_is_skipped_and_counted() {
    let dir = filled(10);
    let segment = segment_files(dir.path(), Lane::Telemetry).pop().unwrap();
    // Record 5 starts after the header and four frames; flip a payload bit.
    flip_bit(&segment, HEADER_LEN + 4 * FRAME_LEN + 40, 3);

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    assert_eq!(buffer.metrics().damaged_records_skipped, 1);
    let drained = drain_all(&mut buffer);
    let kept = events(&drained);
    assert_eq!(seqs(&kept), vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
    check_payloads(&kept);
    let gap_list = gaps(&drained);
    assert_eq!(gap_list.len(), 1);
    assert_eq!(gap_list[0].reason, GapReason::Damaged);
    assert_eq!((gap_list[0].first_seq, gap_list[0].last_seq), (5, 5));
    assert_eq!(gap_list[0].bytes, FRAME_LEN);
}

#[test]
fn bit_flip_in_every_header_byte_is_detected() {
    for byte in 0..32u64 {
        let dir = filled(3);
        let segment = segment_files(dir.path(), Lane::Telemetry).pop().unwrap();
        flip_bit(&segment, HEADER_LEN + FRAME_LEN + byte, (byte % 8) as u8);
        let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
        let kept = events(&drain_all(&mut buffer));
        assert_eq!(seqs(&kept), vec![1, 3], "flip in header byte {byte}");
        check_payloads(&kept);
        assert_eq!(
            buffer.metrics().damaged_records_skipped,
            1,
            "header byte {byte}"
        );
    }
}

#[test]
fn zeroed_range_in_middle_is_skipped() {
    let dir = filled(10);
    let segment = segment_files(dir.path(), Lane::Telemetry).pop().unwrap();
    // Zero records 3 to 5 and half of record 6.
    let start = HEADER_LEN + 2 * FRAME_LEN;
    overwrite(
        &segment,
        start,
        &vec![0u8; (3 * FRAME_LEN + FRAME_LEN / 2) as usize],
    );

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    let drained = drain_all(&mut buffer);
    let kept = events(&drained);
    assert_eq!(seqs(&kept), vec![1, 2, 7, 8, 9, 10]);
    check_payloads(&kept);
    assert_eq!(buffer.metrics().damaged_records_skipped, 1);
    let gap_list = gaps(&drained);
    assert_eq!((gap_list[0].first_seq, gap_list[0].last_seq), (3, 6));
}

#[test]
fn zeroed_tail_of_newest_segment_is_truncated() {
    let dir = filled(10);
    let segment = segment_files(dir.path(), Lane::Telemetry).pop().unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    overwrite(&segment, len, &[0u8; 4096]);
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    assert_eq!(buffer.metrics().torn_bytes_truncated, 4096);
    assert_eq!(
        seqs(&events(&drain_all(&mut buffer))),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), len);
}

#[test]
fn damaged_end_of_closed_segment_is_skipped() {
    let dir = filled(200);
    let files = segment_files(dir.path(), Lane::Telemetry);
    assert!(files.len() > 2);
    let first = &files[0];
    let len = std::fs::metadata(first).unwrap().len();
    let records_in_first = (len - HEADER_LEN) / FRAME_LEN;
    overwrite(first, len - 10, &[0xFF; 10]);

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    let kept = events(&drain_all(&mut buffer));
    let expected: Vec<u64> = (1..=200).filter(|seq| *seq != records_in_first).collect();
    assert_eq!(seqs(&kept), expected);
    check_payloads(&kept);
    assert_eq!(buffer.metrics().damaged_records_skipped, 1);
}

#[test]
fn damaged_segment_header_keeps_records() {
    let dir = filled(5);
    let segment = segment_files(dir.path(), Lane::Telemetry).pop().unwrap();
    overwrite(&segment, 0, &[0u8; HEADER_LEN as usize]);
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    assert_eq!(
        seqs(&events(&drain_all(&mut buffer))),
        (1..=5).collect::<Vec<_>>()
    );
}

#[test]
fn missing_cursor_resends_nothing_already_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for index in 1..=300 {
        buffer
            .append(Lane::Telemetry, &payload_for(index, RECORD_LEN))
            .unwrap();
    }
    buffer.sync().unwrap();
    drain_all(&mut buffer);
    buffer.ack(250).unwrap();
    buffer.close().unwrap();
    let oldest_kept = first_seq_on_disk(dir.path());
    assert!(
        oldest_kept <= 251 && oldest_kept > 200,
        "oldest {oldest_kept}"
    );
    std::fs::remove_file(dir.path().join("cursor")).unwrap();
    std::fs::remove_file(dir.path().join("cursor.ack")).unwrap();

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    let kept = events(&drain_all(&mut buffer));
    // Records of the partly acknowledged segment come once more; deleted ones never.
    assert_eq!(seqs(&kept), (oldest_kept..=300).collect::<Vec<_>>());
    buffer.ack(300).unwrap();
    drop(buffer);
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    assert!(
        drain_all(&mut buffer).is_empty(),
        "records sent a third time"
    );
}

#[test]
fn damaged_cursor_is_rebuilt() {
    for damage in ["flip", "zero", "truncate"] {
        let dir = filled(20);
        let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
        drain_all(&mut buffer);
        buffer.ack(5).unwrap();
        drop(buffer);
        // Both the fsynced cursor and the one of the latest acknowledgement.
        for name in ["cursor", "cursor.ack"] {
            let cursor = dir.path().join(name);
            match damage {
                "flip" => flip_bit(&cursor, 18, 1),
                "zero" => std::fs::write(&cursor, [0u8; 40]).unwrap(),
                _ => std::fs::write(&cursor, &std::fs::read(&cursor).unwrap()[..20]).unwrap(),
            }
        }
        let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
        // The single segment still holds records 1 to 5, which are sent once more.
        let kept = events(&drain_all(&mut buffer));
        assert_eq!(seqs(&kept), (1..=20).collect::<Vec<_>>(), "damage {damage}");
        assert_eq!(
            buffer.append(Lane::Telemetry, b"x").unwrap(),
            21,
            "damage {damage}"
        );
    }
}

fn first_seq_on_disk(directory: &Path) -> u64 {
    let files = segment_files(directory, Lane::Telemetry);
    let bytes = std::fs::read(&files[0]).unwrap();
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[HEADER_LEN as usize + 16..HEADER_LEN as usize + 24]);
    u64::from_le_bytes(seq)
}

/// Returns the key of a segment file, the number in its name.
fn segment_key(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn deleted_middle_segment_is_reported_as_gap() {
    let dir = filled(200);
    let files = segment_files(dir.path(), Lane::Telemetry);
    assert!(files.len() > 2);
    let (deleted_from, deleted_to) = (segment_key(&files[1]), segment_key(&files[2]) - 1);
    std::fs::remove_file(&files[1]).unwrap();

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    assert_eq!(
        buffer.metrics().missing_records,
        deleted_to - deleted_from + 1
    );
    let drained = drain_all(&mut buffer);
    let kept = events(&drained);
    let expected: Vec<u64> = (1..=200)
        .filter(|seq| !(deleted_from..=deleted_to).contains(seq))
        .collect();
    assert_eq!(seqs(&kept), expected);
    check_payloads(&kept);
    let gap_list = gaps(&drained);
    assert_eq!(gap_list.len(), 1);
    assert_eq!(gap_list[0].reason, GapReason::SegmentMissing);
    assert_eq!(
        (gap_list[0].first_seq, gap_list[0].last_seq),
        (deleted_from, deleted_to)
    );
    assert_eq!(gap_list[0].records, deleted_to - deleted_from + 1);
    assert_eq!(buffer.open_gaps().copied().collect::<Vec<_>>(), gap_list);

    // The gap record on disk reports the range, so a second open adds no other.
    drop(buffer);
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    assert_eq!(buffer.metrics().missing_records, 0);
    assert_eq!(gaps(&drain_all(&mut buffer)), gap_list);
}

#[test]
fn deleted_oldest_segment_is_reported_as_gap() {
    let dir = filled(200);
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    drain_all(&mut buffer);
    buffer.ack(3).unwrap();
    drop(buffer);
    let files = segment_files(dir.path(), Lane::Telemetry);
    let second_key = segment_key(&files[1]);
    std::fs::remove_file(&files[0]).unwrap();

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    let drained = drain_all(&mut buffer);
    assert_eq!(
        seqs(&events(&drained)),
        (second_key..=200).collect::<Vec<_>>()
    );
    let gap_list = gaps(&drained);
    assert_eq!(gap_list.len(), 1);
    assert_eq!(gap_list[0].reason, GapReason::SegmentMissing);
    // Records 1 to 3 were acknowledged and are no loss.
    assert_eq!(
        (
            gap_list[0].first_seq,
            gap_list[0].last_seq,
            gap_list[0].records
        ),
        (4, second_key - 1, second_key - 4)
    );
}

#[test]
fn deleted_segment_between_priority_records() {
    // A priority record after every fourth telemetry record, so the lost range contains
    // numbers of both lanes. Only the telemetry ones count as lost.
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    let mut priority = Vec::new();
    for index in 1..=250u64 {
        let lane = if index % 5 == 0 {
            Lane::Priority
        } else {
            Lane::Telemetry
        };
        let seq = buffer
            .append(lane, &payload_for(index, RECORD_LEN))
            .unwrap();
        if lane == Lane::Priority {
            priority.push(seq);
        }
    }
    buffer.close().unwrap();
    let files = segment_files(dir.path(), Lane::Telemetry);
    assert!(files.len() > 2);
    let (deleted_from, deleted_to) = (segment_key(&files[1]), segment_key(&files[2]) - 1);
    std::fs::remove_file(&files[1]).unwrap();

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    let gap_list = gaps(&drain_all(&mut buffer));
    assert_eq!(gap_list.len(), 1);
    let gap = gap_list[0];
    assert_eq!(gap.reason, GapReason::SegmentMissing);
    let lost_telemetry: Vec<u64> = (deleted_from..=deleted_to)
        .filter(|seq| !priority.contains(seq))
        .collect();
    assert_eq!(gap.first_seq, lost_telemetry[0]);
    assert_eq!(gap.last_seq, *lost_telemetry.last().unwrap());
    assert_eq!(gap.records, lost_telemetry.len() as u64);
}

#[test]
fn interleaved_lanes_reopen_without_gaps() {
    // Rotations of both lanes, acknowledgements and restarts leave numbers of one lane between
    // the segments of the other, which must not read as missing segments.
    let dir = tempfile::tempdir().unwrap();
    let mut next = 1u64;
    for round in 0..4u64 {
        let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
        for _ in 0..120 {
            let lane = if next % 7 < 3 {
                Lane::Priority
            } else {
                Lane::Telemetry
            };
            buffer.append(lane, &payload_for(next, RECORD_LEN)).unwrap();
            next += 1;
        }
        buffer.sync().unwrap();
        let drained = drain_all(&mut buffer);
        assert!(
            gaps(&drained).is_empty(),
            "round {round}: {:?}",
            gaps(&drained)
        );
        assert_eq!(buffer.metrics().missing_records, 0, "round {round}");
        if let Some(last) = drained.get(drained.len() / 2) {
            buffer.ack(last.seq).unwrap();
        }
        buffer.close().unwrap();
    }
}

#[test]
fn evicted_segments_reopen_without_missing_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    for index in 1..=1500 {
        buffer
            .append(Lane::Telemetry, &payload_for(index, RECORD_LEN))
            .unwrap();
    }
    assert!(buffer.metrics().evicted_records > 0);
    buffer.close().unwrap();

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    assert_eq!(buffer.metrics().missing_records, 0);
    let gap_list = gaps(&drain_all(&mut buffer));
    assert!(!gap_list.is_empty());
    assert!(
        gap_list
            .iter()
            .all(|gap| gap.reason == GapReason::TelemetryEvicted),
        "{gap_list:?}"
    );
}

#[test]
fn drained_gaps_are_counted_once() {
    let dir = filled(200);
    let files = segment_files(dir.path(), Lane::Telemetry);
    let deleted = segment_key(&files[2]) - segment_key(&files[1]);
    std::fs::remove_file(&files[1]).unwrap();
    // A damaged record in the first segment: its gap has no record count, only a range.
    flip_bit(&files[0], HEADER_LEN + 4 * FRAME_LEN + 40, 3);

    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    assert_eq!(buffer.metrics().reported_gaps, 0);
    assert_eq!(gaps(&drain_all(&mut buffer)).len(), 2);
    let metrics = buffer.metrics();
    assert_eq!(metrics.reported_gaps, 2);
    assert_eq!(metrics.reported_lost_records, deleted + 1);

    // Handing the gap records out again after a rewind counts nothing new.
    buffer.rewind();
    assert_eq!(gaps(&drain_all(&mut buffer)).len(), 2);
    let metrics = buffer.metrics();
    assert_eq!(metrics.reported_gaps, 2);
    assert_eq!(metrics.reported_lost_records, deleted + 1);
}

#[test]
fn damage_after_open_is_reported_as_gap() {
    let dir = filled(200);
    let files = segment_files(dir.path(), Lane::Telemetry);
    let (second_key, third_key) = (segment_key(&files[1]), segment_key(&files[2]));
    let mut buffer = Buffer::open(small_options(dir.path())).unwrap();
    // The fifth record of the second segment goes bad while the buffer is open.
    flip_bit(&files[1], HEADER_LEN + 4 * FRAME_LEN + 40, 3);

    let drained = drain_all(&mut buffer);
    let expected: Vec<u64> = (1..=200)
        .filter(|seq| !(second_key + 4..third_key).contains(seq))
        .collect();
    assert_eq!(seqs(&events(&drained)), expected);
    let gap_list = gaps(&drained);
    assert_eq!(gap_list.len(), 1);
    assert_eq!(gap_list[0].reason, GapReason::Damaged);
    assert_eq!(
        (
            gap_list[0].first_seq,
            gap_list[0].last_seq,
            gap_list[0].records
        ),
        (second_key + 4, third_key - 1, 0)
    );
    let metrics = buffer.metrics();
    assert_eq!(metrics.damaged_records_skipped, 1);
    assert_eq!(metrics.reported_gaps, 1);
    assert_eq!(metrics.reported_lost_records, third_key - second_key - 4);

    // A rewind passes the damage again without a second gap record.
    buffer.rewind();
    assert_eq!(gaps(&drain_all(&mut buffer)), gap_list);
    assert_eq!(buffer.metrics().damaged_records_skipped, 1);
}
