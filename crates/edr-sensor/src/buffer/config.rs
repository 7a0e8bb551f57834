//! Operator configuration of the ring buffer, as read from the `[buffer]` table of the sensor's
//! TOML file, and its validation into [`BufferOptions`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::platform;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Smallest capacity an operator may configure.
pub const MIN_CAPACITY_BYTES: u64 = 64 * MIB;
/// Largest capacity an operator may configure.
pub const MAX_CAPACITY_BYTES: u64 = 5 * GIB;
/// Capacity used when the configuration names none.
pub const DEFAULT_CAPACITY_BYTES: u64 = 500 * MIB;

const MIN_SEGMENT_BYTES: u64 = MIB;
const MAX_SEGMENT_BYTES: u64 = 64 * MIB;
const DEFAULT_SEGMENT_BYTES: u64 = 32 * MIB;

const MAX_SYNC_INTERVAL_MS: u64 = 1000;
const DEFAULT_SYNC_INTERVAL_MS: u64 = 1000;

const MIN_RECORD_LIMIT_BYTES: u64 = KIB;
const MAX_RECORD_LIMIT_BYTES: u64 = 4 * MIB;
const DEFAULT_MAX_RECORD_BYTES: u64 = MIB;

const MIN_DRAIN_RATE_BYTES: u64 = 16 * KIB;
const MAX_DRAIN_RATE_BYTES: u64 = GIB;
const DEFAULT_DRAIN_RATE_BYTES: u64 = 2 * MIB;

/// The `[buffer]` table of the sensor configuration.
///
/// Every field has a default, so an empty table is valid. Call [`BufferConfig::validate`] to get
/// the options that [`super::Buffer::open`] takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferConfig {
    /// Directory holding the segments and the cursor. `None` selects
    /// [`platform::default_directory`]: `%ProgramData%\edr\buffer` on Windows,
    /// `/var/lib/edr-sensor/buffer` elsewhere.
    pub directory: Option<PathBuf>,
    /// Maximum bytes on disk for both lanes together, 64 MiB to 5 GiB.
    pub capacity_bytes: u64,
    /// Size at which a segment file is closed and a new one started, 1 MiB to 64 MiB and at
    /// most a quarter of the capacity. Eviction frees one segment at a time.
    pub segment_bytes: u64,
    /// Maximum time in milliseconds between an append and the fsync that makes it durable,
    /// 0 to 1000. 0 fsyncs inside every append.
    pub sync_interval_ms: u64,
    /// Largest accepted record payload in bytes, 1 KiB to 4 MiB.
    pub max_record_bytes: u64,
    /// Drain rate cap in payload bytes per second, 16 KiB to 1 GiB, or 0 for no cap.
    pub drain_rate_bytes_per_sec: u64,
    /// Drain rate cap in records per second, or 0 for no cap.
    pub drain_rate_records_per_sec: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            directory: None,
            capacity_bytes: DEFAULT_CAPACITY_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            sync_interval_ms: DEFAULT_SYNC_INTERVAL_MS,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            drain_rate_bytes_per_sec: DEFAULT_DRAIN_RATE_BYTES,
            drain_rate_records_per_sec: 0,
        }
    }
}

/// Options that [`super::Buffer::open`] takes.
///
/// [`BufferConfig::validate`] builds them within the ranges an operator may configure. Tests and
/// tools may build them directly with smaller sizes: `Buffer::open` then checks only that they
/// are consistent with each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferOptions {
    /// Directory holding the segments and the cursor.
    pub directory: PathBuf,
    /// Maximum bytes on disk for both lanes together.
    pub capacity_bytes: u64,
    /// Size at which a segment file is closed and a new one started.
    pub segment_bytes: u64,
    /// Maximum time between an append and the fsync that makes it durable; zero fsyncs inside
    /// every append.
    pub sync_interval: Duration,
    /// Largest accepted record payload in bytes.
    pub max_record_bytes: usize,
    /// Drain rate cap in payload bytes per second, `None` for no cap.
    pub drain_rate_bytes_per_sec: Option<u64>,
    /// Drain rate cap in records per second, `None` for no cap.
    pub drain_rate_records_per_sec: Option<u64>,
}

impl BufferOptions {
    /// Builds options for `directory` with the configuration defaults.
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        let defaults = BufferConfig::default();
        Self {
            directory: directory.into(),
            capacity_bytes: defaults.capacity_bytes,
            segment_bytes: defaults.segment_bytes,
            sync_interval: Duration::from_millis(defaults.sync_interval_ms),
            max_record_bytes: usize::try_from(defaults.max_record_bytes).unwrap_or(usize::MAX),
            drain_rate_bytes_per_sec: Some(defaults.drain_rate_bytes_per_sec),
            drain_rate_records_per_sec: None,
        }
    }
}

