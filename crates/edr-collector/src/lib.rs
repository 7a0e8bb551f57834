//! The Collector: enrols sensors, stores their telemetry and sends them commands.
//!
//! The crate is a binary, `edr-collector`; the library exists so that benchmarks can drive the
//! store without a network. [`run`] is the whole command line, [`bench`] the measured parts.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod export;
mod ingest;
mod inspect;
mod metrics;
mod server;
mod store;

#[doc(hidden)]
pub mod bench;

pub use inspect::DamagedRowsSkipped;

use clap::Parser;

/// Parses the command line, sets up logging to stderr and runs the chosen command.
pub fn run() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    commands::run(cli)
}
