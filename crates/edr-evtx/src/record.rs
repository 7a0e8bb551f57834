//! One event log record as the `evtx` crate renders it to JSON, split into the `System` header
//! and the event's fields.
//!
//! The `evtx` crate renders attributes under `#attributes` and element text under `#text`.
//! Records forwarded by Windows Event Forwarding (WEC) carry no templates, so every value is
//! rendered as a string (`"EventID": "1116"`); the accessors here accept numbers and their text
//! form alike, so mappers do not care which kind of record they read.

use serde_json::{Map, Value};

/// Why a rendered record cannot be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The rendered JSON has no `Event.System` object.
    #[error("record {record_id} has no Event.System element")]
    MissingSystem { record_id: u64 },
    /// `EventID` is missing or not a number.
    #[error("record {record_id} has no numeric EventID")]
    MissingEventId { record_id: u64 },
}

/// A record's header and fields.
#[derive(Debug, Clone)]
pub struct Record {
    pub provider: String,
    /// The channel, such as `Security`; empty for records without one.
    pub channel: String,
    pub event_id: u32,
    pub version: Option<u32>,
    /// `TimeCreated/@SystemTime` as written, for `metadata.original_time`.
    pub system_time: Option<String>,
    /// Event time in ms since the Unix epoch: `TimeCreated/@SystemTime`, or the record
    /// header's time when that is missing or invalid.
    pub time_ms: i64,
    /// `EventRecordID` from `System` (for forwarded records, the id on the source host), or
    /// the record header's id.
    pub record_id: u64,
    pub computer: String,
    /// `Execution/@ProcessID`: the process that wrote the record.
    pub execution_pid: Option<u32>,
    pub execution_tid: Option<u32>,
    /// `Security/@UserID`: the SID the record was logged under.
    pub user_sid: Option<String>,
    /// `Correlation/@ActivityID`.
    pub activity_id: Option<String>,
    /// `EventData` or the single child of `UserData`, with named values as keys.
    pub fields: Map<String, Value>,
    /// Whether the fields came from `UserData`.
    pub is_user_data: bool,
}

impl Record {
    /// Splits a rendered record; `record_id` and `time_ms` from the record header are the
    /// fallbacks for `EventRecordID` and `TimeCreated`.
    pub fn from_json(value: Value, record_id: u64, time_ms: i64) -> Result<Record, RecordError> {
        let Value::Object(mut root) = value else {
            return Err(RecordError::MissingSystem { record_id });
        };
        let Some(Value::Object(mut event)) = root.remove("Event") else {
            return Err(RecordError::MissingSystem { record_id });
        };
        let Some(Value::Object(system)) = event.remove("System") else {
            return Err(RecordError::MissingSystem { record_id });
        };

        let provider = attribute(&system, "Provider", "Name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let event_id = system
            .get("EventID")
            .map(|id| id.get("#text").unwrap_or(id))
            .and_then(as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or(RecordError::MissingEventId { record_id })?;

        let (fields, is_user_data) = match (event.remove("EventData"), event.remove("UserData")) {
            (Some(Value::Object(data)), _) => (data, false),
            (_, Some(Value::Object(user_data))) => {
                // UserData wraps the fields in one element named after the event template.
                let mut inner = user_data.into_iter().next().map(|(_, v)| v);
                let fields = match inner.take() {
                    Some(Value::Object(mut fields)) => {
                        fields.remove("#attributes");
                        fields
                    }
                    _ => Map::new(),
                };
                (fields, true)
            }
            _ => (Map::new(), false),
        };
        // Anything else below Event (RenderingInfo, custom elements of forwarded records) is
        // kept with the fields so that no value is dropped.
        let mut fields = fields;
        for (name, value) in event {
            if name != "#attributes" {
                fields.insert(name, value);
            }
        }

        let system_time = attribute(&system, "TimeCreated", "SystemTime")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let time_ms = system_time
            .as_deref()
            .and_then(crate::map::parse_utc_time)
            .unwrap_or(time_ms);
        let record_id = system
            .get("EventRecordID")
            .and_then(as_u64)
            .unwrap_or(record_id);

        Ok(Record {
            provider,
            channel: system
                .get("Channel")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            event_id,
            version: system
                .get("Version")
                .and_then(as_u64)
                .and_then(|v| u32::try_from(v).ok()),
            system_time,
            time_ms,
            record_id,
            computer: system
                .get("Computer")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            execution_pid: attribute(&system, "Execution", "ProcessID").and_then(as_u32),
            execution_tid: attribute(&system, "Execution", "ThreadID").and_then(as_u32),
            user_sid: attribute(&system, "Security", "UserID")
                .and_then(Value::as_str)
                .map(str::to_owned),
            activity_id: attribute(&system, "Correlation", "ActivityID")
                .and_then(Value::as_str)
                .map(str::to_owned),
            fields,
            is_user_data,
        })
    }

    /// The source key used in counts: the channel, or the provider for records without one.
    pub fn source_name(&self) -> &str {
        if self.channel.is_empty() {
            &self.provider
        } else {
            &self.channel
        }
    }

    /// Removes field `name` and returns it as text, unchanged (command lines keep their
    /// spaces); numbers are formatted, and `-` or blank text counts as absent.
    pub fn take_str(&mut self, name: &str) -> Option<String> {
        let value = self.fields.remove(name)?;
        let text = match value {
            Value::String(text) => text,
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            _ => return None,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed == "-" {
            return None;
        }
        Some(text)
    }

    /// Removes field `name` and returns it as a number; accepts decimal and `0x` hex text.
    pub fn take_u64(&mut self, name: &str) -> Option<u64> {
        let value = self.fields.remove(name)?;
        as_u64(&value)
    }

    /// [`Record::take_u64`] narrowed to 32 bits.
    pub fn take_u32(&mut self, name: &str) -> Option<u32> {
        self.take_u64(name).and_then(|v| u32::try_from(v).ok())
    }

    /// Removes field `name` and returns it as a boolean (`true`/`false` text or 0/1).
    pub fn take_bool(&mut self, name: &str) -> Option<bool> {
        match self.fields.remove(name)? {
            Value::Bool(flag) => Some(flag),
            Value::String(text) => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => None,
            },
            Value::Number(number) => number.as_u64().map(|n| n != 0),
            _ => None,
        }
    }

    /// Reads field `name` as text without removing it.
    pub fn peek_str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// The fields no mapper took, for `unmapped`.
    pub fn remaining_fields(&mut self) -> Map<String, Value> {
        std::mem::take(&mut self.fields)
    }
}

/// `System/<element>/#attributes/<name>`.
fn attribute<'a>(system: &'a Map<String, Value>, element: &str, name: &str) -> Option<&'a Value> {
    system.get(element)?.get("#attributes")?.get(name)
}

