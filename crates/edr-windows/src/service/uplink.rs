//! The service's link to the Collector: enrollment on the first start, then the transport that
//! drains the ring buffer, both on a tokio runtime beside the loader.
//!
//! # Files
//!
//! Next to the configuration file (`%ProgramData%\EdrSensor` for the service):
//!
//! - `enrollment-token`: the one-time token written by `edr-windows install --token`. It is
//!   deleted only after the identity is stored. A token the Collector rejects is renamed to
//!   `enrollment-token.rejected`, so a restart by the service control manager does not send it
//!   again.
//! - `identity\`: the identity store (certificate chain, CA, sealed private key). On Windows
//!   the key is sealed with DPAPI and the folder is restricted to SYSTEM and Administrators.
//!
//! # Sequence
//!
//! [`CollectorUplink::start`] runs after ETW telemetry works. With a stored identity it starts
//! the transport at once. Without one it needs the Collector URL from the configuration and
//! the token file, and fails at once naming what is missing. Enrollment then runs on the
//! runtime while the loader keeps appending telemetry to the ring buffer:
//!
//! - a transient failure (Collector unreachable, unavailable or timing out) is retried with
//!   exponential backoff and full jitter, paced by the `[transport]` backoff settings, and
//!   logged at WARN once and at DEBUG for each further attempt;
//! - any other failure (rejected or expired token, invalid URL, wrong CA pin) is logged at
//!   ERROR and not retried: [`CollectorUplink::check`] returns it and the service stops.
//!
//! After enrollment the edr-sensor [`Transport`] streams the buffer, sends heartbeats with the
//! shared [`LossCounters`], renews the certificate and runs commands.
//!
//! # Stop
//!
//! [`CollectorUplink::stop`] runs after the record sink has drained the queue into the buffer
//! and synced it. Records the Collector has not acknowledged stay in the buffer and are sent
//! after the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edr_proto::v1;
use edr_sensor::enrollment::{self, EnrollmentError};
use edr_sensor::identity::{IdentityStore, KeyProtection};
use edr_sensor::transport::{
    LinkState, LossCounters, SharedBuffer, Transport, TransportConfig, TransportError,
};
use tokio::sync::watch;

use crate::capabilities;

/// File next to the configuration that contains a one-time enrollment token until enrollment
/// consumes it.
pub const TOKEN_FILE_NAME: &str = "enrollment-token";
/// Name a rejected token file is renamed to.
pub const REJECTED_TOKEN_FILE_NAME: &str = "enrollment-token.rejected";
/// Folder next to the configuration that contains the sensor identity.
pub const IDENTITY_DIR_NAME: &str = "identity";

/// How long [`CollectorUplink::stop`] waits for the transport to close its streams.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the link to the Collector. None is retryable: transient failures are retried
/// inside the link and never surface here.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// No identity is stored, and the Collector URL or the token file needed to enroll is
    /// missing. Not retryable: an operator must install a token.
    #[error(
        "the sensor is not enrolled and {missing}: run `edr-windows install --collector URL --token T` with a token from `edr-collector token create`, then start the sensor again"
    )]
    NotEnrolled { missing: String },

    /// The token file exists but cannot be read.
    #[error("cannot read the enrollment token file {path}: {source}")]
    TokenRead {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Enrollment failed for a reason that retrying cannot cure, for example a rejected or
    /// expired token. Not retried.
    #[error(
        "enrollment with the token from {token_path} failed and is not retried: {source}: put a new token from `edr-collector token create` in {token_path} (or run `edr-windows install --collector URL --token T`) and start the sensor again"
    )]
    EnrollmentRejected {
        token_path: PathBuf,
        source: Box<EnrollmentError>,
    },

    /// The transport stopped with an error that reconnecting cannot cure.
    #[error(transparent)]
    Transport(Box<TransportError>),

    /// The tokio runtime for the link could not start.
    #[error("cannot start the tokio runtime for the link to the Collector: {0}")]
    Runtime(std::io::Error),

    /// The task running the link panicked or did not stop within the stop timeout.
    #[error("the link to the Collector failed: {0}")]
    Task(String),
}

