//! TraceLogging self-describing events: the event metadata carried in the
//! `EVENT_SCHEMA_TL` extended item, the provider name in `PROV_TRAITS`, and payload values.
//!
//! # Metadata format
//!
//! `u16` total size, event tags (1 to 4 bytes, each with bit 0x80 meaning "another byte
//! follows"), the event name as NUL-terminated UTF-8, then for each field: the name as
//! NUL-terminated UTF-8, an `InType` byte (low 5 bits the type, bits 0x60 the arity: 0x20
//! constant count, 0x40 variable count, 0x60 custom schema; bit 0x80 an `OutType` byte follows),
//! the optional `OutType` byte (bit 0x80: field tags follow, encoded like event tags), a `u16`
//! count for constant-count arrays, and a `u16` size plus bytes for custom schemas. A struct
//! field (`InType` 24) stores its member count in `OutType`; the members follow it.
//!
//! # Payload format
//!
//! Values follow the field order. Variable-count arrays start with a `u16` element count,
//! `COUNTEDSTRING`, `COUNTEDANSISTRING` and `BINARY` with a `u16` byte count, strings without a
//! count are NUL-terminated, and `SID` is sized by its sub-authority count.
//!
//! Limits: nesting deeper than [`MAX_DEPTH`] structs and arrays whose counts run past the payload
//! are rejected with a [`TraceLoggingError`].

use crate::bytes::{ByteReader, decode_ansi, decode_utf16le};
use crate::guid::Guid;
use crate::time::FileTime;

/// Deepest struct nesting accepted.
pub const MAX_DEPTH: usize = 8;

/// Errors decoding TraceLogging metadata or payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceLoggingError {
    /// The metadata ends inside a field definition.
    #[error("truncated TraceLogging metadata at byte {0}")]
    TruncatedMetadata(usize),
    /// A name is not NUL-terminated UTF-8.
    #[error("invalid TraceLogging name at metadata byte {0}")]
    InvalidName(usize),
    /// Structs nest deeper than [`MAX_DEPTH`] or claim more members than follow.
    #[error("invalid TraceLogging struct at field {0}")]
    InvalidStruct(usize),
    /// The payload ends before the value of a field.
    #[error("payload too short for TraceLogging field {0:?}")]
    TruncatedPayload(String),
    /// The field type has no known encoding.
    #[error("unsupported TraceLogging in-type {in_type} for field {field:?}")]
    UnsupportedType {
        /// The `InType` value (low 5 bits).
        in_type: u8,
        /// The field name.
        field: String,
    },
}

/// `InType` values (`TlgIn*` in `TraceLoggingProvider.h`).
pub mod in_type {
    /// No value.
    pub const NULL: u8 = 0;
    /// NUL-terminated UTF-16.
    pub const UNICODE_STRING: u8 = 1;
    /// NUL-terminated 8-bit string.
    pub const ANSI_STRING: u8 = 2;
    /// `i8`.
    pub const INT8: u8 = 3;
    /// `u8`.
    pub const UINT8: u8 = 4;
    /// `i16`.
    pub const INT16: u8 = 5;
    /// `u16`.
    pub const UINT16: u8 = 6;
    /// `i32`.
    pub const INT32: u8 = 7;
    /// `u32`.
    pub const UINT32: u8 = 8;
    /// `i64`.
    pub const INT64: u8 = 9;
    /// `u64`.
    pub const UINT64: u8 = 10;
    /// `f32`.
    pub const FLOAT: u8 = 11;
    /// `f64`.
    pub const DOUBLE: u8 = 12;
    /// 32-bit boolean.
    pub const BOOL32: u8 = 13;
    /// `u16` byte count then bytes.
    pub const BINARY: u8 = 14;
    /// GUID.
    pub const GUID: u8 = 15;
    /// Pointer-sized value (not emitted by TraceLogging itself).
    pub const POINTER: u8 = 16;
    /// FILETIME.
    pub const FILETIME: u8 = 17;
    /// SYSTEMTIME (16 bytes).
    pub const SYSTEMTIME: u8 = 18;
    /// Security identifier.
    pub const SID: u8 = 19;
    /// `u32` shown in hexadecimal.
    pub const HEXINT32: u8 = 20;
    /// `u64` shown in hexadecimal.
    pub const HEXINT64: u8 = 21;
    /// `u16` byte count then UTF-16.
    pub const COUNTED_STRING: u8 = 22;
    /// `u16` byte count then 8-bit characters.
    pub const COUNTED_ANSI_STRING: u8 = 23;
    /// Struct; `OutType` contains the member count.
    pub const STRUCT: u8 = 24;
    /// `u16` byte count then bytes.
    pub const COUNTED_BINARY: u8 = 25;
}

