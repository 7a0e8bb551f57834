//! The [`Buffer`]: appends with group commit, drain, acknowledgement and eviction.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::clock::CoarseInstant;
use super::flush::{FLUSH_AHEAD_BYTES, Flusher};
use super::format::{
    self, CursorState, FRAME_HEADER_LEN, FrameKind, GAP_PAYLOAD_LEN, SEGMENT_HEADER_LEN,
};
use super::platform::{self, DefaultDirectoryAcl, DirectoryAcl};
use super::rate::TokenBucket;
use super::segment::{
    self, DamagedRegion, HeldGap, LaneReader, LaneScan, ReadDamage, ReadRecord, SegmentMeta,
};
use super::{BufferError, BufferMetrics, BufferOptions, Gap, GapReason, Lane, Record, RecordKind};

/// Pending bytes of a lane at which they are written to the file without waiting for the sync.
const WRITE_THRESHOLD: usize = 256 << 10;
/// Frame bytes appended since the last group commit at which an append runs the next one
/// without waiting for the sync interval, so that a burst reaches the reader in steps of this
/// size instead of after a whole interval.
const GROUP_COMMIT_BYTES: u64 = 32 << 20;
/// Frame length of a gap record, kept free so that an eviction can always record its gap.
const GAP_FRAME_LEN: u64 = (FRAME_HEADER_LEN + GAP_PAYLOAD_LEN) as u64;
/// Gaps found at open that [`Buffer::open_gaps`] keeps; the gap records are the full account.
const OPEN_GAPS_KEPT: usize = 64;
const CURSOR_FILE: &str = "cursor";
const CURSOR_TEMP_FILE: &str = "cursor.tmp";
/// The cursor of the latest acknowledgement, overwritten in place and never fsynced. `cursor`
/// is written only with fsyncs, so a power failure that damages or empties this file leaves
/// the last durable cursor intact.
const ACK_CURSOR_FILE: &str = "cursor.ack";

/// A durable, bounded, two-lane record buffer in a directory. See the module documentation for
/// its guarantees, format and recovery rules.
#[derive(Debug)]
pub struct Buffer {
    options: BufferOptions,
    lanes: [LaneState; 2],
    /// Sequence number the next append receives.
    next_seq: u64,
    /// Every sequence number at or below this one is fsynced (or was never handed out).
    durable_seq: u64,
    /// Every sequence number at or below this one is stored by the Collector.
    acked_seq: u64,
    /// The `acked_seq` of the last cursor that was fsynced. Segments are deleted only up to it,
    /// so that a power failure that takes back a later cursor finds every record it calls
    /// unacknowledged still on disk.
    durable_acked_seq: u64,
    /// When the cursor of an acknowledgement newer than `durable_acked_seq` is due to be fsynced.
    cursor_sync_due: Option<CoarseInstant>,
    /// `cursor.ack`, open once the first acknowledgement of this process is written.
    ack_file: Option<File>,
    /// When the oldest record not yet fsynced was appended, by both clocks.
    unsynced_since: Option<GroupStart>,
    /// Frame bytes appended since the last group commit.
    unsynced_bytes: u64,
    byte_bucket: Option<TokenBucket>,
    record_bucket: Option<TokenBucket>,
    counters: Counters,
    /// The last [`OPEN_GAPS_KEPT`] gaps that the recovery at open recorded, for health reports.
    open_gaps: VecDeque<Gap>,
    /// Damage found by the readers after open and not yet reported in a gap record.
    read_damage: Vec<ReadDamage>,
    /// Lane, segment key and offset of every damage found after open, so that a reader passing
    /// it again after a rewind reports it once.
    read_damage_seen: HashSet<(Lane, u64, u64)>,
    poisoned: bool,
    /// Fsyncs segment data early while appends go on; see the `flush` module.
    flusher: Flusher,
}

/// The two clock readings taken at the first append of a commit group.
///
/// Later appends of the group read only the coarse monotonic clock and stamp their records with
/// `unix_ms` plus the time elapsed since `started`. One cheap clock read per append serves both
/// the group commit deadline and the append time. A step of the wall clock reaches the stamps at
/// the next group, at most one sync interval later when the owner calls `tick`.
#[derive(Debug, Clone, Copy)]
struct GroupStart {
    started: CoarseInstant,
    unix_ms: u64,
    /// When the sync interval has elapsed, compared on each append instead of a subtraction;
    /// `None` when that lies beyond what the clock can represent.
    sync_due: Option<CoarseInstant>,
}

impl GroupStart {
    fn starting_at(started: CoarseInstant, sync_interval: Duration) -> Self {
        Self {
            started,
            unix_ms: unix_millis(),
            sync_due: started.checked_add(sync_interval),
        }
    }

    fn sync_due_at(self, now: CoarseInstant) -> bool {
        self.sync_due.is_some_and(|due| now >= due)
    }

    /// Returns the append time in Unix milliseconds of a record appended at `now`.
    fn unix_ms_at(self, now: CoarseInstant) -> u64 {
        self.unix_ms.saturating_add(now.millis_since(self.started))
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    evicted_records: u64,
    evicted_bytes: u64,
    gap_records: u64,
    damaged_regions: u64,
    torn_bytes: u64,
    missing_records: u64,
    /// Gap records handed out by drain, and the records they report lost.
    reported_gaps: u64,
    reported_lost_records: u64,
    /// Highest sequence number of a gap record counted in `reported_gaps`.
    counted_gap_seq: u64,
}

/// One lane: its segments, the segment being appended to, and the reader.
#[derive(Debug)]
struct LaneState {
    lane: Lane,
    dir: PathBuf,
    /// Segments by key. Insert and remove only through `insert_segment` and `remove_segment`,
    /// which keep `segments_len` equal to the sum of their `len`.
    segments: BTreeMap<u64, SegmentMeta>,
    /// Sum of `len` over `segments`, kept up to date so that `make_room` need not add up every
    /// segment on each append.
    segments_len: u64,
    writer: SegmentWriter,
    /// Closed segments whose bytes are written but not yet fsynced.
    unsynced_closed: Vec<(u64, File)>,
    /// A segment was created since the last directory fsync.
    dir_dirty: bool,
    /// Bytes written to the lane since the last group commit or early fsync request.
    unflushed_bytes: u64,
    /// Segments closed since then, fsynced early with the active one.
    unflushed_closed: Vec<PathBuf>,
    reader: LaneReader,
    /// Records handed out by `drain` and not yet acknowledged, oldest first.
    in_flight: VecDeque<InFlight>,
}

#[derive(Debug)]
struct SegmentWriter {
    key: u64,
    file: File,
    pending: Vec<u8>,
    /// Append time of the first pending record, for the oldest-record metric.
    pending_first_ms: Option<u64>,
    /// The file has bytes written since the last fsync.
    dirty: bool,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    segment: u64,
    frame_len: u64,
    appended_at_ms: u64,
}

impl Buffer {
    /// Opens or creates the buffer in `options.directory`, restricting the directory with the
    /// platform's [`DefaultDirectoryAcl`], and recovers from whatever a crash left.
    pub fn open(options: BufferOptions) -> Result<Self, BufferError> {
        Self::open_with_acl(options, &DefaultDirectoryAcl)
    }

