//! The live sensor's record sink: records copied as the ETW consumer copies them reach the ring
//! buffer as the same OCSF events that the file pipeline makes from the same records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use edr_etw::{EtlReader, HeaderKind};
use edr_ocsf::Schema;
use edr_sensor::buffer::{Buffer, BufferOptions, RecordKind};
use edr_sensor::transport::lock;
use edr_windows::loader::{CopiedRecord, RecordHeader};
use edr_windows::ocsf::TraceContext;
use edr_windows::pipeline::RecordConverter;
use edr_windows::service::{BufferSink, RecordSink};
use serde_json::Value;

fn data_dir() -> PathBuf {
    std::env::var_os("EDR_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        })
}

/// Copies a record the way the consumer callback does: header fields, extended items, payload.
fn copy_like_consumer(record: &edr_etw::EventRecord<'_>) -> CopiedRecord {
    let header = RecordHeader {
        flags: record.flags,
        event_property: record.event_property,
        thread_id: record.thread_id,
        process_id: record.process_id,
        timestamp: record.timestamp.0,
        provider_id: record.provider_id.to_u128(),
        event_id: record.descriptor.id,
        version: record.descriptor.version,
        channel: record.descriptor.channel,
        level: record.descriptor.level,
        opcode: record.descriptor.opcode,
        task: record.descriptor.task,
        keyword: record.descriptor.keyword,
        processor_time: u64::from(record.kernel_time) | (u64::from(record.user_time) << 32),
        activity_id: record.activity_id.to_u128(),
        processor_index: record.processor,
        logger_id: 0,
    };
    let extended: Vec<(u16, &[u8])> = record
        .extended
        .iter()
        .map(|item| (item.ext_type, item.data))
        .collect();
    CopiedRecord::copy_from(0, header, &extended, record.user_data)
}

#[test]
fn live_records_reach_buffer_as_ocsf() {
    let data = data_dir();
    let trace = data.join("etl/microsoft-tx_Apache-2.0/Traces/Process.etl");
    let schema_dir = edr_ocsf::schema_dir(&data);
    if !trace.exists() || !schema_dir.exists() {
        eprintln!(
            "skipped: {} or the OCSF schema is missing (set EDR_DATA_DIR)",
            trace.display()
        );
        return;
    }
    let schema = Schema::load(&schema_dir).unwrap();
    let context = TraceContext {
        host_key: "boot-test".to_owned(),
        trace_start_ms: 0,
        hostname: None,
    };

    // The live path: copy, push through the sink into a real ring buffer, sync.
    let dir = tempfile::tempdir().unwrap();
    let mut options = BufferOptions::new(dir.path());
    // The drain below reads everything at once; the default rate cap would cut it short.
    options.drain_rate_bytes_per_sec = None;
    let buffer = Arc::new(Mutex::new(Buffer::open(options).unwrap()));
    let mut sink = BufferSink::new(context.clone(), Arc::clone(&buffer));
    // The file path over the same records, for comparison.
    let mut converter = RecordConverter::new(context);
    let mut expected = Vec::new();
    let mut live_records = 0u64;

    let mut reader = EtlReader::open(&trace).unwrap();
    reader
        .for_each_record(|record| {
            // A real-time session delivers EVENT_HEADER records only.
            if record.header_kind != HeaderKind::Event {
                return;
            }
            live_records += 1;
            converter.push(record, &mut expected);
            sink.append(copy_like_consumer(record)).unwrap();
        })
        .unwrap();
    converter.finish(&mut expected);
    sink.sync().unwrap();
    assert!(live_records > 1000, "only {live_records} manifest records");
    assert_eq!(sink.events_appended(), expected.len() as u64);

    drop(sink);
    let mut buffer = lock(&buffer);
    let mut stored = Vec::new();
    loop {
        let batch = buffer.drain(10_000).unwrap();
        if batch.is_empty() {
            break;
        }
        for record in batch {
            let RecordKind::Event(payload) = record.kind else {
                panic!("unexpected gap record in a buffer that never filled");
            };
            stored.push(serde_json::from_slice::<Value>(&payload).unwrap());
        }
    }

    assert_eq!(stored.len(), expected.len());
    assert!(!stored.is_empty());
    for (stored, expected) in stored.iter().zip(&expected) {
        assert_eq!(stored, &serde_json::to_value(expected).unwrap());
        if let Err(error) = schema.validate(stored) {
            panic!("{error} in {stored}");
        }
    }
    let processes = stored
        .iter()
        .filter(|event| event["class_uid"] == 1007)
        .count();
    assert!(
        processes > 0,
        "no Process Activity among {} events",
        stored.len()
    );
}
