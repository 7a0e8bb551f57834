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
        }
    }
    println!("{:?}", reader.stats());
}
