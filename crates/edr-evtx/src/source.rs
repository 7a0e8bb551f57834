//! Reading EVTX files record by record, skipping and counting what cannot be read.
//!
//! Recovery rules: a chunk whose header, CRC or string cache is damaged is skipped and reported
//! with its chunk number, and reading goes on with the next chunk; a record that cannot be
//! rendered is counted and skipped; only a file that cannot be opened or has no valid file
//! header fails as a whole. Chunk CRCs are not enforced, because real logs (for example ones
//! copied while Windows was writing) often carry stale CRCs over readable records.
//!
//! A record is built from its template values where its template allows (see the `template`
//! module). Otherwise the `evtx` crate renders it to JSON, which is read back. Both paths give
//! the same [`Record`]. In a chunk without damage whose records all take the first path, the
//! records are found from their headers here, and the crate's per-record element tree is not
//! built (ADR 0012).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use evtx::err::EvtxError;
use evtx::{EvtxChunkData, EvtxChunkHeader, EvtxParser, EvtxRecord, ParserSettings};

use crate::record::{Record, RecordError};
use crate::template::{LAST_HEADER_FILE_TIME, TemplateCache, file_time_ms};

/// Failure to read an EVTX file as a whole.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file cannot be opened or its file header is invalid; nothing was read from it.
    #[error("cannot open EVTX file {path:?}: {source}")]
    Open { path: PathBuf, source: EvtxError },
}

/// A chunk that was skipped, with the reason from the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedChunk {
    pub chunk_number: u64,
    pub reason: String,
}

/// What reading one file produced besides its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Records handed to the sink.
    pub records: u64,
    pub skipped_chunks: Vec<SkippedChunk>,
    /// Records that could not be rendered or had no `System` header.
    pub bad_records: u64,
    /// Records handed to the sink that were built by rendering them to JSON, because they
    /// have no template (forwarded records) or a template the token reader does not take.
    pub rendered_records: u64,
}

/// The method [`read_file_with`] uses to turn a parsed record into a [`Record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordBuild {
    /// From the record's template values where its template has a shape the token reader
    /// takes, otherwise by rendering it to JSON. This is what [`read_file`] does.
    Tokens,
    /// Always by rendering the record to JSON with the `evtx` crate and parsing that JSON:
    /// slower, and the reference that [`RecordBuild::Tokens`] must match.
    Json,
}

/// Reads every record of the EVTX file at `path`, in file order, and hands each to `sink`.
pub fn read_file(path: &Path, sink: impl FnMut(Record)) -> Result<ReadReport, SourceError> {
    read_file_with(path, RecordBuild::Tokens, sink)
}

/// Reads like [`read_file`], building records with the method `build`.
pub fn read_file_with(
    path: &Path,
    build: RecordBuild,
    mut sink: impl FnMut(Record),
) -> Result<ReadReport, SourceError> {
    // The default settings parse on the calling thread and carve no stale records.
    let settings = ParserSettings::new();
    let mut parser = EvtxParser::from_path(path)
        .map_err(|source| SourceError::Open {
            path: path.to_owned(),
            source,
        })?
        .with_configuration(settings.clone());
    let settings = Arc::new(settings);

    let mut report = ReadReport::default();
    for chunk in parser.chunks() {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(EvtxError::FailedToParseChunk { chunk_id, source }) => {
                skip_chunk(path, &mut report, chunk_id, source.to_string());
                continue;
            }
            Err(error) => {
                tracing::debug!(file = %path.display(), %error, "record skipped");
                report.bad_records += 1;
                continue;
            }
        };
        let number = chunk.number.unwrap_or_default();
        if let Err(reason) = read_chunk(path, chunk, &settings, build, &mut report, &mut sink) {
            skip_chunk(path, &mut report, number, reason);
        }
    }

    if let Some((mut cut, partial)) = truncation(path)
        && !report
            .skipped_chunks
            .iter()
            .any(|chunk| chunk.chunk_number == cut.chunk_number)
    {
        // The records before the cut in the last chunk are whole and still read.
        if let Some(chunk) = partial {
            let before = report.records;
            let number = cut.chunk_number;
            match read_chunk(path, chunk, &settings, build, &mut report, &mut sink) {
                Ok(()) => {
                    cut.reason = format!(
                        "{}; its {} whole records before the cut were read",
                        cut.reason,
                        report.records - before
                    );
                }
                Err(reason) => {
                    tracing::debug!(file = %path.display(), chunk = number, %reason, "failed to parse the part of the cut chunk");
                    cut.reason = format!("{}, and the part present cannot be read", cut.reason);
                }
            }
        }
        tracing::warn!(file = %path.display(), chunk = cut.chunk_number, reason = %cut.reason, "chunk missing");
        report.skipped_chunks.push(cut);
    }
    Ok(report)
}

