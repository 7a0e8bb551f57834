//! `edr-windows replay`: sends recorded EVTX and ETL files to the Collector through the pipeline
//! a live sensor uses: conversion to OCSF (for ETL: decode, process cache, mapping), the ring
//! buffer, and the transport.
//!
//! Files are read one after the other in path order, each file's events in record order, and
//! every event is appended to the telemetry lane. The command exits once the Collector has
//! acknowledged every appended record, and prints the counts of events sent, records that gave
//! no event of their own (filtered or merged), records without a mapper, and events lost.
//!
//! # Resuming after a crash
//!
//! Before it appends anything, a run writes `replay-checkpoint.json` into the buffer directory:
//! the input list, the number of events earlier runs appended, and the sequence number the
//! next append receives. With the Command stream closed and no eviction, this run's events get
//! consecutive sequence numbers from there. A run killed at any point can be started again
//! with the same inputs and buffer directory. It then reads the highest event sequence number
//! that survived (acknowledged or still in the buffer) and skips that many events, so every
//! event reaches the Collector exactly once. The checkpoint is deleted after a complete run, so the
//! next run with the same inputs sends them again. A checkpoint that is not valid JSON of this
//! form stops the run with an error before anything is appended: resuming needs the counts it
//! held, and sending every event again would store duplicates. Deleting the file sends every
//! event again.
//!
//! # Losses
//!
//! The summary counts as lost the records that the ring buffer's gap records report: evictions,
//! damaged records (found at open or while draining) and missing segment files (found at open).
//! A run that lost events prints the summary and then exits with an error.
//!
//! NOTE: an eviction (a buffer filling faster than the Collector acknowledges) inserts gap
//! records into the numbering, and a resume after it can skip events that were not sent. The
//! run holds appends back while the buffer is more than half full to make that unlikely.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use edr_proto::v1::Versions;
use edr_sensor::buffer::{Buffer, BufferOptions, Lane, RecordKind};
use edr_sensor::identity::IdentityStore;
use edr_sensor::transport::{
    LinkState, LossCounters, SharedBuffer, Transport, TransportConfig, lock,
};
use edr_windows::{capabilities, enrollment};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::convert::{Inputs, collect};

/// Name of the resume checkpoint inside the buffer directory.
const CHECKPOINT_FILE: &str = "replay-checkpoint.json";
/// Events appended between checks of buffer usage and of the transport task.
const CHECK_EVERY: u64 = 1024;
/// Time between checks while waiting for room in the buffer or for acks.
const WAIT_STEP: Duration = Duration::from_millis(10);

/// Arguments of `replay`.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// EVTX or ETL files, or folders searched recursively for them
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Directory holding the sensor identity written by `enroll`
    #[arg(long)]
    state_dir: PathBuf,
    /// Ring buffer directory; `<state-dir>/buffer` when absent
    #[arg(long)]
    buffer_dir: Option<PathBuf>,
    /// Seconds to wait while the Collector acknowledges nothing new before giving up; 0 waits
    /// forever. Unacknowledged events stay in the ring buffer, and the next replay of the same
    /// inputs sends them.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    timeout: u64,
}

/// Ends a wait for the Collector when it acknowledges nothing new for too long.
struct AckWatch {
    /// `None` waits forever.
    limit: Option<Duration>,
    acked: u64,
    since: Instant,
}

impl AckWatch {
    fn new(limit: Option<Duration>, acked: u64) -> Self {
        Self {
            limit,
            acked,
            since: Instant::now(),
        }
    }

    /// Fails once `limit` has passed since the acknowledged sequence number last grew.
    fn check(&mut self, acked: u64, buffer_dir: &Path) -> anyhow::Result<()> {
        if acked > self.acked {
            self.acked = acked;
            self.since = Instant::now();
            return Ok(());
        }
        match self.limit {
            Some(limit) if self.since.elapsed() >= limit => anyhow::bail!(
                "the Collector acknowledged nothing for {} s (--timeout): check that it runs and is reachable, then run the same replay again; the unacknowledged events stay in the ring buffer {} and are sent then",
                limit.as_secs(),
                buffer_dir.display()
            ),
            _ => Ok(()),
        }
    }
}

/// The resume point written before a run appends anything.
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    inputs: Vec<String>,
    /// Events appended by earlier runs with these inputs, in input order.
    events_done: u64,
    /// Sequence number of this run's first append.
    first_seq: u64,
}

/// Counts reported at the end.
#[derive(Debug, Default)]
struct Counts {
    resumed_after: u64,
    sent: u64,
    records: u64,
    events: u64,
    unmapped: u64,
    failed_files: Vec<(PathBuf, String)>,
}

