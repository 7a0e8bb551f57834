//! Arbitrary bytes as an ETL file: the reader must end in an error or a counted skip.
#![no_main]

use std::io::Cursor;

use edr_etw::{EtlReader, ReaderLimits, tracelogging};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ReaderLimits { max_buffer_size: 1 << 20, max_recorded_skips: 8 };
    let Ok(mut reader) = EtlReader::with_limits(Cursor::new(data), limits) else {
        return;
    };
    let _ = reader.for_each_record(|record| {
        let _ = record.extended.iter().count();
        let _ = record.extended.stack_trace();
        if let Some(metadata) = record.extended.tracelogging_schema() {
            if let Ok(schema) = tracelogging::parse_event_schema(metadata) {
                let _ = tracelogging::decode_payload(&schema, record.user_data, record.pointer_size.bytes());
            }
        }
    });
});
