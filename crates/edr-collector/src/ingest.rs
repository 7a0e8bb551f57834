//! Validation of event batches before they reach the store.
//!
//! A batch is accepted whole or rejected whole. It must hold at least one record and at most
//! the configured maximum; `first_seq` and `last_seq` must equal the numbers of its first and
//! last record; numbers start at 1 and strictly increase (gaps in the numbering are allowed,
//! because a sensor that crashed loses the numbers of records it had not made durable). No
//! number may exceed `i64::MAX`, which SQLite could not store. Every OCSF record must be a
//! UTF-8 JSON object with an integer `class_uid`. Every gap record must describe a possible
//! loss: `first_seq` at most `last_seq + 1`, `last_seq` at most the gap record's own number,
//! `records` at most the count of numbers in that range, and no value above `i64::MAX`, the
//! largest integer SQLite stores. The fields that
//! the store indexes are extracted here, so the database transaction only inserts.
//!
//! Validation does not know the high-water mark: records that turn out to be duplicates are
//! validated as well, so a resent batch is rejected for the same reason as the first time.

mod head;

use edr_proto::v1::{BufferedRecord, CommandResult, EventBatch, Gap, buffered_record};
use prost::bytes::Bytes;

/// Validation failure of a batch. Every variant is a fault of the sending sensor; resending the
/// same batch fails the same way.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BatchError {
    /// The batch contains no records.
    #[error("batch [{first_seq}, {last_seq}] contains no records: send at least one record")]
    Empty { first_seq: u64, last_seq: u64 },
    /// The batch contains more records than the configured maximum.
    #[error("batch has {count} records, more than the maximum of {max}: send smaller batches")]
    TooManyRecords { count: usize, max: usize },
    /// `first_seq` differs from the first record's number.
    #[error("batch first_seq {first_seq} differs from its first record's seq {record_seq}")]
    FirstSeqMismatch { first_seq: u64, record_seq: u64 },
    /// `last_seq` differs from the last record's number.
    #[error("batch last_seq {last_seq} differs from its last record's seq {record_seq}")]
    LastSeqMismatch { last_seq: u64, record_seq: u64 },
    /// A record has sequence number 0, which is never assigned.
    #[error("record at index {index} has seq 0: sequence numbers start at 1")]
    ZeroSeq { index: usize },
    /// A record's number is above `i64::MAX`, the largest integer SQLite stores.
    #[error(
        "record seq {seq} is above the maximum sequence number {}: number records from 1 up",
        i64::MAX
    )]
    SeqTooLarge { seq: u64 },
    /// A record's number is not greater than the previous record's.
    #[error("record seq {seq} follows seq {previous}: sequence numbers must strictly increase")]
    NotIncreasing { seq: u64, previous: u64 },
    /// A record has no payload.
    #[error("record seq {seq} has no kind: set ocsf_event_json, command_result or gap")]
    MissingKind { seq: u64 },
    /// An OCSF record is not a JSON object with an integer `class_uid`.
    #[error("record seq {seq} is not a valid OCSF event: {reason}")]
    InvalidEvent { seq: u64, reason: String },
    /// A gap record describes a loss that cannot have happened: a range that ends before it
    /// starts, more records than its range has numbers, or a value above `i64::MAX`.
    #[error("record seq {seq} is not a valid gap: {reason}")]
    InvalidGap { seq: u64, reason: String },
}

/// Fields of an OCSF event that the store keeps in indexed columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexedFields {
    /// Event time in Unix milliseconds. `None` when the event has no `time`, or one that no
    /// date can show (see [`is_datable`]): the store then indexes the time it received the
    /// event, and the JSON keeps the value the sensor sent.
    pub(crate) time: Option<i64>,
    pub(crate) class_uid: i64,
    pub(crate) activity_id: Option<i64>,
    pub(crate) severity_id: Option<i64>,
    /// `process.uid`, else `actor.process.uid`.
    pub(crate) process_uid: Option<String>,
    /// `actor.user.name`, else `user.name`.
    pub(crate) user_name: Option<String>,
}

/// One validated record.
#[derive(Debug)]
pub(crate) enum Record {
    Event {
        seq: u64,
        fields: IndexedFields,
        body: EventBody,
    },
    CommandResult {
        seq: u64,
        result: CommandResult,
    },
    Gap {
        seq: u64,
        gap: Gap,
    },
}

