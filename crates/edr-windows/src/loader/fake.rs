//! A fake of the ETW controller API, a clock tests drive, an alert collector and log capture.
//!
//! The fake keeps a table of sessions by name that outlives a `Loader`, as ETW's does, so a
//! session left behind by one run is visible to the next. Failures and loss counters are
//! scripted per test. Records reach the queue through `CopiedRecord::copy_from` and
//! `RecordQueue::try_push`, the same calls the Windows callback makes.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::backoff::Clock;
use super::controller::{
    ConsumerTrace, EtwController, ProviderEnable, SessionCounters, SessionHandle, SessionProperties,
};
use super::loss::{LossAlert, LossSink};
use super::queue::RecordQueue;
use super::record::{CopiedRecord, RecordHeader};
use crate::sys::{OsError, codes};

// === fake controller ===

#[derive(Debug, Default)]
pub(crate) struct FakeSession {
    pub(crate) counters: SessionCounters,
    pub(crate) consumer: Option<(u8, Arc<RecordQueue>)>,
    pub(crate) flushes: u32,
    pub(crate) properties: Option<SessionProperties>,
}

#[derive(Debug, Default)]
pub(crate) struct FakeState {
    pub(crate) sessions: HashMap<String, FakeSession>,
    /// Error codes returned by the next `start_session` calls, in order.
    pub(crate) start_failures: VecDeque<u32>,
    /// Provider name whose enable fails, with the code.
    pub(crate) enable_failure: Option<(&'static str, u32)>,
    pub(crate) calls: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct FakeInner {
    state: Mutex<FakeState>,
    changed: Condvar,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct FakeEtw {
    inner: Arc<FakeInner>,
}

impl FakeEtw {
    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.inner.state.lock().unwrap()
    }

    /// Leaves a session behind as a crashed sensor would.
    pub(crate) fn leave_stale_session(&self, name: &str) {
        self.state()
            .sessions
            .insert(name.to_owned(), FakeSession::default());
    }

    pub(crate) fn script_start_failures(&self, codes: &[u32]) {
        self.state().start_failures.extend(codes);
    }

    pub(crate) fn set_counters(&self, name: &str, events_lost: u32, real_time_buffers_lost: u32) {
        let mut state = self.state();
        let session = state.sessions.get_mut(name).unwrap();
        session.counters.events_lost = events_lost;
        session.counters.real_time_buffers_lost = real_time_buffers_lost;
    }

    /// Delivers one event to the session's consumer as the Windows callback does.
    pub(crate) fn emit(&self, name: &str, event_id: u16, payload: &[u8]) {
        let state = self.state();
        let (index, queue) = state.sessions[name].consumer.clone().unwrap();
        drop(state);
        let header = RecordHeader {
            event_id,
            ..RecordHeader::default()
        };
        let _ = queue.try_push(CopiedRecord::copy_from(
            index,
            header,
            &[(2, b"sid")],
            payload,
        ));
    }

    pub(crate) fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    pub(crate) fn session_names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.state().sessions.keys().cloned().collect();
        names.sort();
        names
    }

    pub(crate) fn flushes(&self, name: &str) -> u32 {
        self.state()
            .sessions
            .get(name)
            .map_or(0, |session| session.flushes)
    }
}

pub(crate) struct FakeTrace {
    inner: Arc<FakeInner>,
    name: String,
}

impl ConsumerTrace for FakeTrace {
    fn process(&mut self) -> Result<(), OsError> {
        // Like ProcessTrace on a real-time session: returns once the session is stopped.
        let state = self.inner.state.lock().unwrap();
        let _state = self
            .inner
            .changed
            .wait_while(state, |state| state.sessions.contains_key(&self.name))
            .unwrap();
        Ok(())
    }
}

impl EtwController for FakeEtw {
    fn start_session(
        &self,
        name: &str,
        properties: &SessionProperties,
    ) -> Result<SessionHandle, OsError> {
        let mut state = self.state();
        state.calls.push(format!("start {name}"));
        if let Some(code) = state.start_failures.pop_front() {
            return Err(OsError::new("StartTraceW", code));
        }
        if state.sessions.contains_key(name) {
            return Err(OsError::new("StartTraceW", codes::ERROR_ALREADY_EXISTS));
        }
        let session = FakeSession {
            properties: Some(*properties),
            ..FakeSession::default()
        };
        state.sessions.insert(name.to_owned(), session);
        Ok(SessionHandle(state.sessions.len() as u64))
    }

