//! One event log record as the `evtx` crate renders it to JSON, split into the `System` header
//! and the event's fields.
//!
//! The `evtx` crate renders attributes under `#attributes` and element text under `#text`.
//! Records forwarded by Windows Event Forwarding (WEC) carry no templates, so every value is
//! rendered as a string (`"EventID": "1116"`); the accessors here accept numbers and their text
//! form alike, so mappers do not care which kind of record they read.
//!
//! [`Record::from_slice`] reads the rendered bytes straight into this shape, without building
//! a `serde_json::Value` tree: `System` into typed fields and the event's values into a small
//! list. Most records skip the JSON altogether: the `template` module fills the same shape
//! from their template values, and a test checks that both ways give equal records.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Failure to read a rendered record as an event.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The rendered JSON has no `Event.System` object.
    #[error("record {record_id} has no Event.System element")]
    MissingSystem { record_id: u64 },
    /// `EventID` is missing or not a number.
    #[error("record {record_id} has no numeric EventID")]
    MissingEventId { record_id: u64 },
    /// The rendered bytes are not the JSON shape the `evtx` crate writes.
    #[error("record {record_id} is not valid rendered JSON: {source}")]
    Json {
        record_id: u64,
        source: serde_json::Error,
    },
}

/// One value of a record's event data.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Str(String),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
    Null,
    /// Nested elements or lists, kept as JSON.
    Json(Value),
}

impl FieldValue {
    /// Converts the value to JSON, for `unmapped`.
    pub fn into_json(self) -> Value {
        match self {
            FieldValue::Str(text) => Value::String(text),
            FieldValue::Unsigned(n) => Value::from(n),
            FieldValue::Signed(n) => Value::from(n),
            FieldValue::Float(n) => Value::from(n),
            FieldValue::Bool(flag) => Value::Bool(flag),
            FieldValue::Null => Value::Null,
            FieldValue::Json(value) => value,
        }
    }

    /// Reads the value as a number: an integer, or decimal or `0x` hex text.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            FieldValue::Unsigned(n) => Some(*n),
            FieldValue::Signed(n) => u64::try_from(*n).ok(),
            FieldValue::Str(text) => parse_u64(text),
            _ => None,
        }
    }
}

/// A record's named values in document order; lookups are linear, records have few fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields(Vec<(String, FieldValue)>);

impl Fields {
    /// Wraps named values, in document order, with unique names.
    pub(crate) fn from_vec(fields: Vec<(String, FieldValue)>) -> Fields {
        Fields(fields)
    }

    /// Removes and returns the value named `name`.
    pub fn remove(&mut self, name: &str) -> Option<FieldValue> {
        let index = self.0.iter().position(|(key, _)| key == name)?;
        Some(self.0.remove(index).1)
    }

    /// Returns the value named `name`.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// Sets `name` to `value`, replacing an earlier value of that name.
    pub fn insert(&mut self, name: &str, value: FieldValue) {
        self.remove(name);
        self.0.push((name.to_owned(), value));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Returns the named values in document order.
    pub fn into_vec(self) -> Vec<(String, FieldValue)> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Converts the values to a JSON object for `unmapped`, leaving out `null` values.
    pub fn into_json(self) -> Map<String, Value> {
        self.0
            .into_iter()
            .filter(|(_, value)| *value != FieldValue::Null)
            .map(|(key, value)| (key, value.into_json()))
            .collect()
    }
}

/// A record's header and fields.
#[derive(Debug, Clone, PartialEq)]
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
    /// `EventData`, or the single child of `UserData`, then any other element below `Event`
    /// (such as `RenderingInfo` of forwarded records), so that no value is dropped.
    pub fields: Fields,
    /// Whether the fields came from `UserData`.
    pub is_user_data: bool,
}

