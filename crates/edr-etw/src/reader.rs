//! Streaming ETL reader.
//!
//! # File format
//!
//! An ETL file is a sequence of buffers. Every buffer starts with a 72-byte
//! [`BufferHeader`]; its `buffer_size` is the number of bytes the buffer takes in the file and
//! its `filled` offset ends the event data. Events follow the header back to back, each aligned
//! to 8 bytes from the buffer start. The first event of the first buffer is the kernel
//! `EventTrace/Header` event whose payload is the [`LogfileHeader`].
//!
//! Every event starts with a 32-bit marker whose third byte is the header type and whose top
//! byte contains `TRACE_HEADER_FLAG` (0x80). The header type selects one of the four families:
//!
//! | type | header | size | event size field |
//! |---|---|---|---|
//! | 1, 2 | `SYSTEM_TRACE_HEADER` (32/64-bit) | 32 | u16 at offset 4 |
//! | 3, 4 | `SYSTEM_TRACE_HEADER` compact | 24 | u16 at offset 4 |
//! | 16, 17 | `PERFINFO_TRACE_HEADER` | 16 | u16 at offset 4 |
//! | 10, 20 | `EVENT_TRACE_HEADER` (classic) | 48 | u16 at offset 0 |
//! | 11, 21 | `EVENT_INSTANCE_HEADER` | 56 | u16 at offset 0 |
//! | 18, 19 | `EVENT_HEADER` (+ extended items) | 80 | u16 at offset 0 |
//! | none | `MESSAGE_TRACE_HEADER` (WPP, top byte 0x10 without 0x40) | 8 + options | u16 at offset 0 |
//!
//! A buffer whose `BufferFlag` has bit 0x40 set stores its events Xpress LZ77 compressed: the
//! bytes after the header decompress to exactly `filled - 72` bytes.
//!
//! ETW writes each event into a single buffer (an event larger than a buffer is dropped by the
//! writer and counted as lost), so the format has no events spanning buffers: an event that
//! runs past its buffer's `filled` offset is corruption and is counted as such.
//!
//! # Limits and recovery
//!
//! Memory is bounded by two buffers of at most [`ReaderLimits::max_buffer_size`] bytes,
//! reused from buffer to buffer, whatever the file size. A buffer with an impossible header
//! (size below 72 or above the limit, filled offset past the buffer) is skipped using the
//! session's buffer size as the stride when the file is not compressed, and ends the read
//! otherwise, since the next buffer's position is unknown. Inside a buffer, the first malformed
//! event (unknown header type, impossible size, bad extended data) ends that buffer: the skip
//! is counted in [`ReadStats`] with the file offset of the buffer and of the event. Nothing in
//! the input can make the reader panic, loop or allocate beyond these bounds.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use crate::bytes::ByteReader;
use crate::guid::Guid;
use crate::header::{BUFFER_HEADER_SIZE, BufferHeader, LogfileHeader};
use crate::kernel;
use crate::record::{EventDescriptor, EventRecord, ExtendedData, HeaderKind, PointerSize, flags};
use crate::time::{FileTime, SessionClock};
use crate::xpress::{self, XpressError};

/// Errors that stop reading an ETL file.
#[derive(Debug, thiserror::Error)]
pub enum EtlError {
    /// Reading the source failed.
    #[error("failed to read the ETL file at byte {offset}: {source}")]
    Io {
        /// File offset of the failed read.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is shorter than one buffer header.
    #[error("file is not an ETL file: {len} bytes is shorter than a 72-byte buffer header")]
    TooShort {
        /// Bytes available.
        len: u64,
    },
    /// The file starts with a valid buffer header but ends inside that first buffer, for
    /// example a trace copied while it was being written.
    #[error(
        "the ETL file is cut short: it ends after {len} bytes, inside its first buffer of {buffer_size} bytes, so it holds no complete buffer; copy the file again once the trace session has stopped"
    )]
    FirstBufferCut {
        /// Bytes available.
        len: u64,
        /// Size the first buffer's header announces.
        buffer_size: u32,
    },
    /// The first event of the first buffer is not the log file header event.
    #[error(
        "file is not an ETL file: the first buffer does not start with the EventTrace/Header event ({reason})"
    )]
    MissingLogfileHeader {
        /// Description of the event found instead.
        reason: String,
    },
    /// A buffer header is impossible and the next buffer cannot be located.
    #[error(
        "corrupt buffer header at byte {offset}: {reason}; the rest of the file cannot be located"
    )]
    CorruptBuffer {
        /// File offset of the buffer.
        offset: u64,
        /// Description of the impossible value.
        reason: String,
    },
}

