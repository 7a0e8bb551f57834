//! PowerShell script blocks split over several 4104 records are reassembled; built from records
//! made here, because the recorded data has no multi-part block.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use edr_evtx::Converter;
use edr_evtx::record::Record;
use serde_json::json;

fn part(record_id: u64, number: u32, total: u32, id: &str, text: &str) -> Record {
    let value = json!({"Event": {"System": {
        "Provider": {"#attributes": {"Name": "Microsoft-Windows-PowerShell"}},
        "EventID": 4104,
        "Channel": "Microsoft-Windows-PowerShell/Operational",
        "Computer": "host.example.org",
        "TimeCreated": {"#attributes": {"SystemTime": "2024-01-01T00:00:00.0000000Z"}},
        "Execution": {"#attributes": {"ProcessID": 100, "ThreadID": 101}},
        "Security": {"#attributes": {"UserID": "S-1-5-21-1-2-3-1001"}}
    }, "EventData": {
        "MessageNumber": number, "MessageTotal": total, "ScriptBlockText": text,
        "ScriptBlockId": id, "Path": "C:\\scripts\\long.ps1"
    }}});
    Record::from_json(value, record_id, 1_704_067_200_000 + record_id as i64).unwrap()
}

#[test]
fn parts_out_of_order_reassemble() {
    let mut converter = Converter::new();
    let mut out = Vec::new();
    converter.convert(part(12, 2, 3, "b1", "BBB"), &mut out);
    converter.convert(part(11, 1, 3, "b1", "AAA"), &mut out);
    assert!(out.is_empty(), "no event before the last part");
    converter.convert(part(13, 3, 3, "b1", "CCC"), &mut out);
    assert_eq!(out.len(), 1);

    let event = serde_json::to_value(&out[0]).unwrap();
    assert_eq!(event["script"]["script_content"]["value"], "AAABBBCCC");
    assert!(
        event["script"]["script_content"]
            .get("is_truncated")
            .is_none()
    );
    assert_eq!(event["script"]["uid"], "b1");
    assert_eq!(event["script"]["name"], "long.ps1");
    assert_eq!(
        event["metadata"]["uid"], "11",
        "the first part's header is kept"
    );
    if let Some(schema) = common::schema() {
        schema.validate(&event).unwrap();
    }
}

#[test]
fn incomplete_block_flushed_truncated() {
    let mut converter = Converter::new();
    let mut out = Vec::new();
    converter.convert(part(1, 1, 3, "b2", "AAA"), &mut out);
    converter.convert(part(3, 3, 3, "b2", "CCC"), &mut out);
    converter.convert(part(4, 1, 1, "b3", "single"), &mut out);
    assert_eq!(out.len(), 1, "single-part blocks are emitted at once");
    converter.finish(&mut out);
    assert_eq!(out.len(), 2);

    let event = serde_json::to_value(&out[1]).unwrap();
    assert_eq!(event["script"]["script_content"]["value"], "AAACCC");
    assert_eq!(event["script"]["script_content"]["is_truncated"], true);
    assert_eq!(event["unmapped"]["MissingMessageNumbers"], json!([2]));
    assert_eq!(converter.stats().truncated_script_blocks, 1);
    if let Some(schema) = common::schema() {
        schema.validate(&event).unwrap();
    }
}

#[test]
fn unmapped_record_keeps_fields() {
    let value = json!({"Event": {"System": {
        "Provider": {"#attributes": {"Name": "Custom-Provider"}},
        "EventID": 4242, "Channel": "Application", "Computer": "h"
    }, "EventData": {"Answer": 42, "Text": "kept"}}});
    let mut converter = Converter::new();
    let mut out = Vec::new();
    converter.convert(Record::from_json(value, 1, 0).unwrap(), &mut out);
    let event = serde_json::to_value(&out[0]).unwrap();
    assert_eq!(event["class_uid"], 0);
    assert_eq!(event["activity_name"], "Application 4242");
    assert_eq!(event["unmapped"], json!({"Answer": 42, "Text": "kept"}));
    assert_eq!(
        converter
            .stats()
            .unmapped
            .get(&("Application".to_owned(), 4242)),
        Some(&1)
    );
    if let Some(schema) = common::schema() {
        schema.validate(&event).unwrap();
    }
}

#[test]
fn huge_message_total_lists_bounded_gaps() {
    // A damaged or crafted record can claim 2^32 - 1 parts: listing every gap would take
    // gigabytes.
    let mut converter = Converter::new();
    let mut out = Vec::new();
    converter.convert(part(1, 2, u32::MAX, "b4", "BBB"), &mut out);
    converter.finish(&mut out);
    assert_eq!(out.len(), 1);

    let event = serde_json::to_value(&out[0]).unwrap();
    let listed = event["unmapped"]["MissingMessageNumbers"]
        .as_array()
        .unwrap();
    assert_eq!(listed.len(), 1024);
    assert_eq!(listed[0], 1);
    assert_eq!(listed[1], 3);
    assert_eq!(
        event["unmapped"]["MissingMessageCount"],
        json!(u64::from(u32::MAX) - 1)
    );
    assert_eq!(event["script"]["script_content"]["is_truncated"], true);
}
