//! Records per second when reading and decoding recorded ETL traces from memory.
//!
//! Run with `cargo bench -p edr-windows --bench decode`; the traces come from `EDR_DATA_DIR`
//! (default `<workspace>/../shared/data`), and the bench does nothing when they are absent.
//! Throughput counts every record read; the decoded share depends on the trace (kernel
//! samples and stack walks are read but not decoded).

use std::hint::black_box;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edr_etw::{EtlReader, EventRecord, ExtendedData};
use edr_windows::events::Decoder;

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

/// Reads and decodes a file, returning (records read, events decoded).
fn read_and_decode(bytes: &[u8]) -> (u64, u64) {
    let Ok(mut reader) = EtlReader::new(Cursor::new(bytes)) else {
        return (0, 0);
    };
    let mut decoder = Decoder::new();
    let mut records = 0u64;
    let _ = reader.for_each_record(|record| {
        records += 1;
        black_box(decoder.decode(record));
    });
    (records, decoder.stats().decoded)
}

fn bench_decode(c: &mut Criterion) {
    let files = traces();
    if files.is_empty() {
        eprintln!("skipped: no recorded ETL traces (set EDR_DATA_DIR)");
        return;
    }
    let mut group = c.benchmark_group("etl_read_decode");
    let (records, decoded): (u64, u64) = files
        .iter()
        .map(|(_, b)| read_and_decode(b))
        .fold((0, 0), |acc, x| (acc.0 + x.0, acc.1 + x.1));
    eprintln!("all traces: {records} records, {decoded} decoded");
    group.throughput(Throughput::Elements(records));
    group.bench_function("all_traces", |b| {
        b.iter(|| {
            files
                .iter()
                .map(|(_, bytes)| read_and_decode(bytes).0)
                .sum::<u64>()
        })
    });

    // Traces where most records are decoded: the decode cost dominates.
    for (name, bytes) in files.iter().filter(|(n, _)| {
        [
            "Shutdown",
            "Process.etl",
            "KernelNetwork",
            "AMSI",
            "powershell",
        ]
        .iter()
        .any(|p| n.starts_with(p))
    }) {
        let (records, decoded) = read_and_decode(bytes);
        eprintln!("{name}: {records} records, {decoded} decoded");
        group.throughput(Throughput::Elements(decoded));
        group.bench_function(format!("{name} (decoded events)"), |b| {
            b.iter(|| read_and_decode(bytes))
        });
    }
    group.finish();
}

/// A record copied out of its buffer, so decoding can be measured without reading.
struct OwnedRecord {
    template: EventRecord<'static>,
    extended: Vec<u8>,
    user_data: Vec<u8>,
}

/// Copies the records of the traces that the decoders turn into typed events.
fn decodable_records(files: &[(String, Vec<u8>)]) -> Vec<OwnedRecord> {
    let mut out = Vec::new();
    for (_, bytes) in files {
        let Ok(mut reader) = EtlReader::new(Cursor::new(bytes)) else {
            continue;
        };
        let mut decoder = Decoder::new();
        let _ = reader.for_each_record(|record| {
            if decoder.decode(record).is_none() {
                return;
            }
            let extended: Vec<u8> = record
                .extended
                .iter()
                .flat_map(|item| {
                    let size = (8 + item.data.len()).next_multiple_of(8);
                    let mut raw = Vec::with_capacity(size);
                    raw.extend_from_slice(&(size as u16).to_le_bytes());
                    raw.extend_from_slice(&item.ext_type.to_le_bytes());
                    raw.extend_from_slice(&1u16.to_le_bytes());
                    raw.extend_from_slice(&(item.data.len() as u16).to_le_bytes());
                    raw.extend_from_slice(item.data);
                    raw.resize(size, 0);
                    raw
                })
                .collect();
            let mut extended = extended;
            // Clear the linkage bit of the last item.
            let mut at = 0;
            let mut last = None;
            while at + 8 <= extended.len() {
                last = Some(at);
                at += usize::from(u16::from_le_bytes([extended[at], extended[at + 1]]));
            }
            if let Some(last) = last {
                extended[last + 4] = 0;
            }
            out.push(OwnedRecord {
                template: EventRecord {
                    extended: ExtendedData::default(),
                    user_data: &[],
                    ..*record
                },
                extended,
                user_data: record.user_data.to_vec(),
            });
        });
    }
    out
}

fn bench_decode_only(c: &mut Criterion) {
    let files = traces();
    if files.is_empty() {
        return;
    }
    let records = decodable_records(&files);
    let mut group = c.benchmark_group("decode_only");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decodable_records_of_all_traces", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new();
            for owned in &records {
                let extended = ExtendedData::parse(&owned.extended)
                    .map(|(e, _)| e)
                    .unwrap_or_default();
                let record = EventRecord {
                    extended,
                    user_data: &owned.user_data,
                    ..owned.template
                };
                black_box(decoder.decode(&record));
            }
            decoder.stats().decoded
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode, bench_decode_only);
criterion_main!(benches);
