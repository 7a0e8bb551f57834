//! Timestamps: the session clock of an ETL file and its conversion to UTC.

use std::fmt;

/// 100-nanosecond intervals since 1601-01-01 00:00:00 UTC (a Windows `FILETIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FileTime(pub i64);

/// FILETIME of the Unix epoch.
const UNIX_EPOCH_FILETIME: i64 = 116_444_736_000_000_000;

impl FileTime {
    /// Nanoseconds since the Unix epoch (negative before 1970).
    pub fn unix_nanos(self) -> i128 {
        (i128::from(self.0) - i128::from(UNIX_EPOCH_FILETIME)) * 100
    }
}

impl fmt::Display for FileTime {
    /// Formats as RFC 3339 UTC with 100 ns precision, for example `2020-07-29T00:07:00.6248123Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ticks = self.0 - UNIX_EPOCH_FILETIME;
        let seconds = ticks.div_euclid(10_000_000);
        let fraction = ticks.rem_euclid(10_000_000);
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:07}Z",
            second_of_day / 3600,
            (second_of_day / 60) % 60,
            second_of_day % 60
        )
    }
}

impl serde::Serialize for FileTime {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The clock that event timestamps of a session are counted in (`TRACE_LOGFILE_HEADER`
/// `ReservedFlags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ClockKind {
    /// Query performance counter ticks at `PerfFreq` per second (value 1).
    QueryPerformanceCounter,
    /// System time, already a FILETIME (value 2).
    SystemTime,
    /// CPU cycle counter at `CpuSpeedInMHz` (value 3).
    CpuCycle,
}

/// Converts raw event timestamps to UTC, anchored at the session start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionClock {
    /// Clock kind.
    pub kind: ClockKind,
    /// Raw timestamp of the session start (the log file header event).
    pub start_raw: i64,
    /// UTC time of the session start.
    pub start_utc: FileTime,
    /// Ticks per second of the raw clock.
    pub ticks_per_second: i64,
}

impl SessionClock {
    /// Builds the clock from the log file header fields. An unknown clock kind is treated as
    /// QPC, the default of every ETW session; a zero frequency falls back to FILETIME units.
    pub fn new(
        reserved_flags: u32,
        start_raw: i64,
        start_utc: FileTime,
        perf_freq: i64,
        cpu_mhz: u32,
    ) -> Self {
        let (kind, ticks) = match reserved_flags {
            2 => (ClockKind::SystemTime, 10_000_000),
            3 => (ClockKind::CpuCycle, i64::from(cpu_mhz) * 1_000_000),
            _ => (ClockKind::QueryPerformanceCounter, perf_freq),
        };
        SessionClock {
            kind,
            start_raw,
            start_utc,
            ticks_per_second: if ticks > 0 { ticks } else { 10_000_000 },
        }
    }

    /// Converts a raw timestamp to UTC; out-of-range values saturate.
    pub fn to_utc(&self, raw: i64) -> FileTime {
        if self.kind == ClockKind::SystemTime {
            return FileTime(raw);
        }
        // Fast paths: a 10 MHz clock counts in FILETIME units already, and 64-bit arithmetic
        // covers a day of ticks at any frequency; 128-bit division is several times slower.
        let fast = raw.checked_sub(self.start_raw).and_then(|delta| {
            let hundred_ns = if self.ticks_per_second == 10_000_000 {
                delta
            } else {
                delta.checked_mul(10_000_000)? / self.ticks_per_second
            };
            self.start_utc.0.checked_add(hundred_ns)
        });
        if let Some(utc) = fast {
            return FileTime(utc);
        }
        let delta = i128::from(raw) - i128::from(self.start_raw);
        let hundred_ns = delta * 10_000_000 / i128::from(self.ticks_per_second);
        let utc = i128::from(self.start_utc.0) + hundred_ns;
        FileTime(utc.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
    }

    /// Milliseconds from the session start to a raw timestamp.
    pub fn relative_ms(&self, raw: i64) -> f64 {
        if self.kind == ClockKind::SystemTime {
            return (raw as f64 - self.start_utc.0 as f64) / 10_000.0;
        }
        (raw as f64 - self.start_raw as f64) * 1000.0 / self.ticks_per_second as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetime_formats_as_rfc3339() {
        assert_eq!(
            FileTime(UNIX_EPOCH_FILETIME).to_string(),
            "1970-01-01T00:00:00.0000000Z"
        );
        // 2020-07-29T00:07:00Z is 1595981220 s after the Unix epoch.
        let t = FileTime(UNIX_EPOCH_FILETIME + 1_595_981_220 * 10_000_000 + 6_248_123);
        assert_eq!(t.to_string(), "2020-07-29T00:07:00.6248123Z");
        assert_eq!(FileTime(0).to_string(), "1601-01-01T00:00:00.0000000Z");
    }

    #[test]
    fn qpc_clock_converts_from_start() {
        let clock = SessionClock::new(1, 1_000, FileTime(5_000_000), 1_000, 0);
        assert_eq!(clock.to_utc(2_000), FileTime(15_000_000));
        assert_eq!(clock.relative_ms(1_500), 500.0);
        let ten_mhz = SessionClock::new(1, 1_000, FileTime(5_000_000), 10_000_000, 0);
        assert_eq!(ten_mhz.to_utc(1_500), FileTime(5_000_500));
        assert_eq!(clock.to_utc(i64::MAX), FileTime(i64::MAX));
    }
}