/// Bounds the reader enforces on untrusted files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderLimits {
    /// Largest accepted buffer, compressed or not, in bytes. ETW caps session buffers at
    /// 16 MiB on current Windows versions; the default leaves headroom above that.
    pub max_buffer_size: u32,
    /// Skips recorded with their offsets in [`ReadStats::skips`]; later ones are only counted.
    pub max_recorded_skips: usize,
}

impl Default for ReaderLimits {
    fn default() -> Self {
        ReaderLimits {
            max_buffer_size: 64 << 20,
            max_recorded_skips: 1000,
        }
    }
}

/// Cause of a skipped part of the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum SkipReason {
    /// The buffer header is impossible.
    CorruptBufferHeader(String),
    /// The buffer's compressed data is invalid.
    BadCompression(String),
    /// The file ends inside a buffer.
    TruncatedBuffer,
    /// An event has a header type the reader does not know.
    UnknownHeaderType(u8),
    /// An event's size is smaller than its header or runs past the buffer.
    ImpossibleEventSize(u32),
    /// An event's extended data items do not fit in the event.
    BadExtendedData,
}

/// One skipped region, located in the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skip {
    /// File offset of the buffer.
    pub buffer_offset: u64,
    /// Offset of the skipped event inside the (decompressed) buffer, when the skip is an event.
    pub event_offset: Option<u32>,
    /// Why.
    pub reason: SkipReason,
}

/// Counters of what the reader saw, updated as buffers and records are consumed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReadStats {
    /// Buffers read.
    pub buffers: u64,
    /// Buffers that were compressed.
    pub compressed_buffers: u64,
    /// Buffers skipped whole or in part because of corruption.
    pub unparsed_buffers: u64,
    /// Records yielded, by header kind.
    pub records_by_header: HeaderCounts,
    /// Every skip, up to [`ReaderLimits::max_recorded_skips`].
    pub skips: Vec<Skip>,
    /// All skips, recorded or not.
    pub skip_count: u64,
    /// `EventTrace/RTLostEvent` records (hook id 0x0020): markers the session writes where it
    /// dropped events. The totals lost are in [`LogfileHeader::events_lost`] and
    /// [`LogfileHeader::buffers_lost`].
    pub lost_event_markers: u64,
}

/// Records per header kind; `SYSTEM_TRACE_HEADER` counts both its full and compact forms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeaderCounts {
    /// `SYSTEM_TRACE_HEADER` records.
    pub system: u64,
    /// `PERFINFO_TRACE_HEADER` records.
    pub perfinfo: u64,
    /// `EVENT_TRACE_HEADER` records.
    pub classic: u64,
    /// `EVENT_INSTANCE_HEADER` records.
    pub instance: u64,
    /// `EVENT_HEADER` records.
    pub event: u64,
    /// `MESSAGE_TRACE_HEADER` (WPP) records.
    pub message: u64,
}

impl HeaderCounts {
    fn add(&mut self, kind: HeaderKind) {
        let counter = match kind {
            HeaderKind::System | HeaderKind::SystemCompact => &mut self.system,
            HeaderKind::Perfinfo => &mut self.perfinfo,
            HeaderKind::Classic => &mut self.classic,
            HeaderKind::Instance => &mut self.instance,
            HeaderKind::Event => &mut self.event,
            HeaderKind::Message => &mut self.message,
        };
        *counter += 1;
    }

    /// Returns the non-zero counts keyed by header name, as [`HeaderKind::name`] spells it.
    pub fn by_name(&self) -> BTreeMap<&'static str, u64> {
        let all = [
            (HeaderKind::System, self.system),
            (HeaderKind::Perfinfo, self.perfinfo),
            (HeaderKind::Classic, self.classic),
            (HeaderKind::Instance, self.instance),
            (HeaderKind::Event, self.event),
            (HeaderKind::Message, self.message),
        ];
        all.into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.name(), n))
            .collect()
    }

    /// Total records.
    pub fn total(&self) -> u64 {
        self.system + self.perfinfo + self.classic + self.instance + self.event + self.message
    }
}

