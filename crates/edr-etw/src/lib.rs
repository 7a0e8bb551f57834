//! ETW without Windows: the event record model, a streaming reader for `.etl` files, the
//! Xpress LZ77 codec of compressed ETL buffers and a TraceLogging metadata decoder.
//!
//! The live consumer on Windows and the file reader produce the same [`EventRecord`], so the
//! decoders built on it are tested on recorded traces on any platform.
//!
//! ```no_run
//! use edr_etw::EtlReader;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut reader = EtlReader::open("trace.etl".as_ref())?;
//! reader.for_each_record(|record| {
//!     println!("{} {} pid {}", record.timestamp, record.provider_id, record.process_id);
//! })?;
//! println!("{} buffers, {} skipped", reader.stats().buffers, reader.stats().skip_count);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod bytes;
pub mod guid;
pub mod header;
pub mod kernel;
pub mod reader;
pub mod record;
pub mod time;
pub mod tracelogging;
pub mod xpress;

pub use guid::Guid;
pub use header::{BufferHeader, LogfileHeader};
pub use reader::{Buffer, EtlError, EtlReader, ReadStats, ReaderLimits, Skip, SkipReason};
pub use record::{
    EventDescriptor, EventRecord, ExtendedData, ExtendedItem, HeaderKind, PointerSize,
};
pub use time::{ClockKind, FileTime, SessionClock};
