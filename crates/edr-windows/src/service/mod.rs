//! The sensor as a Windows service: its definition for the service control manager and the
//! run sequence shared by the service and the console `run` command.
//!
//! Run sequence (see [`run_sensor`]): enable the required privileges, start ETW telemetry, and
//! only when telemetry works, start the link to the Collector ([`CollectorUplink`]: enrollment
//! when needed, then the transport on a tokio runtime). Then move records from the loader's
//! queue to the record sink, the ring buffer, until a stop is requested or the link fails for
//! good. On stop: the ETW sessions are stopped, the queue is drained into the sink, the sink is
//! synced, and the transport is stopped. Loss alerts go to the heartbeat counters and, as a
//! Detection Finding, to the ring buffer's priority lane ([`LossReporter`]).
//!
//! Recovery: the service control manager restarts the service after a failure (see
//! [`ServiceDefinition::restart_delays`]); a restarted sensor replaces the ETW sessions the
//! failed one left behind.

mod alert;
mod run;
mod sink;
mod uplink;

pub use alert::{LOSS_FINDING_TITLE, LossReporter, QUEUE_LOSS_SOURCE, loss_finding};
pub use run::{Privileges, RecordSink, RunOutcome, SinkError, StopSignal, Uplink, run_sensor};
pub use sink::BufferSink;
pub use uplink::{
    CollectorUplink, IDENTITY_DIR_NAME, REJECTED_TOKEN_FILE_NAME, TOKEN_FILE_NAME, UplinkError,
    UplinkSettings,
};

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::loader::LoaderError;
use crate::sys::OsError;

/// The service's name in the service control manager.
pub const SERVICE_NAME: &str = "EdrSensor";
/// The name shown in the Services console.
pub const DISPLAY_NAME: &str = "EDR Sensor";
/// The Windows Event Log source the service writes under (in the Application log).
pub const EVENT_SOURCE: &str = "EdrSensor";
/// The hidden subcommand the service control manager starts the binary with.
pub const SERVICE_ARGUMENT: &str = "service";

/// Privileges enabled at start: SeDebugPrivilege to open other processes for enrichment,
/// SeSystemEnvironmentPrivilege to read firmware variables (Secure Boot state).
pub const REQUIRED_PRIVILEGES: [&str; 2] = ["SeDebugPrivilege", "SeSystemEnvironmentPrivilege"];

/// Errors of the service and its run sequence.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A required privilege is not held by the account the sensor runs as.
    #[error(
        "cannot enable {privilege}: {source}: run the sensor as LocalSystem (`edr-windows install` configures the service that way) or from an elevated prompt"
    )]
    PrivilegeMissing {
        privilege: &'static str,
        source: OsError,
    },

    /// ETW telemetry could not start; the sensor did not enroll.
    #[error(transparent)]
    Telemetry(#[from] LoaderError),

    /// The link to the Collector failed for good: the sensor cannot enroll, the token was
    /// rejected, or the transport stopped with an error that needs an operator.
    #[error(transparent)]
    Uplink(#[from] UplinkError),

    /// The record sink (the ring buffer) rejected a record or could not sync.
    #[error("the record sink failed: {0}")]
    Sink(#[from] SinkError),

    /// A call to the service control manager failed.
    #[error("service control manager: cannot {action} service '{service}': {source}")]
    Scm {
        action: &'static str,
        service: String,
        source: OsError,
    },

    /// The Event Log source could not be registered or removed.
    #[error("cannot {action} the Event Log source '{source_name}': {source}")]
    EventSource {
        action: &'static str,
        source_name: String,
        source: OsError,
    },
}

/// How the service is registered with the service control manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDefinition {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub binary_path: PathBuf,
    pub arguments: Vec<String>,
    /// Delays before the first, second and later restarts after a failure.
    pub restart_delays: Vec<Duration>,
    /// Time without failure after which the failure count resets.
    pub failure_reset_period: Duration,
}

impl ServiceDefinition {
    /// The sensor's service: LocalSystem, automatic start, restart after 5 s, 30 s, then 60 s.
    pub fn sensor(binary_path: &Path) -> Self {
        Self {
            name: SERVICE_NAME.to_owned(),
            display_name: DISPLAY_NAME.to_owned(),
            description: "Collects ETW telemetry and sends it to the EDR Collector.".to_owned(),
            binary_path: binary_path.to_owned(),
            arguments: vec![SERVICE_ARGUMENT.to_owned()],
            restart_delays: vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(60),
            ],
            failure_reset_period: Duration::from_secs(24 * 3600),
        }
    }

    /// The command line the service control manager runs: the quoted binary path, then the
    /// arguments.
    pub fn command_line(&self) -> String {
        let mut line = format!("\"{}\"", self.binary_path.display());
        for argument in &self.arguments {
            line.push(' ');
            line.push_str(argument);
        }
        line
    }
}

/// A service's state as reported by the service control manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    NotInstalled,
    Stopped,
    StartPending,
    StopPending,
    Running,
    ContinuePending,
    PausePending,
    Paused,
    /// A state value this build does not know.
    Unknown(u32),
}

impl ServiceState {
    /// Maps `SERVICE_STATUS.dwCurrentState`.
    pub fn from_raw(state: u32) -> Self {
        match state {
            1 => Self::Stopped,
            2 => Self::StartPending,
            3 => Self::StopPending,
            4 => Self::Running,
            5 => Self::ContinuePending,
            6 => Self::PausePending,
            7 => Self::Paused,
            other => Self::Unknown(other),
        }
    }
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotInstalled => f.write_str("not installed"),
            Self::Stopped => f.write_str("stopped"),
            Self::StartPending => f.write_str("start pending"),
            Self::StopPending => f.write_str("stop pending"),
            Self::Running => f.write_str("running"),
            Self::ContinuePending => f.write_str("continue pending"),
            Self::PausePending => f.write_str("pause pending"),
            Self::Paused => f.write_str("paused"),
            Self::Unknown(raw) => write!(f, "unknown state {raw}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_path() {
        let definition =
            ServiceDefinition::sensor(Path::new(r"C:\Program Files\EDR\edr-windows.exe"));
        assert_eq!(
            definition.command_line(),
            r#""C:\Program Files\EDR\edr-windows.exe" service"#
        );
    }

    #[test]
    fn sensor_restarts_on_failure() {
        let definition = ServiceDefinition::sensor(Path::new("edr-windows.exe"));
        assert_eq!(definition.restart_delays.len(), 3);
        assert!(
            definition
                .restart_delays
                .iter()
                .all(|delay| !delay.is_zero())
        );
    }

    #[test]
    fn state_from_raw_values() {
        assert_eq!(ServiceState::from_raw(4), ServiceState::Running);
        assert_eq!(ServiceState::from_raw(1).to_string(), "stopped");
        assert_eq!(ServiceState::from_raw(42), ServiceState::Unknown(42));
    }
}