impl Record {
    /// Reads a record rendered by the `evtx` crate as JSON; `record_id` and `time_ms` from the
    /// record header are the fallbacks for `EventRecordID` and `TimeCreated`.
    pub fn from_slice(bytes: &[u8], record_id: u64, time_ms: i64) -> Result<Record, RecordError> {
        let rendered: Rendered = serde_json::from_slice(bytes)
            .map_err(|source| RecordError::Json { record_id, source })?;
        Record::from_rendered(rendered, record_id, time_ms)
    }

    /// [`Record::from_slice`] for a record already parsed into a JSON value.
    pub fn from_json(value: Value, record_id: u64, time_ms: i64) -> Result<Record, RecordError> {
        let rendered: Rendered = serde_json::from_value(value)
            .map_err(|source| RecordError::Json { record_id, source })?;
        Record::from_rendered(rendered, record_id, time_ms)
    }

    fn from_rendered(
        rendered: Rendered,
        record_id: u64,
        time_ms: i64,
    ) -> Result<Record, RecordError> {
        let event = rendered.event;
        let Some(system) = event.system else {
            return Err(RecordError::MissingSystem { record_id });
        };
        let event_id = system
            .event_id
            .and_then(|id| u32::try_from(id).ok())
            .ok_or(RecordError::MissingEventId { record_id })?;
        let system_time = system.time_created.and_then(|t| t.attributes.system_time);
        let time_ms = system_time
            .as_deref()
            .and_then(crate::map::parse_utc_time)
            .unwrap_or(time_ms);
        let execution = system.execution.map(|e| e.attributes);

        Ok(Record {
            provider: system
                .provider
                .and_then(|p| p.attributes.name)
                .unwrap_or_default(),
            channel: system.channel.unwrap_or_default(),
            event_id,
            version: system.version.and_then(|v| u32::try_from(v).ok()),
            system_time,
            time_ms,
            record_id: system.event_record_id.unwrap_or(record_id),
            computer: system.computer.unwrap_or_default(),
            execution_pid: execution
                .as_ref()
                .and_then(|e| e.process_id)
                .and_then(|v| u32::try_from(v).ok()),
            execution_tid: execution
                .as_ref()
                .and_then(|e| e.thread_id)
                .and_then(|v| u32::try_from(v).ok()),
            user_sid: system.security.and_then(|s| s.attributes.user_id),
            activity_id: system.correlation.and_then(|c| c.attributes.activity_id),
            fields: event.fields,
            is_user_data: event.is_user_data,
        })
    }

    /// Returns the key used in counts: the channel, or the provider for records without one.
    pub fn source_name(&self) -> &str {
        match (self.channel.is_empty(), self.provider.is_empty()) {
            (false, _) => &self.channel,
            (true, false) => &self.provider,
            (true, true) => "(no channel or provider)",
        }
    }

    /// Removes field `name` and returns it as text, unchanged (command lines keep their
    /// spaces); numbers are formatted, and `-` or blank text counts as absent.
    pub fn take_str(&mut self, name: &str) -> Option<String> {
        let text = match self.fields.remove(name)? {
            FieldValue::Str(text) => text,
            FieldValue::Unsigned(n) => n.to_string(),
            FieldValue::Signed(n) => n.to_string(),
            FieldValue::Float(n) => n.to_string(),
            FieldValue::Bool(flag) => flag.to_string(),
            FieldValue::Null | FieldValue::Json(_) => return None,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed == "-" {
            return None;
        }
        Some(text)
    }

    /// Removes field `name` and returns it as a number; accepts decimal and `0x` hex text.
    pub fn take_u64(&mut self, name: &str) -> Option<u64> {
        self.fields.remove(name)?.as_u64()
    }

    /// [`Record::take_u64`] narrowed to 32 bits.
    pub fn take_u32(&mut self, name: &str) -> Option<u32> {
        self.take_u64(name).and_then(|v| u32::try_from(v).ok())
    }

    /// Removes field `name` and returns it as a boolean (`true`/`false` text or 0/1).
    pub fn take_bool(&mut self, name: &str) -> Option<bool> {
        match self.fields.remove(name)? {
            FieldValue::Bool(flag) => Some(flag),
            FieldValue::Str(text) => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => None,
            },
            FieldValue::Unsigned(n) => Some(n != 0),
            _ => None,
        }
    }