/// The stored form of an event's JSON.
#[derive(Debug)]
pub(crate) enum EventBody {
    /// The JSON text as the sensor sent it, checked to be UTF-8; a slice of the decoded
    /// message, not a copy.
    Json(Bytes),
    /// Event `index` of frame `frame` of [`ValidBatch::frames`]: a zstd frame, made with a
    /// stored dictionary, of several events of the batch (see [`crate::store::codec`]).
    Framed { frame: usize, index: u32 },
}

impl Record {
    pub(crate) fn seq(&self) -> u64 {
        match self {
            Record::Event { seq, .. }
            | Record::CommandResult { seq, .. }
            | Record::Gap { seq, .. } => *seq,
        }
    }
}

/// A batch that passed [`validate`]; owns the payloads of the decoded message.
#[derive(Debug)]
pub(crate) struct ValidBatch {
    pub(crate) last_seq: u64,
    pub(crate) records: Vec<Record>,
    /// Total payload bytes of OCSF records, for metrics.
    pub(crate) event_bytes: usize,
    /// Compressed frames that [`EventBody::Framed`] events point into; slices of one buffer.
    pub(crate) frames: Vec<Bytes>,
}

/// Checks `batch` against the rules in the module documentation.
pub(crate) fn validate(batch: EventBatch, max_records: usize) -> Result<ValidBatch, BatchError> {
    let (Some(first), Some(last)) = (batch.records.first(), batch.records.last()) else {
        return Err(BatchError::Empty {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
        });
    };
    if batch.records.len() > max_records {
        return Err(BatchError::TooManyRecords {
            count: batch.records.len(),
            max: max_records,
        });
    }
    if first.seq != batch.first_seq {
        return Err(BatchError::FirstSeqMismatch {
            first_seq: batch.first_seq,
            record_seq: first.seq,
        });
    }
    if last.seq != batch.last_seq {
        return Err(BatchError::LastSeqMismatch {
            last_seq: batch.last_seq,
            record_seq: last.seq,
        });
    }

    let mut records = Vec::with_capacity(batch.records.len());
    let mut previous = 0;
    let mut event_bytes = 0;
    for (index, record) in batch.records.into_iter().enumerate() {
        if record.seq == 0 {
            return Err(BatchError::ZeroSeq { index });
        }
        if i64::try_from(record.seq).is_err() {
            return Err(BatchError::SeqTooLarge { seq: record.seq });
        }
        if record.seq <= previous {
            return Err(BatchError::NotIncreasing {
                seq: record.seq,
                previous,
            });
        }
        previous = record.seq;
        records.push(validate_record(record, &mut event_bytes)?);
    }
    Ok(ValidBatch {
        last_seq: batch.last_seq,
        records,
        event_bytes,
        frames: Vec::new(),
    })
}

fn validate_record(record: BufferedRecord, event_bytes: &mut usize) -> Result<Record, BatchError> {
    let seq = record.seq;
    match record.kind {
        None => Err(BatchError::MissingKind { seq }),
        Some(buffered_record::Kind::OcsfEventJson(bytes)) => {
            *event_bytes += bytes.len();
            let fields =
                parse_event(&bytes).map_err(|reason| BatchError::InvalidEvent { seq, reason })?;
            Ok(Record::Event {
                seq,
                fields,
                body: EventBody::Json(bytes),
            })
        }
        Some(buffered_record::Kind::CommandResult(result)) => {
            Ok(Record::CommandResult { seq, result })
        }
        Some(buffered_record::Kind::Gap(gap)) => {
            check_gap(seq, &gap).map_err(|reason| BatchError::InvalidGap { seq, reason })?;
            Ok(Record::Gap { seq, gap })
        }
    }
}

