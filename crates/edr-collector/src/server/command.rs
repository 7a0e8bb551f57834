//! The Command service: delivers queued commands to the connected sensor and stores results.
//!
//! `edr-collector command ping` writes a row to the `commands` table; the stream task polls
//! the table every [`POLL_INTERVAL`] for undelivered, unexpired commands of its sensor, sends
//! them and marks them delivered. A command is sent at most once: if the stream breaks after
//! sending, the sensor may never run it and the command stays without a result. Results
//! arriving here or through the telemetry stream are stored once per command id.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edr_proto::v1::command_server::Command;
use edr_proto::v1::{CommandEnvelope, CommandResult, Ping, command_envelope};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Shared, auth, timestamp};
use crate::store::commands::{ResultOutcome, id_preview};
use crate::store::query::CommandRow;

/// How often a stream looks for newly queued commands.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub(crate) struct CommandService {
    shared: Arc<Shared>,
}

impl CommandService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl Command for CommandService {
    type StreamStream = ReceiverStream<Result<CommandEnvelope, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<CommandResult>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let sensor = auth::authenticated(&request)?;
        let sensor_id = sensor.id.to_string();
        let mut results = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tracing::info!(%sensor_id, "sensor connected: command stream opened");

        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(POLL_INTERVAL);
            let reason = loop {
                tokio::select! {
                    _ = poll.tick() => {
                        // A sensor revoked, or whose certificate expired, since the stream
                        // opened gets no more commands.
                        let now = time::OffsetDateTime::now_utc();
                        if let Err(status) = sensor.check_still_valid(&shared.revocations, now) {
                            let reason = format!("no longer authorized: {}", status.message());
                            let _ = tx.send(Err(status)).await;
                            break reason;
                        }
                        if let Err(reason) = deliver_pending(&shared, &sensor_id, &tx).await {
                            break reason;
                        }
                    }
                    result = results.next() => match result {
                        Some(Ok(result)) => store_result(&shared, &sensor_id, result).await,
                        Some(Err(status)) => break format!("stream error: {}", status.message()),
                        None => break "closed by the sensor".to_string(),
                    },
                }
            };
            tracing::info!(%sensor_id, %reason, "sensor disconnected: command stream closed");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends every pending command; returns the reason when the stream must end.
async fn deliver_pending(
    shared: &Arc<Shared>,
    sensor_id: &str,
    tx: &tokio::sync::mpsc::Sender<Result<CommandEnvelope, Status>>,
) -> Result<(), String> {
    let task_shared = Arc::clone(shared);
    let task_sensor = sensor_id.to_string();
    let pending = tokio::task::spawn_blocking(move || {
        let store = task_shared
            .store
            .lock()
            .map_err(|_| "database lock poisoned".to_string())?;
        store
            .pending_commands(&task_sensor, time::OffsetDateTime::now_utc())
            .map_err(|err| err.to_string())
    })
    .await
    .map_err(|err| format!("command poll task failed: {err}"))?;
    let pending = match pending {
        Ok(pending) => pending,
        Err(err) => {
            tracing::warn!(%sensor_id, error = %err, "failed to read pending commands; retrying");
            return Ok(());
        }
    };

    for command in pending {
        let Some(envelope) = envelope(&command) else {
            tracing::warn!(%sensor_id, command_id = %command.id, kind = %command.kind, "skipping a command of unknown kind");
            continue;
        };
        if tx.send(Ok(envelope)).await.is_err() {
            return Err("closed by the sensor".to_string());
        }
        tracing::info!(%sensor_id, command_id = %command.id, kind = %command.kind, "sent command");
        let task_shared = Arc::clone(shared);
        let marked = tokio::task::spawn_blocking(move || {
            let store = task_shared
                .store
                .lock()
                .map_err(|_| "database lock poisoned".to_string())?;
            store
                .mark_delivered(&command.id, time::OffsetDateTime::now_utc())
                .map_err(|err| err.to_string())
        })
        .await;
        if !matches!(marked, Ok(Ok(()))) {
            tracing::warn!(%sensor_id, ?marked, "failed to mark a command delivered; it may be sent again");
        }
    }
    Ok(())
}

fn envelope(command: &CommandRow) -> Option<CommandEnvelope> {
    let kind = match command.kind.as_str() {
        "ping" => command_envelope::Kind::Ping(Ping {}),
        _ => return None,
    };
    Some(CommandEnvelope {
        command_id: command.id.clone(),
        issued_at: Some(timestamp(command.issued_at)),
        expires_at: Some(timestamp(command.expires_at)),
        kind: Some(kind),
    })
}

async fn store_result(shared: &Arc<Shared>, sensor_id: &str, result: CommandResult) {
    let command_id = result.command_id.clone();
    let status = result.status();
    let task_shared = Arc::clone(shared);
    let task_sensor = sensor_id.to_string();
    let stored = tokio::task::spawn_blocking(move || {
        let store = task_shared
            .store
            .lock()
            .map_err(|_| "database lock poisoned".to_string())?;
        store
            .record_command_result(&task_sensor, &result, time::OffsetDateTime::now_utc())
            .map_err(|err| err.to_string())
    })
    .await;
    let command_id = id_preview(&command_id);
    match stored {
        Ok(Ok(ResultOutcome::Stored)) => {
            tracing::info!(%sensor_id, ?command_id, ?status, "command result")
        }
        Ok(Ok(ResultOutcome::Duplicate)) => {
            tracing::debug!(%sensor_id, ?command_id, "ignored a second result of a command")
        }
        Ok(Ok(ResultOutcome::Dropped(reason))) => {
            shared
                .metrics
                .command_results_dropped
                .fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) =
                crate::store::commands::DROP_WARNINGS.allow_at(sensor_id, std::time::Instant::now())
            {
                tracing::warn!(%sensor_id, ?command_id, %reason, suppressed, "dropped a command result that this sensor may not report; further drops of this sensor in the next 10 s are only counted in edr_collector_command_results_dropped_total");
            }
        }
        other => {
            tracing::error!(%sensor_id, ?command_id, ?other, "failed to store a command result")
        }
    }
}
