//! Command handlers for `init`, `token` and `sensors`; `serve` lives in [`crate::server`].
//!
//! Data directory layout: `ca/ca.crt`, `ca/ca.key` (see `edr_pki::ca`), `collector.db`
//! (see [`crate::store`]) and `collector.lock`, which `serve` creates and locks (see
//! [`crate::store::lock`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use edr_pki::token::{format_time, parse_label};
use edr_pki::{CollectorCa, EnrollmentToken, TokenPolicy};
use time::OffsetDateTime;

use crate::cli::{Cli, Command, SensorsCommand, TokenCommand};
use crate::store::Store;
use crate::terminal::escape_controls;

/// Subdirectory of the data directory that contains the CA.
pub(crate) const CA_DIR: &str = "ca";

/// Common name of the Collector CA certificate.
const CA_COMMON_NAME: &str = "EDR Collector CA";

pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { data_dir } => init(&data_dir),
        Command::Token { command } => match command {
            TokenCommand::Create {
                data_dir,
                ttl,
                uses,
                labels,
            } => token_create(&data_dir, ttl.into(), uses, &labels),
            TokenCommand::List { data_dir } => token_list(&data_dir),
            TokenCommand::Revoke { data_dir, id } => {
                Store::open(&data_dir)?.revoke_token(&id, OffsetDateTime::now_utc())?;
                eprintln!("revoked enrollment token {id}");
                Ok(())
            }
        },
        Command::Sensors { command } => match command {
            SensorsCommand::List { data_dir } => sensors_list(&data_dir),
            SensorsCommand::Revoke { data_dir, id } => {
                Store::open(&data_dir)?.revoke_sensor(&id, OffsetDateTime::now_utc())?;
                eprintln!(
                    "revoked sensor {id}; a running `edr-collector serve` rejects its certificates within {} seconds",
                    crate::server::REVOCATION_RELOAD_INTERVAL.as_secs()
                );
                Ok(())
            }
        },
        Command::Events(args) => crate::inspect::events(&args),
        Command::Queue { command } => match command {
            crate::cli::QueueCommand::Ping {
                data_dir,
                sensor,
                ttl,
            } => crate::inspect::queue_ping(&data_dir, &sensor, ttl.into()),
        },
        Command::Commands { command } => match command {
            crate::cli::CommandsCommand::List { data_dir } => {
                crate::inspect::commands_list(&data_dir)
            }
        },
        Command::Export(args) => crate::export::export(&args),
        Command::Serve {
            data_dir,
            listen,
            server_names,
            sync,
            max_message_bytes,
            max_records_per_batch,
            stream_idle_timeout,
            connection_idle_timeout,
            max_streams_per_connection,
            max_connections,
            max_pending_handshakes,
            handshake_timeout,
            metrics_listen,
            retention_max_age,
            retention_max_bytes,
            retention_interval,
            sensor_certificate_lifetime,
        } => {
            let options = crate::server::ServeOptions {
                listen,
                server_names,
                sync_mode: sync,
                limits: crate::server::Limits {
                    max_message_bytes: usize::try_from(max_message_bytes).unwrap_or(usize::MAX),
                    max_records_per_batch: usize::try_from(max_records_per_batch)
                        .unwrap_or(usize::MAX),
                    stream_idle_timeout: stream_idle_timeout.into(),
                    connection_idle_timeout: connection_idle_timeout.into(),
                    max_streams_per_connection,
                    admission: crate::server::AdmissionLimits {
                        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
                        max_pending_handshakes: usize::try_from(max_pending_handshakes)
                            .unwrap_or(usize::MAX),
                        handshake_timeout: handshake_timeout.into(),
                    },
                },
                metrics_listen,
                retention: crate::server::Retention {
                    max_age: retention_max_age
                        .map(|age| time::Duration::try_from(std::time::Duration::from(age)))
                        .transpose()
                        .context("--retention-max-age is too long: use at most a few years")?,
                    max_bytes: retention_max_bytes,
                    interval: retention_interval.into(),
                },
                sensor_certificate_lifetime: certificate_lifetime(
                    sensor_certificate_lifetime.into(),
                )?,
            };
            let runtime =
                tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
            runtime.block_on(crate::server::serve(&data_dir, options))
        }
    }
}

/// Checks `--sensor-certificate-lifetime`: at least 10 seconds, because a sensor renews after
/// two thirds of it and needs the rest to reconnect, and at most 365 days.
fn certificate_lifetime(lifetime: std::time::Duration) -> anyhow::Result<time::Duration> {
    const MIN: std::time::Duration = std::time::Duration::from_secs(10);
    const MAX: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
    if !(MIN..=MAX).contains(&lifetime) {
        anyhow::bail!(
            "invalid --sensor-certificate-lifetime {}: use 10s to 365d",
            humantime::format_duration(lifetime)
        );
    }
    Ok(time::Duration::try_from(lifetime)?)
}

