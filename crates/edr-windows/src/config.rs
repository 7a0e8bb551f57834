//! The sensor's configuration file.
//!
//! Format: TOML at `%ProgramData%\EdrSensor\config.toml` (see [`default_config_path`]). Every
//! section and field is optional and has a default; unknown fields are rejected so that a typo
//! does not silently fall back to a default. [`SensorConfig::validate`] checks every value against
//! its allowed range and names the field and the range in its error.
//!
//! Sections: `[collector]`, `[sessions]` with `[sessions.process]` and `[sessions.bulk]`,
//! `[queue]`, `[logging]`, `[buffer]` and `[transport]`. Other components add their own section
//! as a new field of [`SensorConfig`] with `#[serde(default)]`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the folder under `%ProgramData%` that holds the configuration, logs and state.
pub const DATA_DIR_NAME: &str = "EdrSensor";
/// File name of the configuration inside the data folder.
pub const CONFIG_FILE_NAME: &str = "config.toml";

/// Errors from reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error(
        "cannot read the configuration file {path}: {source}: check that it exists and is readable"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped field.
    #[error("invalid configuration file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    /// A value is outside its allowed range.
    #[error("invalid value {value} for `{field}` in the sensor configuration: {expected}")]
    Invalid {
        field: String,
        value: String,
        expected: &'static str,
    },
    /// The `[buffer]` section is invalid; the message names the field and its allowed range.
    #[error(transparent)]
    Buffer(#[from] edr_sensor::buffer::ConfigError),
    /// The `[transport]` section is invalid; the message names the field and its allowed range.
    #[error(transparent)]
    Transport(#[from] edr_sensor::transport::ConfigError),
    /// The configuration could not be written back as TOML.
    #[error("cannot serialize the configuration: {0}")]
    Serialize(#[from] toml::ser::Error),
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SensorConfig {
    pub collector: CollectorConfig,
    pub sessions: SessionsConfig,
    pub queue: QueueConfig,
    pub logging: LoggingConfig,
    /// The offline ring buffer: directory, capacity, group commit and drain rate.
    pub buffer: edr_sensor::buffer::BufferConfig,
    /// The link to the Collector: batching, acks, heartbeats and reconnect backoff. The
    /// backoff settings also pace enrollment retries.
    pub transport: edr_sensor::transport::TransportConfig,
}

/// Where the sensor enrolls and sends telemetry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// The Collector's URL, for example `https://collector.example:8443`.
    pub url: Option<String>,
}

/// The ETW sessions and how often the loader polls them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Seconds between reads of each session's loss counters, 1 to 10.
    pub poll_interval_secs: u32,
    /// Seconds the loader keeps retrying a session start that fails for lack of resources
    /// before it gives up with `EtwSessionInit`.
    pub start_timeout_secs: u32,
    pub process: SessionSizingConfig,
    pub bulk: SessionSizingConfig,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            poll_interval_secs: 5,
            start_timeout_secs: 120,
            process: SessionSizingConfig::process_default(),
            bulk: SessionSizingConfig::bulk_default(),
        }
    }
}

/// Buffer sizing and flush policy of one ETW session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSizingConfig {
    /// Size of each buffer in KiB, 4 to 1024.
    pub buffer_size_kb: u32,
    /// Buffers allocated at start per logical processor, 2 to 64.
    pub minimum_buffers_per_cpu: u32,
    /// Upper bound on buffers; raised to twice the scaled minimum when lower, 2 to 16384.
    pub maximum_buffers: u32,
    /// ETW's own flush timer in seconds, 1 to 60.
    pub flush_timer_secs: u32,
    /// Milliseconds between explicit flushes by the loader, 1 to 1000; 0 turns them off and
    /// leaves only `flush_timer_secs`.
    pub flush_interval_ms: u32,
}

