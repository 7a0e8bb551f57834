//! `edr-windows etl dump` on recorded traces and on a file that is not ETL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn trace(relative: &str) -> Option<PathBuf> {
    let root = match std::env::var_os("EDR_DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    };
    let path = root.join("etl").join(relative);
    if path.is_file() {
        Some(path)
    } else {
        println!(
            "skipped: recorded trace {} is absent (set EDR_DATA_DIR)",
            path.display()
        );
        None
    }
}

fn dump(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_edr-windows"))
        .arg("etl")
        .arg("dump")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn jsonl_dump_filters_by_provider_name() {
    let Some(path) = trace("airbus-etl-parser_Apache-2.0/tests/example/AMSITrace.etl") else {
        return;
    };
    let (ok, stdout, stderr) = dump(&[
        "--format",
        "jsonl",
        "--provider",
        "amsitrace",
        path.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 19);
    for line in &lines {
        assert_eq!(line["event"]["type"], "AmsiScan");
        assert_eq!(line["tracelogging_event"], "AmsiScript");
        assert_eq!(line["provider"], "8e805eb3-6a8f-4a1e-90fa-a831d94e54a1");
    }
    assert!(stderr.contains("decoded 19"), "{stderr}");
    assert!(stderr.contains("the session lost 3 events"), "{stderr}");
}

#[test]
fn text_dump_filters_by_kernel_group() {
    let Some(path) = trace("airbus-etl-parser_Apache-2.0/tests/example/ShutdownPerfDiagLogger.etl")
    else {
        return;
    };
    let (ok, stdout, stderr) = dump(&["--provider", "Process", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    // Process group records in the trace: 94 + 60 + 60 + 37 + 5. Its 72 image loads under the
    // Process group's hook (0x030A) are Image records.
    assert_eq!(lines.len(), 256);
    assert!(lines.iter().all(|l| l.contains(" Kernel/Process ")));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"image_name\":\"NisSrv.exe\""))
    );
}

#[test]
fn non_etl_file_fails_with_clear_message() {
    let dir = std::env::temp_dir().join(format!("edr-etl-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("not.etl");
    std::fs::write(&path, vec![0x41u8; 4096]).unwrap();
    let (ok, stdout, stderr) = dump(&[path.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok);
    assert!(stdout.is_empty());
    assert!(stderr.contains("failed to open ETL file"), "{stderr}");
    assert!(
        stderr.contains("corrupt buffer header") || stderr.contains("not an ETL file"),
        "{stderr}"
    );
}