    /// Opens or creates the buffer like [`Buffer::open`], restricting the directory with `acl`.
    pub fn open_with_acl(
        options: BufferOptions,
        acl: &dyn DirectoryAcl,
    ) -> Result<Self, BufferError> {
        check_options(&options)?;
        let directory = options.directory.clone();

        // Step 1: the directory tree, private to the service accounts.
        platform::create_dir_all(&directory).map_err(|error| {
            BufferError::from_io("create buffer directory", directory.clone(), error)
        })?;
        acl.restrict(&directory).map_err(|error| {
            BufferError::from_io("restrict access to", directory.clone(), error)
        })?;
        for lane in Lane::ALL {
            let lane_dir = directory.join(lane.name());
            platform::create_dir_all(&lane_dir)
                .map_err(|error| BufferError::from_io("create lane directory", lane_dir, error))?;
        }

        // Step 2: the cursor. `cursor.ack` may contain a later acknowledgement than `cursor`,
        // and a damaged or empty one is ignored. Without either, the cursor is rebuilt below
        // from the segments.
        let durable_cursor = read_cursor(&directory.join(CURSOR_FILE));
        let cursor = match (
            durable_cursor,
            read_cursor(&directory.join(ACK_CURSOR_FILE)),
        ) {
            (Some(durable), Some(ack)) => Some(CursorState {
                acked_seq: durable.acked_seq.max(ack.acked_seq),
                next_seq: durable.next_seq.max(ack.next_seq),
            }),
            (durable, ack) => durable.or(ack),
        };
        let acked_seq = cursor.map_or(0, |state| state.acked_seq);

        // Step 3: scan both lanes, cutting torn tails and noting damaged regions.
        let mut scans = Vec::with_capacity(2);
        for lane in Lane::ALL {
            let lane_dir = directory.join(lane.name());
            scans.push(segment::scan_lane(
                &lane_dir,
                lane,
                acked_seq,
                options.max_record_bytes,
            )?);
        }

        // Step 4: the next sequence number lies above every number ever handed out: above every
        // record, every segment key (at most the next number when the segment was created) and
        // the cursor's own record of it.
        let mut next_seq = cursor.map_or(1, |state| state.next_seq).max(acked_seq + 1);
        for scan in &scans {
            next_seq = next_seq.max(scan.max_seq + 1);
            if let Some((&key, _)) = scan.segments.last_key_value() {
                next_seq = next_seq.max(key);
            }
        }

        // Step 5: without a valid cursor, everything still on disk is unacknowledged. Records
        // acknowledged before the cursor was lost may be sent once more, never more often,
        // because the rebuilt cursor is written now.
        let acked_seq = match cursor {
            Some(_) => acked_seq,
            None => {
                let oldest = scans
                    .iter()
                    .flat_map(|scan| scan.segments.values())
                    .filter(|meta| meta.records > 0)
                    .map(|meta| meta.first_seq)
                    .min();
                let rebuilt = oldest.map_or(next_seq - 1, |seq| seq.saturating_sub(1));
                if directory.join(CURSOR_FILE).exists() {
                    tracing::warn!(directory = %directory.display(), acked_seq = rebuilt, "cursor damaged, rebuilt from segments");
                }
                rebuilt
            }
        };

        // Step 6: find the numbers that a deleted or lost segment file took with it. The
        // damaged regions are left out because they get their own gap records below.
        let damaged_ranges: Vec<(u64, u64)> = scans
            .iter()
            .flat_map(|scan| &scan.damaged)
            .map(|region| (region.after_seq + 1, damaged_last_seq(region)))
            .collect();
        let missing = segment::missing_ranges(&scans, cursor.map(|_| acked_seq), &damaged_ranges);

        let mut counters = Counters::default();
        let mut lanes = Vec::with_capacity(2);
        let mut damaged = Vec::new();
        for (lane, scan) in Lane::ALL.into_iter().zip(scans) {
            counters.damaged_regions += scan.damaged.len() as u64;
            counters.torn_bytes += scan.torn_bytes;
            damaged.extend(scan.damaged.iter().map(|region| (lane, *region)));
            lanes.push(LaneState::open(&directory, lane, scan, next_seq)?);
        }
        let [telemetry, priority] =
            <[LaneState; 2]>::try_from(lanes).map_err(|_| BufferError::InvalidOptions {
                reason: "internal: lane count is not two".to_owned(),
            })?;

        let flusher = Flusher::start().map_err(|error| {
            BufferError::from_io("start flush thread for", directory.clone(), error)
        })?;
        let now = Instant::now();
        let mut buffer = Self {
            byte_bucket: options
                .drain_rate_bytes_per_sec
                .map(|rate| TokenBucket::new(rate, now)),
            record_bucket: options
                .drain_rate_records_per_sec
                .map(|rate| TokenBucket::new(rate, now)),
            options,
            lanes: [telemetry, priority],
            next_seq,
            durable_seq: next_seq - 1,
            acked_seq,
            // Set below once the cursor read at open is known to be fsynced.
            durable_acked_seq: 0,
            cursor_sync_due: None,
            ack_file: None,
            unsynced_since: None,
            unsynced_bytes: 0,
            counters,
            open_gaps: VecDeque::new(),
            read_damage: Vec::new(),
            read_damage_seen: HashSet::new(),
            poisoned: false,
            flusher,
        };

        // Step 7: persist the recovered state, then report damaged regions and missing
        // segments to the Collector.
        // `cursor` is rewritten only when it was missing or damaged or `cursor.ack` was ahead
        // of it, so that a buffer on a full disk still opens and can be drained.
        buffer.sync_all_lanes()?;
        let durable_matches = durable_cursor.is_some_and(|state| {
            state.next_seq == buffer.next_seq && state.acked_seq == buffer.acked_seq
        });
        if !durable_matches {
            match buffer.write_cursor() {
                Err(BufferError::DiskFull { path, source }) if cursor.is_some() => {
                    tracing::warn!(path = %path.display(), %source, "disk full, cursor not updated at open");
                }
                other => other?,
            }
        }
        if buffer.durable_acked_seq < buffer.acked_seq
            && let Some(durable) = durable_cursor
        {
            // `cursor` was written with fsyncs, but after a crash of the process its rename
            // may still be only in the page cache.
            match platform::open_read_write(&buffer.options.directory.join(CURSOR_FILE))
                .and_then(|file| file.sync_all())
                .and_then(|()| platform::sync_dir(&buffer.options.directory))
            {
                Ok(()) => buffer.durable_acked_seq = durable.acked_seq,
                Err(error) => {
                    tracing::warn!(directory = %buffer.options.directory.display(), %error, "fsync of the cursor failed at open, acknowledged segments kept until the next cursor write");
                }
            }
        }
        buffer.delete_acked_segments()?;
        let detected_at_ms = unix_millis();
        for (lane, region) in damaged {
            if region.before_seq.is_some_and(|seq| seq <= buffer.acked_seq) {
                continue;
            }
            let gap = Gap {
                first_seq: region.after_seq + 1,
                last_seq: damaged_last_seq(&region),
                records: 0,
                bytes: region.bytes,
                reason: GapReason::Damaged,
                detected_at_ms,
            };
            tracing::error!(lane = lane.name(), ?gap, "damaged records skipped at open");
            buffer.append_open_gap(&gap)?;
        }
        for range in missing {
            let gap = Gap {
                first_seq: range.first_seq,
                last_seq: range.last_seq,
                records: range.records,
                bytes: 0,
                reason: GapReason::SegmentMissing,
                detected_at_ms,
            };
            tracing::error!(directory = %buffer.options.directory.display(), ?gap, "records missing at open: a segment file was deleted or lost");
            buffer.counters.missing_records += gap.records;
            buffer.append_open_gap(&gap)?;
        }
        if buffer.counters.gap_records > 0 {
            buffer.sync()?;
        }

        buffer.debug_check_disk_bytes();
        tracing::info!(
            directory = %buffer.options.directory.display(),
            next_seq = buffer.next_seq, acked_seq = buffer.acked_seq,
            damaged_regions = buffer.counters.damaged_regions, torn_bytes = buffer.counters.torn_bytes,
            missing_records = buffer.counters.missing_records,
            "ring buffer opened"
        );
        Ok(buffer)
    }

