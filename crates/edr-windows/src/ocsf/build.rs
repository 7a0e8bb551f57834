//! The per-class mappers of [`EtwMapper`].

use std::net::IpAddr;

use edr_etw::FileTime;
use edr_ocsf::model::{
    Actor, ConnectionInfo, Device, DnsAnswer, DnsQuery, File, KernelDriver, LongString, Module,
    NetworkEndpoint, Process, Product, RegKey, RegValue, Script, User,
};
use edr_ocsf::process_cache::{ProcessInfo, derive_process_uid};
use edr_ocsf::{Class, Event, Metadata, Severity};
use serde_json::Value;

use super::{
    EtwMapper, MAX_PENDING_SCRIPTS, NAME_CACHE_CAPACITY, PendingScript, TraceContext, provider_name,
};
use crate::events::{
    AmsiScanEvent, DnsEvent, DnsOperation, EventHeader, FileEvent, FileOperation, ImageEvent,
    Lifecycle, NetworkEvent, NetworkFailureEvent, NetworkOperation, PowerShellEvent, ProcessEvent,
    Protocol, RegistryEvent, RegistryOperation, ScriptBlockEvent, providers,
};

/// `AMSI_RESULT_DETECTED`: results at or above it are detections.
const AMSI_RESULT_DETECTED: u32 = 32_768;