impl From<TransportError> for UplinkError {
    fn from(error: TransportError) -> Self {
        Self::Transport(Box::new(error))
    }
}

/// Locations of the identity, the token and the Collector, and the transport settings.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    /// The Collector URL from the configuration, needed only to enroll.
    pub collector_url: Option<String>,
    /// The identity store folder.
    pub identity_dir: PathBuf,
    /// The one-time token file.
    pub token_path: PathBuf,
    pub transport: TransportConfig,
    /// Private key sealing: DPAPI on Windows, file permissions elsewhere.
    pub protection: Arc<dyn KeyProtection>,
    /// Ring buffer capacity reported in the capability manifest at enrollment.
    pub buffer_capacity_bytes: u64,
}

impl UplinkSettings {
    /// Settings for a sensor whose configuration file is in `config_dir`.
    pub fn next_to_config(
        config_dir: &Path,
        collector_url: Option<String>,
        transport: TransportConfig,
        buffer_capacity_bytes: u64,
    ) -> Self {
        Self {
            collector_url,
            identity_dir: config_dir.join(IDENTITY_DIR_NAME),
            token_path: config_dir.join(TOKEN_FILE_NAME),
            transport,
            protection: crate::enrollment::platform_protection(),
            buffer_capacity_bytes,
        }
    }

    fn store(&self) -> IdentityStore {
        IdentityStore::new(&self.identity_dir, Arc::clone(&self.protection))
    }
}

/// The step the link takes before it streams.
enum Plan {
    /// An identity is stored.
    Stream,
    /// Enroll first with this URL and token.
    Enroll { url: String, token: String },
}

/// The link to the Collector, running on its own tokio runtime.
#[derive(Debug)]
pub struct CollectorUplink {
    settings: UplinkSettings,
    buffer: SharedBuffer,
    losses: LossCounters,
    runtime: Option<tokio::runtime::Runtime>,
    task: Option<tokio::task::JoinHandle<Result<(), UplinkError>>>,
    shutdown: Option<watch::Sender<bool>>,
    link: watch::Sender<LinkState>,
}

// === impl CollectorUplink ===

impl CollectorUplink {
    /// Creates a link that drains `buffer` and reports `losses` in its heartbeats.
    pub fn new(settings: UplinkSettings, buffer: SharedBuffer, losses: LossCounters) -> Self {
        let (link, _) = watch::channel(LinkState::Disconnected);
        Self {
            settings,
            buffer,
            losses,
            runtime: None,
            task: None,
            shutdown: None,
            link,
        }
    }