/// A number, or its decimal or `0x` hex text.
pub fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => parse_u64(text),
        _ => None,
    }
}

fn as_u32(value: &Value) -> Option<u32> {
    as_u64(value).and_then(|v| u32::try_from(v).ok())
}

/// Decimal or `0x` hex text to a number.
pub fn parse_u64(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forwarded_record_strings_parse() {
        let value = json!({"Event": {"System": {
            "Provider": {"#attributes": {"Name": "P"}},
            "EventID": "1116",
            "Execution": {"#attributes": {"ProcessID": "4172"}},
            "Computer": "h"
        }, "EventData": {"Severity ID": "4"}}});
        let mut record = Record::from_json(value, 7, 0).unwrap();
        assert_eq!(record.event_id, 1116);
        assert_eq!(record.execution_pid, Some(4172));
        assert_eq!(record.take_u32("Severity ID"), Some(4));
        assert_eq!(record.source_name(), "P");
    }

    #[test]
    fn qualified_event_id_and_user_data() {
        let value = json!({"Event": {"System": {
            "Provider": {"#attributes": {"Name": "Service Control Manager"}},
            "EventID": {"#attributes": {"Qualifiers": 16384}, "#text": 7045},
            "Channel": "System"
        }, "UserData": {"LogFileCleared": {"#attributes": {"xmlns": "x"}, "Channel": "System"}}}});
        let mut record = Record::from_json(value, 1, 0).unwrap();
        assert_eq!(record.event_id, 7045);
        assert!(record.is_user_data);
        assert_eq!(record.take_str("Channel").as_deref(), Some("System"));
        assert!(record.fields.is_empty());
    }

    #[test]
    fn hex_and_placeholder_values() {
        assert_eq!(parse_u64("0x1f"), Some(31));
        assert_eq!(parse_u64("12"), Some(12));
        let value =
            json!({"Event": {"System": {"EventID": 1}, "EventData": {"A": "-", "B": " x "}}});
        let mut record = Record::from_json(value, 1, 0).unwrap();
        assert_eq!(record.take_str("A"), None);
        assert_eq!(record.take_str("B").as_deref(), Some(" x "));
    }

    #[test]
    fn missing_event_id_rejected() {
        let value = json!({"Event": {"System": {}}});
        assert!(matches!(
            Record::from_json(value, 3, 0),
            Err(RecordError::MissingEventId { record_id: 3 })
        ));
    }
}
