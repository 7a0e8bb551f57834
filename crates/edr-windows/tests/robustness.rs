//! Bounded random and mutated inputs through the reader and the decoders: recorded traces with
//! bytes flipped, words overwritten and the file truncated, and every prefix of real payloads.
//! Nothing may panic or hang. `EDR_MUTATION_ITERATIONS` raises the number of mutated files per
//! trace (default 24) for longer runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use edr_etw::{EtlReader, EventRecord, ReaderLimits};
use edr_windows::events::Decoder;

fn data_dir() -> PathBuf {
    match std::env::var_os("EDR_DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    }
}

fn traces() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![data_dir().join("etl")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "etl") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// xorshift64*: deterministic, so a failure reproduces from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Reads and decodes everything the reader accepts; errors are fine, panics are not.
fn read_and_decode(bytes: Vec<u8>) -> u64 {
    let limits = ReaderLimits {
        max_buffer_size: 4 << 20,
        max_recorded_skips: 16,
    };
    let Ok(mut reader) = EtlReader::with_limits(Cursor::new(bytes), limits) else {
        return 0;
    };
    let mut decoder = Decoder::new();
    let mut records = 0u64;
    let _ = reader.for_each_record(|record| {
        records += 1;
        let _ = decoder.decode(record);
    });
    records
}

/// Mutates a copy of `original` in one of four ways.
fn mutate(original: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = original.to_vec();
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(16) {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        1 => bytes.truncate(rng.below(bytes.len())),
        2 => {
            // Extreme values where sizes and offsets live: buffer headers and event headers.
            let extremes = [0u32, 1, 0x47, 0xffff, 0x7fff_ffff, u32::MAX];
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len().saturating_sub(4)) & !3;
                let value = extremes[rng.below(extremes.len())];
                bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
        }
        _ => {
            let at = rng.below(bytes.len());
            let len = rng.below(256).min(bytes.len() - at);
            for b in &mut bytes[at..at + len] {
                *b = rng.next() as u8;
            }
        }
    }
    bytes
}

#[test]
fn mutated_traces_never_panic() {
    let files = traces();
    if files.is_empty() {
        println!(
            "skipped: no recorded ETL data under {} (set EDR_DATA_DIR)",
            data_dir().display()
        );
        return;
    }
    let iterations: usize = std::env::var("EDR_MUTATION_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    for (index, path) in files.iter().enumerate() {
        let mut original = std::fs::read(path).unwrap();
        // Bounded work per file in debug builds: the first 320 KiB hold several buffers of
        // every file, compressed ones included.
        original.truncate(320 << 10);
        let seed = 0x9e37_79b9_7f4a_7c15 ^ index as u64;
        let mut rng = Rng(seed);
        for iteration in 0..iterations {
            let mutated = mutate(&original, &mut rng);
            let outcome = std::panic::catch_unwind(|| read_and_decode(mutated));
            assert!(
                outcome.is_ok(),
                "{} seed {seed:#x} iteration {iteration} panicked",
                path.display()
            );
        }
    }
}

#[test]
fn every_payload_prefix_decodes_or_is_counted() {
    let files = traces();
    if files.is_empty() {
        println!(
            "skipped: no recorded ETL data under {} (set EDR_DATA_DIR)",
            data_dir().display()
        );
        return;
    }
    let mut checked = 0u64;
    for path in &files {
        let mut reader = EtlReader::open(path).unwrap();
        let mut decoder = Decoder::new();
        let mut seen = std::collections::HashSet::new();
        reader
            .for_each_record(|record| {
                // One record per kind: every prefix of its payload, then the payload with junk.
                let kind = (
                    record.provider_id,
                    record.descriptor.id,
                    record.descriptor.opcode,
                    record.descriptor.version,
                );
                if !seen.insert(kind) {
                    return;
                }
                for len in 0..=record.user_data.len().min(2048) {
                    let truncated = EventRecord {
                        user_data: &record.user_data[..len],
                        ..*record
                    };
                    let _ = decoder.decode(&truncated);
                    checked += 1;
                }
                let mut junk = record.user_data.to_vec();
                junk.iter_mut()
                    .for_each(|b| *b = b.wrapping_mul(31).wrapping_add(7));
                let garbled = EventRecord {
                    user_data: &junk,
                    ..*record
                };
                let _ = decoder.decode(&garbled);
            })
            .unwrap();
    }
    assert!(checked > 10_000, "{checked} prefixes");
}
