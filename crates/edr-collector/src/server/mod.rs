//! `edr-collector serve`: one TLS listener for every RPC.
//!
//! The TLS layer requests a client certificate but does not require one, so that a new sensor
//! can call `Enroll` with server-auth TLS only. A presented certificate must chain to the
//! Collector CA, be within its validity and not be revoked, or the handshake fails. Above
//! TLS, [`auth::require_sensor`] rejects every Telemetry and Command RPC on a connection
//! without a client certificate, and `Renew` checks the same inside its handler. The sensor id
//! always comes from the verified certificate.
//!
//! Revocation: the revocation list is reloaded from the database every
//! [`REVOCATION_RELOAD_INTERVAL`], so `edr-collector sensors revoke` reaches a running server
//! within that time. New handshakes consult the list; so does every RPC on an open connection.
//!
//! The server certificate is issued by the Collector CA at every start, for the names given
//! with `--server-name` plus localhost, 127.0.0.1, ::1 and a specific listen IP.
//!
//! Only one `serve` runs per data directory: it takes the lock of [`crate::store::lock`]
//! before it opens the database, and a second `serve` exits with an error.

mod admission;
mod auth;
mod command;
mod enrollment;
mod idle;
mod telemetry;
mod writer;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use edr_pki::{CollectorCa, RevocationList};
use edr_proto::v1::command_server::CommandServer;
use edr_proto::v1::enrollment_server::EnrollmentServer;
use edr_proto::v1::telemetry_server::TelemetryServer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;

pub(crate) use self::admission::AdmissionLimits;
use self::admission::{Admission, RejectionLog};
use crate::commands::ca_dir;
use crate::metrics::Metrics;
use crate::store::codec::EventCodec;
use crate::store::lock::ServeLock;
use crate::store::retention::RetentionOutcome;
use crate::store::{Store, SyncMode};

/// How often `serve` reloads the revocation list from the database.
pub(crate) const REVOCATION_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Validity of the server certificate issued at start-up.
const SERVER_CERT_VALIDITY: time::Duration = time::Duration::days(90);

/// Limits applied to every sensor connection.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Largest gRPC message accepted, after decompression, in bytes.
    pub(crate) max_message_bytes: usize,
    /// Maximum number of records in one batch.
    pub(crate) max_records_per_batch: usize,
    /// A telemetry stream that sends no message for this long is closed.
    pub(crate) stream_idle_timeout: Duration,
    /// A connection that reads no bytes for this long is closed, including one that finished
    /// the TLS handshake and never sent a request.
    pub(crate) connection_idle_timeout: Duration,
    /// Maximum number of concurrent HTTP/2 streams (RPCs) per connection.
    pub(crate) max_streams_per_connection: u32,
    /// Caps on connections and TLS handshakes, and the handshake timeout.
    pub(crate) admission: AdmissionLimits,
}

/// Settings of `serve`.
#[derive(Debug, Clone)]
pub(crate) struct ServeOptions {
    pub(crate) listen: SocketAddr,
    pub(crate) server_names: Vec<String>,
    pub(crate) sync_mode: SyncMode,
    pub(crate) limits: Limits,
    pub(crate) metrics_listen: Option<SocketAddr>,
    pub(crate) retention: Retention,
    /// Lifetime of sensor certificates issued at enrollment and renewal.
    pub(crate) sensor_certificate_lifetime: time::Duration,
}

/// Retention settings; see [`crate::store::retention`].
#[derive(Debug, Clone)]
pub(crate) struct Retention {
    pub(crate) max_age: Option<time::Duration>,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) interval: Duration,
}