/// Session facts needed to turn raw events into records.
#[derive(Debug, Clone, Copy)]
struct SessionContext {
    clock: SessionClock,
}

/// Streaming reader over an ETL file.
#[derive(Debug)]
pub struct EtlReader<R> {
    source: R,
    limits: ReaderLimits,
    header: LogfileHeader,
    context: SessionContext,
    stats: ReadStats,
    /// File offset of the next buffer to read.
    next_offset: u64,
    /// Whether the first buffer, read by `new`, is still to be yielded.
    first_pending: bool,
    first_header: BufferHeader,
    /// Raw bytes of the current buffer as stored in the file.
    raw: Vec<u8>,
    /// Event data of the current buffer (decompressed when needed), header included.
    data: Vec<u8>,
    finished: bool,
}

impl EtlReader<BufReader<File>> {
    /// Opens an ETL file.
    pub fn open(path: &Path) -> Result<Self, EtlError> {
        let file = File::open(path).map_err(|source| EtlError::Io { offset: 0, source })?;
        Self::new(BufReader::with_capacity(1 << 16, file))
    }
}

impl<R: Read> EtlReader<R> {
    /// Starts reading: reads the first buffer and its log file header.
    pub fn new(source: R) -> Result<Self, EtlError> {
        Self::with_limits(source, ReaderLimits::default())
    }

    /// Starts reading with explicit limits.
    pub fn with_limits(mut source: R, limits: ReaderLimits) -> Result<Self, EtlError> {
        let mut raw = Vec::new();
        let got = read_up_to(&mut source, &mut raw, BUFFER_HEADER_SIZE, 0)?;
        if got < BUFFER_HEADER_SIZE {
            return Err(EtlError::TooShort { len: got as u64 });
        }
        let first_header =
            BufferHeader::parse(&raw).ok_or(EtlError::TooShort { len: got as u64 })?;
        check_buffer_header(&first_header, &limits)
            .map_err(|reason| EtlError::CorruptBuffer { offset: 0, reason })?;
        let rest = first_header.buffer_size as usize - BUFFER_HEADER_SIZE;
        let got = read_up_to(&mut source, &mut raw, rest, BUFFER_HEADER_SIZE as u64)?;
        if got < rest {
            // Whatever part of the first event is there must start like the log file header
            // event, so that a file of zeros after a plausible size is not taken for a trace.
            check_header_event_start(&raw[BUFFER_HEADER_SIZE..])?;
            return Err(EtlError::FirstBufferCut {
                len: (BUFFER_HEADER_SIZE + got) as u64,
                buffer_size: first_header.buffer_size,
            });
        }
        let mut data = Vec::new();
        fill_event_data(&first_header, &raw, &mut data).map_err(|reason| {
            EtlError::CorruptBuffer {
                offset: 0,
                reason: reason.to_string(),
            }
        })?;

        let (header, start_raw) = parse_logfile_header_event(&data)?;
        let clock = SessionClock::new(
            header.reserved_flags,
            start_raw,
            header.start_time,
            header.perf_freq,
            header.cpu_speed_mhz,
        );
        Ok(EtlReader {
            source,
            limits,
            next_offset: u64::from(first_header.buffer_size),
            header,
            context: SessionContext { clock },
            stats: ReadStats::default(),
            first_pending: true,
            first_header,
            raw,
            data,
            finished: false,
        })
    }

    /// The log file header of the session.
    pub fn header(&self) -> &LogfileHeader {
        &self.header
    }

    /// The session clock used to convert timestamps.
    pub fn clock(&self) -> &SessionClock {
        &self.context.clock
    }