    /// Appends a record to `lane` and returns its sequence number.
    ///
    /// The record is durable once [`Buffer::durable_seq`] reaches that number, which happens at
    /// the next group commit: inside this call when the sync interval is zero or has elapsed
    /// since the oldest unsynced append, or in [`Buffer::tick`], [`Buffer::sync`] or
    /// [`Buffer::close`]. When the buffer is full, the oldest telemetry segment is evicted
    /// first, then (only with no telemetry left) the oldest priority segment.
    pub fn append(&mut self, lane: Lane, payload: &[u8]) -> Result<u64, BufferError> {
        self.check_poisoned()?;
        if payload.len() > self.options.max_record_bytes {
            return Err(BufferError::RecordTooLarge {
                len: payload.len(),
                max: self.options.max_record_bytes,
            });
        }

        let frame_len = (FRAME_HEADER_LEN + payload.len()) as u64;
        self.make_room(frame_len)?;
        let now = CoarseInstant::now();
        let seq = self.append_frame(lane, FrameKind::Event, payload, now)?;

        // The record is accepted whatever the group commit does: a failed sync leaves it
        // pending, `durable_seq` stays below it, and the next sync or append reports the error.
        self.unsynced_bytes += frame_len;
        let commit_due = self.unsynced_bytes >= GROUP_COMMIT_BYTES
            || self
                .unsynced_since
                .is_some_and(|since| since.sync_due_at(now));
        if commit_due && let Err(error) = self.sync() {
            tracing::warn!(%error, seq, "group commit after append failed, record stays pending");
        }
        self.debug_check_disk_bytes();
        Ok(seq)
    }

    /// Runs the group commit if the oldest unsynced record has waited for the sync interval.
    /// Call it at least once per interval when appends may pause, so that the last records of
    /// a burst become durable on time. Returns the highest durable sequence number.
    pub fn tick(&mut self) -> Result<u64, BufferError> {
        self.check_poisoned()?;
        let now = CoarseInstant::now();
        if self
            .unsynced_since
            .is_some_and(|since| since.sync_due_at(now))
        {
            self.sync()?;
        } else if self.cursor_sync_due.is_some_and(|due| now >= due) {
            self.sync_cursor()?;
        }
        Ok(self.durable_seq)
    }

    /// Writes and fsyncs everything appended so far, and returns the highest durable sequence
    /// number, which is then the last one appended.
    pub fn sync(&mut self) -> Result<u64, BufferError> {
        self.check_poisoned()?;
        if self.durable_seq == self.next_seq - 1 {
            return Ok(self.durable_seq);
        }
        self.sync_all_lanes()?;

        // The cursor records the next sequence number, so that a durable number lost later to
        // disk damage (a truncated or zeroed segment) is never handed out again.
        self.write_cursor()?;
        self.durable_seq = self.next_seq - 1;
        self.unsynced_since = None;
        self.unsynced_bytes = 0;
        self.delete_acked_segments()?;
        self.debug_check_disk_bytes();
        Ok(self.durable_seq)
    }

    /// Fsyncs the cursor of the latest acknowledgement, then deletes the segments it covers.
    fn sync_cursor(&mut self) -> Result<(), BufferError> {
        self.write_cursor()?;
        self.delete_acked_segments()
    }

    /// Returns the highest sequence number at or below which every record is durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Returns the last 64 gaps that the recovery at open recorded (damaged regions and missing
    /// segments), oldest first, so that health reports can name them before their gap records
    /// are drained.
    pub fn open_gaps(&self) -> impl Iterator<Item = &Gap> {
        self.open_gaps.iter()
    }

    /// Returns the highest acknowledged sequence number.
    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// Returns up to `max_records` durable records not yet handed out, oldest first across both
    /// lanes, within the drain rate cap.
    ///
    /// An empty result means that nothing durable is waiting or that the rate cap is reached;
    /// [`Buffer::drain_wait`] returns how long the cap holds. Records handed out and never
    /// acknowledged are handed out again after [`Buffer::rewind`] or a reopen.
    pub fn drain(&mut self, max_records: usize) -> Result<Vec<Record>, BufferError> {
        self.check_poisoned()?;
        self.report_read_damage()?;
        let now = Instant::now();
        let mut out = Vec::new();
        while out.len() < max_records {
            if !self.budget_ready(now) {
                break;
            }
            let Some(lane) = self.next_lane()? else {
                break;
            };
            let state = &mut self.lanes[lane.index()];
            let Some(read) = state.reader.take() else {
                break;
            };
            // After a rewind the reader passes records acknowledged in this process again.
            if read.seq <= self.acked_seq {
                continue;
            }
            if let Some(bucket) = self.byte_bucket.as_mut() {
                bucket.take(read.payload.len() as u64);
            }
            if let Some(bucket) = self.record_bucket.as_mut() {
                bucket.take(1);
            }
            state.in_flight.push_back(InFlight {
                seq: read.seq,
                segment: read.segment,
                frame_len: read.frame_len,
                appended_at_ms: read.appended_at_ms,
            });
            let record = into_record(lane, read);
            self.count_reported_loss(&record);
            out.push(record);
        }
        self.report_read_damage()?;
        Ok(out)
    }