    fn stop_session(&self, name: &str) -> Result<SessionCounters, OsError> {
        let mut state = self.state();
        state.calls.push(format!("stop {name}"));
        let removed = state.sessions.remove(name);
        drop(state);
        self.inner.changed.notify_all();
        removed.map(|session| session.counters).ok_or(OsError::new(
            "ControlTraceW",
            codes::ERROR_WMI_INSTANCE_NOT_FOUND,
        ))
    }

    fn query_session(&self, name: &str) -> Result<SessionCounters, OsError> {
        let state = self.state();
        state
            .sessions
            .get(name)
            .map(|session| session.counters)
            .ok_or(OsError::new(
                "ControlTraceW",
                codes::ERROR_WMI_INSTANCE_NOT_FOUND,
            ))
    }

    fn flush_session(&self, name: &str) -> Result<(), OsError> {
        let mut state = self.state();
        match state.sessions.get_mut(name) {
            Some(session) => {
                session.flushes += 1;
                Ok(())
            }
            None => Err(OsError::new(
                "ControlTraceW",
                codes::ERROR_WMI_INSTANCE_NOT_FOUND,
            )),
        }
    }

    fn enable_provider(
        &self,
        _session: SessionHandle,
        provider: &ProviderEnable,
    ) -> Result<(), OsError> {
        let mut state = self.state();
        state.calls.push(format!("enable {}", provider.name));
        match state.enable_failure {
            Some((name, code)) if name == provider.name => {
                Err(OsError::new("EnableTraceEx2", code))
            }
            _ => Ok(()),
        }
    }

    fn open_consumer(
        &self,
        name: &str,
        session_index: u8,
        queue: Arc<RecordQueue>,
    ) -> Result<Box<dyn ConsumerTrace>, OsError> {
        let mut state = self.state();
        state.calls.push(format!("open {name}"));
        let session = state.sessions.get_mut(name).ok_or(OsError::new(
            "OpenTraceW",
            codes::ERROR_WMI_INSTANCE_NOT_FOUND,
        ))?;
        session.consumer = Some((session_index, queue));
        Ok(Box::new(FakeTrace {
            inner: Arc::clone(&self.inner),
            name: name.to_owned(),
        }))
    }
}

// === fake clock, alert sink, log capture ===

#[derive(Debug)]
pub(crate) struct FakeClock {
    now: Mutex<Instant>,
    sleeps: Mutex<Vec<Duration>>,
}

impl FakeClock {
    pub(crate) fn new() -> Self {
        Self {
            now: Mutex::new(Instant::now()),
            sleeps: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn advance(&self, duration: Duration) {
        *self.now.lock().unwrap() += duration;
    }

    pub(crate) fn sleeps(&self) -> Vec<Duration> {
        self.sleeps.lock().unwrap().clone()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap()
    }

    fn sleep(&self, duration: Duration) {
        self.sleeps.lock().unwrap().push(duration);
        self.advance(duration);
    }
}

#[derive(Debug, Default)]
pub(crate) struct CollectingSink {
    pub(crate) alerts: Mutex<Vec<LossAlert>>,
}

impl LossSink for CollectingSink {
    fn alert(&self, alert: &LossAlert) {
        self.alerts.lock().unwrap().push(alert.clone());
    }
}

#[derive(Clone, Default)]
pub(crate) struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    pub(crate) fn lines_containing(&self, needle: &str) -> usize {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().filter(|line| line.contains(needle)).count()
    }
}

/// Runs `f` with every log line on this thread captured.
pub(crate) fn with_captured_logs<T>(f: impl FnOnce() -> T) -> (T, LogCapture) {
    let capture = LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, || {
        // Another test thread may have registered a call site while this subscriber was being
        // installed, and cached it as disabled. Rebuilding the cache now includes this one.
        tracing::callsite::rebuild_interest_cache();
        f()
    });
    (result, capture)
}
