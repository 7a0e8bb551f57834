//! The consumer's owned copy of an ETW event record.
//!
//! The ETW callback may not keep pointers into `EVENT_RECORD` after it returns, so it copies the
//! header fields, the extended data items and the payload into a [`CopiedRecord`] and nothing
//! else: decoding and OCSF mapping run on other threads.
//!
//! A record makes one heap allocation for its bytes: the extended data items come first, in the
//! item layout an ETL file uses, then the payload, in a single buffer sized exactly before
//! copying. [`CopiedRecord::event_record`] therefore lends the record to the decoders as the same
//! [`edr_etw::EventRecord`] the ETL reader produces, without another copy.

use edr_etw::record::{EventDescriptor, ExtendedData, HeaderKind, PointerSize, flags};
use edr_etw::{FileTime, Guid};

/// Bytes before each extended data item: size, type, linkage and data size, each a u16.
const ITEM_HEADER_LEN: usize = 8;

/// Largest item data that still fits the u16 item size after header and padding.
const MAX_ITEM_DATA: usize = u16::MAX as usize - ITEM_HEADER_LEN - 7;

/// The fixed part of `EVENT_HEADER`, `EVENT_DESCRIPTOR` and `ETW_BUFFER_CONTEXT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// `EVENT_HEADER.Flags` (`EVENT_HEADER_FLAG_*`).
    pub flags: u16,
    /// `EVENT_HEADER.EventProperty`.
    pub event_property: u16,
    pub thread_id: u32,
    pub process_id: u32,
    /// Timestamp in 100 ns units since 1601-01-01 UTC (FILETIME), as delivered by a real-time
    /// session without `PROCESS_TRACE_MODE_RAW_TIMESTAMP`.
    pub timestamp: i64,
    /// Provider GUID in the usual textual order.
    pub provider_id: u128,
    pub event_id: u16,
    pub version: u8,
    pub channel: u8,
    pub level: u8,
    pub opcode: u8,
    pub task: u16,
    pub keyword: u64,
    /// Kernel and user processor time, or `ProcessorTime` for private sessions.
    pub processor_time: u64,
    pub activity_id: u128,
    /// Processor that logged the event (`BufferContext.ProcessorIndex`).
    pub processor_index: u16,
    /// `BufferContext.LoggerId`.
    pub logger_id: u16,
}

/// An event record copied out of the ETW callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedRecord {
    /// Index of the loader session that delivered the record (see `SessionKind::index`).
    pub session_index: u8,
    pub header: RecordHeader,
    /// Extended data items in the ETL item layout, then the payload.
    bytes: Vec<u8>,
    payload_start: usize,
}

impl CopiedRecord {
    /// Copies a record from borrowed parts: `(ExtType, data)` per extended data item, then the
    /// payload (`UserData`). Allocates once for all bytes.
    pub fn copy_from(
        session_index: u8,
        header: RecordHeader,
        extended: &[(u16, &[u8])],
        payload: &[u8],
    ) -> Self {
        let extended_len: usize = extended
            .iter()
            .map(|(_, data)| item_len(data.len().min(MAX_ITEM_DATA)))
            .sum();
        let mut bytes = Vec::with_capacity(extended_len + payload.len());

        for (index, (ext_type, data)) in extended.iter().enumerate() {
            // `EVENT_HEADER_EXTENDED_DATA_ITEM.DataSize` is a u16 and a record is at most 64 KiB,
            // so input that came from ETW is never cut; longer test input is cut to what the
            // item layout can describe.
            let data = &data[..data.len().min(MAX_ITEM_DATA)];
            let size = item_len(data.len());
            let linkage = u16::from(index + 1 < extended.len());
            // Both conversions hold because `data` is at most MAX_ITEM_DATA bytes.
            bytes.extend_from_slice(&(size as u16).to_le_bytes());
            bytes.extend_from_slice(&ext_type.to_le_bytes());
            bytes.extend_from_slice(&linkage.to_le_bytes());
            bytes.extend_from_slice(&(data.len() as u16).to_le_bytes());
            bytes.extend_from_slice(data);
            bytes.resize(bytes.len() + size - ITEM_HEADER_LEN - data.len(), 0);
        }

        let payload_start = bytes.len();
        bytes.extend_from_slice(payload);
        Self {
            session_index,
            header,
            bytes,
            payload_start,
        }
    }

