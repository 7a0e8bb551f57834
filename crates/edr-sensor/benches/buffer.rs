//! Append and drain throughput of the ring buffer on the disk under `EDR_BUFFER_BENCH_DIR`
//! (default: the system temporary directory), with group commit on.
//!
//! Run: `cargo bench -p edr-sensor --bench buffer`. Criterion prints MB/s (payload bytes) for
//! the `bytes` groups and records/s for the `records` groups.
//!
//! Each append iteration writes 64 MiB of payload into a fresh 5 GiB buffer with a 1 s sync
//! interval and ends with `sync`, so every measured byte is fsynced. Each drain iteration reads
//! 64 MiB of durable records and acknowledges them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
        ("bytes", Throughput::Bytes((count * size) as u64)),
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
                    total += start.elapsed();
                    assert_eq!(drained, count);
                }
                total
            });
        });
        group.finish();
    }
}

fn buffer_throughput(c: &mut Criterion) {
    bench_size(c, 200, "200B");
    bench_size(c, 2048, "2KiB");
}

criterion_group!(benches, buffer_throughput);
criterion_main!(benches);
