//! The sensor's logs: `tracing` to a daily rolling file, to the console when run by hand, and
//! INFO-and-above events to the Windows Event Log under the service's own source.
//!
//! Level contract: ERROR means data was lost or an operator must act, WARN means the sensor
//! recovered, INFO is lifecycle (start, stop and their reason). Repeated loss and resource
//! messages are rate-limited where they are raised (at most once a minute each).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{Builder, Rotation};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LoggingConfig;

/// Errors of logging setup.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The `logging.filter` value is not a valid `tracing` filter.
    #[error("invalid logging.filter {filter:?}: {source}")]
    Filter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    /// The log folder could not be created or the rolling file opened.
    #[error("cannot open log files in {path}: {source}: check that the folder is writable")]
    File {
        path: String,
        source: tracing_appender::rolling::InitError,
    },
    /// A global subscriber was already installed.
    #[error("logging was already initialised: {0}")]
    AlreadySet(#[from] tracing_subscriber::util::TryInitError),
}

/// Severity of an Event Log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventLevel {
    Error,
    Warning,
    Information,
}

/// Writes entries to the Windows Event Log (`sys::eventlog::EventSource` on Windows).
pub trait EventLogSink: Send + Sync + 'static {
    fn write(&self, level: EventLevel, message: &str);
}

/// A `tracing` layer that forwards INFO, WARN and ERROR events to an [`EventLogSink`] as
/// `message key=value ...` text.
#[derive(Clone)]
pub struct EventLogLayer {
    sink: Arc<dyn EventLogSink>,
}

impl std::fmt::Debug for EventLogLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventLogLayer")
    }
}

impl EventLogLayer {
    pub fn new(sink: Arc<dyn EventLogSink>) -> Self {
        Self { sink }
    }
}

impl<S: Subscriber> Layer<S> for EventLogLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => EventLevel::Error,
            Level::WARN => EventLevel::Warning,
            Level::INFO => EventLevel::Information,
            _ => return,
        };
        let mut text = EventText::default();
        event.record(&mut text);
        self.sink.write(level, &text.finish());
    }
}

#[derive(Default)]
struct EventText {
    message: String,
    fields: String,
}

impl EventText {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else {
            format!("{}{}", self.message, self.fields)
        }
    }
}

impl Visit for EventText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

/// Keeps the rolling file's writer thread alive; drop it last to flush the file.
#[derive(Debug)]
pub struct LoggingGuard {
    _file: WorkerGuard,
}

/// Installs the global subscriber: rolling file `edr-sensor.YYYY-MM-DD.log` in `directory`,
/// the console when `console` is set, and the Event Log when `event_log` is given.
pub fn init(
    config: &LoggingConfig,
    directory: &Path,
    console: bool,
    event_log: Option<Arc<dyn EventLogSink>>,
) -> Result<LoggingGuard, LoggingError> {
    let filter = EnvFilter::try_new(&config.filter).map_err(|source| LoggingError::Filter {
        filter: config.filter.clone(),
        source,
    })?;
    let appender = Builder::new()
        .rotation(Rotation::DAILY)
        .filename_prefix("edr-sensor")
        .filename_suffix("log")
        .max_log_files(config.max_files as usize)
        .build(directory)
        .map_err(|source| LoggingError::File {
            path: directory.display().to_string(),
            source,
        })?;
    let (file_writer, guard) = tracing_appender::non_blocking(appender);

    let file_layer = tracing_subscriber::fmt::layer()
        .with_writer(file_writer)
        .with_ansi(false);
    let console_layer =
        console.then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let event_log_layer = event_log.map(EventLogLayer::new);

    tracing_subscriber::registry()
        .with(filter)
        .with(file_layer)
        .with(console_layer)
        .with(event_log_layer)
        .try_init()?;
    Ok(LoggingGuard { _file: guard })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<(EventLevel, String)>>);

    impl EventLogSink for Recorded {
        fn write(&self, level: EventLevel, message: &str) {
            self.0.lock().unwrap().push((level, message.to_owned()));
        }
    }

    #[test]
    fn event_log_gets_info_and_above_with_fields() {
        let recorded = Arc::new(Recorded::default());
        let subscriber = tracing_subscriber::registry().with(EventLogLayer::new(recorded.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("per-event detail");
            tracing::info!(version = "0.1.0", "sensor started");
            tracing::error!(
                session = "EdrSensor-Bulk",
                events_lost = 5u64,
                "ETW events lost"
            );
        });
        let entries = recorded.0.lock().unwrap().clone();
        assert_eq!(
            entries,
            vec![
                (
                    EventLevel::Information,
                    "sensor started version=0.1.0".to_owned()
                ),
                (
                    EventLevel::Error,
                    "ETW events lost session=EdrSensor-Bulk events_lost=5".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn invalid_filter_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = LoggingConfig {
            filter: "edr=[".to_owned(),
            ..LoggingConfig::default()
        };
        let error = init(&config, dir.path(), false, None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid logging.filter \"edr=[\""),
            "{error}"
        );
    }
}