    /// The payload (`UserData`).
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.payload_start..]
    }

    /// The extended data items as `(ExtType, data)`, in the order ETW delivered them.
    pub fn extended_items(&self) -> impl Iterator<Item = (u16, &[u8])> + '_ {
        self.extended_data()
            .iter()
            .map(|item| (item.ext_type, item.data))
    }

    /// Lends the record to the decoders in the form the ETL reader produces.
    pub fn event_record(&self) -> edr_etw::EventRecord<'_> {
        let header = &self.header;
        let pointer_size = if header.flags & flags::HEADER_32_BIT != 0 {
            PointerSize::Bits32
        } else {
            PointerSize::Bits64
        };
        edr_etw::EventRecord {
            header_kind: HeaderKind::Event,
            provider_id: Guid::from_u128(header.provider_id),
            descriptor: EventDescriptor {
                id: header.event_id,
                version: header.version,
                channel: header.channel,
                level: header.level,
                opcode: header.opcode,
                task: header.task,
                keyword: header.keyword,
            },
            hook_id: 0,
            flags: header.flags,
            event_property: header.event_property,
            thread_id: header.thread_id,
            process_id: header.process_id,
            timestamp_raw: header.timestamp,
            // A real-time session delivers FILETIME unless raw timestamps are requested.
            timestamp: FileTime(header.timestamp),
            processor: header.processor_index,
            // `EVENT_HEADER` overlays KernelTime (low half) and UserTime on ProcessorTime.
            kernel_time: header.processor_time as u32,
            user_time: (header.processor_time >> 32) as u32,
            activity_id: Guid::from_u128(header.activity_id),
            pointer_size,
            extended: self.extended_data(),
            user_data: self.payload(),
        }
    }

    /// Bytes this record holds on the heap, used for the queue's memory bound.
    pub fn heap_size(&self) -> usize {
        self.bytes.capacity()
    }

    fn extended_data(&self) -> ExtendedData<'_> {
        // `copy_from` wrote a well-formed item chain, so parsing fails only when there is none.
        ExtendedData::parse(&self.bytes[..self.payload_start])
            .map(|(items, _)| items)
            .unwrap_or_default()
    }
}

/// Bytes one extended data item takes: header, data, padding to 8 bytes.
fn item_len(data_len: usize) -> usize {
    (ITEM_HEADER_LEN + data_len).next_multiple_of(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_keeps_extended_items_and_payload() {
        let header = RecordHeader {
            event_id: 1,
            process_id: 4242,
            ..RecordHeader::default()
        };
        let sid = [1u8, 5, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];
        let start_key = 7u64.to_le_bytes();
        let record = CopiedRecord::copy_from(0, header, &[(2, &sid), (13, &start_key)], b"payload");

        assert_eq!(record.header.process_id, 4242);
        assert_eq!(record.payload(), b"payload");
        let items: Vec<_> = record.extended_items().collect();
        assert_eq!(items, vec![(2, &sid[..]), (13, &start_key[..])]);
    }

    #[test]
    fn copy_allocates_bytes_once_and_exactly() {
        let record =
            CopiedRecord::copy_from(1, RecordHeader::default(), &[(4, &[0u8; 10])], &[9u8; 100]);
        // One item: 8-byte header, 10 data bytes, 6 bytes of padding; then the payload.
        assert_eq!(record.bytes.capacity(), 24 + 100);
        assert_eq!(record.payload().len(), 100);
    }

    #[test]
    fn event_record_matches_header() {
        let header = RecordHeader {
            flags: flags::EXTENDED_INFO,
            process_id: 4242,
            thread_id: 7,
            timestamp: 133_000_000_000_000_000,
            provider_id: 0x22fb2cd6_0e7b_422b_a0c7_2fad1fd0e716,
            event_id: 1,
            version: 3,
            opcode: 1,
            processor_time: 5 | (9 << 32),
            ..RecordHeader::default()
        };
        let start_key = 7u64.to_le_bytes();
        let record = CopiedRecord::copy_from(0, header, &[(13, &start_key)], b"payload");
        let event = record.event_record();

        assert_eq!(event.header_kind, HeaderKind::Event);
        assert_eq!(event.provider_id.to_u128(), header.provider_id);
        assert_eq!(event.descriptor.id, 1);
        assert_eq!(event.descriptor.version, 3);
        assert_eq!(event.process_id, 4242);
        assert_eq!(event.thread_id, 7);
        assert_eq!(event.timestamp, FileTime(133_000_000_000_000_000));
        assert_eq!(event.kernel_time, 5);
        assert_eq!(event.user_time, 9);
        assert_eq!(event.pointer_size, PointerSize::Bits64);
        assert_eq!(event.user_data, b"payload");
        let items: Vec<_> = event.extended.iter().collect();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].ext_type, 13);
        assert_eq!(items[0].data, &start_key[..]);
    }

    #[test]
    fn event_record_of_32_bit_writer() {
        let header = RecordHeader {
            flags: flags::HEADER_32_BIT,
            ..RecordHeader::default()
        };
        let record = CopiedRecord::copy_from(0, header, &[], &[1, 2, 3, 4]);
        assert_eq!(record.event_record().pointer_size, PointerSize::Bits32);
    }

    #[test]
    fn copy_of_empty_record() {
        let record = CopiedRecord::copy_from(0, RecordHeader::default(), &[], &[]);
        assert!(record.payload().is_empty());
        assert_eq!(record.extended_items().count(), 0);
    }
}
