//! Conversion of one recorded telemetry file (EVTX or ETL) to OCSF events, with counts.
//!
//! [`convert_file`] detects the format from the file's first bytes ([`detect_format`]), reads
//! the file in record order and hands each OCSF event to a sink, then returns a
//! [`FileCounts`] that accounts for every record: emitted per class, emitted as Base Event per
//! source event without a mapper, filtered, undecodable, and the damaged parts skipped.
//!
//! ETL records are mapped in time order, not file order: each processor fills its own
//! buffers, and a buffer reaches the file when it is full, so a process's exit can be read
//! seconds before its start ([`RecordConverter::in_time_order`]).
//!
//! Recovery: a damaged EVTX chunk or ETL buffer is skipped and listed in
//! [`FileCounts::damaged`], and the rest of the file is converted. Only a file that cannot be
//! opened, or whose header is not EVTX or ETL, fails as a whole, before any event is emitted.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use edr_etw::{EtlReader, EventRecord, HeaderKind};
use edr_ocsf::Event;

use crate::events::{DecodedEvent, Decoder, EventHeader};
use crate::ocsf::{EtwMapper, MapperStats, TraceContext, is_collected, provider_name};

/// First bytes of an EVTX file header.
const EVTX_MAGIC: &[u8; 8] = b"ElfFile\0";
/// Largest payload copied, as hex, into the Base Event of an undecoded record.
const MAX_UNMAPPED_PAYLOAD: usize = 4096;

/// Errors that stop the conversion of a file before any event is emitted.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The file cannot be opened or read.
    #[error("cannot read {path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is neither EVTX (no `ElfFile` magic) nor ETL (no trace header).
    #[error("{path:?} is neither an EVTX file nor an ETL file; pass EVTX or ETL files only")]
    UnknownFormat { path: PathBuf },
    /// The EVTX file header is invalid.
    #[error(transparent)]
    Evtx(#[from] edr_evtx::SourceError),
    /// The ETL file has no valid first buffer.
    #[error("cannot open ETL file {path:?}: {source}")]
    Etl {
        path: PathBuf,
        source: edr_etw::EtlError,
    },
}

/// Formats of recorded telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InputFormat {
    /// Windows Event Log file.
    Evtx,
    /// Event Trace Log file.
    Etl,
}

/// A skipped damaged part of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// `chunk 3` for EVTX, `buffer at byte 65536` for ETL.
    pub location: String,
    /// The parser's reason.
    pub reason: String,
}

/// Counts of one file's conversion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileCounts {
    /// Records read (EVTX records, or ETW events of every header kind).
    pub records: u64,
    /// Events emitted.
    pub events: u64,
    /// Events emitted, per OCSF class name.
    pub per_class: BTreeMap<&'static str, u64>,
    /// Records without a mapper, emitted as Base Event with their fields under `unmapped`, per
    /// (channel or provider, event id; the opcode for NT Kernel Logger events).
    pub unmapped: BTreeMap<(String, u32), u64>,
    /// Records not emitted because the sensor would not collect them live, or because they
    /// only build state, per (provider, event id or opcode).
    pub filtered: BTreeMap<(String, u32), u64>,
    /// Records of collected events whose payload does not fit a known layout, per (provider,
    /// event id or opcode).
    pub undecodable: BTreeMap<(String, u32), u64>,
    /// Records that could not be read at all (EVTX records that do not render).
    pub unreadable: u64,
    /// Damaged parts skipped.
    pub damaged: Vec<Damage>,
    /// File, network, registry, module, DNS and script events emitted with their process from
    /// the cache (ETL only).
    pub with_process: u64,
    /// Those events emitted with a pid only (ETL only).
    pub without_process: u64,
    /// Script blocks emitted with parts missing.
    pub truncated_script_blocks: u64,
}