    /// Counts the damage that a reader found, once per damaged region.
    fn note_read_damage(&mut self, damaged: Vec<ReadDamage>) {
        for damage in damaged {
            if self
                .read_damage_seen
                .insert((damage.lane, damage.segment, damage.offset))
            {
                self.counters.damaged_regions += 1;
                self.read_damage.push(damage);
            }
        }
    }

    /// Appends a gap record for each damage that a reader found after open, like the damaged
    /// regions found at open, and makes it durable so that the next drain hands it out.
    fn report_read_damage(&mut self) -> Result<(), BufferError> {
        if self.read_damage.is_empty() {
            return Ok(());
        }
        let detected_at_ms = unix_millis();
        for damage in std::mem::take(&mut self.read_damage) {
            // In the active segment, the reader reads the records above `durable_seq` once they
            // are durable, because they lie after the skipped bytes. So they are not lost.
            let active = self.lanes[damage.lane.index()].writer.key == damage.segment;
            let last_seq = if active {
                damage.last_seq.min(self.durable_seq)
            } else {
                damage.last_seq
            };
            let first_seq = damage.first_seq.max(self.acked_seq + 1);
            if first_seq > last_seq {
                continue;
            }
            let gap = Gap {
                first_seq,
                last_seq,
                records: 0,
                bytes: damage.bytes,
                reason: GapReason::Damaged,
                detected_at_ms,
            };
            tracing::error!(directory = %self.options.directory.display(), lane = damage.lane.name(), segment = damage.segment, offset = damage.offset, ?gap, "damaged records skipped while draining");
            self.append_gap(&gap)?;
        }
        self.sync()?;
        Ok(())
    }

    /// Adds the loss that a drained gap record reports to the counters, once per gap record
    /// even when a rewind hands it out again.
    fn count_reported_loss(&mut self, record: &Record) {
        let RecordKind::Gap(gap) = &record.kind else {
            return;
        };
        if record.seq <= self.counters.counted_gap_seq {
            return;
        }
        self.counters.counted_gap_seq = record.seq;
        self.counters.reported_gaps += 1;
        self.counters.reported_lost_records += match gap.records {
            // Damaged bytes: every number in the range may have been a lost record. The empty
            // range (`first_seq = last_seq + 1`) of damage between two consecutive records
            // lost none.
            0 => gap.last_seq.saturating_add(1).saturating_sub(gap.first_seq),
            records => records,
        };
    }

    /// Returns how long the drain rate cap holds back the next record; zero when it does not.
    pub fn drain_wait(&mut self) -> Duration {
        let now = Instant::now();
        let bytes = self
            .byte_bucket
            .as_mut()
            .map_or(Duration::ZERO, |bucket| bucket.wait_time(now));
        let records = self
            .record_bucket
            .as_mut()
            .map_or(Duration::ZERO, |bucket| bucket.wait_time(now));
        bytes.max(records)
    }

    /// Moves the drain position back to the oldest unacknowledged record, for example after the
    /// connection to the Collector dropped with records in flight.
    pub fn rewind(&mut self) {
        for state in &mut self.lanes {
            state.in_flight.clear();
            state.rewind_reader();
        }
    }

    /// Records that the Collector stored every record with a sequence number at or below
    /// `seq`. `cursor.ack` is overwritten at once, so a crash of the process keeps the
    /// acknowledgement. The cursor is fsynced with the next group commit, or at most one sync
    /// interval later when the owner calls [`Buffer::tick`]. Segments that hold only
    /// acknowledged records are deleted once an fsynced cursor covers them.
    pub fn ack(&mut self, seq: u64) -> Result<(), BufferError> {
        self.check_poisoned()?;
        if seq <= self.acked_seq {
            return Ok(());
        }
        if seq > self.durable_seq {
            return Err(BufferError::AckBeyondDurable {
                acked: seq,
                durable: self.durable_seq,
            });
        }

        // Account handed-out records first, then records acknowledged without being handed out
        // in this process (acknowledged before a restart whose cursor update was lost).
        let max_payload = self.options.max_record_bytes;
        let previous_ack = self.acked_seq;
        let mut damaged = Vec::new();
        for state in &mut self.lanes {
            while let Some(entry) = state.in_flight.front().copied() {
                if entry.seq > seq {
                    break;
                }
                state.in_flight.pop_front();
                state.mark_acked(entry.segment, entry.frame_len);
            }
            if state.in_flight.is_empty() {
                loop {
                    let active = state.writer.key;
                    let next = state.reader.peek(
                        &state.segments,
                        active,
                        state.lane,
                        max_payload,
                        &mut damaged,
                    )?;
                    let Some((read_seq, read)) = next
                        .filter(|read| read.seq <= seq)
                        .map(|read| (read.seq, (read.segment, read.frame_len)))
                    else {
                        break;
                    };
                    state.reader.take();
                    if read_seq > previous_ack {
                        state.mark_acked(read.0, read.1);
                    }
                }
            }
        }
        self.note_read_damage(damaged);

        self.acked_seq = seq;
        // Scheduled first, so that a failed write of `cursor.ack` still gets its fsynced
        // cursor within the interval.
        if self.cursor_sync_due.is_none() {
            self.cursor_sync_due = CoarseInstant::now().checked_add(self.options.sync_interval);
        }
        self.write_ack_cursor()?;
        self.debug_check_disk_bytes();
        Ok(())
    }

