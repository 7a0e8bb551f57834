//! Offline ring buffer: records kept on disk while the Collector is unreachable.
//!
//! The sensor appends every event here and sends from here. Records leave the disk only when the
//! Collector acknowledges them, or when the buffer is full and the oldest telemetry is evicted.
//! An eviction is itself recorded as a gap record that is sent to the Collector, so no loss is
//! silent.
//!
//! # Usage
//!
//! ```no_run
//! use edr_sensor::buffer::{Buffer, BufferConfig, Lane, RecordKind};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let options = BufferConfig::default().validate()?;
//! let mut buffer = Buffer::open(options)?;
//! let seq = buffer.append(Lane::Telemetry, br#"{"class_uid":1007}"#)?;
//! assert!(buffer.sync()? >= seq); // durable now
//! for record in buffer.drain(100)? {
//!     match record.kind {
//!         RecordKind::Event(payload) => { /* send payload with record.seq */ }
//!         RecordKind::Gap(gap) => { /* send the loss report */ }
//!     }
//! }
//! buffer.ack(seq)?; // the Collector stored everything up to `seq`
//! # Ok(())
//! # }
//! ```
//!
//! # Limits
//!
//! - Capacity 64 MiB to 5 GiB through [`BufferConfig`] (500 MiB by default), counted as the bytes
//!   of all segment files plus the bytes not yet written. Eviction frees one whole segment
//!   (32 MiB by default), so usage stays below the capacity and drops by a segment at a time.
//! - Records of up to `max_record_bytes` (1 MiB by default, 4 MiB at most), each with 32 bytes of
//!   framing on disk.
//! - A group commit happens at least every `sync_interval_ms` (1000 by default) as long as the
//!   owner calls [`Buffer::append`] or [`Buffer::tick`] that often, on the append that brings
//!   the bytes appended since the last one to 32 MiB, and on [`Buffer::sync`],
//!   [`Buffer::close`] and drop. The 32 MiB step lets a burst reach the reader while it is
//!   still being appended. At a steady rate below 32 MiB per interval it never fires.
//! - One process owns a directory. Nothing locks it: two processes appending to the same
//!   directory would damage it.
//! - Opening reads every segment once to check it, at the disk's read speed (a 5 GiB buffer takes
//!   seconds).
//! - Each record handed out by [`Buffer::drain`] and not yet acknowledged costs 32 bytes of
//!   memory; acknowledge regularly.
//! - Metric counters (evictions, gap records, damaged records, torn bytes) count since open; the
//!   gap records are the durable account.
//! - A record's append time is the wall clock read at the first append of its commit group plus
//!   the time elapsed since then on a coarse monotonic clock, so each append reads one cheap
//!   clock. On Linux that clock advances once per timer tick (4 ms with `HZ=250`), so an append
//!   time can be off by one tick and the group commit deadline can pass one tick late. A step of
//!   the wall clock shows in the append times from the next group on.
//! - Each open buffer runs one thread, `edr-buffer-flush`, which fsyncs a segment early after
//!   every 4 MiB written to it since the last group commit and when the segment is closed. It
//!   shortens the group commit after a burst and changes no durability rule.
//! - Measured on a 2-core VM with a virtio disk: see `docs/components/buffer.md`.
//!
//! # Invariants
//!
//! - Sequence numbers are per sensor, shared by both lanes, start at 1 and rise strictly. They
//!   are never reused across restarts: the next number is above every record, every segment key
//!   (at most the next number when the segment was created) and the number stored in the
//!   cursor. The only numbers that can be handed out twice are those of records lost before
//!   their fsync in a power failure, which no reader ever saw.
//! - A crash leaves holes in the numbering: records still in memory are lost, and their numbers
//!   are skipped when a later record of the other lane reached the file. The holes are never
//!   reported as gaps because none of their records was durable.
//! - `durable_seq` is the highest number at or below which every record still handed out by this
//!   process is fsynced.
//!   [`Buffer::drain`] hands out only durable records, so the Collector never receives a record
//!   that a power failure can take back.
//! - Drain order is by sequence number across both lanes, oldest first.
//! - [`Buffer::ack`] takes a number N meaning "every record at or below N is stored". It
//!   overwrites `cursor.ack` at once, without an fsync. The cursor is fsynced with the next
//!   group commit, or one sync interval after the acknowledgement when the owner calls `tick`,
//!   and a segment is deleted only when an fsynced cursor covers all its records. A power
//!   failure can take back the acknowledgements of the last interval: those records are sent
//!   again and the Collector drops them by sequence number. Their segments are still on disk,
//!   so no gap is reported for them (`power_failure_after_ack_reports_no_gap`).
//! - Eviction takes the oldest telemetry segment. Priority records (response-action results and
//!   the sensor's own alerts) are evicted only when no telemetry record is left. The gap record
//!   (in the priority lane) is fsynced before the evicted segment is deleted.
//!   A gap record can itself be evicted with its priority segment. The gap record of that
//!   eviction then also reports what the segment's unacknowledged gap records reported, and
//!   its count adds theirs. Its range starts at the lowest of their first numbers, even at or
//!   below the acknowledged number, because the Collector can acknowledge past a lost range
//!   before the gap record that reports it arrives. The reasons of the carried gaps are lost,
//!   because the new one has `PriorityEvicted`.
//!
//! # What a power failure can lose
//!
//! Exactly the records whose sequence number is above [`Buffer::durable_seq`] at the moment of
//! the failure: records appended since the last group commit, at most one sync interval's worth
//! (one second by default) when the owner calls `tick`. Nothing at or below `durable_seq` is lost
//! unless the disk itself loses fsynced data; damage is then detected by CRC-32C and skipped.
//! A process crash (SIGKILL, panic) loses nothing that reached `write`: the kernel keeps it; only
//! the pending bytes still in memory (under 256 KiB plus one record per lane, never reported
//! durable) are lost.
//!
//! # On-disk format
//!
//! ```text
//! <directory>/cursor                      40 bytes, replaced atomically with fsyncs
//! <directory>/cursor.ack                  40 bytes, the latest acknowledgement, not fsynced
//! <directory>/telemetry/<key:020>.seg     segments of the telemetry lane
//! <directory>/priority/<key:020>.seg      segments of the priority lane
//! ```
//!
//! A segment's key is at most the number of its first record. A rotation keys the new segment
//! one above the last record of the segment it closes, so that consecutive segments of a lane
//! leave no number between them. The first segment of a lane is keyed by the next sequence
//! number. All integers are little-endian.
//!
//! ```text
//! segment header (32 bytes)
//!   0  magic "EDRBUFSG"   8  version u16 = 1   10  lane u8 (0 telemetry, 1 priority)
//!  16  key u64           28  CRC-32C of bytes 0..28
//! record frame (32 bytes + payload)
//!   0  magic "EDRR"       4  CRC-32C of bytes 8..end   8  payload length u32
//!  12  kind u8 (1 event, 2 gap)   13  lane u8   16  sequence number u64
//!  24  append time, Unix milliseconds u64       32  payload
//! gap payload (41 bytes)
//!   0  first_seq u64   8  last_seq u64   16  records u64   24  bytes u64
//!  32  detected_at, Unix milliseconds u64   40  reason u8 (1 telemetry evicted,
//!      2 priority evicted, 3 damaged, 4 segment missing)
//! cursor (40 bytes)
//!   0  magic "EDRBUFCR"   8  version u16 = 1   16  acked_seq u64   24  next_seq u64
//!  32  CRC-32C of bytes 0..32
//! ```
//!
//! `cursor` is written to `cursor.tmp`, which is fsynced, renamed over `cursor`, and the
//! directory fsynced: at a group commit, at open, one sync interval after an acknowledgement,
//! and at close. Each acknowledgement overwrites `cursor.ack` in place with the same layout and
//! no fsync. At open the cursor is the higher of the two, where `cursor.ack` is valid. A
//! power failure can leave `cursor.ack` empty or damaged, and it is then ignored. A rename
//! without an fsync would not be safe: a file system may make the rename durable before the
//! new file's data, and a power failure then leaves an empty `cursor`. The cursor read at open
//! is fsynced before any segment it covers is deleted.
//!
//! # Recovery rules at open
//!
//! - A torn tail of the newest segment of a lane (bytes after the last valid record) is
//!   truncated. It can only hold a record whose write was cut, which was never durable.
//! - A damaged region inside a segment (bad magic, CRC, kind, lane, length, or a sequence number
//!   not above its predecessor's) is skipped: reading resumes at the next offset where a valid
//!   frame starts. Each region counts once in `damaged_records_skipped`, whatever number of
//!   records it held, and is reported to the Collector as a [`Gap`] with reason
//!   [`GapReason::Damaged`] and `records` 0 (unknown). The report repeats at every open until
//!   the records after the region are acknowledged. A damaged end of a closed segment is
//!   treated the same way.
//! - A missing segment file (deleted, or lost by the file system) is found by its numbers. They
//!   lie above the cursor, in front of a segment's key and after the previous segment of its
//!   lane, and no record of either lane or earlier gap record contains them. They are
//!   reported as one [`Gap`] per range with reason [`GapReason::SegmentMissing`], `records` the
//!   count of those numbers and `bytes` 0 (unknown), logged at ERROR and counted in
//!   `missing_records`. The gap record itself covers the range at later opens, so the report
//!   is made once. A missing newest segment of a lane looks the same as records that a crash
//!   lost before their fsync, so it is not reported.
//! - Damage that appears after open is found by the reader. The rest of that segment is skipped
//!   and reported the same way, as a [`GapReason::Damaged`] gap from the record after the last
//!   one read to the segment's last durable record, once per region in the process.
//! - A damaged segment header is skipped; the file name carries the same facts. A segment
//!   shorter than its header is rewritten as empty.
//! - When both `cursor` and `cursor.ack` are missing or damaged, the cursor is rebuilt as
//!   "acknowledged up to the oldest record still on disk minus one" and written at once.
//!   Records acknowledged before the loss and still on disk are sent once more: one partly
//!   acknowledged segment per lane, and the segments acknowledged in the last sync interval.
//!   The Collector deduplicates them by sequence number. Numbers in front of each lane's oldest
//!   segment are then not reported as missing, because nothing tells whether they were
//!   acknowledged.
//! - Segments holding only acknowledged records (left by a crash between the cursor write and
//!   the deletion) are deleted.
//!
//! A payload that embeds a complete valid frame could be mistaken for a record by the resync
//! after damage in front of it; the CRC makes this impossible by chance, but not by design.
//!
//! # Platform
//!
//! File-system calls go through [`platform`]. On Windows files are opened with
//! `FILE_SHARE_DELETE` and calls retried on sharing violations, and the default directory is
//! `%ProgramData%\edr\buffer`, restricted to SYSTEM and Administrators. NOTE: those Windows paths
//! are type-checked but have never run on Windows.

