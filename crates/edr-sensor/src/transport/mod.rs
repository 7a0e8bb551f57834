//! The sensor's link to the Collector: the telemetry stream that drains the ring buffer, the
//! heartbeats, certificate renewal and the command stream.
//!
//! # Link states
//!
//! ```text
//! Disconnected --(backoff delay)--> Connecting --(mTLS + HTTP/2 + Stream RPC)--> Streaming
//!      ^                                |                                          |
//!      +----------(retryable error)-----+----------(retryable error)---------------+
//!                                       ^                                          |
//!                                       +-----(certificate renewed, no delay)------+
//! ```
//!
//! [`Transport::run`] walks these states until shutdown or an error that reconnecting cannot
//! cure ([`TransportError::is_retryable`]). The state is published through
//! [`Transport::subscribe`]. Reconnect delays grow exponentially from `backoff_initial_ms` to
//! `backoff_max_ms` with full jitter. A session that ends with an error counts as a failed
//! attempt too, unless it worked: the Collector acknowledged records, or acknowledged a
//! heartbeat while no batch waited for its ack, or the session lasted `backoff_max_ms`. So a
//! Collector that accepts the stream and then refuses every batch (a full disk, say) gets
//! growing delays, not a reconnect every few hundred milliseconds. A failure is logged at WARN
//! once when its cause changes, and at DEBUG for every further attempt with the same cause. A
//! session that worked clears the cause. When the stream closes, the Collector's status is
//! read, so the log names its reason. The ring buffer is owned by the caller, which keeps
//! appending to it in every state.
//!
//! # Streaming
//!
//! - On entering `Streaming` the buffer is rewound, so every record not yet acknowledged is
//!   sent again with its original sequence number. The Collector drops records at or below its
//!   high-water mark for the sensor.
//! - Drained records form a batch, sent when its payload reaches `batch_max_bytes` or when its
//!   first record has waited `batch_max_delay_ms`. Messages are compressed with zstd.
//! - At most `max_unacked_batches` batches are in flight. Each `Ack { durable_seq }` is passed
//!   to [`Buffer::ack`], which frees the records. An ack above the highest number sent is
//!   clamped to it. No ack for `ack_timeout_secs` drops the link and resends.
//! - No heartbeat ack for `ack_timeout_secs` drops the link too. While the sensor has nothing
//!   to send, this is what notices a Collector or a network that stopped responding without
//!   closing the connection.
//! - A heartbeat is sent on entering `Streaming` and every `heartbeat_interval_secs`. It
//!   carries the [`LossCounters`], buffer usage and capacity, the gap ranges seen in drained
//!   records, the versions and the certificate's `not_after`.
//! - Every second the certificate's age is checked. Once two thirds of its validity (counted
//!   from enrollment or the last renewal) have passed, it is renewed through the identity
//!   store, which replaces the identity atomically. The link then reconnects at once with the
//!   new certificate. A failed renewal is logged and retried a heartbeat interval later.
//!
//! # Commands
//!
//! When enabled, the Command stream is opened next to the telemetry stream. Each envelope is
//! run by [`execute`], and its result is appended to the buffer's priority lane as a tagged
//! payload ([`encode_command_result`]), so it reaches the Collector as a
//! `BufferedRecord.command_result` with the same delivery guarantee as events.
//!
//! # What can be lost
//!
//! Nothing acknowledged by the Collector is resent and nothing unacknowledged is dropped by the
//! transport: a dropped link resends from the oldest unacknowledged record. Losses happen in
//! the ring buffer only (eviction when it is full, records not yet durable at a crash), and
//! the buffer reports them as gap records. A command envelope received while the buffer cannot
//! accept its result is logged at ERROR and its result is lost; the Collector sees no result.

mod backoff;
mod command;
mod config;
mod error;
mod health;
mod wire;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use edr_proto::v1::{self, collector_message, sensor_message};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

use crate::buffer::{Buffer, Lane, RecordKind};
use crate::enrollment::{self, EnrollmentError};
use crate::identity::{Identity, IdentityStore};

