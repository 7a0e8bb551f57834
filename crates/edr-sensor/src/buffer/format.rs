//! Byte layouts of segment headers, record frames, gap payloads and the cursor file.
//!
//! Every integer is little-endian. Every structure carries a CRC-32C (Castagnoli) so that a torn
//! write or a flipped bit is detected before any byte of it is trusted.

use super::{Gap, GapReason, Lane};

/// Length of the header at the start of every segment file.
pub(crate) const SEGMENT_HEADER_LEN: usize = 32;
/// Length of the header in front of every record payload.
pub(crate) const FRAME_HEADER_LEN: usize = 32;
/// Length of the cursor file.
pub(crate) const CURSOR_LEN: usize = 40;
/// Length of the payload of a gap record.
pub(crate) const GAP_PAYLOAD_LEN: usize = 41;

const SEGMENT_MAGIC: &[u8; 8] = b"EDRBUFSG";
const CURSOR_MAGIC: &[u8; 8] = b"EDRBUFCR";
const FRAME_MAGIC: &[u8; 4] = b"EDRR";
const FORMAT_VERSION: u16 = 1;

const KIND_EVENT: u8 = 1;
const KIND_GAP: u8 = 2;

/// What a frame holds, as stored in its kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    Event,
    Gap,
}

/// A record frame whose header and CRC were checked, borrowing its payload from the scanned bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    pub(crate) seq: u64,
    pub(crate) appended_at_ms: u64,
    pub(crate) kind: FrameKind,
    pub(crate) payload: &'a [u8],
}

impl Frame<'_> {
    /// Returns the number of bytes the frame takes on disk.
    pub(crate) fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload.len()
    }
}

/// Why bytes at an offset are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameFault {
    /// Fewer bytes remain than the header or the announced payload needs.
    Truncated,
    /// Magic, length, kind, lane, CRC or sequence order is wrong.
    Corrupt,
}

// === segment header ===

