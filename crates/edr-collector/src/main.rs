//! The Collector: enrols sensors, stores their telemetry and sends them commands.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use edr_collector::DamagedRowsSkipped;

fn main() -> ExitCode {
    match edr_collector::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Printed in the same form as when main returns the error.
            eprintln!("Error: {err:?}");
            if err.downcast_ref::<DamagedRowsSkipped>().is_some() {
                ExitCode::from(DamagedRowsSkipped::EXIT_STATUS)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