use backoff::{Backoff, SessionSigns, session_worked};
pub use command::execute;
pub use config::{ConfigError, TransportConfig};
pub use error::TransportError;
use health::GapLog;
pub use health::LossCounters;
pub use wire::{COMMAND_RESULT_TAG, encode_command_result};

/// Largest gRPC message either side may send: a batch of `batch_max_bytes` (2 MiB at most)
/// plus one record of the ring buffer's largest size (4 MiB), plus framing.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// How often the streaming loop looks for new durable records when the buffer had none.
/// How often the transport checks whether its certificate is due for renewal. The Collector
/// ends a stream whose certificate has expired, so the check cannot wait for a heartbeat: with
/// a short certificate lifetime, two thirds of it can pass between two heartbeats.
const RENEWAL_CHECK_INTERVAL: Duration = Duration::from_secs(1);
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Outbound messages queued in front of the HTTP/2 stream.
const OUTBOUND_QUEUE: usize = 4;

/// The state of the link, as published by [`Transport::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Waiting for the next connection attempt.
    Disconnected,
    /// Opening TCP, TLS, HTTP/2 and the streams.
    Connecting,
    /// The telemetry stream is open and records flow.
    Streaming,
}

/// The ring buffer shared by the parts that append (sources, the command handler) and the
/// transport that drains it.
pub type SharedBuffer = Arc<Mutex<Buffer>>;

/// The sensor side of the link to the Collector.
#[derive(Debug)]
pub struct Transport {
    config: TransportConfig,
    store: IdentityStore,
    buffer: SharedBuffer,
    losses: LossCounters,
    versions: v1::Versions,
    run_commands: bool,
    state: watch::Sender<LinkState>,
}

/// Why a streaming session ended.
enum SessionEnd {
    Shutdown,
    Renewed,
    Failed(TransportError),
}

/// The reason sending batches stopped.
enum Pumped {
    /// The outbound stream is closed; the Collector's status gives the reason.
    Closed,
    Failed(SessionEnd),
}

// === impl Transport ===

impl Transport {
    /// Builds a transport that streams `buffer` with the identity in `store`.
    pub fn new(
        config: TransportConfig,
        store: IdentityStore,
        buffer: SharedBuffer,
        losses: LossCounters,
        versions: v1::Versions,
    ) -> Result<Self, TransportError> {
        config.validate()?;
        let (state, _) = watch::channel(LinkState::Disconnected);
        Ok(Self {
            config,
            store,
            buffer,
            losses,
            versions,
            run_commands: true,
            state,
        })
    }

    /// Leaves the Command stream closed, for tools that only send recorded telemetry.
    pub fn without_commands(mut self) -> Self {
        self.run_commands = false;
        self
    }

    /// Returns a receiver of the link state.
    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    /// Runs the link until `shutdown` turns true or is dropped, or until an error that
    /// reconnecting cannot cure.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), TransportError> {
        let mut backoff = Backoff::new(
            Duration::from_millis(self.config.backoff_initial_ms),
            Duration::from_millis(self.config.backoff_max_ms),
        );
        let mut last_failure: Option<&'static str> = None;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }

            // The identity is loaded for every attempt, so a renewed certificate is used.
            self.state.send_replace(LinkState::Connecting);
            let identity = self.store.load()?;
            let url = identity.collector_url.clone();
            let connected = tokio::select! {
                connected = connect(&identity) => connected,
                () = stopped(&mut shutdown) => {
                    self.state.send_replace(LinkState::Disconnected);
                    return Ok(());
                }
            };
            let failure = match connected {
                Ok(channel) => {
                    let started = Instant::now();
                    let (end, signs) = self.stream(&identity, channel, &mut shutdown).await;
                    match end {
                        SessionEnd::Shutdown => {
                            self.state.send_replace(LinkState::Disconnected);
                            tracing::info!(collector = %url, "transport stopped");
                            return Ok(());
                        }
                        SessionEnd::Renewed => {
                            tracing::info!(collector = %url, "reconnecting with the renewed certificate");
                            backoff.reset();
                            last_failure = None;
                            continue;
                        }
                        SessionEnd::Failed(error) => {
                            if session_worked(signs, started.elapsed(), backoff.max_delay()) {
                                backoff.reset();
                                last_failure = None;
                            }
                            error
                        }
                    }
                }
                Err(error) => error,
            };