/// Reads every record of one chunk into `sink`. Returns the reason when the chunk cannot be
/// parsed.
fn read_chunk(
    path: &Path,
    mut chunk: EvtxChunkData,
    settings: &Arc<ParserSettings>,
    build: RecordBuild,
    report: &mut ReadReport,
    sink: &mut impl FnMut(Record),
) -> Result<(), String> {
    let mut chunk = chunk
        .parse(Arc::clone(settings))
        .map_err(|error| error.to_string())?;
    // Definition offsets name definitions only within their chunk.
    let mut templates = TemplateCache::default();
    if build == RecordBuild::Tokens
        && let Some(records) = records_from_values(chunk.data, chunk.header, &mut templates)
    {
        for record in records {
            report.records += 1;
            sink(record);
        }
        return Ok(());
    }
    for record in chunk.iter() {
        // These settings carve no stale records. A carved record that failed would be
        // noise, so it would be dropped, as the crate's own record pipeline does.
        let recovered = record.as_ref().is_ok_and(|record| record.recovered);
        let item = read_record(record, build, &mut templates);
        if recovered && item.is_err() {
            continue;
        }
        match item {
            Ok((Ok(record), was_rendered)) => {
                report.records += 1;
                report.rendered_records += u64::from(was_rendered);
                sink(record);
            }
            Ok((Err(error), _)) => {
                tracing::debug!(file = %path.display(), %error, "record skipped");
                report.bad_records += 1;
            }
            Err(error) => {
                tracing::debug!(file = %path.display(), %error, "record skipped");
                report.bad_records += 1;
            }
        }
    }
    Ok(())
}

fn skip_chunk(path: &Path, report: &mut ReadReport, chunk_number: u64, reason: String) {
    tracing::warn!(file = %path.display(), chunk = chunk_number, error = %reason, "chunk skipped");
    report.skipped_chunks.push(SkippedChunk {
        chunk_number,
        reason,
    });
}

/// Builds one record that the `evtx` crate parsed, and returns it with whether it was rendered
/// to JSON.
fn read_record(
    record: Result<EvtxRecord<'_>, EvtxError>,
    build: RecordBuild,
    templates: &mut TemplateCache,
) -> Result<(Result<Record, RecordError>, bool), EvtxError> {
    let record = record?;
    let time_ms = record.timestamp.as_millisecond();
    let record_id = record.event_record_id;
    if build == RecordBuild::Tokens
        && let Some(binxml) = record_binxml(&record)
        && let Some(built) = templates.build(record.chunk.data, binxml, record_id, time_ms)
    {
        return Ok((Ok(built), false));
    }
    let bytes = record.into_json_bytes()?;
    Ok((Record::from_slice(&bytes.data, record_id, time_ms), true))
}

/// Returns the BinXML of `record`, a slice of its chunk.
fn record_binxml<'a>(record: &EvtxRecord<'a>) -> Option<&'a [u8]> {
    let start = usize::try_from(record.binxml_offset).ok()?;
    record
        .chunk
        .data
        .get(start..start.checked_add(record.binxml_size as usize)?)
}

/// Size of a chunk header; the first record follows it.
const CHUNK_HEADER_BYTES: usize = 512;

