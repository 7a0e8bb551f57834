//! Model-based property test: random appends, syncs, drains, acks, rewinds, restarts, crashes
//! and evictions, checked against an in-memory model of what the buffer promises.

use std::collections::BTreeMap;
use std::path::Path;

use edr_sensor::buffer::{Buffer, Gap, GapReason, Lane, RecordKind};
use proptest::prelude::*;

use super::{payload_for, small_options};

#[derive(Debug, Clone)]
enum Op {
    Append {
        priority: bool,
        len: usize,
    },
    Sync,
    Drain(usize),
    /// Acknowledge the delivered record at this fraction of the delivered list.
    Ack(u8),
    Rewind,
    /// Close cleanly and open again.
    Restart,
    /// Drop the buffer without its final sync, like a killed process.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (any::<bool>(), 0usize..1000).prop_map(|(p, len)| Op::Append { priority: p && len % 4 == 0, len }),
        2 => Just(Op::Sync),
        3 => (1usize..200).prop_map(Op::Drain),
        2 => any::<u8>().prop_map(Op::Ack),
        1 => Just(Op::Rewind),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

/// What the model knows about one appended record.
#[derive(Debug, Clone)]
struct Expected {
    lane: Lane,
    len: usize,
    /// Seed of the payload.
    tag: u64,
    /// Reported durable by `durable_seq`; it may then be lost only by eviction.
    durable: bool,
    /// Not durable when the process crashed: it may or may not have survived, and a later sync
    /// does not make it durable.
    orphan: bool,
}

fn mark_durable(records: &mut BTreeMap<u64, Expected>, durable: u64) {
    for (_, expected) in records.range_mut(..=durable) {
        if !expected.orphan {
            expected.durable = true;
        }
    }
}

#[derive(Debug, Default)]
struct Model {
    records: BTreeMap<u64, Expected>,
    acked: u64,
    /// Highest sequence number handed out by drain since the last rewind or open.
    last_delivered: u64,
    delivered: Vec<u64>,
    gaps: Vec<Gap>,
}

impl Model {
    fn covered(&self, seq: u64, reason: GapReason) -> bool {
        self.gaps
            .iter()
            .any(|gap| gap.reason == reason && gap.first_seq <= seq && seq <= gap.last_seq)
    }
}

fn run(ops: Vec<Op>) {
    // Memory-backed files when the system has them: fsync is then cheap and hundreds of runs
    // stay within seconds; the crash and corruption tests cover the real disk.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let options = small_options(dir.path());
    let mut buffer = Some(Buffer::open(options.clone()).unwrap());
    let mut model = Model::default();
    let mut tag = 0u64;

    for op in ops {
        let live = buffer.as_mut().unwrap();
        match op {
            Op::Append { priority, len } => {
                let lane = if priority {
                    Lane::Priority
                } else {
                    Lane::Telemetry
                };
                // An eviction appends its gap record first, so the number is known only after.
                tag += 1;
                let seq = live.append(lane, &payload_for(tag, len)).unwrap();
                assert!(
                    model.records.range(seq..).next().is_none(),
                    "sequence number {seq} reused"
                );
                model.records.insert(
                    seq,
                    Expected {
                        lane,
                        len,
                        tag,
                        durable: false,
                        orphan: false,
                    },
                );
                assert!(live.metrics().disk_bytes <= options.capacity_bytes);
            }
            Op::Sync => {
                let durable = live.sync().unwrap();
                mark_durable(&mut model.records, durable);
            }
            Op::Drain(max) => {
                for record in live.drain(max).unwrap() {
                    assert!(
                        record.seq > model.last_delivered,
                        "out of order: {}",
                        record.seq
                    );
                    assert!(
                        record.seq > model.acked,
                        "acknowledged record {} sent again",
                        record.seq
                    );
                    assert!(
                        record.seq <= live.durable_seq(),
                        "non-durable record {} drained",
                        record.seq
                    );
                    model.last_delivered = record.seq;
                    model.delivered.push(record.seq);
                    match record.kind {
                        RecordKind::Event(payload) => {
                            let expected = model
                                .records
                                .get(&record.seq)
                                .expect("unknown sequence number");
                            assert_eq!(record.lane, expected.lane);
                            assert_eq!(payload, payload_for(expected.tag, expected.len));
                        }
                        RecordKind::Gap(gap) => {
                            assert!(
                                !model.records.contains_key(&record.seq),
                                "gap reused an event number"
                            );
                            model.gaps.push(gap);
                        }
                    }
                }
            }
            Op::Ack(fraction) => {
                if model.delivered.is_empty() {
                    continue;
                }
                let index = usize::from(fraction) * (model.delivered.len() - 1) / 255;
                let seq = model.delivered[index];
                live.ack(seq).unwrap();
                model.acked = model.acked.max(seq);
                model.delivered.retain(|delivered| *delivered > seq);
            }
            Op::Rewind => {
                live.rewind();
                model.last_delivered = model.acked;
                model.delivered.clear();
            }
            Op::Restart | Op::Crash => {
                let old = buffer.take().unwrap();
                if matches!(op, Op::Restart) {
                    let durable = old.close().unwrap();
                    mark_durable(&mut model.records, durable);
                } else {
                    std::mem::forget(old);
                    for expected in model.records.values_mut() {
                        expected.orphan |= !expected.durable;
                    }
                }
                let mut reopened = Buffer::open(options.clone()).unwrap();
                let next_seq = reopened.metrics().next_seq;
                // Records lost with the process may have their numbers handed out again.
                model
                    .records
                    .retain(|seq, expected| expected.durable || *seq < next_seq);
                assert_eq!(reopened.acked_seq(), model.acked);
                model.last_delivered = model.acked;
                model.delivered.clear();
                buffer = Some(reopened);
            }
        }
        check_disk_bytes(buffer.as_mut().unwrap(), dir.path(), options.capacity_bytes);
    }

    // Final check: everything durable and unacknowledged is delivered or covered by a gap of the
    // right reason, in order, once.
    let live = buffer.as_mut().unwrap();
    let durable = live.sync().unwrap();
    mark_durable(&mut model.records, durable);
    live.rewind();
    model.last_delivered = model.acked;
    let mut present = Vec::new();
    loop {
        let batch = live.drain(1000).unwrap();
        if batch.is_empty() {
            break;
        }
        for record in batch {
            assert!(record.seq > model.last_delivered);
            model.last_delivered = record.seq;
            match record.kind {
                RecordKind::Gap(gap) => model.gaps.push(gap),
                RecordKind::Event(payload) => {
                    let expected = &model.records[&record.seq];
                    assert_eq!(payload, payload_for(expected.tag, expected.len));
                    present.push(record.seq);
                }
            }
        }
    }
    for (seq, expected) in model.records.range(model.acked + 1..) {
        if !expected.durable || present.binary_search(seq).is_ok() {
            continue;
        }
        let reason = match expected.lane {
            Lane::Telemetry => GapReason::TelemetryEvicted,
            Lane::Priority => GapReason::PriorityEvicted,
        };
        assert!(
            model.covered(*seq, reason),
            "durable record {seq} ({:?}) lost without a gap; gaps {:?}",
            expected.lane,
            model.gaps
        );
    }
    let metrics = live.metrics();
    assert_eq!(metrics.damaged_records_skipped, 0);
}

/// Checks the capacity accounting after an operation. `metrics` compares, in debug builds, the
/// running total behind `disk_bytes` with the sum over every segment. With nothing pending (every
/// record durable), `disk_bytes` must also equal the length of the segment files on disk.
fn check_disk_bytes(buffer: &mut Buffer, dir: &Path, capacity_bytes: u64) {
    let metrics = buffer.metrics();
    assert!(
        metrics.disk_bytes <= capacity_bytes,
        "disk bytes {} above the capacity {capacity_bytes}",
        metrics.disk_bytes
    );
    if metrics.durable_seq + 1 == metrics.next_seq {
        assert_eq!(
            metrics.disk_bytes,
            segment_files_len(dir),
            "disk bytes differ from the segment files with nothing pending"
        );
    }
}

/// Returns the summed length of the segment files of both lanes.
fn segment_files_len(dir: &Path) -> u64 {
    let mut total = 0;
    for lane in Lane::ALL {
        for entry in std::fs::read_dir(dir.join(lane.name())).unwrap() {
            let entry = entry.unwrap();
            if entry.path().extension().is_some_and(|ext| ext == "seg") {
                total += entry.metadata().unwrap().len();
            }
        }
    }
    total
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("EDR_BUFFER_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn buffer_matches_model(ops in proptest::collection::vec(op(), 1..400)) {
        run(ops);
    }
}
