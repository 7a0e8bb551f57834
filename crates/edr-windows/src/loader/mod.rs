//! Live ETW sessions: creation, consumption into a bounded queue, loss accounting and shutdown.
//!
//! # Session layout
//!
//! Two real-time sessions with fixed names (see [`SessionKind`]):
//!
//! - `EdrSensor-Process`: Microsoft-Windows-Kernel-Process only (process start and stop, image
//!   load). Small buffers (16 KiB by default) and an explicit `EVENT_TRACE_CONTROL_FLUSH` every
//!   5 ms, so a process start reaches the sensor while the process still exists.
//! - `EdrSensor-Bulk`: file, registry, network, DNS and PowerShell providers. Larger buffers
//!   (64 KiB), delivered when full or by ETW's one-second flush timer.
//!
//! Minimum buffers scale with the processor count (see [`sizing`]). Each provider is enabled with
//! only the keywords and event ids the sensor maps (see [`providers`]).
//!
//! # Threads
//!
//! One consumer thread per session runs `ProcessTrace`. Its callback copies the record into a
//! [`CopiedRecord`] and pushes it to the shared [`RecordQueue`] without blocking; a full queue
//! drops the record and counts it. One maintenance thread flushes the process session and polls
//! every session's `EventsLost` and `RealTimeBuffersLost` every `poll_interval` (at most 10 s).
//! Decoding runs on the threads that pop the queue.
//!
//! # Losses
//!
//! Every poll updates the totals returned by [`Loader::health`] for the heartbeat. Whenever a
//! poll finds new losses in a session or new queue overflows, the loader sends a [`LossAlert`] to
//! its [`LossSink`] and logs an ERROR line, at most once a minute.
//!
//! # Recovery
//!
//! ETW sessions outlive the process that created them. A session with one of our names at start
//! is a leftover from a crashed run: it is stopped and recreated. On [`Loader::stop`] both
//! sessions are stopped, ETW delivers their last buffers, and the consumer threads are joined;
//! the caller then drains the queue.
//!
//! NOTE: none of this has run against real Windows ETW. It is unit-tested on Linux against a fake
//! of [`EtwController`] and type-checked for `x86_64-pc-windows-msvc`.

pub mod backoff;
pub mod controller;
pub mod loss;
pub mod providers;
pub mod queue;
pub mod record;
mod runtime;
pub mod session;
pub mod sizing;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

pub use controller::{
    ConsumerTrace, EtwController, ProviderEnable, SessionCounters, SessionHandle, SessionProperties,
};
pub use loss::{LoaderHealth, LossAlert, LossCounts, LossSink, SessionHealth};
pub use providers::SessionKind;
pub use queue::{QueueStats, RecordQueue};
pub use record::{CopiedRecord, RecordHeader};
pub use runtime::{Loader, LoaderSettings, LoaderStopReport};

use crate::sys::OsError;
use crate::sys::codes;

/// Errors of the loader, one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// A session could not be created: `StartTraceW` failed with anything but a resource
    /// shortage, or the shortage lasted past the start timeout. The sensor exits with this
    /// message and does not enroll.
    #[error("cannot create ETW session '{session}' after {attempts} attempt(s): {source}: {}", init_hint(.source))]
    EtwSessionInit {
        session: &'static str,
        attempts: u32,
        source: OsError,
    },

    /// A session with our name was found at start and could not be stopped.
    #[error(
        "cannot stop the stale ETW session '{session}' left by an earlier run: {source}: stop it with `logman stop {session} -ets` as an administrator"
    )]
    StaleSession {
        session: &'static str,
        source: OsError,
    },

    /// `EnableTraceEx2` failed for one provider; the session was stopped again.
    #[error("cannot enable provider {provider} in ETW session '{session}': {source}")]
    ProviderEnable {
        session: &'static str,
        provider: &'static str,
        source: OsError,
    },

    /// `OpenTraceW` failed for a session's real-time consumer.
    #[error("cannot open a real-time consumer on ETW session '{session}': {source}")]
    ConsumerOpen {
        session: &'static str,
        source: OsError,
    },

    /// The consumer thread could not be created.
    #[error("cannot start the consumer thread of ETW session '{session}': {source}")]
    ConsumerSpawn {
        session: &'static str,
        source: std::io::Error,
    },

    /// `ProcessTrace` returned an error, or the consumer thread panicked.
    #[error("the real-time consumer of ETW session '{session}' failed: {source}")]
    ConsumerFailed {
        session: &'static str,
        source: OsError,
    },

    /// Reading a session's counters failed. Retryable: the next poll tries again.
    #[error("cannot read the counters of ETW session '{session}': {source}")]
    Query {
        session: &'static str,
        source: OsError,
    },

    /// An explicit flush failed. Retryable: the next flush tries again, and ETW's own flush timer
    /// still delivers the buffers.
    #[error("cannot flush ETW session '{session}': {source}")]
    Flush {
        session: &'static str,
        source: OsError,
    },

    /// Stopping a session failed; it may still exist and is replaced at the next start.
    #[error(
        "cannot stop ETW session '{session}': {source}: it is replaced when the sensor starts again"
    )]
    Stop {
        session: &'static str,
        source: OsError,
    },
}

impl LoaderError {
    /// Whether the operation may succeed when simply repeated later.
    pub fn is_retryable(&self) -> bool {
        match self {
            LoaderError::Query { .. } | LoaderError::Flush { .. } => true,
            LoaderError::EtwSessionInit { source, .. } => source.is_resource_shortage(),
            _ => false,
        }
    }
}

fn init_hint(source: &OsError) -> &'static str {
    match source.code {
        codes::ERROR_ACCESS_DENIED => {
            "run the sensor as LocalSystem (the installed service does) or from an elevated prompt"
        }
        codes::ERROR_NO_SYSTEM_RESOURCES
        | codes::ERROR_NOT_ENOUGH_MEMORY
        | codes::ERROR_OUTOFMEMORY => {
            "too many ETW sessions or too little kernel memory: stop unused sessions (`logman query -ets`) or lower maximum_buffers in the [sessions] configuration"
        }
        codes::ERROR_ALREADY_EXISTS => {
            "another program recreated the session: stop it with `logman stop <name> -ets`"
        }
        _ => {
            "check that the service runs with administrator rights and that the Performance Logs and Alerts service is not disabled"
        }
    }
}