/// Size of a record header: magic, size, record id and FILETIME. The record's BinXML follows,
/// then a copy of its size.
const RECORD_HEADER_BYTES: usize = 24;

/// FILETIME of 1970-01-01T00:00:00Z.
const UNIX_EPOCH_FILE_TIME: u64 = 116_444_736_000_000_000;

/// Builds every record of a chunk from its template values, walking the records from the
/// chunk header as the `evtx` crate walks an undamaged chunk, without the element tree the
/// crate builds for each record. Returns `None` as soon as a record header is not what an
/// undamaged chunk holds, or a record has a template this module does not take. The caller
/// then reads the whole chunk through the `evtx` crate, which resyncs past damage and renders
/// what the plans do not take.
fn records_from_values(
    data: &[u8],
    header: &EvtxChunkHeader,
    templates: &mut TemplateCache,
) -> Option<Vec<Record>> {
    let live_end = usize::try_from(header.free_space_offset)
        .ok()?
        .min(data.len());
    let mut records = Vec::new();
    let mut offset = CHUNK_HEADER_BYTES;
    while offset < live_end {
        let head = data.get(offset..offset.checked_add(RECORD_HEADER_BYTES)?)?;
        let (magic, rest) = head.split_at(4);
        if magic != b"\x2a\x2a\x00\x00" {
            return None;
        }
        let size = u32::from_le_bytes(rest[..4].try_into().ok()?) as usize;
        let record_id = u64::from_le_bytes(rest[4..12].try_into().ok()?);
        let file_time = u64::from_le_bytes(rest[12..20].try_into().ok()?);
        // The header time is the fallback of a record without `TimeCreated`. Before 1970 the
        // crate's milliseconds round toward zero, not down, and near the end of year 9999 it
        // rejects the record, so such records take its path.
        if !(UNIX_EPOCH_FILE_TIME..=LAST_HEADER_FILE_TIME).contains(&file_time) {
            return None;
        }
        let time_ms = file_time_ms(file_time)?;
        let binxml_start = offset + RECORD_HEADER_BYTES;
        let binxml_size = size.checked_sub(RECORD_HEADER_BYTES + 4)?;
        let binxml = data.get(binxml_start..binxml_start.checked_add(binxml_size)?)?;
        records.push(templates.build(data, binxml, record_id, time_ms)?);
        if record_id == header.last_event_record_id {
            break;
        }
        offset = offset.checked_add(size)?;
    }
    Some(records)
}

/// Size of the EVTX file header block.
const FILE_HEADER_BYTES: u64 = 4096;

/// Size of one EVTX chunk.
const CHUNK_BYTES: u64 = 65_536;

/// Returns whether every byte of `file` from `start` on is zero. Such a tail past the chunks
/// that the file header lists is unused space, not a chunk that was cut short.
fn tail_is_zero(file: &mut std::fs::File, start: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(start)).is_ok()
        && file.read_to_end(&mut tail).is_ok()
        && tail.iter().all(|byte| *byte == 0)
}

/// Reports the first chunk lost because the file was cut short: the file ends inside a
/// chunk, or its header lists more chunks than the file contains. The parser reads only
/// whole chunks and reports nothing about a partial one. When the file ends inside a chunk,
/// the part present is returned too, made into a whole chunk by [`partial_chunk`].
fn truncation(path: &Path) -> Option<(SkippedChunk, Option<EvtxChunkData>)> {
    use std::io::Read;
    let mut header = [0_u8; 44];
    let mut file = std::fs::File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    file.read_exact(&mut header).ok()?;
    let body = length.checked_sub(FILE_HEADER_BYTES)?;
    let whole = body / CHUNK_BYTES;
    let partial = body % CHUNK_BYTES;
    // The chunk count sits at offset 42 of the file header (MS-EVEN6 2.2.1 FileHeader).
    let listed = u64::from(u16::from_le_bytes([header[42], header[43]]));
    if partial != 0 && (whole < listed || !tail_is_zero(&mut file, length - partial)) {
        let cut = SkippedChunk {
            chunk_number: whole,
            reason: format!(
                "the file ends {partial} bytes into this chunk of {CHUNK_BYTES}: it was cut short"
            ),
        };
        Some((cut, partial_chunk(&mut file, length - partial)))
    } else if listed > whole {
        let cut = SkippedChunk {
            chunk_number: whole,
            reason: format!(
                "the file header lists {listed} chunks but the file contains {whole}: it was cut short"
            ),
        };
        Some((cut, None))
    } else {
        None
    }
}