/// Converts a FILETIME to ms since the Unix epoch.
pub(crate) fn time_ms(time: FileTime) -> i64 {
    // Saturates: a FILETIME spans about ±29 000 years, which fits i64 ms.
    i64::try_from(time.unix_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Builds the event every mapper starts from: class, activity, time, metadata and device.
pub(super) fn base_event(
    context: &TraceContext,
    header: &EventHeader,
    class: Class,
    activity_id: u8,
) -> Box<Event> {
    let mut metadata = Metadata::new(Product {
        name: "Event Tracing for Windows".to_owned(),
        vendor_name: "Microsoft".to_owned(),
        version: None,
    });
    metadata.original_time = Some(header.timestamp.to_string());
    metadata.log_provider = Some(provider_name(header.provider));
    metadata.event_code = Some(if header.event_id == 0 {
        format!("opcode {}", header.opcode)
    } else {
        header.event_id.to_string()
    });
    // Boxed: an event is several KiB, and it moves from mapper to output more than once.
    let mut event = Box::new(Event::new(
        class,
        activity_id,
        time_ms(header.timestamp),
        metadata,
    ));
    // OCSF requires a device with a name or id. An ETL file does not record the host name.
    // NOTE: the host key (`boot-<FILETIME of boot>`) then serves as `device.uid`: it
    // tells traces of one boot of one machine apart, but is not a stable machine id.
    let mut device = Device::windows(context.hostname.as_deref().unwrap_or(""));
    if context.hostname.is_none() {
        device.hostname = None;
        device.name = None;
        device.uid = Some(context.host_key.clone());
    }
    event.device = Some(device);
    event
}

/// Returns the pid that wrote the event, when the header carries one.
fn writer_pid(header: &EventHeader) -> Option<u32> {
    (header.header_process_id != u32::MAX).then_some(header.header_process_id)
}

/// Builds an actor naming only a pid (and thread), filled from the cache on emission.
fn pid_actor(pid: Option<u32>, tid: Option<u32>) -> Actor {
    Actor {
        process: Some(Process {
            pid,
            tid,
            ..Process::default()
        }),
        ..Actor::default()
    }
}

fn writer_actor(header: &EventHeader) -> Actor {
    let tid = (header.header_thread_id != u32::MAX).then_some(header.header_thread_id);
    pid_actor(writer_pid(header), tid)
}

fn hex(value: u64) -> String {
    format!("0x{value:x}")
}

impl EtwMapper {
    pub(super) fn process(
        &mut self,
        header: &EventHeader,
        raw: ProcessEvent,
        out: &mut Vec<Box<Event>>,
    ) {
        let time = time_ms(header.timestamp);
        let (activity, name) = match raw.lifecycle {
            Lifecycle::Start => (1, None),
            Lifecycle::Stop | Lifecycle::Defunct => (2, None),
            Lifecycle::RundownStart | Lifecycle::RundownEnd => (99, Some("Rundown")),
        };

        // Starts and rundowns describe a process; enter it in the cache (a rundown only when
        // the cache has no generation of that pid at this time).
        // A manifest start event's `CreateTime` can be a few ms later than the event's own
        // time stamp; the earlier of the two keeps the process's first events inside its life.
        let start_time = match raw.lifecycle {
            Lifecycle::Start => Some(raw.create_time.map_or(time, |c| time_ms(c).min(time))),
            _ => raw.create_time.map(time_ms),
        };
        let known = self.processes.lookup(raw.process_id, time).is_some();
        // A second provider's report of a start already in the cache (a kernel trace often
        // has both the NT Kernel Logger and Microsoft-Windows-Kernel-Process) describes the
        // same process: it keeps that process's uid and only fills what the first lacked.
        let same_start = match (raw.lifecycle, start_time) {
            (Lifecycle::Start, Some(start)) => self
                .processes
                .lookup(raw.process_id, time)
                .filter(|p| is_same_start(p, &raw, start))
                .cloned(),
            _ => None,
        };
        let describes = matches!(raw.lifecycle, Lifecycle::Start)
            || (matches!(
                raw.lifecycle,
                Lifecycle::RundownStart | Lifecycle::RundownEnd
            ) && !known);
        let mut described = None;
        if let Some(mut existing) = same_start {
            if existing.cmd_line.is_none() {
                existing.cmd_line = raw.command_line.clone().filter(|c| !c.is_empty());
            }
            if existing.user.is_none() {
                existing.user = raw
                    .user_sid
                    .as_deref()
                    .and_then(|sid| User::from_parts(None, None, Some(sid)));
            }
            if existing.image.as_ref().is_none_or(|i| !i.contains('\\'))
                && raw.image_name.contains('\\')
            {
                existing.image = Some(raw.image_name.clone());
            }
            self.processes.insert(existing.clone());
            described = Some(existing);
        } else if describes {
            let uid_time = start_time.unwrap_or(self.context.trace_start_ms);
            let parent_uid = raw.parent_process_id.and_then(|ppid| {
                self.processes
                    .lookup(ppid, start_time.unwrap_or(time))
                    .map(|p| p.uid.clone())
            });
            let info = ProcessInfo {
                pid: raw.process_id,
                uid: derive_process_uid(&self.context.host_key, raw.process_id, uid_time),
                image: Some(raw.image_name.clone()).filter(|i| !i.is_empty()),
                cmd_line: raw.command_line.clone().filter(|c| !c.is_empty()),
                user: raw
                    .user_sid
                    .as_deref()
                    .and_then(|sid| User::from_parts(None, None, Some(sid))),
                parent_pid: raw.parent_process_id,
                parent_uid,
                start_time,
                exit_time: None,
            };
            self.processes.insert(info.clone());
            described = Some(info);
        }

        let mut event = base_event(&self.context, header, Class::ProcessActivity, activity);
        if let Some(name) = name {
            event.set_activity_other(name);
        }
        let exited = matches!(raw.lifecycle, Lifecycle::Stop | Lifecycle::Defunct);
        let info = if exited {
            let exit_time = raw.exit_time.map_or(time, time_ms);
            self.processes.exit(raw.process_id, exit_time).or_else(|| {
                self.processes
                    .exited_near(raw.process_id, exit_time, SAME_REPORT_MS)
            })
        } else {
            // The start time of a manifest start event can be later than the event's own
            // time stamp, so the process just described is used as is.
            described.or_else(|| self.processes.lookup(raw.process_id, time).cloned())
        };
        let mut process = match &info {
            Some(info) => self.processes.with_parent(info),
            None => Process {
                pid: Some(raw.process_id),
                name: Some(File::from_path(&raw.image_name).name),
                ..Process::default()
            },
        };
        if exited {
            event.exit_code = raw.exit_code;
            process.terminated_time = Some(raw.exit_time.map_or(time, time_ms));
        }
        // The parent launched the child; for other activities the process acts on itself.
        let actor_process = match (&process.parent_process, activity) {
            (Some(parent), 1) => (**parent).clone(),
            _ => process.clone(),
        };
        event.actor = Some(Actor {
            process: Some(actor_process),
            ..Actor::default()
        });
        event.process = Some(process);
        add_optional(&mut event, "session_id", raw.session_id.map(Value::from));
        add_optional(
            &mut event,
            "flags",
            raw.flags.map(|f| Value::from(hex(u64::from(f)))),
        );
        add_optional(
            &mut event,
            "unique_process_key",
            raw.unique_process_key.map(|k| Value::from(hex(k))),
        );
        add_optional(
            &mut event,
            "sequence_number",
            raw.sequence_number.map(Value::from),
        );
        add_optional(
            &mut event,
            "package_full_name",
            raw.package_full_name.map(Value::from),
        );
        add_optional(
            &mut event,
            "application_id",
            raw.application_id.map(Value::from),
        );
        out.push(event);

        if describes {
            self.release(raw.process_id, out);
        }
    }

    pub(super) fn image(&mut self, header: &EventHeader, raw: ImageEvent) -> Box<Event> {
        let kernel = raw.process_id.is_none_or(|pid| pid == 0);
        let (activity, name) = match raw.lifecycle {
            Lifecycle::Start => (1, None),
            Lifecycle::Stop | Lifecycle::Defunct => (2, None),
            Lifecycle::RundownStart | Lifecycle::RundownEnd => (99, Some("Rundown")),
        };
        let file = File::from_path(&raw.file_name);
        let class = if kernel {
            Class::KernelExtensionActivity
        } else {
            Class::ModuleActivity
        };
        let mut event = base_event(&self.context, header, class, activity);
        if let Some(name) = name {
            event.set_activity_other(name);
        }
        if kernel {
            event.driver = Some(KernelDriver { file });
            // Kernel images are mapped by the System process.
            event.actor = Some(Actor {
                process: Some(Process {
                    pid: Some(4),
                    name: Some("System".to_owned()),
                    ..Process::default()
                }),
                ..Actor::default()
            });
        } else {
            event.module = Some(Module {
                file: Some(file),
                load_type_id: 0,
                load_type: "Unknown".to_owned(),
                base_address: Some(hex(raw.image_base)),
                ..Module::default()
            });
            event.actor = Some(pid_actor(raw.process_id, None));
        }
        event.add_unmapped("image_size", Value::from(raw.image_size));
        add_optional(
            &mut event,
            "image_checksum",
            raw.image_checksum.map(Value::from),
        );
        add_optional(
            &mut event,
            "time_date_stamp",
            raw.time_date_stamp.map(Value::from),
        );
        add_optional(
            &mut event,
            "signature_level",
            raw.signature_level.map(Value::from),
        );
        add_optional(
            &mut event,
            "signature_type",
            raw.signature_type.map(Value::from),
        );
        event
    }

    /// Maps a file event, or returns `None` for one that only builds state or is not collected.
    pub(super) fn file(&mut self, header: &EventHeader, raw: FileEvent) -> Option<Box<Event>> {
        // Remember names by file object and file key for the events that carry no path.
        if let Some(path) = &raw.path {
            for key in [raw.file_object, raw.file_key].into_iter().flatten() {
                remember(&mut self.file_names, key, path);
            }
        }
        let activity = match raw.operation {
            FileOperation::Create => match raw.create_options.map(|o| o >> 24) {
                // FILE_CREATE: the call fails unless it makes a new file.
                Some(2) => 1,
                _ => 14,
            },
            FileOperation::CreateNewFile => 1,
            FileOperation::Write => 3,
            FileOperation::Delete | FileOperation::DeletePath => 4,
            FileOperation::Rename | FileOperation::RenamePath => 5,
            FileOperation::NameDelete => {
                for key in [raw.file_object, raw.file_key].into_iter().flatten() {
                    self.file_names.remove(&key);
                }
                return None;
            }
            FileOperation::Read
            | FileOperation::SetInformation
            | FileOperation::NameCreate
            | FileOperation::NameRundown => return None,
        };
        let path = raw.path.clone().or_else(|| {
            [raw.file_object, raw.file_key]
                .into_iter()
                .flatten()
                .find_map(|key| self.file_names.get(&key).cloned())
        });
        let mut event = base_event(&self.context, header, Class::FileSystemActivity, activity);
        let mut file = File::from_path(path.as_deref().unwrap_or(""));
        if path.is_none() {
            file.name = "unknown".to_owned();
            file.path = None;
        }
        if activity == 4 {
            file.is_deleted = true;
        }
        event.file = Some(file);
        let tid = raw
            .issuing_thread_id
            .or((header.header_thread_id != u32::MAX).then_some(header.header_thread_id));
        event.actor = Some(pid_actor(writer_pid(header), tid));
        add_optional(
            &mut event,
            "file_object",
            raw.file_object.map(|v| Value::from(hex(v))),
        );
        add_optional(&mut event, "io_size", raw.io_size.map(Value::from));
        add_optional(&mut event, "offset", raw.offset.map(Value::from));
        add_optional(
            &mut event,
            "create_options",
            raw.create_options.map(|v| Value::from(hex(u64::from(v)))),
        );
        Some(event)
    }

    /// Maps a registry event, or returns `None` for one that only builds state.
    pub(super) fn registry(
        &mut self,
        header: &EventHeader,
        raw: RegistryEvent,
    ) -> Option<Box<Event>> {
        let kernel = header.provider == providers::KERNEL_REGISTRY_GROUP;
        match raw.operation {
            RegistryOperation::KcbCreate | RegistryOperation::KcbRundown => {
                remember(&mut self.key_names, raw.key_object, &raw.key_name);
                return None;
            }
            RegistryOperation::KcbDelete => {
                self.key_names.remove(&raw.key_object);
                return None;
            }
            RegistryOperation::CloseKey => return None,
            _ => {}
        }

        // The full key path: kernel events name it relative to a key control block (or in
        // full when no block is given); manifest create and open events give a base key and a
        // relative name.
        let base = self.key_names.get(&raw.key_object).cloned();
        let value_op = matches!(
            raw.operation,
            RegistryOperation::SetValue
                | RegistryOperation::DeleteValue
                | RegistryOperation::QueryValue
        );
        let (key_path, value_name) = if kernel {
            if value_op {
                (base.unwrap_or_default(), raw.key_name.clone())
            } else {
                (join_key(base.as_deref(), &raw.key_name), String::new())
            }
        } else {
            let key = match &raw.relative_name {
                Some(relative) => join_key(Some(&raw.key_name), relative),
                None if raw.key_name.is_empty() => base.unwrap_or_default(),
                None => raw.key_name.clone(),
            };
            (key, raw.value_name.clone().unwrap_or_default())
        };
        if !value_op && raw.key_object != 0 && !key_path.is_empty() {
            remember(&mut self.key_names, raw.key_object, &key_path);
        }

        let mut event = if value_op {
            let activity = match raw.operation {
                RegistryOperation::SetValue => 2,
                RegistryOperation::DeleteValue => 4,
                _ => 1,
            };
            let mut event = base_event(
                &self.context,
                header,
                Class::RegistryValueActivity,
                activity,
            );
            let mut value = RegValue {
                path: key_path,
                is_default: Some(value_name.is_empty()),
                name: if value_name.is_empty() {
                    "(Default)".to_owned()
                } else {
                    value_name
                },
                ..RegValue::default()
            };
            if let Some(kind) = raw.value_type.and_then(reg_type_name) {
                value.set_type(kind);
            }
            event.reg_value = Some(value);
            event
        } else {
            let activity = match raw.operation {
                RegistryOperation::CreateKey => 1,
                RegistryOperation::DeleteKey => 4,
                _ => 2,
            };
            let mut event = base_event(&self.context, header, Class::RegistryKeyActivity, activity);
            event.reg_key = Some(RegKey { path: key_path });
            event
        };
        event.set_status(raw.status == 0);
        if raw.status != 0 {
            event.status_code = Some(hex(u64::from(raw.status)));
        }
        event.actor = Some(writer_actor(header));
        add_optional(&mut event, "data_size", raw.data_size.map(Value::from));
        add_optional(
            &mut event,
            "captured_data",
            raw.captured_data.map(|d| Value::from(hex_bytes(&d))),
        );
        Some(event)
    }

    pub(super) fn network(&mut self, header: &EventHeader, raw: NetworkEvent) -> Box<Event> {
        let (activity, name, outbound) = match raw.operation {
            NetworkOperation::Connect => (1, None, Some(true)),
            NetworkOperation::Accept => (1, None, Some(false)),
            NetworkOperation::Disconnect => (2, None, None),
            NetworkOperation::Send
            | NetworkOperation::Receive
            | NetworkOperation::Copy
            | NetworkOperation::Retransmit => (6, None, None),
            NetworkOperation::Reconnect => (99, Some("Reconnect"), Some(true)),
        };
        let mut event = base_event(&self.context, header, Class::NetworkActivity, activity);
        if let Some(name) = name {
            event.set_activity_other(name);
        }
        let (local, remote) = (raw.local(), raw.remote());
        event.src_endpoint = Some(endpoint(local));
        event.dst_endpoint = Some(endpoint(remote));
        let protocol = match raw.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let mut info = ConnectionInfo::new(outbound, Some(protocol));
        let (version_id, version) = match remote.0 {
            IpAddr::V4(_) => (4, "Internet Protocol version 4 (IPv4)"),
            IpAddr::V6(_) => (6, "Internet Protocol version 6 (IPv6)"),
        };
        info.protocol_ver_id = Some(version_id);
        info.protocol_ver = Some(version);
        event.connection_info = Some(info);
        event.actor = Some(pid_actor(Some(raw.process_id), None));
        event.add_unmapped("operation", Value::from(format!("{:?}", raw.operation)));
        event.add_unmapped("size", Value::from(raw.size));
        add_optional(
            &mut event,
            "connection_id",
            raw.connection_id.map(Value::from),
        );
        add_optional(
            &mut event,
            "sequence_number",
            raw.sequence_number.map(Value::from),
        );
        add_optional(&mut event, "mss", raw.mss.map(Value::from));
        event
    }

    pub(super) fn network_failure(
        &mut self,
        header: &EventHeader,
        raw: NetworkFailureEvent,
    ) -> Box<Event> {
        let mut event = base_event(&self.context, header, Class::NetworkActivity, 4);
        let protocol = match raw.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        event.connection_info = Some(ConnectionInfo::new(None, Some(protocol)));
        event.set_status(false);
        event.status_code = Some(raw.failure_code.to_string());
        // The failure event names no endpoint; the writer's host is the source.
        event.src_endpoint = Some(NetworkEndpoint {
            hostname: self.context.hostname.clone(),
            name: Some("local".to_owned()),
            ..NetworkEndpoint::default()
        });
        event.actor = Some(writer_actor(header));
        event.add_unmapped("proto", Value::from(raw.proto));
        event
    }

    /// Maps a DNS client event, or returns `None` for a server configuration event.
    pub(super) fn dns(&mut self, header: &EventHeader, raw: &DnsEvent) -> Option<Box<Event>> {
        let activity = match raw.operation {
            DnsOperation::Query => 1,
            DnsOperation::QueryCompleted | DnsOperation::Response => 2,
            DnsOperation::ServerForInterface => return None,
        };
        let mut event = base_event(&self.context, header, Class::DnsActivity, activity);
        event.query = Some(DnsQuery {
            hostname: raw.query_name.clone().unwrap_or_default(),
            type_name: raw.query_type.map(dns_type_name),
        });
        event.src_endpoint = Some(NetworkEndpoint {
            hostname: self.context.hostname.clone(),
            name: Some("local".to_owned()),
            ..NetworkEndpoint::default()
        });
        if let Some(status) = raw.status {
            // The status is a Win32 error code: 0 succeeded, 9003 is NXDOMAIN.
            let (id, name) = match status {
                0 => (0, "NoError".to_owned()),
                9003 => (3, "NXDomain".to_owned()),
                other => (99, format!("Win32 error {other}")),
            };
            event.rcode_id = Some(id);
            event.rcode = Some(name);
            event.status_code = Some(status.to_string());
        }
        let answers: Vec<DnsAnswer> = raw.answers.iter().filter_map(|a| dns_answer(a)).collect();
        if !answers.is_empty() {
            event.answers = Some(answers);
        }
        event.actor = Some(writer_actor(header));
        add_optional(
            &mut event,
            "server_list",
            raw.server_list.clone().map(Value::from),
        );
        add_optional(
            &mut event,
            "interface_index",
            raw.interface_index.map(Value::from),
        );
        add_optional(
            &mut event,
            "query_options",
            raw.query_options.map(Value::from),
        );
        Some(event)
    }

    /// Collects a script block part; returns the Script Activity once every part arrived, and
    /// the oldest waiting block, truncated, when too many wait.
    pub(super) fn script_block(
        &mut self,
        header: &EventHeader,
        raw: ScriptBlockEvent,
    ) -> Vec<Box<Event>> {
        if raw.message_total <= 1 {
            let script = PendingScript {
                header: header.clone(),
                total: 1,
                parts: [(1, raw.script_block_text)].into_iter().collect(),
                path: raw.path,
                id: raw.script_block_id,
            };
            return vec![self.assemble_script(script, false)];
        }
        let mut ready = Vec::new();
        if !self.scripts.contains_key(&raw.script_block_id)
            && self.scripts.len() >= MAX_PENDING_SCRIPTS
        {
            // Emit the block whose first part is oldest, truncated, to bound memory.
            let oldest = self
                .scripts
                .iter()
                .min_by_key(|(_, script)| script.header.timestamp.0)
                .map(|(key, _)| key.clone());
            if let Some(script) = oldest.and_then(|key| self.scripts.remove(&key)) {
                self.stats.truncated_script_blocks += 1;
                ready.push(self.assemble_script(script, true));
            }
        }
        let pending = self
            .scripts
            .entry(raw.script_block_id.clone())
            .or_insert_with(|| PendingScript {
                header: header.clone(),
                total: raw.message_total,
                parts: Default::default(),
                path: raw.path.clone(),
                id: raw.script_block_id.clone(),
            });
        pending
            .parts
            .insert(raw.message_number, raw.script_block_text);
        let complete = pending.parts.len() >= usize::try_from(pending.total).unwrap_or(0);
        if complete && let Some(script) = self.scripts.remove(&raw.script_block_id) {
            ready.push(self.assemble_script(script, false));
        }
        ready
    }

    pub(super) fn assemble_script(&self, script: PendingScript, truncated: bool) -> Box<Event> {
        let PendingScript {
            header,
            total,
            parts,
            path,
            id,
        } = script;
        let missing: Vec<i32> = (1..=total).filter(|n| !parts.contains_key(n)).collect();
        let value: String = parts.into_values().collect();
        let mut event = base_event(&self.context, &header, Class::ScriptActivity, 1);
        let path = Some(path).filter(|p| !p.is_empty());
        event.script = Some(Script {
            script_content: LongString {
                value,
                is_truncated: truncated && !missing.is_empty(),
                untruncated_size: None,
            },
            type_id: 2,
            type_name: "PowerShell",
            uid: Some(id).filter(|id| !id.is_empty()),
            name: path.as_deref().map(|p| File::from_path(p).name),
            file: path.as_deref().map(File::from_path),
        });
        if total > 1 {
            event.add_unmapped("MessageTotal", Value::from(total));
        }
        if !missing.is_empty() {
            event.add_unmapped("MissingMessageNumbers", Value::from(missing));
        }
        event.actor = Some(writer_actor(&header));
        event
    }

    /// Maps PowerShell command invocation (4103) and pipeline execution (7937, whose context
    /// names the pipeline, command and host); other PowerShell events have no mapper.
    pub(super) fn powershell(
        &mut self,
        header: &EventHeader,
        raw: &PowerShellEvent,
    ) -> Option<Box<Event>> {
        if raw.event_id != 4103 && raw.event_id != 7937 {
            return None;
        }
        let mut event = base_event(&self.context, header, Class::ScriptActivity, 1);
        let script_name = raw.script_name.clone().filter(|s| !s.is_empty());
        event.script = Some(Script {
            script_content: LongString {
                value: raw.payload.clone().unwrap_or_default(),
                is_truncated: false,
                untruncated_size: None,
            },
            type_id: 2,
            type_name: "PowerShell",
            uid: None,
            name: script_name.as_deref().map(|p| File::from_path(p).name),
            file: script_name.as_deref().map(File::from_path),
        });
        let mut actor = writer_actor(header);
        actor.user = raw
            .user
            .as_deref()
            .and_then(|user| User::from_parts(None, Some(user), None));
        event.actor = Some(actor);
        add_optional(
            &mut event,
            "ContextInfo",
            raw.context_info.clone().map(Value::from),
        );
        add_optional(
            &mut event,
            "CommandName",
            raw.command_name.clone().map(Value::from),
        );
        add_optional(
            &mut event,
            "HostApplication",
            raw.host_application.clone().map(Value::from),
        );
        Some(event)
    }

    pub(super) fn amsi(&mut self, header: &EventHeader, raw: AmsiScanEvent) -> Box<Event> {
        let mut event = base_event(&self.context, header, Class::ScriptActivity, 1);
        let type_id = if raw.app_name.starts_with("PowerShell") {
            (2, "PowerShell")
        } else {
            (99, "Other")
        };
        let content_name = Some(raw.content_name.clone()).filter(|n| !n.is_empty());
        event.script = Some(Script {
            script_content: LongString {
                untruncated_size: raw.original_size.map(u64::from),
                is_truncated: matches!((raw.content_size, raw.original_size), (Some(c), Some(o)) if c < o),
                value: raw.content,
            },
            type_id: type_id.0,
            type_name: type_id.1,
            uid: None,
            name: content_name.clone(),
            file: None,
        });
        let detected = raw.scan_result.is_some_and(|r| r >= AMSI_RESULT_DETECTED);
        if detected {
            event.set_severity(Severity::High);
        }
        let mut actor = writer_actor(header);
        actor.app_name = Some(raw.app_name).filter(|a| !a.is_empty());
        event.actor = Some(actor);
        add_optional(&mut event, "scan_result", raw.scan_result.map(Value::from));
        add_optional(&mut event, "scan_status", raw.scan_status.map(Value::from));
        add_optional(
            &mut event,
            "session",
            raw.session.map(|s| Value::from(hex(s))),
        );
        add_optional(
            &mut event,
            "content_hash",
            raw.hash.map(|h| Value::from(hex_bytes(&h))),
        );
        add_optional(
            &mut event,
            "content_filtered",
            raw.content_filtered.map(Value::from),
        );
        event
    }
}

fn add_optional(event: &mut Event, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        event.add_unmapped(key, value);
    }
}

/// Stores `name` under `key`, clearing the map when it is full (the names are rebuilt from
/// later create and rundown events).
fn remember(map: &mut std::collections::HashMap<u64, String>, key: u64, name: &str) {
    if map.len() >= NAME_CACHE_CAPACITY && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, name.to_owned());
}