    /// Counters of what has been read so far.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    /// Reads the next buffer; `None` at the end of the file.
    pub fn next_buffer(&mut self) -> Result<Option<Buffer<'_>>, EtlError> {
        if self.first_pending {
            self.first_pending = false;
            self.stats.buffers += 1;
            if self.first_header.is_compressed() {
                self.stats.compressed_buffers += 1;
            }
            return Ok(Some(Buffer {
                offset: 0,
                header: self.first_header,
                data: &self.data,
                context: &self.context,
                stats: &mut self.stats,
                limits: &self.limits,
            }));
        }
        loop {
            if self.finished {
                return Ok(None);
            }
            match self.read_buffer()? {
                BufferRead::End => {
                    self.finished = true;
                    return Ok(None);
                }
                BufferRead::Skipped => continue,
                BufferRead::Ready(offset, header) => {
                    return Ok(Some(Buffer {
                        offset,
                        header,
                        data: &self.data,
                        context: &self.context,
                        stats: &mut self.stats,
                        limits: &self.limits,
                    }));
                }
            }
        }
    }

    /// Calls `visit` for every record of the rest of the file.
    pub fn for_each_record(
        &mut self,
        mut visit: impl FnMut(&EventRecord<'_>),
    ) -> Result<(), EtlError> {
        while let Some(mut buffer) = self.next_buffer()? {
            for record in buffer.records() {
                visit(&record);
            }
        }
        Ok(())
    }

    fn record_skip(&mut self, skip: Skip) {
        record_skip(&mut self.stats, &self.limits, skip);
    }

    /// Reads one buffer into `self.data`.
    fn read_buffer(&mut self) -> Result<BufferRead, EtlError> {
        let offset = self.next_offset;

        // Header.
        self.raw.clear();
        let got = read_up_to(&mut self.source, &mut self.raw, BUFFER_HEADER_SIZE, offset)?;
        if got == 0 {
            return Ok(BufferRead::End);
        }
        self.stats.buffers += 1;
        if got < BUFFER_HEADER_SIZE {
            self.stats.unparsed_buffers += 1;
            self.record_skip(Skip {
                buffer_offset: offset,
                event_offset: None,
                reason: SkipReason::TruncatedBuffer,
            });
            return Ok(BufferRead::End);
        }
        let header = BufferHeader::parse(&self.raw).ok_or(EtlError::CorruptBuffer {
            offset,
            reason: "unreadable header".into(),
        })?;
        if let Err(reason) = check_buffer_header(&header, &self.limits) {
            return self.skip_corrupt_buffer(offset, reason);
        }

        // Body.
        let rest = header.buffer_size as usize - BUFFER_HEADER_SIZE;
        let got = read_up_to(
            &mut self.source,
            &mut self.raw,
            rest,
            offset + BUFFER_HEADER_SIZE as u64,
        )?;
        self.next_offset = offset + u64::from(header.buffer_size);
        if got < rest {
            self.stats.unparsed_buffers += 1;
            self.record_skip(Skip {
                buffer_offset: offset,
                event_offset: None,
                reason: SkipReason::TruncatedBuffer,
            });
            return Ok(BufferRead::End);
        }
        if header.is_compressed() {
            self.stats.compressed_buffers += 1;
        }
        if let Err(error) = fill_event_data(&header, &self.raw, &mut self.data) {
            self.stats.unparsed_buffers += 1;
            self.record_skip(Skip {
                buffer_offset: offset,
                event_offset: None,
                reason: SkipReason::BadCompression(error.to_string()),
            });
            return Ok(BufferRead::Skipped);
        }
        Ok(BufferRead::Ready(offset, header))
    }

    /// Steps over a buffer whose header is impossible, when the stride is known.
    fn skip_corrupt_buffer(&mut self, offset: u64, reason: String) -> Result<BufferRead, EtlError> {
        let stride = self.header.buffer_size;
        let compressed_mode = self.header.log_file_mode & LOG_FILE_MODE_COMPRESSED != 0;
        if compressed_mode
            || (stride as usize) < BUFFER_HEADER_SIZE
            || stride > self.limits.max_buffer_size
        {
            return Err(EtlError::CorruptBuffer { offset, reason });
        }
        tracing::warn!(offset, %reason, "skipping corrupt ETL buffer");
        self.stats.unparsed_buffers += 1;
        self.record_skip(Skip {
            buffer_offset: offset,
            event_offset: None,
            reason: SkipReason::CorruptBufferHeader(reason),
        });
        let rest = stride as usize - BUFFER_HEADER_SIZE;
        self.raw.clear();
        let got = read_up_to(
            &mut self.source,
            &mut self.raw,
            rest,
            offset + BUFFER_HEADER_SIZE as u64,
        )?;
        self.next_offset = offset + u64::from(stride);
        if got < rest {
            return Ok(BufferRead::End);
        }
        Ok(BufferRead::Skipped)
    }
}

/// Hook id of `EventTrace/RTLostEvent`.
const HOOK_LOST_EVENT: u16 = 0x0020;

