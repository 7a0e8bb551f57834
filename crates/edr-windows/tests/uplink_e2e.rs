//! The service's link to the Collector against a real `edr-collector serve` on loopback.
//! Covered: enrollment from the token file, retried while the Collector is down and not retried
//! when the token is rejected. Also heartbeat health, loss findings in the priority lane, the
//! command stream, and certificate renewal while streaming.
//!
//! These tests drive [`CollectorUplink`] and [`LossReporter`], the parts the service wires
//! beside the ETW loader, with a real ring buffer. The loader itself needs Windows ETW; its
//! order relative to enrollment is unit-tested against the fake ETW layer.
//!
//! Unix only: the tests run cargo to build the Collector, which a Windows test binary under
//! Wine cannot do.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edr_sensor::buffer::{Buffer, BufferOptions, Lane};
use edr_sensor::identity::IdentityStore;
use edr_sensor::transport::{LinkState, LossCounters, SharedBuffer, TransportConfig, lock};
use edr_windows::loader::{LossAlert, LossCounts, LossSink, SessionKind};
use edr_windows::service::{
    CollectorUplink, IDENTITY_DIR_NAME, LOSS_FINDING_TITLE, LossReporter, REJECTED_TOKEN_FILE_NAME,
    TOKEN_FILE_NAME, UplinkError, UplinkSettings,
};
use serde_json::Value;

use common::{Collector, collector_binary, collector_cli, run, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// An initialised Collector data directory, served or not.
struct CollectorData {
    _root: tempfile::TempDir,
    binary: PathBuf,
    data: PathBuf,
}

impl CollectorData {
    fn init() -> Self {
        let root = tempfile::tempdir().unwrap();
        let binary = collector_binary();
        let data = root.path().join("collector");
        run(&binary, &["init", "--data-dir", data.to_str().unwrap()]);
        Self {
            _root: root,
            binary,
            data,
        }
    }

    fn serve(&self, listen: &str, extra: &[&str]) -> Collector {
        Collector::start_with(&self.binary, &self.data, listen, extra)
    }

    fn cli(&self, args: &[&str]) -> String {
        collector_cli(&self.binary, &self.data, args)
    }

    fn token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create"];
        args.extend_from_slice(extra);
        self.cli(&args).trim().to_owned()
    }

    /// Returns the `sensors list` row of `sensor_id`.
    fn sensor_row(&self, sensor_id: &str) -> Option<String> {
        self.cli(&["sensors", "list"])
            .lines()
            .find(|line| line.starts_with(sensor_id))
            .map(str::to_owned)
    }

    /// Returns the HEALTH column of `sensor_id`, the JSON after the other columns.
    fn health(&self, sensor_id: &str) -> Option<Value> {
        let row = self.sensor_row(sensor_id)?;
        let start = row.find('{')?;
        serde_json::from_str(&row[start..]).ok()
    }

    fn stored_events(&self, sensor_id: &str) -> Vec<Value> {
        self.cli(&["events", "--sensor", sensor_id, "--format", "jsonl"])
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn command_state(&self, command_id: &str) -> Option<String> {
        let listing = self.cli(&["commands", "list"]);
        let row = listing.lines().find(|line| line.starts_with(command_id))?;
        // Columns: ID, SENSOR, KIND, ISSUED, EXPIRES, STATE, VIA, DETAIL.
        row.split_whitespace().nth(5).map(str::to_owned)
    }
}

/// A sensor folder: configuration folder with token and identity, and a ring buffer.
struct Sensor {
    root: tempfile::TempDir,
    buffer: SharedBuffer,
    losses: LossCounters,
}

impl Sensor {
    fn new(token: Option<&str>) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("config")).unwrap();
        if let Some(token) = token {
            std::fs::write(root.path().join("config").join(TOKEN_FILE_NAME), token).unwrap();
        }
        let mut options = BufferOptions::new(root.path().join("buffer"));
        options.drain_rate_bytes_per_sec = None;
        options.drain_rate_records_per_sec = None;
        options.sync_interval = Duration::from_millis(10);
        let buffer = Arc::new(Mutex::new(Buffer::open(options).unwrap()));
        Self {
            root,
            buffer,
            losses: LossCounters::default(),
        }
    }

    fn config_dir(&self) -> PathBuf {
        self.root.path().join("config")
    }

    fn uplink(&self, url: &str) -> CollectorUplink {
        self.uplink_with(
            url,
            TransportConfig {
                batch_max_delay_ms: 10,
                heartbeat_interval_secs: 1,
                backoff_initial_ms: 20,
                backoff_max_ms: 200,
                ..TransportConfig::default()
            },
        )
    }

    fn uplink_with(&self, url: &str, transport: TransportConfig) -> CollectorUplink {
        let settings = UplinkSettings::next_to_config(
            &self.config_dir(),
            Some(url.to_owned()),
            transport,
            1 << 26,
        );
        CollectorUplink::new(settings, Arc::clone(&self.buffer), self.losses.clone())
    }

    fn identity_store(&self) -> IdentityStore {
        IdentityStore::new(
            self.config_dir().join(IDENTITY_DIR_NAME),
            edr_windows::enrollment::platform_protection(),
        )
    }

    fn sensor_id(&self) -> String {
        self.identity_store().load().unwrap().sensor_id
    }

    /// Appends `count` minimal OCSF events to the telemetry lane and syncs them.
    fn append_events(&self, count: u64, tag: &str) {
        let mut buffer = lock(&self.buffer);
        for i in 0..count {
            let event = serde_json::json!({
                "class_uid": 1007,
                "activity_id": 1,
                "time": 1_700_000_000_000_i64 + i as i64,
                "message": format!("{tag} {i}"),
            });
            buffer
                .append(Lane::Telemetry, &serde_json::to_vec(&event).unwrap())
                .unwrap();
        }
        buffer.sync().unwrap();
    }
}

