//! Fixed headers of an ETL file: `WMI_BUFFER_HEADER` at the start of every buffer and
//! `TRACE_LOGFILE_HEADER`, the payload of the first event of the first buffer.

use crate::bytes::ByteReader;
use crate::record::PointerSize;
use crate::time::FileTime;

/// Size of `WMI_BUFFER_HEADER`; events start at this offset in every buffer.
pub const BUFFER_HEADER_SIZE: usize = 72;

/// `BufferFlag` bit set on buffers whose events are Xpress LZ77 compressed.
pub const BUFFER_FLAG_COMPRESSED: u16 = 0x0040;

/// `WMI_BUFFER_HEADER`, the 72 bytes at the start of every buffer.
///
/// Layout (offsets in bytes): 0 `BufferSize` (bytes the buffer takes in the file), 4
/// `SavedOffset`, 8 `CurrentOffset`, 12 `ReferenceCount`, 16 `TimeStamp`, 24 `SequenceNumber`,
/// 32 clock type and frequency, 40 `ProcessorNumber` (u8), 41 alignment, 42 `LoggerId` (u16),
/// 44 `BufferState`, 48 `Offset` (bytes filled, header included), 52 `BufferFlag` (u16), 54
/// `BufferType` (u16), 56 16 reserved bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BufferHeader {
    /// Bytes the buffer takes in the file (compressed size for compressed buffers).
    pub buffer_size: u32,
    /// Saved offset.
    pub saved_offset: u32,
    /// Offset of the next free byte when the buffer was flushed.
    pub current_offset: u32,
    /// Timestamp of the flush in the session clock.
    pub timestamp: i64,
    /// Sequence number of the buffer in the session.
    pub sequence_number: i64,
    /// Processor whose events the buffer holds.
    pub processor: u8,
    /// Logger id of the session.
    pub logger_id: u16,
    /// Buffer state.
    pub state: u32,
    /// Bytes of event data, header included, once decompressed.
    pub filled: u32,
    /// `BufferFlag` bits (see [`BUFFER_FLAG_COMPRESSED`]).
    pub flags: u16,
    /// `BufferType` (0 generic, 1 rundown, 4 header...).
    pub buffer_type: u16,
}

impl BufferHeader {
    /// Parses the first 72 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let mut r = ByteReader::new(bytes.get(..BUFFER_HEADER_SIZE)?);
        let buffer_size = r.u32()?;
        let saved_offset = r.u32()?;
        let current_offset = r.u32()?;
        let _reference_count = r.u32()?;
        let timestamp = r.i64()?;
        let sequence_number = r.i64()?;
        let _clock = r.u64()?;
        let processor = r.u8()?;
        let _alignment = r.u8()?;
        let logger_id = r.u16()?;
        let state = r.u32()?;
        let filled = r.u32()?;
        let flags = r.u16()?;
        let buffer_type = r.u16()?;
        Some(BufferHeader {
            buffer_size,
            saved_offset,
            current_offset,
            timestamp,
            sequence_number,
            processor,
            logger_id,
            state,
            filled,
            flags,
            buffer_type,
        })
    }

    /// Whether the events of the buffer are compressed.
    pub fn is_compressed(&self) -> bool {
        self.flags & BUFFER_FLAG_COMPRESSED != 0
    }
}

/// `TRACE_LOGFILE_HEADER`: session facts recorded once at the start of the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogfileHeader {
    /// Size of every buffer in memory, in bytes.
    pub buffer_size: u32,
    /// Format version (major, minor, sub, subminor bytes of a u32).
    pub version: u32,
    /// Windows build number of the recording machine.
    pub provider_version: u32,
    /// Number of processors.
    pub number_of_processors: u32,
    /// End of the session (FILETIME), 0 when the session did not stop cleanly.
    pub end_time: FileTime,
    /// Clock resolution in 100 ns units.
    pub timer_resolution: u32,
    /// Maximum file size in MB.
    pub maximum_file_size: u32,
    /// `EVENT_TRACE_*_MODE` bits of the session.
    pub log_file_mode: u32,
    /// Buffers written to the file.
    pub buffers_written: u32,
    /// Pointer size of the recording machine, in bytes.
    pub pointer_size: u32,
    /// Events the session lost.
    pub events_lost: u32,
    /// Processor speed in MHz.
    pub cpu_speed_mhz: u32,
    /// Session name.
    pub logger_name: String,
    /// Log file name at recording time.
    pub log_file_name: String,
    /// Time zone bias in minutes (UTC = local + bias).
    pub timezone_bias_minutes: i32,
    /// Boot time (FILETIME).
    pub boot_time: FileTime,
    /// QPC frequency in ticks per second.
    pub perf_freq: i64,
    /// Start of the session (FILETIME).
    pub start_time: FileTime,
    /// Clock type: 1 QPC, 2 system time, 3 CPU cycle counter.
    pub reserved_flags: u32,
    /// Buffers the session lost.
    pub buffers_lost: u32,
}