    /// Returns the current metrics. Reads the next record of each lane from disk when needed
    /// for the age of the oldest record.
    pub fn metrics(&mut self) -> BufferMetrics {
        self.debug_check_disk_bytes();
        let mut buffered_records = 0;
        let mut buffered_bytes = 0;
        let mut oldest_ms: Option<u64> = None;
        let max_payload = self.options.max_record_bytes;
        let mut damaged = Vec::new();
        for state in &mut self.lanes {
            for meta in state.segments.values() {
                buffered_records += meta.unacked_records();
                buffered_bytes += meta.unacked_bytes();
            }

            let active = state.writer.key;
            let lane_oldest = match state.in_flight.front() {
                Some(entry) => Some(entry.appended_at_ms),
                None => match state.reader.peek(
                    &state.segments,
                    active,
                    state.lane,
                    max_payload,
                    &mut damaged,
                ) {
                    Ok(Some(read)) => Some(read.appended_at_ms),
                    _ => state.writer.pending_first_ms,
                },
            };
            oldest_ms = match (oldest_ms, lane_oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.note_read_damage(damaged);

        let now_ms = unix_millis();
        BufferMetrics {
            buffered_records,
            buffered_bytes,
            disk_bytes: self.disk_bytes(),
            capacity_bytes: self.options.capacity_bytes,
            oldest_record_age: oldest_ms
                .filter(|_| buffered_records > 0)
                .map(|ms| Duration::from_millis(now_ms.saturating_sub(ms))),
            evicted_records: self.counters.evicted_records,
            evicted_bytes: self.counters.evicted_bytes,
            gap_records: self.counters.gap_records,
            damaged_records_skipped: self.counters.damaged_regions,
            torn_bytes_truncated: self.counters.torn_bytes,
            missing_records: self.counters.missing_records,
            reported_gaps: self.counters.reported_gaps,
            reported_lost_records: self.counters.reported_lost_records,
            next_seq: self.next_seq,
            durable_seq: self.durable_seq,
            acked_seq: self.acked_seq,
        }
    }

    /// Syncs everything and closes the buffer; returns the highest durable sequence number.
    pub fn close(mut self) -> Result<u64, BufferError> {
        let durable = self.sync()?;
        if self.durable_acked_seq < self.acked_seq {
            self.sync_cursor()?;
        }
        tracing::info!(directory = %self.options.directory.display(), durable_seq = durable, "ring buffer closed");
        Ok(durable)
    }

    // === appending ===

    /// Encodes a frame into the pending bytes of `lane`, rotating its segment first when the
    /// frame would take it past the segment size. `now` is the caller's clock reading for this
    /// append.
    fn append_frame(
        &mut self,
        lane: Lane,
        kind: FrameKind,
        payload: &[u8],
        now: CoarseInstant,
    ) -> Result<u64, BufferError> {
        let frame_len = (FRAME_HEADER_LEN + payload.len()) as u64;
        let segment_bytes = self.options.segment_bytes;
        let seq = self.next_seq;
        let group = self
            .unsynced_since
            .unwrap_or_else(|| GroupStart::starting_at(now, self.options.sync_interval));
        let flusher = &self.flusher;
        let state = &mut self.lanes[lane.index()];

        if state.writer.pending.len() >= WRITE_THRESHOLD {
            state.write_pending(flusher)?;
        }

        // An empty segment takes the frame whatever its size, so that every frame finds a home.
        // The active segment is looked up once per append and again only after a rotation.
        let pending_len = state.writer.pending.len() as u64;
        let mut active = active_meta_mut(&mut state.segments, state.writer.key);
        let segment_full = active.as_ref().is_some_and(|meta| {
            meta.records > 0 && meta.len + pending_len + frame_len > segment_bytes
        });
        if segment_full {
            state.rotate(seq, flusher)?;
            active = active_meta_mut(&mut state.segments, state.writer.key);
        }

        let appended_at_ms = group.unix_ms_at(now);
        let writer = &mut state.writer;
        format::encode_frame(
            &mut writer.pending,
            lane,
            kind,
            seq,
            appended_at_ms,
            payload,
        );
        writer.pending_first_ms.get_or_insert(appended_at_ms);
        if let Some(meta) = active {
            if meta.records == 0 {
                meta.first_seq = seq;
            }
            meta.records += 1;
            meta.record_bytes += frame_len;
            meta.last_seq = seq;
        }

        self.next_seq += 1;
        self.unsynced_since = Some(group);
        Ok(seq)
    }

    /// Appends a gap found by the recovery at open and keeps it for [`Buffer::open_gaps`].
    fn append_open_gap(&mut self, gap: &Gap) -> Result<u64, BufferError> {
        let seq = self.append_gap(gap)?;
        if self.open_gaps.len() == OPEN_GAPS_KEPT {
            self.open_gaps.pop_front();
        }
        self.open_gaps.push_back(*gap);
        Ok(seq)
    }

    fn append_gap(&mut self, gap: &Gap) -> Result<u64, BufferError> {
        let payload = format::encode_gap(gap);
        let seq = self.append_frame(
            Lane::Priority,
            FrameKind::Gap,
            &payload,
            CoarseInstant::now(),
        )?;
        let state = &mut self.lanes[Lane::Priority.index()];
        if let Some(meta) = state.segments.get_mut(&state.writer.key) {
            meta.gaps.push(HeldGap {
                seq,
                first_seq: gap.first_seq,
                records: gap.records,
                bytes: gap.bytes,
            });
        }
        self.counters.gap_records += 1;
        Ok(seq)
    }

    /// Returns the bytes held to the capacity: every segment file plus the pending bytes.
    fn disk_bytes(&self) -> u64 {
        self.lanes.iter().map(LaneState::disk_bytes).sum()
    }

    /// Checks in debug builds that the running totals behind [`Buffer::disk_bytes`] equal the
    /// sum over every segment. Release builds skip the check because it visits every segment.
    fn debug_check_disk_bytes(&self) {
        if cfg!(debug_assertions) {
            for state in &self.lanes {
                let summed: u64 = state.segments.values().map(|meta| meta.len).sum();
                debug_assert_eq!(
                    state.segments_len,
                    summed,
                    "running segment length of lane {} differs from the sum over its segments",
                    state.lane.name()
                );
            }
        }
    }

    /// Evicts segments until a frame of `frame_len` bytes, a possible new segment header and a
    /// gap record fit within the capacity.
    fn make_room(&mut self, frame_len: u64) -> Result<(), BufferError> {
        // Both the record and its gap record may start a new segment.
        let needed = frame_len + 2 * SEGMENT_HEADER_LEN as u64 + GAP_FRAME_LEN;
        if self.disk_bytes() + needed <= self.options.capacity_bytes {
            return Ok(());
        }
        // Acknowledged segments waiting for an fsynced cursor go before anything is evicted.
        if self.durable_acked_seq < self.acked_seq {
            self.sync_cursor()?;
            if self.disk_bytes() + needed <= self.options.capacity_bytes {
                return Ok(());
            }
        }

        // Every eviction removes one segment, so more rounds than segments mean no progress.
        let mut rounds_left = self
            .lanes
            .iter()
            .map(|state| state.segments.len())
            .sum::<usize>()
            + 2;
        while self.disk_bytes() + needed > self.options.capacity_bytes {
            let mut victim = self
                .evictable(Lane::Telemetry)?
                .map(|key| (Lane::Telemetry, key, GapReason::TelemetryEvicted));
            if victim.is_none() {
                victim = self
                    .evictable(Lane::Priority)?
                    .map(|key| (Lane::Priority, key, GapReason::PriorityEvicted));
            }
            let (Some((lane, key, reason)), 1..) = (victim, rounds_left) else {
                return Err(BufferError::Full {
                    directory: self.options.directory.clone(),
                    len: usize::try_from(frame_len).unwrap_or(usize::MAX),
                });
            };
            rounds_left -= 1;
            self.evict(lane, key, reason)?;
        }
        Ok(())
    }

    /// Returns the oldest segment of `lane` that holds records, rotating the lane first when
    /// that segment is the one being appended to.
    fn evictable(&mut self, lane: Lane) -> Result<Option<u64>, BufferError> {
        let next_seq = self.next_seq;
        let state = &mut self.lanes[lane.index()];
        let Some((&oldest, meta)) = state.segments.iter().next() else {
            return Ok(None);
        };
        if oldest == state.writer.key {
            if meta.records == 0 {
                return Ok(None);
            }
            state.rotate(next_seq, &self.flusher)?;
        }
        Ok(Some(oldest))
    }

    /// Deletes segment `key` of `lane` after recording what it held in a durable gap record.
    fn evict(&mut self, lane: Lane, key: u64, reason: GapReason) -> Result<(), BufferError> {
        let acked = self.acked_seq;
        let state = &mut self.lanes[lane.index()];
        let Some(meta) = state.segments.get(&key) else {
            return Ok(());
        };
        let lost_records = meta.unacked_records();
        let lost_bytes = meta.unacked_bytes();
        // Gap records of this segment that the Collector has not acknowledged go with it, so
        // the new gap record also reports what they reported.
        let carried: Vec<HeldGap> = meta
            .gaps
            .iter()
            .filter(|gap| gap.seq > acked)
            .copied()
            .collect();
        // The range starts at the key, so that it also covers the numbers in front of the first
        // record, which the check for missing segments at open would otherwise report. A
        // carried range keeps its start even at or below `acked`: the Collector can acknowledge
        // past a lost range before the gap record that reports it arrives.
        let first_seq = carried
            .iter()
            .map(|gap| gap.first_seq)
            .fold(key.max(acked + 1), u64::min);
        let last_seq = meta.last_seq;
        // The carried gap records are not lost records themselves; what they report is.
        let reported_records = carried
            .iter()
            .fold(
                lost_records.saturating_sub(carried.len() as u64),
                |sum, gap| sum.saturating_add(gap.records),
            )
            .min(last_seq.saturating_sub(first_seq).saturating_add(1));
        let reported_bytes = carried
            .iter()
            .fold(lost_bytes, |sum, gap| sum.saturating_add(gap.bytes));
        let path = meta.path.clone();

        // Records of this segment handed out but not acknowledged are lost with it.
        while state
            .in_flight
            .front()
            .is_some_and(|entry| entry.segment == key)
        {
            state.in_flight.pop_front();
        }
        state.unsynced_closed.retain(|(closed, _)| *closed != key);

        // The gap record is made durable before the segment is deleted, so that a crash in
        // between can lose the records only together with a record of their loss.
        if lost_records > 0 {
            let gap = Gap {
                first_seq,
                last_seq,
                records: reported_records,
                bytes: reported_bytes,
                reason,
                detected_at_ms: unix_millis(),
            };
            tracing::error!(
                lane = lane.name(),
                ?gap,
                carried_gaps = carried.len(),
                "buffer full, evicting oldest segment"
            );
            self.append_gap(&gap)?;
            self.sync()?;
        }

        let state = &mut self.lanes[lane.index()];
        state.remove_segment(key);
        if state.reader.segment() == key {
            let next = state.segments.range(key..).next().map(|(&next, _)| next);
            if let Some(next) = next {
                state.reader.reposition(next, SEGMENT_HEADER_LEN as u64);
            }
        }
        platform::remove_file(&path)
            .map_err(|error| BufferError::from_io("delete segment", path, error))?;
        self.counters.evicted_records += lost_records;
        self.counters.evicted_bytes += lost_bytes;
        Ok(())
    }

    // === syncing and the cursor ===

    fn sync_all_lanes(&mut self) -> Result<(), BufferError> {
        for state in &mut self.lanes {
            state.write_pending(&self.flusher)?;
        }
        for index in 0..self.lanes.len() {
            let mut result = self.lanes[index].fsync();
            // An early fsync that failed may have cleared the error that this fsync would have
            // returned, so it fails the group commit the same way.
            if let Some((path, error)) = self.flusher.take_error() {
                result = Err(BufferError::from_io("fsync segment", path, error));
            }
            if let Err(error) = result {
                self.poisoned = true;
                tracing::error!(%error, directory = %self.options.directory.display(), "fsync failed, buffer stopped until reopened");
                return Err(error);
            }
        }
        self.flusher.committed();
        Ok(())
    }

    /// Replaces `cursor` with the current state: writes `cursor.tmp`, fsyncs it, renames it
    /// over `cursor` and fsyncs the directory. Segments up to its `acked_seq` may then be
    /// deleted.
    fn write_cursor(&mut self) -> Result<(), BufferError> {
        let directory = &self.options.directory;
        let temp = directory.join(CURSOR_TEMP_FILE);
        let target = directory.join(CURSOR_FILE);
        let acked_seq = self.acked_seq;
        let bytes = format::encode_cursor(CursorState {
            acked_seq,
            next_seq: self.next_seq,
        });

        let mut file = platform::create_truncate(&temp)
            .map_err(|error| BufferError::from_io("create cursor", temp.clone(), error))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|error| BufferError::from_io("write cursor", temp.clone(), error))?;
        drop(file);
        platform::rename_replace(&temp, &target)
            .map_err(|error| BufferError::from_io("rename cursor", target.clone(), error))?;
        platform::sync_dir(directory)
            .map_err(|error| BufferError::from_io("sync directory", directory.clone(), error))?;
        self.durable_acked_seq = acked_seq;
        self.cursor_sync_due = None;
        Ok(())
    }

    /// Overwrites `cursor.ack` in place with the current state, without an fsync. A rename
    /// would not do: a file system may make the rename durable before the new file's data, and
    /// leave an empty `cursor` after a power failure (a test on XFS did).
    fn write_ack_cursor(&mut self) -> Result<(), BufferError> {
        let path = self.options.directory.join(ACK_CURSOR_FILE);
        let bytes = format::encode_cursor(CursorState {
            acked_seq: self.acked_seq,
            next_seq: self.next_seq,
        });
        let file = match &mut self.ack_file {
            Some(file) => file,
            None => self.ack_file.insert(
                platform::create_truncate(&path)
                    .map_err(|error| BufferError::from_io("create cursor", path.clone(), error))?,
            ),
        };
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&bytes))
            .map_err(|error| BufferError::from_io("write cursor", path, error))
    }

