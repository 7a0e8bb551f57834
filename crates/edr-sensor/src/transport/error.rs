//! Errors of the transport.

use crate::buffer::BufferError;
use crate::enrollment::EnrollmentError;
use crate::identity::IdentityError;

use super::ConfigError;

/// Why the link to the Collector failed or the transport stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The Collector is unreachable, or it rejected the TCP, TLS or HTTP/2 handshake. The
    /// sensor keeps recording and reconnects with backoff.
    #[error("cannot connect to the Collector at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The Collector rejected the stream with a gRPC status.
    #[error("the Collector rejected the {rpc} stream: {code:?}: {message}")]
    Rejected {
        rpc: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// Something in front of the Collector, such as a proxy or load balancer, ended the
    /// stream with an HTTP status and no gRPC status. The sensor reconnects with backoff.
    #[error(
        "the {rpc} stream got HTTP status {http_status} without a gRPC status, so a proxy or load balancer in front of the Collector answered, not the Collector: check its routing to the Collector; the sensor reconnects"
    )]
    HttpStatus { rpc: &'static str, http_status: u16 },
    /// A stream ended without a status from the Collector: the Collector closed it, or the
    /// connection broke (the Collector stopped, the network failed).
    #[error("the {rpc} stream to the Collector ended: {reason}")]
    StreamClosed { rpc: &'static str, reason: String },
    /// No ack arrived for a batch within the configured time; the sensor reconnects and
    /// resends.
    #[error("no ack for sequence number {seq} within {waited_secs} s; reconnecting to resend")]
    AckTimeout { seq: u64, waited_secs: u64 },
    /// No ack arrived for a heartbeat within the configured time: the Collector or the
    /// network stopped responding. The sensor reconnects.
    #[error(
        "no heartbeat ack within {waited_secs} s, so the Collector or the network stopped responding; reconnecting"
    )]
    HeartbeatTimeout { waited_secs: u64 },
    /// The ring buffer failed.
    #[error("ring buffer: {0}")]
    Buffer(#[from] BufferError),
    /// The stored identity cannot be loaded.
    #[error("sensor identity: {0}")]
    Identity(#[from] IdentityError),
    /// Renewing the certificate failed.
    #[error("certificate renewal failed: {0}")]
    Renewal(EnrollmentError),
    /// The transport configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl TransportError {
    /// Returns whether reconnecting can cure the failure. The transport stops on the others.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Connect { .. }
            | TransportError::HttpStatus { .. }
            | TransportError::StreamClosed { .. }
            | TransportError::AckTimeout { .. }
            | TransportError::HeartbeatTimeout { .. } => true,
            TransportError::Rejected { code, .. } => !matches!(
                code,
                tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unimplemented
            ),
            TransportError::Buffer(error) => error.is_retryable(),
            TransportError::Renewal(error) => error.is_retryable(),
            TransportError::Identity(_) | TransportError::Config(_) => false,
        }
    }

    /// Returns a short stable name of the cause, for logs that must not repeat per attempt.
    pub fn cause(&self) -> &'static str {
        match self {
            TransportError::Connect { .. } => "connect",
            TransportError::Rejected { .. } => "rejected",
            TransportError::HttpStatus { .. } => "http_status",
            TransportError::StreamClosed { .. } => "stream_closed",
            TransportError::AckTimeout { .. } => "ack_timeout",
            TransportError::HeartbeatTimeout { .. } => "heartbeat_timeout",
            TransportError::Buffer(_) => "buffer",
            TransportError::Identity(_) => "identity",
            TransportError::Renewal(_) => "renewal",
            TransportError::Config(_) => "config",
        }
    }

    /// Maps a status from a stream. tonic makes a status with a source from a broken
    /// connection, and one that [`crate::connect::http_status_without_grpc`] recognises from a
    /// proxy's HTTP response. The Collector sent any other.
    pub(crate) fn from_status(rpc: &'static str, status: tonic::Status) -> Self {
        if let Some(http_status) = crate::connect::http_status_without_grpc(&status) {
            return TransportError::HttpStatus { rpc, http_status };
        }
        let message = status.message().chars().take(512).collect();
        if std::error::Error::source(&status).is_some() {
            return TransportError::StreamClosed {
                rpc,
                reason: message,
            };
        }
        TransportError::Rejected {
            rpc,
            code: status.code(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::status_of_http_response;

    #[tokio::test]
    async fn proxy_http_status_is_retried() {
        let cases = [
            (401, ""),
            (403, ""),
            (404, ""),
            (502, ""),
            (401, "<html>Unauthorized</html>"),
            (404, "<html>Not Found</html>"),
        ];
        for (code, body) in cases {
            let status = status_of_http_response(code, body).await;
            let error = TransportError::from_status("Telemetry", status);
            assert!(
                matches!(error, TransportError::HttpStatus { http_status, .. } if http_status == code),
                "{code} {body:?}: {error:?}"
            );
            assert!(error.is_retryable(), "{code}");
            assert!(error.to_string().contains("proxy"), "{error}");
        }
    }

    /// A body that is not gRPC with status 200 came from the server that handled the RPC
    /// itself, so it stays a rejection.
    #[tokio::test]
    async fn status_200_error_page_is_rejection() {
        let status = status_of_http_response(200, "<html>hello</html>").await;
        let error = TransportError::from_status("Telemetry", status);
        assert!(
            matches!(error, TransportError::Rejected { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn collector_rejection_is_final() {
        let status = tonic::Status::unauthenticated("sensor certificate revoked");
        let error = TransportError::from_status("Telemetry", status);
        assert!(
            matches!(
                error,
                TransportError::Rejected {
                    code: tonic::Code::Unauthenticated,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(!error.is_retryable());
    }
}