/// How many values a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// One value.
    Single,
    /// A fixed number of values.
    Constant(u16),
    /// A `u16` count in the payload, then the values.
    Variable,
    /// A custom-serialized value (`u16` size in the payload), schema in the metadata.
    Custom,
}

/// One field of the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSchema<'a> {
    /// Field name.
    pub name: &'a str,
    /// `InType` without arity bits.
    pub in_type: u8,
    /// `OutType` (0 when absent); the member count for structs.
    pub out_type: u8,
    /// Field tags.
    pub tags: u32,
    /// Arity.
    pub arity: Arity,
}

/// The metadata of one TraceLogging event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSchema<'a> {
    /// Event name.
    pub name: &'a str,
    /// Event tags.
    pub tags: u32,
    /// Fields in payload order; struct members follow their struct field.
    pub fields: Vec<FieldSchema<'a>>,
}

/// Reads a NUL-terminated UTF-8 name.
fn read_name<'a>(r: &mut ByteReader<'a>) -> Result<&'a str, TraceLoggingError> {
    let at = r.position();
    let rest = r.remaining();
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(TraceLoggingError::InvalidName(at))?;
    let name = std::str::from_utf8(&rest[..end]).map_err(|_| TraceLoggingError::InvalidName(at))?;
    r.skip(end + 1).ok_or(TraceLoggingError::InvalidName(at))?;
    Ok(name)
}

/// Reads 1 to 4 tag bytes chained by bit 0x80, packing them into the top 28 bits as ETW does.
fn read_tags(r: &mut ByteReader<'_>) -> Result<u32, TraceLoggingError> {
    let mut tags = 0u32;
    for i in 0..4 {
        let at = r.position();
        let byte = r.u8().ok_or(TraceLoggingError::TruncatedMetadata(at))?;
        tags |= u32::from(byte & 0x7f) << (21 - 7 * i);
        if byte & 0x80 == 0 {
            break;
        }
    }
    Ok(tags)
}

/// Parses event metadata (the `EVENT_SCHEMA_TL` extended item).
pub fn parse_event_schema(metadata: &[u8]) -> Result<EventSchema<'_>, TraceLoggingError> {
    let mut r = ByteReader::new(metadata);
    let declared = usize::from(r.u16().ok_or(TraceLoggingError::TruncatedMetadata(0))?);
    let end = declared.clamp(2, metadata.len());
    let mut r = ByteReader::new(&metadata[..end]);
    r.skip(2).ok_or(TraceLoggingError::TruncatedMetadata(0))?;
    let tags = read_tags(&mut r)?;
    let name = read_name(&mut r)?;

    let mut fields = Vec::new();
    while !r.is_empty() {
        let field_name = read_name(&mut r)?;
        let at = r.position();
        let in_raw = r.u8().ok_or(TraceLoggingError::TruncatedMetadata(at))?;
        let mut out_type = 0u8;
        let mut field_tags = 0u32;
        if in_raw & 0x80 != 0 {
            let out_raw = r.u8().ok_or(TraceLoggingError::TruncatedMetadata(at))?;
            out_type = out_raw & 0x7f;
            if out_raw & 0x80 != 0 {
                field_tags = read_tags(&mut r)?;
            }
        }
        let arity = match in_raw & 0x60 {
            0x20 => Arity::Constant(r.u16().ok_or(TraceLoggingError::TruncatedMetadata(at))?),
            0x40 => Arity::Variable,
            0x60 => {
                let size = usize::from(r.u16().ok_or(TraceLoggingError::TruncatedMetadata(at))?);
                r.skip(size)
                    .ok_or(TraceLoggingError::TruncatedMetadata(at))?;
                Arity::Custom
            }
            _ => Arity::Single,
        };
        fields.push(FieldSchema {
            name: field_name,
            in_type: in_raw & 0x1f,
            out_type,
            tags: field_tags,
            arity,
        });
    }
    Ok(EventSchema { name, tags, fields })
}

