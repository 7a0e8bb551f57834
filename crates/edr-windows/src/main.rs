//! `edr-windows`: the Windows sensor's command line.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(version, about = "EDR sensor for Windows")]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
