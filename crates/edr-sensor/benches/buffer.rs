//! Append and drain throughput of the ring buffer on the disk under `EDR_BUFFER_BENCH_DIR`
//! (default: the system temporary directory), with group commit on.
//!
//! Run: `cargo bench -p edr-sensor --bench buffer`. Criterion prints decimal MB/s (10^6 bytes
//! of payload per second, frame headers not counted) for the `MB` groups and records/s for the
//! `records` groups.
//!
//! Each append iteration writes 64 MiB of payload into a fresh 5 GiB buffer with a 1 s sync
//! interval and ends with `sync`, so every measured byte is fsynced. Each drain iteration reads
//! 64 MiB of durable records and acknowledges them.
//!
//! The `append_200B_by_segment_count` group times appends of 256 KiB of 200-byte records, without
//! their `sync`, to a buffer of 16 KiB segments that already contains about 18, 1190 or 9500
//! segments. The function name states the number of 256 KiB batches, and a line on stderr the
//! segment count. The time per record must not grow with the segment count.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edr_sensor::buffer::{Buffer, BufferOptions, Lane};

const BATCH_BYTES: usize = 64 << 20;

fn options(directory: PathBuf) -> BufferOptions {
    BufferOptions {
        directory,
        capacity_bytes: 5 << 30,
        segment_bytes: 32 << 20,
        sync_interval: Duration::from_secs(1),
        max_record_bytes: 1 << 20,
        drain_rate_bytes_per_sec: None,
        drain_rate_records_per_sec: None,
    }
}

fn bench_root() -> PathBuf {
    std::env::var_os("EDR_BUFFER_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn append_batch(buffer: &mut Buffer, payload: &[u8], count: usize) {
    for _ in 0..count {
        buffer.append(Lane::Telemetry, payload).unwrap();
    }
    buffer.sync().unwrap();
}

fn bench_size(c: &mut Criterion, size: usize, label: &str) {
    let payload = vec![0x5Au8; size];
    let count = BATCH_BYTES / size;

    for (unit, throughput) in [
        ("MB", Throughput::BytesDecimal((count * size) as u64)),
        ("records", Throughput::Elements(count as u64)),
    ] {
        let mut group = c.benchmark_group(format!("append_{label}_{unit}"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(8))
            .throughput(throughput.clone());
        group.bench_function("group_commit_1s", |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let dir = tempfile::tempdir_in(bench_root()).unwrap();
                    let mut buffer = Buffer::open(options(dir.path().to_owned())).unwrap();
                    let start = Instant::now();
                    append_batch(&mut buffer, &payload, count);
                    total += start.elapsed();
                }
                total
            });
        });
        group.finish();

        let mut group = c.benchmark_group(format!("drain_{label}_{unit}"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(8))
            .throughput(throughput);
        group.bench_function("drain_and_ack", |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let dir = tempfile::tempdir_in(bench_root()).unwrap();
                    let mut buffer = Buffer::open(options(dir.path().to_owned())).unwrap();
                    append_batch(&mut buffer, &payload, count);
                    let start = Instant::now();
                    let mut drained = 0;
                    loop {
                        let batch = buffer.drain(4096).unwrap();
                        let Some(last) = batch.last() else { break };
                        drained += batch.len();
                        buffer.ack(last.seq).unwrap();
                    }
                    // Closing fsyncs the last cursor and deletes the segments it covers.
                    buffer.close().unwrap();
                    total += start.elapsed();
                    assert_eq!(drained, count);
                }
                total
            });
        });
        group.finish();
    }
}

/// Segment size of the segment-count group: small, so that thousands of segments take little
/// disk space.
const SMALL_SEGMENT_BYTES: u64 = 16 << 10;
/// Payload bytes appended per iteration of the segment-count group, about 19 segments.
const SMALL_BATCH_BYTES: usize = 256 << 10;

/// Appends `count` copies of `payload` without syncing and returns the last sequence number.
fn append_unsynced(buffer: &mut Buffer, payload: &[u8], count: usize) -> u64 {
    let mut last = 0;
    for _ in 0..count {
        last = buffer.append(Lane::Telemetry, payload).unwrap();
    }
    last
}

/// A buffer of small segments holding `batches` unacknowledged batches, with the last sequence
/// number of each batch, oldest first.
struct Prefilled {
    _dir: tempfile::TempDir,
    buffer: Buffer,
    batch_ends: VecDeque<u64>,
}

fn prefill(payload: &[u8], count: usize, batches: usize) -> Prefilled {
    let dir = tempfile::tempdir_in(bench_root()).unwrap();
    let mut buffer = Buffer::open(BufferOptions {
        segment_bytes: SMALL_SEGMENT_BYTES,
        max_record_bytes: 1024,
        ..options(dir.path().to_owned())
    })
    .unwrap();
    let mut batch_ends = VecDeque::new();
    for _ in 0..batches {
        batch_ends.push_back(append_unsynced(&mut buffer, payload, count));
    }
    buffer.sync().unwrap();
    eprintln!(
        "{batches} batches prefilled: about {} segments",
        buffer.metrics().disk_bytes / SMALL_SEGMENT_BYTES
    );
    Prefilled {
        _dir: dir,
        buffer,
        batch_ends,
    }
}

fn bench_segment_count(c: &mut Criterion) {
    let payload = vec![0x5Au8; 200];
    let count = SMALL_BATCH_BYTES / payload.len();

    let mut group = c.benchmark_group("append_200B_by_segment_count");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(count as u64));
    for batches in [1usize, 64, 512] {
        // Filled on the first call only, so that a filter that skips this case skips the fill.
        let mut state: Option<Prefilled> = None;
        group.bench_function(format!("{batches}_batches_of_256KiB"), |b| {
            let Prefilled {
                buffer, batch_ends, ..
            } = state.get_or_insert_with(|| prefill(&payload, count, batches));

            // Only the appends are timed. Afterwards the oldest batch is acknowledged, which
            // deletes its segments, so the segment count stays the same across iterations.
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let start = Instant::now();
                    let last = append_unsynced(buffer, &payload, count);
                    total += start.elapsed();
                    buffer.sync().unwrap();
                    batch_ends.push_back(last);
                    buffer.ack(batch_ends.pop_front().unwrap()).unwrap();
                }
                total
            });
        });
    }
    group.finish();
}

fn buffer_throughput(c: &mut Criterion) {
    bench_size(c, 200, "200B");
    bench_size(c, 2048, "2KiB");
    bench_segment_count(c);
}

criterion_group!(benches, buffer_throughput);
criterion_main!(benches);
