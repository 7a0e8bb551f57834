//! Segment files of one lane: naming, the recovery scan at open, and the sequential reader.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::format::{
    self, FRAME_HEADER_LEN, FrameFault, FrameKind, SEGMENT_HEADER_LEN, decode_frame,
};
use super::{BufferError, Lane, platform};
use prost::bytes::Bytes;

const SEGMENT_SUFFIX: &str = ".seg";

/// Bytes the reader loads from a segment at once.
const READ_CHUNK: usize = 1 << 20;

/// In-memory summary of one segment file.
#[derive(Debug)]
pub(crate) struct SegmentMeta {
    pub(crate) path: PathBuf,
    /// Bytes written to the file, header included; pending bytes in memory are not counted.
    pub(crate) len: u64,
    /// Bytes known to be fsynced; the reader never reads past them.
    pub(crate) durable_len: u64,
    /// Valid records in the file and in the pending buffer.
    pub(crate) records: u64,
    /// Frame bytes of those records.
    pub(crate) record_bytes: u64,
    /// Records and frame bytes acknowledged by the Collector.
    pub(crate) acked_records: u64,
    pub(crate) acked_bytes: u64,
    /// Sequence numbers of the first and last record, or 0 when there is none.
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    /// Offset of the first record not yet acknowledged, or the end of the file.
    pub(crate) resume_offset: u64,
    /// Damaged byte ranges `[start, end)` found at open, which the reader jumps over.
    pub(crate) damaged: Vec<(u64, u64)>,
    /// The gap records in the segment, so that evicting it can carry what they report into
    /// the gap record of the eviction.
    pub(crate) gaps: Vec<HeldGap>,
}

/// A gap record held in a segment: its own number and what it reports lost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeldGap {
    pub(crate) seq: u64,
    pub(crate) first_seq: u64,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
}

impl SegmentMeta {
    pub(crate) fn new_empty(path: PathBuf) -> Self {
        let header = SEGMENT_HEADER_LEN as u64;
        Self {
            path,
            len: header,
            durable_len: header,
            records: 0,
            record_bytes: 0,
            acked_records: 0,
            acked_bytes: 0,
            first_seq: 0,
            last_seq: 0,
            resume_offset: header,
            damaged: Vec::new(),
            gaps: Vec::new(),
        }
    }

    pub(crate) fn unacked_records(&self) -> u64 {
        self.records - self.acked_records
    }

    pub(crate) fn unacked_bytes(&self) -> u64 {
        self.record_bytes - self.acked_bytes
    }
}

