//! Tests of the offline ring buffer against real files on disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod basic;
mod corruption;
mod crash;
mod disk_full;
mod model;

use std::path::Path;
use std::time::Duration;

use edr_sensor::buffer::{Buffer, BufferOptions, Gap, Lane, Record, RecordKind};

/// Options small enough that eviction happens after a few hundred records: 8 KiB segments,
/// 64 KiB capacity, records up to 1 KiB, no drain cap, explicit syncs.
pub(crate) fn small_options(directory: &Path) -> BufferOptions {
    BufferOptions {
        directory: directory.to_owned(),
        capacity_bytes: 64 * 1024,
        segment_bytes: 8 * 1024,
        sync_interval: Duration::from_secs(1),
        max_record_bytes: 1024,
        drain_rate_bytes_per_sec: None,
        drain_rate_records_per_sec: None,
    }
}

/// Deterministic payload of `len` bytes for `seq`, so that a reader can check every byte.
pub(crate) fn payload_for(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|index| (seq.wrapping_mul(31).wrapping_add(index as u64) % 251) as u8)
        .collect()
}

/// Drains until nothing durable is left.
pub(crate) fn drain_all(buffer: &mut Buffer) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let batch = buffer.drain(1000).unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

pub(crate) fn events(records: &[Record]) -> Vec<(u64, Lane, Vec<u8>)> {
    records
        .iter()
        .filter_map(|record| match &record.kind {
            RecordKind::Event(payload) => Some((record.seq, record.lane, payload.to_vec())),
            RecordKind::Gap(_) => None,
        })
        .collect()
}

pub(crate) fn gaps(records: &[Record]) -> Vec<Gap> {
    records
        .iter()
        .filter_map(|record| match &record.kind {
            RecordKind::Gap(gap) => Some(*gap),
            RecordKind::Event(_) => None,
        })
        .collect()
}

/// Returns the segment files of a lane, oldest first.
pub(crate) fn segment_files(directory: &Path, lane: Lane) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(directory.join(lane.name()))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}
