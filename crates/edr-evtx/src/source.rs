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
//! the same [`Record`].

use std::path::{Path, PathBuf};

use evtx::err::EvtxError;
use evtx::{EvtxParser, ParserSettings};

use crate::record::Record;
use crate::template::TemplateCache;

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
    // The default settings parse on the calling thread. Setting `num_threads` in a build without
    // the evtx `multithreading` feature only logs a warning for every file.
    let settings = ParserSettings::new();
    let mut parser = EvtxParser::from_path(path)
        .map_err(|source| SourceError::Open {
            path: path.to_owned(),
            source,
        })?
        .with_configuration(settings);

    let mut report = ReadReport::default();
    // The parser clones this closure for each chunk, so each chunk starts with an empty cache.
    let mut templates = TemplateCache::default();
    let rendered = parser.serialized_records(move |record| {
        let record = record?;
        let time_ms = record.timestamp.as_millisecond();
        let record_id = record.event_record_id;
        if build == RecordBuild::Tokens
            && let Some(built) = templates.build(&record, record_id, time_ms)
        {
            return Ok((Ok(built), false));
        }
        let bytes = record.into_json_bytes()?;
        Ok((Record::from_slice(&bytes.data, record_id, time_ms), true))
    });
    for item in rendered {
        match item {
            Ok((record, was_rendered)) => match record {
                Ok(record) => {
                    report.records += 1;
                    report.rendered_records += u64::from(was_rendered);
                    sink(record);
                }
                Err(error) => {
                    tracing::debug!(file = %path.display(), %error, "record skipped");
                    report.bad_records += 1;
                }
            },
            Err(EvtxError::FailedToParseChunk { chunk_id, source }) => {
                tracing::warn!(file = %path.display(), chunk = chunk_id, error = %source, "chunk skipped");
                report.skipped_chunks.push(SkippedChunk {
                    chunk_number: chunk_id,
                    reason: source.to_string(),
                });
            }
            Err(error) => {
                tracing::debug!(file = %path.display(), %error, "record skipped");
                report.bad_records += 1;
            }
        }
    }
    if let Some(cut) = truncation(path)
        && !report
            .skipped_chunks
            .iter()
            .any(|chunk| chunk.chunk_number == cut.chunk_number)
    {
        tracing::warn!(file = %path.display(), chunk = cut.chunk_number, reason = %cut.reason, "chunk missing");
        report.skipped_chunks.push(cut);
    }
    Ok(report)
}

/// Size of the EVTX file header block.
const FILE_HEADER_BYTES: u64 = 4096;

/// Size of one EVTX chunk.
const CHUNK_BYTES: u64 = 65_536;

/// Reports the first chunk lost because the file was cut short: the file ends inside a
/// chunk, or its header lists more chunks than the file contains. The parser reads only
/// whole chunks and reports nothing about a partial one.
fn truncation(path: &Path) -> Option<SkippedChunk> {
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
    if partial != 0 {
        Some(SkippedChunk {
            chunk_number: whole,
            reason: format!(
                "the file ends {partial} bytes into this chunk of {CHUNK_BYTES}: it was cut short, and the chunk was not read"
            ),
        })
    } else if listed > whole {
        Some(SkippedChunk {
            chunk_number: whole,
            reason: format!(
                "the file header lists {listed} chunks but the file contains {whole}: it was cut short"
            ),
        })
    } else {
        None
    }
}
