//! The event record model: what `ProcessTrace` hands an `EVENT_RECORD` callback, with the
//! payload borrowed from the buffer it was read from.

use crate::bytes::ByteReader;
use crate::guid::Guid;
use crate::time::FileTime;

/// Width of pointers (and `SIZE_T`, `HANDLE`) in the event's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum PointerSize {
    /// 32-bit writer or 32-bit header.
    Bits32,
    /// 64-bit writer or 64-bit header.
    Bits64,
}

impl PointerSize {
    /// Size in bytes (4 or 8).
    pub fn bytes(self) -> usize {
        match self {
            PointerSize::Bits32 => 4,
            PointerSize::Bits64 => 8,
        }
    }
}

/// The header kind an event was written with, from the `HeaderType` byte of its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum HeaderKind {
    /// `SYSTEM_TRACE_HEADER`, 32 bytes: NT Kernel Logger event with thread, process and CPU times.
    System,
    /// `SYSTEM_TRACE_HEADER` compact form, 24 bytes: no CPU times.
    SystemCompact,
    /// `PERFINFO_TRACE_HEADER`, 16 bytes: kernel event without thread or process id.
    Perfinfo,
    /// `EVENT_TRACE_HEADER`, 48 bytes: classic (MOF) event identified by class GUID and type.
    Classic,
    /// `EVENT_INSTANCE_HEADER`, 56 bytes: classic instance event identified by registration handle.
    Instance,
    /// `EVENT_HEADER`, 80 bytes plus extended data: manifest or TraceLogging event.
    Event,
    /// `MESSAGE_TRACE_HEADER`, 8 bytes plus optional fields: WPP trace message, identified by
    /// message number (`descriptor.id`) and, when recorded, a message GUID.
    Message,
}

impl HeaderKind {
    /// Returns the name used by the ETW headers and by ETL inventories.
    pub fn name(self) -> &'static str {
        match self {
            HeaderKind::System | HeaderKind::SystemCompact => "SYSTEM_TRACE_HEADER",
            HeaderKind::Perfinfo => "PERFINFO_TRACE_HEADER",
            HeaderKind::Classic => "EVENT_TRACE_HEADER",
            HeaderKind::Instance => "EVENT_INSTANCE_HEADER",
            HeaderKind::Event => "EVENT_HEADER",
            HeaderKind::Message => "MESSAGE_TRACE_HEADER",
        }
    }

    /// Whether this is an NT Kernel Logger header whose provider is given by a hook id.
    pub fn is_kernel(self) -> bool {
        matches!(
            self,
            HeaderKind::System | HeaderKind::SystemCompact | HeaderKind::Perfinfo
        )
    }
}

/// `EVENT_DESCRIPTOR`: identity of an event within its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct EventDescriptor {
    /// Event id; 0 for classic and kernel events.
    pub id: u16,
    /// Layout version of the payload.
    pub version: u8,
    /// Event log channel.
    pub channel: u8,
    /// Severity level.
    pub level: u8,
    /// Opcode; the event type for classic and kernel events.
    pub opcode: u8,
    /// Task.
    pub task: u16,
    /// Keyword bit mask.
    pub keyword: u64,
}

/// `EVENT_HEADER_FLAG_*` bits of [`EventRecord::flags`].
pub mod flags {
    /// Extended data items follow the header.
    pub const EXTENDED_INFO: u16 = 0x0001;
    /// The event came from a private session.
    pub const PRIVATE_SESSION: u16 = 0x0002;
    /// The payload is a NUL-terminated UTF-16 string.
    pub const STRING_ONLY: u16 = 0x0004;
    /// The event is a WPP trace message.
    pub const TRACE_MESSAGE: u16 = 0x0008;
    /// No kernel or user CPU time was recorded.
    pub const NO_CPUTIME: u16 = 0x0010;
    /// The writer used 32-bit pointers.
    pub const HEADER_32_BIT: u16 = 0x0020;
    /// The writer used 64-bit pointers.
    pub const HEADER_64_BIT: u16 = 0x0040;
    /// The event came from a classic or kernel header.
    pub const CLASSIC_HEADER: u16 = 0x0100;
    /// The processor field is a processor index.
    pub const PROCESSOR_INDEX: u16 = 0x0200;
}