impl SessionSizingConfig {
    /// Small buffers flushed every 5 ms: a process start reaches the consumer while the process
    /// still exists, so its command line and image can still be read.
    pub const fn process_default() -> Self {
        Self {
            buffer_size_kb: 16,
            minimum_buffers_per_cpu: 4,
            maximum_buffers: 512,
            flush_timer_secs: 1,
            flush_interval_ms: 5,
        }
    }

    /// Larger buffers delivered when full or after one second.
    pub const fn bulk_default() -> Self {
        Self {
            buffer_size_kb: 64,
            minimum_buffers_per_cpu: 4,
            maximum_buffers: 1024,
            flush_timer_secs: 1,
            flush_interval_ms: 0,
        }
    }
}

impl Default for SessionSizingConfig {
    fn default() -> Self {
        Self::bulk_default()
    }
}

/// The queue between the ETW callbacks and the decoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Most records held, 1024 to 16777216.
    pub max_records: u32,
    /// Most heap memory held by queued records in MiB, 1 to 4096.
    pub max_memory_mb: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_records: 65_536,
            max_memory_mb: 256,
        }
    }
}

/// The sensor's own log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// Folder of the rolling log files; default `%ProgramData%\EdrSensor\logs`.
    pub directory: Option<PathBuf>,
    /// `tracing` filter, for example `info` or `edr_windows::loader=debug,info`.
    pub filter: String,
    /// Daily log files kept, 1 to 365.
    pub max_files: u32,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            directory: None,
            filter: "info".to_owned(),
            max_files: 14,
        }
    }
}

impl SensorConfig {
    /// Reads and validates the configuration at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|error| match error {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Serializes the configuration as TOML.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let Self {
            collector,
            sessions,
            queue,
            logging,
            buffer,
            transport,
        } = self;

        if let Some(url) = &collector.url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(invalid(
                "collector.url",
                url,
                "expected an http:// or https:// URL",
            ));
        }

        check_range(
            "sessions.poll_interval_secs",
            sessions.poll_interval_secs,
            1,
            10,
            "expected 1 to 10 seconds, so that every loss is reported within 10 seconds",
        )?;
        check_range(
            "sessions.start_timeout_secs",
            sessions.start_timeout_secs,
            1,
            3600,
            "expected 1 to 3600 seconds",
        )?;
        validate_sizing("sessions.process", &sessions.process)?;
        validate_sizing("sessions.bulk", &sessions.bulk)?;

        check_range(
            "queue.max_records",
            queue.max_records,
            1024,
            16 * 1024 * 1024,
            "expected 1024 to 16777216 records",
        )?;
        check_range(
            "queue.max_memory_mb",
            queue.max_memory_mb,
            1,
            4096,
            "expected 1 to 4096 MiB",
        )?;

        if logging.filter.trim().is_empty() {
            return Err(invalid(
                "logging.filter",
                "\"\"",
                "expected a tracing filter such as \"info\"",
            ));
        }
        check_range(
            "logging.max_files",
            logging.max_files,
            1,
            365,
            "expected 1 to 365 files",
        )?;
        buffer.validate()?;
        transport.validate()?;
        Ok(())
    }
}

fn validate_sizing(section: &str, sizing: &SessionSizingConfig) -> Result<(), ConfigError> {
    let field = |name: &str| format!("{section}.{name}");
    check_range(
        &field("buffer_size_kb"),
        sizing.buffer_size_kb,
        4,
        1024,
        "expected 4 to 1024 KiB",
    )?;
    check_range(
        &field("minimum_buffers_per_cpu"),
        sizing.minimum_buffers_per_cpu,
        2,
        64,
        "expected 2 to 64 buffers per processor",
    )?;
    check_range(
        &field("maximum_buffers"),
        sizing.maximum_buffers,
        2,
        16_384,
        "expected 2 to 16384 buffers",
    )?;
    check_range(
        &field("flush_timer_secs"),
        sizing.flush_timer_secs,
        1,
        60,
        "expected 1 to 60 seconds",
    )?;
    if sizing.flush_interval_ms > 1000 {
        return Err(invalid(
            &field("flush_interval_ms"),
            &sizing.flush_interval_ms.to_string(),
            "expected 0 (off) to 1000 milliseconds; use flush_timer_secs for longer intervals",
        ));
    }
    Ok(())
}