fn join_key(base: Option<&str>, relative: &str) -> String {
    match base.filter(|b| !b.is_empty()) {
        Some(base) if relative.is_empty() => base.to_owned(),
        Some(base) => format!("{}\\{}", base.trim_end_matches('\\'), relative),
        None => relative.to_owned(),
    }
}

fn endpoint((ip, port): (IpAddr, u16)) -> NetworkEndpoint {
    NetworkEndpoint {
        ip: Some(ip.to_string()),
        port: Some(port).filter(|p| *p != 0),
        ..NetworkEndpoint::default()
    }
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn reg_type_name(value_type: u32) -> Option<&'static str> {
    Some(match value_type {
        0 => "REG_NONE",
        1 => "REG_SZ",
        2 => "REG_EXPAND_SZ",
        3 => "REG_BINARY",
        4 => "REG_DWORD",
        5 => "REG_DWORD_BIG_ENDIAN",
        6 => "REG_LINK",
        7 => "REG_MULTI_SZ",
        11 => "REG_QWORD",
        _ => return None,
    })
}

fn dns_type_name(query_type: u32) -> String {
    match query_type {
        1 => "A".to_owned(),
        2 => "NS".to_owned(),
        5 => "CNAME".to_owned(),
        6 => "SOA".to_owned(),
        12 => "PTR".to_owned(),
        15 => "MX".to_owned(),
        16 => "TXT".to_owned(),
        28 => "AAAA".to_owned(),
        33 => "SRV".to_owned(),
        65 => "HTTPS".to_owned(),
        other => other.to_string(),
    }
}

