//! Damaged chunks are skipped and reported by number while the rest of the file converts;
//! the damage is made here, on a copy of a recorded log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

const SECURITY: &str = "omerbenamram-evtx_MIT-or-Apache-2.0/samples/security.evtx";
const FILE_HEADER_SIZE: usize = 4096;
const CHUNK_SIZE: usize = 65_536;

fn convert(path: &std::path::Path) -> (edr_evtx::ReadReport, u64) {
    let mut events = 0;
    let (report, _) = edr_evtx::convert_file(path, |_| events += 1).unwrap();
    (report, events)
}

#[test]
fn bad_chunk_magic_skipped_rest_converted() {
    let Some(original) = common::evtx_file(SECURITY) else {
        return;
    };
    let bytes = std::fs::read(&original).unwrap();
    let (clean, clean_events) = convert(&original);
    assert!(clean.skipped_chunks.is_empty());

    let mut damaged = bytes.clone();
    let chunk = 3;
    let offset = FILE_HEADER_SIZE + chunk * CHUNK_SIZE;
    assert_eq!(
        &damaged[offset..offset + 8],
        b"ElfChnk\0",
        "chunk 3 starts with its magic"
    );
    damaged[offset..offset + 8].copy_from_slice(b"XXXXXXXX");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.evtx");
    std::fs::write(&path, &damaged).unwrap();

    let (report, events) = convert(&path);
    assert_eq!(
        report.skipped_chunks.len(),
        1,
        "{:?}",
        report.skipped_chunks
    );
    assert_eq!(report.skipped_chunks[0].chunk_number, 3);
    assert!(
        events > 0 && events < clean_events,
        "{events} of {clean_events} events"
    );
    assert!(report.records < clean.records);
}

#[test]
fn truncated_file_keeps_whole_chunks() {
    let Some(original) = common::evtx_file(SECURITY) else {
        return;
    };
    let bytes = std::fs::read(&original).unwrap();
    // Cut the file in the middle of chunk 2: chunks 0 and 1 remain whole.
    let cut = FILE_HEADER_SIZE + 2 * CHUNK_SIZE + CHUNK_SIZE / 2;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.evtx");
    std::fs::write(&path, &bytes[..cut]).unwrap();

    let (report, events) = convert(&path);
    assert!(report.records > 0);
    assert!(
        events >= report.records,
        "every record read became an event"
    );
    // The cut chunk is reported, not dropped without a word.
    assert_eq!(
        report.skipped_chunks.len(),
        1,
        "{:?}",
        report.skipped_chunks
    );
    assert_eq!(report.skipped_chunks[0].chunk_number, 2);
    assert!(
        report.skipped_chunks[0].reason.contains("cut short"),
        "{:?}",
        report.skipped_chunks
    );

    // Cut at a chunk boundary, after the header that lists more chunks.
    std::fs::write(&path, &bytes[..FILE_HEADER_SIZE + CHUNK_SIZE]).unwrap();
    let (report, _) = convert(&path);
    assert_eq!(
        report.skipped_chunks.len(),
        1,
        "{:?}",
        report.skipped_chunks
    );
    assert_eq!(report.skipped_chunks[0].chunk_number, 1);
}

/// Returns the read report and the record ids of the EVTX file at `path`, in file order.
fn record_ids(path: &std::path::Path) -> (edr_evtx::ReadReport, Vec<u64>) {
    let mut ids = Vec::new();
    let report = edr_evtx::source::read_file(path, |record| ids.push(record.record_id)).unwrap();
    (report, ids)
}

#[test]
fn cut_chunk_keeps_its_whole_records() {
    let Some(original) = common::evtx_file(SECURITY) else {
        return;
    };
    let bytes = std::fs::read(&original).unwrap();
    let (_, all_ids) = record_ids(&original);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.evtx");

    // Only the whole chunks 0 and 1.
    std::fs::write(&path, &bytes[..FILE_HEADER_SIZE + 2 * CHUNK_SIZE]).unwrap();
    let (_, two_chunks) = record_ids(&path);

    // Cut in the middle of chunk 2: its records before the cut are read as well, and they are
    // the same records, in the same order, as in the whole file.
    let cut = FILE_HEADER_SIZE + 2 * CHUNK_SIZE + CHUNK_SIZE / 2;
    std::fs::write(&path, &bytes[..cut]).unwrap();
    let (report, ids) = record_ids(&path);
    assert!(
        ids.len() > two_chunks.len() && ids.len() < all_ids.len(),
        "{} records from the cut file, {} from two chunks, {} in all",
        ids.len(),
        two_chunks.len(),
        all_ids.len()
    );
    assert_eq!(ids[..], all_ids[..ids.len()]);
    assert_eq!(report.bad_records, 0);
    let read = ids.len() - two_chunks.len();
    assert_eq!(
        report.skipped_chunks.len(),
        1,
        "{:?}",
        report.skipped_chunks
    );
    assert!(
        report.skipped_chunks[0].reason.contains(&format!(
            "its {read} whole records before the cut were read"
        )),
        "{:?}",
        report.skipped_chunks
    );

    // The converted events match the records, and they validate.
    let mut events = Vec::new();
    edr_evtx::convert_file(&path, |event| {
        events.push(serde_json::to_value(&event).unwrap())
    })
    .unwrap();
    assert_eq!(events.len(), ids.len());
    if let Some(schema) = common::schema() {
        for event in &events {
            schema.validate(event).unwrap();
        }
    }

    // A cut inside the chunk header leaves nothing of the chunk to read.
    std::fs::write(&path, &bytes[..FILE_HEADER_SIZE + 2 * CHUNK_SIZE + 300]).unwrap();
    let (report, ids) = record_ids(&path);
    assert_eq!(ids, two_chunks);
    assert_eq!(
        report.skipped_chunks.len(),
        1,
        "{:?}",
        report.skipped_chunks
    );
}