/// Provider name from a `PROV_TRAITS` item: `u16` size, then NUL-terminated UTF-8.
pub fn provider_name(traits: &[u8]) -> Option<&str> {
    let rest = traits.get(2..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// A decoded field value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Value {
    /// No value (`InType` 0).
    Null,
    /// Text.
    String(String),
    /// Signed integer.
    Int(i64),
    /// Unsigned integer.
    UInt(u64),
    /// Floating point.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// Bytes (binary fields and SIDs, custom-serialized values).
    Binary(Vec<u8>),
    /// GUID.
    Guid(Guid),
    /// FILETIME.
    Time(FileTime),
    /// Array elements.
    Array(Vec<Value>),
    /// Struct members.
    Struct(Vec<(String, Value)>),
}

/// Decodes the payload of an event described by `schema`.
pub fn decode_payload(
    schema: &EventSchema<'_>,
    payload: &[u8],
    pointer_size: usize,
) -> Result<Vec<(String, Value)>, TraceLoggingError> {
    let mut r = ByteReader::new(payload);
    let mut index = 0usize;
    let mut values = Vec::with_capacity(schema.fields.len());
    while index < schema.fields.len() {
        let (name, value) = decode_field(&schema.fields, &mut index, &mut r, pointer_size, 0)?;
        values.push((name, value));
    }
    Ok(values)
}

/// Decodes the field at `*index` (and its members), advancing `*index` past them.
fn decode_field(
    fields: &[FieldSchema<'_>],
    index: &mut usize,
    r: &mut ByteReader<'_>,
    pointer_size: usize,
    depth: usize,
) -> Result<(String, Value), TraceLoggingError> {
    if depth > MAX_DEPTH {
        return Err(TraceLoggingError::InvalidStruct(*index));
    }
    let at = *index;
    let field = fields.get(at).ok_or(TraceLoggingError::InvalidStruct(at))?;
    *index += 1;
    let truncated = || TraceLoggingError::TruncatedPayload(field.name.to_owned());

    let count = match field.arity {
        Arity::Single => None,
        Arity::Constant(n) => Some(usize::from(n)),
        Arity::Variable => Some(usize::from(r.u16().ok_or_else(truncated)?)),
        Arity::Custom => {
            let size = usize::from(r.u16().ok_or_else(truncated)?);
            let bytes = r.bytes(size).ok_or_else(truncated)?;
            return Ok((field.name.to_owned(), Value::Binary(bytes.to_vec())));
        }
    };

    // Struct: members are the next `out_type` fields, decoded once per element.
    if field.in_type == in_type::STRUCT {
        let members_start = *index;
        let member_count = usize::from(field.out_type);
        let decode_struct = |r: &mut ByteReader<'_>| -> Result<(Value, usize), TraceLoggingError> {
            let mut cursor = members_start;
            let mut members = Vec::with_capacity(member_count);
            for _ in 0..member_count {
                members.push(decode_field(
                    fields,
                    &mut cursor,
                    r,
                    pointer_size,
                    depth + 1,
                )?);
            }
            Ok((Value::Struct(members), cursor))
        };
        let value = match count {
            None => {
                let (value, next) = decode_struct(r)?;
                *index = next;
                value
            }
            Some(n) => {
                let mut elements = Vec::new();
                let mut next = skip_members(fields, members_start, member_count, depth)?;
                for _ in 0..n {
                    let (value, after) = decode_struct(r)?;
                    next = after;
                    elements.push(value);
                }
                *index = next;
                Value::Array(elements)
            }
        };
        return Ok((field.name.to_owned(), value));
    }

    let value = match count {
        None => decode_scalar(field, r, pointer_size)?,
        Some(n) => {
            // Each element consumes at least one byte, so the count cannot exceed the payload.
            if n > r.remaining().len() && n > 0 && field.in_type != in_type::NULL {
                return Err(truncated());
            }
            let mut elements = Vec::with_capacity(n);
            for _ in 0..n {
                elements.push(decode_scalar(field, r, pointer_size)?);
            }
            Value::Array(elements)
        }
    };
    Ok((field.name.to_owned(), value))
}

/// Index after the members of a struct starting at `start`.
fn skip_members(
    fields: &[FieldSchema<'_>],
    start: usize,
    count: usize,
    depth: usize,
) -> Result<usize, TraceLoggingError> {
    if depth > MAX_DEPTH {
        return Err(TraceLoggingError::InvalidStruct(start));
    }
    let mut at = start;
    for _ in 0..count {
        let field = fields.get(at).ok_or(TraceLoggingError::InvalidStruct(at))?;
        at += 1;
        if field.in_type == in_type::STRUCT {
            at = skip_members(fields, at, usize::from(field.out_type), depth + 1)?;
        }
    }
    Ok(at)
}

fn decode_scalar(
    field: &FieldSchema<'_>,
    r: &mut ByteReader<'_>,
    pointer_size: usize,
) -> Result<Value, TraceLoggingError> {
    let truncated = || TraceLoggingError::TruncatedPayload(field.name.to_owned());
    let value = match field.in_type {
        in_type::NULL => Value::Null,
        in_type::UNICODE_STRING => Value::String(r.utf16z().unwrap_or_default()),
        in_type::ANSI_STRING => Value::String(r.ansiz().unwrap_or_default()),
        in_type::INT8 => Value::Int(i64::from(r.u8().ok_or_else(truncated)? as i8)),
        in_type::UINT8 => Value::UInt(u64::from(r.u8().ok_or_else(truncated)?)),
        in_type::INT16 => Value::Int(i64::from(r.u16().ok_or_else(truncated)? as i16)),
        in_type::UINT16 => Value::UInt(u64::from(r.u16().ok_or_else(truncated)?)),
        in_type::INT32 => Value::Int(i64::from(r.i32().ok_or_else(truncated)?)),
        in_type::UINT32 | in_type::HEXINT32 => {
            Value::UInt(u64::from(r.u32().ok_or_else(truncated)?))
        }
        in_type::INT64 => Value::Int(r.i64().ok_or_else(truncated)?),
        in_type::UINT64 | in_type::HEXINT64 => Value::UInt(r.u64().ok_or_else(truncated)?),
        in_type::FLOAT => Value::Float(f64::from(f32::from_bits(r.u32().ok_or_else(truncated)?))),
        in_type::DOUBLE => Value::Float(f64::from_bits(r.u64().ok_or_else(truncated)?)),
        in_type::BOOL32 => Value::Bool(r.u32().ok_or_else(truncated)? != 0),
        in_type::BINARY | in_type::COUNTED_BINARY => {
            let size = usize::from(r.u16().ok_or_else(truncated)?);
            Value::Binary(r.bytes(size).ok_or_else(truncated)?.to_vec())
        }
        in_type::GUID => Value::Guid(r.guid().ok_or_else(truncated)?),
        in_type::POINTER => Value::UInt(r.pointer(pointer_size).ok_or_else(truncated)?),
        in_type::FILETIME => Value::Time(FileTime(r.i64().ok_or_else(truncated)?)),
        in_type::SYSTEMTIME => Value::Binary(r.bytes(16).ok_or_else(truncated)?.to_vec()),
        in_type::SID => {
            let rest = r.remaining();
            let sub_authorities = usize::from(*rest.get(1).ok_or_else(truncated)?);
            Value::Binary(
                r.bytes(8 + 4 * sub_authorities)
                    .ok_or_else(truncated)?
                    .to_vec(),
            )
        }
        in_type::COUNTED_STRING => {
            let size = usize::from(r.u16().ok_or_else(truncated)?);
            Value::String(decode_utf16le(r.bytes(size).ok_or_else(truncated)?))
        }
        in_type::COUNTED_ANSI_STRING => {
            let size = usize::from(r.u16().ok_or_else(truncated)?);
            Value::String(decode_ansi(r.bytes(size).ok_or_else(truncated)?))
        }
        other => {
            return Err(TraceLoggingError::UnsupportedType {
                in_type: other,
                field: field.name.to_owned(),
            });
        }
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(event: &str, fields: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = vec![0, 0, 0];
        out.extend_from_slice(event.as_bytes());
        out.push(0);
        for (name, types) in fields {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(types);
        }
        let len = out.len() as u16;
        out[..2].copy_from_slice(&len.to_le_bytes());
        out
    }

    #[test]
    fn schema_and_payload_decode() {
        let meta = metadata(
            "Scan",
            &[
                ("app", &[in_type::UNICODE_STRING]),
                ("size", &[in_type::UINT32]),
                ("data", &[in_type::BINARY]),
                ("ids", &[in_type::UINT16 | 0x40]),
                ("pair", &[in_type::STRUCT | 0x80, 2]),
                ("a", &[in_type::INT8]),
                ("b", &[in_type::ANSI_STRING]),
            ],
        );
        let schema = parse_event_schema(&meta).unwrap();
        assert_eq!(schema.name, "Scan");
        assert_eq!(schema.fields.len(), 7);
        assert_eq!(schema.fields[3].arity, Arity::Variable);

        let mut payload = Vec::new();
        payload.extend_from_slice(&[b'p', 0, b's', 0, 0, 0]);
        payload.extend_from_slice(&7u32.to_le_bytes());
        payload.extend_from_slice(&[2, 0, 0xaa, 0xbb]);
        payload.extend_from_slice(&[2, 0, 1, 0, 2, 0]);
        payload.extend_from_slice(&[0xff, b'x', 0]);
        let values = decode_payload(&schema, &payload, 8).unwrap();
        assert_eq!(values[0], ("app".into(), Value::String("ps".into())));
        assert_eq!(values[1], ("size".into(), Value::UInt(7)));
        assert_eq!(values[2], ("data".into(), Value::Binary(vec![0xaa, 0xbb])));
        assert_eq!(
            values[3],
            (
                "ids".into(),
                Value::Array(vec![Value::UInt(1), Value::UInt(2)])
            )
        );
        assert_eq!(
            values[4],
            (
                "pair".into(),
                Value::Struct(vec![
                    ("a".into(), Value::Int(-1)),
                    ("b".into(), Value::String("x".into()))
                ])
            )
        );
        assert_eq!(values.len(), 5);
    }

    #[test]
    fn truncated_payload_is_an_error() {
        let meta = metadata("E", &[("n", &[in_type::UINT64])]);
        let schema = parse_event_schema(&meta).unwrap();
        assert!(matches!(
            decode_payload(&schema, &[1, 2, 3], 8),
            Err(TraceLoggingError::TruncatedPayload(_))
        ));
    }

    #[test]
    fn provider_traits_give_the_name() {
        let traits = b"\x0c\x00AmsiTrace\x00";
        assert_eq!(provider_name(traits), Some("AmsiTrace"));
    }
}
