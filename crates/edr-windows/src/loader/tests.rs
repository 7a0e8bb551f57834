//! Loader tests against the fake ETW controller in `fake`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::LoaderError;
use super::fake::{CollectingSink, FakeClock, FakeEtw, with_captured_logs};
use super::loss::{LossAlert, LossCounts};
use super::providers::SessionKind;
use super::queue::RecordQueue;
use super::runtime::{Loader, LoaderSettings};
use crate::config::SessionsConfig;
use crate::sys::codes;

// === helpers ===

const PROCESS: &str = "EdrSensor-Process";
const BULK: &str = "EdrSensor-Bulk";

fn settings() -> LoaderSettings {
    let mut settings = LoaderSettings::from_config(&SessionsConfig::default(), 4);
    // Polls run only when a test calls poll_once, so every delta is observed by the test.
    settings.poll_interval = Duration::from_secs(3600);
    settings
}

struct Harness {
    etw: FakeEtw,
    clock: Arc<FakeClock>,
    sink: Arc<CollectingSink>,
    queue: Arc<RecordQueue>,
}

impl Harness {
    fn new(queue_records: usize) -> Self {
        Self {
            etw: FakeEtw::default(),
            clock: Arc::new(FakeClock::new()),
            sink: Arc::new(CollectingSink::default()),
            queue: Arc::new(RecordQueue::new(queue_records, 1 << 24)),
        }
    }

    fn start(&self, settings: LoaderSettings) -> Result<Loader<FakeEtw>, LoaderError> {
        Loader::start(
            Arc::new(self.etw.clone()),
            settings,
            Arc::clone(&self.queue),
            self.sink.clone(),
            self.clock.clone(),
        )
    }

    fn alerts(&self) -> Vec<LossAlert> {
        self.sink.alerts.lock().unwrap().clone()
    }
}

// === session hygiene ===

#[test]
fn stale_session_replaced() {
    let harness = Harness::new(1024);
    harness.etw.leave_stale_session(PROCESS);

    let (loader, logs) = with_captured_logs(|| harness.start(settings()));
    let loader = loader.unwrap();

    let calls = harness.etw.calls();
    assert_eq!(
        &calls[..4],
        &[
            format!("start {PROCESS}"),
            format!("stop {PROCESS}"),
            format!("start {PROCESS}"),
            format!("open {PROCESS}"),
        ]
    );
    assert_eq!(logs.lines_containing("stale ETW session"), 1);
    assert_eq!(
        harness.etw.session_names(),
        vec![BULK.to_owned(), PROCESS.to_owned()]
    );

    loader.stop();
    assert!(
        harness.etw.session_names().is_empty(),
        "sessions left behind after stop"
    );
}

#[test]
fn stale_session_that_cannot_go_is_init_error() {
    let harness = Harness::new(1024);
    harness.etw.leave_stale_session(PROCESS);
    // The stop succeeds but the name is taken again before the second start.
    harness
        .etw
        .script_start_failures(&[codes::ERROR_ALREADY_EXISTS, codes::ERROR_ALREADY_EXISTS]);

    let error = harness.start(settings()).unwrap_err();
    assert!(matches!(
        error,
        LoaderError::EtwSessionInit { session: PROCESS, attempts: 2, source } if source.code == codes::ERROR_ALREADY_EXISTS
    ));
}

#[test]
fn sessions_sized_from_configuration() {
    let harness = Harness::new(1024);
    let loader = harness.start(settings()).unwrap();
    let state = harness.etw.state();
    let process = state.sessions[PROCESS].properties.unwrap();
    let bulk = state.sessions[BULK].properties.unwrap();
    drop(state);

    assert_eq!(process.buffer_size_kb, 16);
    assert_eq!(
        process.minimum_buffers, 16,
        "4 buffers per processor on 4 processors"
    );
    assert_eq!(bulk.buffer_size_kb, 64);
    loader.stop();
}