#[test]
fn missing_file_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let error = edr_evtx::convert_file(&dir.path().join("absent.evtx"), |_| {}).unwrap_err();
    assert!(error.to_string().contains("absent.evtx"), "{error}");
}

#[test]
fn zero_tail_not_reported_as_cut() {
    let Some(original) = common::evtx_file(SECURITY) else {
        return;
    };
    let bytes = std::fs::read(&original).unwrap();
    let (clean, clean_events) = convert(&original);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zero_tail.evtx");

    // Zero bytes past the chunks that the header lists are unused space, so no record was lost.
    let mut padded = bytes.clone();
    padded.extend_from_slice(&[0; 4096]);
    std::fs::write(&path, &padded).unwrap();
    let (report, events) = convert(&path);
    assert!(
        report.skipped_chunks.is_empty(),
        "{:?}",
        report.skipped_chunks
    );
    assert_eq!(report.records, clean.records);
    assert_eq!(events, clean_events);

    // A tail that starts a chunk is a chunk cut short, and is still reported.
    let mut cut = bytes;
    cut.extend_from_slice(b"ElfChnk\0");
    cut.extend_from_slice(&[0; 4088]);
    std::fs::write(&path, &cut).unwrap();
    let (report, _) = convert(&path);
    assert_eq!(
        report.skipped_chunks.len(),
        1,
        "{:?}",
        report.skipped_chunks
    );
    assert!(report.skipped_chunks[0].reason.contains("cut short"));
}

/// Returns the offsets in `chunk` at which its records start and end, walked from the first.
fn record_spans(chunk: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 512;
    while chunk.get(start..start + 4) == Some(b"\x2a\x2a\x00\x00") {
        let size = u32::from_le_bytes(chunk[start + 4..start + 8].try_into().unwrap()) as usize;
        if size < 28 || start + size > chunk.len() {
            break;
        }
        spans.push((start, start + size));
        start += size;
    }
    spans
}

#[test]
fn cut_chunk_ends_at_its_free_space() {
    let Some(original) = common::evtx_file(SECURITY) else {
        return;
    };
    let mut bytes = std::fs::read(&original).unwrap();
    // Chunk 2's header is made to end at its 20th record, so the records after it are stale
    // bytes past the free space, as in a chunk that an earlier use filled further.
    let chunk = FILE_HEADER_SIZE + 2 * CHUNK_SIZE;
    let spans = record_spans(&bytes[chunk..chunk + CHUNK_SIZE]);
    assert!(spans.len() > 40, "{} records in chunk 2", spans.len());
    let (last_start, last_end) = spans[19];
    let first_number = u64::from_le_bytes(bytes[chunk + 8..chunk + 16].try_into().unwrap());
    let last_id = u64::from_le_bytes(
        bytes[chunk + last_start + 8..chunk + last_start + 16]
            .try_into()
            .unwrap(),
    );
    let header = &mut bytes[chunk..chunk + 512];
    header[16..24].copy_from_slice(&(first_number + 19).to_le_bytes());
    header[32..40].copy_from_slice(&last_id.to_le_bytes());
    header[44..48].copy_from_slice(&(last_start as u32).to_le_bytes());
    header[48..52].copy_from_slice(&(last_end as u32).to_le_bytes());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.evtx");
    // Read whole, chunk 2 gives its 20 live records.
    std::fs::write(&path, &bytes[..chunk + CHUNK_SIZE]).unwrap();
    let (_, whole) = record_ids(&path);

    // Cut after the 40th record: the stale records 21 to 40 are not read.
    std::fs::write(&path, &bytes[..chunk + spans[39].1 + 1]).unwrap();
    let (report, ids) = record_ids(&path);
    assert_eq!(ids, whole);
    assert!(
        report.skipped_chunks[0]
            .reason
            .contains("its 20 whole records before the cut were read"),
        "{:?}",
        report.skipped_chunks
    );
}
