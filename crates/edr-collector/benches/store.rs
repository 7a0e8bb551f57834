//! Store-only ingest throughput: batches of real OCSF events validated and committed to the
//! Collector's SQLite database, without gRPC, TLS or gRPC compression in the way.
//!
//! The events are converted from the recorded EVTX files under `EDR_DATA_DIR` (default
//! `<workspace>/../shared/data`). Each iteration validates and stores one transaction of
//! `BATCHES_PER_COMMIT` batches of `BATCH_RECORDS` events with new sequence numbers, so the
//! table grows as it does under a real stream. `ingest_sync_full` and `ingest_sync_normal` also
//! compress the events with a dictionary trained on the first batches, as `serve` does once it
//! has one. `ingest_sync_full_uncompressed` stores plain JSON, as `serve` does before that.
//! `commit_sync_full` times only the transaction, the share of the single writer thread: the
//! events are validated and compressed beforehand, as the streams do in parallel.
//!
//! Run with `cargo bench -p edr-collector --bench store`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use edr_collector::bench::{IngestStore, validate_only};
use edr_proto::v1::{BufferedRecord, EventBatch, buffered_record};

/// Events per batch: about what a sensor puts in a 1 MiB batch of these events.
const BATCH_RECORDS: usize = 1_000;

/// Batches per transaction; the ingest writer groups the batches queued while it commits.
const BATCHES_PER_COMMIT: usize = 4;

fn store(c: &mut Criterion) {
    let Some(events) = load_events() else {
        return;
    };
    let per_commit = (BATCH_RECORDS * BATCHES_PER_COMMIT) as u64;
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(per_commit));
    group.sample_size(20);

    group.bench_function("validate", |b| {
        let mut next_seq = 1;
        b.iter_batched(
            || make_batches(&events, &mut next_seq),
            |batches| {
                for batch in batches {
                    validate_only(batch).unwrap();
                }
            },
            BatchSize::LargeInput,
        );
    });

    // The writer thread's share alone: events validated and compressed beforehand, as the
    // streams do in parallel, and only the transaction timed.
    {
        let dir = tempfile::tempdir().unwrap();
        let store = std::cell::RefCell::new(IngestStore::create(dir.path(), true).unwrap());
        let mut sample_seq = 1;
        store
            .borrow_mut()
            .train(make_batches(&events, &mut sample_seq))
            .unwrap();
        let mut next_seq = 1;
        group.bench_function("commit_sync_full", |b| {
            b.iter_batched(
                || {
                    store
                        .borrow()
                        .prepare("bench-sensor", make_batches(&events, &mut next_seq))
                        .unwrap()
                },
                |prepared| {
                    let stored = store.borrow_mut().commit(prepared).unwrap();
                    assert_eq!(stored, per_commit);
                },
                BatchSize::LargeInput,
            );
        });
    }

    for (name, full_sync, compressed) in [
        ("ingest_sync_full", true, true),
        ("ingest_sync_normal", false, true),
        ("ingest_sync_full_uncompressed", true, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = IngestStore::create(dir.path(), full_sync).unwrap();
        let mut next_seq = 1;
        if compressed {
            // The events the dictionary is trained on are not stored, as in a Collector
            // whose first events were stored before it had a dictionary.
            let mut sample_seq = 1;
            store.train(make_batches(&events, &mut sample_seq)).unwrap();
        }
        group.bench_function(name, |b| {
            b.iter_batched(
                || make_batches(&events, &mut next_seq),
                |batches| {
                    let stored = store.ingest("bench-sensor", batches).unwrap();
                    assert_eq!(stored, per_commit);
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

/// Builds the next `BATCHES_PER_COMMIT` batches, numbering records from `next_seq` on.
fn make_batches(events: &[Vec<u8>], next_seq: &mut u64) -> Vec<EventBatch> {
    (0..BATCHES_PER_COMMIT)
        .map(|_| {
            let records: Vec<BufferedRecord> = (0..BATCH_RECORDS)
                .map(|_| {
                    let seq = *next_seq;
                    *next_seq += 1;
                    let event = &events[(seq % events.len() as u64) as usize];
                    BufferedRecord {
                        seq,
                        kind: Some(buffered_record::Kind::OcsfEventJson(event.clone().into())),
                    }
                })
                .collect();
            EventBatch {
                first_seq: records[0].seq,
                last_seq: records[records.len() - 1].seq,
                records,
            }
        })
        .collect()
}

/// Converts the recorded EVTX files to OCSF JSON; `None` with a message when they are absent.
fn load_events() -> Option<Vec<Vec<u8>>> {
    let evtx = std::env::var_os("EDR_DATA_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
            PathBuf::from,
        )
        .join("evtx");
    if !evtx.is_dir() {
        eprintln!(
            "skipped: no recorded EVTX files in {}; set EDR_DATA_DIR",
            evtx.display()
        );
        return None;
    }
    let mut files = Vec::new();
    let mut folders = vec![evtx.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("evtx"))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut events = Vec::new();
    for file in files {
        let _ = edr_evtx::convert_file(&file, |event| {
            events.push(serde_json::to_vec(&event).unwrap());
        });
    }
    assert!(
        !events.is_empty(),
        "no events converted from {}",
        evtx.display()
    );
    Some(events)
}

criterion_group!(benches, store);
criterion_main!(benches);
