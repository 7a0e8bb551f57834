//! `edr-windows convert` on recorded telemetry: every output line validates against OCSF 1.8.0
//! and the summary reports classes, unmapped and filtered events, and damaged chunks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use edr_ocsf::Schema;

fn data_dir() -> PathBuf {
    std::env::var_os("EDR_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        })
}

#[test]
fn convert_data_dir_validates() {
    let data = data_dir();
    let (evtx, etl) = (data.join("evtx"), data.join("etl"));
    let schema_dir = edr_ocsf::schema_dir(&data);
    if !evtx.exists() || !schema_dir.exists() {
        eprintln!(
            "skipped: no EVTX data or OCSF schema under {} (set EDR_DATA_DIR)",
            data.display()
        );
        return;
    }
    let schema = Schema::load(&schema_dir).unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = out.path().join("events.jsonl");

    let mut command = Command::new(env!("CARGO_BIN_EXE_edr-windows"));
    command.arg("convert").arg(&evtx);
    if etl.exists() {
        command.arg(&etl);
    }
    let result = command.arg("--output").arg(&output).output().unwrap();
    let summary = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "convert failed: {summary}");

    let text = std::fs::read_to_string(&output).unwrap();
    let mut lines = 0;
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Err(error) = schema.validate(&event) {
            panic!("invalid line {lines}: {error}\n{line}");
        }
        lines += 1;
    }
    assert!(lines > 15_000, "{lines} events");
    assert!(
        summary.contains(&format!("{lines} OCSF events")),
        "{summary}"
    );
    assert!(summary.contains("events per OCSF class:"), "{summary}");
    assert!(summary.contains("Process Activity"), "{summary}");
    assert!(summary.contains("damaged parts skipped in"), "{summary}");
    if etl.exists() {
        assert!(summary.contains(" ETL files: "), "{summary}");
        assert!(!summary.contains("and 0 ETL files"), "{summary}");
        assert!(summary.contains("records filtered"), "{summary}");
        assert!(summary.contains("Network Activity"), "{summary}");
        assert!(summary.contains("Module Activity"), "{summary}");
    }

    // No record of an event id with a mapper is listed among the unmapped ones.
    for (channel, ids) in edr_evtx::map::MAPPED_IDS {
        for id in *ids {
            let listed = format!("  {channel} {id}\n");
            assert!(
                !summary.lines().any(|l| format!("{l}\n").ends_with(&listed)),
                "{channel} {id} unmapped"
            );
        }
    }
}

#[test]
fn convert_missing_path_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_edr-windows"))
        .args(["convert", "/nonexistent/edr-convert-input"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("/nonexistent/edr-convert-input"),
        "{message}"
    );
}

#[cfg(unix)]
#[test]
fn convert_skips_looping_and_dangling_links() {
    let folder = tempfile::tempdir().unwrap();
    let inner = folder.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(inner.join("notes.txt"), "not telemetry").unwrap();
    std::os::unix::fs::symlink("..", inner.join("up")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/edr-link-target", inner.join("gone.evtx")).unwrap();
    let output = folder.path().join("events.jsonl");

    let out = Command::new(env!("CARGO_BIN_EXE_edr-windows"))
        .arg("convert")
        .arg(folder.path())
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "convert failed: {summary}");
    assert!(
        summary.contains("symbolic links skipped (to a folder, or dangling): 2"),
        "{summary}"
    );
    assert!(
        summary.contains("other files ignored (neither EVTX nor ETL): 1"),
        "{summary}"
    );
}

#[test]
fn convert_rejects_named_non_telemetry_file() {
    let folder = tempfile::tempdir().unwrap();
    let notes = folder.path().join("notes.evtx");
    std::fs::write(&notes, "not telemetry").unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_edr-windows"))
        .arg("convert")
        .arg(&notes)
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "convert accepted {}: {message}",
        notes.display()
    );
    assert!(message.contains("notes.evtx"), "{message}");
    assert!(
        message.contains("neither an EVTX nor an ETL file"),
        "{message}"
    );
    assert!(out.stdout.is_empty());
}

#[cfg(unix)]
#[test]
fn convert_rejects_fifo_input() {
    let folder = tempfile::tempdir().unwrap();
    let fifo = folder.path().join("pipe.evtx");
    let mkfifo = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(mkfifo.success());

    // Opening a FIFO without a writer would wait forever; neither run may open it.
    let named = Command::new(env!("CARGO_BIN_EXE_edr-windows"))
        .arg("convert")
        .arg(&fifo)
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&named.stderr);
    assert!(!named.status.success(), "{message}");
    assert!(message.contains("not a regular file"), "{message}");

    let inside = Command::new(env!("CARGO_BIN_EXE_edr-windows"))
        .arg("convert")
        .arg(folder.path())
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&inside.stderr);
    assert!(inside.status.success(), "{summary}");
    assert!(
        summary.contains("other files ignored (neither EVTX nor ETL): 1"),
        "{summary}"
    );
}

#[test]
fn convert_reports_etl_cut_in_first_buffer() {
    let etl = data_dir().join("etl");
    let Some(trace) = walk(&etl).into_iter().find(|path| {
        path.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("etl"))
            && std::fs::metadata(path).is_ok_and(|meta| meta.len() > 8192)
    }) else {
        eprintln!(
            "skipped: no ETL file under {} (set EDR_DATA_DIR)",
            etl.display()
        );
        return;
    };
    // The first 4 KiB keep the buffer header but not the whole first buffer.
    let bytes = std::fs::read(&trace).unwrap();
    let folder = tempfile::tempdir().unwrap();
    let cut = folder.path().join("cut.etl");
    std::fs::write(&cut, &bytes[..4096]).unwrap();

    let result = Command::new(env!("CARGO_BIN_EXE_edr-windows"))
        .arg("convert")
        .arg(&cut)
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{message}");
    assert!(message.contains("cut short"), "{message}");
    assert!(!message.contains("neither an EVTX nor an ETL"), "{message}");

    // Under the 72-byte buffer header the file could be anything, so the message gives its
    // length.
    let tiny = folder.path().join("tiny.etl");
    std::fs::write(&tiny, &bytes[..40]).unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_edr-windows"))
        .arg("convert")
        .arg(&tiny)
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{message}");
    assert!(message.contains("only 40 bytes"), "{message}");
}

/// Files under `dir`, recursively, sorted; empty when `dir` does not exist.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
