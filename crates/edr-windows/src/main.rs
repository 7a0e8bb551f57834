//! `edr-windows`: the Windows sensor's command line.

mod cli;

use clap::{Parser, Subcommand};

/// glibc's allocator took about a fifth of `convert`'s CPU time (ADR 0011). On Windows the
/// process heap stays: mimalloc's C sources are not built for that target here.
#[cfg(not(windows))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(version, about = "EDR sensor for Windows")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll with a Collector using a one-time token and store the identity
    Enroll(cli::enroll::EnrollArgs),
    /// Show the stored identity (sensor id, Collector, certificate expiry) and, on Windows, the
    /// service state
    Status(cli::enroll::StatusArgs),
    /// Install the sensor service (LocalSystem, automatic start, restart on failure)
    Install(cli::service::InstallArgs),
    /// Stop and remove the sensor service; configuration and logs are kept
    Uninstall,
    /// Start the installed service
    Start,
    /// Stop the installed service
    Stop,
    /// Run the sensor in this console, for debugging
    Run(cli::service::RunArgs),
    /// Entry point used by the service control manager
    #[command(hide = true)]
    Service,
    /// Convert EVTX files or folders to OCSF JSON lines
    Convert(cli::convert::ConvertArgs),
    /// Read recorded ETW traces (.etl files)
    Etl(cli::etl::EtlArgs),
    /// Send EVTX files or folders to the Collector through the live sensor pipeline
    Replay(cli::replay::ReplayArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Enroll(args) => {
            cli::enroll::init_console_logging();
            cli::enroll::enroll(args)
        }
        Command::Status(args) => {
            cli::enroll::init_console_logging();
            cli::enroll::status(args)
        }
        Command::Install(args) => cli::service::install(&args),
        Command::Uninstall => cli::service::uninstall(),
        Command::Start => cli::service::start(),
        Command::Stop => cli::service::stop(),
        Command::Run(args) => cli::service::run(&args),
        Command::Service => cli::service::service(),
        Command::Convert(args) => cli::convert::run(args),
        Command::Etl(args) => cli::etl::run(args),
        Command::Replay(args) => cli::replay::run(args),
    }
}
