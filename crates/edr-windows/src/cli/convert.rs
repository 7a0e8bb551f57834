//! `edr-windows convert`: offline conversion of recorded telemetry to OCSF JSON lines.
//!
//! Files are converted in parallel on all cores, one file per task, each file's events in
//! record order; the order of files in the output is not fixed. Each task writes whole lines
//! to the shared output in blocks of about 1 MiB. A progress bar (by bytes) is drawn on
//! stderr only when stderr is a terminal. The summary at the end goes to stderr: events per
//! OCSF class, records without a mapper per (channel or provider, event id), records filtered
//! per (provider, event id or opcode), undecodable records, damaged parts per file, and files
//! that could not be converted.
//!
//! Each file goes through [`edr_windows::pipeline::convert_file`], which tells EVTX from ETL by
//! the file's first bytes; files under a folder whose content is neither are counted as ignored.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use clap::{Args, ValueEnum};
use edr_windows::pipeline::{self, Damage, FileCounts, InputFormat};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;

/// Size at which a task hands its buffered lines to the output.
const FLUSH_BYTES: usize = 1 << 20;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// One OCSF 1.8.0 event per line, as JSON.
    OcsfJsonl,
}

/// Arguments of `convert`.
#[derive(Debug, Args)]
pub(crate) struct ConvertArgs {
    /// EVTX or ETL files, or folders searched recursively for them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "ocsf-jsonl")]
    format: Format,
    /// File to write the events to; standard output when absent.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// The inputs found under the given paths.
#[derive(Debug, Default)]
pub(crate) struct Inputs {
    pub(crate) files: Vec<(PathBuf, InputFormat)>,
    pub(crate) other: u64,
    /// Symbolic links found inside folders that lead to a folder or to nothing.
    pub(crate) links_skipped: u64,
}

/// Totals over all files.
#[derive(Debug, Default)]
struct Summary {
    files: BTreeMap<InputFormat, u64>,
    counts: FileCounts,
    damaged: BTreeMap<PathBuf, Vec<Damage>>,
    failed: Vec<(PathBuf, String)>,
}

/// Runs `convert`.
pub(crate) fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let Format::OcsfJsonl = args.format;
    let mut inputs = Inputs::default();
    for path in &args.paths {
        collect(path, &mut inputs)
            .with_context(|| format!("cannot read input {}", path.display()))?;
    }
    inputs.files.sort();

    let sink: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(
            File::create(path)
                .with_context(|| format!("cannot create output file {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let output = Mutex::new(BufWriter::with_capacity(FLUSH_BYTES, sink));

    let total_bytes: u64 = inputs
        .files
        .iter()
        .filter_map(|(path, _)| std::fs::metadata(path).ok())
        .map(|metadata| metadata.len())
        .sum();
    let progress = progress_bar(total_bytes);

    let summary = Mutex::new(Summary::default());
    let write_error: Mutex<Option<std::io::Error>> = Mutex::new(None);
    inputs.files.par_iter().for_each(|(path, format)| {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        progress.set_message(short_name(path));
        let outcome = convert_one(path, &output);
        progress.inc(size);

        let mut summary = lock(&summary);
        match outcome {
            Ok(counts) => {
                *summary.files.entry(*format).or_default() += 1;
                summary.counts.merge(&counts);
                if !counts.damaged.is_empty() {
                    summary.damaged.insert(path.clone(), counts.damaged);
                }
            }
            Err(ConvertFailure::Read(error)) => summary.failed.push((path.clone(), error)),
            Err(ConvertFailure::Write(error)) => {
                lock(&write_error).get_or_insert(error);
            }
        }
    });
    progress.finish_and_clear();

    let mut output = output
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(error) = write_error
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
    {
        return Err(error).context("cannot write the converted events");
    }
    output
        .flush()
        .context("cannot write the converted events")?;

    let summary = summary
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    print_summary(&summary, &inputs);
    if !summary.failed.is_empty() {
        anyhow::bail!(
            "{} of {} files could not be converted",
            summary.failed.len(),
            inputs.files.len()
        );
    }
    Ok(())
}

enum ConvertFailure {
    /// The file could not be read at all; conversion goes on with the other files.
    Read(String),
    /// The output failed; nothing more can be written.
    Write(std::io::Error),
}

fn convert_one(
    path: &Path,
    output: &Mutex<BufWriter<Box<dyn Write + Send>>>,
) -> Result<FileCounts, ConvertFailure> {
    let mut buffer = Vec::with_capacity(FLUSH_BYTES + 64 * 1024);
    let mut write_error = None;
    let flush = |buffer: &mut Vec<u8>, write_error: &mut Option<std::io::Error>| {
        if write_error.is_none()
            && let Err(error) = lock(output).write_all(buffer)
        {
            *write_error = Some(error);
        }
        buffer.clear();
    };

    let result = pipeline::convert_file(path, |event| {
        // Serialising into a Vec fails only on a map with non-string keys, and events have none.
        if serde_json::to_writer(&mut buffer, &event).is_ok() {
            buffer.push(b'\n');
        }
        if buffer.len() >= FLUSH_BYTES {
            flush(&mut buffer, &mut write_error);
        }
    });
    flush(&mut buffer, &mut write_error);

    if let Some(error) = write_error {
        return Err(ConvertFailure::Write(error));
    }
    match result {
        Ok(counts) => Ok(counts),
        Err(error) => Err(ConvertFailure::Read(error.to_string())),
    }
}

/// Adds the EVTX and ETL files at `path`, a file or a folder searched recursively.
///
/// Inside a folder, a symbolic link to a folder is not followed, because a link to a parent
/// folder would make the search endless, and a dangling link is skipped. Both are counted in
/// [`Inputs::links_skipped`]. A link named on the command line is followed. Inside a folder,
/// files that are neither EVTX nor ETL are counted in [`Inputs::other`]. A file named on the
/// command line must be one of the two, because the user named it to have it converted.
pub(crate) fn collect(path: &Path, inputs: &mut Inputs) -> std::io::Result<()> {
    if !path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file or folder",
        ));
    }
    if !path.is_dir() && !path.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket or device): name EVTX or ETL files, or a folder that holds them",
        ));
    }
    if !path.is_dir() && matches!(pipeline::detect_format(path), Ok(None)) {
        // Below the 72-byte ETL buffer header, a cut trace cannot be distinguished from
        // another file.
        let len = path.metadata().map_or(u64::MAX, |meta| meta.len());
        let message = if len < 72 {
            format!(
                "neither an EVTX nor an ETL file: it holds only {len} bytes, fewer than either format's header; if it is a copy of a trace still being written, copy it again once the trace has stopped"
            )
        } else {
            "neither an EVTX nor an ETL file (its first bytes match neither format): name EVTX or ETL files, or a folder that holds them".to_string()
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            message,
        ));
    }
    collect_entry(path, inputs)
}

