//! Mapping of decoded ETW events ([`crate::events`]) to OCSF 1.8.0 events.
//!
//! One [`EtwMapper`] reads one stream of events in order (one ETL file, or one live session).
//!
//! # Classes
//!
//! | raw event | OCSF class, activity |
//! |---|---|
//! | process start, stop, defunct | Process Activity: Launch, Terminate |
//! | process rundown (start or end of trace) | Process Activity: Other `Rundown` |
//! | image load, unload, rundown in a process | Module Activity: Load, Unload, Other `Rundown` |
//! | image load, unload in the kernel (pid 0) | Kernel Extension Activity: Load, Unload |
//! | file create, new file, write, delete, rename | File System Activity: Open or Create, Update, Delete, Rename |
//! | registry key create, open, delete | Registry Key Activity: Create, Read, Delete |
//! | registry value set, query, delete | Registry Value Activity: Set, Get, Delete |
//! | TCP/UDP connect, accept | Network Activity: Open (outbound, inbound) |
//! | TCP disconnect | Network Activity: Close |
//! | send, receive, copy, retransmit | Network Activity: Traffic |
//! | reconnect | Network Activity: Other `Reconnect` |
//! | failed TCP/UDP operation | Network Activity: Fail |
//! | DNS query, query completed, response | DNS Activity: Query, Response |
//! | PowerShell script block (4104), command invocation (4103), pipeline execution (7937) | Script Activity: Execute |
//! | AMSI scan | Script Activity: Execute |
//!
//! An AMSI scan is the text of a script (or other content) handed to the antimalware engine
//! just before it runs, so it is a Script Activity with the content in `script.script_content`.
//! The scan result stays under `unmapped`, and a detected result raises the severity to High.
//! OCSF has no scan class for content and Detection Finding would claim a detection that most
//! scans are not.
//!
//! # State, counted as filtered
//!
//! These events build state and produce no event of their own, and are counted in
//! [`MapperStats::filtered`]: thread start, stop and rundown (OCSF has no thread class and the
//! process cache keys on processes), file name create, delete and rundown (they give later file
//! events their path), registry key control block create, delete and rundown (they give later
//! registry events their key path), file reads, set-information calls and registry key closes
//! (not collected live).
//!
//! # Processes
//!
//! Processes go into an [`edr_ocsf::process_cache::ProcessCache`]. A process's `uid` is
//! [`edr_ocsf::process_cache::derive_process_uid`] of the host key (the boot time of the traced
//! machine), the pid and the start time; a process seen first in a rundown has no known start
//! time and uses the trace start instead. A file, network, registry, module or DNS event whose
//! process is not in the cache waits in a bounded queue ([`PENDING_MAX_EVENTS`] events, at most
//! [`PENDING_MAX_AGE_MS`] of event time) for the process start; when the queue overflows, the
//! wait expires or the stream ends, the event is emitted with the pid only.
//!
//! Anything decoded that no mapper takes (PowerShell engine, runspace and console events other
//! than 4103 and 7937, DNS server configuration) becomes a Base Event with the decoded fields under
//! `unmapped`, counted per (provider, event id or opcode) in [`MapperStats::unmapped`].

mod build;

pub(crate) use build::time_ms;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use edr_ocsf::Event;
use edr_ocsf::model::Process;
use edr_ocsf::process_cache::{PendingEvents, ProcessCache};
use serde::Serialize;

use crate::events::{DecodedEvent, EventHeader, RawEvent, providers};

/// Maximum processes held per stream.
const PROCESS_CACHE_CAPACITY: usize = 65_536;
/// Maximum events waiting for their process.
pub const PENDING_MAX_EVENTS: usize = 4_096;
/// Maximum event time, in ms, that an event waits for its process.
// NOTE: an estimate. Per-CPU buffers of a session are flushed when full or at its flush
// timer, so reordering across CPUs is usually well below this, but a quiet CPU can exceed it.
pub const PENDING_MAX_AGE_MS: i64 = 2_000;
/// Maximum file object or key control block names remembered.
const NAME_CACHE_CAPACITY: usize = 65_536;
/// Maximum PowerShell script blocks waiting for their remaining parts.
const MAX_PENDING_SCRIPTS: usize = 256;