fn check_range(
    field: &str,
    value: u32,
    min: u32,
    max: u32,
    expected: &'static str,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(field, &value.to_string(), expected))
    }
}

fn invalid(field: &str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        value: value.to_owned(),
        expected,
    }
}

/// Returns `%ProgramData%\EdrSensor`, or `C:\ProgramData\EdrSensor` when the variable is unset.
pub fn default_data_dir() -> PathBuf {
    let program_data = std::env::var_os("ProgramData")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"));
    program_data.join(DATA_DIR_NAME)
}

/// Returns `%ProgramData%\EdrSensor\config.toml`.
pub fn default_config_path() -> PathBuf {
    default_data_dir().join(CONFIG_FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let config = SensorConfig::parse("").unwrap();
        assert_eq!(config, SensorConfig::default());
        assert_eq!(config.sessions.process.flush_interval_ms, 5);
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = SensorConfig::default().to_toml().unwrap();
        assert_eq!(SensorConfig::parse(&text).unwrap(), SensorConfig::default());
    }

    #[test]
    fn partial_section_overrides_one_value() {
        let config = SensorConfig::parse("[sessions]\npoll_interval_secs = 2\n").unwrap();
        assert_eq!(config.sessions.poll_interval_secs, 2);
        assert_eq!(
            config.sessions.process,
            SessionSizingConfig::process_default()
        );
    }

    #[test]
    fn invalid_value_names_field_and_range() {
        let text = "[sessions.bulk]\nbuffer_size_kb = 4096\nminimum_buffers_per_cpu = 4\n\
                    maximum_buffers = 64\nflush_timer_secs = 1\nflush_interval_ms = 0\n";
        let error = SensorConfig::parse(text).unwrap_err().to_string();
        assert_eq!(
            error,
            "invalid value 4096 for `sessions.bulk.buffer_size_kb` in the sensor configuration: expected 4 to 1024 KiB"
        );
    }

    #[test]
    fn poll_interval_above_ten_seconds_rejected() {
        let error = SensorConfig::parse("[sessions]\npoll_interval_secs = 30\n").unwrap_err();
        assert!(
            matches!(error, ConfigError::Invalid { ref field, .. } if field == "sessions.poll_interval_secs")
        );
    }

    #[test]
    fn unknown_field_rejected() {
        let error = SensorConfig::parse("[sessions]\npol_interval_secs = 3\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("pol_interval_secs"), "{error}");
    }

    #[test]
    fn collector_url_must_be_http() {
        let error = SensorConfig::parse("[collector]\nurl = \"ftp://x\"\n").unwrap_err();
        assert!(
            matches!(error, ConfigError::Invalid { ref field, .. } if field == "collector.url")
        );
    }

    #[test]
    fn transport_section_validated() {
        let config = SensorConfig::parse("[transport]\nheartbeat_interval_secs = 5\n").unwrap();
        assert_eq!(config.transport.heartbeat_interval_secs, 5);

        let error = SensorConfig::parse("[transport]\nheartbeat_interval_secs = 0\n").unwrap_err();
        assert!(
            error.to_string().contains("heartbeat_interval_secs = 0"),
            "{error}"
        );
    }

    #[test]
    fn load_reports_missing_file_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let error = SensorConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("absent.toml"), "{error}");
    }

    #[test]
    fn load_reads_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE_NAME);
        std::fs::write(&path, "[queue]\nmax_records = 2048\n").unwrap();
        assert_eq!(SensorConfig::load(&path).unwrap().queue.max_records, 2048);
    }
}
