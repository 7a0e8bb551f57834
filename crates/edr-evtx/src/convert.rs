//! Conversion of event log records to OCSF events, with the state that needs: the process
//! cache and PowerShell script blocks waiting for their remaining parts.
//!
//! One [`Converter`] reads one stream of records in order (one file, or one live channel). A
//! record with a mapper becomes the events of its class; any other record becomes a Base Event
//! (`class_uid` 0, activity 99 `Other` named after the provider and event id) that keeps every
//! original field under `unmapped`, and is counted per (channel or provider, event id) in
//! [`Stats::unmapped`]. Nothing is dropped silently: the only records that produce no event
//! at once are script block parts, which are emitted when their block is complete or, truncated,
//! at [`Converter::finish`].

use std::collections::{BTreeMap, HashMap};

use edr_ocsf::model::{Actor, Device, Process, Product, User};
use edr_ocsf::process_cache::{ProcessCache, ProcessInfo};
use edr_ocsf::{Class, Event, Metadata};
use serde_json::Value;

use crate::map;
use crate::record::{FieldValue, Record};

/// Maximum processes the converter remembers per stream.
const PROCESS_CACHE_CAPACITY: usize = 65_536;

/// Counts of what a conversion produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records read.
    pub records: u64,
    /// Events emitted, per OCSF class name.
    pub per_class: BTreeMap<&'static str, u64>,
    /// Records without a mapper, per (channel or provider, event id).
    pub unmapped: BTreeMap<(String, u32), u64>,
    /// Script blocks emitted without all their parts.
    pub truncated_script_blocks: u64,
}

impl Stats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.records += other.records;
        for (class, count) in &other.per_class {
            *self.per_class.entry(class).or_default() += count;
        }
        for (key, count) in &other.unmapped {
            *self.unmapped.entry(key.clone()).or_default() += count;
        }
        self.truncated_script_blocks += other.truncated_script_blocks;
    }
}

/// Parts of one PowerShell script block (4104 records sharing a `ScriptBlockId`).
#[derive(Debug)]
pub(crate) struct PendingScript {
    /// The first part's record, whose header the assembled event keeps.
    pub(crate) first: Record,
    pub(crate) total: u32,
    pub(crate) parts: BTreeMap<u32, String>,
    pub(crate) path: Option<String>,
    pub(crate) script_id: Option<String>,
}

/// Converts records of one stream to OCSF events.
#[derive(Debug)]
pub struct Converter {
    pub(crate) processes: ProcessCache,
    pub(crate) scripts: HashMap<String, PendingScript>,
    stats: Stats,
}

impl Default for Converter {
    fn default() -> Self {
        Converter::new()
    }
}

impl Converter {
    /// Creates a converter with an empty process cache.
    pub fn new() -> Converter {
        Converter {
            processes: ProcessCache::new(PROCESS_CACHE_CAPACITY),
            scripts: HashMap::new(),
            stats: Stats::default(),
        }
    }

    /// Converts one record; appends zero or more events to `out`.
    pub fn convert(&mut self, mut record: Record, out: &mut Vec<Box<Event>>) {
        self.stats.records += 1;
        let start = out.len();
        let mapped = map::dispatch(self, &mut record, out);
        if !mapped {
            let key = (record.source_name().to_owned(), record.event_id);
            *self.stats.unmapped.entry(key).or_default() += 1;
            out.push(unmapped_event(record));
        }
        for event in &out[start..] {
            *self
                .stats
                .per_class
                .entry(event.class().name())
                .or_default() += 1;
        }
    }

    /// Emits script blocks still missing parts, marked truncated; call at the end of a stream.
    pub fn finish(&mut self, out: &mut Vec<Box<Event>>) {
        let start = out.len();
        let pending: Vec<PendingScript> = self.scripts.drain().map(|(_, script)| script).collect();
        for script in pending {
            self.stats.truncated_script_blocks += 1;
            out.push(map::powershell::assemble(script, true));
        }
        for event in &out[start..] {
            *self
                .stats
                .per_class
                .entry(event.class().name())
                .or_default() += 1;
        }
    }