/// Runs `replay`.
pub(crate) fn run(args: ReplayArgs) -> anyhow::Result<()> {
    super::enroll::init_console_logging();
    let mut inputs = Inputs::default();
    for path in &args.paths {
        collect(path, &mut inputs)
            .with_context(|| format!("cannot read input {}", path.display()))?;
    }
    inputs.files.sort();

    let folders = [
        (
            "--state-dir",
            Some(&args.state_dir),
            "pass the folder that `edr-windows enroll --state-dir` wrote",
        ),
        (
            "--buffer-dir",
            args.buffer_dir.as_ref(),
            "pass a folder for the ring buffer, or leave the option out to use the `buffer` subfolder of --state-dir",
        ),
    ];
    for (option, dir, fix) in folders {
        if let Some(dir) = dir.filter(|dir| dir.exists() && !dir.is_dir()) {
            anyhow::bail!("{option} {} is a file, not a folder: {fix}", dir.display());
        }
    }
    let store = IdentityStore::new(&args.state_dir, enrollment::platform_protection());
    let identity = store.load().with_context(|| {
        format!(
            "no usable sensor identity in {}: run `edr-windows enroll` first",
            args.state_dir.display()
        )
    })?;

    // Replay sends as fast as the Collector acknowledges, so the drain rate cap is off.
    let buffer_dir = args
        .buffer_dir
        .clone()
        .unwrap_or_else(|| args.state_dir.join("buffer"));
    let mut options = BufferOptions::new(&buffer_dir);
    options.drain_rate_bytes_per_sec = None;
    options.drain_rate_records_per_sec = None;
    let mut buffer = Buffer::open(options)
        .with_context(|| format!("cannot open the ring buffer in {}", buffer_dir.display()))?;
    let input_names: Vec<String> = inputs
        .files
        .iter()
        .map(|(path, _format)| path.display().to_string())
        .collect();
    let skip = resume(&mut buffer, &buffer_dir, &input_names)?;
    let buffer: SharedBuffer = Arc::new(Mutex::new(buffer));

    let versions = Versions {
        sensor_version: env!("CARGO_PKG_VERSION").to_owned(),
        os_build: capabilities::os_build(),
        ocsf_version: edr_ocsf::OCSF_VERSION.to_owned(),
    };
    let losses = LossCounters::default();
    let transport = Transport::new(
        TransportConfig::default(),
        store,
        Arc::clone(&buffer),
        losses.clone(),
        versions,
    )?
    .without_commands();
    let link = transport.subscribe();
    let runtime = tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
    let (stop, stop_signal) = tokio::sync::watch::channel(false);
    let task = runtime.spawn(transport.run(stop_signal));
    let wait_limit = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    let check_transport = || -> anyhow::Result<()> {
        if task.is_finished() {
            anyhow::bail!("the transport stopped before the Collector acknowledged every event");
        }
        Ok(())
    };

    // Step 1: convert and append, holding back while the buffer is more than half full.
    let progress = progress_bar(&inputs);
    let mut counts = Counts {
        resumed_after: skip,
        ..Counts::default()
    };
    let mut position = 0u64;
    let mut append_error = None;
    for (path, _format) in &inputs.files {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        progress.set_message(short_name(path));
        let result = edr_windows::pipeline::convert_file(path, |event| {
            position += 1;
            if position <= skip || append_error.is_some() {
                return;
            }
            let payload = match serde_json::to_vec(&event) {
                Ok(payload) => payload,
                Err(error) => {
                    append_error =
                        Some(anyhow::Error::new(error).context("cannot serialise an event"));
                    return;
                }
            };
            if let Err(error) = lock(&buffer).append(Lane::Telemetry, &payload) {
                append_error =
                    Some(anyhow::Error::new(error).context("cannot append to the ring buffer"));
                return;
            }
            counts.sent += 1;
            if counts.sent.is_multiple_of(CHECK_EVERY)
                && let Err(error) =
                    wait_for_room(&buffer, &check_transport, wait_limit, &buffer_dir)
            {
                append_error = Some(error);
            }
        });
        progress.inc(size);
        if let Some(error) = append_error.take() {
            progress.finish_and_clear();
            let _ = stop.send(true);
            return Err(error);
        }
        match result {
            Ok(file_counts) => {
                counts.records += file_counts.records;
                counts.events += file_counts.events;
                counts.unmapped += file_counts.unmapped.values().sum::<u64>();
            }
            Err(error) => counts.failed_files.push((path.clone(), error.to_string())),
        }
    }

    // Step 2: make everything durable and wait until the Collector acknowledged it.
    let last_seq = lock(&buffer)
        .sync()
        .context("cannot sync the ring buffer")?;
    progress.set_message("waiting for the Collector to acknowledge");
    let mut announced_wait = false;
    let mut watch = AckWatch::new(wait_limit, lock(&buffer).acked_seq());
    loop {
        let acked = lock(&buffer).acked_seq();
        if acked >= last_seq {
            break;
        }
        if let Err(error) = watch.check(acked, &buffer_dir) {
            progress.finish_and_clear();
            let _ = stop.send(true);
            return Err(error);
        }
        if let Err(error) = check_transport() {
            progress.finish_and_clear();
            return Err(match runtime.block_on(task) {
                Ok(Err(transport_error)) => anyhow::Error::new(transport_error).context(error),
                _ => error,
            });
        }
        if !announced_wait && *link.borrow() != LinkState::Streaming {
            tracing::info!("waiting for the link to the Collector");
            announced_wait = true;
        }
        std::thread::sleep(WAIT_STEP);
    }
    progress.finish_and_clear();
    let _ = stop.send(true);
    match runtime.block_on(task) {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "transport ended with an error after every event was acknowledged")
        }
        Err(error) => {
            tracing::warn!(%error, "transport task failed after every event was acknowledged")
        }
    }

    // Step 3: close and report.
    let buffer = Arc::try_unwrap(buffer)
        .map_err(|_| {
            anyhow::anyhow!("the ring buffer is still shared after the transport stopped")
        })?
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut buffer = buffer;
    let metrics = buffer.metrics();
    buffer.close().context("cannot close the ring buffer")?;
    let checkpoint = buffer_dir.join(CHECKPOINT_FILE);
    if let Err(error) = std::fs::remove_file(&checkpoint) {
        tracing::warn!(path = %checkpoint.display(), %error, "cannot delete the replay checkpoint; the next run with these inputs resumes after the last event");
    }
    // Every gap record was drained before the Collector acknowledged the last event, so the
    // buffer has counted every loss it reported: evictions, damaged records, missing segments.
    let lost = Lost {
        buffer_records: metrics.reported_lost_records,
        buffer_gaps: metrics.reported_gaps,
        other: losses.snapshot().iter().map(|loss| loss.count).sum(),
    };
    print_summary(&identity.sensor_id, &counts, &lost, &inputs, &buffer_dir);
    if !counts.failed_files.is_empty() {
        anyhow::bail!(
            "{} of {} files could not be read",
            counts.failed_files.len(),
            inputs.files.len()
        );
    }
    if lost.total() > 0 {
        anyhow::bail!(
            "{} events were lost before they reached the Collector, which stored gap records for them (the ERROR lines above name the ranges): to send them again, replay the same inputs with an empty --buffer-dir, and the Collector then stores every other event twice",
            lost.total()
        );
    }
    Ok(())
}

