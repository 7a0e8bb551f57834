//! The capability manifest: what this sensor build can collect and do.
//!
//! This build collects nothing yet, so every telemetry source is reported as "not yet
//! available" and no response action is offered. The list of sources is the design's set of
//! ETW providers and other inputs, so the Collector can show what is missing.

use edr_proto::v1::{CapabilityManifest, HostFacts, TelemetrySource, TelemetrySourceState};

/// OCSF schema version the sensor's events follow.
pub const OCSF_VERSION: &str = "1.8.0";

/// Reported OS build on platforms other than Windows (development and test builds).
pub const NON_WINDOWS_OS_BUILD: &str = "non-windows";

/// Telemetry sources known to the design, by stable name.
pub const TELEMETRY_SOURCES: &[&str] = &[
    "etw:Microsoft-Windows-Kernel-Process",
    "etw:Microsoft-Windows-Kernel-File",
    "etw:Microsoft-Windows-Kernel-Network",
    "etw:Microsoft-Windows-Kernel-Registry",
    "etw:Microsoft-Windows-Threat-Intelligence",
    "etw:Microsoft-Windows-Security-Auditing",
    "etw:Microsoft-Windows-PowerShell",
    "etw:Microsoft-Windows-DNS-Client",
    "amsi",
];

/// Returns the host facts sent at enrollment: host name, OS family and build, architecture.
pub fn host_facts() -> HostFacts {
    HostFacts {
        hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        os_family: std::env::consts::OS.to_string(),
        os_build: os_build(),
        architecture: std::env::consts::ARCH.to_string(),
    }
}

/// Builds the manifest for this host with a ring buffer of `buffer_capacity_bytes`.
pub fn manifest(buffer_capacity_bytes: u64) -> CapabilityManifest {
    CapabilityManifest {
        sensor_version: env!("CARGO_PKG_VERSION").to_string(),
        os_build: os_build(),
        architecture: std::env::consts::ARCH.to_string(),
        telemetry_sources: TELEMETRY_SOURCES
            .iter()
            .map(|name| TelemetrySource {
                name: (*name).to_string(),
                state: TelemetrySourceState::NotYetAvailable.into(),
                detail: "not implemented in this sensor version".to_string(),
            })
            .collect(),
        response_actions: Vec::new(),
        ocsf_version: OCSF_VERSION.to_string(),
        buffer_capacity_bytes,
    }
}

/// Returns the OS build: from `RtlGetVersion` on Windows, [`NON_WINDOWS_OS_BUILD`] elsewhere.
pub fn os_build() -> String {
    #[cfg(windows)]
    {
        match crate::sys::security::os_build() {
            Ok(build) => build,
            Err(err) => {
                tracing::warn!(error = %err, "failed to read the OS build");
                "unknown".to_string()
            }
        }
    }
    #[cfg(not(windows))]
    {
        NON_WINDOWS_OS_BUILD.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_reports_nothing_available() {
        let manifest = manifest(64 << 20);
        assert_eq!(manifest.ocsf_version, "1.8.0");
        assert_eq!(manifest.buffer_capacity_bytes, 64 << 20);
        assert!(manifest.response_actions.is_empty());
        assert_eq!(manifest.telemetry_sources.len(), TELEMETRY_SOURCES.len());
        for source in &manifest.telemetry_sources {
            assert_eq!(
                source.state(),
                TelemetrySourceState::NotYetAvailable,
                "{}",
                source.name
            );
        }
        assert_eq!(manifest.architecture, std::env::consts::ARCH);
        assert_eq!(manifest.sensor_version, env!("CARGO_PKG_VERSION"));
    }

    #[cfg(not(windows))]
    #[test]
    fn os_build_outside_windows_is_marked() {
        assert_eq!(os_build(), NON_WINDOWS_OS_BUILD);
    }

    #[cfg(windows)]
    #[test]
    fn os_build_on_windows_is_dotted() {
        assert!(os_build().split('.').count() == 3, "{}", os_build());
    }
}
