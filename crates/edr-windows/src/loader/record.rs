//! The consumer's owned copy of an ETW event record.
//!
//! The ETW callback may not keep pointers into `EVENT_RECORD` after it returns, so it copies the
//! header fields, the extended data items and the payload into a [`CopiedRecord`] and nothing
//! else: decoding and OCSF mapping run on other threads.
//!
//! A record makes one heap allocation for its bytes: the extended data items come first, then the
//! payload, in a single buffer sized exactly before copying. The item table is a second, small
//! allocation only when the record has extended data.
//!
//! NOTE: this type is converted into the record type of the `edr-etw` crate once that crate is
//! part of the workspace; until then it is the loader's output.

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

/// Where one extended data item sits in [`CopiedRecord`]'s byte buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExtendedItemSpan {
    ext_type: u16,
    start: u32,
    len: u16,
}

/// An event record copied out of the ETW callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedRecord {
    /// Index of the loader session that delivered the record (see `SessionKind::index`).
    pub session_index: u8,
    pub header: RecordHeader,
    extended: Vec<ExtendedItemSpan>,
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
        let extended_len: usize = extended.iter().map(|(_, data)| data.len()).sum();
        let mut bytes = Vec::with_capacity(extended_len + payload.len());
        let mut spans = Vec::with_capacity(extended.len());

        for (ext_type, data) in extended {
            // `EVENT_HEADER_EXTENDED_DATA_ITEM.DataSize` is a u16 and a record is at most 64 KiB,
            // so neither conversion truncates for input that came from ETW; longer test input
            // is cut to what the span can describe.
            let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
            let start = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            bytes.extend_from_slice(&data[..usize::from(len)]);
            spans.push(ExtendedItemSpan {
                ext_type: *ext_type,
                start,
                len,
            });
        }

        let payload_start = bytes.len();
        bytes.extend_from_slice(payload);
        Self {
            session_index,
            header,
            extended: spans,
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
        self.extended.iter().map(|span| {
            let start = span.start as usize;
            (
                span.ext_type,
                &self.bytes[start..start + usize::from(span.len)],
            )
        })
    }

    /// Bytes this record holds on the heap, used for the queue's memory bound.
    pub fn heap_size(&self) -> usize {
        self.bytes.capacity() + self.extended.capacity() * size_of::<ExtendedItemSpan>()
    }
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
        assert_eq!(record.bytes.capacity(), 110);
        assert_eq!(record.payload().len(), 100);
    }

    #[test]
    fn copy_of_empty_record() {
        let record = CopiedRecord::copy_from(0, RecordHeader::default(), &[], &[]);
        assert!(record.payload().is_empty());
        assert_eq!(record.extended_items().count(), 0);
    }
}
