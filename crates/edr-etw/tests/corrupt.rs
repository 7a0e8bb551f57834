//! The reader on synthetic files, well-formed and corrupted: values come out as written, and
//! every corruption ends in an error or a counted skip with its offset.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use edr_etw::{EtlError, EtlReader, Guid, HeaderKind, ReaderLimits, SkipReason};

const BUFFER_SIZE: usize = 4096;
const PROVIDER: Guid = Guid::from_u128(0x22fb2cd6_0e7b_422b_a0c7_2fad1fd0e716);
/// QPC frequency written into the log file header.
const FREQUENCY: i64 = 10_000_000;
/// Start of the session as FILETIME and as QPC ticks.
const START_UTC: i64 = 132_000_000_000_000_000;
const START_QPC: i64 = 1_000_000;

fn buffer_header(buffer_size: u32, filled: u32, flags: u16) -> Vec<u8> {
    let mut h = vec![0u8; 72];
    h[0..4].copy_from_slice(&buffer_size.to_le_bytes());
    h[4..8].copy_from_slice(&filled.to_le_bytes());
    h[48..52].copy_from_slice(&filled.to_le_bytes());
    h[52..54].copy_from_slice(&flags.to_le_bytes());
    h
}

/// Pads events into a full buffer of `BUFFER_SIZE` bytes.
fn buffer(events: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for e in events {
        body.extend_from_slice(e);
        while body.len() % 8 != 0 {
            body.push(0);
        }
    }
    let filled = 72 + body.len();
    let mut out = buffer_header(BUFFER_SIZE as u32, filled as u32, 0);
    out.extend_from_slice(&body);
    out.resize(BUFFER_SIZE, 0xff);
    out
}

fn utf16z(text: &str) -> Vec<u8> {
    text.encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// Builds the `EventTrace/Header` event with a 64-bit `TRACE_LOGFILE_HEADER`.
fn logfile_header_event() -> Vec<u8> {
    let mut p = vec![0u8; 280];
    p[0..4].copy_from_slice(&(BUFFER_SIZE as u32).to_le_bytes());
    p[8..12].copy_from_slice(&19041u32.to_le_bytes());
    p[12..16].copy_from_slice(&4u32.to_le_bytes());
    p[44..48].copy_from_slice(&8u32.to_le_bytes()); // PointerSize
    p[48..52].copy_from_slice(&7u32.to_le_bytes()); // EventsLost
    p[256..264].copy_from_slice(&FREQUENCY.to_le_bytes());
    p[264..272].copy_from_slice(&START_UTC.to_le_bytes());
    p[272..276].copy_from_slice(&1u32.to_le_bytes()); // QPC clock
    p.extend_from_slice(&utf16z("TestSession"));
    p.extend_from_slice(&utf16z("C:\\test.etl"));
    let mut e = Vec::new();
    e.extend_from_slice(&2u16.to_le_bytes());
    e.push(2); // SYSTEM_TRACE_HEADER, 64-bit
    e.push(0xc0);
    e.extend_from_slice(&((32 + p.len()) as u16).to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes()); // hook id: EventTrace/Header
    e.extend_from_slice(&11u32.to_le_bytes());
    e.extend_from_slice(&22u32.to_le_bytes());
    e.extend_from_slice(&START_QPC.to_le_bytes());
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&p);
    e
}

/// Builds an `EVENT_HEADER` event of `PROVIDER` with one related-activity extended item.
fn manifest_event(id: u16, pid: u32, qpc: i64, payload: &[u8]) -> Vec<u8> {
    let mut ext = Vec::new();
    ext.extend_from_slice(&24u16.to_le_bytes());
    ext.extend_from_slice(&1u16.to_le_bytes()); // related activity id
    ext.extend_from_slice(&0u16.to_le_bytes()); // last item
    ext.extend_from_slice(&16u16.to_le_bytes());
    ext.extend_from_slice(&[0xab; 16]);
    let size = 80 + ext.len() + payload.len();
    let mut e = Vec::new();
    e.extend_from_slice(&(size as u16).to_le_bytes());
    e.push(19); // EVENT_HEADER, 64-bit
    e.push(0xc0);
    e.extend_from_slice(&0x0041u16.to_le_bytes()); // extended info, 64-bit header
    e.extend_from_slice(&0u16.to_le_bytes());
    e.extend_from_slice(&33u32.to_le_bytes());
    e.extend_from_slice(&pid.to_le_bytes());
    e.extend_from_slice(&qpc.to_le_bytes());
    let guid = PROVIDER.to_u128();
    e.extend_from_slice(&((guid >> 96) as u32).to_le_bytes());
    e.extend_from_slice(&((guid >> 80) as u16).to_le_bytes());
    e.extend_from_slice(&((guid >> 64) as u16).to_le_bytes());
    e.extend_from_slice(&(guid as u64).to_be_bytes());
    e.extend_from_slice(&id.to_le_bytes());
    e.extend_from_slice(&[1, 0, 4, 0]); // version, channel, level, opcode
    e.extend_from_slice(&0u16.to_le_bytes());
    e.extend_from_slice(&0u64.to_le_bytes());
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&[0; 16]);
    e.extend_from_slice(&ext);
    e.extend_from_slice(payload);
    e
}

