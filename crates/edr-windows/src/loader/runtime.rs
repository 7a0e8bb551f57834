//! The running loader: both sessions, their consumer threads and the maintenance thread.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::LoaderError;
use super::backoff::{Clock, RateLimiter};
use super::controller::EtwController;
use super::loss::{LoaderHealth, LossAlert, LossSink, SessionHealth};
use super::providers::SessionKind;
use super::queue::{QueueStats, RecordQueue};
use super::session::{
    RunningSession, SessionSpec, SessionStopReport, StartPolicy, StoppedSession, consumer_failed,
};
use super::sizing::plan_session;
use crate::config::SessionsConfig;
use crate::sys::OsError;

/// What the loader starts and how often it polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderSettings {
    /// Sessions in start order.
    pub sessions: Vec<SessionSpec>,
    pub start_policy: StartPolicy,
    /// Interval between loss-counter polls; the configuration bounds it to 10 s.
    pub poll_interval: Duration,
}

impl LoaderSettings {
    /// Sizes both sessions for a machine with `processor_count` logical processors.
    pub fn from_config(config: &SessionsConfig, processor_count: u32) -> Self {
        let sessions = SessionKind::ALL
            .into_iter()
            .map(|kind| {
                let sizing = match kind {
                    SessionKind::Process => &config.process,
                    SessionKind::Bulk => &config.bulk,
                };
                let plan = plan_session(sizing, processor_count);
                if plan.maximum_raised {
                    warn!(
                        session = kind.session_name(),
                        configured = sizing.maximum_buffers,
                        used = plan.properties.maximum_buffers,
                        processor_count,
                        "maximum_buffers raised to twice the scaled minimum"
                    );
                }
                SessionSpec {
                    kind,
                    plan,
                    providers: kind.providers(),
                }
            })
            .collect();
        Self {
            sessions,
            start_policy: StartPolicy {
                timeout: Duration::from_secs(u64::from(config.start_timeout_secs)),
                ..StartPolicy::default()
            },
            poll_interval: Duration::from_secs(u64::from(config.poll_interval_secs)),
        }
    }
}

/// What [`Loader::stop`] observed.
#[derive(Debug)]
pub struct LoaderStopReport {
    pub sessions: Vec<SessionStopReport>,
    /// Consumers that ended with an error or a panic.
    pub consumer_errors: Vec<LoaderError>,
    /// The queue's counters after every consumer returned; its records are still queued.
    pub queue: QueueStats,
}

/// Both sessions running with their consumers.
#[derive(Debug)]
pub struct Loader<C: EtwController> {
    shared: Arc<Shared<C>>,
    consumers: Vec<(SessionKind, JoinHandle<Result<(), OsError>>)>,
    maintenance: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared<C> {
    controller: Arc<C>,
    sessions: Mutex<Vec<RunningSession>>,
    queue: Arc<RecordQueue>,
    sink: Arc<dyn LossSink>,
    clock: Arc<dyn Clock>,
    poll_state: Mutex<PollState>,
    stopping: Mutex<bool>,
    stop_signal: Condvar,
}

#[derive(Debug)]
struct PollState {
    last_overflows: u64,
    loss_log: RateLimiter,
    poll_error_log: RateLimiter,
    flush_error_log: RateLimiter,
}

impl std::fmt::Debug for dyn LossSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LossSink")
    }
}

impl std::fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

type ConsumerThread = (SessionKind, JoinHandle<Result<(), OsError>>);

// === impl Loader ===

