//! End-to-end throughput of one sensor streaming to one Collector on loopback: events appended
//! to a ring buffer, drained by the transport over mTLS with zstd, stored by `edr-collector
//! serve` in SQLite, and acknowledged.
//!
//! The events are the OCSF events converted from the recorded EVTX files under `EDR_DATA_DIR`
//! (default `<workspace>/../shared/data`), repeated until `EDR_BENCH_EVENTS` (default 300,000)
//! are sent. The clock runs from the first append to the ack of the last event.
//!
//! `EDR_BENCH_TIMES` sets the events' OCSF `time`. With `live` (the default) each event gets
//! the time it is appended, as a live sensor stamps the events it collects, so times arrive in order.
//! With `recorded` the events keep the times of the recordings, which span years and jump
//! back and forth between files, so every commit inserts at scattered places in the
//! Collector's time index.
//!
//! `EDR_BENCH_COLLECTOR` names an `edr-collector` binary to run in place of the one the bench
//! builds, so that two builds of the Collector can be timed in alternation.
//!
//! `EDR_BENCH_SYNC_MS` sets the ring buffer's sync interval (default 1000 ms, the sensor's
//! default). The buffer hands out only records made durable by a group commit, so with the
//! default the stream starts about one second after the first append.
//!
//! Run with `cargo bench -p edr-windows --bench transport`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edr_proto::v1::Versions;
use edr_sensor::buffer::{Buffer, BufferOptions, Lane};
use edr_sensor::identity::{FilePermissions, IdentityStore};
use edr_sensor::transport::{LossCounters, SharedBuffer, Transport, TransportConfig, lock};

const SENSOR: &str = env!("CARGO_BIN_EXE_edr-windows");

/// The allocator of the `edr-windows` binary on Linux (ADR 0011). The sensor side of this
/// bench runs in this process, so it allocates the same way.
#[cfg(not(windows))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let evtx = std::env::var_os("EDR_DATA_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
            PathBuf::from,
        )
        .join("evtx");
    if !evtx.is_dir() {
        eprintln!("skipped: no recorded EVTX files in {}", evtx.display());
        return;
    }
    let total: u64 = std::env::var("EDR_BENCH_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(300_000);
    let sync = std::env::var("EDR_BENCH_SYNC").unwrap_or_else(|_| "full".into());
    let live = match std::env::var("EDR_BENCH_TIMES").as_deref() {
        Ok("live") | Err(_) => true,
        Ok("recorded") => false,
        Ok(other) => panic!("EDR_BENCH_TIMES={other}: use live or recorded"),
    };
    let events: Vec<Event> = load_events(&evtx)
        .into_iter()
        .map(|json| Event::new(json, live))
        .collect();
    let event_bytes: usize = events.iter().map(Event::len).sum();
    eprintln!(
        "{} distinct events, {} bytes on average",
        events.len(),
        event_bytes / events.len()
    );

    let collector_bin = collector_binary();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("collector");
    let state = root.path().join("sensor");
    run(
        &collector_bin,
        &["init", "--data-dir", data.to_str().unwrap()],
    );
    let (mut collector, addr) = start_collector(&collector_bin, &data, &sync);
    let token = run(
        &collector_bin,
        &["token", "create", "--data-dir", data.to_str().unwrap()],
    );
    run(
        Path::new(SENSOR),
        &[
            "enroll",
            "--collector",
            &format!("https://{addr}"),
            "--token",
            token.trim(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );

    let mut options = BufferOptions::new(root.path().join("buffer"));
    options.capacity_bytes = 4 << 30;
    options.drain_rate_bytes_per_sec = None;
    options.drain_rate_records_per_sec = None;
    if let Ok(value) = std::env::var("EDR_BENCH_SYNC_MS") {
        let ms = value
            .parse()
            .unwrap_or_else(|_| panic!("EDR_BENCH_SYNC_MS={value}: give milliseconds, 0 to 1000"));
        options.sync_interval = Duration::from_millis(ms);
    }
    let buffer: SharedBuffer = Arc::new(Mutex::new(Buffer::open(options).unwrap()));
    let store = IdentityStore::new(&state, Arc::new(FilePermissions));
    let transport = Transport::new(
        TransportConfig::default(),
        store,
        Arc::clone(&buffer),
        LossCounters::default(),
        Versions::default(),
    )
    .unwrap()
    .without_commands();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stop, stop_signal) = tokio::sync::watch::channel(false);
    let task = runtime.spawn(transport.run(stop_signal));

    let collector_cpu_before = cpu_seconds(&format!("/proc/{}/stat", collector.id()));
    let sensor_cpu_before = cpu_seconds("/proc/self/stat");
    let start = Instant::now();
    let mut sent_bytes = 0u64;
    let mut json = Vec::new();
    for index in 0..total {
        let event = &events[(index % events.len() as u64) as usize];
        event.write(&mut json);
        sent_bytes += json.len() as u64;
        lock(&buffer).append(Lane::Telemetry, &json).unwrap();
    }
    let appended = start.elapsed();
    let last = lock(&buffer).sync().unwrap();
    while lock(&buffer).acked_seq() < last {
        assert!(!task.is_finished(), "the transport stopped");
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = start.elapsed();
    let collector_cpu = cpu_seconds(&format!("/proc/{}/stat", collector.id()))
        .zip(collector_cpu_before)
        .map(|(after, before)| after - before);
    let sensor_cpu = cpu_seconds("/proc/self/stat")
        .zip(sensor_cpu_before)
        .map(|(after, before)| after - before);
    let _ = stop.send(true);
    runtime.block_on(task).unwrap().unwrap();
    let _ = collector.kill();
    let _ = collector.wait();

    let seconds = elapsed.as_secs_f64();
    let times = if live { "live" } else { "recorded" };
    println!(
        "transport end to end (sync={sync}, times={times}): {total} events, {:.1} MiB of OCSF JSON in {seconds:.2} s: {:.0} events/s, {:.1} MiB/s (appends done after {:.2} s)",
        sent_bytes as f64 / (1024.0 * 1024.0),
        total as f64 / seconds,
        sent_bytes as f64 / (1024.0 * 1024.0) / seconds,
        appended.as_secs_f64(),
    );
    if let (Some(collector_cpu), Some(sensor_cpu)) = (collector_cpu, sensor_cpu) {
        let per_event = |cpu: f64| cpu * 1e6 / total as f64;
        println!(
            "CPU time while streaming: Collector {collector_cpu:.2} s ({:.1} µs per event), sensor {sensor_cpu:.2} s ({:.1} µs per event, appends included), {} cores",
            per_event(collector_cpu),
            per_event(sensor_cpu),
            std::thread::available_parallelism().map_or(1, usize::from),
        );
    }
}

/// User plus system CPU seconds of a process, from its `/proc/PID/stat`; `None` where procfs
/// is missing.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture Rust supports.
    Some(ticks as f64 / 100.0)
}

/// One event's JSON, split around the digits of its `time` when it is stamped at append time.
struct Event {
    head: Vec<u8>,
    /// The rest after the time digits; `None` when the event keeps its recorded time.
    tail: Option<Vec<u8>>,
}

impl Event {
    /// Thirteen digits that stand for the time while the event is split.
    const PLACEHOLDER: &str = "9999999999999";

    fn new(json: Vec<u8>, live: bool) -> Self {
        let recorded = |json| Self {
            head: json,
            tail: None,
        };
        if !live {
            return recorded(json);
        }
        let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        value["time"] = serde_json::Value::from(Self::PLACEHOLDER.parse::<u64>().unwrap());
        let text = serde_json::to_string(&value).unwrap();
        let marker = format!("\"time\":{}", Self::PLACEHOLDER);
        match (text.find(&marker), text.matches(&marker).count()) {
            (Some(at), 1) => {
                let digits = at + marker.len() - Self::PLACEHOLDER.len();
                Self {
                    head: text.as_bytes()[..digits].to_vec(),
                    tail: Some(text.as_bytes()[at + marker.len()..].to_vec()),
                }
            }
            _ => recorded(json),
        }
    }

    fn len(&self) -> usize {
        self.head.len()
            + self
                .tail
                .as_ref()
                .map_or(0, |tail| Self::PLACEHOLDER.len() + tail.len())
    }

    /// Writes the event into `out`, stamped with the current time when it is live.
    fn write(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.head);
        if let Some(tail) = &self.tail {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis();
            out.extend_from_slice(now.to_string().as_bytes());
            out.extend_from_slice(tail);
        }
    }
}