/// Encodes the header of a new segment of `lane` whose first record will have a sequence number
/// of at least `first_seq`.
///
/// Layout: magic (8) | version u16 | lane u8 | reserved (5) | first_seq u64 | reserved (4) |
/// CRC-32C of bytes 0..28 (4).
pub(crate) fn encode_segment_header(lane: Lane, first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut out = [0u8; SEGMENT_HEADER_LEN];
    out[0..8].copy_from_slice(SEGMENT_MAGIC);
    out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[10] = lane.as_byte();
    out[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a segment header, returning its lane and first sequence number, or `None` when the
/// bytes are short, of another version or damaged.
pub(crate) fn decode_segment_header(bytes: &[u8]) -> Option<(Lane, u64)> {
    let header = bytes.get(..SEGMENT_HEADER_LEN)?;
    if &header[0..8] != SEGMENT_MAGIC || read_u16(header, 8) != FORMAT_VERSION {
        return None;
    }
    if crc32c::crc32c(&header[0..28]) != read_u32(header, 28) {
        return None;
    }
    let lane = Lane::from_byte(header[10])?;
    Some((lane, read_u64(header, 16)))
}

// === record frames ===

/// Appends the frame of one record to `out`.
///
/// Layout: magic "EDRR" (4) | CRC-32C of bytes 8..end (4) | payload length u32 | kind u8 |
/// lane u8 | reserved (2) | seq u64 | appended_at_ms u64 | payload.
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    lane: Lane,
    kind: FrameKind,
    seq: u64,
    appended_at_ms: u64,
    payload: &[u8],
) {
    // Callers check the payload length against the configured maximum, which is far below 4 GiB.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[0..4].copy_from_slice(FRAME_MAGIC);
    header[8..12].copy_from_slice(&len.to_le_bytes());
    header[12] = match kind {
        FrameKind::Event => KIND_EVENT,
        FrameKind::Gap => KIND_GAP,
    };
    header[13] = lane.as_byte();
    header[16..24].copy_from_slice(&seq.to_le_bytes());
    header[24..32].copy_from_slice(&appended_at_ms.to_le_bytes());

    // One CRC call over the contiguous frame: the CRC routine has a fixed cost per call that a
    // separate call for the header would add to every record.
    let start = out.len();
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the frame starting at `bytes[0]`.
///
/// A frame is valid only if its magic, kind and lane are right, its length is at most
/// `max_payload`, its CRC matches and its sequence number is above `min_seq_exclusive`.
pub(crate) fn decode_frame(
    bytes: &[u8],
    lane: Lane,
    max_payload: usize,
    min_seq_exclusive: u64,
) -> Result<Frame<'_>, FrameFault> {
    let Some(header) = bytes.get(..FRAME_HEADER_LEN) else {
        return Err(FrameFault::Truncated);
    };
    if &header[0..4] != FRAME_MAGIC {
        return Err(FrameFault::Corrupt);
    }
    let len = read_u32(header, 8) as usize;
    if len > max_payload {
        return Err(FrameFault::Corrupt);
    }
    let Some(whole) = bytes.get(..FRAME_HEADER_LEN + len) else {
        return Err(FrameFault::Truncated);
    };
    if crc32c::crc32c(&whole[8..]) != read_u32(header, 4) {
        return Err(FrameFault::Corrupt);
    }
    let kind = match header[12] {
        KIND_EVENT => FrameKind::Event,
        KIND_GAP => FrameKind::Gap,
        _ => return Err(FrameFault::Corrupt),
    };
    if header[13] != lane.as_byte() {
        return Err(FrameFault::Corrupt);
    }
    let seq = read_u64(header, 16);
    if seq <= min_seq_exclusive {
        return Err(FrameFault::Corrupt);
    }
    Ok(Frame {
        seq,
        appended_at_ms: read_u64(header, 24),
        kind,
        payload: &whole[FRAME_HEADER_LEN..],
    })
}

/// Returns the offset of the next place after `from` where the frame magic occurs, the only
/// places where a valid frame can start after a damaged region.
pub(crate) fn find_next_magic(bytes: &[u8], from: usize) -> Option<usize> {
    let tail = bytes.get(from..)?;
    tail.windows(FRAME_MAGIC.len())
        .position(|window| window == FRAME_MAGIC)
        .map(|position| from + position)
}

// === gap payload ===

/// Encodes a gap description as the payload of a gap record.
///
/// Layout: first_seq u64 | last_seq u64 | records u64 | bytes u64 | detected_at_ms u64 |
/// reason u8.
pub(crate) fn encode_gap(gap: &Gap) -> [u8; GAP_PAYLOAD_LEN] {
    let mut out = [0u8; GAP_PAYLOAD_LEN];
    out[0..8].copy_from_slice(&gap.first_seq.to_le_bytes());
    out[8..16].copy_from_slice(&gap.last_seq.to_le_bytes());
    out[16..24].copy_from_slice(&gap.records.to_le_bytes());
    out[24..32].copy_from_slice(&gap.bytes.to_le_bytes());
    out[32..40].copy_from_slice(&gap.detected_at_ms.to_le_bytes());
    out[40] = gap.reason.as_byte();
    out
}

/// Decodes a gap payload, or returns `None` when it has the wrong length or reason byte.
pub(crate) fn decode_gap(payload: &[u8]) -> Option<Gap> {
    if payload.len() != GAP_PAYLOAD_LEN {
        return None;
    }
    Some(Gap {
        first_seq: read_u64(payload, 0),
        last_seq: read_u64(payload, 8),
        records: read_u64(payload, 16),
        bytes: read_u64(payload, 24),
        detected_at_ms: read_u64(payload, 32),
        reason: GapReason::from_byte(payload[40])?,
    })
}

// === cursor ===

/// Contents of the cursor file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CursorState {
    /// Every sequence number at or below this one is stored by the Collector.
    pub(crate) acked_seq: u64,
    /// The next sequence number the buffer would have handed out when the cursor was written.
    pub(crate) next_seq: u64,
}

/// Encodes the cursor file.
///
/// Layout: magic (8) | version u16 | reserved (6) | acked_seq u64 | next_seq u64 |
/// CRC-32C of bytes 0..32 (4) | reserved (4).
pub(crate) fn encode_cursor(state: CursorState) -> [u8; CURSOR_LEN] {
    let mut out = [0u8; CURSOR_LEN];
    out[0..8].copy_from_slice(CURSOR_MAGIC);
    out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&state.acked_seq.to_le_bytes());
    out[24..32].copy_from_slice(&state.next_seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..32]);
    out[32..36].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the cursor file, or returns `None` when it is short, of another version or damaged.