    /// Reads field `name` as text without removing it.
    pub fn peek_str(&self, name: &str) -> Option<&str> {
        match self.fields.get(name)? {
            FieldValue::Str(text) => Some(text),
            _ => None,
        }
    }

    /// Takes the fields no mapper took, as JSON for `unmapped`.
    pub fn remaining_fields(&mut self) -> Map<String, Value> {
        self.take_fields().into_json()
    }

    /// Takes the fields no mapper took.
    pub fn take_fields(&mut self) -> Fields {
        std::mem::take(&mut self.fields)
    }
}

/// Decimal or `0x` hex text to a number.
pub fn parse_u64(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

// === The rendered JSON shape ===

#[derive(Deserialize)]
struct Rendered {
    #[serde(rename = "Event")]
    event: RenderedEvent,
}

/// `Event`: `System` plus the fields from `EventData`, `UserData` and any other element.
struct RenderedEvent {
    system: Option<System>,
    fields: Fields,
    is_user_data: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct System {
    #[serde(rename = "Provider")]
    provider: Option<Attributes<ProviderAttributes>>,
    #[serde(rename = "EventID", deserialize_with = "number")]
    event_id: Option<u64>,
    #[serde(rename = "Version", deserialize_with = "number")]
    version: Option<u64>,
    #[serde(rename = "TimeCreated")]
    time_created: Option<Attributes<TimeAttributes>>,
    #[serde(rename = "EventRecordID", deserialize_with = "number")]
    event_record_id: Option<u64>,
    #[serde(rename = "Correlation")]
    correlation: Option<Attributes<CorrelationAttributes>>,
    #[serde(rename = "Execution")]
    execution: Option<Attributes<ExecutionAttributes>>,
    #[serde(rename = "Channel")]
    channel: Option<String>,
    #[serde(rename = "Computer")]
    computer: Option<String>,
    #[serde(rename = "Security")]
    security: Option<Attributes<SecurityAttributes>>,
}

#[derive(Deserialize, Default)]
struct Attributes<T: Default> {
    #[serde(rename = "#attributes", default)]
    attributes: T,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ProviderAttributes {
    #[serde(rename = "Name")]
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TimeAttributes {
    #[serde(rename = "SystemTime")]
    system_time: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CorrelationAttributes {
    #[serde(rename = "ActivityID")]
    activity_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ExecutionAttributes {
    #[serde(rename = "ProcessID", deserialize_with = "number")]
    process_id: Option<u64>,
    #[serde(rename = "ThreadID", deserialize_with = "number")]
    thread_id: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SecurityAttributes {
    #[serde(rename = "UserID")]
    user_id: Option<String>,
}

/// A number written as a number, as decimal or hex text, or as `{"#text": ...}` (an element
/// with attributes, such as `EventID` with `Qualifiers`); anything else reads as `None`.
fn number<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct NumberVisitor;
    impl<'de> Visitor<'de> for NumberVisitor {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, its text, or an element with #text")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(u64::try_from(v).ok())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(parse_u64(v))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<String>()? {
                if key == "#text" {
                    found = map.next_value_seed(NumberSeed)?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    deserializer.deserialize_any(NumberVisitor)
}

struct NumberSeed;

impl<'de> DeserializeSeed<'de> for NumberSeed {
    type Value = Option<u64>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        number(deserializer)
    }
}

impl<'de> Deserialize<'de> for RenderedEvent {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventVisitor;
        impl<'de> Visitor<'de> for EventVisitor {
            type Value = RenderedEvent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an Event element")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut event = RenderedEvent {
                    system: None,
                    fields: Fields::default(),
                    is_user_data: false,
                };
                let mut extra = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "System" => event.system = Some(map.next_value()?),
                        "#attributes" => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        "EventData" => {
                            let fields: Option<Fields> = map.next_value()?;
                            event.fields.0.extend(fields.unwrap_or_default().0);
                        }
                        "UserData" => {
                            // UserData wraps its fields in one element named after the template.
                            let wrapper: Option<UserData> = map.next_value()?;
                            event
                                .fields
                                .0
                                .extend(wrapper.map(|w| w.0).unwrap_or_default().0);
                            event.is_user_data = true;
                        }
                        _ => extra.push((key, FieldValue::Json(map.next_value()?))),
                    }
                }
                event.fields.0.extend(extra);
                Ok(event)
            }
        }
        deserializer.deserialize_map(EventVisitor)
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("event data")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(key) = map.next_key::<String>()? {
                    if key == "#attributes" {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    fields.push((key, map.next_value()?));
                }
                Ok(Fields(fields))
            }
            // Event data without names renders as a list or a bare value: keep it whole.
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let value = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Fields(vec![("Data".to_owned(), FieldValue::Json(value))]))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Fields(vec![(
                    "Data".to_owned(),
                    FieldValue::Str(v.to_owned()),
                )]))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Fields::default())
            }
        }
        deserializer.deserialize_any(FieldsVisitor)
    }
}