/// Returns the path of the segment of a lane whose sequence numbers start at or above `key`.
pub(crate) fn segment_path(lane_dir: &Path, key: u64) -> PathBuf {
    lane_dir.join(format!("{key:020}{SEGMENT_SUFFIX}"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A damaged region found by the scan, reported to the Collector as a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DamagedRegion {
    /// Sequence number of the last valid record before the region, or the segment key minus one.
    pub(crate) after_seq: u64,
    /// Sequence number of the first valid record after it, if the segment has one.
    pub(crate) before_seq: Option<u64>,
    pub(crate) bytes: u64,
}

/// What the recovery scan found in the segments of one lane.
#[derive(Debug, Default)]
pub(crate) struct LaneScan {
    pub(crate) segments: BTreeMap<u64, SegmentMeta>,
    pub(crate) damaged: Vec<DamagedRegion>,
    /// Bytes cut off the end of the newest segment: a record whose write was torn by a crash.
    pub(crate) torn_bytes: u64,
    /// Highest sequence number seen in a record, or 0.
    pub(crate) max_seq: u64,
    /// Runs `(first, last)` of consecutive sequence numbers held by valid records, ascending.
    pub(crate) runs: Vec<(u64, u64)>,
    /// Ranges `(first_seq, last_seq)` that valid gap records of the lane report as lost.
    pub(crate) reported: Vec<(u64, u64)>,
}

/// Scans every segment of a lane, truncates a torn tail of the newest one, and records damaged
/// regions of the others so that they can be skipped.
///
/// Sequence numbers must rise strictly within the lane: a record with a valid CRC but a sequence
/// number at or below its predecessor's counts as damaged.
pub(crate) fn scan_lane(
    lane_dir: &Path,
    lane: Lane,
    acked_seq: u64,
    max_payload: usize,
) -> Result<LaneScan, BufferError> {
    let mut keys = Vec::new();
    let entries = std::fs::read_dir(lane_dir)
        .map_err(|error| BufferError::from_io("list segments in", lane_dir.to_owned(), error))?;
    for entry in entries {
        let entry = entry.map_err(|error| {
            BufferError::from_io("list segments in", lane_dir.to_owned(), error)
        })?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_segment_name) {
            Some(key) => keys.push(key),
            None => {
                tracing::warn!(file = ?name, lane = lane.name(), "ignoring unknown file in buffer directory")
            }
        }
    }
    keys.sort_unstable();

    let mut scan = LaneScan::default();
    let mut prev_seq = 0u64;
    let newest = keys.last().copied();
    for key in keys {
        let path = segment_path(lane_dir, key);
        let bytes = platform::read_all(&path)
            .map_err(|error| BufferError::from_io("read segment", path.clone(), error))?;
        let is_newest = Some(key) == newest;
        prev_seq = prev_seq.max(key.saturating_sub(1));

        let (meta, regions, torn) = scan_segment(
            &path,
            &bytes,
            lane,
            key,
            is_newest,
            &mut prev_seq,
            acked_seq,
            max_payload,
            &mut scan.runs,
            &mut scan.reported,
        )?;
        scan.max_seq = scan.max_seq.max(meta.last_seq);
        scan.torn_bytes += torn;
        scan.damaged.extend(regions);
        scan.segments.insert(key, meta);
    }
    Ok(scan)
}

/// Numbers that a missing segment file took with it, found by [`missing_ranges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MissingRange {
    /// Lowest and highest missing number. Numbers in between that another record uses were
    /// not lost.
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    /// Missing numbers in the range, each one a lost record.
    pub(crate) records: u64,
}

/// Returns the sequence numbers above `acked_seq` that a missing segment file took with it, as
/// ascending ranges that do not overlap. With `acked_seq` unknown (the cursor was lost), the
/// numbers in front of each lane's oldest segment are not counted: they may have been
/// acknowledged.
///
/// Within a lane, segments leave the disk only oldest first (acknowledged or evicted), and a
/// segment made by a rotation is keyed one above the last record of the segment it follows. So
/// the numbers between one segment's last record (or `acked_seq` before the first segment) and
/// the next segment's key are those of a segment that is gone. A number there counts as
/// missing when no record of either lane contains it, no gap record reports it and `reported`
/// (the damaged regions found by the scan) does not cover it.
///
/// NOTE: segments written before that keying rule were keyed by the next sequence number. In
/// front of such a segment, the numbers of records that a crash lost before they reached a
/// file are reported as missing too, although those records were never durable.
pub(crate) fn missing_ranges(
    scans: &[LaneScan],
    acked_seq: Option<u64>,
    reported: &[(u64, u64)],
) -> Vec<MissingRange> {
    let mut candidates = Vec::new();
    for scan in scans {
        let oldest_key = scan.segments.keys().next().copied().unwrap_or(0);
        let mut accounted_to = acked_seq.unwrap_or(oldest_key.saturating_sub(1));
        for (&key, meta) in &scan.segments {
            let before_key = key.saturating_sub(1);
            if before_key > accounted_to {
                candidates.push((accounted_to + 1, before_key));
            }
            accounted_to = accounted_to.max(before_key).max(meta.last_seq);
        }
    }
    if candidates.is_empty() {
        return Vec::new();
    }

    let accounted = merge_ranges(
        scans
            .iter()
            .flat_map(|scan| scan.runs.iter().chain(&scan.reported))
            .chain(reported)
            .copied()
            .collect(),
    );
    let mut missing = Vec::new();
    for (first, last) in merge_ranges(candidates) {
        // Walk the accounted ranges that overlap the candidate and count what lies between them.
        let mut range: Option<MissingRange> = None;
        let mut add = |from: u64, to: u64| {
            let range = range.get_or_insert(MissingRange {
                first_seq: from,
                last_seq: to,
                records: 0,
            });
            range.last_seq = to;
            range.records += to - from + 1;
        };
        let mut next = first;
        let start = accounted.partition_point(|&(_, accounted_last)| accounted_last < first);
        for &(accounted_first, accounted_last) in &accounted[start..] {
            if accounted_first > last {
                break;
            }
            if accounted_first > next {
                add(next, accounted_first - 1);
            }
            next = next.max(accounted_last.saturating_add(1));
        }
        if next <= last {
            add(next, last);
        }
        missing.extend(range);
    }
    missing
}

/// Sorts inclusive ranges and merges those that overlap or touch.
fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match merged.last_mut() {
            Some(previous) if first <= previous.1.saturating_add(1) => {
                previous.1 = previous.1.max(last);
            }
            _ => merged.push((first, last)),
        }
    }
    merged
}

