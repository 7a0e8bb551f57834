//! The Telemetry service: stores event batches and records heartbeats.
//!
//! Each stream runs in its own task. A batch is validated (see [`crate::ingest`]) and stored
//! (see [`crate::store::ingest`]) on the blocking pool; the ack carries the sensor's
//! high-water mark after the commit. A batch is never acked before its transaction commits.
//!
//! A stream ends, with one log line naming the sensor and the reason, when the sensor closes
//! it, when it sends nothing for the idle timeout, when a batch is invalid
//! (`INVALID_ARGUMENT` naming the record's seq and the reason) or when the store fails
//! (`UNAVAILABLE`; the sensor resends later). None of these affects other streams.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use edr_proto::v1::telemetry_server::Telemetry;
use edr_proto::v1::{
    Ack, CollectorMessage, EventBatch, Heartbeat, HeartbeatAck, SensorMessage, collector_message,
    sensor_message,
};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Shared, auth, timestamp};
use crate::ingest::{BatchError, validate};
use crate::store::ingest::IngestOutcome;

#[derive(Debug)]
pub(crate) struct TelemetryService {
    shared: Arc<Shared>,
}

impl TelemetryService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// Why storing a batch failed.
#[derive(Debug, thiserror::Error)]
enum StoreBatchError {
    /// The batch broke a validation rule; the sensor's fault.
    #[error(transparent)]
    Invalid(#[from] BatchError),
    /// The database failed; retryable.
    #[error("failed to store the batch: {0}")]
    Store(String),
}

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    type StreamStream = ReceiverStream<Result<CollectorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<SensorMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let sensor_id = auth::authenticated(&request)?;
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let shared = Arc::clone(&self.shared);
        shared
            .metrics
            .streams_opened
            .fetch_add(1, Ordering::Relaxed);
        shared
            .metrics
            .active_streams
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(%sensor_id, ?peer, "sensor connected: telemetry stream opened");

