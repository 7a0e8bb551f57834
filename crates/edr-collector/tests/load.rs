//! Load test: many concurrent sensor streams, each with its own certificate, against one real
//! `edr-collector serve` on loopback for a bounded time. Afterwards every sensor's events are
//! stored exactly once (no loss, no duplicates), and the server's peak RSS is printed.
//!
//! Defaults keep the run short for CI: 200 streams for 3 seconds. Set `EDR_LOAD_STREAMS`
//! (for example 1000), `EDR_LOAD_SECONDS` and `EDR_LOAD_BATCH` (events per batch) to scale.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name}={value} is not a number"))
        })
        .unwrap_or(default)
}

/// Reads a `kB` field such as `VmHWM` from /proc/PID/status.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_streams_store_exactly_once() {
    let streams = env_or("EDR_LOAD_STREAMS", 200);
    let seconds = env_or("EDR_LOAD_SECONDS", 3);
    let batch_size = env_or("EDR_LOAD_BATCH", 50);
    let collector = Collector::start_with(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--max-streams-per-connection",
        "4",
    ]);
    let pid = collector.child.id();
    let rss_idle = proc_status_kib(pid, "VmRSS");

    let identities: Vec<_> = (0..streams).map(|_| direct_identity(&collector)).collect();
    let mut sessions = Vec::with_capacity(identities.len());
    for identity in &identities {
        sessions.push(TelemetrySession::open(identity).await);
    }
    let opened_at = Instant::now();

    let deadline = opened_at + Duration::from_secs(seconds);
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|mut session| {
            tokio::spawn(async move {
                let mut next = 1;
                while Instant::now() < deadline {
                    let last = next + batch_size - 1;
                    let acked = session.send(event_batch(next..=last)).await.unwrap();
                    assert_eq!(acked, last);
                    next = last + 1;
                }
                // A resend of the last batch, as after a lost ack, is a no-op.
                let last = next - 1;
                let resent = session
                    .send(event_batch(last + 1 - batch_size..=last))
                    .await
                    .unwrap();
                assert_eq!(resent, last);
                last
            })
        })
        .collect();
    let mut sent = Vec::with_capacity(tasks.len());
    for task in tasks {
        sent.push(task.await.unwrap());
    }
    let elapsed = opened_at.elapsed();
    let rss_peak = proc_status_kib(pid, "VmHWM");

    let db = database(&collector);
    let mut total = 0;
    for (identity, last) in identities.iter().zip(&sent) {
        let (count, distinct, min, max): (u64, u64, Option<u64>, Option<u64>) = db
            .query_row(
                "SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM events WHERE sensor_id = ?1",
                [&identity.sensor_id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .unwrap();
        assert_eq!(count, *last, "sensor {} lost events", identity.sensor_id);
        assert_eq!(
            distinct, count,
            "sensor {} has duplicates",
            identity.sensor_id
        );
        assert_eq!((min, max), (Some(1), Some(*last)));
        total += count;
    }
    let duplicates = collector.metric("edr_collector_duplicates_dropped_total");
    assert_eq!(duplicates as u64, streams * batch_size);
    assert_eq!(
        collector.metric("edr_collector_events_ingested_total") as u64,
        total
    );

    println!(
        "load: {streams} streams, {batch_size} events per batch, {:.1} s: {total} events stored exactly once, {:.0} events/s; server RSS idle {} KiB, peak (VmHWM) {} KiB",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        rss_idle,
        rss_peak
    );
}