/// A configuration value outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `buffer.capacity_bytes` is below 64 MiB or above 5 GiB.
    #[error(
        "buffer capacity {} is {} the {} {}: set buffer.capacity_bytes between {} and {}",
        Bytes(*value), side_word(*value, MIN_CAPACITY_BYTES), limit_word(*value, MIN_CAPACITY_BYTES),
        Bytes(limit_of(*value, MIN_CAPACITY_BYTES, MAX_CAPACITY_BYTES)),
        Bytes(MIN_CAPACITY_BYTES), Bytes(MAX_CAPACITY_BYTES)
    )]
    Capacity {
        /// The configured value in bytes.
        value: u64,
    },
    /// `buffer.segment_bytes` is outside 1 MiB to 64 MiB or above a quarter of the capacity.
    #[error(
        "buffer segment size {} is outside the allowed range: set buffer.segment_bytes between {} and {} (at most a quarter of buffer.capacity_bytes)",
        Bytes(*value), Bytes(MIN_SEGMENT_BYTES), Bytes(*max)
    )]
    SegmentSize {
        /// The configured value in bytes.
        value: u64,
        /// The largest value allowed with the configured capacity.
        max: u64,
    },
    /// `buffer.sync_interval_ms` is above 1000.
    #[error(
        "buffer sync interval {value} ms is above the maximum {MAX_SYNC_INTERVAL_MS} ms: set buffer.sync_interval_ms between 0 and {MAX_SYNC_INTERVAL_MS}"
    )]
    SyncInterval {
        /// The configured value in milliseconds.
        value: u64,
    },
    /// `buffer.max_record_bytes` is outside 1 KiB to 4 MiB or above the segment size.
    #[error(
        "buffer record limit {} is outside the allowed range: set buffer.max_record_bytes between {} and {} (and below buffer.segment_bytes)",
        Bytes(*value), Bytes(MIN_RECORD_LIMIT_BYTES), Bytes(MAX_RECORD_LIMIT_BYTES)
    )]
    MaxRecord {
        /// The configured value in bytes.
        value: u64,
    },
    /// `buffer.drain_rate_bytes_per_sec` is neither 0 nor within 16 KiB to 1 GiB.
    #[error(
        "buffer drain rate {}/s is outside the allowed range: set buffer.drain_rate_bytes_per_sec to 0 (no cap) or between {} and {}",
        Bytes(*value), Bytes(MIN_DRAIN_RATE_BYTES), Bytes(MAX_DRAIN_RATE_BYTES)
    )]
    DrainRate {
        /// The configured value in bytes per second.
        value: u64,
    },
    /// `directory` is unset and no platform default could be determined.
    #[error(
        "no default buffer directory on this system: {reason}; set buffer.directory to an absolute path"
    )]
    NoDefaultDirectory {
        /// Why the default failed, for example an unset `ProgramData` variable.
        reason: String,
    },
}

impl BufferConfig {
    /// Checks every value against its allowed range and returns the options for
    /// [`super::Buffer::open`].
    pub fn validate(&self) -> Result<BufferOptions, ConfigError> {
        if !(MIN_CAPACITY_BYTES..=MAX_CAPACITY_BYTES).contains(&self.capacity_bytes) {
            return Err(ConfigError::Capacity {
                value: self.capacity_bytes,
            });
        }

        let max_segment = MAX_SEGMENT_BYTES.min(self.capacity_bytes / 4);
        if !(MIN_SEGMENT_BYTES..=max_segment).contains(&self.segment_bytes) {
            return Err(ConfigError::SegmentSize {
                value: self.segment_bytes,
                max: max_segment,
            });
        }

        if self.sync_interval_ms > MAX_SYNC_INTERVAL_MS {
            return Err(ConfigError::SyncInterval {
                value: self.sync_interval_ms,
            });
        }

        let record_range = MIN_RECORD_LIMIT_BYTES..=MAX_RECORD_LIMIT_BYTES;
        if !record_range.contains(&self.max_record_bytes)
            || self.max_record_bytes >= self.segment_bytes
        {
            return Err(ConfigError::MaxRecord {
                value: self.max_record_bytes,
            });
        }

        let rate = self.drain_rate_bytes_per_sec;
        if rate != 0 && !(MIN_DRAIN_RATE_BYTES..=MAX_DRAIN_RATE_BYTES).contains(&rate) {
            return Err(ConfigError::DrainRate { value: rate });
        }

        let directory = match &self.directory {
            Some(directory) => directory.clone(),
            None => platform::default_directory()
                .map_err(|reason| ConfigError::NoDefaultDirectory { reason })?,
        };

        Ok(BufferOptions {
            directory,
            capacity_bytes: self.capacity_bytes,
            segment_bytes: self.segment_bytes,
            sync_interval: Duration::from_millis(self.sync_interval_ms),
            // The range check above keeps the value at most 4 MiB.
            max_record_bytes: usize::try_from(self.max_record_bytes).unwrap_or(usize::MAX),
            drain_rate_bytes_per_sec: (rate != 0).then_some(rate),
            drain_rate_records_per_sec: (self.drain_rate_records_per_sec != 0)
                .then_some(self.drain_rate_records_per_sec),
        })
    }
}