        tokio::spawn(async move {
            let reason = run_stream(&shared, &sensor_id.to_string(), inbound, &tx).await;
            shared
                .metrics
                .active_streams
                .fetch_sub(1, Ordering::Relaxed);
            tracing::info!(%sensor_id, %reason, "sensor disconnected: telemetry stream closed");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Outbound = tokio::sync::mpsc::Sender<Result<CollectorMessage, Status>>;

/// Serves one stream until it ends and returns the reason.
async fn run_stream(
    shared: &Arc<Shared>,
    sensor_id: &str,
    mut inbound: Streaming<SensorMessage>,
    tx: &Outbound,
) -> String {
    let idle = shared.limits.stream_idle_timeout;
    loop {
        let message = match tokio::time::timeout(idle, inbound.next()).await {
            Err(_) => {
                let reason = format!("idle timeout: no message for {} s", idle.as_secs());
                let _ = tx
                    .send(Err(Status::deadline_exceeded(format!(
                        "{reason}; send heartbeats more often than that, then reconnect"
                    ))))
                    .await;
                return reason;
            }
            Ok(None) => return "closed by the sensor".to_string(),
            Ok(Some(Err(status))) => {
                // For example a message above the size limit; pass the reason on, because the
                // sensor sees only the response stream.
                let reason = format!("stream error: {:?}: {}", status.code(), status.message());
                let _ = tx.send(Err(status)).await;
                return reason;
            }
            Ok(Some(Ok(message))) => message,
        };

        let reply = match message.kind {
            Some(sensor_message::Kind::Heartbeat(heartbeat)) => {
                Ok(handle_heartbeat(shared, sensor_id, heartbeat).await)
            }
            Some(sensor_message::Kind::Batch(batch)) => {
                handle_batch(shared, sensor_id, batch).await
            }
            None => Err(Status::invalid_argument(
                "sensor message without a kind: send a batch or a heartbeat",
            )),
        };
        match reply {
            Ok(reply) => {
                if tx.send(Ok(reply)).await.is_err() {
                    return "closed by the sensor before the reply".to_string();
                }
            }
            Err(status) => {
                let reason = format!("{:?}: {}", status.code(), status.message());
                let _ = tx.send(Err(status)).await;
                return reason;
            }
        }
    }
}

async fn handle_heartbeat(
    shared: &Arc<Shared>,
    sensor_id: &str,
    heartbeat: Heartbeat,
) -> CollectorMessage {
    shared.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
    let now = time::OffsetDateTime::now_utc();
    let task_shared = Arc::clone(shared);
    let task_sensor = sensor_id.to_string();
    let stored = tokio::task::spawn_blocking(move || {
        let store = task_shared
            .ingest
            .lock()
            .map_err(|_| "database lock poisoned".to_string())?;
        store
            .record_heartbeat(&task_sensor, heartbeat.health.as_ref(), now)
            .map_err(|err| err.to_string())
    })
    .await;
    match stored {
        Ok(Ok(())) => tracing::debug!(%sensor_id, "heartbeat"),
        Ok(Err(err)) => tracing::warn!(%sensor_id, error = %err, "failed to record a heartbeat"),
        Err(err) => tracing::warn!(%sensor_id, error = %err, "heartbeat task failed"),
    }
    CollectorMessage {
        kind: Some(collector_message::Kind::HeartbeatAck(HeartbeatAck {
            sensor_id: sensor_id.to_string(),
            received_at: Some(timestamp(now)),
        })),
    }
}

async fn handle_batch(
    shared: &Arc<Shared>,
    sensor_id: &str,
    batch: EventBatch,
) -> Result<CollectorMessage, Status> {
    let (first_seq, last_seq) = (batch.first_seq, batch.last_seq);
    let task_shared = Arc::clone(shared);
    let task_sensor = sensor_id.to_string();
    let result =
        tokio::task::spawn_blocking(move || store_batch(&task_shared, &task_sensor, &batch))
            .await
            .map_err(|err| StoreBatchError::Store(format!("ingest task failed: {err}")))
            .and_then(|result| result);

    match result {
        Ok(outcome) => {
            tracing::debug!(%sensor_id, first_seq, last_seq, ?outcome, "stored batch");
            Ok(CollectorMessage {
                kind: Some(collector_message::Kind::Ack(Ack {
                    durable_seq: outcome.durable_seq,
                })),
            })
        }
        Err(StoreBatchError::Invalid(err)) => {
            shared
                .metrics
                .batches_rejected
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%sensor_id, first_seq, last_seq, error = %err, "rejected an invalid batch");
            Err(Status::invalid_argument(format!(
                "batch [{first_seq}, {last_seq}] rejected: {err}"
            )))
        }
        Err(StoreBatchError::Store(err)) => {
            shared
                .metrics
                .batches_rejected
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(%sensor_id, first_seq, last_seq, error = %err, "failed to store a batch; the sensor keeps it and resends");
            Err(Status::unavailable(format!(
                "batch [{first_seq}, {last_seq}] was not stored ({err}): resend it later"
            )))
        }
    }
}

/// Validates and stores one batch; runs on the blocking pool.
fn store_batch(
    shared: &Shared,
    sensor_id: &str,
    batch: &EventBatch,
) -> Result<IngestOutcome, StoreBatchError> {
    let valid = validate(batch, shared.limits.max_records_per_batch)?;
    let now = time::OffsetDateTime::now_utc();
    let mut store = shared
        .ingest
        .lock()
        .map_err(|_| StoreBatchError::Store("database lock poisoned".to_string()))?;
    let started = Instant::now();
    let outcome = store
        .ingest_batch(sensor_id, &valid, now)
        .map_err(|err| StoreBatchError::Store(err.to_string()))?;
    drop(store);

    let metrics = &shared.metrics;
    metrics.observe_store_latency(started.elapsed());
    metrics.batches_stored.fetch_add(1, Ordering::Relaxed);
    metrics
        .events_ingested
        .fetch_add(outcome.events, Ordering::Relaxed);
    metrics
        .records_other
        .fetch_add(outcome.other, Ordering::Relaxed);
    metrics
        .duplicates_dropped
        .fetch_add(outcome.duplicates, Ordering::Relaxed);
    metrics
        .event_bytes
        .fetch_add(valid.event_bytes as u64, Ordering::Relaxed);
    Ok(outcome)
}
