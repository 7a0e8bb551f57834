//! The Collector: enrols sensors, stores their telemetry and sends them commands.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    edr_collector::run()
}
