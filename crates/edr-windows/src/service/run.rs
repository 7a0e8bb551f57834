//! The run sequence: privileges, telemetry, enrollment, record pump, graceful stop.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing::{error, info};

use super::{REQUIRED_PRIVILEGES, ServiceError, UplinkError};
use crate::loader::backoff::Clock;
use crate::loader::{
    CopiedRecord, EtwController, Loader, LoaderSettings, LoaderStopReport, LossSink, RecordQueue,
};
use crate::sys::OsError;

/// How long the pump waits for a record before it checks for a stop request again.
const POP_WAIT: Duration = Duration::from_millis(100);
/// Records pumped between checks of the uplink while records keep arriving.
const UPLINK_CHECK_EVERY: u64 = 4096;

/// Enables a named privilege in the process token.
pub trait Privileges {
    fn enable(&self, privilege: &'static str) -> Result<(), OsError>;
}

/// The link to the Collector: enrollment, then the transport draining the ring buffer. It is
/// started only once telemetry works and runs in the background beside the record pump.
pub trait Uplink {
    /// Starts the link. Fails at once only when the sensor has no identity and cannot enroll,
    /// because transient failures are retried in the background.
    fn start(&mut self) -> Result<(), UplinkError>;
    /// Returns the error that ended the link, once it has ended with one.
    fn check(&mut self) -> Result<(), UplinkError>;
    /// Stops the link. The run sequence calls it after the ring buffer is synced.
    fn stop(&mut self) -> Result<(), UplinkError>;
}

/// Where copied records go: the ring buffer.
pub trait RecordSink {
    fn append(&mut self, record: CopiedRecord) -> Result<(), SinkError>;
    /// Makes every appended record durable.
    fn sync(&mut self) -> Result<(), SinkError>;
    /// Called when no record arrived for a while, so that a sink with a group commit can make
    /// the last records of a burst durable on time.
    fn idle(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A record sink failure, as reported by the sink.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// A stop request shared between the service control handler and the run sequence.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl StopSignal {
    pub fn request_stop(&self) {
        let (stopped, changed) = &*self.inner;
        *stopped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        changed.notify_all();
    }

    pub fn is_requested(&self) -> bool {
        *self
            .inner
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a run did before it stopped.
#[derive(Debug)]
pub struct RunOutcome {
    /// Records appended to the sink while running.
    pub pumped: u64,
    /// Records drained from the queue into the sink after the sessions stopped.
    pub drained: u64,
    pub loader: LoaderStopReport,
}

/// Runs the sensor until `stop` is requested or the uplink fails for good.
///
/// Telemetry starts before enrollment: when a session cannot be created, this returns
/// [`ServiceError::Telemetry`] with `LoaderError::EtwSessionInit` and `uplink` is never
/// started. A failed uplink stops the sensor the graceful way (queue drained into the sink,
/// sink synced) and is returned as [`ServiceError::Uplink`].
pub fn run_sensor<C: EtwController>(
    controller: Arc<C>,
    settings: LoaderSettings,
    queue: Arc<RecordQueue>,
    privileges: &dyn Privileges,
    uplink: &mut dyn Uplink,
    sink: &mut dyn RecordSink,
    losses: Arc<dyn LossSink>,
    clock: Arc<dyn Clock>,
    stop: &StopSignal,
) -> Result<RunOutcome, ServiceError> {
    for privilege in REQUIRED_PRIVILEGES {
        privileges
            .enable(privilege)
            .map_err(|source| ServiceError::PrivilegeMissing { privilege, source })?;
    }

    // Telemetry first: a sensor that cannot see events must not enroll and look healthy.
    let loader = Loader::start(controller, settings, Arc::clone(&queue), losses, clock)?;

    // A link that cannot start still takes the graceful stop below, so that the records
    // already copied out of ETW reach the ring buffer.
    let mut uplink_error = uplink.start().err();
    if uplink_error.is_none() {
        info!("sensor running");
    }

    let mut pumped = 0u64;
    let mut sink_error = None;
    while uplink_error.is_none() && !stop.is_requested() {
        let Some(record) = queue.pop_timeout(POP_WAIT) else {
            if let Err(idle_error) = sink.idle() {
                sink_error = Some(idle_error);
                break;
            }
            if let Err(error) = uplink.check() {
                uplink_error = Some(error);
                break;
            }
            continue;
        };
        if let Err(append_error) = sink.append(record) {
            sink_error = Some(append_error);
            break;
        }
        pumped += 1;
        if pumped.is_multiple_of(UPLINK_CHECK_EVERY)
            && let Err(error) = uplink.check()
        {
            uplink_error = Some(error);
            break;
        }
    }

    // Graceful stop: the sessions deliver their last buffers into the queue, the queue is
    // drained into the sink, and the sink is synced.
    let report = loader.stop();
    queue.close();
    let mut drained = 0u64;
    queue.drain(|record| {
        if sink_error.is_some() {
            return;
        }
        match sink.append(record) {
            Ok(()) => drained += 1,
            Err(append_error) => sink_error = Some(append_error),
        }
    });
    if let Some(append_error) = sink_error {
        error!(error = %append_error, "records could not be written to the ring buffer");
        let _ = uplink.stop();
        return Err(append_error.into());
    }
    let synced = sink.sync();

    // The transport stops after the sync, so it keeps draining while the queue is emptied.
    let stopped = uplink.stop();
    synced?;
    if let Some(error) = uplink_error {
        error!(%error, "sensor stopped because the link to the Collector failed");
        return Err(error.into());
    }
    stopped?;
    info!(pumped, drained, "sensor stopped");
    Ok(RunOutcome {
        pumped,
        drained,
        loader: report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionsConfig;
    use crate::loader::LoaderError;
    use crate::loader::fake::{CollectingSink, FakeClock, FakeEtw};
    use crate::sys::codes;

    struct GrantAll;

    impl Privileges for GrantAll {
        fn enable(&self, _privilege: &'static str) -> Result<(), OsError> {
            Ok(())
        }
    }

    struct Lacking(&'static str);

    impl Privileges for Lacking {
        fn enable(&self, privilege: &'static str) -> Result<(), OsError> {
            if privilege == self.0 {
                Err(OsError::new(
                    "AdjustTokenPrivileges",
                    codes::ERROR_NOT_ALL_ASSIGNED,
                ))
            } else {
                Ok(())
            }
        }
    }

    /// Counts calls; `fail_check` makes `check` report a failed link.
    #[derive(Default)]
    struct CountingUplink {
        starts: u32,
        checks: u32,
        stops: u32,
        fail_check: bool,
        fail_start: bool,
    }

    impl Uplink for CountingUplink {
        fn start(&mut self) -> Result<(), UplinkError> {
            self.starts += 1;
            if self.fail_start {
                return Err(UplinkError::NotEnrolled {
                    missing: "no enrollment token is in the test".into(),
                });
            }
            Ok(())
        }

        fn check(&mut self) -> Result<(), UplinkError> {
            self.checks += 1;
            if self.fail_check {
                return Err(UplinkError::Task("link failed in the test".into()));
            }
            Ok(())
        }

        fn stop(&mut self) -> Result<(), UplinkError> {
            self.stops += 1;
            Ok(())
        }
    }

    #[derive(Default)]
    struct VecSink {
        records: Vec<CopiedRecord>,
        synced: bool,
    }

    impl RecordSink for VecSink {
        fn append(&mut self, record: CopiedRecord) -> Result<(), SinkError> {
            self.records.push(record);
            Ok(())
        }

        fn sync(&mut self) -> Result<(), SinkError> {
            self.synced = true;
            Ok(())
        }
    }

    fn settings() -> LoaderSettings {
        let mut settings = LoaderSettings::from_config(&SessionsConfig::default(), 2);
        settings.poll_interval = Duration::from_secs(3600);
        settings
    }

    fn run(
        etw: &FakeEtw,
        privileges: &dyn Privileges,
        uplink: &mut CountingUplink,
        sink: &mut VecSink,
        stop: &StopSignal,
    ) -> Result<RunOutcome, ServiceError> {
        run_sensor(
            Arc::new(etw.clone()),
            settings(),
            Arc::new(RecordQueue::new(1024, 1 << 20)),
            privileges,
            uplink,
            sink,
            Arc::new(CollectingSink::default()),
            Arc::new(FakeClock::new()),
            stop,
        )
    }

    #[test]
    fn etw_session_init_exits_before_enrollment() {
        let etw = FakeEtw::default();
        etw.script_start_failures(&[codes::ERROR_ACCESS_DENIED]);
        let mut uplink = CountingUplink::default();

        let error = run(
            &etw,
            &GrantAll,
            &mut uplink,
            &mut VecSink::default(),
            &StopSignal::default(),
        )
        .unwrap_err();

        assert!(
            matches!(
                error,
                ServiceError::Telemetry(LoaderError::EtwSessionInit { .. })
            ),
            "{error:?}"
        );
        assert_eq!(uplink.starts, 0, "enrollment attempted without telemetry");
        assert!(
            error
                .to_string()
                .starts_with("cannot create ETW session 'EdrSensor-Process'"),
            "{error}"
        );
    }

    #[test]
    fn missing_privilege_named_in_error() {
        let etw = FakeEtw::default();
        let mut uplink = CountingUplink::default();
        let error = run(
            &etw,
            &Lacking("SeSystemEnvironmentPrivilege"),
            &mut uplink,
            &mut VecSink::default(),
            &StopSignal::default(),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot enable SeSystemEnvironmentPrivilege"),
            "{error}"
        );
        assert!(
            etw.calls().is_empty(),
            "sessions created without privileges"
        );
        assert_eq!(uplink.starts, 0);
    }

    #[test]
    fn graceful_stop_drains_queue_and_syncs() {
        let etw = FakeEtw::default();
        let stop = StopSignal::default();
        let mut uplink = CountingUplink::default();
        let mut sink = VecSink::default();

        let outcome = std::thread::scope(|scope| {
            let runner = scope.spawn(|| run(&etw, &GrantAll, &mut uplink, &mut sink, &stop));
            // Wait until both consumers are attached, then deliver events and stop.
            while etw
                .calls()
                .iter()
                .filter(|call| call.starts_with("open "))
                .count()
                < 2
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            for id in 0..50 {
                etw.emit("EdrSensor-Process", id, b"event");
            }
            stop.request_stop();
            runner.join().unwrap()
        })
        .unwrap();

        assert_eq!(uplink.starts, 1);
        assert_eq!(uplink.stops, 1);
        assert_eq!(outcome.pumped + outcome.drained, 50);
        assert_eq!(sink.records.len(), 50);
        assert!(sink.synced);
        assert!(etw.session_names().is_empty(), "sessions left after stop");
    }

    #[test]
    fn failed_uplink_stops_gracefully() {
        let etw = FakeEtw::default();
        let mut uplink = CountingUplink {
            fail_check: true,
            ..CountingUplink::default()
        };
        let mut sink = VecSink::default();

        let error = run(
            &etw,
            &GrantAll,
            &mut uplink,
            &mut sink,
            &StopSignal::default(),
        )
        .unwrap_err();

        assert!(matches!(error, ServiceError::Uplink(_)), "{error:?}");
        assert!(uplink.checks >= 1);
        assert_eq!(uplink.stops, 1, "the transport was not stopped");
        assert!(sink.synced, "the ring buffer was not synced");
        assert!(etw.session_names().is_empty(), "sessions left after stop");
    }

    #[test]
    fn uplink_start_failure_still_syncs() {
        let etw = FakeEtw::default();
        let mut uplink = CountingUplink {
            fail_start: true,
            ..CountingUplink::default()
        };
        let mut sink = VecSink::default();

        let error = run(
            &etw,
            &GrantAll,
            &mut uplink,
            &mut sink,
            &StopSignal::default(),
        )
        .unwrap_err();

        assert!(
            error.to_string().starts_with("the sensor is not enrolled"),
            "{error}"
        );
        assert_eq!(uplink.checks, 0, "the pump ran without a link");
        assert!(sink.synced, "the ring buffer was not synced");
        assert!(etw.session_names().is_empty(), "sessions left after stop");
    }
}
