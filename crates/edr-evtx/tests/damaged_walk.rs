//! On damaged chunks, the chunk walk (`RecordBuild::Tokens`) must give the records and counts
//! that the `evtx` crate's own walk gives (`RecordBuild::Json`): it may only take chunks that
//! the crate reads the same way (ADR 0012). Each case damages one field of a recorded file's
//! first chunk and compares the two.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use edr_evtx::record::Record;
use edr_evtx::source::{RecordBuild, read_file_with};

const FILE_HEADER: usize = 4096;
const CHUNK_HEADER: usize = 512;
/// Offset of `free_space_offset` in a chunk header.
const FREE_SPACE: usize = 48;

fn read(path: &Path, build: RecordBuild) -> (Vec<Record>, u64, u64, usize) {
    let mut records = Vec::new();
    let report = read_file_with(path, build, |record| records.push(record)).unwrap();
    (
        records,
        report.records,
        report.bad_records,
        report.skipped_chunks.len(),
    )
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

/// File offsets of the value descriptors of the first record's template instance.
fn first_record_descriptors(file: &[u8]) -> Vec<usize> {
    let binxml = FILE_HEADER + CHUNK_HEADER + 24;
    assert_eq!(file[binxml], 0x0f, "the first record is not one fragment");
    assert_eq!(
        file[binxml + 4],
        0x0c,
        "the first record is not one template instance"
    );
    let chunk = |offset: usize| offset - FILE_HEADER;
    let definition_field = binxml + 10;
    let definition = u32_at(file, definition_field) as usize;
    let mut position = definition_field + 4;
    if chunk(position) == definition {
        position += 24 + u32_at(file, position + 20) as usize;
    }
    let count = u32_at(file, position) as usize;
    (0..count).map(|i| position + 4 + i * 4).collect()
}

/// Lists the damages: a name for the failure message, a file offset and the bytes to write there.
fn damages(file: &[u8]) -> Vec<(String, usize, Vec<u8>)> {
    let record = FILE_HEADER + CHUNK_HEADER;
    let mut out = Vec::new();
    // Header times: 1601, one tick before 1970, past the end of the crate's date library
    // (9999-12-30T22:00:01Z), the largest value.
    for time in [
        0_u64,
        116_444_735_999_999_999,
        2_650_466_808_010_000_000,
        u64::MAX,
    ] {
        out.push((
            format!("header time {time}"),
            record + 16,
            time.to_le_bytes().to_vec(),
        ));
    }

    // Record sizes that step into the next record, past the chunk, or below the header.
    let size = u32_at(file, record + 4);
    for wrong in [0, 8, size - 8, size + 8, 70_000, u32::MAX] {
        out.push((
            format!("record size {wrong}"),
            record + 4,
            wrong.to_le_bytes().to_vec(),
        ));
    }

    // Free space that ends before, inside or past the records.
    let free = u32_at(file, FILE_HEADER + FREE_SPACE);
    for wrong in [0, 512, 600, free - 8, 70_000] {
        out.push((
            format!("free space offset {wrong}"),
            FILE_HEADER + FREE_SPACE,
            wrong.to_le_bytes().to_vec(),
        ));
    }

    // Value types that do not fit the declared size, on every value of the first record.
    for (index, descriptor) in first_record_descriptors(file).into_iter().enumerate() {
        let declared = u16::from_le_bytes([file[descriptor], file[descriptor + 1]]);
        let wrong_type = match declared {
            4 => 0x0a_u8,
            8 => 0x07,
            _ => 0x08,
        };
        out.push((
            format!("value {index} of {declared} bytes typed {wrong_type:#04x}"),
            descriptor + 2,
            vec![wrong_type],
        ));
        // Types the crate reads past the declared size (a SID by its count of sub-authorities,
        // a string array up to a NUL unit) or parses as nested BinXML.
        for retype in [0x13_u8, 0x21, 0x81] {
            out.push((
                format!("value {index} of {declared} bytes typed {retype:#04x}"),
                descriptor + 2,
                vec![retype],
            ));
        }
    }
    out
}

#[test]
fn damaged_chunks_read_as_the_crate_reads_them() {
    let path =
        common::data_dir().join("evtx/omerbenamram-evtx_MIT-or-Apache-2.0/samples/sysmon.evtx");
    if !path.exists() {
        eprintln!(
            "skipped: no recorded file at {} (set EDR_DATA_DIR)",
            path.display()
        );
        return;
    }
    let original = std::fs::read(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut differences = Vec::new();
    let cases = damages(&original);
    for (name, offset, bytes) in &cases {
        let mut file = original.clone();
        file[*offset..*offset + bytes.len()].copy_from_slice(bytes);
        let damaged = dir.path().join("damaged.evtx");
        std::fs::write(&damaged, &file).unwrap();
        let (token_records, token_count, token_bad, token_skipped) =
            read(&damaged, RecordBuild::Tokens);
        let (json_records, json_count, json_bad, json_skipped) = read(&damaged, RecordBuild::Json);
        if (token_count, token_bad, token_skipped) != (json_count, json_bad, json_skipped) {
            differences.push(format!(
                "{name}: tokens {token_count} records, {token_bad} bad, {token_skipped} chunks skipped; \
                 json {json_count} records, {json_bad} bad, {json_skipped} chunks skipped"
            ));
        } else if token_records != json_records {
            let first = token_records
                .iter()
                .zip(&json_records)
                .position(|(token, json)| token != json);
            differences.push(format!("{name}: records differ, first at index {first:?}"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} damages read differently:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
}