/// `EVENT_TRACE_COMPRESSED_MODE`: buffers may be compressed and vary in file size.
const LOG_FILE_MODE_COMPRESSED: u32 = 0x0400_0000;

enum BufferRead {
    End,
    Skipped,
    Ready(u64, BufferHeader),
}

fn record_skip(stats: &mut ReadStats, limits: &ReaderLimits, skip: Skip) {
    tracing::debug!(buffer_offset = skip.buffer_offset, event_offset = ?skip.event_offset, reason = ?skip.reason, "ETL skip");
    stats.skip_count += 1;
    if stats.skips.len() < limits.max_recorded_skips {
        stats.skips.push(skip);
    }
}

fn check_buffer_header(header: &BufferHeader, limits: &ReaderLimits) -> Result<(), String> {
    if (header.buffer_size as usize) < BUFFER_HEADER_SIZE {
        return Err(format!(
            "buffer size {} is below the 72-byte header",
            header.buffer_size
        ));
    }
    if header.buffer_size > limits.max_buffer_size {
        return Err(format!(
            "buffer size {} exceeds the limit of {} bytes",
            header.buffer_size, limits.max_buffer_size
        ));
    }
    if (header.filled as usize) < BUFFER_HEADER_SIZE && header.filled != 0 {
        return Err(format!(
            "filled offset {} is inside the header",
            header.filled
        ));
    }
    if header.filled > limits.max_buffer_size {
        return Err(format!("filled offset {} exceeds the limit", header.filled));
    }
    if !header.is_compressed() && header.filled > header.buffer_size {
        return Err(format!(
            "filled offset {} is past the buffer size {}",
            header.filled, header.buffer_size
        ));
    }
    Ok(())
}

/// Copies or decompresses the event data of a buffer into `data` (header included).
fn fill_event_data(
    header: &BufferHeader,
    raw: &[u8],
    data: &mut Vec<u8>,
) -> Result<(), XpressError> {
    let filled = (header.filled as usize).max(BUFFER_HEADER_SIZE);
    data.clear();
    if header.is_compressed() {
        data.extend_from_slice(raw.get(..BUFFER_HEADER_SIZE).unwrap_or(&[]));
        let compressed = raw.get(BUFFER_HEADER_SIZE..).unwrap_or(&[]);
        xpress::decompress_plain_lz77(compressed, data, filled - BUFFER_HEADER_SIZE)
    } else {
        data.extend_from_slice(raw.get(..filled).unwrap_or(raw));
        Ok(())
    }
}

/// Reads up to `len` bytes appended to `out`, returning how many arrived before end of file.
fn read_up_to(
    source: &mut impl Read,
    out: &mut Vec<u8>,
    len: usize,
    offset: u64,
) -> Result<usize, EtlError> {
    let start = out.len();
    let got = source
        .take(len as u64)
        .read_to_end(out)
        .map_err(|source| EtlError::Io { offset, source })?;
    debug_assert_eq!(out.len() - start, got);
    Ok(got)
}

/// Finds the `EventTrace/Header` event at the start of the first buffer.
/// Checks the bytes present of a first event whose buffer is cut: its header type (byte 2)
/// must name a system header, and its hook id (bytes 6 and 7) must be 0, as
/// [`parse_logfile_header_event`] requires of a whole one.
fn check_header_event_start(event: &[u8]) -> Result<(), EtlError> {
    let missing = |reason: String| EtlError::MissingLogfileHeader { reason };
    if let Some(&header_type) = event.get(2)
        && header_type != 1
        && header_type != 2
    {
        return Err(missing(format!(
            "header type {header_type} instead of a system header"
        )));
    }
    if let Some(hook) = event.get(6..8) {
        let hook_id = u16::from_le_bytes([hook[0], hook[1]]);
        if hook_id != 0 {
            return Err(missing(format!("hook id {hook_id:#06x} instead of 0x0000")));
        }
    }
    Ok(())
}

