//! Reading a file logs nothing through the evtx crate's `log` records at WARN or above, so a
//! replay of many files keeps the sensor log readable. The test has its own binary because the
//! `log` logger is global to the process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

static WARNINGS: AtomicUsize = AtomicUsize::new(0);

struct CountWarnings;

impl log::Log for CountWarnings {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.level() <= log::Level::Warn {
            eprintln!("{}: {}", record.target(), record.args());
            WARNINGS.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn flush(&self) {}
}

#[test]
fn read_file_logs_no_parser_warning() {
    log::set_logger(&CountWarnings).unwrap();
    log::set_max_level(log::LevelFilter::Trace);

    // The settings are built before the file is opened, so a missing file is enough.
    let missing = std::path::Path::new("/nonexistent/edr-evtx-warnings.evtx");
    let result = edr_evtx::source::read_file(missing, |_| {});

    assert!(result.is_err());
    assert_eq!(WARNINGS.load(Ordering::SeqCst), 0);
}