fn wait_for_streaming(uplink: &CollectorUplink) {
    let link = uplink.subscribe();
    wait_until("the link is streaming", WAIT, || {
        *link.borrow() == LinkState::Streaming
    });
}

fn wait_for_error(uplink: &mut CollectorUplink) -> UplinkError {
    let started = Instant::now();
    loop {
        if let Err(error) = uplink.check() {
            return error;
        }
        assert!(started.elapsed() < WAIT, "the link did not fail");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn heartbeat_carries_losses_and_health() {
    let collector_data = CollectorData::init();
    let collector = collector_data.serve("127.0.0.1:0", &[]);
    let sensor = Sensor::new(Some(&collector_data.token(&[])));
    let mut uplink = sensor.uplink(&collector.url());
    uplink.start().unwrap();
    wait_for_streaming(&uplink);
    let sensor_id = sensor.sensor_id();
    let not_after = sensor.identity_store().load().unwrap().not_after;

    // Losses in one polling interval, as the loader reports them.
    let reporter = LossReporter::new(
        sensor.losses.clone(),
        Arc::clone(&sensor.buffer),
        "e2e-host".into(),
    );
    reporter.alert(&LossAlert {
        at: Instant::now(),
        sessions: vec![(
            SessionKind::Process,
            LossCounts {
                events_lost: 42,
                real_time_buffers_lost: 3,
            },
        )],
        queue_overflows: 9,
    });
    sensor.append_events(20, "telemetry");

    wait_until("the heartbeat shows the losses", WAIT, || {
        collector_data.health(&sensor_id).is_some_and(|health| {
            health["events_lost"]
                .as_array()
                .is_some_and(|l| l.len() == 3)
        })
    });
    let health = collector_data.health(&sensor_id).unwrap();
    let lost = health["events_lost"].as_array().unwrap();
    let count = |source: &str, reason: &str| {
        lost.iter()
            .find(|loss| loss["source"] == source && loss["reason"] == reason)
            .map(|loss| loss["count"].as_u64().unwrap())
    };
    assert_eq!(count("EdrSensor-Process", "events_lost"), Some(42));
    assert_eq!(
        count("EdrSensor-Process", "real_time_buffers_lost"),
        Some(3)
    );
    assert_eq!(count("etw_record_queue", "queue_full"), Some(9));
    assert!(health["buffer"]["capacity_bytes"].as_u64().unwrap() > 0);
    assert!(health["buffer"]["used_bytes"].as_u64().unwrap() > 0);
    assert_eq!(health["versions"]["sensor"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health["versions"]["ocsf"], edr_ocsf::OCSF_VERSION);
    assert!(health["versions"]["os_build"].as_str().is_some());
    let reported_expiry = health["certificate_not_after"].as_str().unwrap();
    let reported_expiry = time::OffsetDateTime::parse(
        reported_expiry,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(reported_expiry.unix_timestamp(), not_after.unix_timestamp());
    let row = collector_data.sensor_row(&sensor_id).unwrap();
    assert!(row.contains(env!("CARGO_PKG_VERSION")), "{row}");

    // The finding went through the priority lane and is stored with the telemetry.
    wait_until("every event is stored", WAIT, || {
        collector_data.stored_events(&sensor_id).len() == 21
    });
    let events = collector_data.stored_events(&sensor_id);
    let findings: Vec<&Value> = events
        .iter()
        .filter(|event| event["class_uid"] == 2004)
        .collect();
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0]["finding_info"]["title"], LOSS_FINDING_TITLE);
    assert_eq!(findings[0]["device"]["hostname"], "e2e-host");

    uplink.stop().unwrap();
}

#[test]
fn ping_reaches_sensor_and_expired_ping_reported() {
    let collector_data = CollectorData::init();
    let collector = collector_data.serve("127.0.0.1:0", &[]);
    let sensor = Sensor::new(Some(&collector_data.token(&[])));
    let mut uplink = sensor.uplink(&collector.url());
    uplink.start().unwrap();
    wait_for_streaming(&uplink);
    let sensor_id = sensor.sensor_id();

    let ping = collector_data.cli(&["command", "ping", &sensor_id]);
    let ping = ping.trim();
    wait_until("the ping result is stored", WAIT, || {
        collector_data.command_state(ping).as_deref() == Some("succeeded")
    });
    uplink.stop().unwrap();

    // A ping that expires while the sensor is stopped is never delivered and is listed as
    // expired. A sensor that receives an expired envelope returns EXPIRED, which is unit-tested
    // in edr-sensor because the Collector never sends one.
    let expired = collector_data.cli(&["command", "ping", &sensor_id, "--ttl", "1s"]);
    let expired = expired.trim();
    std::thread::sleep(Duration::from_millis(2100));
    let mut uplink = sensor.uplink(&collector.url());
    uplink.start().unwrap();
    wait_for_streaming(&uplink);
    // The Collector polls for queued commands every 500 ms; give it several rounds.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        collector_data.command_state(expired).as_deref(),
        Some("expired")
    );

    // The restarted link still runs commands.
    let second = collector_data.cli(&["command", "ping", &sensor_id]);
    let second = second.trim();
    wait_until("the second ping result is stored", WAIT, || {
        collector_data.command_state(second).as_deref() == Some("succeeded")
    });
    uplink.stop().unwrap();
}

#[test]
fn certificate_renewed_while_streaming() {
    let collector_data = CollectorData::init();
    let collector = collector_data.serve("127.0.0.1:0", &["--sensor-certificate-lifetime", "12s"]);
    let sensor = Sensor::new(Some(&collector_data.token(&[])));
    // Heartbeats 30 s apart, as by default: the renewal is due 8 s in, and the Collector ends
    // the stream of an expired certificate, so renewal must not wait for a heartbeat.
    let mut uplink = sensor.uplink_with(
        &collector.url(),
        TransportConfig {
            batch_max_delay_ms: 10,
            heartbeat_interval_secs: 30,
            backoff_initial_ms: 20,
            backoff_max_ms: 200,
            ..TransportConfig::default()
        },
    );
    uplink.start().unwrap();
    wait_for_streaming(&uplink);
    let sensor_id = sensor.sensor_id();
    let first = sensor.identity_store().load().unwrap();
    sensor.append_events(10, "before renewal");

    // Renewal is due after two thirds of the 12 s lifetime.
    wait_until("the certificate is renewed", WAIT, || {
        sensor
            .identity_store()
            .load()
            .is_ok_and(|identity| identity.renewed_at.is_some())
    });
    let renewed = sensor.identity_store().load().unwrap();
    assert!(renewed.not_after > first.not_after);
    assert_ne!(renewed.certificate_chain_pem, first.certificate_chain_pem);

    // Streaming goes on after the first certificate has expired.
    let until_expired = first.not_after - time::OffsetDateTime::now_utc();
    if until_expired.is_positive() {
        std::thread::sleep(Duration::try_from(until_expired).unwrap() + Duration::from_secs(1));
    }
    sensor.append_events(10, "after expiry");
    wait_until(
        "events after the first certificate's expiry are stored",
        WAIT,
        || collector_data.stored_events(&sensor_id).len() == 20,
    );
    uplink.check().unwrap();
    uplink.stop().unwrap();
}

#[test]
fn enrollment_retried_until_collector_starts() {
    let collector_data = CollectorData::init();
    let token = collector_data.token(&[]);
    let listen = free_loopback_address();
    let sensor = Sensor::new(Some(&token));
    let mut uplink = sensor.uplink(&format!("https://{listen}"));
    uplink.start().unwrap();

    // Telemetry keeps being buffered while the Collector is down.
    sensor.append_events(5, "while down");
    std::thread::sleep(Duration::from_millis(500));
    uplink.check().unwrap();
    let token_path = sensor.config_dir().join(TOKEN_FILE_NAME);
    assert!(
        token_path.exists(),
        "the token was consumed without enrollment"
    );

    let _collector = collector_data.serve(&listen, &[]);
    wait_for_streaming(&uplink);
    assert!(!token_path.exists(), "the used token was not deleted");
    let sensor_id = sensor.sensor_id();
    wait_until("the buffered events are stored", WAIT, || {
        collector_data.stored_events(&sensor_id).len() == 5
    });
    uplink.stop().unwrap();
}

#[test]
fn rejected_token_not_retried() {
    let collector_data = CollectorData::init();
    let collector = collector_data.serve("127.0.0.1:0", &[]);
    let token = collector_data.token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let sensor = Sensor::new(Some(&token));
    let mut uplink = sensor.uplink(&collector.url());
    uplink.start().unwrap();

    let error = wait_for_error(&mut uplink);
    assert!(
        matches!(error, UplinkError::EnrollmentRejected { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("expired"), "{text}");
    assert!(text.contains("edr-collector token create"), "{text}");
    assert!(!sensor.config_dir().join(TOKEN_FILE_NAME).exists());
    assert!(sensor.config_dir().join(REJECTED_TOKEN_FILE_NAME).exists());
    assert!(!sensor.config_dir().join(IDENTITY_DIR_NAME).exists());
    uplink.stop().unwrap();

    // A restart does not send the rejected token again.
    let error = sensor.uplink(&collector.url()).start().unwrap_err();
    assert!(
        error.to_string().contains("the last token was rejected"),
        "{error}"
    );
}

/// Log lines of the whole test binary at DEBUG for the sensor crate, for tests that check what
/// the transport logs. Installed once; lines of tests running in parallel are mixed in, so a
/// test picks its own by the Collector's address.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    Arc::clone(LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("edr_sensor=debug"))
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .init();
        logs
    }))
}