fn parse_logfile_header_event(data: &[u8]) -> Result<(LogfileHeader, i64), EtlError> {
    let missing = |reason: &str| EtlError::MissingLogfileHeader {
        reason: reason.to_owned(),
    };
    let event = data
        .get(BUFFER_HEADER_SIZE..)
        .ok_or_else(|| missing("empty buffer"))?;
    let mut r = ByteReader::new(event);
    let _version = r.u16().ok_or_else(|| missing("truncated marker"))?;
    let header_type = r.u8().ok_or_else(|| missing("truncated marker"))?;
    let _marker_flags = r.u8().ok_or_else(|| missing("truncated marker"))?;
    let (pointer_size, header_len) = match header_type {
        1 => (PointerSize::Bits32, 32),
        2 => (PointerSize::Bits64, 32),
        other => {
            return Err(missing(&format!(
                "header type {other} instead of a system header"
            )));
        }
    };
    let size = usize::from(r.u16().ok_or_else(|| missing("truncated header"))?);
    let hook_id = r.u16().ok_or_else(|| missing("truncated header"))?;
    if hook_id != 0 {
        return Err(missing(&format!(
            "hook id {hook_id:#06x} instead of 0x0000"
        )));
    }
    let _thread = r.u32();
    let _process = r.u32();
    let start_raw = r.i64().ok_or_else(|| missing("truncated header"))?;
    let payload = event
        .get(header_len..size.max(header_len))
        .ok_or_else(|| missing("event size past the buffer"))?;
    let header = LogfileHeader::parse(payload, pointer_size)
        .ok_or_else(|| missing("truncated TRACE_LOGFILE_HEADER"))?;
    Ok((header, start_raw))
}

/// `TRACE_MESSAGE_*` option bits of a WPP message, in the order their fields follow the header.
const MESSAGE_SEQUENCE: u16 = 0x0001;
const MESSAGE_GUID: u16 = 0x0002;
const MESSAGE_COMPONENT_ID: u16 = 0x0004;
const MESSAGE_TIMESTAMP: u16 = 0x0008;
const MESSAGE_SYSTEM_INFO: u16 = 0x0020;

/// Parses a `MESSAGE_TRACE_HEADER` event: `u16` size, marker bytes, `u16` message number,
/// `u16` option flags, then the optional sequence number, GUID (or component id), timestamp
/// and thread and process ids.
// NOTE: no recorded trace contains WPP messages; this layout is tested on built input only.
fn parse_message<'a>(
    event: &'a [u8],
    size: u16,
    mut record: EventRecord<'a>,
    clock: &SessionClock,
) -> Result<(EventRecord<'a>, usize), SkipReason> {
    let size = usize::from(size);
    if size < 8 || size > event.len() {
        return Err(SkipReason::ImpossibleEventSize(size as u32));
    }
    let mut r = ByteReader::new(&event[..size]);
    let short = || SkipReason::ImpossibleEventSize(size as u32);
    r.skip(4).ok_or_else(short)?;
    record.header_kind = HeaderKind::Message;
    record.flags = flags::TRACE_MESSAGE;
    record.descriptor.id = r.u16().ok_or_else(short)?;
    let options = r.u16().ok_or_else(short)?;
    if options & MESSAGE_SEQUENCE != 0 {
        r.skip(4).ok_or_else(short)?;
    }
    if options & MESSAGE_GUID != 0 {
        record.provider_id = r.guid().ok_or_else(short)?;
    } else if options & MESSAGE_COMPONENT_ID != 0 {
        r.skip(4).ok_or_else(short)?;
    }
    if options & MESSAGE_TIMESTAMP != 0 {
        record.timestamp_raw = r.i64().ok_or_else(short)?;
        record.timestamp = clock.to_utc(record.timestamp_raw);
    }
    if options & MESSAGE_SYSTEM_INFO != 0 {
        record.thread_id = r.u32().ok_or_else(short)?;
        record.process_id = r.u32().ok_or_else(short)?;
    }
    record.user_data = r.remaining();
    Ok((record, size))
}

/// One buffer of events.
#[derive(Debug)]
pub struct Buffer<'a> {
    offset: u64,
    header: BufferHeader,
    data: &'a [u8],
    context: &'a SessionContext,
    stats: &'a mut ReadStats,
    limits: &'a ReaderLimits,
}

impl<'a> Buffer<'a> {
    /// File offset of the buffer.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The buffer header.
    pub fn header(&self) -> &BufferHeader {
        &self.header
    }

    /// Iterates the records of the buffer, counting them and any malformed event in the reader's
    /// statistics.
    pub fn records(&mut self) -> Records<'_, 'a> {
        Records {
            data: &self.data[..events_end(&self.header, self.data.len())],
            position: BUFFER_HEADER_SIZE,
            buffer: self,
        }
    }
}

