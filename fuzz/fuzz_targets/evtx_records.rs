//! Arbitrary bytes as an EVTX file, read the way `edr-windows convert` reads one: the reader
//! must end in an error or counted skips, and the converter must map whatever it reads.
//!
//! The same bytes are also read with every record rendered to JSON, the reference that the
//! template reader must match. Where both methods produce records with one record id, those
//! records must be equal, which makes this a differential test of the template reader.
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;

use edr_evtx::Converter;
use edr_evtx::record::Record;
use edr_evtx::source::{RecordBuild, read_file_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The reader takes a path only, so each input goes through one file per fuzzing process.
    let path = input_path();
    if std::fs::write(&path, data).is_err() {
        return;
    }

    let mut converter = Converter::new();
    let mut events = Vec::new();
    let mut from_templates: BTreeMap<u64, Vec<Record>> = BTreeMap::new();
    let tokens = read_file_with(&path, RecordBuild::Tokens, |record| {
        from_templates.entry(record.record_id).or_default().push(record.clone());
        converter.convert(record, &mut events);
        events.clear();
    });
    converter.finish(&mut events);
    let Ok(tokens) = tokens else {
        return;
    };

    let mut from_json: BTreeMap<u64, Vec<Record>> = BTreeMap::new();
    let json = read_file_with(&path, RecordBuild::Json, |record| {
        from_json.entry(record.record_id).or_default().push(record);
    })
    .expect("the file opened for the template read opens again");

    // Chunk damage does not depend on how records are built.
    assert_eq!(tokens.skipped_chunks, json.skipped_chunks);
    // The template reader may build a record the JSON renderer rejects (its render budget is
    // not charged), never the other way round.
    assert!(tokens.records >= json.records, "template read lost records: {tokens:?} {json:?}");

    for (record_id, json_records) in &from_json {
        let Some(template_records) = from_templates.get(record_id) else {
            panic!("record {record_id} read from JSON only");
        };
        // Unequal counts mean one method skipped a record of a repeated id, so records cannot
        // be paired by position.
        if template_records.len() != json_records.len() {
            continue;
        }
        for (built, reference) in template_records.iter().zip(json_records) {
            assert_eq!(built, reference, "record {record_id} differs between methods");
        }
    }
});

fn input_path() -> PathBuf {
    std::env::temp_dir().join(format!("edr-fuzz-evtx-{}.evtx", std::process::id()))
}