impl<C: EtwController> Loader<C> {
    /// Creates every session, starts its consumer and enables its providers, then starts the
    /// maintenance thread. On any failure the sessions already created are stopped again.
    pub fn start(
        controller: Arc<C>,
        settings: LoaderSettings,
        queue: Arc<RecordQueue>,
        sink: Arc<dyn LossSink>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LoaderError> {
        let LoaderSettings {
            sessions: specs,
            start_policy,
            poll_interval,
        } = settings;
        let flush_plan: Vec<(SessionKind, Duration)> = specs
            .iter()
            .filter_map(|spec| {
                spec.plan
                    .flush_interval
                    .map(|interval| (spec.kind, interval))
            })
            .collect();

        let mut running = Vec::new();
        let mut consumers = Vec::new();
        for spec in specs {
            match start_session(&*controller, spec, &queue, &*clock, &start_policy) {
                Ok((session, consumer)) => {
                    running.push(session);
                    consumers.push(consumer);
                }
                Err(error) => {
                    let _report = shutdown_sessions(&*controller, running, consumers);
                    return Err(error);
                }
            }
        }

        let shared = Arc::new(Shared {
            controller,
            sessions: Mutex::new(running),
            queue,
            sink,
            clock,
            poll_state: Mutex::new(PollState {
                last_overflows: 0,
                loss_log: RateLimiter::new(RateLimiter::LOSS_INTERVAL),
                poll_error_log: RateLimiter::new(RateLimiter::LOSS_INTERVAL),
                flush_error_log: RateLimiter::new(RateLimiter::LOSS_INTERVAL),
            }),
            stopping: Mutex::new(false),
            stop_signal: Condvar::new(),
        });

        let maintenance_shared = Arc::clone(&shared);
        let maintenance = std::thread::Builder::new()
            .name("etw-maintenance".to_owned())
            .spawn(move || maintenance_shared.run_maintenance(poll_interval, &flush_plan));
        let maintenance = match maintenance {
            Ok(handle) => Some(handle),
            Err(source) => {
                let sessions = std::mem::take(&mut *lock(&shared.sessions));
                let _report = shutdown_sessions(&*shared.controller, sessions, consumers);
                return Err(LoaderError::ConsumerSpawn {
                    session: "etw-maintenance",
                    source,
                });
            }
        };

        info!(
            poll_interval_secs = poll_interval.as_secs(),
            "ETW loader started"
        );
        Ok(Self {
            shared,
            consumers,
            maintenance,
        })
    }

    /// Polls every session's loss counters and the queue's overflows now; raises an alert when
    /// anything was lost since the previous poll. The maintenance thread calls this every
    /// `poll_interval`.
    pub fn poll_once(&self) -> LoaderHealth {
        self.shared.poll_once()
    }

    /// Loss totals and queue state for the heartbeat, as of the last poll.
    pub fn health(&self) -> LoaderHealth {
        self.shared.health()
    }

    /// The queue the consumers fill.
    pub fn queue(&self) -> &Arc<RecordQueue> {
        &self.shared.queue
    }

    /// Stops the maintenance thread, polls one last time, stops every session and waits for
    /// the consumers to deliver the last buffers. The queue is left open and full for the caller
    /// to drain.
    pub fn stop(mut self) -> LoaderStopReport {
        *lock(&self.shared.stopping) = true;
        self.shared.stop_signal.notify_all();
        if let Some(handle) = self.maintenance.take()
            && handle.join().is_err()
        {
            error!("the ETW maintenance thread panicked");
        }

        // A last poll reports what was lost since the previous one before the counters go away.
        self.shared.poll_once();

        let sessions = std::mem::take(&mut *lock(&self.shared.sessions));
        let consumers = std::mem::take(&mut self.consumers);
        let (sessions, consumer_errors) =
            shutdown_sessions(&*self.shared.controller, sessions, consumers);
        let queue = self.shared.queue.stats();
        info!(
            queued = queue.depth,
            overflows = queue.overflows,
            "ETW loader stopped"
        );
        LoaderStopReport {
            sessions,
            consumer_errors,
            queue,
        }
    }
}

fn start_session<C: EtwController + ?Sized>(
    controller: &C,
    spec: SessionSpec,
    queue: &Arc<RecordQueue>,
    clock: &dyn Clock,
    policy: &StartPolicy,
) -> Result<(RunningSession, ConsumerThread), LoaderError> {
    let kind = spec.kind;
    let session = kind.session_name();
    let running = StoppedSession::new(spec).start(controller, clock, policy)?;

    // The consumer is attached before any provider is enabled, so no event waits in a
    // real-time buffer that nobody reads.
    let mut trace = match controller.open_consumer(session, kind.index(), Arc::clone(queue)) {
        Ok(trace) => trace,
        Err(source) => {
            let _draining = running.stop(controller);
            return Err(LoaderError::ConsumerOpen { session, source });
        }
    };
    let thread = std::thread::Builder::new()
        .name(format!("etw-{session}"))
        .spawn(move || trace.process());
    let thread = match thread {
        Ok(thread) => thread,
        Err(source) => {
            let _draining = running.stop(controller);
            return Err(LoaderError::ConsumerSpawn { session, source });
        }
    };

    match running.enable_providers(controller) {
        Ok(running) => Ok((running, (kind, thread))),
        Err(error) => {
            // `enable_providers` stopped the session, which ends `ProcessTrace`.
            if let Some(consumer_error) = join_consumer(kind, thread) {
                warn!(session, error = %consumer_error, "consumer ended with an error after a provider failed");
            }
            Err(error)
        }
    }
}

fn shutdown_sessions<C: EtwController + ?Sized>(
    controller: &C,
    sessions: Vec<RunningSession>,
    consumers: Vec<ConsumerThread>,
) -> (Vec<SessionStopReport>, Vec<LoaderError>) {
    let draining: Vec<_> = sessions
        .into_iter()
        .map(|session| session.stop(controller))
        .collect();

    let consumer_errors: Vec<LoaderError> = consumers
        .into_iter()
        .filter_map(|(kind, thread)| join_consumer(kind, thread))
        .collect();
    for consumer_error in &consumer_errors {
        error!(error = %consumer_error, "ETW consumer ended with an error");
    }

    let reports: Vec<SessionStopReport> = draining
        .into_iter()
        .map(|session| session.finish().1)
        .collect();
    for report in &reports {
        let session = report.kind.session_name();
        match &report.stop_error {
            Some(stop_error) => error!(session, error = %stop_error, "ETW session stop failed"),
            None => info!(
                session,
                events_lost = report.losses.events_lost,
                real_time_buffers_lost = report.losses.real_time_buffers_lost,
                "ETW session stopped"
            ),
        }
    }
    (reports, consumer_errors)
}

fn join_consumer(
    kind: SessionKind,
    thread: JoinHandle<Result<(), OsError>>,
) -> Option<LoaderError> {
    match thread.join() {
        Ok(Ok(())) => None,
        Ok(Err(source)) => Some(consumer_failed(kind, source)),
        // A panic in the consumer is reported like an OS failure of ProcessTrace.
        Err(_) => Some(consumer_failed(
            kind,
            OsError::new("ProcessTrace (consumer thread panicked)", 0),
        )),
    }
}

// === impl Shared ===

impl<C: EtwController> Shared<C> {
    fn run_maintenance(&self, poll_interval: Duration, flush_plan: &[(SessionKind, Duration)]) {
        let start = Instant::now();
        let mut next_poll = start + poll_interval;
        let mut next_flush: Vec<Instant> = flush_plan
            .iter()
            .map(|(_, interval)| start + *interval)
            .collect();

        loop {
            let wake_at = next_flush
                .iter()
                .copied()
                .chain([next_poll])
                .min()
                .unwrap_or(next_poll);
            {
                let stopping = lock(&self.stopping);
                let timeout = wake_at.saturating_duration_since(Instant::now());
                let (stopping, _) = self
                    .stop_signal
                    .wait_timeout_while(stopping, timeout, |stopping| !*stopping)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if *stopping {
                    return;
                }
            }

            let now = Instant::now();
            for ((kind, interval), due) in flush_plan.iter().zip(next_flush.iter_mut()) {
                if now >= *due {
                    self.flush(*kind);
                    *due = now + *interval;
                }
            }
            if now >= next_poll {
                self.poll_once();
                next_poll = now + poll_interval;
            }
        }
    }