fn scan_segment(
    path: &Path,
    bytes: &[u8],
    lane: Lane,
    key: u64,
    is_newest: bool,
    prev_seq: &mut u64,
    acked_seq: u64,
    max_payload: usize,
    runs: &mut Vec<(u64, u64)>,
    reported: &mut Vec<(u64, u64)>,
) -> Result<(SegmentMeta, Vec<DamagedRegion>, u64), BufferError> {
    let mut meta = SegmentMeta::new_empty(path.to_owned());
    let mut regions = Vec::new();
    let header_len = SEGMENT_HEADER_LEN as u64;

    // A segment shorter than its header was torn while being created: start it again.
    if bytes.len() < SEGMENT_HEADER_LEN {
        tracing::warn!(path = %path.display(), len = bytes.len(), "segment header torn, rewriting it");
        rewrite_header(path, lane, key)?;
        return Ok((meta, regions, bytes.len() as u64));
    }

    // A damaged header costs nothing but the header: the name carries the same facts.
    match format::decode_segment_header(bytes) {
        Some((header_lane, header_key)) if header_lane == lane && header_key == key => {}
        _ => {
            tracing::warn!(path = %path.display(), "segment header damaged, reading records anyway");
            regions.push(DamagedRegion {
                after_seq: *prev_seq,
                before_seq: None,
                bytes: header_len,
            });
        }
    }

    let mut pos = SEGMENT_HEADER_LEN;
    let mut good_end = pos;
    let mut resume: Option<u64> = None;
    while pos < bytes.len() {
        match decode_frame(&bytes[pos..], lane, max_payload, *prev_seq) {
            Ok(frame) => {
                let len = frame.encoded_len() as u64;
                if meta.records == 0 {
                    meta.first_seq = frame.seq;
                }
                meta.records += 1;
                meta.record_bytes += len;
                meta.last_seq = frame.seq;
                if frame.seq <= acked_seq {
                    meta.acked_records += 1;
                    meta.acked_bytes += len;
                } else if resume.is_none() {
                    resume = Some(pos as u64);
                }
                match runs.last_mut() {
                    Some(run) if run.1 + 1 == frame.seq => run.1 = frame.seq,
                    _ => runs.push((frame.seq, frame.seq)),
                }
                if frame.kind == FrameKind::Gap
                    && let Some(gap) = format::decode_gap(frame.payload)
                {
                    reported.push((gap.first_seq, gap.last_seq));
                    meta.gaps.push(HeldGap {
                        seq: frame.seq,
                        first_seq: gap.first_seq,
                        records: gap.records,
                        bytes: gap.bytes,
                    });
                }
                *prev_seq = frame.seq;
                pos += frame.encoded_len();
                good_end = pos;
            }
            Err(_) => {
                // Look for the next valid frame. Finding one means the damage is in the middle
                // and reading goes on after it; finding none means the rest is a torn tail.
                let next = next_valid_frame(bytes, pos + 1, lane, max_payload, *prev_seq);
                match next {
                    Some((next_pos, next_seq)) => {
                        tracing::warn!(
                            path = %path.display(), offset = pos, bytes = next_pos - pos,
                            "skipping damaged bytes inside segment"
                        );
                        meta.damaged.push((pos as u64, next_pos as u64));
                        regions.push(DamagedRegion {
                            after_seq: *prev_seq,
                            before_seq: Some(next_seq),
                            bytes: (next_pos - pos) as u64,
                        });
                        pos = next_pos;
                    }
                    None => break,
                }
            }
        }
    }

    let trailing = (bytes.len() - good_end) as u64;
    let mut torn = 0;
    if trailing > 0 {
        if is_newest {
            tracing::warn!(
                path = %path.display(), offset = good_end, bytes = trailing,
                "truncating torn tail of newest segment"
            );
            truncate(path, good_end as u64)?;
            torn = trailing;
        } else {
            tracing::warn!(
                path = %path.display(), offset = good_end, bytes = trailing,
                "skipping damaged end of closed segment"
            );
            meta.damaged.push((good_end as u64, bytes.len() as u64));
            regions.push(DamagedRegion {
                after_seq: *prev_seq,
                before_seq: None,
                bytes: trailing,
            });
        }
    }

    meta.len = if is_newest {
        good_end as u64
    } else {
        bytes.len() as u64
    };
    meta.durable_len = meta.len;
    meta.resume_offset = resume.unwrap_or(meta.len);
    Ok((meta, regions, torn))
}

