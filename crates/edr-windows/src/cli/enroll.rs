//! `enroll` and `status`: platform-neutral, so they work on Linux too, where the identity is
//! protected by file permissions instead of DPAPI.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use edr_sensor::identity::IdentityStore;
use edr_windows::{DEFAULT_BUFFER_CAPACITY_BYTES, capabilities, enrollment};

/// Options of `enroll`.
#[derive(Debug, Args)]
pub(crate) struct EnrollArgs {
    /// Collector address, https://HOST:PORT
    #[arg(long)]
    collector: String,
    /// Enrollment token printed by `edr-collector token create`
    #[arg(long, env = "EDR_ENROLLMENT_TOKEN", hide_env_values = true)]
    token: String,
    /// Directory for the sensor identity; created on success
    #[arg(long)]
    state_dir: PathBuf,
}

/// Options of `status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Directory holding the sensor identity written by `enroll`
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// Logs warnings and errors to stderr; `run` and `service` set up their own logging instead.
pub(crate) fn init_console_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

pub(crate) fn enroll(args: EnrollArgs) -> anyhow::Result<()> {
    let EnrollArgs {
        collector,
        token,
        state_dir,
    } = args;
    let store = IdentityStore::new(state_dir, enrollment::platform_protection());
    let host = capabilities::host_facts();
    let manifest = capabilities::manifest(DEFAULT_BUFFER_CAPACITY_BYTES);
    let runtime = tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
    let identity = runtime.block_on(edr_sensor::enrollment::enroll(
        &store, &collector, &token, host, manifest,
    ))?;
    println!("enrolled as sensor {}", identity.sensor_id);
    println!("certificate expires {}", format_time(identity.not_after));
    println!("identity stored in {}", store.dir().display());
    Ok(())
}

/// Prints the stored identity when `--state-dir` is given, and the service state on Windows.
pub(crate) fn status(args: StatusArgs) -> anyhow::Result<()> {
    let Some(state_dir) = args.state_dir else {
        if cfg!(windows) {
            return super::service::status();
        }
        anyhow::bail!("no identity to show: pass --state-dir DIR, the directory given to `enroll`");
    };

    let store = IdentityStore::new(state_dir, enrollment::platform_protection());
    let identity = store.load()?;
    let now = time::OffsetDateTime::now_utc();
    let expired = if identity.not_after <= now {
        " (expired)"
    } else {
        ""
    };
    println!("sensor id:           {}", identity.sensor_id);
    println!("collector:           {}", identity.collector_url);
    println!(
        "certificate expires: {}{expired}",
        format_time(identity.not_after)
    );
    println!("enrolled at:         {}", format_time(identity.enrolled_at));
    if let Some(renewed_at) = identity.renewed_at {
        println!("renewed at:          {}", format_time(renewed_at));
    }
    println!("CA SHA-256:          {}", identity.ca_sha256);

    if cfg!(windows) {
        super::service::status()?;
    }
    Ok(())
}

fn format_time(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}