    /// Returns the counts so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Enriches a process known only by pid (and image) from the cache, as seen at `time`.
    pub(crate) fn process_by_pid(
        &self,
        pid: Option<u32>,
        image: Option<String>,
        time: i64,
    ) -> Option<Process> {
        if let Some(pid) = pid
            && let Some(mut process) = self.processes.process_at(pid, time)
        {
            if process.path.is_none() && image.is_some() {
                let file = image.as_deref().map(edr_ocsf::model::File::from_path);
                process.name = file.as_ref().map(|f| f.name.clone());
                process.file = file;
                process.path = image;
            }
            return Some(process);
        }
        if pid.is_none() && image.is_none() {
            return None;
        }
        let info = ProcessInfo {
            pid: pid.unwrap_or(0),
            image,
            ..ProcessInfo::default()
        };
        let mut process = info.to_process();
        // Without a start time there is no stable uid to give; leave it out.
        process.uid = None;
        process.pid = pid;
        Some(process)
    }
}

/// Builds the event every mapper starts from: class, activity, time, metadata and device.
pub(crate) fn base_event(record: &Record, class: Class, activity_id: u8) -> Box<Event> {
    let mut metadata = Metadata::new(product_for(&record.provider));
    metadata.original_time = record.system_time.clone();
    metadata.log_name = (!record.channel.is_empty()).then(|| record.channel.clone());
    metadata.log_provider = (!record.provider.is_empty()).then(|| record.provider.clone());
    metadata.event_code = Some(record.event_id.to_string());
    metadata.uid = Some(record.record_id.to_string());
    metadata.correlation_uid = record.activity_id.clone();
    // Boxed: an event is several KiB, and it moves from mapper to output more than once.
    let mut event = Box::new(Event::new(class, activity_id, record.time_ms, metadata));
    if !record.computer.is_empty() {
        event.device = Some(Device::windows(&record.computer));
    }
    event
}

/// Builds an actor from the record's writer: the logging process (`Execution/@ProcessID`)
/// under the logging SID. Used where a class requires an actor and the record names no other.
/// OCSF requires a process to have a pid or uid, and a thread id is neither, so a record
/// without `Execution/@ProcessID` (damaged, or written by another tool) gets no process. If it
/// has no SID either, the actor is the provider that wrote the record (`app_name`), because
/// OCSF requires an actor to name something.
pub(crate) fn writer_actor(record: &Record) -> Actor {
    let process = record.execution_pid.map(|pid| Process {
        pid: Some(pid),
        tid: record.execution_tid,
        ..Process::default()
    });
    let user = record
        .user_sid
        .as_deref()
        .and_then(|sid| User::from_parts(None, None, Some(sid)));
    let writer = if record.provider.is_empty() {
        record.source_name()
    } else {
        &record.provider
    };
    let app_name = (process.is_none() && user.is_none()).then(|| writer.to_owned());
    Actor {
        process,
        user,
        app_name,
        ..Actor::default()
    }
}

/// Moves the fields no mapper took under `unmapped`, leaving out `null` values.
pub(crate) fn keep_remaining(record: &mut Record, event: &mut Event) {
    // The keys move into the map as they are: fields are unique, and copying every key
    // and going through an intermediate map cost more than the mapping itself.
    for (key, value) in record.take_fields().into_vec() {
        if value != FieldValue::Null {
            event
                .unmapped
                .get_or_insert_with(serde_json::Map::new)
                .insert(key, value.into_json());
        }
    }
}

fn unmapped_event(mut record: Record) -> Box<Event> {
    let mut event = base_event(&record, Class::BaseEvent, 99);
    event.set_activity_other(&format!("{} {}", record.source_name(), record.event_id));
    if let Some(sid) = record.user_sid.take() {
        event.add_unmapped("UserID", Value::String(sid));
    }
    keep_remaining(&mut record, &mut event);
    event
}

/// Returns the product that wrote records of `provider`.
fn product_for(provider: &str) -> Product {
    let (name, vendor) = match provider {
        "Microsoft-Windows-Sysmon" => ("Sysmon", "Microsoft"),
        "Microsoft-Windows-Security-Auditing" => ("Windows Security Auditing", "Microsoft"),
        "Microsoft-Windows-Windows Defender" => ("Microsoft Defender Antivirus", "Microsoft"),
        "Microsoft-Windows-PowerShell" | "PowerShell" => ("PowerShell", "Microsoft"),
        "Service Control Manager" => ("Service Control Manager", "Microsoft"),
        "Microsoft-Windows-Eventlog" => ("Windows Event Log", "Microsoft"),
        // NOTE: other providers on a Windows event log are assumed to come from Microsoft.
        other => (
            if other.is_empty() {
                "Windows Event Log"
            } else {
                other
            },
            "Microsoft",
        ),
    };
    Product {
        name: name.to_owned(),
        vendor_name: vendor.to_owned(),
        version: None,
    }
}