/// `EVENT_HEADER_EXT_TYPE_*` values of [`ExtendedItem::ext_type`].
pub mod ext_type {
    /// Related activity id (GUID).
    pub const RELATED_ACTIVITY_ID: u16 = 1;
    /// Security identifier of the writing thread.
    pub const SID: u16 = 2;
    /// Terminal session id (u32).
    pub const TS_ID: u16 = 3;
    /// Instance information.
    pub const INSTANCE_INFO: u16 = 4;
    /// Call stack, 32-bit frames after a u64 match id.
    pub const STACK_TRACE32: u16 = 5;
    /// Call stack, 64-bit frames after a u64 match id.
    pub const STACK_TRACE64: u16 = 6;
    /// Provider-defined event key (u64).
    pub const EVENT_KEY: u16 = 10;
    /// TraceLogging event metadata.
    pub const EVENT_SCHEMA_TL: u16 = 11;
    /// Provider traits, including the provider name.
    pub const PROV_TRAITS: u16 = 12;
    /// Process start key (u64), unique per boot.
    pub const PROCESS_START_KEY: u16 = 13;
    /// Control GUID of the provider.
    pub const CONTROL_GUID: u16 = 14;
    /// Container id (GUID).
    pub const CONTAINER_ID: u16 = 16;
}

/// One `EVENT_HEADER_EXTENDED_DATA_ITEM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtendedItem<'a> {
    /// One of the [`ext_type`] values.
    pub ext_type: u16,
    /// Item bytes.
    pub data: &'a [u8],
}

/// The extended data items of an `EVENT_HEADER` event, validated when the record was read.
///
/// On disk each item is `u16 size` (header and padding included), `u16 ext_type`,
/// `u16 linkage` (1 when another item follows), `u16 data_size`, then the data, 8-byte aligned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtendedData<'a> {
    raw: &'a [u8],
}

impl<'a> ExtendedData<'a> {
    /// Walks the item chain at the start of `area`, returning the items and the byte count they
    /// use, or `None` when an item's sizes do not fit.
    pub fn parse(area: &'a [u8]) -> Option<(Self, usize)> {
        let mut at = 0usize;
        loop {
            let mut cursor = ByteReader::new(area.get(at..)?);
            let size = usize::from(cursor.u16()?);
            let _ext_type = cursor.u16()?;
            let linkage = cursor.u16()?;
            let data_size = usize::from(cursor.u16()?);
            if size < 8 || data_size > size - 8 || at + size > area.len() {
                return None;
            }
            at += size;
            if linkage & 1 == 0 {
                break;
            }
        }
        Some((ExtendedData { raw: &area[..at] }, at))
    }

    /// Iterates the items in order.
    pub fn iter(&self) -> impl Iterator<Item = ExtendedItem<'a>> + use<'a> {
        let raw = self.raw;
        let mut at = 0usize;
        std::iter::from_fn(move || {
            let mut cursor = ByteReader::new(raw.get(at..)?);
            let size = usize::from(cursor.u16()?);
            let ext_type = cursor.u16()?;
            let _linkage = cursor.u16()?;
            let data_size = usize::from(cursor.u16()?);
            let data = cursor.bytes(data_size)?;
            if size < 8 {
                return None;
            }
            at += size;
            Some(ExtendedItem { ext_type, data })
        })
    }