            self.state.send_replace(LinkState::Disconnected);
            if !failure.is_retryable() {
                tracing::error!(collector = %url, error = %failure, "transport stopped, the error needs an operator");
                return Err(failure);
            }
            if last_failure == Some(failure.cause()) {
                tracing::debug!(collector = %url, error = %failure, "reconnect attempt failed");
            } else {
                tracing::warn!(collector = %url, error = %failure, "link to the Collector down, buffering and reconnecting with backoff");
                last_failure = Some(failure.cause());
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                changed = shutdown.changed() => {
                    // A dropped sender means shutdown too.
                    if changed.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Runs one streaming session on an open channel. Returns how it ended and what it showed
    /// of the Collector.
    async fn stream(
        &self,
        identity: &Identity,
        channel: Channel,
        shutdown: &mut watch::Receiver<bool>,
    ) -> (SessionEnd, SessionSigns) {
        let mut client = v1::telemetry_client::TelemetryClient::new(channel.clone())
            .send_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Zstd)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (outbound, outbound_rx) = mpsc::channel::<v1::SensorMessage>(OUTBOUND_QUEUE);
        let opened = tokio::select! {
            opened = client.stream(ReceiverStream::new(outbound_rx)) => opened,
            () = stopped(shutdown) => return (SessionEnd::Shutdown, SessionSigns::default()),
        };
        let response = match opened {
            Ok(response) => response,
            Err(status) => {
                let error = TransportError::from_status("Telemetry", status);
                return (SessionEnd::Failed(error), SessionSigns::default());
            }
        };
        let mut inbound = response.into_inner();

        let commands = self
            .run_commands
            .then(|| tokio::spawn(run_commands(channel, Arc::clone(&self.buffer))));
        let _abort_commands = AbortOnDrop(commands);

        self.state.send_replace(LinkState::Streaming);
        tracing::info!(collector = %identity.collector_url, sensor_id = %identity.sensor_id, "streaming to the Collector");
        let mut session = Session::new(self, identity);
        let end = session.run(&outbound, &mut inbound, shutdown).await;
        lock(&self.buffer).rewind();
        let signs = SessionSigns {
            acked: session.acked,
            heartbeat_acked: session.heartbeat_acked,
            unacked_batches: !session.unacked.is_empty(),
        };
        (end, signs)
    }
}

/// How long a session whose outbound stream broke waits for the Collector's status.
const STATUS_WAIT: Duration = Duration::from_secs(1);

/// How long one send waits for room in the outbound queue before the session loop goes on
/// (shutdown, acks, the ack timeout) and tries again. The queue stays full while the Collector
/// reads nothing, for example when it is stalled.
const SEND_WAIT: Duration = Duration::from_millis(100);

/// Returns when `shutdown` turns true or its sender is dropped.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Opens an mTLS channel to the Collector named in `identity`.
async fn connect(identity: &Identity) -> Result<Channel, TransportError> {
    enrollment::connect_mtls(identity)
        .await
        .map_err(|error| match error {
            EnrollmentError::Identity(error) => TransportError::Identity(error),
            other => TransportError::Connect {
                url: identity.collector_url.clone(),
                reason: other.to_string(),
            },
        })
}

/// State of one streaming session.
struct Session<'a> {
    transport: &'a Transport,
    identity: &'a Identity,
    pending: Vec<v1::BufferedRecord>,
    pending_bytes: u64,
    pending_since: Option<Instant>,
    /// Last sequence number and send time of each batch not yet acknowledged.
    unacked: VecDeque<(u64, Instant)>,
    sent_seq: u64,
    /// Whether an ack in this session freed records.
    acked: bool,
    /// Whether the Collector acknowledged a heartbeat in this session.
    heartbeat_acked: bool,
    /// Send times of the heartbeats not yet acknowledged, oldest first. The Collector acks
    /// them in the order they arrive.
    heartbeats_unacked: VecDeque<Instant>,
    /// A batch taken for sending that found no room in the outbound queue yet.
    blocked: Option<v1::SensorMessage>,
    gaps: GapLog,
}

