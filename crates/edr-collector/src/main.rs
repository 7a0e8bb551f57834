//! The Collector: enrols sensors, stores their telemetry and sends them commands.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod export;
mod ingest;
mod inspect;
mod metrics;
mod server;
mod store;

use clap::Parser;

fn main() -> anyhow::Result<()> {
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