/// Parses one recorded answer: `type:  5 name` for a record of another type, else an address
/// (IPv4 answers are written as `::ffff:a.b.c.d`).
fn dns_answer(answer: &str) -> Option<DnsAnswer> {
    let answer = answer.trim();
    if answer.is_empty() {
        return None;
    }
    if let Some(rest) = answer.strip_prefix("type:") {
        let rest = rest.trim_start();
        let (code, data) = rest.split_once(' ').unwrap_or((rest, ""));
        let type_name = code.parse::<u32>().ok().map(dns_type_name);
        return Some(DnsAnswer {
            rdata: data.trim().to_owned(),
            type_name,
        });
    }
    let address = answer.strip_prefix("::ffff:").unwrap_or(answer);
    let type_name = match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => Some("A".to_owned()),
        Ok(IpAddr::V6(_)) => Some("AAAA".to_owned()),
        Err(_) => None,
    };
    Some(DnsAnswer {
        rdata: address.to_owned(),
        type_name,
    })
}

/// Time within which two providers' reports of one process start or exit are taken as the
/// same event. The NT Kernel Logger stamps a start with its event time and
/// Microsoft-Windows-Kernel-Process with the process's create time, which a helper's trace
/// showed 12 ms apart.
const SAME_REPORT_MS: i64 = 1_000;

/// Returns whether `raw`, a start at `start`, reports the start of `cached` again: the same
/// pid (the caller looked it up), a start within [`SAME_REPORT_MS`], the same parent and the
/// same image file name.
fn is_same_start(cached: &ProcessInfo, raw: &ProcessEvent, start: i64) -> bool {
    let file_name = |path: &str| {
        path.rsplit(['\\', '/'])
            .next()
            .unwrap_or(path)
            .to_ascii_lowercase()
    };
    cached
        .start_time
        .is_some_and(|s| (s - start).abs() <= SAME_REPORT_MS)
        && cached.parent_pid == raw.parent_process_id
        && cached
            .image
            .as_deref()
            .is_some_and(|image| file_name(image) == file_name(&raw.image_name))
}