/// Counts of a stream's events, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MapperStats {
    /// Events emitted, per OCSF class name.
    pub per_class: BTreeMap<&'static str, u64>,
    /// Events emitted as Base Event because no mapper takes them, per (provider, event id or
    /// opcode).
    pub unmapped: BTreeMap<(String, u16), u64>,
    /// Events not emitted because they only build state or are not collected, per (provider,
    /// event id or opcode).
    pub filtered: BTreeMap<(String, u16), u64>,
    /// Events of the File System, Network, Registry, Module, DNS and Script classes emitted
    /// with a process from the cache (image or command line known).
    pub with_process: u64,
    /// Events of those classes emitted with a pid only.
    pub without_process: u64,
    /// Events that waited for their process start.
    pub held: u64,
    /// Script blocks emitted with parts missing.
    pub truncated_script_blocks: u64,
}

impl MapperStats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &MapperStats) {
        for (class, count) in &other.per_class {
            *self.per_class.entry(class).or_default() += count;
        }
        for (key, count) in &other.unmapped {
            *self.unmapped.entry(key.clone()).or_default() += count;
        }
        for (key, count) in &other.filtered {
            *self.filtered.entry(key.clone()).or_default() += count;
        }
        self.with_process += other.with_process;
        self.without_process += other.without_process;
        self.held += other.held;
        self.truncated_script_blocks += other.truncated_script_blocks;
    }
}

/// Facts about the traced machine and session that the mapping needs.
#[derive(Debug, Clone, Default)]
pub struct TraceContext {
    /// Key that makes process uids unique across boots: the boot time of the traced machine
    /// where known, else a name of the trace.
    pub host_key: String,
    /// Start of the trace, ms since the Unix epoch.
    pub trace_start_ms: i64,
    /// Host name, when known; ETL files do not record it.
    pub hostname: Option<String>,
}

/// Parts of one PowerShell script block.
#[derive(Debug)]
struct PendingScript {
    header: EventHeader,
    total: i32,
    parts: BTreeMap<i32, String>,
    path: String,
    id: String,
}

/// Maps decoded ETW events of one stream to OCSF events.
#[derive(Debug)]
pub struct EtwMapper {
    context: TraceContext,
    processes: ProcessCache,
    pending: PendingEvents<Box<Event>>,
    /// Paths by file object and by file key.
    file_names: HashMap<u64, String>,
    /// Key paths by key control block or key object address.
    key_names: HashMap<u64, String>,
    scripts: HashMap<String, PendingScript>,
    stats: MapperStats,
}

impl EtwMapper {
    /// Creates a mapper with an empty process cache.
    pub fn new(context: TraceContext) -> EtwMapper {
        EtwMapper {
            context,
            processes: ProcessCache::new(PROCESS_CACHE_CAPACITY),
            pending: PendingEvents::new(PENDING_MAX_EVENTS, PENDING_MAX_AGE_MS),
            file_names: HashMap::new(),
            key_names: HashMap::new(),
            scripts: HashMap::new(),
            stats: MapperStats::default(),
        }
    }

    /// Returns the counts so far.
    pub fn stats(&self) -> &MapperStats {
        &self.stats
    }

    /// Maps one decoded event; appends zero or more events to `out`.
    pub fn map(&mut self, decoded: DecodedEvent, out: &mut Vec<Box<Event>>) {
        let start = out.len();
        let time = build::time_ms(decoded.header.timestamp);
        for event in self.pending.expire(time) {
            self.emit_enriched(event, out);
        }
        self.dispatch(decoded, out);
        self.count_classes(&out[start..]);
    }

    /// Counts an event the sensor would not collect live, or one that only builds state.
    pub fn count_filtered(&mut self, provider: String, id_or_opcode: u16) {
        *self
            .stats
            .filtered
            .entry((provider, id_or_opcode))
            .or_default() += 1;
    }

    /// Emits a Base Event for a record of a collected provider that no decoder covers, with
    /// `fields` under `unmapped`, and counts it.
    pub fn map_undecoded(
        &mut self,
        header: &EventHeader,
        provider: String,
        id_or_opcode: u16,
        fields: serde_json::Map<String, serde_json::Value>,
        out: &mut Vec<Box<Event>>,
    ) {
        let start = out.len();
        let mut event = build::base_event(&self.context, header, edr_ocsf::Class::BaseEvent, 99);
        event.set_activity_other(&format!("{provider} {id_or_opcode}"));
        for (key, value) in fields {
            event.add_unmapped(&key, value);
        }
        *self
            .stats
            .unmapped
            .entry((provider, id_or_opcode))
            .or_default() += 1;
        out.push(event);
        self.count_classes(&out[start..]);
    }