// === impl Session ===

impl<'a> Session<'a> {
    fn new(transport: &'a Transport, identity: &'a Identity) -> Self {
        let buffer = lock(&transport.buffer);
        let sent_seq = buffer.acked_seq();
        // Losses found when the buffer was opened reach the first heartbeat, which is sent
        // before their gap records are drained.
        let mut gaps = GapLog::default();
        for gap in buffer.open_gaps() {
            gaps.push(gap.first_seq, gap.last_seq);
        }
        drop(buffer);
        Self {
            transport,
            identity,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_since: None,
            unacked: VecDeque::new(),
            sent_seq,
            acked: false,
            heartbeat_acked: false,
            heartbeats_unacked: VecDeque::new(),
            blocked: None,
            gaps,
        }
    }

    async fn run(
        &mut self,
        outbound: &mpsc::Sender<v1::SensorMessage>,
        inbound: &mut tonic::Streaming<v1::CollectorMessage>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let config = &self.transport.config;
        let mut heartbeat = tokio::time::interval(config.heartbeat_interval());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewal_check = tokio::time::interval(RENEWAL_CHECK_INTERVAL);
        renewal_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_renewal_attempt = Instant::now();

        loop {
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return SessionEnd::Shutdown;
                    }
                }
                message = inbound.next() => {
                    if let Err(end) = self.receive(message) {
                        return end;
                    }
                }
                _ = renewal_check.tick(), if Instant::now() >= next_renewal_attempt => {
                    if self.renewal_due() {
                        match enrollment::renew(&self.transport.store).await {
                            Ok(_) => return SessionEnd::Renewed,
                            Err(error) => {
                                let retry = config.heartbeat_interval();
                                tracing::warn!(%error, retry_in_secs = retry.as_secs(), "certificate renewal failed, retrying after a heartbeat interval");
                                next_renewal_attempt = Instant::now() + retry;
                            }
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    // A heartbeat that finds the queue full is dropped; the next one follows.
                    let message = self.heartbeat();
                    match tokio::time::timeout(SEND_WAIT, outbound.send(message)).await {
                        Ok(Ok(())) => {
                            self.heartbeats_unacked.push_back(Instant::now());
                        }
                        Ok(Err(_)) => return self.closed(inbound, shutdown).await,
                        Err(_) => tracing::debug!("heartbeat dropped, the outbound queue is full"),
                    }
                }
                _ = poll.tick() => {
                    match self.pump(outbound).await {
                        Ok(()) => {}
                        Err(Pumped::Closed) => return self.closed(inbound, shutdown).await,
                        Err(Pumped::Failed(end)) => return end,
                    }
                }
            }
        }
    }

    /// Handles one message from the Collector.
    fn receive(
        &mut self,
        message: Option<Result<v1::CollectorMessage, tonic::Status>>,
    ) -> Result<(), SessionEnd> {
        let message = match message {
            None => {
                return Err(SessionEnd::Failed(TransportError::StreamClosed {
                    rpc: "Telemetry",
                    reason: "closed without a status".to_owned(),
                }));
            }
            Some(Err(status)) => {
                return Err(SessionEnd::Failed(TransportError::from_status(
                    "Telemetry",
                    status,
                )));
            }
            Some(Ok(message)) => message,
        };
        match message.kind {
            Some(collector_message::Kind::Ack(ack)) => {
                let acked = if ack.durable_seq > self.sent_seq {
                    tracing::debug!(
                        durable_seq = ack.durable_seq,
                        sent_seq = self.sent_seq,
                        "ack above the highest number sent, clamped"
                    );
                    self.sent_seq
                } else {
                    ack.durable_seq
                };
                let mut buffer = lock(&self.transport.buffer);
                let before = buffer.acked_seq();
                buffer
                    .ack(acked)
                    .map_err(|error| SessionEnd::Failed(error.into()))?;
                self.acked |= buffer.acked_seq() > before;
                drop(buffer);
                while self
                    .unacked
                    .front()
                    .is_some_and(|(last_seq, _)| *last_seq <= acked)
                {
                    self.unacked.pop_front();
                }
            }
            Some(collector_message::Kind::HeartbeatAck(ack)) => {
                tracing::debug!(sensor_id = %ack.sensor_id, "heartbeat acknowledged");
                self.heartbeat_acked = true;
                self.heartbeats_unacked.pop_front();
            }
            None => tracing::debug!("Collector message without a kind ignored"),
        }
        Ok(())
    }

    /// Returns why the telemetry stream closed: the Collector's status when it sends one within
    /// [`STATUS_WAIT`], otherwise [`TransportError::StreamClosed`]. Acks that arrive first are
    /// applied.
    async fn closed(
        &mut self,
        inbound: &mut tonic::Streaming<v1::CollectorMessage>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let deadline = tokio::time::sleep(STATUS_WAIT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = stopped(shutdown) => return SessionEnd::Shutdown,
                message = inbound.next() => match message {
                    Some(Ok(message)) => {
                        if let Err(end) = self.receive(Some(Ok(message))) {
                            return end;
                        }
                    }
                    Some(Err(status)) => {
                        return SessionEnd::Failed(TransportError::from_status("Telemetry", status));
                    }
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        SessionEnd::Failed(TransportError::StreamClosed {
            rpc: "Telemetry",
            reason: "it closed while the sensor was sending, without a status".to_owned(),
        })
    }

    /// Moves durable records into the pending batch and sends it when it is full or old enough.
    async fn pump(&mut self, outbound: &mpsc::Sender<v1::SensorMessage>) -> Result<(), Pumped> {
        let config = &self.transport.config;
        if let Some((seq, sent_at)) = self.unacked.front()
            && sent_at.elapsed() >= config.ack_timeout()
        {
            return Err(Pumped::Failed(SessionEnd::Failed(
                TransportError::AckTimeout {
                    seq: *seq,
                    waited_secs: config.ack_timeout_secs,
                },
            )));
        }
        // An idle link sends nothing but heartbeats, so only their acks show that it still
        // works: without this check a Collector or network that silently stopped responding
        // would hold an idle sensor, and the commands it should receive, until TCP gave up.
        if self
            .heartbeats_unacked
            .front()
            .is_some_and(|sent_at| sent_at.elapsed() >= config.ack_timeout())
        {
            return Err(Pumped::Failed(SessionEnd::Failed(
                TransportError::HeartbeatTimeout {
                    waited_secs: config.ack_timeout_secs,
                },
            )));
        }

        if let Some(batch) = self.blocked.take()
            && !self.send(outbound, batch).await?
        {
            return Ok(());
        }
        loop {
            if self.unacked.len() as u64 >= config.max_unacked_batches {
                return Ok(());
            }
            self.fill()
                .map_err(|error| Pumped::Failed(SessionEnd::Failed(error)))?;
            let full = self.pending_bytes >= config.batch_max_bytes;
            let aged = self
                .pending_since
                .is_some_and(|since| since.elapsed() >= config.batch_max_delay());
            if !(full || aged) {
                return Ok(());
            }
            let batch = self.take_batch();
            if !self.send(outbound, batch).await? || !full {
                return Ok(());
            }
        }
    }

    /// Sends `batch`, or keeps it in `blocked` when the outbound queue has no room within
    /// [`SEND_WAIT`]. Returns whether it was sent.
    async fn send(
        &mut self,
        outbound: &mpsc::Sender<v1::SensorMessage>,
        batch: v1::SensorMessage,
    ) -> Result<bool, Pumped> {
        match tokio::time::timeout(SEND_WAIT, outbound.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(batch);
                Ok(true)
            }
            Ok(Err(_)) => Err(Pumped::Closed),
            Err(_) => {
                self.blocked = Some(batch);
                Ok(false)
            }
        }
    }

    /// Drains durable records into the pending batch until it reaches `batch_max_bytes` or the
    /// buffer has nothing more to hand out.
    fn fill(&mut self) -> Result<(), TransportError> {
        let max_bytes = self.transport.config.batch_max_bytes;
        let mut buffer = lock(&self.transport.buffer);
        buffer.tick()?;
        while self.pending_bytes < max_bytes {
            let Some(record) = buffer.drain(1)?.pop() else {
                break;
            };
            if let RecordKind::Gap(gap) = &record.kind {
                self.gaps.push(gap.first_seq, gap.last_seq);
            }
            self.pending_bytes += wire::record_bytes(&record);
            self.pending_since.get_or_insert_with(Instant::now);
            self.pending.push(wire::to_wire(record));
        }
        Ok(())
    }

    fn take_batch(&mut self) -> v1::SensorMessage {
        let records = std::mem::take(&mut self.pending);
        let first_seq = records.first().map_or(0, |record| record.seq);
        let last_seq = records.last().map_or(0, |record| record.seq);
        self.pending_bytes = 0;
        self.pending_since = None;
        self.sent_seq = self.sent_seq.max(last_seq);
        self.unacked.push_back((last_seq, Instant::now()));
        v1::SensorMessage {
            kind: Some(sensor_message::Kind::Batch(v1::EventBatch {
                first_seq,
                last_seq,
                records,
            })),
        }
    }

    fn heartbeat(&mut self) -> v1::SensorMessage {
        let metrics = lock(&self.transport.buffer).metrics();
        let health = v1::SensorHealth {
            events_lost: self.transport.losses.snapshot(),
            buffer: Some(v1::BufferUsage {
                used_bytes: metrics.disk_bytes,
                capacity_bytes: metrics.capacity_bytes,
                gaps: self.gaps.ranges(),
            }),
            versions: Some(self.transport.versions.clone()),
            certificate_not_after: Some(wire::timestamp_from(self.identity.not_after)),
        };
        v1::SensorMessage {
            kind: Some(sensor_message::Kind::Heartbeat(v1::Heartbeat {
                sent_at: Some(wire::timestamp_now()),
                health: Some(health),
            })),
        }
    }

    fn renewal_due(&self) -> bool {
        let issued = self
            .identity
            .renewed_at
            .unwrap_or(self.identity.enrolled_at);
        edr_pki::renewal_due(
            issued,
            self.identity.not_after,
            time::OffsetDateTime::now_utc(),
        )
    }
}