/// Interval of HTTP/2 pings on idle connections. A peer that does not acknowledge a ping
/// within the timeout is dropped, and the ping acks keep a healthy idle connection under the
/// connection idle timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// State shared by the RPC services.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) ca: CollectorCa,
    pub(crate) store: Mutex<Store>,
    /// Connection used by telemetry ingest, so that enrollment does not wait behind batches.
    pub(crate) ingest: Mutex<Store>,
    pub(crate) revocations: Arc<RevocationList>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Limits,
    /// Queue of the ingest writer thread.
    pub(crate) writer: tokio::sync::mpsc::Sender<writer::IngestRequest>,
    /// Compresses event JSON once the writer has trained a dictionary.
    pub(crate) codec: Arc<EventCodec>,
    /// Lifetime of sensor certificates issued at enrollment and renewal.
    pub(crate) sensor_certificate_lifetime: time::Duration,
    /// The data directory's serve lock. The ingest writer thread holds this struct until the
    /// process exits, so the lock lasts as long as the connections above.
    _serve_lock: ServeLock,
}

pub(crate) async fn serve(data_dir: &Path, options: ServeOptions) -> anyhow::Result<()> {
    let ServeOptions {
        listen,
        mut server_names,
        sync_mode,
        limits,
        metrics_listen,
        retention,
        sensor_certificate_lifetime,
    } = options;
    // Taken before the database is opened, because opening it may upgrade its schema.
    let serve_lock = ServeLock::acquire(data_dir)?;
    let ca = CollectorCa::load(&ca_dir(data_dir))?;
    let store = Store::open(data_dir)?;
    let ingest = Store::open(data_dir)?;
    ingest.configure_for_ingest(sync_mode)?;
    let codec = Arc::new(EventCodec::default());
    if let Some(dictionary) = ingest.newest_dictionary()? {
        codec.publish(dictionary);
    }
    let revocations = RevocationList::new(store.revocation_set()?);

    for default in ["localhost", "127.0.0.1", "::1"] {
        if !server_names.iter().any(|n| n == default) {
            server_names.push(default.to_string());
        }
    }
    if !listen.ip().is_unspecified() && !server_names.contains(&listen.ip().to_string()) {
        server_names.push(listen.ip().to_string());
    }
    let identity = ca.issue_server_certificate(&server_names, SERVER_CERT_VALIDITY)?;
    let tls = edr_pki::tls::server_config(
        ca.certificate_der().clone(),
        identity,
        Arc::clone(&revocations),
    )?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("failed to listen on {listen}: choose a free address with --listen")
    })?;
    let local_addr = listener.local_addr()?;

    let metrics = Arc::new(Metrics::default());
    let mut metrics_addr = "none".to_string();
    if let Some(metrics_listen) = metrics_listen {
        let listener = TcpListener::bind(metrics_listen).await.with_context(|| {
            format!("failed to listen on {metrics_listen} for metrics: choose a free address with --metrics-listen")
        })?;
        metrics_addr = listener.local_addr()?.to_string();
        tokio::spawn(crate::metrics::serve_metrics(
            listener,
            Arc::clone(&metrics),
        ));
    }
    let signals = ShutdownSignals::install();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %data_dir.display(),
        listen_addr = %local_addr,
        metrics_addr = %metrics_addr,
        sync = ?sync_mode,
        sensor_certificate_lifetime = %sensor_certificate_lifetime,
        ca_sha256 = %ca.fingerprint(),
        server_names = ?server_names,
        "edr-collector serving"
    );

    let (writer_tx, writer_rx) = tokio::sync::mpsc::channel(writer::QUEUE_CAPACITY);
    let shared = Arc::new(Shared {
        ca,
        store: Mutex::new(store),
        ingest: Mutex::new(ingest),
        revocations,
        metrics,
        limits: limits.clone(),
        writer: writer_tx,
        codec,
        sensor_certificate_lifetime,
        _serve_lock: serve_lock,
    });
    writer::spawn(Arc::clone(&shared), writer_rx)
        .context("failed to start the ingest writer thread")?;
    tokio::spawn(reload_revocations(
        data_dir.to_path_buf(),
        Arc::clone(&shared),
    ));

    if retention.max_age.is_some() || retention.max_bytes.is_some() {
        tokio::spawn(apply_retention(retention, Arc::clone(&shared)));
    }

    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(accept_loop(
        listener,
        acceptor,
        Admission::new(limits.admission, Arc::clone(&shared.metrics)),
        limits.connection_idle_timeout,
        tx,
    ));

    let enrollment = EnrollmentServer::new(enrollment::EnrollmentService::new(Arc::clone(&shared)));
    // Replies on the telemetry stream are acks of a few bytes, so they go uncompressed: tonic
    // sets up a new zstd context for every compressed message, which cost more CPU than the
    // acks save in bytes.
    let telemetry = TelemetryServer::new(telemetry::TelemetryService::new(Arc::clone(&shared)))
        .max_decoding_message_size(limits.max_message_bytes)
        .accept_compressed(CompressionEncoding::Zstd);
    let telemetry = InterceptedService::new(
        telemetry,
        auth::require_sensor(Arc::clone(&shared.revocations)),
    );
    let command = CommandServer::new(command::CommandService::new(Arc::clone(&shared)))
        .max_decoding_message_size(limits.max_message_bytes)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Zstd);
    let command = InterceptedService::new(
        command,
        auth::require_sensor(Arc::clone(&shared.revocations)),
    );
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(enrollment)
        .add_service(telemetry)
        .add_service(command)
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown_signal(signals))
        .await
        .context("the gRPC server failed")?;
    checkpoint_at_stop(&shared);
    tracing::info!("edr-collector stopped");
    Ok(())
}

