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
mod log_limit;
mod metrics;
mod server;
mod store;
mod terminal;

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

/// Renders `err` for standard error as `main` would print it: `Error: MESSAGE`, then its
/// causes. A cause whose text the message before it already contains is left out, because
/// many errors of this crate name their cause in their own message.
pub fn error_report(err: &anyhow::Error) -> String {
    let mut previous = err.to_string();
    let mut report = format!("Error: {previous}");
    let mut causes = Vec::new();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !previous.contains(&text) {
            causes.push(text.clone());
        }
        previous = text;
    }
    match causes.as_slice() {
        [] => {}
        [only] => report.push_str(&format!("\n\nCaused by:\n    {only}")),
        many => {
            report.push_str("\n\nCaused by:");
            for (index, cause) in many.iter().enumerate() {
                report.push_str(&format!("\n    {index}: {cause}"));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::error_report;

    /// An error that names its cause in its own message, as `StoreError::LockFile` does.
    #[derive(Debug, thiserror::Error)]
    #[error("failed to open the lock file: {source}")]
    struct Inner {
        source: std::io::Error,
    }

    #[test]
    fn cause_named_in_the_message_is_not_repeated() {
        let inner = Inner {
            source: std::io::Error::other("it is a symbolic link"),
        };
        let report = error_report(&anyhow::Error::new(inner));
        assert_eq!(
            report,
            "Error: failed to open the lock file: it is a symbolic link"
        );
    }

    #[test]
    fn causes_not_in_the_message_are_listed() {
        let one_cause =
            anyhow::Error::new(std::io::Error::other("disk full")).context("export failed");
        assert_eq!(
            error_report(&one_cause),
            "Error: export failed\n\nCaused by:\n    disk full"
        );
        let inner = Inner {
            source: std::io::Error::other("denied"),
        };
        let cause_in_message = anyhow::Error::new(inner).context("serve failed");
        assert_eq!(
            error_report(&cause_in_message),
            "Error: serve failed\n\nCaused by:\n    failed to open the lock file: denied"
        );
        let two_causes = anyhow::Error::new(std::io::Error::other("denied"))
            .context("reading the key")
            .context("serve failed");
        assert_eq!(
            error_report(&two_causes),
            "Error: serve failed\n\nCaused by:\n    0: reading the key\n    1: denied"
        );
    }
}
