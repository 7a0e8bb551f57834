//! Every EVTX file of the recorded data converts, every event validates against OCSF 1.8.0, and
//! no record of a mapped event id falls back to an unmapped event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use edr_evtx::map::MAPPED_IDS;

fn evtx_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
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

#[test]
fn every_file_converts_and_validates() {
    let Some(schema) = common::schema() else {
        return;
    };
    let dir = common::data_dir().join("evtx");
    if !dir.exists() {
        eprintln!("skipped: no EVTX data at {}", dir.display());
        return;
    }
    let mut files = Vec::new();
    evtx_files(&dir, &mut files);
    files.sort();
    // Any set of recordings works, not only the recorded set, so that other recordings of the
    // same kinds can be checked the same way.
    assert!(!files.is_empty(), "no EVTX file under {}", dir.display());

    let mut total = edr_evtx::Stats::default();
    let mut skipped_chunks = BTreeMap::new();
    let mut violations = BTreeMap::new();
    for file in &files {
        let mut count = 0u64;
        let (report, stats) = edr_evtx::convert_file(file, |event| {
            count += 1;
            let value = serde_json::to_value(&event).unwrap();
            if let Err(error) = schema.validate(&value) {
                // Group by rule so one broken mapper does not hide another.
                for violation in error.violations {
                    let key = format!(
                        "{}:{} {}",
                        value["class_uid"], value["metadata"]["event_code"], violation.path
                    );
                    violations
                        .entry(key)
                        .or_insert_with(|| format!("{}: {violation}", file.display()));
                }
            }
        })
        .unwrap();
        // Each record yields one event, except the parts of a multi-part script block, which
        // yield one event together. So the events match the class counts, and are at most
        // the records.
        let emitted: u64 = stats.per_class.values().sum();
        assert_eq!(count, emitted, "{}", file.display());
        assert!(count <= report.records, "{}", file.display());
        if !report.skipped_chunks.is_empty() {
            skipped_chunks.insert(
                file.file_name().unwrap().to_string_lossy().into_owned(),
                report.skipped_chunks,
            );
        }
        total.merge(&stats);
    }
    let listed: Vec<&String> = violations.values().collect();
    assert!(
        violations.is_empty(),
        "{} kinds of violation:\n{listed:#?}",
        violations.len()
    );

    for (channel, ids) in MAPPED_IDS {
        for id in *ids {
            let unmapped = total
                .unmapped
                .get(&(channel.to_string(), *id))
                .copied()
                .unwrap_or(0);
            assert_eq!(unmapped, 0, "{channel} {id} fell back to unmapped");
        }
    }
    // The bad-chunk-magic sample, when present, has damaged chunks, and the rest of the file
    // is still read.
    let bad_magic = "sample_with_a_bad_chunk_magic.evtx";
    if files.iter().any(|file| file.ends_with(bad_magic)) {
        assert!(
            skipped_chunks
                .get(bad_magic)
                .is_some_and(|chunks| !chunks.is_empty()),
            "skipped chunks: {skipped_chunks:?}"
        );
    }
    assert!(
        total.records > 0,
        "no record read from {} files",
        files.len()
    );
    eprintln!(
        "records {}, classes {:?}, skipped chunks {:?}",
        total.records, total.per_class, skipped_chunks
    );
}
