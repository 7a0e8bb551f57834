//! Locating the recorded traces shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Root of the recorded data: `EDR_DATA_DIR`, or `<workspace>/../shared/data`.
pub(crate) fn data_dir() -> PathBuf {
    match std::env::var_os("EDR_DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    }
}

/// Every `.etl` file under `<data>/etl`, sorted, as (path relative to the data dir, full path);
/// `None` (after printing why) when the data is absent.
pub(crate) fn etl_files() -> Option<Vec<(String, PathBuf)>> {
    let root = data_dir();
    let etl = root.join("etl");
    if !etl.is_dir() {
        println!(
            "skipped: no recorded ETL data at {} (set EDR_DATA_DIR)",
            etl.display()
        );
        return None;
    }
    let mut out = Vec::new();
    let mut stack = vec![etl];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "etl") {
                let relative = path
                    .strip_prefix(&root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((relative, path));
            }
        }
    }
    out.sort();
    Some(out)
}
