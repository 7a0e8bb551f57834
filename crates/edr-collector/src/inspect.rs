//! Read-side command handlers: `events`, `command ping` and `commands list`, plus the parsers
//! of their filter arguments.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use edr_pki::token::format_time;
use time::OffsetDateTime;

use crate::cli::{EventsArgs, EventsFormat, TimeRange};
use crate::store::query::{DamagedEvent, EventFilter, EventRow, EventScan};
use crate::store::{DB_FILE, Store, StoreError};
use crate::terminal::escape_controls;

/// Errors in filter arguments.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FilterError {
    /// `--since` or `--until` is neither a duration nor an RFC 3339 time.
    #[error(
        "invalid time \"{value}\" for --{flag}: use a duration before now such as 30m, 1h, 7d or an RFC 3339 time such as 2026-12-04T10:00:00Z"
    )]
    Time { flag: &'static str, value: String },
    /// `--class` names no known OCSF class.
    #[error(
        "unknown OCSF class \"{value}\": use a class_uid such as 1007 or a name such as \"Process Activity\""
    )]
    Class { value: String },
    /// `--where` lacks `=`.
    #[error("invalid --where \"{value}\": use FIELD=VALUE, for example process.file.name=cmd.exe")]
    WhereSyntax { value: String },
    /// `--where` names an invalid attribute path.
    #[error(
        "invalid --where field \"{field}\": use dot-separated OCSF attribute names of letters, digits and underscores, with optional [N] indexes, such as process.file.name or actor.user.groups[0].name"
    )]
    WhereField { field: String },
    /// `--since` is at or after `--until`, so no event could match.
    #[error(
        "--since {since} is not before --until {until}, so no event can match: swap them or widen the range"
    )]
    EmptyRange { since: String, until: String },
}

/// Builds the event filter from the shared time arguments.
pub(crate) fn time_filter(
    range: &TimeRange,
    now: OffsetDateTime,
) -> Result<EventFilter, FilterError> {
    let since_ms = range
        .since
        .as_deref()
        .map(|value| parse_time("since", value, now))
        .transpose()?;
    let until_ms = range
        .until
        .as_deref()
        .map(|value| parse_time("until", value, now))
        .transpose()?;
    if let (Some(since), Some(until)) = (since_ms, until_ms)
        && since >= until
    {
        return Err(FilterError::EmptyRange {
            since: range.since.clone().unwrap_or_default(),
            until: range.until.clone().unwrap_or_default(),
        });
    }
    Ok(EventFilter {
        since_ms,
        until_ms,
        ..EventFilter::default()
    })
}

/// Parses a duration before `now` or an RFC 3339 time into Unix milliseconds.
pub(crate) fn parse_time(
    flag: &'static str,
    value: &str,
    now: OffsetDateTime,
) -> Result<i64, FilterError> {
    let invalid = || FilterError::Time {
        flag,
        value: value.to_string(),
    };
    let at = if let Ok(duration) = humantime::parse_duration(value) {
        let duration = time::Duration::try_from(duration).map_err(|_| invalid())?;
        now.checked_sub(duration).ok_or_else(invalid)?
    } else {
        OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
            .map_err(|_| invalid())?
    };
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|_| invalid())
}

/// Parses a class_uid or an OCSF class name (case, spaces and underscores ignored).
pub(crate) fn parse_class(value: &str) -> Result<i64, FilterError> {
    if let Ok(uid) = value.parse::<i64>() {
        return Ok(uid);
    }
    let normalize = |text: &str| {
        text.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect::<String>()
    };
    let wanted = normalize(value);
    edr_ocsf::Class::ALL
        .iter()
        .find(|class| normalize(class.name()) == wanted)
        .map(|class| i64::from(class.uid()))
        .ok_or_else(|| FilterError::Class {
            value: value.to_string(),
        })
}

