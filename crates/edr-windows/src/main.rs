//! `edr-windows`: the Windows sensor's command line.

use clap::Parser;

mod cli;

#[derive(Debug, Parser)]
#[command(version, about = "EDR sensor for Windows")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Read recorded ETW traces (.etl files).
    Etl(cli::etl::EtlArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Etl(args)) => cli::etl::run(args),
        None => Ok(()),
    }
}
