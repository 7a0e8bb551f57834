//! `edr-windows`: the Windows sensor's command line.
//!
//! `enroll` and `status` are platform-neutral and work on Linux too, where the identity is
//! protected by file permissions instead of DPAPI.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edr_proto::v1::HostFacts;
use edr_sensor::identity::IdentityStore;
use edr_windows::{DEFAULT_BUFFER_CAPACITY_BYTES, capabilities, enrollment};

#[derive(Debug, Parser)]
#[command(version, about = "EDR sensor for Windows")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll with a Collector using a one-time token and store the identity.
    Enroll {
        /// Collector address, https://HOST:PORT.
        #[arg(long)]
        collector: String,
        /// Enrollment token printed by `edr-collector token create`.
        #[arg(long, env = "EDR_ENROLLMENT_TOKEN", hide_env_values = true)]
        token: String,
        /// Directory for the sensor identity; created on success.
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Show the stored identity: sensor id, Collector address and certificate expiry.
    Status {
        #[arg(long)]
        state_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();

    match cli.command {
        Command::Enroll {
            collector,
            token,
            state_dir,
        } => {
            let store = IdentityStore::new(state_dir, enrollment::platform_protection());
            let host = HostFacts {
                hostname: gethostname::gethostname().to_string_lossy().into_owned(),
                os_family: std::env::consts::OS.to_string(),
                os_build: capabilities::os_build(),
                architecture: std::env::consts::ARCH.to_string(),
            };
            let manifest = capabilities::manifest(DEFAULT_BUFFER_CAPACITY_BYTES);
            let runtime =
                tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
            let identity = runtime.block_on(edr_sensor::enrollment::enroll(
                &store, &collector, &token, host, manifest,
            ))?;
            println!("enrolled as sensor {}", identity.sensor_id);
            println!("certificate expires {}", edr_pki_time(identity.not_after));
            println!("identity stored in {}", store.dir().display());
            Ok(())
        }
        Command::Status { state_dir } => {
            let store = IdentityStore::new(state_dir, enrollment::platform_protection());
            let identity = store.load()?;
            let now = time::OffsetDateTime::now_utc();
            println!("sensor id:           {}", identity.sensor_id);
            println!("collector:           {}", identity.collector_url);
            println!(
                "certificate expires: {}{}",
                edr_pki_time(identity.not_after),
                if identity.not_after <= now {
                    " (expired)"
                } else {
                    ""
                }
            );
            println!(
                "enrolled at:         {}",
                edr_pki_time(identity.enrolled_at)
            );
            if let Some(renewed_at) = identity.renewed_at {
                println!("renewed at:          {}", edr_pki_time(renewed_at));
            }
            println!("CA SHA-256:          {}", identity.ca_sha256);
            Ok(())
        }
    }
}

fn edr_pki_time(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}