fn file(buffers: &[Vec<u8>]) -> Vec<u8> {
    buffers.concat()
}

fn well_formed() -> Vec<u8> {
    file(&[
        buffer(&[logfile_header_event()]),
        buffer(&[
            manifest_event(1, 100, START_QPC + FREQUENCY, b"abc"),
            manifest_event(2, 200, START_QPC + 2 * FREQUENCY, b"defg"),
        ]),
    ])
}

/// Event id, process id and payload of each manifest event read.
type ReadEvents = Vec<(u16, u32, Vec<u8>)>;

fn read_all(bytes: Vec<u8>) -> Result<(ReadEvents, edr_etw::ReadStats), EtlError> {
    let mut reader = EtlReader::new(Cursor::new(bytes))?;
    let mut out = Vec::new();
    reader.for_each_record(|r| {
        if r.header_kind == HeaderKind::Event {
            out.push((r.descriptor.id, r.process_id, r.user_data.to_vec()));
        }
    })?;
    Ok((out, reader.stats().clone()))
}

#[test]
fn synthetic_file_reads_back() {
    let mut reader = EtlReader::new(Cursor::new(well_formed())).unwrap();
    assert_eq!(reader.header().logger_name, "TestSession");
    assert_eq!(reader.header().events_lost, 7);
    let mut events = Vec::new();
    reader
        .for_each_record(|r| {
            if r.header_kind == HeaderKind::Event {
                assert_eq!(r.provider_id, PROVIDER);
                assert_eq!(
                    r.extended.related_activity_id(),
                    Some(Guid::from_le_bytes([0xab; 16]))
                );
                events.push((
                    r.descriptor.id,
                    r.process_id,
                    r.timestamp,
                    r.user_data.to_vec(),
                ));
            }
        })
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].0, 1);
    assert_eq!(events[0].1, 100);
    assert_eq!(events[0].2.0, START_UTC + 10_000_000);
    assert_eq!(events[1].3, b"defg");
    assert_eq!(reader.stats().buffers, 2);
    assert_eq!(reader.stats().skip_count, 0);
}

#[test]
fn truncated_file_counts_a_skip() {
    let mut bytes = well_formed();
    bytes.truncate(BUFFER_SIZE + 100);
    let (events, stats) = read_all(bytes).unwrap();
    assert!(events.is_empty());
    assert_eq!(stats.skips[0].reason, SkipReason::TruncatedBuffer);
    assert_eq!(stats.skips[0].buffer_offset, BUFFER_SIZE as u64);
}

#[test]
fn impossible_event_size_skips_rest_of_buffer() {
    let mut bytes = well_formed();
    // Second event of the second buffer: size far past the buffer.
    let first_len = manifest_event(1, 100, 0, b"abc").len().next_multiple_of(8);
    let at = BUFFER_SIZE + 72 + first_len;
    bytes[at..at + 2].copy_from_slice(&0xfff0u16.to_le_bytes());
    let (events, stats) = read_all(bytes).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(stats.skips.len(), 1);
    assert_eq!(stats.skips[0].event_offset, Some((72 + first_len) as u32));
    assert!(matches!(
        stats.skips[0].reason,
        SkipReason::ImpossibleEventSize(0xfff0)
    ));
}

#[test]
fn unknown_header_type_is_counted() {
    let mut bytes = well_formed();
    bytes[BUFFER_SIZE + 72 + 2] = 0x3f;
    let (events, stats) = read_all(bytes).unwrap();
    assert!(events.is_empty());
    assert_eq!(stats.skips[0].reason, SkipReason::UnknownHeaderType(0x3f));
    assert_eq!(stats.unparsed_buffers, 1);
}

#[test]
fn corrupt_buffer_header_is_stepped_over() {
    let mut bytes = file(&[
        buffer(&[logfile_header_event()]),
        buffer(&[manifest_event(1, 100, START_QPC, b"x")]),
        buffer(&[manifest_event(2, 200, START_QPC, b"y")]),
    ]);
    bytes[BUFFER_SIZE..BUFFER_SIZE + 4].copy_from_slice(&0u32.to_le_bytes());
    let (events, stats) = read_all(bytes).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, 2);
    assert!(matches!(
        stats.skips[0].reason,
        SkipReason::CorruptBufferHeader(_)
    ));
    assert_eq!(stats.skips[0].buffer_offset, BUFFER_SIZE as u64);
}