fn load_events(evtx: &Path) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    let mut folders = vec![evtx.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("evtx"))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut events = Vec::new();
    for file in files {
        let _ = edr_evtx::convert_file(&file, |event| {
            events.push(serde_json::to_vec(&event).unwrap());
        });
    }
    assert!(
        !events.is_empty(),
        "no events converted from {}",
        evtx.display()
    );
    events
}

/// Returns `EDR_BENCH_COLLECTOR`, or builds `edr-collector` in release mode into its own target
/// directory and returns its path.
fn collector_binary() -> PathBuf {
    if let Some(binary) = std::env::var_os("EDR_BENCH_COLLECTOR") {
        let binary = PathBuf::from(binary);
        assert!(
            binary.is_file(),
            "EDR_BENCH_COLLECTOR={} is not a file; give the path of an edr-collector binary",
            binary.display()
        );
        return binary;
    }
    let profile_dir = Path::new(SENSOR).parent().unwrap();
    let target_dir = profile_dir
        .parent()
        .unwrap()
        .join("edr-collector-for-tests");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "edr-collector",
            "--bin",
            "edr-collector",
            "--target-dir",
        ])
        .arg(&target_dir)
        .status()
        .unwrap();
    assert!(status.success(), "building edr-collector failed");
    target_dir.join("release").join("edr-collector")
}

fn start_collector(binary: &Path, data: &Path, sync: &str) -> (Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(binary)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sync",
            sync,
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("the Collector exited").unwrap();
        if let Some(pos) = line.find("listen_addr=") {
            break line[pos + "listen_addr=".len()..]
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect::<String>();
        }
    };
    // Keep reading so the Collector never blocks on a full stderr pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn run(binary: &Path, args: &[&str]) -> String {
    let output = Command::new(binary).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{binary:?} {args:?} failed: {output:?}"
    );
    String::from_utf8(output.stdout).unwrap()
}