    /// Returns a receiver of the transport's link state. It stays `Disconnected` until
    /// enrollment is done.
    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.link.subscribe()
    }

    /// Starts enrollment when needed, then the transport, on a new tokio runtime.
    ///
    /// Fails at once when the sensor has no identity and cannot enroll (no URL or no token).
    pub fn start(&mut self) -> Result<(), UplinkError> {
        let plan = self.plan()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("edr-uplink")
            .enable_all()
            .build()
            .map_err(UplinkError::Runtime)?;
        let (shutdown, shutdown_signal) = watch::channel(false);
        let link = Link {
            settings: self.settings.clone(),
            buffer: Arc::clone(&self.buffer),
            losses: self.losses.clone(),
            state: self.link.clone(),
        };
        self.task = Some(runtime.spawn(link.run(plan, shutdown_signal)));
        self.runtime = Some(runtime);
        self.shutdown = Some(shutdown);
        Ok(())
    }

    /// Returns the error that ended the link, once it has ended with one.
    pub fn check(&mut self) -> Result<(), UplinkError> {
        if !self.task.as_ref().is_some_and(|task| task.is_finished()) {
            return Ok(());
        }
        self.join(Duration::ZERO)
    }

    /// Stops the transport and the runtime. Records not yet acknowledged stay in the buffer.
    pub fn stop(&mut self) -> Result<(), UplinkError> {
        if let Some(shutdown) = self.shutdown.take() {
            // A closed receiver means the task already ended; `join` reports how.
            let _ = shutdown.send(true);
        }
        let result = self.join(STOP_TIMEOUT);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(STOP_TIMEOUT);
        }
        result
    }

    fn join(&mut self, timeout: Duration) -> Result<(), UplinkError> {
        let (Some(task), Some(runtime)) = (self.task.take(), self.runtime.as_ref()) else {
            return Ok(());
        };
        let joined = runtime.block_on(async {
            if timeout.is_zero() {
                return Ok(task.await);
            }
            tokio::time::timeout(timeout, task).await
        });
        match joined {
            Ok(Ok(result)) => result,
            Ok(Err(join_error)) => Err(UplinkError::Task(join_error.to_string())),
            Err(_elapsed) => Err(UplinkError::Task(format!(
                "the transport did not stop within {} s",
                timeout.as_secs()
            ))),
        }
    }

    /// Decides between streaming with the stored identity and enrolling first.
    fn plan(&self) -> Result<Plan, UplinkError> {
        if self.settings.store().exists() {
            return Ok(Plan::Stream);
        }

        let token_path = &self.settings.token_path;
        let token = match std::fs::read_to_string(token_path) {
            Ok(text) => Some(text.trim().to_owned()).filter(|token| !token.is_empty()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(UplinkError::TokenRead {
                    path: token_path.clone(),
                    source,
                });
            }
        };
        let mut missing = Vec::new();
        if self.settings.collector_url.is_none() {
            missing.push("the configuration has no [collector] url".to_owned());
        }
        if token.is_none() {
            let rejected = token_path.with_file_name(REJECTED_TOKEN_FILE_NAME);
            let note = if rejected.exists() {
                format!(
                    " (the last token was rejected and moved to {})",
                    rejected.display()
                )
            } else {
                String::new()
            };
            missing.push(format!(
                "no enrollment token is in {}{note}",
                token_path.display()
            ));
        }
        match (&self.settings.collector_url, token) {
            (Some(url), Some(token)) => Ok(Plan::Enroll {
                url: url.clone(),
                token,
            }),
            _ => Err(UplinkError::NotEnrolled {
                missing: missing.join(" and "),
            }),
        }
    }
}

impl Drop for CollectorUplink {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(true);
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(STOP_TIMEOUT);
        }
    }
}

impl super::Uplink for CollectorUplink {
    fn start(&mut self) -> Result<(), UplinkError> {
        CollectorUplink::start(self)
    }

    fn check(&mut self) -> Result<(), UplinkError> {
        CollectorUplink::check(self)
    }

    fn stop(&mut self) -> Result<(), UplinkError> {
        CollectorUplink::stop(self)
    }
}

/// The part of the link that runs on the runtime.
struct Link {
    settings: UplinkSettings,
    buffer: SharedBuffer,
    losses: LossCounters,
    state: watch::Sender<LinkState>,
}

// === impl Link ===

impl Link {
    async fn run(self, plan: Plan, mut shutdown: watch::Receiver<bool>) -> Result<(), UplinkError> {
        if let Plan::Enroll { url, token } = plan {
            let enrolled = self.enroll(&url, &token, &mut shutdown).await?;
            if !enrolled {
                return Ok(());
            }
        }

        let versions = v1::Versions {
            sensor_version: env!("CARGO_PKG_VERSION").to_owned(),
            os_build: capabilities::os_build(),
            ocsf_version: edr_ocsf::OCSF_VERSION.to_owned(),
        };
        let transport = Transport::new(
            self.settings.transport.clone(),
            self.settings.store(),
            Arc::clone(&self.buffer),
            self.losses.clone(),
            versions,
        )?;

        // Forward the transport's link state to the receivers handed out before it existed.
        let mut states = transport.subscribe();
        let forward_to = self.state.clone();
        tokio::spawn(async move {
            while states.changed().await.is_ok() {
                let state = *states.borrow_and_update();
                forward_to.send_replace(state);
            }
        });

        transport.run(shutdown).await?;
        Ok(())
    }