#[test]
fn oversized_buffer_is_rejected_without_allocating() {
    let mut bytes = well_formed();
    bytes[BUFFER_SIZE..BUFFER_SIZE + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let limits = ReaderLimits {
        max_buffer_size: 1 << 20,
        max_recorded_skips: 10,
    };
    let mut reader = EtlReader::with_limits(Cursor::new(bytes), limits).unwrap();
    reader.for_each_record(|_| {}).unwrap();
    assert!(matches!(
        reader.stats().skips[0].reason,
        SkipReason::CorruptBufferHeader(_)
    ));
}

#[test]
fn bad_compression_is_counted() {
    let mut compressed = buffer_header(72 + 16, 200, 0x40);
    compressed.extend_from_slice(&[0xff; 16]);
    let bytes = file(&[
        buffer(&[logfile_header_event()]),
        compressed,
        buffer(&[manifest_event(5, 1, START_QPC, b"")]),
    ]);
    let (events, stats) = read_all(bytes).unwrap();
    assert_eq!(events.len(), 1);
    assert!(matches!(
        stats.skips[0].reason,
        SkipReason::BadCompression(_)
    ));
    assert_eq!(stats.skips[0].buffer_offset, BUFFER_SIZE as u64);
}

/// Builds a WPP message with a sequence number, message GUID, timestamp and system info.
fn wpp_message(number: u16, payload: &[u8]) -> Vec<u8> {
    let size = 8 + 4 + 16 + 8 + 8 + payload.len();
    let mut e = Vec::new();
    e.extend_from_slice(&(size as u16).to_le_bytes());
    e.push(0);
    e.push(0x90); // TRACE_HEADER_FLAG | TRACE_MESSAGE
    e.extend_from_slice(&number.to_le_bytes());
    e.extend_from_slice(&(0x0001u16 | 0x0002 | 0x0008 | 0x0020).to_le_bytes());
    e.extend_from_slice(&9u32.to_le_bytes());
    e.extend_from_slice(&[0x5a; 16]);
    e.extend_from_slice(&(START_QPC + FREQUENCY).to_le_bytes());
    e.extend_from_slice(&77u32.to_le_bytes());
    e.extend_from_slice(&88u32.to_le_bytes());
    e.extend_from_slice(payload);
    e
}

#[test]
fn wpp_message_is_read() {
    let bytes = file(&[
        buffer(&[logfile_header_event()]),
        buffer(&[
            wpp_message(12, b"args"),
            manifest_event(1, 100, START_QPC, b"abc"),
        ]),
    ]);
    let mut reader = EtlReader::new(Cursor::new(bytes)).unwrap();
    let mut seen = Vec::new();
    reader
        .for_each_record(|r| {
            seen.push((
                r.header_kind,
                r.descriptor.id,
                r.process_id,
                r.thread_id,
                r.provider_id,
                r.user_data.to_vec(),
                r.timestamp,
            ))
        })
        .unwrap();
    assert_eq!(reader.stats().skip_count, 0);
    let message = &seen[1];
    assert_eq!(message.0, HeaderKind::Message);
    assert_eq!(message.1, 12);
    assert_eq!(message.2, 88);
    assert_eq!(message.3, 77);
    assert_eq!(message.4, Guid::from_le_bytes([0x5a; 16]));
    assert_eq!(message.5, b"args");
    assert_eq!(message.6.0, START_UTC + 10_000_000);
    assert_eq!(seen[2].0, HeaderKind::Event);
}

#[test]
fn non_etl_input_is_rejected() {
    assert!(matches!(
        EtlReader::new(Cursor::new(vec![0u8; 10])),
        Err(EtlError::TooShort { len: 10 })
    ));
    // A trace cut inside its first buffer, at the header, inside the header event and after.
    let whole = buffer(&[logfile_header_event(), manifest_event(1, 1, 0, b"")]);
    for at in [72, 73, 75, 80, 100, whole.len() - 1] {
        let mut cut = whole.clone();
        cut.truncate(at);
        match EtlReader::new(Cursor::new(cut)) {
            Err(EtlError::FirstBufferCut { len, buffer_size }) => {
                assert_eq!(len as usize, at);
                assert_eq!(buffer_size as usize, whole.len());
            }
            other => panic!(
                "cut at {at}: expected FirstBufferCut, got {:?}",
                other.err()
            ),
        }
    }
    // A plausible buffer size followed by zeros, or by an event other than the header event,
    // is not a cut trace.
    let mut zeros = buffer_header(4096, 0, 0);
    zeros.resize(100, 0);
    assert!(matches!(
        EtlReader::new(Cursor::new(zeros)),
        Err(EtlError::MissingLogfileHeader { .. })
    ));
    let mut other_first = buffer(&[manifest_event(1, 1, 0, b"")]);
    other_first.truncate(100);
    assert!(matches!(
        EtlReader::new(Cursor::new(other_first)),
        Err(EtlError::MissingLogfileHeader { .. })
    ));
    let not_header = buffer(&[manifest_event(1, 1, 0, b"")]);
    assert!(matches!(
        EtlReader::new(Cursor::new(not_header)),
        Err(EtlError::MissingLogfileHeader { .. })
    ));
}