    /// Emits everything still held: events waiting for their process (with the pid only) and
    /// script blocks missing parts (marked truncated). Call at the end of a stream.
    pub fn finish(&mut self, out: &mut Vec<Box<Event>>) {
        let start = out.len();
        for event in self.pending.drain() {
            self.emit_enriched(event, out);
        }
        let scripts: Vec<PendingScript> = self.scripts.drain().map(|(_, s)| s).collect();
        for script in scripts {
            self.stats.truncated_script_blocks += 1;
            let event = self.assemble_script(script, true);
            self.emit_with_process(event, out);
        }
        self.count_classes(&out[start..]);
    }

    fn count_classes(&mut self, events: &[Box<Event>]) {
        for event in events {
            *self
                .stats
                .per_class
                .entry(event.class().name())
                .or_default() += 1;
        }
    }

    fn dispatch(&mut self, decoded: DecodedEvent, out: &mut Vec<Box<Event>>) {
        let DecodedEvent { header, event } = decoded;
        match event {
            RawEvent::Process(process) => self.process(&header, process, out),
            RawEvent::Thread(_) => self.filter(&header),
            RawEvent::Image(image) => {
                let event = self.image(&header, image);
                self.emit_with_process(event, out);
            }
            RawEvent::File(file) => {
                if let Some(event) = self.file(&header, file) {
                    self.emit_with_process(event, out);
                } else {
                    self.filter(&header);
                }
            }
            RawEvent::Registry(registry) => {
                if let Some(event) = self.registry(&header, registry) {
                    self.emit_with_process(event, out);
                } else {
                    self.filter(&header);
                }
            }
            RawEvent::Network(network) => {
                let event = self.network(&header, network);
                self.emit_with_process(event, out);
            }
            RawEvent::NetworkFailure(failure) => {
                let event = self.network_failure(&header, failure);
                self.emit_with_process(event, out);
            }
            RawEvent::Dns(dns) => match self.dns(&header, &dns) {
                Some(event) => self.emit_with_process(event, out),
                None => self.unmapped_raw(&header, &RawEvent::Dns(dns), out),
            },
            RawEvent::ScriptBlock(block) => {
                for event in self.script_block(&header, block) {
                    self.emit_with_process(event, out);
                }
            }
            RawEvent::PowerShell(powershell) => match self.powershell(&header, &powershell) {
                Some(event) => self.emit_with_process(event, out),
                None => self.unmapped_raw(&header, &RawEvent::PowerShell(powershell), out),
            },
            RawEvent::AmsiScan(scan) => {
                let event = self.amsi(&header, scan);
                self.emit_with_process(event, out);
            }
        }
    }

    fn filter(&mut self, header: &EventHeader) {
        let (provider, id) = source_key(header);
        self.count_filtered(provider, id);
    }

    fn unmapped_raw(&mut self, header: &EventHeader, raw: &RawEvent, out: &mut Vec<Box<Event>>) {
        let (provider, id) = source_key(header);
        let mut event = build::base_event(&self.context, header, edr_ocsf::Class::BaseEvent, 99);
        event.set_activity_other(&format!("{provider} {id}"));
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(raw) {
            for (key, value) in fields {
                if !value.is_null() {
                    event.add_unmapped(&key, value);
                }
            }
        }
        *self.stats.unmapped.entry((provider, id)).or_default() += 1;
        out.push(event);
    }

    /// Emits `event` with its actor process from the cache, or keeps it waiting until the
    /// process starts. The actor's pid is the key; an event without one is emitted at once.
    fn emit_with_process(&mut self, mut event: Box<Event>, out: &mut Vec<Box<Event>>) {
        let Some(pid) = actor_pid(&event) else {
            out.push(event);
            return;
        };
        if let Some(process) = self.processes.process_at(pid, event.time) {
            set_actor_process(&mut event, process);
            self.stats.with_process += 1;
            out.push(event);
            return;
        }
        self.stats.held += 1;
        if let Some(overflow) = self.pending.hold(pid, event.time, event) {
            self.emit_enriched(overflow, out);
        }
    }

