//! `install`, `uninstall`, `start`, `stop`, `status`, `run` and the hidden `service` command.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use edr_windows::config::{CONFIG_FILE_NAME, SensorConfig, default_data_dir};
use edr_windows::service::TOKEN_FILE_NAME;

/// Options of `install`.
#[derive(Debug, Args)]
pub(crate) struct InstallArgs {
    /// Collector URL written to the configuration, e.g. https://collector.example:8443
    #[arg(long)]
    pub(crate) collector: Option<String>,
    /// One-time enrollment token, used at the first start after telemetry works
    #[arg(long, requires = "collector")]
    pub(crate) token: Option<String>,
    /// Configuration file to install instead of the defaults
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

/// Options of `run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Configuration file; default %ProgramData%\EdrSensor\config.toml
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

/// Writes the configuration (and token) under `data_dir`; the part of `install` that is plain
/// file work.
pub(crate) fn write_install_files(args: &InstallArgs, data_dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let config_path = data_dir.join(CONFIG_FILE_NAME);

    let mut config = match &args.config {
        Some(path) => SensorConfig::load(path)?,
        None if config_path.exists() => SensorConfig::load(&config_path)?,
        None => SensorConfig::default(),
    };
    if let Some(url) = &args.collector {
        config.collector.url = Some(url.clone());
    }
    config.validate()?;
    std::fs::write(&config_path, config.to_toml()?)
        .with_context(|| format!("cannot write {}", config_path.display()))?;

    if let Some(token) = &args.token {
        // NOTE: the token file inherits the folder's ACL; restricting it to SYSTEM and
        // Administrators is left to the enrollment component's ACL code.
        let token_path = data_dir.join(TOKEN_FILE_NAME);
        std::fs::write(&token_path, token)
            .with_context(|| format!("cannot write {}", token_path.display()))?;
    }
    Ok(config_path)
}

pub(crate) fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let config_path = write_install_files(args, &default_data_dir())?;
    println!("configuration written to {}", config_path.display());
    platform::install()
}

pub(crate) fn uninstall() -> anyhow::Result<()> {
    platform::uninstall()
}

pub(crate) fn start() -> anyhow::Result<()> {
    platform::start()
}

pub(crate) fn stop() -> anyhow::Result<()> {
    platform::stop()
}

pub(crate) fn status() -> anyhow::Result<()> {
    platform::status()
}

pub(crate) fn run(args: &RunArgs) -> anyhow::Result<()> {
    let path = args
        .config
        .clone()
        .unwrap_or_else(edr_windows::config::default_config_path);
    platform::run_console(&path)
}

pub(crate) fn service() -> anyhow::Result<()> {
    platform::service()
}

#[cfg(not(windows))]
mod platform {
    use std::path::Path;

    use anyhow::bail;

    const NEEDS_WINDOWS: &str =
        "this command needs Windows: the sensor reads ETW, which only Windows has";

    pub(super) fn install() -> anyhow::Result<()> {
        bail!(NEEDS_WINDOWS)
    }
    pub(super) fn uninstall() -> anyhow::Result<()> {
        bail!(NEEDS_WINDOWS)
    }
    pub(super) fn start() -> anyhow::Result<()> {
        bail!(NEEDS_WINDOWS)
    }
    pub(super) fn stop() -> anyhow::Result<()> {
        bail!(NEEDS_WINDOWS)
    }
    pub(super) fn status() -> anyhow::Result<()> {
        bail!(NEEDS_WINDOWS)
    }
    pub(super) fn run_console(_config: &Path) -> anyhow::Result<()> {
        bail!(NEEDS_WINDOWS)
    }
    pub(super) fn service() -> anyhow::Result<()> {
        bail!(NEEDS_WINDOWS)
    }
}

#[cfg(windows)]
mod platform {
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use anyhow::Context;
    use edr_sensor::transport::{LossCounters, SharedBuffer};
    use edr_windows::config::{SensorConfig, default_config_path, default_data_dir};
    use edr_windows::loader::backoff::SystemClock;
    use edr_windows::loader::{LoaderSettings, RecordQueue};
    use edr_windows::service::{
        BufferSink, CollectorUplink, EVENT_SOURCE, LossReporter, SERVICE_NAME, ServiceDefinition,
        StopSignal, UplinkSettings, run_sensor,
    };
    use edr_windows::sys::etw::WindowsEtw;
    use edr_windows::sys::privilege::ProcessPrivileges;
    use edr_windows::sys::{eventlog, service};
    use tracing::{debug, error, info};

