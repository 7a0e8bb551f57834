//! Prints every record header of an ETL file, for exploring a trace.
#![allow(clippy::unwrap_used)]
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let mut reader = edr_etw::EtlReader::open(path.as_ref()).unwrap();
    println!("{:?}", reader.header());
    while let Some(mut buffer) = reader.next_buffer().unwrap() {
        let (offset, header) = (buffer.offset(), *buffer.header());
        println!("buffer @{offset} {header:?}");
        for r in buffer.records() {
            println!(
                "  {:?} {} hook={:#06x} id={} v={} op={} pid={} tid={} len={} ts={}",
                r.header_kind,
                r.provider_id,
                r.hook_id,
                r.descriptor.id,
                r.descriptor.version,
                r.descriptor.opcode,
                r.process_id,
                r.thread_id,
                r.user_data.len(),
                r.timestamp
            );
            if let Some(meta) = r.extended.tracelogging_schema() {
                let schema = edr_etw::tracelogging::parse_event_schema(meta).unwrap();
                let values = edr_etw::tracelogging::decode_payload(&schema, r.user_data, 8);
                println!(
                    "    TL {} {:?}",
                    schema.name,
                    schema
                        .fields
                        .iter()
                        .map(|f| (f.name, f.in_type, f.out_type))
                        .collect::<Vec<_>>()
                );
                let text = format!("{values:?}");
                println!("    {}", text.chars().take(700).collect::<String>());
            }
            if std::env::var_os("ETL_HEX").is_some() {
                let hex: String = r
                    .user_data
                    .iter()
                    .take(96)
                    .map(|b| format!("{b:02x}"))
                    .collect();
                println!("    {hex}");
            }
            if std::env::var_os("ETL_TEXT").is_some() {
                let text: String = r
                    .user_data
                    .iter()
                    .take(600)
                    .map(|&b| {
                        if b.is_ascii_graphic() || b == b' ' {
                            b as char
                        } else {
                            '.'
                        }
                    })
                    .collect();
                println!("    {text}");
            }
        }
    }
    println!("{:?}", reader.stats());
}
