//! Arbitrary payloads for every decoder. The first bytes choose the provider, event id or
//! opcode, version, pointer size and extended data, and the rest is the payload.
#![no_main]

use edr_etw::{EventDescriptor, EventRecord, ExtendedData, FileTime, Guid, HeaderKind, PointerSize};
use edr_windows::events::{Decoder, providers};
use libfuzzer_sys::fuzz_target;

const TARGETS: [(Guid, bool); 15] = [
    (providers::KERNEL_PROCESS_GROUP, true),
    (providers::KERNEL_THREAD_GROUP, true),
    (providers::KERNEL_IMAGE_GROUP, true),
    (providers::KERNEL_FILE_GROUP, true),
    (providers::KERNEL_TCPIP_GROUP, true),
    (providers::KERNEL_UDPIP_GROUP, true),
    (providers::KERNEL_REGISTRY_GROUP, true),
    (providers::KERNEL_PROCESS, false),
    (providers::KERNEL_NETWORK, false),
    (providers::KERNEL_FILE, false),
    (providers::KERNEL_REGISTRY, false),
    (providers::DNS_CLIENT, false),
    (providers::POWERSHELL, false),
    (providers::AMSI, false),
    (providers::AMSI_TRACELOGGING, false),
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (provider, kernel) = TARGETS[usize::from(data[0]) % TARGETS.len()];
    let id = u16::from_le_bytes([data[1], data[2]]);
    let version = data[3] % 8;
    let pointer_size = if data[4] & 1 == 0 { PointerSize::Bits32 } else { PointerSize::Bits64 };
    let ext_len = usize::from(data[5]).min(data.len() - 8);
    let ext_area = &data[8..8 + ext_len];
    let extended = ExtendedData::parse(ext_area).map(|(e, _)| e).unwrap_or_default();
    let record = EventRecord {
        header_kind: if kernel { HeaderKind::System } else { HeaderKind::Event },
        provider_id: provider,
        descriptor: EventDescriptor { id, version, opcode: id as u8, ..EventDescriptor::default() },
        hook_id: 0,
        flags: 0,
        event_property: 0,
        thread_id: 1,
        process_id: 2,
        timestamp_raw: 0,
        timestamp: FileTime(0),
        processor: 0,
        kernel_time: 0,
        user_time: 0,
        activity_id: Guid::NIL,
        pointer_size,
        extended,
        user_data: &data[8 + ext_len..],
    };
    let mut decoder = Decoder::new();
    let _ = decoder.decode(&record);
});