    /// Deletes the closed segments whose records are all acknowledged by the last fsynced
    /// cursor.
    fn delete_acked_segments(&mut self) -> Result<(), BufferError> {
        let covered = self.durable_acked_seq;
        for state in &mut self.lanes {
            let active = state.writer.key;
            let done: Vec<u64> = state
                .segments
                .iter()
                .filter(|(key, meta)| {
                    **key != active && meta.unacked_records() == 0 && meta.last_seq <= covered
                })
                .map(|(key, _)| *key)
                .collect();
            for key in done {
                if let Some(meta) = state.remove_segment(key) {
                    state.unsynced_closed.retain(|(closed, _)| *closed != key);
                    platform::remove_file(&meta.path).map_err(|error| {
                        BufferError::from_io("delete segment", meta.path.clone(), error)
                    })?;
                }
            }
        }
        Ok(())
    }

    // === draining ===

    fn budget_ready(&mut self, now: Instant) -> bool {
        let bytes = self
            .byte_bucket
            .as_mut()
            .is_none_or(|bucket| bucket.ready(now));
        let records = self
            .record_bucket
            .as_mut()
            .is_none_or(|bucket| bucket.ready(now));
        bytes && records
    }

    /// Returns the lane whose next durable record has the lower sequence number.
    fn next_lane(&mut self) -> Result<Option<Lane>, BufferError> {
        let max_payload = self.options.max_record_bytes;
        let mut damaged = Vec::new();
        let mut best: Option<(u64, Lane)> = None;
        for state in &mut self.lanes {
            let active = state.writer.key;
            if let Some(read) = state.reader.peek(
                &state.segments,
                active,
                state.lane,
                max_payload,
                &mut damaged,
            )? && best.is_none_or(|(seq, _)| read.seq < seq)
            {
                best = Some((read.seq, state.lane));
            }
        }
        self.note_read_damage(damaged);
        Ok(best.map(|(_, lane)| lane))
    }

