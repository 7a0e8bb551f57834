//! Records per second when reading every recorded ETL trace from memory.
//!
//! Run with `cargo bench -p edr-etw --bench read`; the traces come from `EDR_DATA_DIR`
//! (default `<workspace>/../shared/data`), and the bench does nothing when they are absent.

use std::hint::black_box;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edr_etw::EtlReader;

fn traces() -> Vec<(String, Vec<u8>)> {
    let root = match std::env::var_os("EDR_DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    };
    let mut out = Vec::new();
    let mut stack = vec![root.join("etl")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "etl")
                && let Ok(bytes) = std::fs::read(&path)
            {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push((name, bytes));
            }
        }
    }
    out.sort();
    out
}

/// Reads every record of a file, touching the payload so nothing is optimized away.
fn read_file(bytes: &[u8]) -> u64 {
    let Ok(mut reader) = EtlReader::new(Cursor::new(bytes)) else {
        return 0;
    };
    let mut records = 0u64;
    let _ = reader.for_each_record(|record| {
        records += 1;
        black_box(record.user_data.len());
    });
    records
}

fn bench_read(c: &mut Criterion) {
    let files = traces();
    if files.is_empty() {
        eprintln!("skipped: no recorded ETL traces (set EDR_DATA_DIR)");
        return;
    }
    let total: u64 = files.iter().map(|(_, b)| read_file(b)).sum();
    let mut group = c.benchmark_group("etl_read");
    group.throughput(Throughput::Elements(total));
    group.bench_function("all_traces", |b| {
        b.iter(|| files.iter().map(|(_, bytes)| read_file(bytes)).sum::<u64>())
    });
    for (name, bytes) in files
        .iter()
        .filter(|(n, _)| n.starts_with("net.") || n.starts_with("Shutdown"))
    {
        group.throughput(Throughput::Elements(read_file(bytes)));
        group.bench_function(name.as_str(), |b| b.iter(|| read_file(bytes)));
    }
    group.finish();
}

criterion_group!(benches, bench_read);
criterion_main!(benches);