impl FileCounts {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &FileCounts) {
        self.records += other.records;
        self.events += other.events;
        for (class, count) in &other.per_class {
            *self.per_class.entry(class).or_default() += count;
        }
        for (map, from) in [
            (&mut self.unmapped, &other.unmapped),
            (&mut self.filtered, &other.filtered),
            (&mut self.undecodable, &other.undecodable),
        ] {
            for (key, count) in from {
                *map.entry(key.clone()).or_default() += count;
            }
        }
        self.unreadable += other.unreadable;
        self.damaged.extend(other.damaged.iter().cloned());
        self.with_process += other.with_process;
        self.without_process += other.without_process;
        self.truncated_script_blocks += other.truncated_script_blocks;
    }
}

/// Detects the format of the file at `path` from its first bytes: the `ElfFile` magic for
/// EVTX, else a valid ETL first buffer (its `EventTrace/Header` event). Returns `None` for
/// anything else, and for anything that is not a regular file: opening a FIFO waits for a
/// writer, and a device may never end.
pub fn detect_format(path: &Path) -> Result<Option<InputFormat>, PipelineError> {
    let io_error = |source| PipelineError::Io {
        path: path.to_owned(),
        source,
    };
    if !std::fs::metadata(path).map_err(io_error)?.is_file() {
        return Ok(None);
    }
    let mut magic = [0u8; 8];
    let mut file = File::open(path).map_err(io_error)?;
    let mut filled = 0;
    while filled < magic.len() {
        let read = file.read(&mut magic[filled..]).map_err(io_error)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    if filled == magic.len() && &magic == EVTX_MAGIC {
        return Ok(Some(InputFormat::Evtx));
    }
    // A file cut inside its first buffer is still an ETL file: `convert_etl` then reports it.
    match EtlReader::open(path) {
        Ok(_) | Err(edr_etw::EtlError::FirstBufferCut { .. }) => Ok(Some(InputFormat::Etl)),
        Err(_) => Ok(None),
    }
}

/// Converts the file at `path`, handing each OCSF event to `sink` in record order (ETL events
/// whose process starts later wait for it, within the bounds stated in [`crate::ocsf`]).
pub fn convert_file(
    path: &Path,
    mut sink: impl FnMut(Box<Event>),
) -> Result<FileCounts, PipelineError> {
    match detect_format(path)? {
        Some(InputFormat::Evtx) => convert_evtx(path, &mut sink),
        Some(InputFormat::Etl) => convert_etl(path, &mut sink),
        None => Err(PipelineError::UnknownFormat {
            path: path.to_owned(),
        }),
    }
}

fn convert_evtx(
    path: &Path,
    sink: &mut impl FnMut(Box<Event>),
) -> Result<FileCounts, PipelineError> {
    let mut events = 0u64;
    let (report, stats) = edr_evtx::convert_file(path, |event| {
        events += 1;
        sink(event);
    })?;
    Ok(FileCounts {
        records: stats.records,
        events,
        per_class: stats.per_class,
        unmapped: stats.unmapped,
        unreadable: report.bad_records,
        damaged: report
            .skipped_chunks
            .into_iter()
            .map(|chunk| Damage {
                location: format!("chunk {}", chunk.chunk_number),
                reason: chunk.reason,
            })
            .collect(),
        truncated_script_blocks: stats.truncated_script_blocks,
        ..FileCounts::default()
    })
}

fn convert_etl(
    path: &Path,
    sink: &mut impl FnMut(Box<Event>),
) -> Result<FileCounts, PipelineError> {
    let mut reader = EtlReader::open(path).map_err(|source| PipelineError::Etl {
        path: path.to_owned(),
        source,
    })?;
    let header = reader.header();
    let trace_start_ms = crate::ocsf::time_ms(header.start_time);
    let context = TraceContext {
        // The boot time changes at every boot, so pids and start times of two boots never
        // collide; a trace without one falls back to its logger name and start.
        host_key: if header.boot_time.0 != 0 {
            format!("boot-{}", header.boot_time.0)
        } else {
            format!("trace-{}-{}", header.logger_name, header.start_time.0)
        },
        trace_start_ms,
        hostname: None,
    };
    let mut converter = RecordConverter::in_time_order(context);
    let mut counts = FileCounts::default();
    let mut out = Vec::new();

    let result = reader.for_each_record(|record| {
        counts.records += 1;
        converter.push(record, &mut out);
        counts.events += out.len() as u64;
        for event in out.drain(..) {
            sink(event);
        }
    });
    if let Err(error) = result {
        // The reader stops at a buffer it cannot locate past; what was read stays converted.
        counts.damaged.push(Damage {
            location: "rest of file".to_owned(),
            reason: error.to_string(),
        });
    }
    converter.finish(&mut out);
    counts.events += out.len() as u64;
    for event in out.drain(..) {
        sink(event);
    }
    let RecordConverter {
        decoder, mapper, ..
    } = converter;

    for skip in &reader.stats().skips {
        counts.damaged.push(Damage {
            location: match skip.event_offset {
                Some(event) => format!("buffer at byte {}, event at {event}", skip.buffer_offset),
                None => format!("buffer at byte {}", skip.buffer_offset),
            },
            reason: format!("{:?}", skip.reason),
        });
    }
    for ((key, _reason), count) in &decoder.stats().undecodable {
        *counts
            .undecodable
            .entry((provider_name(key.provider), u32::from(key.id_or_opcode)))
            .or_default() += count;
    }
    let stats = mapper.stats();
    counts.per_class = stats.per_class.clone();
    for (map, from) in [
        (&mut counts.unmapped, &stats.unmapped),
        (&mut counts.filtered, &stats.filtered),
    ] {
        for ((provider, id), count) in from {
            *map.entry((provider.clone(), u32::from(*id))).or_default() += count;
        }
    }
    counts.with_process = stats.with_process;
    counts.without_process = stats.without_process;
    counts.truncated_script_blocks = stats.truncated_script_blocks;
    Ok(counts)
}

/// Turns ETW event records into OCSF events: decode, enrich from the process cache, map.
///
/// The same steps serve ETL files and live sessions, so a recorded trace and a live sensor emit
/// the same events. A record no decoder covers becomes a Base Event when its provider is one the
/// sensor collects, and is counted as filtered otherwise.
#[derive(Debug)]
pub struct RecordConverter {
    decoder: Decoder,
    mapper: EtwMapper,
    /// Records waiting to be mapped in time order; `None` maps each record as it arrives.
    reorder: Option<Reorder>,
}

impl RecordConverter {
    /// Creates a converter with an empty process cache that maps each record as it arrives,
    /// as the live sensor does.
    pub fn new(context: TraceContext) -> Self {
        Self {
            decoder: Decoder::new(),
            mapper: EtwMapper::new(context),
            reorder: None,
        }
    }

    /// Creates a converter for a recorded file. It keeps decoded records back and maps them in
    /// time order, within [`REORDER_WINDOW_100NS`] of event time and [`REORDER_MAX_WAITING`]
    /// records. In an ETL file each processor's buffers reach the file when they are full,
    /// so records of one moment lie far apart: in a recorded kernel trace of 15,915 events a
    /// process's exit came 9.5 s of event time before its start in file order.
    pub fn in_time_order(context: TraceContext) -> Self {
        Self {
            reorder: Some(Reorder::default()),
            ..Self::new(context)
        }
    }

    /// Converts one record, appending the OCSF events it completes to `out`. A record may
    /// complete none (it only updates the process cache, or waits for its process) or several.
    pub fn push(&mut self, record: &EventRecord<'_>, out: &mut Vec<Box<Event>>) {
        let undecodable_before = self.decoder.stats().undecodable_total();
        if let Some(decoded) = self.decoder.decode(record) {
            self.map(WaitingRecord::Decoded(decoded), out);
            return;
        }
        if self.decoder.stats().undecodable_total() != undecodable_before {
            return;
        }

        let id = if record.header_kind == HeaderKind::Event {
            record.descriptor.id
        } else {
            u16::from(record.descriptor.opcode)
        };
        let provider = provider_name(record.provider_id);
        let collected = is_collected(record.provider_id)
            && (record.header_kind.is_kernel() || record.header_kind == HeaderKind::Event);
        if collected {
            let header = EventHeader {
                provider: record.provider_id,
                event_id: record.descriptor.id,
                opcode: record.descriptor.opcode,
                version: record.descriptor.version,
                timestamp: record.timestamp,
                header_process_id: record.process_id,
                header_thread_id: record.thread_id,
                processor: record.processor,
            };
            let fields = undecoded_fields(record);
            self.map(
                WaitingRecord::Undecoded {
                    header,
                    provider,
                    id,
                    fields,
                },
                out,
            );
        } else {
            self.mapper.count_filtered(provider, id);
        }
    }

    /// Maps `record` now, or queues it and maps the queued records that are due, in time order.
    fn map(&mut self, record: WaitingRecord, out: &mut Vec<Box<Event>>) {
        let Some(reorder) = self.reorder.as_mut() else {
            record.map(&mut self.mapper, out);
            return;
        };
        reorder.push(record);
        while let Some(due) = reorder.pop_due() {
            due.map(&mut self.mapper, out);
        }
    }

    /// Emits every event still waiting into `out`: records queued for time order, events
    /// waiting for their process and unfinished script blocks. Call it at the end of a file or
    /// when a live sensor stops.
    pub fn finish(&mut self, out: &mut Vec<Box<Event>>) {
        if let Some(reorder) = self.reorder.as_mut() {
            while let Some(Reverse(entry)) = reorder.heap.pop() {
                entry.record.map(&mut self.mapper, out);
            }
        }
        self.mapper.finish(out);
    }

    /// Mapping counts so far.
    pub fn mapper_stats(&self) -> &MapperStats {
        self.mapper.stats()
    }
}

/// Event time, in 100 ns units, that a record waits for: it is mapped once a record 60 s later
/// has been read. The traces checked lagged by up to 12.4 s between processors.
pub const REORDER_WINDOW_100NS: i64 = 60 * 10_000_000;

/// Largest number of records waiting. Past it the oldest is mapped even if it is not 60 s old,
/// so memory stays bounded on traces of thousands of events per second (a decoded record takes
/// a few hundred bytes).
pub const REORDER_MAX_WAITING: usize = 100_000;

/// A record waiting to be mapped: decoded, or a collected record no decoder covers.
#[derive(Debug)]
enum WaitingRecord {
    Decoded(DecodedEvent),
    Undecoded {
        header: EventHeader,
        provider: String,
        id: u16,
        fields: serde_json::Map<String, serde_json::Value>,
    },
}

impl WaitingRecord {
    fn timestamp(&self) -> i64 {
        match self {
            WaitingRecord::Decoded(decoded) => decoded.header.timestamp.0,
            WaitingRecord::Undecoded { header, .. } => header.timestamp.0,
        }
    }

    fn map(self, mapper: &mut EtwMapper, out: &mut Vec<Box<Event>>) {
        match self {
            WaitingRecord::Decoded(decoded) => mapper.map(decoded, out),
            WaitingRecord::Undecoded {
                header,
                provider,
                id,
                fields,
            } => mapper.map_undecoded(&header, provider, id, fields, out),
        }
    }
}

/// A queued record, ordered by time and then by the order it was read, so that records of the
/// same time keep their file order.
#[derive(Debug)]
struct QueuedRecord {
    timestamp: i64,
    read: u64,
    record: WaitingRecord,
}

impl PartialEq for QueuedRecord {
    fn eq(&self, other: &Self) -> bool {
        (self.timestamp, self.read) == (other.timestamp, other.read)
    }
}

impl Eq for QueuedRecord {}

impl PartialOrd for QueuedRecord {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for QueuedRecord {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.timestamp, self.read).cmp(&(other.timestamp, other.read))
    }
}