#[test]
fn consumer_attached_before_providers_enabled() {
    let harness = Harness::new(1024);
    let loader = harness.start(settings()).unwrap();
    let calls = harness.etw.calls();
    let open = calls
        .iter()
        .position(|call| call == &format!("open {BULK}"))
        .unwrap();
    let first_enable = calls
        .iter()
        .position(|call| call == "enable Microsoft-Windows-Kernel-File")
        .unwrap();
    assert!(open < first_enable, "{calls:?}");
    loader.stop();
}

// === start failures ===

#[test]
fn resource_exhaustion_backs_off_and_logs_once() {
    let harness = Harness::new(1024);
    harness
        .etw
        .script_start_failures(&[codes::ERROR_NO_SYSTEM_RESOURCES; 6]);

    let (loader, logs) = with_captured_logs(|| harness.start(settings()));
    let loader = loader.unwrap();

    let sleeps: Vec<u128> = harness
        .clock
        .sleeps()
        .iter()
        .map(Duration::as_millis)
        .collect();
    assert_eq!(sleeps, vec![500, 1000, 2000, 4000, 8000, 16000]);
    assert_eq!(logs.lines_containing("lacks system resources"), 1);
    loader.stop();
}

#[test]
fn resource_exhaustion_gives_up_at_timeout() {
    let harness = Harness::new(1024);
    harness
        .etw
        .script_start_failures(&[codes::ERROR_NO_SYSTEM_RESOURCES; 100]);

    let (result, logs) = with_captured_logs(|| harness.start(settings()));
    let error = result.unwrap_err();

    let LoaderError::EtwSessionInit {
        session,
        attempts,
        source,
    } = &error
    else {
        panic!("expected EtwSessionInit, got {error:?}");
    };
    assert_eq!(*session, PROCESS);
    assert_eq!(source.code, codes::ERROR_NO_SYSTEM_RESOURCES);
    let slept: Duration = harness.clock.sleeps().iter().sum();
    assert_eq!(
        slept,
        Duration::from_secs(120),
        "retries stop at the start timeout"
    );
    assert!(*attempts > 6);
    // 120 s of retries: one line at the start and one a minute later, at most three.
    let lines = logs.lines_containing("lacks system resources");
    assert!((2..=3).contains(&lines), "{lines} resource lines logged");
    assert!(harness.etw.session_names().is_empty());
}

#[test]
fn access_denied_fails_at_once() {
    let harness = Harness::new(1024);
    harness
        .etw
        .script_start_failures(&[codes::ERROR_ACCESS_DENIED]);

    let error = harness.start(settings()).unwrap_err();
    assert!(matches!(
        error,
        LoaderError::EtwSessionInit { attempts: 1, .. }
    ));
    assert!(harness.clock.sleeps().is_empty());
    assert!(error.to_string().contains("LocalSystem"), "{error}");
    assert!(!harness.etw.calls().contains(&format!("start {BULK}")));
}

#[test]
fn failure_in_second_session_stops_first() {
    let harness = Harness::new(1024);
    harness.etw.state().enable_failure = Some((
        "Microsoft-Windows-Kernel-Registry",
        codes::ERROR_ACCESS_DENIED,
    ));

    let error = harness.start(settings()).unwrap_err();
    assert!(matches!(
        error,
        LoaderError::ProviderEnable {
            session: BULK,
            provider: "Microsoft-Windows-Kernel-Registry",
            ..
        }
    ));
    assert!(
        harness.etw.session_names().is_empty(),
        "a session was left behind"
    );
}

// === losses ===