    /// Enrolls, retrying transient failures. Returns `false` when a stop came first.
    async fn enroll(
        &self,
        url: &str,
        token: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, UplinkError> {
        let store = self.settings.store();
        let token_path = &self.settings.token_path;
        let config = &self.settings.transport;
        let mut delays = JitteredBackoff::new(
            Duration::from_millis(config.backoff_initial_ms),
            Duration::from_millis(config.backoff_max_ms),
        );
        let mut warned = false;
        loop {
            if *shutdown.borrow() {
                return Ok(false);
            }
            let attempt = enrollment::enroll(
                &store,
                url,
                token,
                capabilities::host_facts(),
                capabilities::manifest(self.settings.buffer_capacity_bytes),
            )
            .await;
            let error = match attempt {
                Ok(identity) => {
                    tracing::info!(sensor_id = %identity.sensor_id, collector = %url, "enrolled with the Collector");
                    delete_token(token_path);
                    return Ok(true);
                }
                Err(error) => error,
            };

            if !error.is_retryable() {
                tracing::error!(collector = %url, token_file = %token_path.display(), %error, "enrollment failed and is not retried");
                set_aside_rejected_token(token_path);
                return Err(UplinkError::EnrollmentRejected {
                    token_path: token_path.clone(),
                    source: Box::new(error),
                });
            }
            let delay = delays.next_delay();
            if warned {
                tracing::debug!(collector = %url, %error, delay_ms = delay.as_millis() as u64, "enrollment attempt failed");
            } else {
                tracing::warn!(collector = %url, %error, "enrollment failed, telemetry is buffered while retrying with backoff");
                warned = true;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

/// Deletes the used token file. A file left behind is not sent again, because an identity is
/// now stored, but it still contains the token text.
fn delete_token(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), %error, "cannot delete the used enrollment token file; delete it by hand");
    }
}

/// Renames a rejected token so that a restarted service does not send it again.
fn set_aside_rejected_token(path: &Path) {
    let rejected = path.with_file_name(REJECTED_TOKEN_FILE_NAME);
    if let Err(error) = std::fs::rename(path, &rejected) {
        tracing::warn!(path = %path.display(), %error, "cannot rename the rejected enrollment token file");
    }
}

/// Exponential growth of the delay cap from `initial` to `max`, with the delay drawn uniformly
/// below the cap (full jitter), so that sensors failing together do not retry together.
#[derive(Debug)]
struct JitteredBackoff {
    cap: Duration,
    max: Duration,
    rng: fastrand::Rng,
}

impl JitteredBackoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            cap: initial.min(max),
            max,
            rng: fastrand::Rng::new(),
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.cap.mul_f64(self.rng.f64());
        self.cap = self.cap.saturating_mul(2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_sensor::buffer::{Buffer, BufferOptions};
    use std::sync::Mutex;

    struct Folder {
        _root: tempfile::TempDir,
        config_dir: PathBuf,
        buffer: SharedBuffer,
    }

    fn folder() -> Folder {
        let root = tempfile::tempdir().unwrap();
        let config_dir = root.path().join("config");
        std::fs::create_dir_all(&config_dir).unwrap();
        let buffer = Buffer::open(BufferOptions::new(root.path().join("buffer"))).unwrap();
        Folder {
            config_dir,
            buffer: Arc::new(Mutex::new(buffer)),
            _root: root,
        }
    }

    fn uplink(folder: &Folder, url: Option<&str>) -> CollectorUplink {
        let settings = UplinkSettings::next_to_config(
            &folder.config_dir,
            url.map(str::to_owned),
            TransportConfig::default(),
            1 << 20,
        );
        CollectorUplink::new(
            settings,
            Arc::clone(&folder.buffer),
            LossCounters::default(),
        )
    }

    #[test]
    fn missing_token_names_file_and_install() {
        let folder = folder();
        let error = uplink(&folder, Some("https://127.0.0.1:1"))
            .start()
            .unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(error, UplinkError::NotEnrolled { .. }),
            "{error:?}"
        );
        assert!(text.contains(TOKEN_FILE_NAME), "{text}");
        assert!(
            text.contains("edr-windows install --collector URL --token T"),
            "{text}"
        );
        assert!(!text.contains("[collector] url"), "{text}");
    }

    #[test]
    fn missing_url_named() {
        let folder = folder();
        std::fs::write(folder.config_dir.join(TOKEN_FILE_NAME), "token").unwrap();
        let error = uplink(&folder, None).start().unwrap_err();
        let text = error.to_string();
        assert!(text.contains("no [collector] url"), "{text}");
        assert!(!text.contains("no enrollment token"), "{text}");
    }

    #[test]
    fn empty_token_file_counts_as_missing() {
        let folder = folder();
        std::fs::write(folder.config_dir.join(TOKEN_FILE_NAME), "\n").unwrap();
        let error = uplink(&folder, Some("https://127.0.0.1:1"))
            .start()
            .unwrap_err();
        assert!(error.to_string().contains("no enrollment token"), "{error}");
    }

    #[test]
    fn malformed_token_rejected_and_set_aside() {
        let folder = folder();
        let token_path = folder.config_dir.join(TOKEN_FILE_NAME);
        std::fs::write(&token_path, "not-a-token").unwrap();
        let mut uplink = uplink(&folder, Some("https://127.0.0.1:1"));
        uplink.start().unwrap();

        let started = std::time::Instant::now();
        let error = loop {
            if let Err(error) = uplink.check() {
                break error;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the malformed token was not rejected"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            matches!(error, UplinkError::EnrollmentRejected { .. }),
            "{error:?}"
        );
        assert!(!token_path.exists(), "the rejected token is still in place");
        assert!(folder.config_dir.join(REJECTED_TOKEN_FILE_NAME).exists());
        assert!(!folder.config_dir.join(IDENTITY_DIR_NAME).exists());

        // The next start does not send the rejected token again and reports why.
        let mut again = super::tests::uplink(&folder, Some("https://127.0.0.1:1"));
        let error = again.start().unwrap_err();
        assert!(
            error.to_string().contains("the last token was rejected"),
            "{error}"
        );
        uplink.stop().unwrap();
    }

    #[test]
    fn unreachable_collector_retried_until_stop() {
        let folder = folder();
        // A port that was free a moment ago: connecting fails at once with "refused".
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let token = edr_pki_test_token();
        std::fs::write(folder.config_dir.join(TOKEN_FILE_NAME), &token).unwrap();
        let mut settings = UplinkSettings::next_to_config(
            &folder.config_dir,
            Some(format!("https://127.0.0.1:{port}")),
            TransportConfig::default(),
            1 << 20,
        );
        settings.transport.backoff_initial_ms = 10;
        settings.transport.backoff_max_ms = 20;
        let mut uplink = CollectorUplink::new(
            settings,
            Arc::clone(&folder.buffer),
            LossCounters::default(),
        );
        uplink.start().unwrap();

        std::thread::sleep(Duration::from_millis(300));
        uplink.check().unwrap();
        assert!(
            folder.config_dir.join(TOKEN_FILE_NAME).exists(),
            "the token was consumed without enrollment"
        );
        uplink.stop().unwrap();
    }

    #[test]
    fn backoff_stays_below_growing_cap() {
        let mut backoff =
            JitteredBackoff::new(Duration::from_millis(100), Duration::from_millis(400));
        for cap_ms in [100, 200, 400, 400, 400] {
            assert!(backoff.next_delay() <= Duration::from_millis(cap_ms));
        }
    }

    /// Returns a well-formed token for a CA that no Collector here serves.
    fn edr_pki_test_token() -> String {
        let dir = tempfile::tempdir().unwrap();
        let ca = edr_pki::CollectorCa::create(dir.path(), "Test CA").unwrap();
        edr_pki::EnrollmentToken::generate(ca.fingerprint())
            .unwrap()
            .to_text()
    }
}
