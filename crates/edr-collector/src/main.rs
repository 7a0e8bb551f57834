//! The Collector: enrols sensors, stores their telemetry and sends them commands.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use edr_collector::DamagedRowsSkipped;

fn main() -> ExitCode {
    match edr_collector::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", edr_collector::error_report(&err));
            if err.downcast_ref::<DamagedRowsSkipped>().is_some() {
                ExitCode::from(DamagedRowsSkipped::EXIT_STATUS)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