#[test]
fn losses_reported() {
    let harness = Harness::new(4);
    let loader = harness.start(settings()).unwrap();

    // Nothing lost yet: no alert.
    let health = loader.poll_once();
    assert!(!health.any_loss());
    assert!(harness.alerts().is_empty());

    // ETW drops events in the bulk session and the queue overflows by two records.
    harness.etw.set_counters(BULK, 5, 2);
    for id in 0..6 {
        harness.etw.emit(PROCESS, id, b"x");
    }
    let health = loader.poll_once();

    let alerts = harness.alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0].sessions,
        vec![(
            SessionKind::Bulk,
            LossCounts {
                events_lost: 5,
                real_time_buffers_lost: 2
            }
        )]
    );
    assert_eq!(alerts[0].queue_overflows, 2);
    assert_eq!(health.queue_overflows, 2);
    let bulk = health
        .sessions
        .iter()
        .find(|session| session.kind == SessionKind::Bulk)
        .unwrap();
    assert_eq!(
        bulk.losses,
        LossCounts {
            events_lost: 5,
            real_time_buffers_lost: 2
        }
    );

    // Counters unchanged: no new alert; then a further loss raises one with the delta only.
    loader.poll_once();
    assert_eq!(harness.alerts().len(), 1);
    harness.etw.set_counters(BULK, 9, 2);
    loader.poll_once();
    let alerts = harness.alerts();
    assert_eq!(alerts.len(), 2);
    assert_eq!(
        alerts[1].sessions,
        vec![(
            SessionKind::Bulk,
            LossCounts {
                events_lost: 4,
                real_time_buffers_lost: 0
            }
        )]
    );
    assert_eq!(alerts[1].queue_overflows, 0);

    loader.stop();
}

#[test]
fn loss_alerts_every_poll_but_logs_once_a_minute() {
    let harness = Harness::new(1024);
    let loader = harness.start(settings()).unwrap();

    let ((), logs) = with_captured_logs(|| {
        for lost in 1..=3 {
            harness.etw.set_counters(PROCESS, lost, 0);
            loader.poll_once();
            harness.clock.advance(Duration::from_secs(10));
        }
        harness.clock.advance(Duration::from_secs(60));
        harness.etw.set_counters(PROCESS, 10, 0);
        loader.poll_once();
    });

    assert_eq!(harness.alerts().len(), 4);
    assert_eq!(logs.lines_containing("ETW events lost"), 2);
    assert_eq!(logs.lines_containing("held_back=2"), 1);
    loader.stop();
}

#[test]
fn final_losses_counted_at_stop() {
    let harness = Harness::new(1024);
    let loader = harness.start(settings()).unwrap();
    harness.etw.set_counters(PROCESS, 7, 1);

    let report = loader.stop();
    let process = report
        .sessions
        .iter()
        .find(|session| session.kind == SessionKind::Process)
        .unwrap();
    assert_eq!(
        process.losses,
        LossCounts {
            events_lost: 7,
            real_time_buffers_lost: 1
        }
    );
    assert!(process.stop_error.is_none());
    assert_eq!(
        harness.alerts().len(),
        1,
        "the last poll before stop raises the alert"
    );
}

// === records and shutdown ===

#[test]
fn records_reach_queue_and_survive_stop() {
    let harness = Harness::new(1024);
    let loader = harness.start(settings()).unwrap();
    harness.etw.emit(PROCESS, 1, b"start");
    harness.etw.emit(BULK, 12, b"create");

    let report = loader.stop();
    assert!(report.consumer_errors.is_empty());
    assert_eq!(report.queue.depth, 2);

    let mut records = Vec::new();
    harness.queue.drain(|record| records.push(record));
    assert_eq!(records[0].session_index, SessionKind::Process.index());
    assert_eq!(records[0].payload(), b"start");
    assert_eq!(records[1].header.event_id, 12);
    assert_eq!(records[1].extended_items().next(), Some((2, &b"sid"[..])));
}

#[test]
fn process_session_flushed_periodically() {
    let harness = Harness::new(1024);
    let loader = harness.start(settings()).unwrap();

    // The default flush interval is 5 ms; wait up to 5 s for a few flushes on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(5);
    while harness.etw.flushes(PROCESS) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(harness.etw.flushes(PROCESS) >= 3);
    assert_eq!(
        harness.etw.flushes(BULK),
        0,
        "the bulk session relies on its flush timer"
    );
    loader.stop();
}