pub(crate) fn ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(CA_DIR)
}

fn init(data_dir: &Path) -> anyhow::Result<()> {
    crate::store::check_data_dir(data_dir)?;
    let ca = CollectorCa::create(&ca_dir(data_dir), CA_COMMON_NAME)?;
    Store::create(data_dir)?;
    println!("created Collector CA in {}", ca_dir(data_dir).display());
    println!("CA certificate SHA-256: {}", ca.fingerprint());
    Ok(())
}

fn token_create(
    data_dir: &Path,
    ttl: std::time::Duration,
    uses: u32,
    labels: &[String],
) -> anyhow::Result<()> {
    let ca = CollectorCa::load(&ca_dir(data_dir))?;
    let store = Store::open(data_dir)?;
    let labels = labels
        .iter()
        .map(|label| parse_label(label))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let ttl = time::Duration::try_from(ttl)
        .with_context(|| format!("token lifetime {ttl:?} is too long: use at most a few years"))?;
    let now = OffsetDateTime::now_utc();
    let expires_at = now
        .checked_add(ttl)
        .with_context(|| format!("token lifetime {ttl} is too long: use at most a few years"))?;
    let policy = TokenPolicy {
        expires_at,
        max_uses: uses,
        labels,
    };
    let token = EnrollmentToken::generate(ca.fingerprint())?;
    store.insert_token(&token, &policy, now)?;
    tracing::info!(token_id = %token.id(), expires_at = %format_time(expires_at), max_uses = uses, "created enrollment token");
    println!("{}", token.to_text());
    Ok(())
}

fn token_list(data_dir: &Path) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    println!(
        "{:<16}  {:<20}  {:<20}  {:>9}  {:<8}  LABELS",
        "ID", "CREATED", "EXPIRES", "USES", "STATUS"
    );
    for token in Store::open(data_dir)?.list_tokens()? {
        let status = if token.revoked_at.is_some() {
            "revoked"
        } else if now >= token.policy.expires_at {
            "expired"
        } else if token.uses >= token.policy.max_uses {
            "used"
        } else {
            "active"
        };
        let labels: Vec<String> = token
            .policy
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{:<16}  {:<20}  {:<20}  {:>9}  {:<8}  {}",
            token.id,
            format_time(token.created_at),
            format_time(token.policy.expires_at),
            format!("{}/{}", token.uses, token.policy.max_uses),
            status,
            labels.join(",")
        );
    }
    Ok(())
}

fn sensors_list(data_dir: &Path) -> anyhow::Result<()> {
    let store = Store::open(data_dir)?;
    println!(
        "{:<36}  {:<16}  {:<20}  {:<20}  {:<16}  {:<8}  {:<20}  {:>10}  {:>10}  {:>10}  {:>14}  {:<10}  HEALTH",
        "ID",
        "HOSTNAME",
        "ENROLLED",
        "CERT EXPIRES",
        "TOKEN",
        "STATUS",
        "LAST SEEN",
        "EVENTS",
        "HWM",
        "DUPLICATES",
        "GAPS (LOST)",
        "VERSION"
    );
    for sensor in store.list_sensors()? {
        let status = store.sensor_status(&sensor.id)?;
        println!(
            "{:<36}  {:<16}  {:<20}  {:<20}  {:<16}  {:<8}  {:<20}  {:>10}  {:>10}  {:>10}  {:>14}  {:<10}  {}",
            sensor.id,
            escape_controls(&sensor.hostname),
            format_time(sensor.enrolled_at),
            sensor
                .certificate_not_after
                .map_or_else(|| "-".to_string(), format_time),
            sensor.token_id,
            if sensor.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            },
            status
                .last_seen
                .map_or_else(|| "never".to_string(), format_time),
            status.events,
            status.hwm,
            status.duplicates,
            format!("{} ({})", status.gaps, status.gap_records),
            escape_controls(status.sensor_version.as_deref().unwrap_or("-")),
            escape_controls(status.health_json.as_deref().unwrap_or("-")),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_lifetime_bounds() {
        use std::time::Duration;
        assert_eq!(
            certificate_lifetime(Duration::from_secs(10)).unwrap(),
            time::Duration::seconds(10)
        );
        assert!(certificate_lifetime(Duration::from_secs(365 * 24 * 3600)).is_ok());

        let error = certificate_lifetime(Duration::from_secs(9)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid --sensor-certificate-lifetime 9s: use 10s to 365d"
        );
        assert!(certificate_lifetime(Duration::from_secs(366 * 24 * 3600)).is_err());
    }
}