/// Returns the WARN lines that report the link to the Collector at `address` down.
fn link_down_warnings(logs: &Mutex<Vec<u8>>, address: &str) -> Vec<String> {
    String::from_utf8_lossy(&logs.lock().unwrap())
        .lines()
        .filter(|line| {
            line.contains(address)
                && line.contains("WARN")
                && line.contains("link to the Collector down")
        })
        .map(str::to_owned)
        .collect()
}

/// Transport settings whose reconnect delays grow from 50 ms to `backoff_max_ms`.
fn backoff_from_50_ms(backoff_max_ms: u64) -> TransportConfig {
    TransportConfig {
        batch_max_delay_ms: 10,
        heartbeat_interval_secs: 1,
        backoff_initial_ms: 50,
        backoff_max_ms,
        ..TransportConfig::default()
    }
}

/// Returns a loopback address whose port was free a moment ago, for a Collector that restarts
/// on it.
fn free_loopback_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A Collector that opens the stream and then refuses every batch, here because its WAL was
/// deleted, gets reconnects with growing delays. The sensor logs the Collector's reason once at
/// WARN, not a bare "stream closed" per attempt.
#[test]
fn refused_batches_back_off_and_log_the_reason() {
    let logs = captured_logs();
    let collector_data = CollectorData::init();
    let collector = collector_data.serve("127.0.0.1:0", &[]);
    let sensor = Sensor::new(Some(&collector_data.token(&[])));
    let mut uplink = sensor.uplink_with(&collector.url(), backoff_from_50_ms(1_000));
    uplink.start().unwrap();
    wait_for_streaming(&uplink);
    let sensor_id = sensor.sensor_id();
    sensor.append_events(10, "stored");
    wait_until("the first events are stored", WAIT, || {
        collector_data.stored_events(&sensor_id).len() == 10
    });

    std::fs::remove_file(collector_data.data.join("collector.db-wal")).unwrap();
    sensor.append_events(10, "refused");
    let mut link = uplink.subscribe();
    link.borrow_and_update();
    let mut sessions = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        if link.has_changed().unwrap() && *link.borrow_and_update() == LinkState::Streaming {
            sessions += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    uplink.check().unwrap();
    uplink.stop().unwrap();

    // When every session started the delays over, they stayed below 50 ms and the sensor
    // opened 31 sessions in 4 s. Growing up to 1 s, they allowed 8 to 10.
    assert!((2..=18).contains(&sessions), "{sessions} sessions in 4 s");
    let warnings = link_down_warnings(&logs, &collector.url());
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("collector.db-wal"), "{warnings:#?}");
}

