//! Command-line definitions.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::store::SyncMode;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "EDR Collector: enrols sensors and receives their telemetry"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the data directory, the Collector CA and the database.
    Init {
        /// Directory for the CA and the database.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Create, list and revoke enrollment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List and revoke enrolled sensors.
    Sensors {
        #[command(subcommand)]
        command: SensorsCommand,
    },
    /// Query stored OCSF events.
    ///
    /// A stored event that cannot be read (a damaged row) is skipped with a warning on standard
    /// error. The other events are printed, and the command then exits with status 3.
    Events(EventsArgs),
    /// Queue a command for a sensor.
    #[command(name = "command")]
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// List queued commands and their results.
    Commands {
        #[command(subcommand)]
        command: CommandsCommand,
    },
    /// Write stored OCSF events to files.
    ///
    /// A stored event that cannot be read (a damaged row) is skipped with a warning on standard
    /// error. The other events are written, and the command then exits with status 3.
    Export(ExportArgs),
    /// Serve enrollment, telemetry and command RPCs over TLS.
    ///
    /// Only one `serve` runs per data directory. It locks DATA_DIR/collector.lock, and a second
    /// `serve` on the same directory exits with an error naming the PID of the first.
    Serve {
        /// Collector data directory, as created by `edr-collector init`.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to listen on, for example 0.0.0.0:7443; port 0 picks a free port.
        #[arg(long, value_parser = parse_listen_address)]
        listen: SocketAddr,
        /// DNS name or IP address that sensors use to reach this Collector; repeatable.
        /// localhost, 127.0.0.1, ::1 and a specific listen IP are always included.
        #[arg(long = "server-name", value_parser = parse_server_name)]
        server_names: Vec<String>,
        /// Commit durability: `full` makes every acked batch survive a power loss;
        /// `normal` survives a Collector crash only and is faster.
        #[arg(long, value_enum, default_value = "full")]
        sync: SyncMode,
        /// Largest gRPC message accepted, after decompression, in bytes.
        #[arg(long, default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
        max_message_bytes: u64,
        /// Maximum number of records accepted in one event batch.
        #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
        max_records_per_batch: u64,
        /// A telemetry stream that sends nothing for this long is closed, for example 2m.
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        stream_idle_timeout: humantime::Duration,
        /// A connection that sends no bytes for this long is closed, including one that never
        /// sends a request; HTTP/2 pings every 20 s keep healthy idle connections alive.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        connection_idle_timeout: humantime::Duration,
        /// Maximum number of concurrent RPCs on one connection.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
        max_streams_per_connection: u32,
        /// Maximum number of connections open at once; a new connection above it is closed
        /// at once. Each connection uses one file descriptor, so keep `ulimit -n` above it.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
        max_connections: u64,
        /// Maximum number of TLS handshakes in progress at once; a new connection above it is
        /// closed at once and the sensor retries with backoff.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
        max_pending_handshakes: u64,
        /// Time a client has from connecting to finishing the TLS handshake, for example 10s.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        handshake_timeout: humantime::Duration,
        /// Address for the Prometheus metrics listener (plain HTTP), for example
        /// 127.0.0.1:9464; no listener when absent.
        #[arg(long, value_parser = parse_listen_address)]
        metrics_listen: Option<SocketAddr>,
        /// Delete events whose OCSF time is older than this, for example 30d; kept forever
        /// when absent.
        #[arg(long, value_parser = parse_duration)]
        retention_max_age: Option<humantime::Duration>,
        /// Delete the oldest events while the database uses more than this many bytes; no
        /// size limit when absent.
        #[arg(long)]
        retention_max_bytes: Option<u64>,
        /// How often retention runs, for example 5m.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        retention_interval: humantime::Duration,
        /// Lifetime of the client certificates issued at enrollment and renewal, 10s to 365d.
        /// Sensors renew once two thirds of it have passed.
        #[arg(long, default_value = "30d")]
        sensor_certificate_lifetime: humantime::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token and print it on standard output.
    Create {
        /// Collector data directory, as created by `edr-collector init`.
        #[arg(long)]
        data_dir: PathBuf,
        /// How long the token stays valid, for example 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: humantime::Duration,
        /// How many sensors may enroll with the token.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        uses: u32,
        /// Label stored with the token and the sensors enrolled with it, as key=value;
        /// repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List tokens (never their secrets).
    List {
        /// Collector data directory, as created by `edr-collector init`.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Revoke a token so that no further sensor can enroll with it.
    Revoke {
        /// Collector data directory, as created by `edr-collector init`.
        #[arg(long)]
        data_dir: PathBuf,
        /// Token id, as shown by `token list`.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SensorsCommand {
    /// List enrolled sensors.
    List {
        /// Collector data directory, as created by `edr-collector init`.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Revoke a sensor: a running `serve` rejects its certificates within a few seconds.
    Revoke {
        /// Collector data directory, as created by `edr-collector init`.
        #[arg(long)]
        data_dir: PathBuf,
        /// Sensor id, as shown by `sensors list`.
        id: String,
    },
}

/// Filters shared by `events` and `export`.
#[derive(Debug, clap::Args)]
pub(crate) struct TimeRange {
    /// Only events at or after this time: a duration before now (30m, 1h, 7d) or an RFC 3339
    /// time (2026-12-04T10:00:00Z).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Only events before this time, in the same forms as --since.
    #[arg(long)]
    pub(crate) until: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct EventsArgs {
    /// Collector data directory, as created by `edr-collector init`.
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// Only events of this sensor id.
    #[arg(long)]
    pub(crate) sensor: Option<String>,
    /// Only events of this OCSF class: its class_uid (1007) or name ("Process Activity",
    /// process_activity).
    #[arg(long)]
    pub(crate) class: Option<String>,
    #[command(flatten)]
    pub(crate) range: TimeRange,
    /// Only events whose JSON attribute at FIELD equals VALUE, for example
    /// process.file.name=cmd.exe; repeatable, all must match.
    #[arg(long = "where", value_name = "FIELD=VALUE")]
    pub(crate) conditions: Vec<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) format: EventsFormat,
    /// Maximum number of events to print, at least 1. Skipped damaged rows do not count.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) limit: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum EventsFormat {
    /// One line per event with the indexed columns.
    Table,
    /// One OCSF JSON object per line, as stored.
    Jsonl,
}

#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Queue a ping; the sensor replies with a pong when it receives it before the TTL ends.
    Ping {
        /// Collector data directory, as created by `edr-collector init`.
        #[arg(long)]
        data_dir: PathBuf,
        /// Sensor id, as shown by `sensors list`.
        sensor: String,
        /// How long the command stays valid, for example 30s, 5m.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        ttl: humantime::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CommandsCommand {
    /// List commands, newest first, with their results.
    List {
        /// Collector data directory, as created by `edr-collector init`.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// Collector data directory, as created by `edr-collector init`.
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    #[arg(long, value_enum)]
    pub(crate) format: ExportFormat,
    /// Directory to write into; created when missing.
    #[arg(long)]
    pub(crate) output: PathBuf,
    #[command(flatten)]
    pub(crate) range: TimeRange,
    /// AWS Region written into the partition path (region=...); set it to the Region of the
    /// target Security Lake, for example us-east-1.
    #[arg(long, default_value = "local", value_parser = parse_region)]
    pub(crate) region: String,
    /// AWS account id written into the partition path (accountId=...): 12 digits.
    #[arg(long, default_value = "000000000000", value_parser = parse_account_id)]
    pub(crate) account_id: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ExportFormat {
    /// JSON lines, one OCSF event per line.
    Jsonl,
    /// Apache Parquet with zstd compression.
    Parquet,
}

/// Parses a name for the server certificate: an IP address, or a DNS name of letters, digits
/// and hyphens in dot-separated labels of at most 63 characters (253 in all).
/// Parses an IP address and port to listen on. Host names are not resolved, so that the
/// address a Collector binds does not depend on DNS, and the error message explains this.
fn parse_listen_address(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!(
            "\"{value}\" is not an IP address and port: write it as 127.0.0.1:7443, 0.0.0.0:7443 or [::1]:7443 (host names such as localhost are not resolved)"
        )
    })
}

fn parse_server_name(value: &str) -> Result<String, String> {
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(value.to_string());
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    // A name whose last label is all digits, such as 127.1 or 999.1.1.1, reads as a
    // malformed IP address, and sensors refuse it in a Collector URL.
    let numeric_tail = name
        .rsplit('.')
        .next()
        .is_some_and(|label| label.bytes().all(|b| b.is_ascii_digit()));
    let valid = !numeric_tail
        && !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!(
            "invalid server name \"{value}\": use the DNS name sensors connect to, such as collector.example.com, or an IP address"
        ))
    }
}

/// Parses an AWS Region name in the form AWS uses (`us-east-1`, `us-gov-west-1`): a
/// two-letter area, one or more lowercase words and a number, joined by hyphens. The default
/// `local` marks files not meant for a Security Lake. The value becomes a directory name.
fn parse_region(value: &str) -> Result<String, String> {
    let parts: Vec<&str> = value.split('-').collect();
    let aws = value.len() <= 32
        && parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty();
    if aws || value == "local" {
        Ok(value.to_string())
    } else {
        Err(format!(
            "invalid Region \"{value}\": use an AWS Region name such as us-east-1, or leave --region out for local files"
        ))
    }
}

/// Parses an AWS account id: exactly 12 digits.
fn parse_account_id(value: &str) -> Result<String, String> {
    if value.len() == 12 && value.bytes().all(|b| b.is_ascii_digit()) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "invalid AWS account id \"{value}\": it must be exactly 12 digits, such as 123456789012"
        ))
    }
}

