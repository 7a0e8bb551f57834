//! One ETW session's lifecycle as types: [`StoppedSession`] → [`RunningSession`] →
//! [`DrainingSession`] → [`StoppedSession`].
//!
//! Starting replaces a stale session of the same name (left by a sensor that crashed, since ETW
//! sessions outlive their process), retries a shortage of system resources with exponential
//! backoff until the start timeout and logs that shortage at most once a minute. Any other
//! failure to create the session is [`LoaderError::EtwSessionInit`] at once.

use std::time::Duration;

use tracing::{info, warn};

use super::LoaderError;
use super::backoff::{Backoff, Clock, RateLimiter};
use super::controller::{EtwController, ProviderEnable, SessionHandle};
use super::loss::{LossCounts, LossTracker};
use super::providers::SessionKind;
use super::sizing::SessionPlan;
use crate::sys::OsError;
use crate::sys::codes;

/// Everything needed to create one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    pub kind: SessionKind,
    pub plan: SessionPlan,
    pub providers: Vec<ProviderEnable>,
}

/// How long and how often a session start is retried when resources are short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Time after the first attempt when the loader gives up.
    pub timeout: Duration,
}

impl Default for StartPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            timeout: Duration::from_secs(120),
        }
    }
}

/// A session that does not exist (yet, or any more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedSession {
    spec: SessionSpec,
}

/// A session that exists and has its providers enabled.
#[derive(Debug)]
pub struct RunningSession {
    spec: SessionSpec,
    handle: SessionHandle,
    losses: LossTracker,
    failed_polls: u64,
    replaced_stale: bool,
}

/// A session whose stop was requested. Its consumer is delivering the last buffers.
#[derive(Debug)]
pub struct DrainingSession {
    spec: SessionSpec,
    losses: LossTracker,
    stop_error: Option<LoaderError>,
}

/// What a session lost over its life and how its stop went.
#[derive(Debug)]
pub struct SessionStopReport {
    pub kind: SessionKind,
    pub losses: LossCounts,
    /// Set when `ControlTraceW(EVENT_TRACE_CONTROL_STOP)` failed; the session may still exist.
    pub stop_error: Option<LoaderError>,
}

// === impl StoppedSession ===

impl StoppedSession {
    pub fn new(spec: SessionSpec) -> Self {
        Self { spec }
    }

    pub fn spec(&self) -> &SessionSpec {
        &self.spec
    }

    /// Creates the session. On failure no session of this name is left behind, except when the
    /// stale one could not be stopped.
    pub fn start<C: EtwController + ?Sized>(
        self,
        controller: &C,
        clock: &dyn Clock,
        policy: &StartPolicy,
    ) -> Result<RunningSession, LoaderError> {
        let session = self.spec.kind.session_name();
        let properties = self.spec.plan.properties;
        let deadline = clock.now() + policy.timeout;
        let mut backoff = Backoff::new(policy.initial_delay, policy.max_delay);
        let mut resource_log = RateLimiter::new(RateLimiter::LOSS_INTERVAL);
        let mut attempts: u32 = 0;
        let mut replaced_stale = false;

        let handle = loop {
            attempts += 1;
            let error = match controller.start_session(session, &properties) {
                Ok(handle) => break handle,
                Err(error) => error,
            };

            // A session with our fixed name exists only if an earlier sensor run did not stop
            // it: replace it once, so the current sizing applies and no old consumer competes.
            if error.code == codes::ERROR_ALREADY_EXISTS && !replaced_stale {
                replace_stale(controller, session)?;
                replaced_stale = true;
                continue;
            }

            // Kernel memory or ETW buffer shortage is transient: wait and try again, but log it
            // at most once a minute so a long shortage cannot flood the log.
            let now = clock.now();
            if error.is_resource_shortage() && now < deadline {
                let delay = backoff.next_delay().min(deadline - now);
                if let Some(held_back) = resource_log.allow(now) {
                    warn!(
                        session,
                        attempts,
                        held_back,
                        retry_in_ms = delay.as_millis() as u64,
                        %error,
                        "ETW session start lacks system resources, retrying with backoff"
                    );
                }
                clock.sleep(delay);
                continue;
            }

            return Err(LoaderError::EtwSessionInit {
                session,
                attempts,
                source: error,
            });
        };

        let running = RunningSession {
            spec: self.spec,
            handle,
            losses: LossTracker::default(),
            failed_polls: 0,
            replaced_stale,
        };
        info!(
            session,
            attempts,
            replaced_stale,
            buffer_size_kb = properties.buffer_size_kb,
            minimum_buffers = properties.minimum_buffers,
            maximum_buffers = properties.maximum_buffers,
            flush_timer_secs = properties.flush_timer_secs,
            "ETW session created"
        );
        Ok(running)
    }
}