mod clock;
mod config;
mod error;
mod flush;
mod format;
pub mod platform;
mod rate;
mod segment;
mod store;

use std::time::Duration;

pub use config::{
    BufferConfig, BufferOptions, ConfigError, DEFAULT_CAPACITY_BYTES, MAX_CAPACITY_BYTES,
    MIN_CAPACITY_BYTES,
};
pub use error::BufferError;
pub use platform::{DefaultDirectoryAcl, DirectoryAcl};
pub use store::Buffer;

/// The lane of a record, which decides its eviction order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Ordinary telemetry, evicted first when the buffer is full.
    Telemetry,
    /// Response-action results and the sensor's own alerts, evicted only when no telemetry is
    /// left.
    Priority,
}

impl Lane {
    /// Both lanes, in the order of their lane byte.
    pub const ALL: [Lane; 2] = [Lane::Telemetry, Lane::Priority];

    /// Returns the lane's directory name.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Telemetry => "telemetry",
            Lane::Priority => "priority",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Lane::Telemetry => 0,
            Lane::Priority => 1,
        }
    }

    pub(crate) fn as_byte(self) -> u8 {
        match self {
            Lane::Telemetry => 0,
            Lane::Priority => 1,
        }
    }

    pub(crate) fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Lane::Telemetry),
            1 => Some(Lane::Priority),
            _ => None,
        }
    }
}