/// Checks that the gap record numbered `seq` describes a possible loss and returns the reason
/// if not.
///
/// A range with `last_seq = first_seq - 1` is empty: the sensor reports damaged bytes between
/// two consecutive records that way, with `records` 0. A sensor appends a gap record after the
/// numbers it reports, so `last_seq` is at most the record's own number. It can equal it,
/// because the range of a damaged segment end is an estimate of one record past the last
/// valid one.
fn check_gap(seq: u64, gap: &Gap) -> Result<(), String> {
    let fields = [
        ("first_seq", gap.first_seq),
        ("last_seq", gap.last_seq),
        ("records", gap.records),
        ("bytes", gap.bytes),
    ];
    for (name, value) in fields {
        if i64::try_from(value).is_err() {
            return Err(format!(
                "{name} {value} is above the maximum of {}",
                i64::MAX
            ));
        }
    }
    // Neither value exceeds `i64::MAX`, so neither sum overflows.
    if gap.first_seq > gap.last_seq + 1 {
        return Err(format!(
            "first_seq {} is above last_seq {}: a gap's range must not end before it starts",
            gap.first_seq, gap.last_seq
        ));
    }
    if gap.last_seq > seq {
        return Err(format!(
            "last_seq {} is above the gap record's own number {seq}: a gap reports only numbers handed out before it",
            gap.last_seq
        ));
    }
    let numbers = gap.last_seq + 1 - gap.first_seq;
    if gap.records > numbers {
        return Err(format!(
            "records {} is more than the {numbers} sequence numbers of its range [{}, {}]",
            gap.records, gap.first_seq, gap.last_seq
        ));
    }
    Ok(())
}

/// Parses one OCSF event and returns its indexed fields; the bytes are then known to be UTF-8.
pub(crate) fn parse_event(bytes: &[u8]) -> Result<IndexedFields, String> {
    let json = std::str::from_utf8(bytes)
        .map_err(|err| format!("not UTF-8 at byte {}", err.valid_up_to()))?;
    let head::Head {
        class_uid,
        time,
        activity_id,
        severity_id,
        process_uid,
        actor_process_uid,
        actor_user_name,
        user_name,
    } = head::read_head(json)?;
    let fields = IndexedFields {
        time: time.filter(|&ms| is_datable(ms)),
        class_uid,
        activity_id,
        severity_id,
        process_uid: process_uid.or(actor_process_uid),
        user_name: actor_user_name.or(user_name),
    };
    Ok(fields)
}