/// Maximum duration that any option accepts. It is far above any sensible timeout, TTL or
/// retention age, and short enough that adding it to the current time cannot overflow a clock.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a duration option. Zero is rejected because every duration here is a timeout, an
/// interval or a lifetime, and zero would close every connection, expire every token or command
/// at once, or stop the retention task.
fn parse_duration(value: &str) -> Result<humantime::Duration, String> {
    let duration: humantime::Duration = value.parse().map_err(|err| format!("{err}"))?;
    if duration.is_zero() {
        return Err("the duration must be longer than zero, for example 30s or 5m".to_owned());
    }
    if *duration > MAX_DURATION {
        return Err("the duration must be at most 100 years, for example 30d".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    fn parses(args: &[&str]) -> bool {
        let mut argv = vec!["edr-collector"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).is_ok()
    }

    fn serve_with(option: &str, value: &str) -> bool {
        parses(&[
            "serve",
            "--data-dir",
            "d",
            "--listen",
            "127.0.0.1:0",
            option,
            value,
        ])
    }

    #[test]
    fn serve_rejects_zero_durations() {
        for option in [
            "--stream-idle-timeout",
            "--connection-idle-timeout",
            "--handshake-timeout",
            "--retention-max-age",
            "--retention-interval",
        ] {
            assert!(!serve_with(option, "0s"), "{option} 0s was accepted");
            assert!(!serve_with(option, "0"), "{option} 0 was accepted");
            assert!(serve_with(option, "10s"), "{option} 10s was rejected");
        }
    }

    #[test]
    fn serve_rejects_overflowing_durations() {
        for option in [
            "--stream-idle-timeout",
            "--connection-idle-timeout",
            "--handshake-timeout",
            "--retention-max-age",
            "--retention-interval",
        ] {
            assert!(
                !serve_with(option, "500000000000y"),
                "{option} 500000000000y was accepted"
            );
        }
        assert!(serve_with("--retention-max-age", "10y"));
    }

    #[test]
    fn serve_checks_server_names() {
        for good in [
            "collector.example.com",
            "edr-1",
            "10.0.0.5",
            "fd00::1",
            "Host.Example.",
        ] {
            assert!(serve_with("--server-name", good), "{good:?} was rejected");
        }
        for bad in [
            "",
            "bad name",
            "a/../b",
            "-x.example",
            "x-.example",
            "a..b",
            "*.example.com",
            "127.1",
            "999.1.1.1",
            "123",
            "1.2.3.4.",
        ] {
            assert!(!serve_with("--server-name", bad), "{bad:?} was accepted");
        }
        assert!(!serve_with("--server-name", &"a".repeat(64)));
    }

    #[test]
    fn export_checks_region_and_account() {
        let export = |option: &str, value: &str| {
            parses(&[
                "export",
                "--data-dir",
                "d",
                "--format",
                "jsonl",
                "--output",
                "o",
                option,
                value,
            ])
        };
        for good in ["us-east-1", "us-gov-west-1", "ap-southeast-2", "local"] {
            assert!(export("--region", good), "region {good:?} was rejected");
        }
        assert!(export("--account-id", "123456789012"));
        for bad in [
            "../../etc",
            "us/east",
            "US-EAST-1",
            "",
            "-x",
            "a b",
            "1",
            "us-east",
            "east-1",
            "us--east-1",
            "usa-east-1",
            "us-east-1a",
        ] {
            assert!(!export("--region", bad), "region {bad:?} was accepted");
        }
        for bad in [
            "12345678901",
            "1234567890123",
            "12345678901a",
            "../123456789",
        ] {
            assert!(
                !export("--account-id", bad),
                "account id {bad:?} was accepted"
            );
        }
    }

    #[test]
    fn serve_rejects_zero_limits() {
        assert!(!serve_with("--max-message-bytes", "0"));
        assert!(!serve_with("--max-streams-per-connection", "0"));
        assert!(serve_with("--max-message-bytes", "1024"));
        assert!(serve_with("--max-streams-per-connection", "1"));
    }

    #[test]
    fn events_limit_rejects_zero() {
        let events = |limit: &str| parses(&["events", "--data-dir", "d", "--limit", limit]);
        assert!(!events("0"));
        assert!(events("1"));
    }

    #[test]
    fn token_ttl_rejects_zero() {
        assert!(!parses(&[
            "token",
            "create",
            "--data-dir",
            "d",
            "--ttl",
            "0s"
        ]));
        assert!(parses(&[
            "token",
            "create",
            "--data-dir",
            "d",
            "--ttl",
            "1h"
        ]));
    }

    #[test]
    fn ping_ttl_rejects_zero() {
        assert!(!parses(&[
            "command",
            "ping",
            "--data-dir",
            "d",
            "S",
            "--ttl",
            "0s"
        ]));
        assert!(parses(&[
            "command",
            "ping",
            "--data-dir",
            "d",
            "S",
            "--ttl",
            "30s"
        ]));
    }
}