/// Copies the WAL into `collector.db` when `serve` stops. A copy of `collector.db` alone,
/// taken while `serve` is stopped, then contains every acknowledged event.
fn checkpoint_at_stop(shared: &Shared) {
    let checkpointed = shared
        .ingest
        .lock()
        .map_err(|_| "database lock poisoned".to_string())
        .and_then(|store| store.checkpoint_truncate().map_err(|err| err.to_string()));
    match checkpointed {
        Ok(true) => tracing::info!("copied the WAL into collector.db"),
        Ok(false) => tracing::warn!(
            "a reader kept part of the WAL from being copied into collector.db: copy collector.db-wal along with collector.db"
        ),
        Err(error) => tracing::warn!(
            %error,
            "failed to copy the WAL into collector.db: copy collector.db-wal along with collector.db"
        ),
    }
}

type TlsConnection =
    idle::IdleTimeout<admission::Admitted<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>;

/// Accepts TCP connections, closes those above the admission limits and runs each TLS
/// handshake in its own task.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    admission: Admission,
    idle_timeout: Duration,
    tx: tokio::sync::mpsc::Sender<Result<TlsConnection, std::io::Error>>,
) {
    let mut rejections = RejectionLog::default();
    // Any client can fail a handshake on purpose, so these warnings are rate-limited too.
    let handshake_failures = Arc::new(std::sync::Mutex::new(RejectionLog::default()));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // For example EMFILE when the process is out of file descriptors.
                tracing::warn!(error = %err, "failed to accept a TCP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Acks are small writes; without this, Nagle's algorithm can hold one back until the
        // previous segment is acknowledged. A failure only costs latency.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %err, "failed to set TCP_NODELAY");
        }
        let slots = match admission.admit() {
            Ok(slots) => slots,
            Err(err) => {
                rejections.record(peer, &err);
                drop(tcp);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let admission = admission.clone();
        let tx = tx.clone();
        let handshake_failures = Arc::clone(&handshake_failures);
        tokio::spawn(async move {
            match admission.handshake(&acceptor, tcp, slots).await {
                Ok(tls) => {
                    let _ = tx.send(Ok(idle::IdleTimeout::new(tls, idle_timeout))).await;
                }
                Err(err) => {
                    let allowed = handshake_failures
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .allow();
                    if let Some(suppressed) = allowed {
                        tracing::warn!(%peer, error = %err, suppressed, "closed a connection before TLS was established")
                    }
                }
            }
        });
    }
}

/// Signal handlers installed before `serve` reports that it is serving, so that a stop request
/// that arrives right after that line still stops the Collector gracefully.
struct ShutdownSignals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    /// Installs the handlers for SIGTERM, which service managers such as systemd send to stop a
    /// service, and for Ctrl-C.
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let install = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(handler) => Some(handler),
                Err(err) => {
                    tracing::warn!(error = %err, "failed to install the {name} handler; that signal stops the Collector without a graceful shutdown");
                    None
                }
            };
            Self {
                terminate: install(SignalKind::terminate(), "SIGTERM"),
                interrupt: install(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }
}