/// A record handed out by [`Buffer::drain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The sequence number, unique per sensor; the Collector deduplicates by it.
    pub seq: u64,
    /// The lane it was appended to; gap records are in the priority lane.
    pub lane: Lane,
    /// When it was appended, in Unix milliseconds of the sensor's clock.
    pub appended_at_ms: u64,
    /// The payload or the loss report.
    pub kind: RecordKind,
}

/// Content of a drained record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKind {
    /// Opaque payload bytes as appended.
    Event(prost::bytes::Bytes),
    /// A report of records lost by the buffer.
    Gap(Gap),
}

/// A report of lost records, itself delivered as a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Lowest sequence number of the lost range.
    pub first_seq: u64,
    /// Highest sequence number of the lost range. Numbers of the other lane inside the range
    /// were not lost.
    pub last_seq: u64,
    /// Number of records lost, or 0 when unknown (damaged bytes).
    pub records: u64,
    /// Bytes lost, framing included, or 0 when unknown (a missing segment file).
    pub bytes: u64,
    /// Cause of the loss.
    pub reason: GapReason,
    /// When the loss happened, in Unix milliseconds of the sensor's clock.
    pub detected_at_ms: u64,
}

/// Cause of a loss of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The buffer was full and the oldest telemetry segment was evicted.
    TelemetryEvicted,
    /// The buffer was full with no telemetry left and the oldest priority segment was evicted.
    PriorityEvicted,
    /// Bytes on disk failed their CRC or framing checks at open and were skipped.
    Damaged,
    /// A segment file was missing at open: the sequence numbers it held are found in no record
    /// of either lane and in no earlier gap record.
    SegmentMissing,
}