    /// Emits a held event with its process if the cache has it by now.
    fn emit_enriched(&mut self, mut event: Box<Event>, out: &mut Vec<Box<Event>>) {
        let known = actor_pid(&event).and_then(|pid| self.processes.process_at(pid, event.time));
        match known {
            Some(process) => {
                set_actor_process(&mut event, process);
                self.stats.with_process += 1;
            }
            None => self.stats.without_process += 1,
        }
        out.push(event);
    }

    /// Releases the events held for `pid` after its start entered the cache.
    fn release(&mut self, pid: u32, out: &mut Vec<Box<Event>>) {
        for event in self.pending.release(pid) {
            self.emit_enriched(event, out);
        }
    }
}

/// Returns the pid of the event's actor process.
fn actor_pid(event: &Event) -> Option<u32> {
    event.actor.as_ref()?.process.as_ref()?.pid
}

/// Replaces the actor's process, keeping the thread id the event carried.
fn set_actor_process(event: &mut Event, mut process: Process) {
    if let Some(actor) = event.actor.as_mut() {
        if let Some(old) = actor.process.as_ref() {
            process.tid = old.tid;
        }
        actor.process = Some(process);
    }
}

/// Returns the counter key of an event: its provider name and its event id, or its opcode for NT
/// Kernel Logger events.
pub fn source_key(header: &EventHeader) -> (String, u16) {
    let name = provider_name(header.provider);
    let id = if header.event_id == 0 {
        u16::from(header.opcode)
    } else {
        header.event_id
    };
    (name, id)
}

/// Returns the name of a provider or NT Kernel Logger group, or its GUID.
pub fn provider_name(provider: edr_etw::Guid) -> String {
    use providers::*;
    let kernel = match provider {
        KERNEL_PROCESS_GROUP => Some("NT Kernel Logger/Process"),
        KERNEL_THREAD_GROUP => Some("NT Kernel Logger/Thread"),
        KERNEL_IMAGE_GROUP => Some("NT Kernel Logger/Image"),
        KERNEL_FILE_GROUP => Some("NT Kernel Logger/FileIo"),
        KERNEL_TCPIP_GROUP => Some("NT Kernel Logger/TcpIp"),
        KERNEL_UDPIP_GROUP => Some("NT Kernel Logger/UdpIp"),
        KERNEL_REGISTRY_GROUP => Some("NT Kernel Logger/Registry"),
        _ => None,
    };
    kernel
        .or_else(|| providers::name(provider))
        .or_else(|| filtered_provider_name(provider))
        .map_or_else(|| provider.to_string(), str::to_owned)
}

/// Names of providers and kernel groups that recorded traces often carry and the sensor does
/// not collect, so that the filtered counts read without a GUID table.
fn filtered_provider_name(provider: edr_etw::Guid) -> Option<&'static str> {
    Some(match provider.to_string().as_str() {
        "ce1dbfb4-137e-4da6-87b0-3f59aa102cbc" => "NT Kernel Logger/PerfInfo",
        "def2fe46-7bd6-4b80-bd94-f57fe20d0ce3" => "NT Kernel Logger/StackWalk",
        "3d6fa8d4-fe05-11d0-9dda-00c04fd7ba7c" => "NT Kernel Logger/PageFault",
        "01853a65-418f-4f36-aefc-dc0f1d2fd235" => "NT Kernel Logger/SystemConfig",
        "68fdd900-4a3e-11d1-84f4-0000f80464e3" => "NT Kernel Logger/EventTrace",
        "b3e675d7-2554-4f18-830b-2762732560de" => "KernelTraceControl/ImageID",
        "e13c0d23-ccbc-4e12-931b-d9cc2eee27e4" => "Microsoft-Windows-DotNETRuntime",
        "a669021c-c450-4609-a035-5af59af4df18" => "Microsoft-Windows-DotNETRuntimeRundown",
        _ => return None,
    })
}

/// Returns whether events of `provider` are collected live: the providers and kernel groups the
/// decoders cover. Other providers in an ETL file (CLR runtime, sampled profile, stack walk,
/// perf-info, disk I/O and so on) are filtered.
pub fn is_collected(provider: edr_etw::Guid) -> bool {
    use providers::*;
    matches!(
        provider,
        KERNEL_PROCESS_GROUP
            | KERNEL_THREAD_GROUP
            | KERNEL_IMAGE_GROUP
            | KERNEL_FILE_GROUP
            | KERNEL_TCPIP_GROUP
            | KERNEL_UDPIP_GROUP
            | KERNEL_REGISTRY_GROUP
    ) || providers::name(provider).is_some()
}