fn collect_entry(path: &Path, inputs: &mut Inputs) -> std::io::Result<()> {
    if path.is_dir() {
        let listing = std::fs::read_dir(path).map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("cannot list folder {}: {error}", path.display()),
            )
        })?;
        let mut entries: Vec<PathBuf> = Vec::new();
        for entry in listing.flatten() {
            let is_link = entry.file_type().is_ok_and(|kind| kind.is_symlink());
            // `metadata` follows the link, so it fails for a dangling one.
            if is_link && std::fs::metadata(entry.path()).map_or(true, |target| target.is_dir()) {
                inputs.links_skipped += 1;
                continue;
            }
            entries.push(entry.path());
        }
        entries.sort();
        for entry in entries {
            collect_entry(&entry, inputs)?;
        }
        return Ok(());
    }
    // The content decides, not the extension; a file that cannot be read is passed on so that
    // its error shows in the summary.
    match pipeline::detect_format(path) {
        Ok(Some(format)) => inputs.files.push((path.to_owned(), format)),
        Ok(None) => inputs.other += 1,
        Err(_) => inputs.files.push((path.to_owned(), InputFormat::Evtx)),
    }
    Ok(())
}

fn progress_bar(total_bytes: u64) -> ProgressBar {
    let progress = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
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

fn print_summary(summary: &Summary, inputs: &Inputs) {
    let counts = &summary.counts;
    let mut err = std::io::stderr().lock();
    let files = |format| summary.files.get(&format).copied().unwrap_or(0);
    let mut lines = vec![format!(
        "converted {} EVTX and {} ETL files: {} records, {} OCSF events, {} unreadable records",
        files(InputFormat::Evtx),
        files(InputFormat::Etl),
        counts.records,
        counts.events,
        counts.unreadable
    )];
    lines.push("events per OCSF class:".to_owned());
    for (class, count) in &counts.per_class {
        lines.push(format!("  {count:>8}  {class}"));
    }
    push_table(
        &mut lines,
        "records without a mapper, kept as Base Event with their fields under unmapped",
        &counts.unmapped,
    );
    push_table(
        &mut lines,
        "records filtered (not collected live, or state only), not emitted",
        &counts.filtered,
    );
    push_table(
        &mut lines,
        "records undecodable (payload does not fit a known layout), not emitted",
        &counts.undecodable,
    );
    if counts.with_process + counts.without_process > 0 {
        lines.push(format!(
            "ETW events with their process from the cache: {} of {}",
            counts.with_process,
            counts.with_process + counts.without_process
        ));
    }
    if counts.truncated_script_blocks > 0 {
        lines.push(format!(
            "script blocks emitted with parts missing: {}",
            counts.truncated_script_blocks
        ));
    }
    for (path, damaged) in &summary.damaged {
        let locations: Vec<&str> = damaged.iter().map(|d| d.location.as_str()).collect();
        lines.push(format!(
            "damaged parts skipped in {}: {}",
            path.display(),
            locations.join(", ")
        ));
    }
    for (path, error) in &summary.failed {
        lines.push(format!("not converted: {}: {error}", path.display()));
    }
    if inputs.links_skipped > 0 {
        lines.push(format!(
            "symbolic links skipped (to a folder, or dangling): {}",
            inputs.links_skipped
        ));
    }
    if inputs.other > 0 {
        lines.push(format!(
            "other files ignored (neither EVTX nor ETL): {}",
            inputs.other
        ));
    }
    for line in lines {
        // A closed stderr leaves nothing to report to.
        let _ = writeln!(err, "{line}");
    }
}

/// Appends a heading with the total and one line per (source, event id), largest first.
fn push_table(lines: &mut Vec<String>, heading: &str, table: &BTreeMap<(String, u32), u64>) {
    let mut rows: Vec<(&(String, u32), &u64)> = table.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    lines.push(format!(
        "{heading}: {}",
        rows.iter().map(|(_, count)| **count).sum::<u64>()
    ));
    for ((source, event_id), count) in rows {
        lines.push(format!("  {count:>8}  {source} {event_id}"));
    }
}

fn short_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Locks `mutex`, taking the data of a poisoned lock: a panicking task leaves whole lines.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
