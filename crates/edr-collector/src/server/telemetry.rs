//! The Telemetry service. This version acknowledges heartbeats only.
//!
//! NOTE: event ingest is not implemented: an event batch ends the stream with
//! `UNIMPLEMENTED` and is not acked, so the sensor keeps the events buffered.

use edr_proto::v1::telemetry_server::Telemetry;
use edr_proto::v1::{
    CollectorMessage, HeartbeatAck, SensorMessage, collector_message, sensor_message,
};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{auth, timestamp};

#[derive(Debug)]
pub(crate) struct TelemetryService;

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    type StreamStream = ReceiverStream<Result<CollectorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<SensorMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let sensor_id = auth::authenticated(&request)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tracing::info!(%sensor_id, "telemetry stream opened");

        tokio::spawn(async move {
            while let Some(message) = inbound.next().await {
                let reply = match message.map(|m| m.kind) {
                    Ok(Some(sensor_message::Kind::Heartbeat(_))) => {
                        tracing::debug!(%sensor_id, "heartbeat");
                        Ok(CollectorMessage {
                            kind: Some(collector_message::Kind::HeartbeatAck(HeartbeatAck {
                                sensor_id: sensor_id.to_string(),
                                received_at: Some(timestamp(time::OffsetDateTime::now_utc())),
                            })),
                        })
                    }
                    Ok(Some(sensor_message::Kind::Batch(batch))) => {
                        Err(Status::unimplemented(format!(
                            "event ingest is not implemented in this Collector version; batch [{}, {}] was not stored: keep it buffered",
                            batch.first_seq, batch.last_seq
                        )))
                    }
                    Ok(None) => Err(Status::invalid_argument("sensor message without a kind")),
                    Err(status) => {
                        tracing::debug!(%sensor_id, %status, "telemetry stream ended");
                        break;
                    }
                };
                let stop = reply.is_err();
                if tx.send(reply).await.is_err() || stop {
                    break;
                }
            }
            tracing::info!(%sensor_id, "telemetry stream closed");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
