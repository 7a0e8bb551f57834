//! Shared helpers: locating the recorded data and the schema, converting and validating.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use edr_ocsf::Schema;
use serde_json::Value;

/// `EDR_DATA_DIR`, or `<workspace>/../shared/data`.
pub(crate) fn data_dir() -> PathBuf {
    std::env::var_os("EDR_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        })
}

/// The schema, loaded once; `None` (with a printed reason) when the data is absent.
pub(crate) fn schema() -> Option<&'static Schema> {
    static SCHEMA: OnceLock<Option<Schema>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let dir = edr_ocsf::schema_dir(&data_dir());
            if !dir.join("dictionary.json").exists() {
                eprintln!(
                    "skipped: no OCSF schema at {} (set EDR_DATA_DIR)",
                    dir.display()
                );
                return None;
            }
            Some(Schema::load(&dir).expect("OCSF schema loads"))
        })
        .as_ref()
}

/// The EVTX file at `relative` under `<data>/evtx`, or `None` with a printed reason.
pub(crate) fn evtx_file(relative: &str) -> Option<PathBuf> {
    let path = data_dir().join("evtx").join(relative);
    if !path.exists() {
        eprintln!("skipped: {} not found (set EDR_DATA_DIR)", path.display());
        return None;
    }
    Some(path)
}

/// Converts `path` and returns every event as JSON, each validated against the schema.
pub(crate) fn convert_validated(path: &Path, schema: &Schema) -> Vec<Value> {
    let mut events = Vec::new();
    edr_evtx::convert_file(path, |event| {
        events.push(serde_json::to_value(&event).unwrap())
    })
    .unwrap();
    for event in &events {
        if let Err(error) = schema.validate(event) {
            panic!("{}: {error}\n{event}", path.display());
        }
    }
    events
}

/// Events of `class_uid` with `metadata.event_code` equal to `event_code`.
pub(crate) fn find<'a>(events: &'a [Value], class_uid: u64, event_code: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["class_uid"] == class_uid && e["metadata"]["event_code"] == event_code)
        .collect()
}