/// A sensor with nothing to send whose Collector restarts again and again retries as promptly
/// after each restart: its acknowledged heartbeats show that each session worked, so the
/// backoff starts over, and each outage is logged at WARN.
#[test]
fn idle_sensor_retries_promptly_after_each_restart() {
    let logs = captured_logs();
    let collector_data = CollectorData::init();
    let listen = free_loopback_address();
    let mut collector = collector_data.serve(&listen, &[]);
    let sensor = Sensor::new(Some(&collector_data.token(&[])));
    let mut uplink = sensor.uplink_with(&collector.url(), backoff_from_50_ms(8_000));
    uplink.start().unwrap();
    wait_for_streaming(&uplink);
    let link = uplink.subscribe();
    // The delay before the first connect attempt of each outage. A plain listener takes the
    // Collector's port while it is down and accepts the attempt.
    let mut first_retries = Vec::new();
    for _ in 0..5 {
        // Long enough for the heartbeat sent on connecting to be acknowledged.
        std::thread::sleep(Duration::from_millis(700));
        collector.kill();
        let stand_in = std::net::TcpListener::bind(&listen).unwrap();
        stand_in.set_nonblocking(true).unwrap();
        let started = Instant::now();
        let mut down = None;
        let retry = loop {
            if down.is_none() && *link.borrow() != LinkState::Streaming {
                down = Some(Instant::now());
            }
            if let (Some(_), Ok(_attempt)) = (down, stand_in.accept()) {
                break Instant::now();
            }
            assert!(started.elapsed() < WAIT, "the sensor did not connect again");
            std::thread::sleep(Duration::from_millis(1));
        };
        first_retries.push(retry - down.unwrap());
        drop(stand_in);
        collector = collector_data.serve(&listen, &[]);
        wait_for_streaming(&uplink);
    }
    uplink.check().unwrap();
    uplink.stop().unwrap();

    // The count starts over after each outage, so the first delay is drawn from [0, 50 ms).
    // When only acks of records started it over, the failures of all outages added up: the
    // first delay of the later outages was drawn from up to 8 s.
    assert!(
        first_retries
            .iter()
            .all(|delay| *delay < Duration::from_millis(300)),
        "first retry of each outage after {first_retries:?}"
    );
    let warnings = link_down_warnings(&logs, &listen);
    assert!(warnings.len() >= 5, "{warnings:#?} for 5 outages");
}