    fn check_poisoned(&self) -> Result<(), BufferError> {
        if self.poisoned {
            Err(BufferError::Poisoned {
                directory: self.options.directory.clone(),
            })
        } else {
            Ok(())
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if !self.poisoned
            && self.unsynced_since.is_some()
            && let Err(error) = self.sync()
        {
            tracing::error!(%error, "final sync of ring buffer failed, unsynced records may be lost");
        }
        if !self.poisoned
            && self.durable_acked_seq < self.acked_seq
            && let Err(error) = self.sync_cursor()
        {
            tracing::warn!(%error, acked_seq = self.acked_seq, "final fsync of the cursor failed, acknowledged records may be sent again after a power failure");
        }
    }
}

// === impl LaneState ===

impl LaneState {
    fn open(
        directory: &Path,
        lane: Lane,
        scan: LaneScan,
        next_seq: u64,
    ) -> Result<Self, BufferError> {
        let dir = directory.join(lane.name());
        let LaneScan { mut segments, .. } = scan;
        let newest = segments.last_key_value().map(|(&key, _)| key);

        let (writer, dir_dirty) = match newest {
            Some(key) => {
                let Some(meta) = segments.get(&key) else {
                    return Err(BufferError::InvalidOptions {
                        reason: "internal: newest segment vanished".to_owned(),
                    });
                };
                let mut file = platform::open_read_write(&meta.path).map_err(|error| {
                    BufferError::from_io("open segment", meta.path.clone(), error)
                })?;
                file.seek(SeekFrom::Start(meta.len)).map_err(|error| {
                    BufferError::from_io("open segment", meta.path.clone(), error)
                })?;
                (SegmentWriter::new(key, file), false)
            }
            None => {
                let (file, meta) = create_segment(&dir, lane, next_seq)?;
                segments.insert(next_seq, meta);
                (SegmentWriter::new(next_seq, file), true)
            }
        };

        // The reader starts at the first unacknowledged record of the oldest segment that has one.
        let start = segments
            .iter()
            .find(|(_, meta)| meta.unacked_records() > 0)
            .or_else(|| segments.iter().next_back())
            .map_or((writer.key, SEGMENT_HEADER_LEN as u64), |(&key, meta)| {
                (key, meta.resume_offset)
            });

        // The only full sum over the segments outside debug checks; later changes are counted
        // where they happen.
        let segments_len = segments.values().map(|meta| meta.len).sum();
        Ok(Self {
            lane,
            dir,
            segments,
            segments_len,
            writer,
            unsynced_closed: Vec::new(),
            dir_dirty,
            unflushed_bytes: 0,
            unflushed_closed: Vec::new(),
            reader: LaneReader::new(start.0, start.1),
            in_flight: VecDeque::new(),
        })
    }

    /// Returns the bytes of this lane held to the capacity: segment files plus pending bytes.
    fn disk_bytes(&self) -> u64 {
        self.segments_len + self.writer.pending.len() as u64
    }

    fn insert_segment(&mut self, key: u64, meta: SegmentMeta) {
        self.segments_len += meta.len;
        if let Some(replaced) = self.segments.insert(key, meta) {
            self.segments_len -= replaced.len;
        }
    }

    fn remove_segment(&mut self, key: u64) -> Option<SegmentMeta> {
        let meta = self.segments.remove(&key)?;
        self.segments_len -= meta.len;
        Some(meta)
    }

    fn mark_acked(&mut self, segment: u64, frame_len: u64) {
        if let Some(meta) = self.segments.get_mut(&segment) {
            meta.acked_records += 1;
            meta.acked_bytes += frame_len;
        }
    }

    /// Writes the pending bytes to the file without fsync, and requests early fsyncs from
    /// `flusher` every [`FLUSH_AHEAD_BYTES`]. On failure the file is cut back to its previous
    /// length and the bytes stay pending, so a full disk leaves no partial frame.
    fn write_pending(&mut self, flusher: &Flusher) -> Result<(), BufferError> {
        if self.writer.pending.is_empty() {
            return Ok(());
        }
        let key = self.writer.key;
        let Some(meta) = self.segments.get_mut(&key) else {
            return Ok(());
        };
        let written = self.writer.file.write_all(&self.writer.pending);
        if let Err(error) = written {
            let restored = self
                .writer
                .file
                .set_len(meta.len)
                .and_then(|()| self.writer.file.seek(SeekFrom::Start(meta.len)).map(|_| ()));
            if let Err(restore_error) = restored {
                tracing::error!(%restore_error, path = %meta.path.display(), "failed to cut back a partial write");
            }
            return Err(BufferError::from_io(
                "write segment",
                meta.path.clone(),
                error,
            ));
        }
        let written = self.writer.pending.len() as u64;
        meta.len += written;
        self.segments_len += written;
        self.writer.pending.clear();
        self.writer.dirty = true;

        self.unflushed_bytes += written;
        if self.unflushed_bytes >= FLUSH_AHEAD_BYTES {
            for closed in self.unflushed_closed.drain(..) {
                flusher.request(&closed);
            }
            flusher.request(&meta.path);
            self.unflushed_bytes = 0;
        }
        Ok(())
    }

