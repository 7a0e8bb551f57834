//! The boundary between the loader's logic and the operating system's ETW controller API.
//!
//! [`EtwController`] has one method per ETW call the loader makes. The Windows implementation is
//! `sys::etw::WindowsEtw`; the unit tests drive the loader through a fake that scripts failures
//! and loss counters. Everything the loader decides (retry, replace a stale session, account
//! losses) is above this line and therefore runs on Linux.

use std::sync::Arc;

use super::queue::RecordQueue;
use crate::sys::OsError;

/// Sizing and flush settings of one real-time session, as passed to `StartTraceW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionProperties {
    /// Size of each ETW buffer in KiB (`EVENT_TRACE_PROPERTIES.BufferSize`).
    pub buffer_size_kb: u32,
    /// Buffers allocated when the session starts (`MinimumBuffers`).
    pub minimum_buffers: u32,
    /// Upper bound on buffers ETW may allocate under load (`MaximumBuffers`).
    pub maximum_buffers: u32,
    /// ETW's own flush timer in seconds (`FlushTimer`); a partly filled buffer is delivered at
    /// the latest after this long.
    pub flush_timer_secs: u32,
}

impl SessionProperties {
    /// Returns the most memory the session's buffers can take, in KiB.
    pub fn max_memory_kb(&self) -> u64 {
        u64::from(self.buffer_size_kb) * u64::from(self.maximum_buffers)
    }
}

/// Counters of a running session, read with `ControlTraceW(EVENT_TRACE_CONTROL_QUERY)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Events dropped because no free buffer was available (`EventsLost`).
    pub events_lost: u32,
    /// Full buffers dropped before the real-time consumer read them (`RealTimeBuffersLost`).
    pub real_time_buffers_lost: u32,
    /// Buffers delivered so far (`BuffersWritten`).
    pub buffers_written: u32,
    /// Buffers currently allocated (`NumberOfBuffers`).
    pub number_of_buffers: u32,
    /// Allocated buffers that are free (`FreeBuffers`).
    pub free_buffers: u32,
}

/// One provider to enable in a session with `EnableTraceEx2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEnable {
    /// Provider name, for messages only.
    pub name: &'static str,
    /// Provider GUID as a 128-bit number in the usual textual order.
    pub guid: u128,
    /// Highest level enabled (`TRACE_LEVEL_*`, 4 is informational).
    pub level: u8,
    /// `MatchAnyKeyword`: an event is produced when it has any of these keywords.
    pub match_any_keyword: u64,
    /// Event ids the provider produces; every other id is filtered out inside the provider by an
    /// `EVENT_FILTER_TYPE_EVENT_ID` filter. Empty means no id filter.
    pub event_ids: Vec<u16>,
    /// `ENABLE_TRACE_PARAMETERS.EnableProperty` bits (`EVENT_ENABLE_PROPERTY_*`).
    pub enable_property: u32,
}

/// The controller handle `StartTraceW` returned for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionHandle(pub u64);

/// A real-time consumer opened on a session: `ProcessTrace` runs in [`ConsumerTrace::process`].
pub trait ConsumerTrace: Send {
    /// Delivers events to the queue until the session stops or the trace is closed. Blocks.
    fn process(&mut self) -> Result<(), OsError>;
}

/// The ETW controller and consumer calls the loader makes.
pub trait EtwController: Send + Sync + 'static {
    /// Creates a real-time session named `name` (`StartTraceW`).
    fn start_session(
        &self,
        name: &str,
        properties: &SessionProperties,
    ) -> Result<SessionHandle, OsError>;

    /// Stops the session named `name`, whoever started it, and returns its final counters
    /// (`ControlTraceW(EVENT_TRACE_CONTROL_STOP)`).
    fn stop_session(&self, name: &str) -> Result<SessionCounters, OsError>;

    /// Reads the counters of the session named `name` (`ControlTraceW(EVENT_TRACE_CONTROL_QUERY)`).
    fn query_session(&self, name: &str) -> Result<SessionCounters, OsError>;

    /// Delivers the session's partly filled buffers now (`ControlTraceW(EVENT_TRACE_CONTROL_FLUSH)`).
    fn flush_session(&self, name: &str) -> Result<(), OsError>;

    /// Enables one provider in a session (`EnableTraceEx2` with `ENABLE_TRACE_PARAMETERS`).
    fn enable_provider(
        &self,
        session: SessionHandle,
        provider: &ProviderEnable,
    ) -> Result<(), OsError>;

    /// Opens a real-time consumer on the session named `name` whose callback copies every event
    /// record into `queue` (`OpenTraceW`). `session_index` is stored in each copied record.
    fn open_consumer(
        &self,
        name: &str,
        session_index: u8,
        queue: Arc<RecordQueue>,
    ) -> Result<Box<dyn ConsumerTrace>, OsError>;
}