/// Iterator over the records of one buffer.
#[derive(Debug)]
pub struct Records<'b, 'a> {
    data: &'a [u8],
    position: usize,
    buffer: &'b mut Buffer<'a>,
}

impl<'a> Iterator for Records<'_, 'a> {
    type Item = EventRecord<'a>;

    fn next(&mut self) -> Option<EventRecord<'a>> {
        let data = self.data;
        let at = self.position;
        let marker = read_u32_at(data, at)?;
        // ETW fills the unused space at the end of a buffer with 0xFF bytes.
        if marker == u32::MAX {
            self.position = data.len();
            return None;
        }
        match parse_event(
            data,
            at,
            self.buffer.header.processor,
            &self.buffer.context.clock,
        ) {
            Ok((record, size)) => {
                self.position = (at + size).next_multiple_of(8);
                if record.header_kind.is_kernel() && record.hook_id == HOOK_LOST_EVENT {
                    self.buffer.stats.lost_event_markers += 1;
                }
                self.buffer.stats.records_by_header.add(record.header_kind);
                Some(record)
            }
            Err(reason) => {
                self.position = data.len();
                self.buffer.stats.unparsed_buffers += 1;
                let skip = Skip {
                    buffer_offset: self.buffer.offset,
                    event_offset: Some(at as u32),
                    reason,
                };
                record_skip(self.buffer.stats, self.buffer.limits, skip);
                None
            }
        }
    }
}

/// End of the events of a buffer whose event data (header included) is `len` bytes long.
///
/// A `SavedOffset` inside the filled part ends the events early: the relogger writes the
/// header buffer with events past `SavedOffset` that it writes again, with the same timestamps,
/// at the start of the next buffer. Live sessions leave `SavedOffset` equal to the filled
/// offset or zero.
fn events_end(header: &BufferHeader, len: usize) -> usize {
    let saved = header.saved_offset as usize;
    if saved >= BUFFER_HEADER_SIZE && saved < len {
        saved
    } else {
        len
    }
}