fn next_valid_frame(
    bytes: &[u8],
    mut from: usize,
    lane: Lane,
    max_payload: usize,
    prev_seq: u64,
) -> Option<(usize, u64)> {
    while let Some(candidate) = format::find_next_magic(bytes, from) {
        if let Ok(frame) = decode_frame(&bytes[candidate..], lane, max_payload, prev_seq) {
            return Some((candidate, frame.seq));
        }
        from = candidate + 1;
    }
    None
}

fn rewrite_header(path: &Path, lane: Lane, key: u64) -> Result<(), BufferError> {
    use std::io::Write;
    let mut file = platform::create_truncate(path)
        .map_err(|error| BufferError::from_io("rewrite segment header", path.to_owned(), error))?;
    file.write_all(&format::encode_segment_header(lane, key))
        .and_then(|()| file.sync_all())
        .map_err(|error| BufferError::from_io("rewrite segment header", path.to_owned(), error))
}

fn truncate(path: &Path, len: u64) -> Result<(), BufferError> {
    let file = platform::open_read_write(path)
        .map_err(|error| BufferError::from_io("truncate segment", path.to_owned(), error))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|error| BufferError::from_io("truncate segment", path.to_owned(), error))
}

// === impl LaneReader ===

/// A record read back from a segment.
#[derive(Debug, Clone)]
pub(crate) struct ReadRecord {
    pub(crate) seq: u64,
    pub(crate) appended_at_ms: u64,
    pub(crate) kind: FrameKind,
    /// The payload, a slice of the chunk it was read with, so that reading copies nothing.
    pub(crate) payload: Bytes,
    /// Key of the segment holding it.
    pub(crate) segment: u64,
    /// Frame length on disk.
    pub(crate) frame_len: u64,
}

/// Damage that the reader found after open: the rest of a segment that it skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadDamage {
    /// Lane and key of the segment, and offset of the first damaged byte.
    pub(crate) lane: Lane,
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    /// The number after the last record read from the segment, or the key when none was read.
    /// The lost records lie between it and `last_seq`, the segment's last record.
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    /// Durable bytes skipped.
    pub(crate) bytes: u64,
}

/// Reads the durable records of one lane in order, one segment after another.
#[derive(Debug)]
pub(crate) struct LaneReader {
    segment: u64,
    offset: u64,
    /// Sequence number of the last record read from `segment`.
    last_read: Option<u64>,
    file: Option<(u64, File)>,
    /// The bytes last read from the segment. A new read gets a new buffer, because records
    /// handed out may still refer to the old one.
    chunk: Bytes,
    chunk_start: u64,
    peeked: Option<ReadRecord>,
}

impl LaneReader {
    pub(crate) fn new(segment: u64, offset: u64) -> Self {
        Self {
            segment,
            offset,
            last_read: None,
            file: None,
            chunk: Bytes::new(),
            chunk_start: 0,
            peeked: None,
        }
    }

    /// Returns the segment the reader is in.
    pub(crate) fn segment(&self) -> u64 {
        self.segment
    }

    /// Moves the reader to `offset` in segment `key`, dropping what it had loaded.
    pub(crate) fn reposition(&mut self, key: u64, offset: u64) {
        *self = Self::new(key, offset);
    }

    /// Returns the next durable record without consuming it.
    ///
    /// A record that fails its CRC here was damaged after the buffer was opened: the rest of
    /// its segment is skipped and described in `damaged`.
    pub(crate) fn peek(
        &mut self,
        segments: &BTreeMap<u64, SegmentMeta>,
        active: u64,
        lane: Lane,
        max_payload: usize,
        damaged: &mut Vec<ReadDamage>,
    ) -> Result<Option<&ReadRecord>, BufferError> {
        if self.peeked.is_none() {
            self.peeked = self.read_next(segments, active, lane, max_payload, damaged)?;
        }
        Ok(self.peeked.as_ref())
    }

    /// Consumes the record that [`LaneReader::peek`] returned.
    pub(crate) fn take(&mut self) -> Option<ReadRecord> {
        self.peeked.take()
    }

