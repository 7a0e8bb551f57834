//! `edr-collector export`: stored OCSF events to files in the Amazon Security Lake layout.
//!
//! Security Lake takes third-party data as custom sources, one OCSF class per source, under
//! `ext/<source>/region=<region>/accountId=<account>/eventDay=<YYYYMMDD>/`. The export
//! writes the same tree: the source name is `edr-` plus the class name in kebab case (for
//! example `edr-process-activity`, or `edr-class-<uid>` for a class this build does not
//! know), the day is the UTC day of the event's `time`. Each run writes one new file per
//! partition, named after the run's start time, and never overwrites an existing file.
//!
//! A file is written under its name plus [`PARTIAL_SUFFIX`] and renamed when it is complete,
//! after every partition has been written and synced, so that a reader of the tree never
//! takes an incomplete file for a complete one. An export that fails removes the files it wrote;
//! one that is killed leaves the files it had not renamed under the suffix.
//!
//! `--format parquet` writes the format Security Lake requires, with zstd compression; see
//! [`parquet_file`] for the columns. `--format jsonl` writes one OCSF event per line into
//! the same layout.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context;
use time::OffsetDateTime;

use crate::cli::{ExportArgs, ExportFormat};
use crate::inspect::{check_damaged, time_filter, warn_damaged};
use crate::store::query::EventRow;
use crate::store::{Store, StoreError};

mod parquet_file;

use parquet_file::ParquetPartition;

/// Suffix of an export file while it is written.
const PARTIAL_SUFFIX: &str = ".partial";

/// The output file of one partition, written under a temporary name.
#[derive(Debug)]
struct Partition {
    /// Final path of the file, once it is complete.
    path: PathBuf,
    /// Path the file is written to until then.
    partial: PathBuf,
    file: PartitionFile,
}

impl Partition {
    fn create(format: ExportFormat, path: PathBuf) -> anyhow::Result<Self> {
        if path.exists() {
            anyhow::bail!(
                "\"{}\" already exists: export to an empty directory or wait a second",
                path.display()
            );
        }
        let mut partial = path.clone().into_os_string();
        partial.push(PARTIAL_SUFFIX);
        let partial = PathBuf::from(partial);
        let file = PartitionFile::create(format, &partial)?;
        Ok(Self {
            path,
            partial,
            file,
        })
    }
}

/// The open output file of one partition.
#[derive(Debug)]
enum PartitionFile {
    Jsonl(BufWriter<File>),
    Parquet(Box<ParquetPartition>),
}

impl PartitionFile {
    fn create(format: ExportFormat, path: &std::path::Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|err| {
                let hint = if err.kind() == std::io::ErrorKind::AlreadyExists {
                    ": export to an empty directory or wait a second"
                } else {
                    ""
                };
                anyhow::Error::new(err)
                    .context(format!("failed to create \"{}\"{hint}", path.display()))
            })?;
        Ok(match format {
            ExportFormat::Jsonl => Self::Jsonl(BufWriter::new(file)),
            ExportFormat::Parquet => Self::Parquet(Box::new(ParquetPartition::new(path, file)?)),
        })
    }

    /// Appends one event; `path` names the file in messages.
    fn push(&mut self, event: EventRow, path: &std::path::Path) -> anyhow::Result<()> {
        match self {
            Self::Jsonl(writer) => writeln!(writer, "{}", event.json)
                .with_context(|| format!("failed to write into \"{}\"", path.display())),
            Self::Parquet(partition) => partition.push(event),
        }
    }

    /// Writes what is buffered and syncs the file to disk; `path` names it in messages.
    fn finish(self, path: &std::path::Path) -> anyhow::Result<()> {
        match self {
            Self::Jsonl(mut writer) => {
                writer
                    .flush()
                    .with_context(|| format!("failed to write into \"{}\"", path.display()))?;
                writer
                    .get_ref()
                    .sync_all()
                    .with_context(|| format!("failed to sync \"{}\"", path.display()))
            }
            Self::Parquet(partition) => partition.finish(),
        }
    }
}