fn replace_stale<C: EtwController + ?Sized>(
    controller: &C,
    session: &'static str,
) -> Result<(), LoaderError> {
    match controller.stop_session(session) {
        Ok(counters) => {
            warn!(
                session,
                events_lost = counters.events_lost,
                real_time_buffers_lost = counters.real_time_buffers_lost,
                "stopped a stale ETW session left by an earlier sensor run, recreating it"
            );
            Ok(())
        }
        // The stale session went away between the two calls: nothing to replace.
        Err(error) if error.code == codes::ERROR_WMI_INSTANCE_NOT_FOUND => Ok(()),
        Err(source) => Err(LoaderError::StaleSession { session, source }),
    }
}

// === impl RunningSession ===

impl RunningSession {
    pub fn kind(&self) -> SessionKind {
        self.spec.kind
    }

    pub fn spec(&self) -> &SessionSpec {
        &self.spec
    }

    /// Whether a stale session of the same name was stopped to create this one.
    pub fn replaced_stale(&self) -> bool {
        self.replaced_stale
    }

    pub fn losses(&self) -> &LossTracker {
        &self.losses
    }

    pub fn failed_polls(&self) -> u64 {
        self.failed_polls
    }

    /// Enables every provider of the session. On the first failure the session is stopped, so
    /// that no half-configured session is left running.
    pub fn enable_providers<C: EtwController + ?Sized>(
        self,
        controller: &C,
    ) -> Result<Self, LoaderError> {
        let session = self.spec.kind.session_name();
        for provider in &self.spec.providers {
            if let Err(source) = controller.enable_provider(self.handle, provider) {
                if let Err(stop_error) = controller.stop_session(session) {
                    warn!(session, error = %stop_error, "cannot stop the session after a provider failed to enable");
                }
                return Err(LoaderError::ProviderEnable {
                    session,
                    provider: provider.name,
                    source,
                });
            }
        }
        Ok(self)
    }

    /// Reads the session's counters and returns what was lost since the previous poll.
    pub fn poll<C: EtwController + ?Sized>(
        &mut self,
        controller: &C,
    ) -> Result<LossCounts, LoaderError> {
        let session = self.spec.kind.session_name();
        match controller.query_session(session) {
            Ok(counters) => Ok(self.losses.observe(counters)),
            Err(source) => {
                self.failed_polls += 1;
                Err(LoaderError::Query { session, source })
            }
        }
    }

    /// Delivers the session's partly filled buffers to the consumer now.
    pub fn flush<C: EtwController + ?Sized>(&self, controller: &C) -> Result<(), LoaderError> {
        let session = self.spec.kind.session_name();
        controller
            .flush_session(session)
            .map_err(|source| LoaderError::Flush { session, source })
    }

    /// Stops the session. ETW then delivers the remaining buffers and ends the consumer's
    /// `ProcessTrace`. The final counters go into the loss totals.
    pub fn stop<C: EtwController + ?Sized>(self, controller: &C) -> DrainingSession {
        let Self {
            spec, mut losses, ..
        } = self;
        let session = spec.kind.session_name();
        let stop_error = match controller.stop_session(session) {
            Ok(counters) => {
                losses.observe(counters);
                None
            }
            Err(source) => Some(LoaderError::Stop { session, source }),
        };
        DrainingSession {
            spec,
            losses,
            stop_error,
        }
    }
}

// === impl DrainingSession ===

impl DrainingSession {
    pub fn kind(&self) -> SessionKind {
        self.spec.kind
    }

    /// Ends the lifecycle once the consumer has returned.
    pub fn finish(self) -> (StoppedSession, SessionStopReport) {
        let Self {
            spec,
            losses,
            stop_error,
        } = self;
        let report = SessionStopReport {
            kind: spec.kind,
            losses: losses.totals(),
            stop_error,
        };
        (StoppedSession { spec }, report)
    }
}

/// Marks an [`OsError`] from a consumer for messages.
pub(crate) fn consumer_failed(kind: SessionKind, source: OsError) -> LoaderError {
    LoaderError::ConsumerFailed {
        session: kind.session_name(),
        source,
    }
}