/// Events lost during a run, for the summary.
#[derive(Debug)]
struct Lost {
    /// Records that the ring buffer's gap records report lost; a damaged range counts every
    /// sequence number in it.
    buffer_records: u64,
    /// Gap records behind `buffer_records`.
    buffer_gaps: u64,
    /// Events lost outside the ring buffer, from the shared loss counters.
    other: u64,
}

impl Lost {
    /// Returns the events lost in the ring buffer and outside it.
    fn total(&self) -> u64 {
        self.buffer_records + self.other
    }
}

/// Returns how many events earlier runs with the same inputs appended, and writes the
/// checkpoint of this run.
fn resume(buffer: &mut Buffer, directory: &Path, inputs: &[String]) -> anyhow::Result<u64> {
    let path = directory.join(CHECKPOINT_FILE);
    let previous: Option<Checkpoint> = match std::fs::read(&path) {
        // Without the checkpoint, the events that earlier runs appended are unknown, and sending
        // them again gives them new sequence numbers, which the Collector stores a second time.
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(checkpoint) => Some(checkpoint),
            Err(error) => anyhow::bail!(
                "invalid replay checkpoint {} ({error}), so the events that earlier runs appended are unknown: delete the file to send every event again, and the Collector then stores the events it already has a second time",
                path.display()
            ),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    };

    let done = match previous {
        Some(checkpoint) if checkpoint.inputs == inputs => {
            // Acknowledged records were durable, so the highest one survived the crash too.
            let mut highest = buffer.acked_seq();
            loop {
                let records = buffer.drain(4096).context("cannot read the ring buffer")?;
                if records.is_empty() {
                    break;
                }
                for record in records {
                    if record.lane == Lane::Telemetry && matches!(record.kind, RecordKind::Event(_))
                    {
                        highest = highest.max(record.seq);
                    }
                }
            }
            buffer.rewind();
            let survived = (highest + 1).saturating_sub(checkpoint.first_seq);
            tracing::info!(
                earlier = checkpoint.events_done,
                survived,
                "resuming an interrupted replay"
            );
            checkpoint.events_done + survived
        }
        Some(_) => {
            tracing::warn!(path = %path.display(), "replay checkpoint is for other inputs, sending every event");
            0
        }
        None => 0,
    };

    let checkpoint = Checkpoint {
        inputs: inputs.to_vec(),
        events_done: done,
        first_seq: buffer.metrics().next_seq,
    };
    write_atomically(&path, &serde_json::to_vec(&checkpoint)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(done)
}

/// Writes `bytes` to a temporary file, fsyncs it, renames it over `path` and fsyncs the folder.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent()
        && let Ok(directory) = std::fs::File::open(parent)
    {
        // Windows cannot open a directory as a file; the rename is then flushed by the OS.
        let _ = directory.sync_all();
    }
    Ok(())
}