/// Parses `FIELD=VALUE` into an SQLite JSON path (`$.a.b[0].c`) and the value.
pub(crate) fn parse_condition(text: &str) -> Result<(String, String), FilterError> {
    let Some((field, value)) = text.split_once('=') else {
        return Err(FilterError::WhereSyntax {
            value: text.to_string(),
        });
    };
    let invalid = || FilterError::WhereField {
        field: field.to_string(),
    };
    if field.is_empty() {
        return Err(invalid());
    }
    for segment in field.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, Some(rest)),
            None => (segment, None),
        };
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let valid_index = index.is_none_or(|rest| {
            rest.strip_suffix(']').is_some_and(|digits| {
                !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
            })
        });
        if !valid_name || !valid_index {
            return Err(invalid());
        }
    }
    Ok((format!("$.{field}"), value.to_string()))
}

pub(crate) fn events(args: &EventsArgs) -> anyhow::Result<()> {
    let mut filter = time_filter(&args.range, OffsetDateTime::now_utc())?;
    filter.sensor_id = args.sensor.clone();
    filter.class_uid = args.class.as_deref().map(parse_class).transpose()?;
    filter.conditions = args
        .conditions
        .iter()
        .map(|text| parse_condition(text))
        .collect::<Result<_, _>>()?;
    filter.limit = Some(args.limit);

    let store = Store::open(&args.data_dir)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if matches!(args.format, EventsFormat::Table) {
        writeln!(
            out,
            "{:<24}  {:<36}  {:>8}  {:>6}  {:>8}  {:>8}  {:<24}  USER",
            "TIME", "SENSOR", "SEQ", "CLASS", "ACTIVITY", "SEVERITY", "PROCESS UID"
        )?;
    }
    let mut write_error = None;
    let print_event = |event: EventRow| {
        let written = match args.format {
            EventsFormat::Jsonl => writeln!(out, "{}", event.json),
            EventsFormat::Table => writeln!(
                out,
                "{:<24}  {:<36}  {:>8}  {:>6}  {:>8}  {:>8}  {:<24}  {}",
                format_millis(event.time_ms),
                event.sensor_id,
                event.seq,
                event.class_uid,
                event
                    .activity_id
                    .map_or_else(|| "-".to_string(), |v| v.to_string()),
                event
                    .severity_id
                    .map_or_else(|| "-".to_string(), |v| v.to_string()),
                escape_controls(event.process_uid.as_deref().unwrap_or("-")),
                escape_controls(event.user_name.as_deref().unwrap_or("-")),
            ),
        };
        if let Err(err) = written {
            write_error.get_or_insert(err);
        }
        Ok::<(), StoreError>(())
    };
    let scan = store.for_each_event(&filter, print_event, warn_damaged)?;
    let written = match write_error {
        Some(err) => Err(err),
        None => out.flush(),
    };
    match written {
        // The reader closed the pipe because it has what it needs, as `head` does.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(err) => return Err(err).context("failed to write events to standard output"),
        Ok(()) => {}
    }
    check_damaged(scan, &args.data_dir, "printed")
}

/// Prints the warning line for a stored event that `events` or `export` skipped.
pub(crate) fn warn_damaged(damaged: DamagedEvent) {
    let DamagedEvent {
        sensor_id,
        seq,
        source,
    } = damaged;
    eprintln!("warning: skipped event {sensor_id} seq {seq}: {source}");
}

/// The error that ends `events` or `export` after they wrote every readable event but skipped
/// damaged rows. The Collector exits with [`DamagedRowsSkipped::EXIT_STATUS`] for it, so that a
/// script can distinguish it from a failed command.
#[derive(Debug, thiserror::Error)]
#[error("skipped {damaged} stored events that cannot be read (see the warnings above) and {written} the other {read}: restore \"{}\" from a backup to recover them", database.display())]
pub struct DamagedRowsSkipped {
    damaged: u64,
    read: u64,
    written: String,
    database: std::path::PathBuf,
}

impl DamagedRowsSkipped {
    /// Exit status of a command that ends with this error. Other errors exit with 1.
    pub const EXIT_STATUS: u8 = 3;
}

/// Returns the error that ends `events` or `export` when `scan` skipped damaged rows.
/// `written` is the verb for what happened to the other events, such as "printed" or
/// "exported".
pub(crate) fn check_damaged(scan: EventScan, data_dir: &Path, written: &str) -> anyhow::Result<()> {
    if scan.damaged == 0 {
        return Ok(());
    }
    Err(DamagedRowsSkipped {
        damaged: scan.damaged,
        read: scan.read,
        written: written.to_string(),
        database: data_dir.join(DB_FILE),
    }
    .into())
}

