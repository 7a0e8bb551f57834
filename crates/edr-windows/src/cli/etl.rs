//! `edr-windows etl dump FILE [--provider P] [--format text|jsonl]`: prints the events of an
//! ETL file, decoded into typed events where a decoder exists, then a summary on stderr.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use edr_etw::{EtlReader, EventRecord, HeaderKind, kernel, tracelogging};
use edr_windows::events::{Decoder, providers};

/// Arguments of `edr-windows etl`.
#[derive(Debug, clap::Args)]
pub(crate) struct EtlArgs {
    #[command(subcommand)]
    command: EtlCommand,
}

#[derive(Debug, clap::Subcommand)]
enum EtlCommand {
    /// Print the events of an ETL file, decoded where a decoder exists.
    Dump(DumpArgs),
}

#[derive(Debug, clap::Args)]
struct DumpArgs {
    /// The .etl file to read.
    file: PathBuf,
    /// Only events of this provider: a GUID, a provider name (Microsoft-Windows-Kernel-Process,
    /// a TraceLogging name) or a kernel group name (Process, Image, TcpIp...), case-insensitive.
    #[arg(long)]
    provider: Option<String>,
    /// Output format: one line of text or one JSON object per event.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Jsonl,
}

/// Runs `edr-windows etl ...`.
pub(crate) fn run(args: EtlArgs) -> anyhow::Result<()> {
    match args.command {
        EtlCommand::Dump(dump) => run_dump(dump),
    }
}

/// Name shown for a record's provider.
fn provider_label(record: &EventRecord<'_>) -> String {
    if let Some(group) = record.kernel_group() {
        return format!("Kernel/{}", kernel::group_name(group));
    }
    if let Some(name) = providers::name(record.provider_id) {
        return name.to_owned();
    }
    if let Some(name) = record
        .extended
        .provider_traits()
        .and_then(tracelogging::provider_name)
    {
        return name.to_owned();
    }
    record.provider_id.to_string()
}

fn matches_filter(record: &EventRecord<'_>, filter: &str) -> bool {
    if let Ok(guid) = filter.parse::<edr_etw::Guid>() {
        return record.provider_id == guid;
    }
    let label = provider_label(record);
    label.eq_ignore_ascii_case(filter)
        || label
            .strip_prefix("Kernel/")
            .is_some_and(|group| group.eq_ignore_ascii_case(filter))
}

fn run_dump(args: DumpArgs) -> anyhow::Result<()> {
    let mut reader = EtlReader::open(&args.file)
        .with_context(|| format!("failed to open ETL file {}", args.file.display()))?;
    let mut decoder = Decoder::new();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let mut write_error: Option<std::io::Error> = None;

    reader
        .for_each_record(|record| {
            if write_error.is_some() {
                return;
            }
            if let Some(filter) = &args.provider
                && !matches_filter(record, filter)
            {
                return;
            }
            let decoded = decoder.decode(record);
            let line = match args.format {
                Format::Text => text_line(record, decoded.as_ref().map(|d| &d.event)),
                Format::Jsonl => json_line(record, decoded.as_ref().map(|d| &d.event)),
            };
            printed += 1;
            if let Err(error) = writeln!(out, "{line}") {
                write_error = Some(error);
            }
        })
        .with_context(|| format!("failed to read ETL file {}", args.file.display()))?;
    if let Some(error) = write_error {
        // A closed pipe (`| head`) ends the dump without an error.
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(error).context("failed to write the dump to stdout");
        }
        return Ok(());
    }
    out.flush().ok();

    let stats = reader.stats();
    let decode = decoder.stats();
    eprintln!(
        "{} buffers ({} compressed, {} unparsed), records {:?}, {} printed; decoded {}, not covered {}, undecodable {}",
        stats.buffers,
        stats.compressed_buffers,
        stats.unparsed_buffers,
        stats.records_by_header.by_name(),
        printed,
        decode.decoded,
        decode.not_covered,
        decode.undecodable_total()
    );
    for skip in &stats.skips {
        eprintln!(
            "skipped: buffer at byte {} event {:?}: {:?}",
            skip.buffer_offset, skip.event_offset, skip.reason
        );
    }
    for ((key, reason), count) in &decode.undecodable {
        eprintln!(
            "undecodable: provider {} id/opcode {} version {}: {:?} x{count}",
            key.provider, key.id_or_opcode, key.version, reason
        );
    }
    let header = reader.header();
    if stats.lost_event_markers > 0 {
        eprintln!(
            "{} lost-event markers in the trace",
            stats.lost_event_markers
        );
    }
    if header.events_lost > 0 || header.buffers_lost > 0 {
        eprintln!(
            "the session lost {} events and {} buffers",
            header.events_lost, header.buffers_lost
        );
    }
    Ok(())
}

fn id_text(record: &EventRecord<'_>) -> String {
    match record.header_kind {
        HeaderKind::Event => format!("id={} v{}", record.descriptor.id, record.descriptor.version),
        _ => format!(
            "opcode={} v{}",
            record.descriptor.opcode, record.descriptor.version
        ),
    }
}

/// TraceLogging fields, for events that carry their metadata.
fn tracelogging_fields(
    record: &EventRecord<'_>,
) -> Option<(String, Vec<(String, tracelogging::Value)>)> {
    let schema = tracelogging::parse_event_schema(record.extended.tracelogging_schema()?).ok()?;
    let values =
        tracelogging::decode_payload(&schema, record.user_data, record.pointer_size.bytes())
            .ok()?;
    Some((schema.name.to_owned(), values))
}

fn text_line(record: &EventRecord<'_>, event: Option<&edr_windows::events::RawEvent>) -> String {
    let head = format!(
        "{} {} {} pid={} tid={} cpu={}",
        record.timestamp,
        provider_label(record),
        id_text(record),
        record.process_id as i32,
        record.thread_id as i32,
        record.processor
    );
    if let Some(event) = event {
        return format!(
            "{head} {}",
            serde_json::to_string(event).unwrap_or_default()
        );
    }
    if let Some((name, values)) = tracelogging_fields(record) {
        return format!(
            "{head} {name} {}",
            serde_json::to_string(&values).unwrap_or_default()
        );
    }
    format!("{head} payload={}B", record.user_data.len())
}

fn json_line(record: &EventRecord<'_>, event: Option<&edr_windows::events::RawEvent>) -> String {
    let tl = tracelogging_fields(record);
    let value = serde_json::json!({
        "timestamp": record.timestamp,
        "provider": record.provider_id,
        "provider_name": provider_label(record),
        "header_kind": record.header_kind,
        "id": record.descriptor.id,
        "opcode": record.descriptor.opcode,
        "version": record.descriptor.version,
        "level": record.descriptor.level,
        "task": record.descriptor.task,
        "keyword": record.descriptor.keyword,
        "process_id": record.process_id,
        "thread_id": record.thread_id,
        "processor": record.processor,
        "activity_id": record.activity_id,
        "payload_len": record.user_data.len(),
        "event": event,
        "tracelogging_event": tl.as_ref().map(|(name, _)| name),
        "tracelogging_fields": tl.map(|(_, values)| values),
    });
    value.to_string()
}
