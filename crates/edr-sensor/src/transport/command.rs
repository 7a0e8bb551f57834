//! Execution of command envelopes received from the Collector.
//!
//! An envelope whose `expires_at` has passed is not run and gets `EXPIRED`; `ping` gets
//! `SUCCEEDED` with a `Pong`; an envelope without a known kind gets `UNSUPPORTED`. The result
//! goes to the ring buffer's priority lane (see [`super::encode_command_result`]) and reaches
//! the Collector through the telemetry stream.

use edr_proto::v1::{self, command_envelope, command_result};
use time::OffsetDateTime;

use super::wire::timestamp_from;

/// Runs `envelope` at time `now` and returns its result.
pub fn execute(envelope: &v1::CommandEnvelope, now: OffsetDateTime) -> v1::CommandResult {
    let mut result = v1::CommandResult {
        command_id: envelope.command_id.clone(),
        status: v1::CommandStatus::Unspecified.into(),
        completed_at: None,
        detail: String::new(),
        output: None,
    };

    let expires_at = envelope.expires_at.as_ref().map(|at| at.seconds);
    match expires_at {
        None => {
            result.status = v1::CommandStatus::Failed.into();
            result.detail = "the command has no expires_at time, so it was not run".into();
        }
        Some(seconds) if seconds < now.unix_timestamp() => {
            result.status = v1::CommandStatus::Expired.into();
            result.detail = format!(
                "received at {} after it expired at {seconds} (Unix seconds), so it was not run",
                now.unix_timestamp()
            );
        }
        Some(_) => match &envelope.kind {
            Some(command_envelope::Kind::Ping(_)) => {
                result.status = v1::CommandStatus::Succeeded.into();
                result.output = Some(command_result::Output::Pong(v1::Pong {}));
            }
            None => {
                result.status = v1::CommandStatus::Unsupported.into();
                result.detail = "this sensor does not support this kind of command".into();
            }
        },
    }
    result.completed_at = Some(timestamp_from(OffsetDateTime::now_utc()));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(expires_in: i64, kind: Option<command_envelope::Kind>) -> v1::CommandEnvelope {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        v1::CommandEnvelope {
            command_id: "cmd-1".into(),
            issued_at: Some(prost_types::Timestamp {
                seconds: now,
                nanos: 0,
            }),
            expires_at: Some(prost_types::Timestamp {
                seconds: now + expires_in,
                nanos: 0,
            }),
            kind,
        }
    }

    #[test]
    fn ping_succeeds_with_pong() {
        let ping = envelope(60, Some(command_envelope::Kind::Ping(v1::Ping {})));
        let result = execute(&ping, OffsetDateTime::now_utc());
        assert_eq!(result.command_id, "cmd-1");
        assert_eq!(result.status(), v1::CommandStatus::Succeeded);
        assert_eq!(
            result.output,
            Some(command_result::Output::Pong(v1::Pong {}))
        );
        assert!(result.completed_at.is_some());
    }

    #[test]
    fn expired_ping_not_run() {
        let ping = envelope(-5, Some(command_envelope::Kind::Ping(v1::Ping {})));
        let result = execute(&ping, OffsetDateTime::now_utc());
        assert_eq!(result.status(), v1::CommandStatus::Expired);
        assert_eq!(result.output, None);
        assert!(result.detail.contains("expired"), "{}", result.detail);
    }

    #[test]
    fn unknown_kind_unsupported() {
        let unknown = envelope(60, None);
        let result = execute(&unknown, OffsetDateTime::now_utc());
        assert_eq!(result.status(), v1::CommandStatus::Unsupported);
    }

    #[test]
    fn missing_expiry_fails() {
        let mut ping = envelope(60, Some(command_envelope::Kind::Ping(v1::Ping {})));
        ping.expires_at = None;
        let result = execute(&ping, OffsetDateTime::now_utc());
        assert_eq!(result.status(), v1::CommandStatus::Failed);
    }
}