    fn flush(&self, kind: SessionKind) {
        let result = {
            let sessions = lock(&self.sessions);
            match sessions.iter().find(|session| session.kind() == kind) {
                Some(session) => session.flush(&*self.controller),
                None => return,
            }
        };
        if let Err(flush_error) = result {
            let mut state = lock(&self.poll_state);
            if let Some(held_back) = state.flush_error_log.allow(self.clock.now()) {
                warn!(error = %flush_error, held_back, "ETW flush failed; the session's flush timer still delivers its buffers");
            }
        }
    }

    fn poll_once(&self) -> LoaderHealth {
        let mut lost = Vec::new();
        let mut poll_errors = Vec::new();
        {
            let mut sessions = lock(&self.sessions);
            for session in sessions.iter_mut() {
                match session.poll(&*self.controller) {
                    Ok(delta) if delta.any() => lost.push((session.kind(), delta)),
                    Ok(_) => {}
                    Err(poll_error) => poll_errors.push(poll_error),
                }
            }
        }

        let overflows_total = self.queue.stats().overflows;
        let now = self.clock.now();
        let mut state = lock(&self.poll_state);
        let queue_overflows = overflows_total.saturating_sub(state.last_overflows);
        state.last_overflows = overflows_total;

        if !poll_errors.is_empty()
            && let Some(held_back) = state.poll_error_log.allow(now)
        {
            for poll_error in &poll_errors {
                warn!(error = %poll_error, held_back, "ETW loss counters could not be read");
            }
        }

        if !lost.is_empty() || queue_overflows > 0 {
            let alert = LossAlert {
                at: now,
                sessions: lost,
                queue_overflows,
            };
            if let Some(held_back) = state.loss_log.allow(now) {
                for (kind, delta) in &alert.sessions {
                    error!(
                        session = kind.session_name(),
                        events_lost = delta.events_lost,
                        real_time_buffers_lost = delta.real_time_buffers_lost,
                        held_back,
                        "ETW events lost"
                    );
                }
                if queue_overflows > 0 {
                    error!(
                        queue_overflows,
                        held_back, "events dropped because the record queue was full"
                    );
                }
            }
            drop(state);
            self.sink.alert(&alert);
        } else {
            drop(state);
        }

        self.health()
    }

    fn health(&self) -> LoaderHealth {
        let sessions = lock(&self.sessions)
            .iter()
            .map(|session| SessionHealth {
                kind: session.kind(),
                losses: session.losses().totals(),
                last_counters: session.losses().last_counters(),
                failed_polls: session.failed_polls(),
            })
            .collect();
        let queue = self.queue.stats();
        LoaderHealth {
            sessions,
            queue_overflows: queue.overflows,
            queue_depth: queue.depth,
            queue_capacity: self.queue.capacity() as u64,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here only reads or replaces plain values, so a panic elsewhere
    // cannot leave the protected data half-updated.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