    pub(super) fn install() -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the path of this program")?;
        eventlog::register_source(EVENT_SOURCE).context("cannot register the Event Log source")?;
        service::install(&ServiceDefinition::sensor(&exe)).context("cannot create the service")?;
        println!("service {SERVICE_NAME} installed; start it with `edr-windows start`");
        Ok(())
    }

    pub(super) fn uninstall() -> anyhow::Result<()> {
        if service::query(SERVICE_NAME)? == edr_windows::service::ServiceState::Running {
            service::stop(SERVICE_NAME, Duration::from_secs(60))?;
        }
        service::uninstall(SERVICE_NAME).context("cannot delete the service")?;
        eventlog::remove_source(EVENT_SOURCE).context("cannot remove the Event Log source")?;
        println!(
            "service {SERVICE_NAME} removed; configuration and logs are kept in {}",
            default_data_dir().display()
        );
        Ok(())
    }

    pub(super) fn start() -> anyhow::Result<()> {
        service::start(SERVICE_NAME).context("cannot start the service")?;
        println!("service {SERVICE_NAME} start requested");
        Ok(())
    }

    pub(super) fn stop() -> anyhow::Result<()> {
        let state = service::stop(SERVICE_NAME, Duration::from_secs(60))
            .context("cannot stop the service")?;
        println!("service {SERVICE_NAME}: {state}");
        Ok(())
    }

    pub(super) fn status() -> anyhow::Result<()> {
        println!("service {SERVICE_NAME}: {}", service::query(SERVICE_NAME)?);
        Ok(())
    }

    pub(super) fn run_console(config_path: &Path) -> anyhow::Result<()> {
        let stop = StopSignal::default();
        let console_stop = stop.clone();
        std::thread::spawn(move || {
            println!("sensor running; press Enter to stop");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            console_stop.request_stop();
        });
        run_sensor_process(config_path, true, &stop)
    }

    pub(super) fn service() -> anyhow::Result<()> {
        service::run_dispatcher(service_body)
            .context("cannot connect to the service control manager")?;
        Ok(())
    }

    fn service_body(stop: StopSignal) -> u32 {
        match run_sensor_process(&default_config_path(), false, &stop) {
            Ok(()) => 0,
            // ERROR_SERVICE_SPECIFIC_ERROR: the reason is in the Event Log and the log file.
            Err(_) => 1066,
        }
    }

    fn run_sensor_process(
        config_path: &Path,
        console: bool,
        stop: &StopSignal,
    ) -> anyhow::Result<()> {
        let config = SensorConfig::load(config_path)?;
        let log_dir = config
            .logging
            .directory
            .clone()
            .unwrap_or_else(|| default_data_dir().join("logs"));
        let event_log = eventlog::EventSource::open(EVENT_SOURCE)
            .ok()
            .map(|source| Arc::new(source) as Arc<_>);
        let _guard = edr_windows::logging::init(&config.logging, &log_dir, console, event_log)?;
        info!(version = env!("CARGO_PKG_VERSION"), config = %config_path.display(), collector = ?config.collector.url, "sensor starting");

        let processors = std::thread::available_parallelism().map_or(1, |count| count.get() as u32);
        let settings = LoaderSettings::from_config(&config.sessions, processors);
        let queue = Arc::new(RecordQueue::new(
            config.queue.max_records as usize,
            config.queue.max_memory_mb as usize * 1024 * 1024,
        ));
        let buffer_options = config.buffer.validate()?;
        let buffer_dir = buffer_options.directory.clone();
        let capacity_bytes = buffer_options.capacity_bytes;
        let buffer = edr_sensor::buffer::Buffer::open(buffer_options)
            .with_context(|| format!("cannot open the ring buffer in {}", buffer_dir.display()))?;
        let buffer: SharedBuffer = Arc::new(Mutex::new(buffer));
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();

        // The loss reporter, the record sink and the transport share the buffer and the
        // heartbeat's loss counters.
        let losses = LossCounters::default();
        let config_dir = config_path.parent().unwrap_or_else(|| Path::new("."));
        let mut uplink = CollectorUplink::new(
            UplinkSettings::next_to_config(
                config_dir,
                config.collector.url.clone(),
                config.transport.clone(),
                capacity_bytes,
            ),
            Arc::clone(&buffer),
            losses.clone(),
        );
        let reporter = Arc::new(LossReporter::new(
            losses,
            Arc::clone(&buffer),
            hostname.clone(),
        ));
        let context = edr_windows::ocsf::TraceContext {
            // Process uids combine this key with the pid and the process start time, so they
            // stay distinct across reboots without a boot id.
            host_key: format!("host-{hostname}"),
            trace_start_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as i64),
            hostname: Some(hostname),
        };
        let mut sink = BufferSink::new(context, Arc::clone(&buffer));
        let result = run_sensor(
            Arc::new(WindowsEtw),
            settings,
            queue,
            &ProcessPrivileges,
            &mut uplink,
            &mut sink,
            reporter,
            Arc::new(SystemClock),
            stop,
        );
        let events_buffered = sink.events_appended();
        drop(sink);
        drop(uplink);
        close_buffer(buffer);
        match result {
            Ok(outcome) => {
                info!(
                    pumped = outcome.pumped,
                    drained = outcome.drained,
                    events_buffered,
                    reason = "stop requested",
                    "sensor stopped"
                );
                Ok(())
            }
            Err(run_error) => {
                error!(error = %run_error, "sensor stopped");
                Err(run_error.into())
            }
        }
    }

    /// Closes the ring buffer once nothing else shares it. Every record is already synced by
    /// the run sequence, so a buffer still shared is only logged.
    fn close_buffer(buffer: SharedBuffer) {
        match Arc::try_unwrap(buffer) {
            Ok(buffer) => {
                let buffer = buffer
                    .into_inner()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Err(close_error) = buffer.close() {
                    error!(error = %close_error, "cannot close the ring buffer");
                }
            }
            Err(_) => debug!("ring buffer still shared at exit, left to the final drop"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_writes_config_and_token() {
        let dir = tempfile::tempdir().unwrap();
        let args = InstallArgs {
            collector: Some("https://collector.test:8443".to_owned()),
            token: Some("one-time-token".to_owned()),
            config: None,
        };
        let path = write_install_files(&args, dir.path()).unwrap();
        let config = SensorConfig::load(&path).unwrap();
        assert_eq!(
            config.collector.url.as_deref(),
            Some("https://collector.test:8443")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(TOKEN_FILE_NAME)).unwrap(),
            "one-time-token"
        );
    }

    #[test]
    fn install_rejects_invalid_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("in.toml");
        std::fs::write(&source, "[sessions]\npoll_interval_secs = 60\n").unwrap();
        let args = InstallArgs {
            collector: None,
            token: None,
            config: Some(source),
        };
        let error = write_install_files(&args, &dir.path().join("data")).unwrap_err();
        assert!(
            error.to_string().contains("sessions.poll_interval_secs"),
            "{error}"
        );
    }
}
