//! Command-line definitions.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Serve enrollment, telemetry and command RPCs over TLS.
    Serve {
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to listen on, for example 0.0.0.0:7443; port 0 picks a free port.
        #[arg(long)]
        listen: SocketAddr,
        /// DNS name or IP address that sensors use to reach this Collector; repeatable.
        /// localhost, 127.0.0.1, ::1 and a specific listen IP are always included.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token and print it on standard output.
    Create {
        #[arg(long)]
        data_dir: PathBuf,
        /// How long the token stays valid, for example 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
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
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Revoke a token so that no further sensor can enroll with it.
    Revoke {
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
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Revoke a sensor: a running `serve` rejects its certificates within a few seconds.
    Revoke {
        #[arg(long)]
        data_dir: PathBuf,
        /// Sensor id, as shown by `sensors list`.
        id: String,
    },
}