pub(crate) fn export(args: &ExportArgs) -> anyhow::Result<()> {
    for (flag, value) in [
        ("--region", &args.region),
        ("--account-id", &args.account_id),
    ] {
        if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            anyhow::bail!("invalid {flag} \"{value}\": use letters, digits and hyphens only");
        }
    }
    let started = OffsetDateTime::now_utc();
    let filter = time_filter(&args.range, started)?;
    let store = Store::open(&args.data_dir)?;
    if args.output.exists() && !args.output.is_dir() {
        anyhow::bail!(
            "--output \"{}\" is not a directory: pass a directory for the export tree",
            args.output.display()
        );
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("failed to create \"{}\"", args.output.display()))?;
    let run_name = started
        .format(time::macros::format_description!(
            "edr-[year][month][day]T[hour][minute][second]Z"
        ))
        .context("failed to format the export file name")?;
    let file_name = match args.format {
        ExportFormat::Jsonl => format!("{run_name}.jsonl"),
        ExportFormat::Parquet => format!("{run_name}.parquet"),
    };

    let mut files: HashMap<PathBuf, Partition> = HashMap::new();
    // Directories this export created, parents before children, so that a failed export can
    // remove them again.
    let mut created_dirs: Vec<PathBuf> = Vec::new();
    let mut count: u64 = 0;
    let mut failure: Option<anyhow::Error> = None;
    let write_event = |event: EventRow| {
        if failure.is_some() {
            return Ok(());
        }
        let dir = args
            .output
            .join("ext")
            .join(source_name(event.class_uid))
            .join(format!("region={}", args.region))
            .join(format!("accountId={}", args.account_id))
            .join(format!("eventDay={}", event_day(event.time_ms)));
        let written = (|| -> anyhow::Result<()> {
            let file = match files.entry(dir.clone()) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let first_new = created_dirs.len();
                    created_dirs.extend(
                        dir.ancestors()
                            .take_while(|ancestor| !ancestor.exists())
                            .map(Path::to_path_buf),
                    );
                    created_dirs[first_new..].reverse();
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("failed to create \"{}\"", dir.display()))?;
                    entry.insert(Partition::create(args.format, dir.join(&file_name))?)
                }
            };
            file.file.push(event, &file.partial)
        })();
        match written {
            Ok(()) => count += 1,
            Err(err) => failure = Some(err),
        }
        Ok::<(), StoreError>(())
    };
    let scanned = store.for_each_event(&filter, write_event, warn_damaged);
    let partitions: Vec<Partition> = files.into_values().collect();
    let scan = match (scanned, failure) {
        (Ok(scan), None) => scan,
        (Err(err), _) => return Err(discard(partitions, &created_dirs, err.into())),
        (Ok(_), Some(err)) => return Err(discard(partitions, &created_dirs, err)),
    };
    let mut finished = Vec::with_capacity(partitions.len());
    let mut partitions = partitions.into_iter();
    while let Some(Partition {
        path,
        partial,
        file,
    }) = partitions.next()
    {
        let finishing = file.finish(&partial);
        finished.push((path, partial));
        if let Err(err) = finishing {
            let paths = finished.into_iter().map(|(_, partial)| partial);
            let rest = partitions.map(|partition| partition.partial);
            return Err(discard_paths(
                paths.chain(rest).collect(),
                &created_dirs,
                err,
            ));
        }
    }
    for (index, (path, partial)) in finished.iter().enumerate() {
        if let Err(err) = std::fs::rename(partial, path) {
            let err = anyhow::Error::new(err).context(format!(
                "failed to rename \"{}\" to \"{}\"",
                partial.display(),
                path.display()
            ));
            // Files already renamed are removed too, because a rerun exports every event again.
            let (renamed, rest) = finished.split_at(index);
            let files = renamed
                .iter()
                .map(|(path, _)| path)
                .chain(rest.iter().map(|(_, partial)| partial))
                .cloned()
                .collect();
            return Err(discard_paths(files, &created_dirs, err));
        }
    }
    eprintln!("exported {count} events to {}", args.output.display());
    check_damaged(scan, &args.data_dir, "exported")
}

/// Closes the files of a failed export, removes them and the directories it created, and
/// returns `err`.
fn discard(
    partitions: Vec<Partition>,
    created_dirs: &[PathBuf],
    err: anyhow::Error,
) -> anyhow::Error {
    let partials = partitions
        .into_iter()
        .map(|partition| partition.partial)
        .collect();
    discard_paths(partials, created_dirs, err)
}

/// Removes the files of a failed export, then the directories it created (`created_dirs`,
/// parents first) that are empty, and returns `err`, naming any file that could not be
/// removed. A directory that another program wrote into meanwhile stays.
fn discard_paths(
    partials: Vec<PathBuf>,
    created_dirs: &[PathBuf],
    err: anyhow::Error,
) -> anyhow::Error {
    let left: Vec<String> = partials
        .iter()
        .filter(|partial| {
            std::fs::remove_file(partial).is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound)
        })
        .map(|partial| format!("\"{}\"", partial.display()))
        .collect();
    for dir in created_dirs.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
    if left.is_empty() {
        err
    } else {
        anyhow::anyhow!(
            "{err:#}. Failed to remove these incomplete files, delete them by hand: {}",
            left.join(", ")
        )
    }
}

/// Returns the custom source name of an OCSF class.
fn source_name(class_uid: i64) -> String {
    let known = edr_ocsf::Class::ALL
        .iter()
        .find(|class| i64::from(class.uid()) == class_uid);
    match known {
        Some(class) => format!(
            "edr-{}",
            class.name().to_ascii_lowercase().replace(' ', "-")
        ),
        None => format!("edr-class-{class_uid}"),
    }
}

/// Returns the UTC day of a Unix-milliseconds time as YYYYMMDD.
fn event_day(time_ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("{:04}{:02}{:02}", at.year(), u8::from(at.month()), at.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names() {
        assert_eq!(source_name(1007), "edr-process-activity");
        assert_eq!(source_name(4003), "edr-dns-activity");
        assert_eq!(source_name(9999), "edr-class-9999");
        assert_eq!(event_day(1_700_000_000_000), "20231114");
    }
}