pub(crate) fn decode_cursor(bytes: &[u8]) -> Option<CursorState> {
    if bytes.len() != CURSOR_LEN || &bytes[0..8] != CURSOR_MAGIC {
        return None;
    }
    if read_u16(bytes, 8) != FORMAT_VERSION || crc32c::crc32c(&bytes[0..32]) != read_u32(bytes, 32)
    {
        return None;
    }
    let state = CursorState {
        acked_seq: read_u64(bytes, 16),
        next_seq: read_u64(bytes, 24),
    };
    // A cursor that acknowledges records it claims were never handed out is damaged.
    (state.acked_seq < state.next_seq).then_some(state)
}

// === helpers ===

// The helpers below are called only with offsets that the caller has bounds-checked, so the
// fixed-size slices always exist; a short slice yields zero instead of a panic.
fn read_u16(bytes: &[u8], at: usize) -> u16 {
    let mut buf = [0u8; 2];
    if let Some(src) = bytes.get(at..at + 2) {
        buf.copy_from_slice(src);
    }
    u16::from_le_bytes(buf)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        buf.copy_from_slice(src);
    }
    u32::from_le_bytes(buf)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        buf.copy_from_slice(src);
    }
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips() {
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            Lane::Priority,
            FrameKind::Event,
            7,
            1234,
            b"hello",
        );
        let frame = decode_frame(&out, Lane::Priority, 1024, 6).unwrap();
        assert_eq!(frame.seq, 7);
        assert_eq!(frame.appended_at_ms, 1234);
        assert_eq!(frame.kind, FrameKind::Event);
        assert_eq!(frame.payload, b"hello");
        assert_eq!(frame.encoded_len(), out.len());
    }

    #[test]
    fn frame_rejects_every_single_bit_flip() {
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            Lane::Telemetry,
            FrameKind::Event,
            3,
            99,
            b"payload bytes",
        );
        for bit in 0..out.len() * 8 {
            let mut damaged = out.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_frame(&damaged, Lane::Telemetry, 1024, 0).is_err(),
                "bit {bit} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn frame_short_input_is_truncated() {
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            Lane::Telemetry,
            FrameKind::Event,
            3,
            99,
            b"payload",
        );
        for len in 0..out.len() {
            assert_eq!(
                decode_frame(&out[..len], Lane::Telemetry, 1024, 0).unwrap_err(),
                FrameFault::Truncated,
                "length {len}"
            );
        }
    }

    #[test]
    fn frame_rejects_wrong_lane_and_old_seq() {
        let mut out = Vec::new();
        encode_frame(&mut out, Lane::Telemetry, FrameKind::Event, 3, 99, b"x");
        assert!(decode_frame(&out, Lane::Priority, 1024, 0).is_err());
        assert!(decode_frame(&out, Lane::Telemetry, 1024, 3).is_err());
        assert!(decode_frame(&out, Lane::Telemetry, 0, 0).is_err());
    }

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let header = encode_segment_header(Lane::Priority, 42);
        assert_eq!(decode_segment_header(&header), Some((Lane::Priority, 42)));
        let mut damaged = header;
        damaged[17] ^= 0x10;
        assert_eq!(decode_segment_header(&damaged), None);
        assert_eq!(decode_segment_header(&header[..20]), None);
    }

    #[test]
    fn cursor_round_trips_and_detects_damage() {
        let state = CursorState {
            acked_seq: 10,
            next_seq: 20,
        };
        let bytes = encode_cursor(state);
        assert_eq!(decode_cursor(&bytes), Some(state));
        for index in 0..36 {
            let mut damaged = bytes;
            damaged[index] ^= 0x01;
            assert_eq!(
                decode_cursor(&damaged),
                None,
                "byte {index} flipped went unnoticed"
            );
        }
        assert_eq!(decode_cursor(&[0u8; CURSOR_LEN]), None);
    }

    #[test]
    fn gap_round_trips() {
        let gap = Gap {
            first_seq: 5,
            last_seq: 9,
            records: 3,
            bytes: 300,
            detected_at_ms: 77,
            reason: GapReason::TelemetryEvicted,
        };
        assert_eq!(decode_gap(&encode_gap(&gap)), Some(gap));
        assert_eq!(decode_gap(&[0u8; 3]), None);
    }
}