/// Records queued for time order. The oldest leaves when a record [`REORDER_WINDOW_100NS`]
/// newer has been read, or when more than [`REORDER_MAX_WAITING`] are queued.
#[derive(Debug, Default)]
struct Reorder {
    heap: BinaryHeap<Reverse<QueuedRecord>>,
    read: u64,
    newest: Option<i64>,
}

impl Reorder {
    fn push(&mut self, record: WaitingRecord) {
        let timestamp = record.timestamp();
        self.newest = Some(match self.newest {
            Some(newest) => newest.max(timestamp),
            None => timestamp,
        });
        self.heap.push(Reverse(QueuedRecord {
            timestamp,
            read: self.read,
            record,
        }));
        self.read += 1;
    }

    /// Returns the oldest queued record if it is due.
    fn pop_due(&mut self) -> Option<WaitingRecord> {
        let oldest = self.heap.peek()?.0.timestamp;
        let newest = self.newest.unwrap_or(oldest);
        let due = self.heap.len() > REORDER_MAX_WAITING
            || newest.saturating_sub(oldest) > REORDER_WINDOW_100NS;
        if !due {
            return None;
        }
        let Reverse(entry) = self.heap.pop()?;
        Some(entry.record)
    }
}

/// Collects the header fields and a bounded hex copy of the payload of a record no decoder
/// covers.
fn undecoded_fields(
    record: &edr_etw::EventRecord<'_>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = serde_json::Map::new();
    fields.insert(
        "provider_guid".into(),
        record.provider_id.to_string().into(),
    );
    fields.insert("event_id".into(), record.descriptor.id.into());
    fields.insert("opcode".into(), record.descriptor.opcode.into());
    fields.insert("version".into(), record.descriptor.version.into());
    if record.process_id != u32::MAX {
        fields.insert("process_id".into(), record.process_id.into());
    }
    if record.thread_id != u32::MAX {
        fields.insert("thread_id".into(), record.thread_id.into());
    }
    let payload = &record.user_data[..record.user_data.len().min(MAX_UNMAPPED_PAYLOAD)];
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    fields.insert("payload_hex".into(), hex.into());
    fields.insert("payload_size".into(), record.user_data.len().into());
    fields
}