/// Reads the part of a chunk from `start` to the end of `file` and makes it a chunk that
/// contains only its whole records. The bytes from the first record the cut reaches are
/// zeroed. The chunk header's free space offset and last record point at what remains.
/// Links of the header's string and template tables that lead past the whole records are
/// cleared. `None` when the part has no chunk header or no whole record.
fn partial_chunk(file: &mut std::fs::File, start: u64) -> Option<EvtxChunkData> {
    use std::io::{Read, Seek, SeekFrom};
    let mut data = Vec::with_capacity(CHUNK_BYTES as usize);
    file.seek(SeekFrom::Start(start)).ok()?;
    file.read_to_end(&mut data).ok()?;
    if !data.starts_with(b"ElfChnk\0") {
        return None;
    }

    // Walk the records while each one ends inside the part and ends with a copy of its size.
    // As in a whole chunk, the walk stops at the header's free space offset and after its last
    // record, because the bytes past them can contain stale records from an earlier use.
    let header_end = data
        .get(48..52)
        .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
        .filter(|offset| (CHUNK_HEADER_BYTES..=CHUNK_BYTES as usize).contains(offset))
        .unwrap_or(CHUNK_BYTES as usize);
    let header_last_id = data
        .get(32..40)
        .map(|bytes| u64::from_le_bytes(bytes.try_into().unwrap_or_default()));
    let mut end = CHUNK_HEADER_BYTES;
    let mut last = None;
    while end < header_end
        && let Some(head) = data.get(end..end + RECORD_HEADER_BYTES)
        && head.starts_with(b"\x2a\x2a\x00\x00")
    {
        let size = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
        let Some(record_end) = end.checked_add(size) else {
            break;
        };
        let copy = record_end
            .checked_sub(4)
            .and_then(|at| data.get(at..record_end));
        if size < RECORD_HEADER_BYTES + 4 || copy != Some(&head[4..8]) || record_end > header_end {
            break;
        }
        let id = u64::from_le_bytes(head[8..16].try_into().ok()?);
        last = Some((end, id));
        end = record_end;
        if Some(id) == header_last_id {
            break;
        }
    }
    let (last_offset, last_id) = last?;
    data.resize(CHUNK_BYTES as usize, 0);
    data[end..].fill(0);

    // The chunk header's fields at the offsets the `evtx` crate reads them: last record
    // number (16) and id (32), which advance together from the first (8 and 24), the last
    // record's offset (44) and the free space offset (48).
    let first_number = u64::from_le_bytes(data[8..16].try_into().ok()?);
    let first_id = u64::from_le_bytes(data[24..32].try_into().ok()?);
    let last_number = first_number.saturating_add(last_id.saturating_sub(first_id));
    data[16..24].copy_from_slice(&last_number.to_le_bytes());
    data[32..40].copy_from_slice(&last_id.to_le_bytes());
    data[44..48].copy_from_slice(&(last_offset as u32).to_le_bytes());
    data[48..52].copy_from_slice(&(end as u32).to_le_bytes());

    // The 64 string offsets from byte 128 and the 32 template offsets from byte 384.
    for link in data[128..CHUNK_HEADER_BYTES].chunks_exact_mut(4) {
        let offset = u32::from_le_bytes([link[0], link[1], link[2], link[3]]) as usize;
        if offset >= end {
            link.fill(0);
        }
    }
    EvtxChunkData::new(data, false).ok()
}
