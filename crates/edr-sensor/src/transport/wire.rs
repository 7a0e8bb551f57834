//! Conversion of drained ring-buffer records into `BufferedRecord` messages, and the priority
//! lane's payload tag.
//!
//! Telemetry payloads are OCSF events as JSON objects, so their first byte is `{`. A payload
//! whose first byte is [`COMMAND_RESULT_TAG`] is a `CommandResult` protobuf after that byte.

use edr_proto::v1::{self, buffered_record};
use prost::Message;

use crate::buffer::{Gap, GapReason, Record, RecordKind};

/// First byte of a buffer payload that holds an encoded `CommandResult`.
pub const COMMAND_RESULT_TAG: u8 = 0x01;

/// Encodes a command result as a priority-lane payload.
pub fn encode_command_result(result: &v1::CommandResult) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + result.encoded_len());
    payload.push(COMMAND_RESULT_TAG);
    result.encode_raw(&mut payload);
    payload
}

/// Converts a drained record into its wire form.
///
/// A tagged payload that does not decode is sent as a gap of that one record with reason
/// `undecodable_command_result`, so the loss is visible instead of silent.
pub(crate) fn to_wire(record: Record) -> v1::BufferedRecord {
    let seq = record.seq;
    let kind = match record.kind {
        RecordKind::Event(payload) => match payload.split_first() {
            Some((&COMMAND_RESULT_TAG, encoded)) => match v1::CommandResult::decode(encoded) {
                Ok(result) => buffered_record::Kind::CommandResult(result),
                Err(error) => {
                    tracing::error!(seq, %error, "command result in the ring buffer does not decode, reporting it as lost");
                    buffered_record::Kind::Gap(v1::Gap {
                        first_seq: seq,
                        last_seq: seq,
                        records: 1,
                        bytes: payload.len() as u64,
                        reason: "undecodable_command_result".into(),
                        detected_at: Some(timestamp_now()),
                    })
                }
            },
            _ => buffered_record::Kind::OcsfEventJson(payload),
        },
        RecordKind::Gap(gap) => buffered_record::Kind::Gap(gap_to_wire(&gap)),
    };
    v1::BufferedRecord {
        seq,
        kind: Some(kind),
    }
}

/// Returns the number of payload bytes a record adds to a batch.
pub(crate) fn record_bytes(record: &Record) -> u64 {
    match &record.kind {
        RecordKind::Event(payload) => payload.len() as u64,
        RecordKind::Gap(_) => 64,
    }
}

pub(crate) fn gap_reason_name(reason: GapReason) -> &'static str {
    match reason {
        GapReason::TelemetryEvicted => "evicted_buffer_full",
        GapReason::PriorityEvicted => "priority_evicted_buffer_full",
        GapReason::Damaged => "damaged_on_disk",
        GapReason::SegmentMissing => "segment_missing_on_disk",
    }
}

fn gap_to_wire(gap: &Gap) -> v1::Gap {
    v1::Gap {
        first_seq: gap.first_seq,
        last_seq: gap.last_seq,
        records: gap.records,
        bytes: gap.bytes,
        reason: gap_reason_name(gap.reason).into(),
        detected_at: Some(timestamp_from_millis(gap.detected_at_ms)),
    }
}

pub(crate) fn timestamp_now() -> prost_types::Timestamp {
    timestamp_from(time::OffsetDateTime::now_utc())
}

pub(crate) fn timestamp_from(at: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

fn timestamp_from_millis(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Lane;

    fn record(seq: u64, kind: RecordKind) -> Record {
        Record {
            seq,
            lane: Lane::Priority,
            appended_at_ms: 0,
            kind,
        }
    }

    #[test]
    fn json_payload_becomes_event() {
        let wire = to_wire(record(7, RecordKind::Event(br#"{"a":1}"#.to_vec().into())));
        assert_eq!(wire.seq, 7);
        assert_eq!(
            wire.kind,
            Some(buffered_record::Kind::OcsfEventJson(
                br#"{"a":1}"#.to_vec().into()
            ))
        );
    }

    #[test]
    fn tagged_payload_becomes_command_result() {
        let result = v1::CommandResult {
            command_id: "c1".into(),
            status: v1::CommandStatus::Succeeded.into(),
            completed_at: None,
            detail: String::new(),
            output: Some(v1::command_result::Output::Pong(v1::Pong {})),
        };
        let wire = to_wire(record(
            3,
            RecordKind::Event(encode_command_result(&result).into()),
        ));
        assert_eq!(
            wire.kind,
            Some(buffered_record::Kind::CommandResult(result))
        );
    }

    #[test]
    fn undecodable_tagged_payload_becomes_gap() {
        let wire = to_wire(record(
            9,
            RecordKind::Event(vec![COMMAND_RESULT_TAG, 0xff, 0xff].into()),
        ));
        let Some(buffered_record::Kind::Gap(gap)) = wire.kind else {
            panic!("expected a gap, got {:?}", wire.kind);
        };
        assert_eq!((gap.first_seq, gap.last_seq, gap.records), (9, 9, 1));
        assert_eq!(gap.reason, "undecodable_command_result");
    }

    #[test]
    fn buffer_gap_keeps_range_and_reason() {
        let gap = Gap {
            first_seq: 10,
            last_seq: 20,
            records: 11,
            bytes: 4000,
            reason: GapReason::TelemetryEvicted,
            detected_at_ms: 1_500,
        };
        let wire = to_wire(record(21, RecordKind::Gap(gap)));
        let Some(buffered_record::Kind::Gap(gap)) = wire.kind else {
            panic!("expected a gap");
        };
        assert_eq!((gap.first_seq, gap.last_seq, gap.records), (10, 20, 11));
        assert_eq!(gap.reason, "evicted_buffer_full");
        assert_eq!(
            gap.detected_at,
            Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 500_000_000
            })
        );
    }
}