/// Formats Unix milliseconds as an RFC 3339 time with milliseconds.
pub(crate) fn format_millis(ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format).unwrap_or_else(|_| ms.to_string())
}

pub(crate) fn queue_ping(
    data_dir: &Path,
    sensor: &str,
    ttl: std::time::Duration,
) -> anyhow::Result<()> {
    let ttl = time::Duration::try_from(ttl)
        .with_context(|| format!("command TTL {ttl:?} is too long: use at most a few days"))?;
    let now = OffsetDateTime::now_utc();
    let expires_at = now
        .checked_add(ttl)
        .with_context(|| format!("command TTL {ttl} is too long: use at most a few days"))?;
    let id = Store::open(data_dir)?.queue_command(sensor, "ping", now, expires_at)?;
    eprintln!(
        "queued ping {id} for sensor {sensor}, valid until {}; see the result with `edr-collector commands list`",
        format_time(expires_at)
    );
    println!("{id}");
    Ok(())
}

pub(crate) fn commands_list(data_dir: &Path) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    println!(
        "{:<36}  {:<36}  {:<6}  {:<20}  {:<20}  {:<12}  {:<10}  DETAIL",
        "ID", "SENSOR", "KIND", "ISSUED", "EXPIRES", "STATE", "VIA"
    );
    for command in Store::open(data_dir)?.list_commands()? {
        let state = match (&command.status, command.delivered_at) {
            (Some(status), _) => status.clone(),
            (None, Some(_)) => "delivered".to_string(),
            (None, None) if command.expires_at <= now => "expired".to_string(),
            (None, None) => "queued".to_string(),
        };
        println!(
            "{:<36}  {:<36}  {:<6}  {:<20}  {:<20}  {:<12}  {:<10}  {}",
            command.id,
            command.sensor_id,
            command.kind,
            format_time(command.issued_at),
            format_time(command.expires_at),
            state,
            command.received_via.as_deref().unwrap_or("-"),
            escape_controls(command.detail.as_deref().unwrap_or("")),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_fields_validated() {
        assert_eq!(
            parse_condition("process.file.name=cmd.exe").unwrap(),
            ("$.process.file.name".to_string(), "cmd.exe".to_string())
        );
        assert_eq!(
            parse_condition("actor.user.groups[0].name=a=b").unwrap(),
            ("$.actor.user.groups[0].name".to_string(), "a=b".to_string())
        );
        for bad in [
            "nofield",
            "=x",
            "a..b=x",
            "a.1b=x",
            "a[x]=1",
            "a[]=1",
            "a'); DROP=x",
            "a b=c",
        ] {
            assert!(parse_condition(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn class_names_and_uids_parse() {
        assert_eq!(parse_class("1007").unwrap(), 1007);
        assert_eq!(parse_class("Process Activity").unwrap(), 1007);
        assert_eq!(parse_class("process_activity").unwrap(), 1007);
        let err = parse_class("nope").unwrap_err().to_string();
        assert!(err.contains("\"nope\""), "{err}");
    }

    #[test]
    fn inverted_time_range_is_rejected() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let range = |since: &str, until: &str| TimeRange {
            since: Some(since.to_string()),
            until: Some(until.to_string()),
        };
        let err =
            time_filter(&range("2030-01-01T00:00:00Z", "2020-01-01T00:00:00Z"), now).unwrap_err();
        assert!(matches!(err, FilterError::EmptyRange { .. }), "{err}");
        let err = time_filter(&range("1h", "1h"), now).unwrap_err();
        assert!(matches!(err, FilterError::EmptyRange { .. }), "{err}");
        assert!(time_filter(&range("2h", "1h"), now).is_ok());
    }

    #[test]
    fn times_parse_as_duration_or_rfc3339() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        assert_eq!(
            parse_time("since", "1h", now).unwrap(),
            (1_000_000 - 3600) * 1000
        );
        assert_eq!(
            parse_time("since", "1970-01-01T00:00:01Z", now).unwrap(),
            1000
        );
        let err = parse_time("until", "yesterday", now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--until"), "{err}");
    }
}