/// Size of `TIME_ZONE_INFORMATION`.
const TIME_ZONE_INFORMATION_SIZE: usize = 172;

impl LogfileHeader {
    /// Parses the payload of the `EventTrace/Header` event, written with `pointer_size` pointers.
    ///
    /// Layout: 40 bytes of u32/u64 fields, `StartBuffers`, `PointerSize`, `EventsLost`,
    /// `CpuSpeedInMHz` (the `LogInstanceGuid` union), two pointers (`LoggerName`,
    /// `LogFileName`, meaningless in a file), `TIME_ZONE_INFORMATION`, padding to 8, `BootTime`,
    /// `PerfFreq`, `StartTime`, `ReservedFlags`, `BuffersLost`, then the two names as
    /// NUL-terminated UTF-16.
    pub fn parse(payload: &[u8], pointer_size: PointerSize) -> Option<Self> {
        let mut r = ByteReader::new(payload);
        let buffer_size = r.u32()?;
        let version = r.u32()?;
        let provider_version = r.u32()?;
        let number_of_processors = r.u32()?;
        let end_time = FileTime(r.i64()?);
        let timer_resolution = r.u32()?;
        let maximum_file_size = r.u32()?;
        let log_file_mode = r.u32()?;
        let buffers_written = r.u32()?;
        let _start_buffers = r.u32()?;
        let pointer_size_field = r.u32()?;
        let events_lost = r.u32()?;
        let cpu_speed_mhz = r.u32()?;
        r.skip(2 * pointer_size.bytes())?;
        let timezone_at = r.position();
        let timezone_bias_minutes = r.i32()?;
        r.skip(TIME_ZONE_INFORMATION_SIZE - 4)?;
        let aligned = (timezone_at + TIME_ZONE_INFORMATION_SIZE).next_multiple_of(8);
        r.skip(aligned - r.position())?;
        let boot_time = FileTime(r.i64()?);
        let perf_freq = r.i64()?;
        let start_time = FileTime(r.i64()?);
        let reserved_flags = r.u32()?;
        let buffers_lost = r.u32()?;
        let logger_name = r.utf16z().unwrap_or_default();
        let log_file_name = r.utf16z().unwrap_or_default();
        Some(LogfileHeader {
            buffer_size,
            version,
            provider_version,
            number_of_processors,
            end_time,
            timer_resolution,
            maximum_file_size,
            log_file_mode,
            buffers_written,
            pointer_size: pointer_size_field,
            events_lost,
            cpu_speed_mhz,
            logger_name,
            log_file_name,
            timezone_bias_minutes,
            boot_time,
            perf_freq,
            start_time,
            reserved_flags,
            buffers_lost,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16z(text: &str) -> Vec<u8> {
        text.encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect()
    }

    /// Builds a `TRACE_LOGFILE_HEADER` with the pointer fields and alignment of `pointer`
    /// bytes.
    fn logfile_header(pointer: usize) -> Vec<u8> {
        let names_at = 40 + 16 + 2 * pointer;
        let after_timezone = (names_at + TIME_ZONE_INFORMATION_SIZE).next_multiple_of(8);
        // BootTime, PerfFreq, StartTime, ReservedFlags, BuffersLost.
        let mut p = vec![0u8; after_timezone + 32];
        p[8..12].copy_from_slice(&7601u32.to_le_bytes());
        p[44..48].copy_from_slice(&(pointer as u32).to_le_bytes());
        p[names_at..names_at + 4].copy_from_slice(&(-60i32).to_le_bytes());
        p[after_timezone + 8..after_timezone + 16].copy_from_slice(&3_579_545i64.to_le_bytes());
        p[after_timezone + 24..after_timezone + 28].copy_from_slice(&1u32.to_le_bytes());
        p[after_timezone + 28..after_timezone + 32].copy_from_slice(&2u32.to_le_bytes());
        p.extend_from_slice(&utf16z("NT Kernel Logger"));
        p.extend_from_slice(&utf16z("C:\\kernel.etl"));
        p
    }

    #[test]
    fn logfile_header_parses_both_pointer_sizes() {
        for (pointer, size) in [(4, PointerSize::Bits32), (8, PointerSize::Bits64)] {
            let header = LogfileHeader::parse(&logfile_header(pointer), size).unwrap();
            assert_eq!(header.provider_version, 7601, "{size:?}");
            assert_eq!(header.pointer_size, pointer as u32, "{size:?}");
            assert_eq!(header.timezone_bias_minutes, -60, "{size:?}");
            assert_eq!(header.perf_freq, 3_579_545, "{size:?}");
            assert_eq!(header.reserved_flags, 1, "{size:?}");
            assert_eq!(header.buffers_lost, 2, "{size:?}");
            assert_eq!(header.logger_name, "NT Kernel Logger", "{size:?}");
            assert_eq!(header.log_file_name, "C:\\kernel.etl", "{size:?}");
        }
    }
}