#[cfg(test)]
mod tests {
    use edr_etw::{FileTime, Guid};

    use super::*;

    const SECOND: i64 = 10_000_000;

    fn record_at(seconds: i64, id: u16) -> WaitingRecord {
        WaitingRecord::Undecoded {
            header: EventHeader {
                provider: Guid::NIL,
                event_id: id,
                opcode: 0,
                version: 0,
                timestamp: FileTime(seconds * SECOND),
                header_process_id: 4,
                header_thread_id: 8,
                processor: 0,
            },
            provider: "test".to_owned(),
            id,
            fields: serde_json::Map::new(),
        }
    }

    fn id(record: &WaitingRecord) -> u16 {
        match record {
            WaitingRecord::Undecoded { id, .. } => *id,
            WaitingRecord::Decoded(_) => unreachable!("these tests queue undecoded records only"),
        }
    }

    #[test]
    fn reorder_releases_after_window() {
        let mut reorder = Reorder::default();
        // Read in file order: a later processor buffer first, then an earlier one.
        for (seconds, record) in [(100, 1), (103, 2), (90, 3), (95, 4), (95, 5)] {
            reorder.push(record_at(seconds, record));
        }
        assert!(reorder.pop_due().is_none(), "nothing is 60 s old yet");
        reorder.push(record_at(156, 6));
        let due: Vec<u16> = std::iter::from_fn(|| reorder.pop_due())
            .map(|record| id(&record))
            .collect();
        // 90 and 95 are more than 60 s before 156; records of the same time keep file order.
        assert_eq!(due, vec![3, 4, 5]);
        let rest: Vec<u16> = std::iter::from_fn(|| reorder.heap.pop())
            .map(|Reverse(entry)| id(&entry.record))
            .collect();
        assert_eq!(rest, vec![1, 2, 6]);
    }

    #[test]
    fn reorder_queue_is_bounded() {
        let mut reorder = Reorder::default();
        for record in 0..=REORDER_MAX_WAITING {
            reorder.push(record_at(1_000, (record % 60_000) as u16));
        }
        assert!(reorder.pop_due().is_some(), "one past the bound leaves");
        assert!(reorder.pop_due().is_none());
        assert_eq!(reorder.heap.len(), REORDER_MAX_WAITING);
    }
}