fn side_word(value: u64, min: u64) -> &'static str {
    if value < min { "below" } else { "above" }
}

fn limit_word(value: u64, min: u64) -> &'static str {
    if value < min { "minimum" } else { "maximum" }
}

fn limit_of(value: u64, min: u64, max: u64) -> u64 {
    if value < min { min } else { max }
}

/// A byte count shown in the largest binary unit that keeps it readable, e.g. `64 MiB`.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self(value) = *self;
        let units = [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")];
        for (size, name) in units {
            if value >= size {
                if value % size == 0 {
                    return write!(f, "{} {name}", value / size);
                }
                // Precision loss is irrelevant for a message.
                #[expect(clippy::cast_precision_loss, reason = "display only")]
                let scaled = value as f64 / size as f64;
                return write!(f, "{scaled:.1} {name} ({value} bytes)");
            }
        }
        write!(f, "{value} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in_tmp() -> BufferConfig {
        BufferConfig {
            directory: Some(PathBuf::from("/tmp/buffer")),
            ..BufferConfig::default()
        }
    }

    #[test]
    fn defaults_are_valid() {
        let options = config_in_tmp().validate().unwrap();
        assert_eq!(options.capacity_bytes, 500 * MIB);
        assert_eq!(options.sync_interval, Duration::from_secs(1));
        assert_eq!(options.drain_rate_bytes_per_sec, Some(2 * MIB));
    }

    #[test]
    fn capacity_below_minimum_names_value_and_range() {
        let config = BufferConfig {
            capacity_bytes: 10 * MIB,
            ..config_in_tmp()
        };
        let message = config.validate().unwrap_err().to_string();
        assert_eq!(
            message,
            "buffer capacity 10 MiB is below the minimum 64 MiB: \
             set buffer.capacity_bytes between 64 MiB and 5 GiB"
        );
    }

    #[test]
    fn capacity_above_maximum_names_value_and_range() {
        let config = BufferConfig {
            capacity_bytes: 6 * GIB,
            ..config_in_tmp()
        };
        let message = config.validate().unwrap_err().to_string();
        assert_eq!(
            message,
            "buffer capacity 6 GiB is above the maximum 5 GiB: \
             set buffer.capacity_bytes between 64 MiB and 5 GiB"
        );
    }

    #[test]
    fn capacity_limits_are_inclusive() {
        for capacity in [MIN_CAPACITY_BYTES, MAX_CAPACITY_BYTES] {
            let config = BufferConfig {
                capacity_bytes: capacity,
                segment_bytes: 16 * MIB,
                ..config_in_tmp()
            };
            assert!(config.validate().is_ok(), "capacity {capacity}");
        }
    }

    #[test]
    fn segment_larger_than_quarter_capacity_is_rejected() {
        let config = BufferConfig {
            capacity_bytes: 64 * MIB,
            segment_bytes: 32 * MIB,
            ..config_in_tmp()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("32 MiB"), "{message}");
        assert!(message.contains("between 1 MiB and 16 MiB"), "{message}");
    }

    #[test]
    fn sync_interval_above_one_second_is_rejected() {
        let config = BufferConfig {
            sync_interval_ms: 5000,
            ..config_in_tmp()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "buffer sync interval 5000 ms is above the maximum 1000 ms: \
             set buffer.sync_interval_ms between 0 and 1000"
        );
    }

    #[test]
    fn drain_rate_zero_means_no_cap() {
        let config = BufferConfig {
            drain_rate_bytes_per_sec: 0,
            ..config_in_tmp()
        };
        assert_eq!(config.validate().unwrap().drain_rate_bytes_per_sec, None);
        let config = BufferConfig {
            drain_rate_bytes_per_sec: 100,
            ..config_in_tmp()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::DrainRate { value: 100 })
        ));
    }

    #[test]
    fn record_limit_outside_range_is_rejected() {
        let config = BufferConfig {
            max_record_bytes: 8 * MIB,
            ..config_in_tmp()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::MaxRecord { .. })
        ));
    }

    #[test]
    fn toml_table_deserializes_with_defaults() {
        let config: BufferConfig =
            toml::from_str("capacity_bytes = 1073741824\nsync_interval_ms = 200\n").unwrap();
        assert_eq!(config.capacity_bytes, GIB);
        assert_eq!(config.sync_interval_ms, 200);
        assert_eq!(config.segment_bytes, DEFAULT_SEGMENT_BYTES);
        assert!(toml::from_str::<BufferConfig>("capacity = 1").is_err());
    }

    #[test]
    fn bytes_display_uses_binary_units() {
        assert_eq!(Bytes(64 * MIB).to_string(), "64 MiB");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB (1536 bytes)");
        assert_eq!(Bytes(100).to_string(), "100 bytes");
    }
}
