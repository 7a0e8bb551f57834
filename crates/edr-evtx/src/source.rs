//! Reading EVTX files record by record, skipping and counting what cannot be read.
//!
//! Recovery rules: a chunk whose header, CRC or string cache is damaged is skipped and reported
//! with its chunk number, and reading goes on with the next chunk; a record that cannot be
//! rendered is counted and skipped; only a file that cannot be opened or has no valid file
//! header fails as a whole. Chunk CRCs are not enforced, because real logs (for example ones
//! copied while Windows was writing) often carry stale CRCs over readable records.

use std::path::{Path, PathBuf};

use evtx::err::EvtxError;
use evtx::{EvtxParser, ParserSettings};

use crate::record::Record;

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
}

/// Reads every record of the EVTX file at `path`, in file order, and hands each to `sink`.
pub fn read_file(path: &Path, mut sink: impl FnMut(Record)) -> Result<ReadReport, SourceError> {
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
    let rendered = parser.serialized_records(|record| {
        let record = record?;
        let time_ms = record.timestamp.as_millisecond();
        let record_id = record.event_record_id;
        let bytes = record.into_json_bytes()?;
        Ok(Record::from_slice(&bytes.data, record_id, time_ms))
    });
    for item in rendered {
        match item {
            Ok(record) => match record {
                Ok(record) => {
                    report.records += 1;
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
    Ok(report)
}
