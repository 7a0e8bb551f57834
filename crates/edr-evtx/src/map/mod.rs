//! Mappers from event log records to OCSF, one module per source.
//!
//! Each mapper takes the fields it maps out of the record (`Record::take_*`) and moves the
//! rest under `unmapped`, so no source value is lost.

pub(crate) mod defender;
pub(crate) mod powershell;
pub(crate) mod security;
pub(crate) mod sysmon;
pub(crate) mod system;

use edr_ocsf::Event;
use edr_ocsf::model::{Fingerprint, Process, User};

use crate::convert::Converter;
use crate::record::Record;

/// Channel of Sysmon records.
pub const SYSMON_CHANNEL: &str = "Microsoft-Windows-Sysmon/Operational";
/// Channel of PowerShell script block and module logging.
pub const POWERSHELL_CHANNEL: &str = "Microsoft-Windows-PowerShell/Operational";
/// Channel of Defender detections.
pub const DEFENDER_CHANNEL: &str = "Microsoft-Windows-Windows Defender/Operational";

/// Event ids with a mapper, per channel.
pub const MAPPED_IDS: &[(&str, &[u32])] = &[
    (
        SYSMON_CHANNEL,
        &[
            1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 17, 18, 19, 20, 21, 22, 23, 25, 26,
        ],
    ),
    (
        "Security",
        &[
            1102, 4624, 4625, 4634, 4647, 4648, 4672, 4688, 4689, 4697, 4698, 4699, 4702, 4720,
            4722, 4724, 4726, 4728, 4732, 4738, 4740, 4768, 4769, 4770, 4771, 4776, 5140, 5145,
            5154, 5155, 5156, 5157, 5158, 5159,
        ],
    ),
    (POWERSHELL_CHANNEL, &[4103, 4104]),
    ("System", &[104, 7045]),
    (DEFENDER_CHANNEL, &[1116, 1117]),
];

/// Runs the mapper for `record`, if any; returns whether one ran.
pub(crate) fn dispatch(
    converter: &mut Converter,
    record: &mut Record,
    out: &mut Vec<Box<Event>>,
) -> bool {
    let event = match (record.channel.as_str(), record.provider.as_str()) {
        (SYSMON_CHANNEL, _) | (_, "Microsoft-Windows-Sysmon") => sysmon::map(converter, record),
        ("Security", _) => security::map(converter, record),
        (POWERSHELL_CHANNEL, _) => return powershell::map(converter, record, out),
        ("System", _) => system::map(record),
        (DEFENDER_CHANNEL, _) | (_, "Microsoft-Windows-Windows Defender") => defender::map(record),
        _ => None,
    };
    match event {
        Some(event) => {
            out.push(event);
            true
        }
        None => false,
    }
}

/// Parses Sysmon's `Hashes` field (`SHA1=..,MD5=..,SHA256=..,IMPHASH=..`).
pub(crate) fn parse_hashes(text: &str) -> Option<Vec<Fingerprint>> {
    let hashes: Vec<Fingerprint> = text
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(_, value)| !value.is_empty())
        .map(|(label, value)| Fingerprint::from_label(label.trim(), value.trim()))
        .collect();
    (!hashes.is_empty()).then_some(hashes)
}

/// Parses `YYYY-MM-DD HH:MM:SS[.fff]` (Sysmon `UtcTime`) or the same with `T` and `Z`
/// into ms since the Unix epoch.
pub(crate) fn parse_utc_time(text: &str) -> Option<i64> {
    let text = text.trim().trim_end_matches('Z');
    let (date, time) = text.split_once([' ', 'T'])?;
    let mut date_parts = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (
        date_parts.next()??,
        date_parts.next()??,
        date_parts.next()??,
    );
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut clock_parts = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (
        clock_parts.next()??,
        clock_parts.next()??,
        clock_parts.next()??,
    );
    // Milliseconds are the first three digits of the fraction, padded with zeros.
    let mut millis = 0;
    let mut digits = fraction.chars();
    for _ in 0..3 {
        millis = millis * 10 + i64::from(digits.next().map_or(Some(0), |d| d.to_digit(10))?);
    }
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Builds a user from Sysmon's `DOMAIN\name` form.
pub(crate) fn user_from_account(account: Option<String>) -> Option<User> {
    User::from_parts(None, account.as_deref(), None)
}

/// Builds a bare process with pid and image, for a process the cache does not hold.
pub(crate) fn process_from(pid: Option<u32>, image: Option<String>) -> Process {
    let file = image.as_deref().map(edr_ocsf::model::File::from_path);
    Process {
        pid,
        name: file.as_ref().map(|f| f.name.clone()),
        path: image,
        file,
        ..Process::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_time_parses_to_epoch_ms() {
        assert_eq!(parse_utc_time("1970-01-01 00:00:00.000"), Some(0));
        assert_eq!(
            parse_utc_time("2021-12-04 21:19:16.741"),
            Some(1_638_652_756_741)
        );
        assert_eq!(
            parse_utc_time("2020-12-11T12:28:01.177Z"),
            Some(1_607_689_681_177)
        );
        assert_eq!(parse_utc_time("2021-13-04 21:19:16"), None);
        assert_eq!(parse_utc_time("garbage"), None);
    }

    #[test]
    fn sysmon_hashes_parse() {
        let hashes = parse_hashes("SHA1=AA,MD5=BB,SHA256=CC,IMPHASH=DD").unwrap();
        let ids: Vec<u8> = hashes.iter().map(|h| h.algorithm_id).collect();
        assert_eq!(ids, vec![2, 1, 3, 18]);
    }
}