/// Returns whether Unix milliseconds `ms` fall in the years -9999 to 9999, which printed
/// dates and the export's `eventDay` partitions can show.
pub(crate) fn is_datable(ms: i64) -> bool {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, json: &str) -> BufferedRecord {
        BufferedRecord {
            seq,
            kind: Some(buffered_record::Kind::OcsfEventJson(
                json.as_bytes().to_vec().into(),
            )),
        }
    }

    fn batch(records: Vec<BufferedRecord>) -> EventBatch {
        EventBatch {
            first_seq: records.first().map_or(0, |r| r.seq),
            last_seq: records.last().map_or(0, |r| r.seq),
            records,
        }
    }

    const OK: &str = r#"{"class_uid":1007,"activity_id":1,"time":1700000000000,"severity_id":1,
        "process":{"uid":"p-1","file":{"name":"cmd.exe"}},"actor":{"user":{"name":"alice"}}}"#;

    #[test]
    fn valid_batch_extracts_fields() {
        let input = batch(vec![event(1, OK), event(5, r#"{"class_uid":4001}"#)]);
        let valid = validate(input, 10).unwrap();
        assert_eq!(valid.records.len(), 2);
        let Record::Event { fields, .. } = &valid.records[0] else {
            panic!("not an event")
        };
        assert_eq!(fields.class_uid, 1007);
        assert_eq!(fields.time, Some(1_700_000_000_000));
        for undatable in [i64::MAX, i64::MIN, 253_402_300_800_000] {
            let json = OK.replace("1700000000000", &undatable.to_string());
            assert_eq!(
                parse_event(json.as_bytes()).unwrap().time,
                None,
                "{undatable}"
            );
        }
        assert_eq!(fields.process_uid.as_deref(), Some("p-1"));
        assert_eq!(fields.user_name.as_deref(), Some("alice"));
    }

    #[test]
    fn sequence_rules_are_enforced() {
        let cases = [
            (batch(vec![]), "contains no records"),
            (
                batch(vec![event(2, OK), event(2, OK)]),
                "seq 2 follows seq 2",
            ),
            (
                batch(vec![event(3, OK), event(1, OK)]),
                "seq 1 follows seq 3",
            ),
            (batch(vec![event(0, OK)]), "seq 0"),
            (
                EventBatch {
                    first_seq: 1,
                    last_seq: 9,
                    records: vec![event(1, OK)],
                },
                "last_seq 9",
            ),
            (
                EventBatch {
                    first_seq: 0,
                    last_seq: 1,
                    records: vec![event(1, OK)],
                },
                "first_seq 0",
            ),
            (
                batch(vec![BufferedRecord { seq: 4, kind: None }]),
                "seq 4 has no kind",
            ),
        ];
        for (input, expected) in cases {
            let err = validate(input, 10).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }

    /// SQLite stores at most `i64::MAX`; a larger number would be stored as another one than
    /// the one acknowledged.
    #[test]
    fn seq_above_i64_max_rejected() {
        let cases = [
            (
                batch(vec![event(1 << 63, OK), event((1 << 63) + 1, OK)]),
                "record seq 9223372036854775808 is above the maximum sequence number 9223372036854775807",
            ),
            (
                batch(vec![event(5, OK), event(u64::MAX, OK)]),
                "record seq 18446744073709551615 is above",
            ),
        ];
        for (input, expected) in cases {
            let err = validate(input, 10).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
        validate(batch(vec![event(i64::MAX as u64, OK)]), 10).unwrap();
    }

    #[test]
    fn too_many_records_rejected() {
        let input = batch(vec![event(1, OK), event(2, OK), event(3, OK)]);
        let err = validate(input, 2).unwrap_err();
        assert_eq!(err, BatchError::TooManyRecords { count: 3, max: 2 });
    }

    #[test]
    fn invalid_events_name_seq_and_reason() {
        let cases = [
            ("[1,2]", "not a JSON object"),
            ("{\"class_uid\":1007", "EOF"),
            ("{\"activity_id\":1}", "missing field `class_uid`"),
            (
                "{\"class_uid\":\"x\"}",
                "`class_uid` must be an integer at byte 13",
            ),
            (
                "{\"class_uid\":1,\"actor\":{\"user\":{\"name\":7}}}",
                "`actor.user.name` must be a string or null at byte 39",
            ),
            ("{\"class_uid\":1} trailing", "trailing"),
        ];
        for (json, expected) in cases {
            let err = validate(batch(vec![event(7, json)]), 10)
                .unwrap_err()
                .to_string();
            assert!(err.contains("seq 7"), "{err}");
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
        let not_utf8 = BufferedRecord {
            seq: 8,
            kind: Some(buffered_record::Kind::OcsfEventJson(
                vec![b'{', 0xff, b'}'].into(),
            )),
        };
        let err = validate(batch(vec![not_utf8]), 10).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    fn gap(first_seq: u64, last_seq: u64, records: u64, bytes: u64) -> BufferedRecord {
        BufferedRecord {
            seq: 9,
            kind: Some(buffered_record::Kind::Gap(Gap {
                first_seq,
                last_seq,
                records,
                bytes,
                reason: "evicted_buffer_full".into(),
                detected_at: None,
            })),
        }
    }

    #[test]
    fn impossible_gaps_rejected() {
        let huge = i64::MAX as u64;
        let cases = [
            (
                gap(1, 2, huge, 10),
                "records 9223372036854775807 is more than the 2 sequence numbers of its range [1, 2]",
            ),
            (gap(1, 2, 3, 10), "records 3 is more than the 2"),
            (gap(5, 3, 0, 10), "first_seq 5 is above last_seq 3"),
            (
                gap(5, 4, 1, 10),
                "records 1 is more than the 0 sequence numbers",
            ),
            (
                gap(1, huge + 1, 1, 10),
                "last_seq 9223372036854775808 is above the maximum of 9223372036854775807",
            ),
            (
                gap(huge + 1, huge + 1, 1, 10),
                "first_seq 9223372036854775808 is above",
            ),
            (
                gap(1, 2, u64::MAX, 10),
                "records 18446744073709551615 is above",
            ),
            (gap(1, 2, 2, huge + 1), "bytes 9223372036854775808 is above"),
            (
                gap(1, 10, 1, 10),
                "last_seq 10 is above the gap record's own number 9",
            ),
            (gap(1, huge, 1, 10), "last_seq 9223372036854775807 is above"),
        ];
        for (record, expected) in cases {
            let err = validate(batch(vec![record]), 10).unwrap_err().to_string();
            assert!(err.contains("record seq 9 is not a valid gap"), "{err}");
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn possible_gaps_accepted() {
        let huge = i64::MAX as u64;
        // The last case is the empty range the sensor sends for damage between two records.
        for record in [
            gap(1, 2, 2, 10),
            gap(1, 2, 0, 0),
            gap(1, 8, 8, huge),
            gap(9, 9, 1, 10),
            gap(7, 7, 1, 10),
            gap(5, 4, 0, 10),
        ] {
            validate(batch(vec![record]), 10).unwrap();
        }
    }
}
