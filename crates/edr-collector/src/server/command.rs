//! The Command service. This version sends one `Ping` when a sensor opens the stream and
//! logs the results it receives.

use edr_proto::v1::command_server::Command;
use edr_proto::v1::{CommandEnvelope, CommandResult, Ping, command_envelope};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{auth, timestamp};

/// How long a ping stays valid.
const PING_TTL: time::Duration = time::Duration::seconds(60);

#[derive(Debug)]
pub(crate) struct CommandService;

#[tonic::async_trait]
impl Command for CommandService {
    type StreamStream = ReceiverStream<Result<CommandEnvelope, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<CommandResult>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let sensor_id = auth::authenticated(&request)?;
        let mut results = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);

        let now = time::OffsetDateTime::now_utc();
        let ping = CommandEnvelope {
            command_id: uuid::Uuid::new_v4().to_string(),
            issued_at: Some(timestamp(now)),
            expires_at: Some(timestamp(now + PING_TTL)),
            kind: Some(command_envelope::Kind::Ping(Ping {})),
        };
        let ping_id = ping.command_id.clone();
        tx.send(Ok(ping))
            .await
            .map_err(|_| Status::internal("command stream closed before the first envelope"))?;

        tokio::spawn(async move {
            // Keep `tx` alive so the outbound stream stays open while results arrive.
            let _tx = tx;
            while let Some(result) = results.next().await {
                match result {
                    Ok(result) => tracing::info!(
                        %sensor_id,
                        command_id = %result.command_id,
                        status = ?result.status(),
                        is_ping = result.command_id == ping_id,
                        "command result"
                    ),
                    Err(status) => {
                        tracing::debug!(%sensor_id, %status, "command stream ended");
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