/// Waits for one of the installed signals and logs which one arrived.
async fn shutdown_signal(signals: ShutdownSignals) {
    #[cfg(unix)]
    {
        async fn next(handler: Option<tokio::signal::unix::Signal>) {
            match handler {
                Some(mut handler) => {
                    handler.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(signals.interrupt) => tracing::info!("received Ctrl-C, shutting down"),
            () = next(signals.terminate) => tracing::info!("received SIGTERM, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let ShutdownSignals {} = signals;
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("received Ctrl-C, shutting down");
    }
}

/// Reloads the revocation list from the database forever.
async fn reload_revocations(data_dir: std::path::PathBuf, shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(REVOCATION_RELOAD_INTERVAL);
    loop {
        interval.tick().await;
        let task_shared = Arc::clone(&shared);
        let result = tokio::task::spawn_blocking(move || {
            let store = task_shared
                .store
                .lock()
                .map_err(|_| "database lock poisoned".to_string())?;
            let set = store.revocation_set().map_err(|err| err.to_string())?;
            Ok::<_, String>(task_shared.revocations.replace(set))
        })
        .await;
        match result {
            Ok(Ok(true)) => tracing::info!(
                revoked = shared.revocations.snapshot().len(),
                "reloaded the revocation list"
            ),
            Ok(Ok(false)) => {}
            Ok(Err(err)) => {
                tracing::error!(data_dir = %data_dir.display(), error = %err, "failed to reload the revocation list; keeping the previous one")
            }
            Err(err) => tracing::error!(error = %err, "revocation reload task failed"),
        }
    }
}

/// Applies retention every `retention.interval`, forever.
async fn apply_retention(retention: Retention, shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(retention.interval);
    loop {
        interval.tick().await;
        let settings = retention.clone();
        let task_shared = Arc::clone(&shared);
        let result =
            tokio::task::spawn_blocking(move || retention_pass(&settings, &task_shared)).await;
        match result {
            Ok(Ok(outcome)) if outcome != RetentionOutcome::default() => tracing::info!(
                deleted_by_age = outcome.by_age,
                deleted_by_size = outcome.by_size,
                "retention deleted events"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::error!(error = %err, "retention failed; retrying at the next interval")
            }
            Err(err) => tracing::error!(error = %err, "retention task failed"),
        }
    }
}

/// Runs one retention pass. Each delete takes the ingest lock for one statement, so batches are
/// stored in between.
fn retention_pass(retention: &Retention, shared: &Shared) -> Result<RetentionOutcome, String> {
    let lock = || {
        shared
            .ingest
            .lock()
            .map_err(|_| "database lock poisoned".to_string())
    };
    let mut outcome = RetentionOutcome::default();
    if let Some(max_age) = retention.max_age {
        outcome.by_age = lock()?
            .delete_older_than(max_age, time::OffsetDateTime::now_utc())
            .map_err(|err| err.to_string())?;
    }
    if let Some(max_bytes) = retention.max_bytes {
        loop {
            let mut store = lock()?;
            if store.used_bytes().map_err(|err| err.to_string())? <= max_bytes {
                break;
            }
            let deleted = store.delete_oldest_chunk().map_err(|err| err.to_string())?;
            if deleted == 0 {
                break;
            }
            outcome.by_size += deleted;
        }
    }
    Ok(outcome)
}

/// Converts a time to a protobuf timestamp.
pub(crate) fn timestamp(at: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}