/// Receives command envelopes, runs them and appends their results to the priority lane.
async fn run_commands(channel: Channel, buffer: SharedBuffer) {
    let mut client = v1::command_client::CommandClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    // Results travel through the telemetry stream, so this direction stays open and empty.
    let (_keep_open, results) = mpsc::channel::<v1::CommandResult>(1);
    let mut envelopes = match client.stream(ReceiverStream::new(results)).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let error = TransportError::from_status("Command", status);
            tracing::warn!(%error, "commands are not received until the sensor reconnects");
            return;
        }
    };
    while let Some(envelope) = envelopes.next().await {
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(status) => {
                tracing::debug!(code = ?status.code(), "command stream ended");
                return;
            }
        };
        let result = execute(&envelope, time::OffsetDateTime::now_utc());
        let payload = encode_command_result(&result);
        match lock(&buffer).append(Lane::Priority, &payload) {
            Ok(seq) => {
                tracing::info!(command_id = %result.command_id, status = ?result.status(), seq, "command handled")
            }
            Err(error) => {
                tracing::error!(command_id = %result.command_id, %error, "command result lost, the ring buffer rejected it")
            }
        }
    }
}

/// Aborts a spawned task when the session that owns it ends.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Locks the shared buffer. A panic while it was held leaves the buffer's own state
/// consistent (every method either completes or poisons the buffer itself), so the data of a
/// poisoned lock is used.
pub fn lock(buffer: &SharedBuffer) -> MutexGuard<'_, Buffer> {
    buffer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