impl GapReason {
    pub(crate) fn as_byte(self) -> u8 {
        match self {
            GapReason::TelemetryEvicted => 1,
            GapReason::PriorityEvicted => 2,
            GapReason::Damaged => 3,
            GapReason::SegmentMissing => 4,
        }
    }

    pub(crate) fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(GapReason::TelemetryEvicted),
            2 => Some(GapReason::PriorityEvicted),
            3 => Some(GapReason::Damaged),
            4 => Some(GapReason::SegmentMissing),
            _ => None,
        }
    }
}

/// A snapshot of the buffer's state, for the sensor's own telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferMetrics {
    /// Records not yet acknowledged, gap records included.
    pub buffered_records: u64,
    /// Frame bytes of those records.
    pub buffered_bytes: u64,
    /// Bytes of all segment files plus bytes not yet written, the figure held to the capacity.
    pub disk_bytes: u64,
    /// The configured capacity.
    pub capacity_bytes: u64,
    /// Age of the oldest unacknowledged record by the sensor's clock, `None` when there is none.
    pub oldest_record_age: Option<Duration>,
    /// Records lost to eviction since open.
    pub evicted_records: u64,
    /// Frame bytes lost to eviction since open.
    pub evicted_bytes: u64,
    /// Gap records written since open.
    pub gap_records: u64,
    /// Damaged regions skipped since open, each counted once.
    pub damaged_records_skipped: u64,
    /// Bytes of torn tails truncated at open.
    pub torn_bytes_truncated: u64,
    /// Records found missing at open because a segment file was deleted or lost, each reported
    /// in a gap record with reason [`GapReason::SegmentMissing`].
    pub missing_records: u64,
    /// Gap records handed out by [`Buffer::drain`] since open, each counted once even when a
    /// rewind or reconnect hands it out again.
    pub reported_gaps: u64,
    /// Records that those gap records report lost. A gap of unknown size (damaged bytes) counts
    /// every number of its range, an upper bound that can include records of the other lane.
    pub reported_lost_records: u64,
    /// The sequence number the next append receives.
    pub next_seq: u64,
    /// Every record at or below this number is fsynced.
    pub durable_seq: u64,
    /// Every record at or below this number is stored by the Collector.
    pub acked_seq: u64,
}