    /// Returns `true` when the event has no extended data.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Data of the first item of `ext_type`.
    pub fn find(&self, ext_type: u16) -> Option<&'a [u8]> {
        self.iter().find(|i| i.ext_type == ext_type).map(|i| i.data)
    }

    /// Related activity id.
    pub fn related_activity_id(&self) -> Option<Guid> {
        ByteReader::new(self.find(ext_type::RELATED_ACTIVITY_ID)?).guid()
    }

    /// Security identifier in its binary `SID` form.
    pub fn sid(&self) -> Option<&'a [u8]> {
        self.find(ext_type::SID)
    }

    /// TraceLogging event metadata, decoded by [`crate::tracelogging`].
    pub fn tracelogging_schema(&self) -> Option<&'a [u8]> {
        self.find(ext_type::EVENT_SCHEMA_TL)
    }

    /// Provider traits blob.
    pub fn provider_traits(&self) -> Option<&'a [u8]> {
        self.find(ext_type::PROV_TRAITS)
    }

    /// Process start key.
    pub fn process_start_key(&self) -> Option<u64> {
        ByteReader::new(self.find(ext_type::PROCESS_START_KEY)?).u64()
    }

    /// Call stack: the match id and the return addresses.
    pub fn stack_trace(&self) -> Option<(u64, Vec<u64>)> {
        let (data, width) = match self.find(ext_type::STACK_TRACE64) {
            Some(d) => (d, 8),
            None => (self.find(ext_type::STACK_TRACE32)?, 4),
        };
        let mut cursor = ByteReader::new(data);
        let match_id = cursor.u64()?;
        let mut frames = Vec::with_capacity(cursor.remaining().len() / width);
        while let Some(frame) = cursor.pointer(width) {
            frames.push(frame);
        }
        Some((match_id, frames))
    }
}

/// One event as `ProcessTrace` would deliver it.
///
/// Kernel events (`SYSTEM_TRACE_HEADER`, `PERFINFO_TRACE_HEADER`) get the provider GUID of their
/// hook id group (for example `Process` → `3d6fa8d0-fe05-11d0-9dda-00c04fd7ba7c`), the event
/// type as `descriptor.opcode` and the header version as `descriptor.version`, as ETW does.
#[derive(Debug, Clone, Copy)]
pub struct EventRecord<'a> {
    /// Header kind the event was written with.
    pub header_kind: HeaderKind,
    /// Provider GUID (class GUID for classic events, group GUID for kernel events; nil when
    /// unknown, as for instance headers).
    pub provider_id: Guid,
    /// Event descriptor.
    pub descriptor: EventDescriptor,
    /// Kernel hook id (`group << 8 | type`) for kernel headers, 0 otherwise.
    pub hook_id: u16,
    /// `EVENT_HEADER_FLAG_*` bits, see [`flags`].
    pub flags: u16,
    /// `EVENT_HEADER_PROPERTY_*` bits.
    pub event_property: u16,
    /// Writing thread id; `u32::MAX` when the header carries none (`PERFINFO_TRACE_HEADER`).
    pub thread_id: u32,
    /// Writing process id; `u32::MAX` when the header carries none (`PERFINFO_TRACE_HEADER`).
    pub process_id: u32,
    /// Timestamp in the session's clock (QPC ticks, FILETIME or CPU cycles).
    pub timestamp_raw: i64,
    /// Timestamp converted to UTC.
    pub timestamp: FileTime,
    /// Processor that wrote the buffer.
    pub processor: u16,
    /// Kernel CPU time in clock units, 0 when absent.
    pub kernel_time: u32,
    /// User CPU time in clock units, 0 when absent.
    pub user_time: u32,
    /// Activity id (nil when absent).
    pub activity_id: Guid,
    /// Pointer width of the payload.
    pub pointer_size: PointerSize,
    /// Extended data items.
    pub extended: ExtendedData<'a>,
    /// Payload (`UserData`).
    pub user_data: &'a [u8],
}

impl EventRecord<'_> {
    /// Kernel group of a kernel event ([`crate::kernel::hook_group`]).
    pub fn kernel_group(&self) -> Option<u8> {
        self.header_kind
            .is_kernel()
            .then_some(crate::kernel::hook_group(self.hook_id))
    }
}
