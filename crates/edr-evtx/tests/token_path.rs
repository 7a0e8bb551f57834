//! Records built from template values equal the records read back from the `evtx` crate's
//! JSON rendering, on every EVTX file of the recorded data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use edr_evtx::record::Record;
use edr_evtx::source::{RecordBuild, read_file_with};

fn evtx_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            evtx_files(&path, out);
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("evtx"))
        {
            out.push(path);
        }
    }
}

fn read(path: &Path, build: RecordBuild) -> (Vec<Record>, edr_evtx::ReadReport) {
    let mut records = Vec::new();
    let report = read_file_with(path, build, |record| records.push(record)).unwrap();
    (records, report)
}

/// Names the record and the parts that differ, which are few next to a whole record.
fn describe_difference(path: &Path, token: &Record, json: &Record) -> String {
    let mut text = format!("{} record {}:", path.display(), json.record_id);
    let (mut token_only, mut json_only) = (token.clone(), json.clone());
    token_only.fields = Default::default();
    json_only.fields = Default::default();
    if token_only != json_only {
        text += &format!("\n header tokens {token_only:?}\n header json   {json_only:?}");
    }
    if token.fields != json.fields {
        text += &format!(
            "\n fields tokens {:?}\n fields json   {:?}",
            token.fields, json.fields
        );
    }
    text
}

#[test]
fn token_and_json_records_equal() {
    let dir = common::data_dir().join("evtx");
    if !dir.exists() {
        eprintln!(
            "skipped: no EVTX data at {} (set EDR_DATA_DIR)",
            dir.display()
        );
        return;
    }
    let mut paths = Vec::new();
    evtx_files(&dir, &mut paths);
    paths.sort();

    let (mut total, mut rendered, mut mismatches) = (0u64, 0u64, Vec::new());
    for path in &paths {
        let (tokens, token_report) = read(path, RecordBuild::Tokens);
        let (json, json_report) = read(path, RecordBuild::Json);
        assert_eq!(
            token_report.records,
            json_report.records,
            "{}",
            path.display()
        );
        assert_eq!(token_report.bad_records, json_report.bad_records);
        assert_eq!(token_report.skipped_chunks, json_report.skipped_chunks);
        assert_eq!(json_report.rendered_records, json_report.records);
        total += token_report.records;
        rendered += token_report.rendered_records;
        for (token, json) in tokens.iter().zip(&json) {
            if token != json {
                mismatches.push(describe_difference(path, token, json));
            }
        }
    }
    eprintln!("{total} records, {rendered} rendered to JSON");
    assert!(
        mismatches.is_empty(),
        "{} records differ, first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(5)].join("\n")
    );
    // Unless the token path carries most records, it saves no time.
    assert!(total > 0);
    assert!(
        rendered * 4 < total,
        "{rendered} of {total} records rendered"
    );
}