/// `UserData`: one wrapper element whose children are the fields.
struct UserData(Fields);

impl<'de> Deserialize<'de> for UserData {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UserDataVisitor;
        impl<'de> Visitor<'de> for UserDataVisitor {
            type Value = UserData;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a UserData element")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Fields::default();
                while let Some(key) = map.next_key::<String>()? {
                    let value: Option<Fields> = map.next_value()?;
                    if fields.is_empty() {
                        fields = value.unwrap_or_default();
                    } else if let Some(more) = value {
                        // A second wrapper is unusual; keep its values too.
                        fields
                            .0
                            .push((key, FieldValue::Json(Value::Object(more.into_json()))));
                    }
                }
                Ok(UserData(fields))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(UserData(Fields::default()))
            }
        }
        deserializer.deserialize_any(UserDataVisitor)
    }
}

impl<'de> Deserialize<'de> for FieldValue {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = FieldValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event data value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(FieldValue::Bool(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(FieldValue::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(FieldValue::Signed(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(FieldValue::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FieldValue::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(FieldValue::Str(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FieldValue::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FieldValue::Null)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Ok(FieldValue::Json(Value::deserialize(
                    de::value::SeqAccessDeserializer::new(seq),
                )?))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Ok(FieldValue::Json(Value::deserialize(
                    de::value::MapAccessDeserializer::new(map),
                )?))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
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
        assert!(record.take_str("Channel").is_none());
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
    fn slice_and_value_parse_alike() {
        let text = r##"{"Event":{"#attributes":{"xmlns":"x"},"System":{"Provider":{"#attributes":{"Name":"P"}},"EventID":4,"EventRecordID":9,"TimeCreated":{"#attributes":{"SystemTime":"2020-01-01T00:00:00.5Z"}},"Channel":"C","Computer":"h","Security":null},"EventData":{"A":"x","B":[1,2],"C":null},"RenderingInfo":{"Level":"Info"}}}"##;
        let record = Record::from_slice(text.as_bytes(), 1, 2).unwrap();
        let same = Record::from_json(serde_json::from_str(text).unwrap(), 1, 2).unwrap();
        assert_eq!(record.fields, same.fields);
        assert_eq!(record.record_id, 9);
        assert_eq!(record.time_ms, 1_577_836_800_500);
        assert_eq!(record.fields.len(), 4);
        assert_eq!(
            record.fields.get("RenderingInfo"),
            Some(&FieldValue::Json(json!({"Level": "Info"})))
        );
        let mut record = record;
        assert_eq!(
            record.remaining_fields(),
            json!({"A": "x", "B": [1, 2], "RenderingInfo": {"Level": "Info"}})
                .as_object()
                .unwrap()
                .clone()
        );
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