/// Waits while the buffer is more than half full, so that nothing is evicted.
fn wait_for_room(
    buffer: &SharedBuffer,
    check_transport: &dyn Fn() -> anyhow::Result<()>,
    wait_limit: Option<Duration>,
    buffer_dir: &Path,
) -> anyhow::Result<()> {
    let mut watch = AckWatch::new(wait_limit, lock(buffer).acked_seq());
    loop {
        let (metrics, acked) = {
            let mut buffer = lock(buffer);
            (buffer.metrics(), buffer.acked_seq())
        };
        if metrics.disk_bytes <= metrics.capacity_bytes / 2 {
            return Ok(());
        }
        watch.check(acked, buffer_dir)?;
        check_transport()?;
        std::thread::sleep(WAIT_STEP);
    }
}

fn progress_bar(inputs: &Inputs) -> ProgressBar {
    let total: u64 = inputs
        .files
        .iter()
        .filter_map(|(path, _format)| std::fs::metadata(path).ok())
        .map(|metadata| metadata.len())
        .sum();
    let progress = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        progress.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {elapsed} {msg}")
    {
        progress.set_style(style);
    }
    progress
}

fn print_summary(
    sensor_id: &str,
    counts: &Counts,
    lost: &Lost,
    inputs: &Inputs,
    buffer_dir: &Path,
) {
    let except_lost = if lost.total() > 0 {
        ", except those counted as lost below"
    } else {
        ""
    };
    let mut lines = vec![format!(
        "sensor {sensor_id}: {} events sent from {} EVTX and ETL files and acknowledged by the Collector{except_lost}",
        counts.sent,
        inputs.files.len()
    )];
    if counts.resumed_after > 0 {
        lines.push(format!(
            "resumed an interrupted replay after {} events appended by an earlier run; the Collector has acknowledged those too{except_lost}",
            counts.resumed_after
        ));
    }
    lines.push(format!(
        "filtered: {} records gave no event of their own (dropped or merged into another event)",
        counts.records.saturating_sub(counts.events)
    ));
    lines.push(format!(
        "unmapped: {} records without a mapper, sent as Base Event",
        counts.unmapped
    ));
    lines.push(format!("lost: {}", lost.total()));
    if lost.buffer_gaps > 0 {
        lines.push(format!(
            "lost in the ring buffer {}: {} in {}, which the Collector stored (a damaged range counts every sequence number in it)",
            buffer_dir.display(),
            counted(lost.buffer_records, "event", "events"),
            counted(lost.buffer_gaps, "gap", "gaps")
        ));
    }
    if lost.other > 0 {
        lines.push(format!(
            "lost outside the ring buffer: {} events",
            lost.other
        ));
    }
    for (path, error) in &counts.failed_files {
        lines.push(format!("not read: {}: {error}", path.display()));
    }
    if inputs.links_skipped > 0 {
        lines.push(format!(
            "skipped: {} symbolic links to a folder, or dangling",
            inputs.links_skipped
        ));
    }
    if inputs.other > 0 {
        lines.push(format!(
            "skipped: {} files that are neither EVTX nor ETL",
            inputs.other
        ));
    }
    let mut out = std::io::stdout().lock();
    for line in lines {
        // A closed stdout leaves nothing to report to.
        let _ = writeln!(out, "{line}");
    }
}

fn short_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Formats a count with the singular or plural noun, as in "1 gap" or "2 gaps".
fn counted(count: u64, singular: &str, plural: &str) -> String {
    format!("{count} {}", if count == 1 { singular } else { plural })
}