    /// Fsyncs closed segments, the active segment and the lane directory, then marks every
    /// written byte durable.
    fn fsync(&mut self) -> Result<(), BufferError> {
        for (key, file) in &self.unsynced_closed {
            let path = segment::segment_path(&self.dir, *key);
            file.sync_data()
                .map_err(|error| BufferError::from_io("fsync segment", path, error))?;
        }
        self.unsynced_closed.clear();
        if self.writer.dirty {
            let path = segment::segment_path(&self.dir, self.writer.key);
            self.writer
                .file
                .sync_data()
                .map_err(|error| BufferError::from_io("fsync segment", path, error))?;
            self.writer.dirty = false;
        }
        if self.dir_dirty {
            platform::sync_dir(&self.dir)
                .map_err(|error| BufferError::from_io("sync directory", self.dir.clone(), error))?;
            self.dir_dirty = false;
        }
        for meta in self.segments.values_mut() {
            meta.durable_len = meta.len;
        }
        self.writer.pending_first_ms = None;
        self.unflushed_bytes = 0;
        self.unflushed_closed.clear();
        Ok(())
    }

    /// Closes the active segment and starts a new one, keyed one above the last record of the
    /// closed segment, or by `next_seq` when the closed segment contains no record.
    ///
    /// With that key, no number lies between two segments of a lane unless a segment between
    /// them is missing. Numbers that the other lane uses, or that a crash lost before they
    /// reached a file, stay inside the range of a segment, where the check at open does not
    /// look for missing ones.
    fn rotate(&mut self, next_seq: u64, flusher: &Flusher) -> Result<(), BufferError> {
        self.write_pending(flusher)?;
        let closed = self.segments.get(&self.writer.key);
        if self.writer.dirty
            && let Some(meta) = closed
        {
            self.unflushed_closed.push(meta.path.clone());
        }
        let key = closed
            .filter(|meta| meta.records > 0)
            .map_or(next_seq, |meta| meta.last_seq + 1);
        let (file, meta) = create_segment(&self.dir, self.lane, key)?;
        self.insert_segment(key, meta);
        let old = std::mem::replace(&mut self.writer, SegmentWriter::new(key, file));
        if old.dirty {
            self.unsynced_closed.push((old.key, old.file));
        }
        self.writer.pending_first_ms = old.pending_first_ms;
        self.dir_dirty = true;
        Ok(())
    }

    /// Moves the reader to the start of the oldest segment; `drain` skips the acknowledged
    /// records it passes again.
    fn rewind_reader(&mut self) {
        let first = self
            .segments
            .keys()
            .next()
            .copied()
            .unwrap_or(self.writer.key);
        self.reader.reposition(first, SEGMENT_HEADER_LEN as u64);
    }
}

impl SegmentWriter {
    fn new(key: u64, file: File) -> Self {
        Self {
            key,
            file,
            pending: Vec::with_capacity(WRITE_THRESHOLD + (64 << 10)),
            pending_first_ms: None,
            dirty: false,
        }
    }
}

/// Returns the metadata of the active segment `key`.
///
/// The active segment is the last entry, because a new segment's key is above the last record
/// of the lane, so above every existing key. Taking the last entry walks only the
/// right edge of the tree and spares a key search among thousands of segments on every append.
fn active_meta_mut(
    segments: &mut BTreeMap<u64, SegmentMeta>,
    key: u64,
) -> Option<&mut SegmentMeta> {
    let is_last = segments
        .last_key_value()
        .is_some_and(|(&last, _)| last == key);
    debug_assert!(is_last, "active segment {key} is not the newest segment");
    if is_last {
        segments.values_mut().next_back()
    } else {
        segments.get_mut(&key)
    }
}

fn create_segment(dir: &Path, lane: Lane, key: u64) -> Result<(File, SegmentMeta), BufferError> {
    let path = segment::segment_path(dir, key);
    let mut file = platform::create_new(&path)
        .map_err(|error| BufferError::from_io("create segment", path.clone(), error))?;
    if let Err(error) = file.write_all(&format::encode_segment_header(lane, key)) {
        // Leave no headless file behind on a full disk.
        drop(file);
        let _ = platform::remove_file(&path);
        return Err(BufferError::from_io("create segment", path, error));
    }
    let mut meta = SegmentMeta::new_empty(path);
    // The header is not yet fsynced; the reader only looks past it, so this is safe.
    meta.durable_len = SEGMENT_HEADER_LEN as u64;
    Ok((file, meta))
}

/// Returns the last sequence number a damaged region can have taken: the one before the next
/// valid record, or only the number after the last valid one when no record follows.
fn damaged_last_seq(region: &DamagedRegion) -> u64 {
    region
        .before_seq
        .map_or(region.after_seq + 1, |seq| seq - 1)
}

fn read_cursor(path: &Path) -> Option<CursorState> {
    match platform::read_all(path) {
        Ok(bytes) => format::decode_cursor(&bytes),
        Err(_) => None,
    }
}

fn check_options(options: &BufferOptions) -> Result<(), BufferError> {
    let max_record =
        options.max_record_bytes as u64 + FRAME_HEADER_LEN as u64 + SEGMENT_HEADER_LEN as u64;
    if options.segment_bytes < max_record {
        return Err(BufferError::InvalidOptions {
            reason: format!(
                "segment size {} bytes cannot hold a record of the maximum {} bytes",
                options.segment_bytes, options.max_record_bytes
            ),
        });
    }
    if options.capacity_bytes < options.segment_bytes.saturating_mul(4) {
        return Err(BufferError::InvalidOptions {
            reason: format!(
                "capacity {} bytes is below four segments of {} bytes",
                options.capacity_bytes, options.segment_bytes
            ),
        });
    }
    Ok(())
}

fn into_record(lane: Lane, read: ReadRecord) -> Record {
    let kind = match read.kind {
        FrameKind::Event => RecordKind::Event(read.payload),
        FrameKind::Gap => match format::decode_gap(&read.payload) {
            Some(gap) => RecordKind::Gap(gap),
            // A gap payload with a valid CRC but a bad layout was written by a newer version.
            None => RecordKind::Event(read.payload),
        },
    };
    Record {
        seq: read.seq,
        lane,
        appended_at_ms: read.appended_at_ms,
        kind,
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
