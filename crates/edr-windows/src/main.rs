//! `edr-windows`: the Windows sensor's command line.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "EDR sensor for Windows")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert EVTX files or folders to OCSF JSON lines.
    Convert(cli::convert::ConvertArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Convert(args)) => cli::convert::run(args),
        None => Ok(()),
    }
}
