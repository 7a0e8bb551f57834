//! PowerShell (`Microsoft-Windows-PowerShell/Operational`) records to OCSF Script Activity.
//!
//! 4104 (script block logging) splits a long script block over several records that share a
//! `ScriptBlockId` and carry `MessageNumber` of `MessageTotal`. The parts are held until all
//! have arrived and emitted as one event with the first part's header; blocks still incomplete
//! at the end of the stream are emitted with `is_truncated` set and the missing part numbers
//! under `unmapped`. 4103 (module logging) becomes one event per record.

use edr_ocsf::model::{File, LongString, Script};
use edr_ocsf::{Class, Event};
use serde_json::Value;

use crate::convert::{Converter, PendingScript, base_event, keep_remaining};
use crate::record::Record;

/// Maximum script blocks waiting for parts; beyond it the oldest is emitted truncated.
const MAX_PENDING_SCRIPTS: usize = 1024;

/// Maximum missing part numbers listed in `MissingMessageNumbers`. `MessageTotal` comes from the
/// record, so listing every gap of a block that claims 2^32 parts would take gigabytes.
const MAX_LISTED_MISSING: usize = 1024;

/// Maps one record; returns whether a mapper handled it (events may follow later).
pub(crate) fn map(
    converter: &mut Converter,
    record: &mut Record,
    out: &mut Vec<Box<Event>>,
) -> bool {
    match record.event_id {
        4104 => {
            script_block(converter, record, out);
            true
        }
        4103 => {
            out.push(module_logging(converter, record));
            true
        }
        _ => false,
    }
}

fn script_block(converter: &mut Converter, record: &mut Record, out: &mut Vec<Box<Event>>) {
    let number = record.take_u32("MessageNumber").unwrap_or(1);
    let total = record.take_u32("MessageTotal").unwrap_or(1).max(1);
    let text = record.take_str("ScriptBlockText").unwrap_or_default();
    let id = record.take_str("ScriptBlockId").unwrap_or_default();
    let path = record.take_str("Path");

    if total == 1 {
        let script = PendingScript {
            first: record.clone(),
            total,
            parts: [(1, text)].into_iter().collect(),
            path,
            script_id: Some(id).filter(|id| !id.is_empty()),
        };
        out.push(assemble(script, false));
        return;
    }

    if !converter.scripts.contains_key(&id) && converter.scripts.len() >= MAX_PENDING_SCRIPTS {
        // Emit the block whose first part is oldest, truncated, to bound memory.
        if let Some(oldest) = converter
            .scripts
            .iter()
            .min_by_key(|(_, script)| script.first.record_id)
            .map(|(key, _)| key.clone())
            && let Some(script) = converter.scripts.remove(&oldest)
        {
            out.push(assemble(script, true));
        }
    }
    let pending = converter
        .scripts
        .entry(id.clone())
        .or_insert_with(|| PendingScript {
            first: record.clone(),
            total,
            parts: Default::default(),
            path: None,
            script_id: Some(id.clone()).filter(|id| !id.is_empty()),
        });
    if number < pending.first_number() {
        pending.first = record.clone();
    }
    pending.parts.insert(number, text);
    if pending.path.is_none() {
        pending.path = path;
    }
    if pending.parts.len() >= pending.total as usize
        && let Some(script) = converter.scripts.remove(&id)
    {
        out.push(assemble(script, false));
    }
}

impl PendingScript {
    fn first_number(&self) -> u32 {
        self.parts.keys().next().copied().unwrap_or(u32::MAX)
    }
}

/// Builds the Script Activity event of a (possibly incomplete) script block.
pub(crate) fn assemble(script: PendingScript, truncated: bool) -> Box<Event> {
    let PendingScript {
        mut first,
        total,
        parts,
        path,
        script_id,
    } = script;
    // Stops after the listed maximum, so it visits at most that many numbers plus the parts.
    let missing: Vec<u32> = (1..=total)
        .filter(|n| !parts.contains_key(n))
        .take(MAX_LISTED_MISSING)
        .collect();
    let present = parts.range(1..=total).count();
    let missing_count = u64::from(total) - present as u64;
    let value: String = parts.into_values().collect();
    let mut event = base_event(&first, Class::ScriptActivity, 1);
    event.script = Some(Script {
        script_content: LongString {
            untruncated_size: None,
            is_truncated: truncated && !missing.is_empty(),
            value,
        },
        type_id: 2,
        type_name: "PowerShell",
        uid: script_id,
        name: path.as_deref().map(|p| File::from_path(p).name),
        file: path.as_deref().map(File::from_path),
    });
    if total > 1 {
        event.add_unmapped("MessageTotal", Value::from(total));
    }
    if !missing.is_empty() {
        event.add_unmapped("MissingMessageNumbers", Value::from(missing));
    }
    if missing_count > MAX_LISTED_MISSING as u64 {
        event.add_unmapped("MissingMessageCount", Value::from(missing_count));
    }
    event.actor = Some(crate::convert::writer_actor(&first));
    keep_remaining(&mut first, &mut event);
    event
}

fn module_logging(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::ScriptActivity, 1);
    let context = record.take_str("ContextInfo").unwrap_or_default();
    let payload = record.take_str("Payload").unwrap_or_default();
    let field = |name: &str| {
        context.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == name)
                .then(|| value.trim().to_owned())
                .filter(|v| !v.is_empty())
        })
    };
    let script_name = field("Script Name");
    let host_application = field("Host Application");
    let user = field("User");
    let mut actor = crate::convert::writer_actor(record);
    if let Some(process) = actor.process.as_mut() {
        if let Some(known) = converter.process_by_pid(record.execution_pid, None, record.time_ms) {
            *process = known;
        }
        if process.cmd_line.is_none() {
            process.cmd_line = host_application;
        }
    }
    if let Some(user) = user {
        actor.user = edr_ocsf::model::User::from_parts(None, Some(&user), None);
    }
    event.actor = Some(actor);
    event.script = Some(Script {
        script_content: LongString {
            value: payload,
            is_truncated: false,
            untruncated_size: None,
        },
        type_id: 2,
        type_name: "PowerShell",
        uid: None,
        name: script_name.as_deref().map(|p| File::from_path(p).name),
        file: script_name.as_deref().map(File::from_path),
    });
    event.add_unmapped("ContextInfo", Value::String(context));
    keep_remaining(record, &mut event);
    event
}