/// Sends `signal` (`STOP` or `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Returns how long the link stayed in `Streaming` from now, or `None` if it still was after
/// `limit`.
fn time_until_link_drops(uplink: &CollectorUplink, limit: Duration) -> Option<Duration> {
    let link = uplink.subscribe();
    let started = Instant::now();
    while started.elapsed() < limit {
        if *link.borrow() != LinkState::Streaming {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A Collector that stops reading, here stopped with SIGSTOP, fills the HTTP/2 windows and the
/// sensor's outbound queue. The sensor still drops the link once `ack_timeout_secs` pass
/// without an ack, and a stop during the next connect attempt, whose TLS handshake the stopped
/// Collector never answers, is prompt.
#[test]
fn stalled_collector_times_out_and_stop_is_prompt() {
    let collector_data = CollectorData::init();
    let collector = collector_data.serve("127.0.0.1:0", &[]);
    let sensor = Sensor::new(Some(&collector_data.token(&[])));
    let config = TransportConfig {
        ack_timeout_secs: 5,
        ..backoff_from_50_ms(1_000)
    };
    let mut uplink = sensor.uplink_with(&collector.url(), config);
    uplink.start().unwrap();
    wait_for_streaming(&uplink);

    signal(collector.pid(), "STOP");
    // 40 MB that zstd cannot shrink: more than the socket buffers and HTTP/2 windows hold.
    {
        let mut buffer = lock(&sensor.buffer);
        let mut rng = fastrand::Rng::with_seed(7);
        for i in 0..640 {
            let noise: String = (0..64 * 1024).map(|_| rng.alphanumeric()).collect();
            let event = serde_json::json!({"class_uid": 1007, "activity_id": 1, "time": i, "message": noise});
            buffer
                .append(Lane::Telemetry, &serde_json::to_vec(&event).unwrap())
                .unwrap();
        }
        buffer.sync().unwrap();
    }
    let dropped = time_until_link_drops(&uplink, Duration::from_secs(30));

    // Connect attempts now hang in the TLS handshake until the connect timeout.
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    let stopped = uplink.stop();
    let stop_took = stopping.elapsed();
    signal(collector.pid(), "CONT");

    // Before, the session waited on the full queue: the link stayed up for good, and the stop
    // hit its 10 s limit.
    assert!(
        dropped.is_some(),
        "the link stayed up 30 s after the Collector stalled"
    );
    stopped.unwrap();
    assert!(
        stop_took < Duration::from_secs(3),
        "stop took {stop_took:?}"
    );
}

/// A Collector that stops responding, here stopped with SIGSTOP, while the sensor has nothing to
/// send leaves the TCP connection open, so nothing fails by itself. The unanswered heartbeats
/// drop the link once `ack_timeout_secs` pass, and the warning names the cause.
#[test]
fn idle_link_drops_silent_collector() {
    let logs = captured_logs();
    let collector_data = CollectorData::init();
    let collector = collector_data.serve("127.0.0.1:0", &[]);
    let sensor = Sensor::new(Some(&collector_data.token(&[])));
    let config = TransportConfig {
        ack_timeout_secs: 5,
        ..backoff_from_50_ms(1_000)
    };
    let mut uplink = sensor.uplink_with(&collector.url(), config);
    uplink.start().unwrap();
    wait_for_streaming(&uplink);
    // One event stored shows that the link works before the Collector stops.
    sensor.append_events(1, "before the stop");
    wait_until("the event is acknowledged", WAIT, || {
        lock(&sensor.buffer).acked_seq() >= 1
    });

    signal(collector.pid(), "STOP");
    let dropped = time_until_link_drops(&uplink, Duration::from_secs(30));
    let stopped = uplink.stop();
    signal(collector.pid(), "CONT");

    // Before the heartbeat timeout, the link stayed up: heartbeats fit in the socket buffers.
    let dropped = dropped.expect("the idle link stayed up 30 s after the Collector went silent");
    assert!(
        dropped >= Duration::from_secs(4),
        "the link dropped after {dropped:?}, before the 5 s ack timeout could pass"
    );
    stopped.unwrap();
    let warnings = link_down_warnings(&logs, &collector.url());
    assert!(
        warnings
            .iter()
            .any(|line| line.contains("no heartbeat ack within 5 s")),
        "no warning names the heartbeat timeout: {warnings:?}"
    );
}
