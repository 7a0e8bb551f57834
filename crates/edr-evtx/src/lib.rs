//! The Windows Event Log (EVTX) source: reads EVTX files and maps their records to OCSF 1.8.0.
//!
//! - [`source::read_file`] reads a file record by record on the `evtx` crate, skipping and
//!   counting damaged chunks (with their chunk numbers) and unreadable records. It builds most
//!   records from their template values (the private `template` module) and renders the rest
//!   to JSON.
//! - [`record::Record`] is one record split into its `System` header and its fields, with
//!   accessors that accept both template-rendered values and the strings of forwarded (WEC)
//!   records.
//! - [`convert::Converter`] maps records of one stream to [`edr_ocsf::Event`]s: Sysmon,
//!   Security, PowerShell 4103/4104 (script blocks reassembled across records), System 7045/104
//!   and Defender 1116/1117; every other record becomes a Base Event with its fields under
//!   `unmapped`, counted per (channel or provider, event id).
//! - [`convert_file`] ties both together for one file.
#![forbid(unsafe_code)]

pub mod convert;
pub mod map;
pub mod record;
pub mod source;
mod template;

use std::path::Path;

pub use convert::{Converter, Stats};
pub use source::{ReadReport, SkippedChunk, SourceError};

/// Converts every record of the EVTX file at `path`, handing each event to `sink` in record
/// order, and returns what was read and produced.
pub fn convert_file(
    path: &Path,
    mut sink: impl FnMut(Box<edr_ocsf::Event>),
) -> Result<(ReadReport, Stats), SourceError> {
    let mut converter = Converter::new();
    let mut events = Vec::new();
    let report = source::read_file(path, |record| {
        converter.convert(record, &mut events);
        for event in events.drain(..) {
            sink(event);
        }
    })?;
    converter.finish(&mut events);
    for event in events.drain(..) {
        sink(event);
    }
    Ok((report, converter.stats().clone()))
}