    fn read_next(
        &mut self,
        segments: &BTreeMap<u64, SegmentMeta>,
        active: u64,
        lane: Lane,
        max_payload: usize,
        damaged: &mut Vec<ReadDamage>,
    ) -> Result<Option<ReadRecord>, BufferError> {
        loop {
            // The segment may have been evicted or deleted after its last acknowledgement.
            let Some(meta) = segments.get(&self.segment) else {
                match segments.range(self.segment..).next() {
                    Some((&key, _)) => self.reposition(key, SEGMENT_HEADER_LEN as u64),
                    None => return Ok(None),
                }
                continue;
            };

            self.offset = self.offset.max(SEGMENT_HEADER_LEN as u64);
            if let Some(&(_, end)) = meta
                .damaged
                .iter()
                .find(|&&(start, end)| start <= self.offset && self.offset < end)
            {
                self.offset = end;
            }

            if self.offset >= meta.durable_len {
                let sealed_and_synced = self.segment != active && meta.durable_len == meta.len;
                let next = segments
                    .range(self.segment + 1..)
                    .next()
                    .map(|(&key, _)| key);
                match next {
                    Some(key) if sealed_and_synced => {
                        self.reposition(key, SEGMENT_HEADER_LEN as u64);
                        continue;
                    }
                    _ => return Ok(None),
                }
            }

            let available = meta.durable_len - self.offset;
            let mut payload_len = u64::MAX;
            if available >= FRAME_HEADER_LEN as u64 {
                let header = self.load(meta, FRAME_HEADER_LEN as u64, available)?;
                if let Some(len_bytes) = header.get(8..12) {
                    let mut len = [0u8; 4];
                    len.copy_from_slice(len_bytes);
                    payload_len = u64::from(u32::from_le_bytes(len));
                }
            }
            let frame_len = (FRAME_HEADER_LEN as u64).saturating_add(payload_len);
            let decoded = if frame_len <= available && payload_len <= max_payload as u64 {
                let bytes = self.load(meta, frame_len, available)?;
                decode_frame(bytes, lane, max_payload, 0)
            } else {
                Err(FrameFault::Corrupt)
            };

            // The frame starts at the reader's offset in the chunk that `load` read it from, so
            // its payload follows the header there.
            let decoded = decoded.map(|f| (f.seq, f.appended_at_ms, f.kind, f.payload.len()));
            let start = usize::try_from(self.offset.saturating_sub(self.chunk_start)).unwrap_or(0)
                + FRAME_HEADER_LEN;
            match decoded {
                Ok((seq, appended_at_ms, kind, len)) if start + len <= self.chunk.len() => {
                    let record = ReadRecord {
                        seq,
                        appended_at_ms,
                        kind,
                        payload: self.chunk.slice(start..start + len),
                        segment: self.segment,
                        frame_len,
                    };
                    self.offset += frame_len;
                    self.last_read = Some(seq);
                    return Ok(Some(record));
                }
                _ => {
                    tracing::error!(
                        path = %meta.path.display(), offset = self.offset,
                        "record damaged after open, skipping the rest of the segment"
                    );
                    damaged.push(ReadDamage {
                        lane,
                        segment: self.segment,
                        offset: self.offset,
                        first_seq: self.last_read.map_or(self.segment, |seq| seq + 1),
                        last_seq: meta.last_seq,
                        bytes: meta.durable_len - self.offset,
                    });
                    self.offset = meta.durable_len;
                    if self.segment == active {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Returns `want` bytes at the reader's offset, loading a new chunk when needed. The caller
    /// guarantees that `want` is at most `available`, the durable bytes left in the segment.
    fn load(
        &mut self,
        meta: &SegmentMeta,
        want: u64,
        available: u64,
    ) -> Result<&[u8], BufferError> {
        let want = want.min(available);
        let start_in_chunk = self.offset.checked_sub(self.chunk_start);
        let loaded = matches!(&self.file, Some((key, _)) if *key == self.segment)
            && start_in_chunk.is_some_and(|start| start + want <= self.chunk.len() as u64);

        if !loaded {
            if !matches!(&self.file, Some((key, _)) if *key == self.segment) {
                let file = platform::open_read(&meta.path).map_err(|error| {
                    BufferError::from_io("open segment", meta.path.clone(), error)
                })?;
                self.file = Some((self.segment, file));
            }
            let size = want.max(READ_CHUNK as u64).min(available);
            let Some((_, file)) = self.file.as_mut() else {
                return Ok(&[]);
            };
            // Bounded by the segment size, which the options keep far below `usize::MAX`.
            let size = usize::try_from(size).unwrap_or(READ_CHUNK);
            let mut chunk = vec![0; size];
            file.seek(SeekFrom::Start(self.offset))
                .and_then(|_| file.read_exact(&mut chunk))
                .map_err(|error| BufferError::from_io("read segment", meta.path.clone(), error))?;
            self.chunk = Bytes::from(chunk);
            self.chunk_start = self.offset;
        }

        let start = usize::try_from(self.offset - self.chunk_start).unwrap_or(0);
        let end = start + usize::try_from(want).unwrap_or(0);
        Ok(self.chunk.get(start..end).unwrap_or(&[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let path = segment_path(Path::new("/x"), 42);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000042.seg");
        assert_eq!(parse_segment_name(name), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.tmp"), None);
    }
}
