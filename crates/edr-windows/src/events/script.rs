//! PowerShell and AMSI events.
//!
//! - Microsoft-Windows-PowerShell (manifest): 4104 script block v1: MessageNumber (i32),
//!   MessageTotal (i32), ScriptBlockText, ScriptBlockId, Path. 4103 command invocation and 7937
//!   to 7942 engine, command and pipeline events v1: ContextInfo, UserData, Payload. 40961 and
//!   40962 console start and ready carry no fields; 53504 (IPC listener) carries two strings.
//! - AMSI as TraceLogging (provider `AmsiTrace`, event `AmsiScript`, written by PowerShell's own
//!   AMSI tracing): fields `Engine` (application name) and `Script` (UTF-16 text), with the raw
//!   characters in `Raw Script`. The event carries its own metadata, which is parsed (a few
//!   dozen bytes) to locate the fields by name, so a field order change does not misdecode.
//! - AMSI as a manifest provider (Microsoft-Antimalware-Scan-Interface, 1101 scan v0): session
//!   (u64), scanStatus (u8), scanResult (u32), appname, contentname, contentsize, originalsize
//!   (u32), content (contentsize bytes), hash (32 bytes), contentFiltered (u32 boolean).

use edr_etw::tracelogging::{self, Value};
use edr_etw::{EventRecord, PointerSize};

use super::payload::{LayoutMismatch, Payload};
use super::types::*;
use super::{Decoding, Version};

type Result<T> = std::result::Result<T, LayoutMismatch>;

/// Finds `Name = value` in PowerShell's `ContextInfo` lines.
fn context_value(context: &str, name: &str) -> Option<String> {
    context.lines().find_map(|line| {
        let (key, value) = line.trim().split_once('=')?;
        (key.trim() == name).then(|| value.trim().to_owned())
    })
}

/// Microsoft-Windows-PowerShell.
pub(super) fn powershell(id: u16, version: u8, data: &[u8], ps: PointerSize) -> Decoding {
    match id {
        4104 => {
            let Some(v) = Version::select(version, &[1]) else {
                return Decoding::UnknownVersion;
            };
            let mut p = Payload::new(data, ps, v.strict);
            let parsed = (|| -> Result<ScriptBlockEvent> {
                Ok(ScriptBlockEvent {
                    message_number: p.i32()?,
                    message_total: p.i32()?,
                    script_block_text: p.utf16()?,
                    script_block_id: p.utf16()?,
                    path: p.utf16()?,
                })
            })();
            Decoding::from_result(parsed.map(RawEvent::ScriptBlock))
        }
        4103 | 7937..=7942 | 40961 | 40962 | 53504 => {
            let Some(v) = Version::select(version, &[1]) else {
                return Decoding::UnknownVersion;
            };
            let mut p = Payload::new(data, ps, v.strict);
            let parsed = (|| -> Result<PowerShellEvent> {
                let mut e = PowerShellEvent {
                    event_id: id,
                    context_info: None,
                    user_data: None,
                    payload: None,
                    host_application: None,
                    command_name: None,
                    script_name: None,
                    user: None,
                    parameters: Vec::new(),
                };
                match id {
                    40961 | 40962 => {}
                    53504 => {
                        e.parameters.push(p.utf16()?);
                        e.parameters.push(p.utf16()?);
                    }
                    _ => {
                        let context = p.utf16()?;
                        e.user_data = Some(p.utf16()?);
                        e.payload = Some(p.utf16()?);
                        e.host_application = context_value(&context, "Host Application");
                        e.command_name = context_value(&context, "Command Name");
                        e.script_name = context_value(&context, "Script Name");
                        e.user = context_value(&context, "User");
                        e.context_info = Some(context);
                    }
                }
                Ok(e)
            })();
            Decoding::from_result(parsed.map(RawEvent::PowerShell))
        }
        _ => Decoding::NotCovered,
    }
}

/// AMSI events written as TraceLogging: the metadata locates the fields.
pub(super) fn amsi_tracelogging(record: &EventRecord<'_>) -> Decoding {
    let Some(metadata) = record.extended.tracelogging_schema() else {
        return Decoding::UnknownVersion;
    };
    let Ok(schema) = tracelogging::parse_event_schema(metadata) else {
        return Decoding::Mismatch;
    };
    if schema.name != "AmsiScript" {
        return Decoding::NotCovered;
    }
    let Ok(values) =
        tracelogging::decode_payload(&schema, record.user_data, record.pointer_size.bytes())
    else {
        return Decoding::Mismatch;
    };
    let text = |names: &[&str]| {
        values.iter().find_map(|(name, value)| match value {
            Value::String(s) if names.contains(&name.as_str()) => Some(s.clone()),
            _ => None,
        })
    };
    let (Some(app_name), Some(content)) =
        (text(&["Engine", "appname"]), text(&["Script", "content"]))
    else {
        return Decoding::Mismatch;
    };
    let content_size = u32::try_from(content.encode_utf16().count() * 2).ok();
    Decoding::Decoded(RawEvent::AmsiScan(AmsiScanEvent {
        session: None,
        scan_status: None,
        scan_result: None,
        app_name,
        content_name: text(&["contentname", "ContentName"]).unwrap_or_default(),
        content_size,
        original_size: content_size,
        content,
        hash: None,
        content_filtered: None,
    }))
}

/// Microsoft-Antimalware-Scan-Interface event 1101.
// NOTE: this layout was not checked against the provider's manifest file or a recorded trace;
// only a payload built from the description above tests it.
pub(super) fn amsi_manifest(id: u16, version: u8, data: &[u8], ps: PointerSize) -> Decoding {
    if id != 1101 {
        return Decoding::NotCovered;
    }
    let Some(v) = Version::select(version, &[0]) else {
        return Decoding::UnknownVersion;
    };
    let mut p = Payload::new(data, ps, v.strict);
    let parsed = (|| -> Result<AmsiScanEvent> {
        let session = p.u64()?;
        let scan_status = p.u8()?;
        let scan_result = p.u32()?;
        let app_name = p.utf16()?;
        let content_name = p.utf16()?;
        let content_size = p.u32()?;
        let original_size = p.u32()?;
        let raw = p.bytes(content_size as usize)?;
        let hash = p.bytes(32)?.to_vec();
        let content_filtered = p.u32()? != 0;
        Ok(AmsiScanEvent {
            session: Some(session),
            scan_status: Some(u32::from(scan_status)),
            scan_result: Some(scan_result),
            app_name,
            content_name,
            content_size: Some(content_size),
            original_size: Some(original_size),
            content: edr_etw::bytes::decode_utf16le(raw),
            hash: Some(hash),
            content_filtered: Some(content_filtered),
        })
    })();
    Decoding::from_result(parsed.map(RawEvent::AmsiScan))
}