fn read_u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Parses the event at `at`, returning the record and its size in bytes.
fn parse_event<'a>(
    data: &'a [u8],
    at: usize,
    processor: u8,
    clock: &SessionClock,
) -> Result<(EventRecord<'a>, usize), SkipReason> {
    let event = &data[at.min(data.len())..];
    let mut r = ByteReader::new(event);
    let short = || SkipReason::ImpossibleEventSize(event.len() as u32);
    let first = r.u16().ok_or_else(short)?;
    let header_type = r.u8().ok_or_else(short)?;
    let marker_flags = r.u8().ok_or_else(short)?;

    let mut record = EventRecord {
        header_kind: HeaderKind::System,
        provider_id: Guid::NIL,
        descriptor: EventDescriptor::default(),
        hook_id: 0,
        flags: 0,
        event_property: 0,
        thread_id: u32::MAX,
        process_id: u32::MAX,
        timestamp_raw: 0,
        timestamp: FileTime(0),
        processor: u16::from(processor),
        kernel_time: 0,
        user_time: 0,
        activity_id: Guid::NIL,
        pointer_size: PointerSize::Bits64,
        extended: ExtendedData::default(),
        user_data: &[],
    };

    // WPP messages: TRACE_MESSAGE (0x10) without TRACE_HEADER_EVENT_TRACE (0x40) in the marker's
    // top byte, and no header type.
    if marker_flags & 0x50 == 0x10 {
        return parse_message(event, first, record, clock);
    }

    let (size, header_len) = match header_type {
        // SYSTEM_TRACE_HEADER, compact SYSTEM_TRACE_HEADER, PERFINFO_TRACE_HEADER.
        1..=4 | 16 | 17 => {
            let (kind, header_len) = match header_type {
                1 | 2 => (HeaderKind::System, 32),
                3 | 4 => (HeaderKind::SystemCompact, 24),
                _ => (HeaderKind::Perfinfo, 16),
            };
            record.header_kind = kind;
            record.pointer_size = if matches!(header_type, 1 | 3 | 16) {
                PointerSize::Bits32
            } else {
                PointerSize::Bits64
            };
            record.flags = flags::CLASSIC_HEADER
                | if record.pointer_size == PointerSize::Bits32 {
                    flags::HEADER_32_BIT
                } else {
                    flags::HEADER_64_BIT
                };
            let size = usize::from(r.u16().ok_or_else(short)?);
            let hook_id = r.u16().ok_or_else(short)?;
            record.hook_id = hook_id;
            record.descriptor.version = first as u8;
            record.descriptor.opcode = hook_id as u8;
            record.provider_id =
                kernel::group_guid(kernel::hook_group(hook_id)).unwrap_or(Guid::NIL);
            if kind != HeaderKind::Perfinfo {
                record.thread_id = r.u32().ok_or_else(short)?;
                record.process_id = r.u32().ok_or_else(short)?;
            }
            record.timestamp_raw = r.i64().ok_or_else(short)?;
            if kind == HeaderKind::System {
                record.kernel_time = r.u32().ok_or_else(short)?;
                record.user_time = r.u32().ok_or_else(short)?;
            }
            (size, header_len)
        }

        // EVENT_TRACE_HEADER and EVENT_INSTANCE_HEADER.
        10 | 20 | 11 | 21 => {
            let instance = matches!(header_type, 11 | 21);
            record.header_kind = if instance {
                HeaderKind::Instance
            } else {
                HeaderKind::Classic
            };
            record.pointer_size = if matches!(header_type, 10 | 11) {
                PointerSize::Bits32
            } else {
                PointerSize::Bits64
            };
            record.flags = flags::CLASSIC_HEADER
                | if record.pointer_size == PointerSize::Bits32 {
                    flags::HEADER_32_BIT
                } else {
                    flags::HEADER_64_BIT
                };
            record.descriptor.opcode = r.u8().ok_or_else(short)?;
            record.descriptor.level = r.u8().ok_or_else(short)?;
            record.descriptor.version = r.u16().ok_or_else(short)? as u8;
            record.thread_id = r.u32().ok_or_else(short)?;
            record.process_id = r.u32().ok_or_else(short)?;
            record.timestamp_raw = r.i64().ok_or_else(short)?;
            if instance {
                // RegHandle, InstanceId, ParentInstanceId, ParentRegHandle: the provider is
                // only known through a registration handle, which a file cannot resolve.
                r.skip(8 + 4 + 4 + 8).ok_or_else(short)?;
                (usize::from(first), 56)
            } else {
                record.provider_id = r.guid().ok_or_else(short)?;
                record.kernel_time = r.u32().ok_or_else(short)?;
                record.user_time = r.u32().ok_or_else(short)?;
                (usize::from(first), 48)
            }
        }

        // EVENT_HEADER.
        18 | 19 => {
            record.header_kind = HeaderKind::Event;
            record.flags = r.u16().ok_or_else(short)?;
            record.event_property = r.u16().ok_or_else(short)?;
            record.thread_id = r.u32().ok_or_else(short)?;
            record.process_id = r.u32().ok_or_else(short)?;
            record.timestamp_raw = r.i64().ok_or_else(short)?;
            record.provider_id = r.guid().ok_or_else(short)?;
            record.descriptor = EventDescriptor {
                id: r.u16().ok_or_else(short)?,
                version: r.u8().ok_or_else(short)?,
                channel: r.u8().ok_or_else(short)?,
                level: r.u8().ok_or_else(short)?,
                opcode: r.u8().ok_or_else(short)?,
                task: r.u16().ok_or_else(short)?,
                keyword: r.u64().ok_or_else(short)?,
            };
            record.kernel_time = r.u32().ok_or_else(short)?;
            record.user_time = r.u32().ok_or_else(short)?;
            record.activity_id = r.guid().ok_or_else(short)?;
            record.pointer_size = if record.flags & flags::HEADER_32_BIT != 0 || header_type == 18 {
                PointerSize::Bits32
            } else {
                PointerSize::Bits64
            };
            (usize::from(first), 80)
        }

        other => return Err(SkipReason::UnknownHeaderType(other)),
    };

    if size < header_len || size > event.len() {
        return Err(SkipReason::ImpossibleEventSize(size as u32));
    }
    let mut body = &event[header_len..size];
    if record.header_kind == HeaderKind::Event && record.flags & flags::EXTENDED_INFO != 0 {
        let (extended, used) = ExtendedData::parse(body).ok_or(SkipReason::BadExtendedData)?;
        record.extended = extended;
        body = &body[used..];
    }
    record.user_data = body;
    record.timestamp = clock.to_utc(record.timestamp_raw);
    Ok((record, size))
}
