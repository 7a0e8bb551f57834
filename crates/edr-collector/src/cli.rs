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
        /// How commits are synced: `full` makes every acked batch survive a power loss;
        /// `normal` survives a Collector crash only and is faster.
        #[arg(long, value_enum, default_value = "full")]
        sync: SyncMode,
        /// Largest gRPC message accepted, after decompression, in bytes.
        #[arg(long, default_value_t = 16 * 1024 * 1024)]
        max_message_bytes: usize,
        /// Most records accepted in one event batch.
        #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
        max_records_per_batch: u64,
        /// A telemetry stream that sends nothing for this long is closed, for example 2m.
        #[arg(long, default_value = "2m")]
        stream_idle_timeout: humantime::Duration,
        /// A connection that sends no bytes for this long is closed, including one that never
        /// sends a request; HTTP/2 pings every 20 s keep healthy idle connections alive.
        #[arg(long, default_value = "60s")]
        connection_idle_timeout: humantime::Duration,
        /// Most concurrent RPCs on one connection.
        #[arg(long, default_value_t = 16)]
        max_streams_per_connection: u32,
        /// Address for the Prometheus metrics listener (plain HTTP), for example
        /// 127.0.0.1:9464; no listener when absent.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
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
