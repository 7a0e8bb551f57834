//! Operator configuration of the transport, as read from the `[transport]` table of the
//! sensor's TOML file.

use std::time::Duration;

use serde::{Deserialize, Serialize};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The `[transport]` table of the sensor configuration.
///
/// Every field has a default, so an empty table is valid. Call [`TransportConfig::validate`]
/// before use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// A batch is sent once its payload bytes reach this size, 4 KiB to 2 MiB. The record that
    /// crosses the limit still joins the batch, so a batch holds at most this many bytes plus
    /// one record (the ring buffer's `max_record_bytes`).
    pub batch_max_bytes: u64,
    /// A batch is sent once its oldest record has waited this long, 1 to 10,000 milliseconds.
    pub batch_max_delay_ms: u64,
    /// Batches sent and not yet acknowledged before the sensor waits for an ack, 1 to 256.
    pub max_unacked_batches: u64,
    /// Seconds the sensor waits for an ack of its oldest unacknowledged batch, or of its
    /// oldest unacknowledged heartbeat, before it drops the connection and resends, 5 to 3600.
    pub ack_timeout_secs: u64,
    /// Seconds between heartbeats, 1 to 3600.
    pub heartbeat_interval_secs: u64,
    /// First reconnect delay cap in milliseconds, 10 to 60,000; the cap doubles per failed
    /// attempt and the actual delay is drawn uniformly below it (full jitter).
    pub backoff_initial_ms: u64,
    /// Largest reconnect delay cap in milliseconds, from `backoff_initial_ms` to 3,600,000.
    pub backoff_max_ms: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            batch_max_bytes: MIB,
            batch_max_delay_ms: 200,
            max_unacked_batches: 32,
            ack_timeout_secs: 60,
            heartbeat_interval_secs: 30,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
        }
    }
}

/// A transport setting outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transport setting {name} = {value}: it must be between {min} and {max}")]
pub struct ConfigError {
    /// Name of the setting as written in the `[transport]` table.
    pub name: &'static str,
    /// The configured value.
    pub value: u64,
    /// Smallest allowed value.
    pub min: u64,
    /// Largest allowed value.
    pub max: u64,
}

impl TransportConfig {
    /// Checks every setting against its range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&'static str, u64, u64, u64); 7] = [
            ("batch_max_bytes", self.batch_max_bytes, 4 * KIB, 2 * MIB),
            ("batch_max_delay_ms", self.batch_max_delay_ms, 1, 10_000),
            ("max_unacked_batches", self.max_unacked_batches, 1, 256),
            ("ack_timeout_secs", self.ack_timeout_secs, 5, 3600),
            (
                "heartbeat_interval_secs",
                self.heartbeat_interval_secs,
                1,
                3600,
            ),
            ("backoff_initial_ms", self.backoff_initial_ms, 10, 60_000),
            (
                "backoff_max_ms",
                self.backoff_max_ms,
                self.backoff_initial_ms,
                3_600_000,
            ),
        ];
        for (name, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(ConfigError {
                    name,
                    value,
                    min,
                    max,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn batch_max_delay(&self) -> Duration {
        Duration::from_millis(self.batch_max_delay_ms)
    }

    pub(crate) fn ack_timeout(&self) -> Duration {
        Duration::from_secs(self.ack_timeout_secs)
    }

    pub(crate) fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(TransportConfig::default().validate(), Ok(()));
    }

    #[test]
    fn empty_table_gives_defaults() {
        let config: TransportConfig = toml::from_str("").unwrap();
        assert_eq!(config, TransportConfig::default());
    }

    #[test]
    fn out_of_range_names_value_and_range() {
        let config = TransportConfig {
            batch_max_bytes: 10,
            ..TransportConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert_eq!(error.name, "batch_max_bytes");
        assert_eq!(
            error.to_string(),
            "invalid transport setting batch_max_bytes = 10: it must be between 4096 and 2097152"
        );
    }

    #[test]
    fn backoff_max_below_initial_rejected() {
        let config = TransportConfig {
            backoff_initial_ms: 1000,
            backoff_max_ms: 500,
            ..TransportConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert_eq!(error.name, "backoff_max_ms");
        assert_eq!(error.min, 1000);
    }

    #[test]
    fn unknown_field_rejected() {
        let result: Result<TransportConfig, _> = toml::from_str("batch_bytes = 5");
        assert!(result.is_err());
    }
}
