//! The live sensor's record sink: ETW records become OCSF events in the ring buffer.
//!
//! Each record the loader copied out of a session is decoded, enriched from the process cache
//! and mapped by the same [`RecordConverter`] that converts ETL files, and every resulting event
//! is appended to the telemetry lane of the ring buffer as OCSF JSON. The buffer's group commit
//! makes appended events durable within its sync interval; [`RecordSink::sync`] at stop also
//! emits the events the mapper still holds (events waiting for their process, unfinished script
//! blocks) and syncs.

use edr_ocsf::Event;
use edr_sensor::buffer::Lane;
use edr_sensor::transport::{SharedBuffer, lock};

use super::run::{RecordSink, SinkError};
use crate::loader::CopiedRecord;
use crate::ocsf::TraceContext;
use crate::pipeline::RecordConverter;

/// Converts live records to OCSF and appends them to the ring buffer it shares with the
/// transport and the loss reporter.
#[derive(Debug)]
pub struct BufferSink {
    converter: RecordConverter,
    buffer: SharedBuffer,
    out: Vec<Box<Event>>,
    appended: u64,
}

impl BufferSink {
    /// Creates a sink that appends to `buffer`; `context` identifies the boot for process uids.
    pub fn new(context: TraceContext, buffer: SharedBuffer) -> Self {
        Self {
            converter: RecordConverter::new(context),
            buffer,
            out: Vec::new(),
            appended: 0,
        }
    }

    /// OCSF events appended to the ring buffer so far.
    pub fn events_appended(&self) -> u64 {
        self.appended
    }

    fn append_pending(&mut self) -> Result<(), SinkError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut buffer = lock(&self.buffer);
        for event in self.out.drain(..) {
            let json = serde_json::to_vec(&event)
                .map_err(|error| SinkError(format!("cannot serialise an OCSF event: {error}")))?;
            buffer
                .append(Lane::Telemetry, &json)
                .map_err(|error| SinkError(error.to_string()))?;
            self.appended += 1;
        }
        Ok(())
    }
}

impl RecordSink for BufferSink {
    fn append(&mut self, record: CopiedRecord) -> Result<(), SinkError> {
        self.converter.push(&record.event_record(), &mut self.out);
        self.append_pending()
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        self.converter.finish(&mut self.out);
        self.append_pending()?;
        lock(&self.buffer)
            .sync()
            .map_err(|error| SinkError(error.to_string()))?;
        Ok(())
    }

    fn idle(&mut self) -> Result<(), SinkError> {
        lock(&self.buffer)
            .tick()
            .map_err(|error| SinkError(error.to_string()))?;
        Ok(())
    }
}
