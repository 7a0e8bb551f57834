//! Sysmon (`Microsoft-Windows-Sysmon/Operational`) records to OCSF.
//!
//! `process.uid` is Sysmon's `ProcessGuid`. Process creations (event 1) fill the process cache
//! so that later events of the same process carry its command line, user and parent.

use edr_ocsf::model::{
    Actor, ConnectionInfo, DnsAnswer, DnsQuery, File, FileProduct, Job, KernelDriver, Module,
    NetworkEndpoint, Process, RegKey, RegValue, Signature,
};
use edr_ocsf::process_cache::ProcessInfo;
use edr_ocsf::{Class, Event};
use serde_json::Value;

use super::{parse_hashes, parse_utc_time, process_from, user_from_account};
use crate::convert::{Converter, base_event, keep_remaining};
use crate::record::Record;

/// Maps one Sysmon record, or returns `None` for an event id without a mapper.
pub(crate) fn map(converter: &mut Converter, record: &mut Record) -> Option<Box<Event>> {
    let mut event = match record.event_id {
        1 => process_create(converter, record),
        2 => file_event(converter, record, 6),
        3 => network_connect(converter, record),
        5 => process_terminate(converter, record),
        6 => driver_load(record),
        7 => image_load(converter, record),
        8 => remote_thread(converter, record),
        10 => process_access(converter, record),
        11 | 15 => file_event(converter, record, 1),
        12..=14 => registry_event(converter, record),
        17 | 18 => pipe_event(converter, record),
        19..=21 => wmi_event(record),
        22 => dns_query(converter, record),
        23 | 26 => file_event(converter, record, 4),
        25 => process_tampering(converter, record),
        _ => return None,
    };
    keep_remaining(record, &mut event);
    Some(event)
}

/// The process a record is about, from `<prefix>ProcessGuid`, `<prefix>ProcessId` and
/// `<prefix>Image`, enriched from the cache.
fn take_process(converter: &Converter, record: &mut Record, prefix: &str) -> Process {
    let guid = take_guid(record, &format!("{prefix}ProcessGuid"))
        .or_else(|| take_guid(record, &format!("{prefix}ProcessGUID")));
    let pid = record.take_u32(&format!("{prefix}ProcessId"));
    let image = record.take_str(&format!("{prefix}Image"));
    if let Some(guid) = &guid
        && let Some(info) = converter.processes.lookup_uid(guid)
    {
        let mut process = converter.processes.with_parent(info);
        if process.path.is_none() && image.is_some() {
            process = Process {
                uid: process.uid.clone(),
                ..process_from(pid, image)
            };
        }
        return process;
    }
    let mut process = process_from(pid, image);
    process.uid = guid;
    process
}

/// Removes the GUID field `name` and returns it. The all-zero GUID, which Sysmon writes for a
/// process it has no record of, stays in the record and ends under `unmapped`: as a uid it
/// would join unrelated processes into one.
fn take_guid(record: &mut Record, name: &str) -> Option<String> {
    let zero = record.peek_str(name).is_some_and(|guid| {
        guid.trim_matches(['{', '}']) == "00000000-0000-0000-0000-000000000000"
    });
    if zero { None } else { record.take_str(name) }
}

fn actor_of(process: Process) -> Actor {
    Actor {
        process: Some(process),
        ..Actor::default()
    }
}

/// Fills the PE version fields that Sysmon copies from the image's resources.
fn take_version_info(record: &mut Record, file: &mut File) {
    file.version = record.take_str("FileVersion");
    file.desc = record.take_str("Description");
    file.product = record.take_str("Product").map(|name| FileProduct { name });
    file.company_name = record.take_str("Company");
    if let Some(hashes) = record
        .take_str("Hashes")
        .or_else(|| record.take_str("Hash"))
    {
        file.hashes = parse_hashes(&hashes);
    }
}

fn process_create(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::ProcessActivity, 1);
    let created = record
        .take_str("UtcTime")
        .as_deref()
        .and_then(parse_utc_time);
    let uid = take_guid(record, "ProcessGuid");
    let pid = record.take_u32("ProcessId");
    let image = record.take_str("Image");
    let cmd_line = record.take_str("CommandLine");
    let user = user_from_account(record.take_str("User"));
    let parent_uid = take_guid(record, "ParentProcessGuid");
    let parent_pid = record.take_u32("ParentProcessId");
    let parent_image = record.take_str("ParentImage");
    let parent_cmd_line = record.take_str("ParentCommandLine");
    let parent_user = user_from_account(record.take_str("ParentUser"));

    let info = ProcessInfo {
        pid: pid.unwrap_or(0),
        uid: uid.clone().unwrap_or_default(),
        image: image.clone(),
        cmd_line: cmd_line.clone(),
        user: user.clone(),
        parent_pid,
        parent_uid: parent_uid.clone(),
        start_time: created.or(Some(record.time_ms)),
        exit_time: None,
    };
    // The parent as the record states it wins over what the cache remembers.
    let parent = Process {
        uid: parent_uid,
        cmd_line: parent_cmd_line,
        user: parent_user.or_else(|| {
            info.parent_uid
                .as_deref()
                .and_then(|uid| converter.processes.lookup_uid(uid))
                .and_then(|p| p.user.clone())
        }),
        ..process_from(parent_pid, parent_image)
    };
    let mut process = info.to_process();
    process.uid = uid;
    process.parent_process = Some(Box::new(parent.clone()));
    process.working_directory = record.take_str("CurrentDirectory");
    if let Some(level) = record.take_str("IntegrityLevel") {
        process.set_integrity(&level);
    }
    if let Some(file) = process.file.as_mut() {
        take_version_info(record, file);
    }
    if let Some(logon_id) = record.take_str("LogonId") {
        process.session = Some(edr_ocsf::model::Session {
            uid: Some(logon_id),
            uuid: record
                .take_str("LogonGuid")
                .map(|g| g.trim_matches(['{', '}']).to_owned()),
            ..edr_ocsf::model::Session::default()
        });
    }
    if info.uid.is_empty() {
        process.uid = None;
    } else {
        converter.processes.insert(info);
    }

    event.actor = Some(actor_of(parent));
    event.process = Some(process);
    event
}

fn process_terminate(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::ProcessActivity, 2);
    let time = record
        .take_str("UtcTime")
        .as_deref()
        .and_then(parse_utc_time);
    let mut process = take_process(converter, record, "");
    if let Some(pid) = process.pid {
        converter
            .processes
            .exit(pid, time.unwrap_or(record.time_ms));
    }
    process.terminated_time = time;
    if let Some(user) = user_from_account(record.take_str("User")) {
        process.user = Some(user);
    }
    event.actor = Some(actor_of(process.clone()));
    event.process = Some(process);
    event
}

fn file_event(converter: &mut Converter, record: &mut Record, activity: u8) -> Box<Event> {
    let mut event = base_event(record, Class::FileSystemActivity, activity);
    let process = take_process(converter, record, "");
    let mut file = File::from_path(&record.take_str("TargetFilename").unwrap_or_default());
    file.created_time = record
        .take_str("CreationUtcTime")
        .as_deref()
        .and_then(parse_utc_time);
    take_version_info(record, &mut file);
    if activity == 4 {
        file.is_deleted = true;
    }
    // Sysmon 2: the creation time the process replaced stays beside the new one.
    if let Some(previous) = record.take_str("PreviousCreationUtcTime") {
        event.add_unmapped("PreviousCreationUtcTime", Value::String(previous));
    }
    let user = user_from_account(record.take_str("User"));
    event.actor = Some(Actor {
        user,
        ..actor_of(process)
    });
    event.file = Some(file);
    event
}

fn pipe_event(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    // 17 creates a named pipe, 18 connects to one (an open).
    let activity = if record.event_id == 17 { 1 } else { 14 };
    let mut event = base_event(record, Class::FileSystemActivity, activity);
    let process = take_process(converter, record, "");
    let name = record.take_str("PipeName").unwrap_or_default();
    let mut file = File::from_path(&format!(r"\\.\pipe{name}"));
    file.type_id = 6;
    file.type_name = "Named Pipe";
    let user = user_from_account(record.take_str("User"));
    event.actor = Some(Actor {
        user,
        ..actor_of(process)
    });
    event.file = Some(file);
    event
}

fn network_connect(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::NetworkActivity, 1);
    let mut process = take_process(converter, record, "");
    if let Some(user) = user_from_account(record.take_str("User")) {
        process.user = Some(user);
    }
    let protocol = record.take_str("Protocol");
    let initiated = record.take_bool("Initiated");
    let endpoint = |record: &mut Record, side: &str| {
        let ip = record.take_str(&format!("{side}Ip"));
        let port = record
            .take_u64(&format!("{side}Port"))
            .and_then(|p| u16::try_from(p).ok());
        let hostname = record.take_str(&format!("{side}Hostname"));
        let svc_name = record.take_str(&format!("{side}PortName"));
        record.fields.remove(&format!("{side}IsIpv6"));
        let mut endpoint = NetworkEndpoint::from_parts(ip.as_deref(), port).unwrap_or_default();
        endpoint.hostname = hostname;
        endpoint.svc_name = svc_name;
        let known = endpoint.ip.is_some() || endpoint.name.is_some() || endpoint.hostname.is_some();
        known.then_some(endpoint)
    };
    event.src_endpoint = endpoint(record, "Source");
    event.dst_endpoint = endpoint(record, "Destination");
    if event.src_endpoint.is_none() && event.dst_endpoint.is_none() && !record.computer.is_empty() {
        event.src_endpoint = Some(NetworkEndpoint {
            hostname: Some(record.computer.clone()),
            ..NetworkEndpoint::default()
        });
    }
    event.connection_info = Some(ConnectionInfo::new(initiated, protocol.as_deref()));
    event.actor = Some(actor_of(process));
    event
}

fn driver_load(record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::KernelExtensionActivity, 1);
    let mut file = File::from_path(&record.take_str("ImageLoaded").unwrap_or_default());
    take_version_info(record, &mut file);
    file.signature = take_signature(record);
    event.driver = Some(KernelDriver { file });
    // The kernel loads drivers; Sysmon names no process.
    event.actor = Some(actor_of(Process {
        pid: Some(4),
        name: Some("System".to_owned()),
        ..Process::default()
    }));
    event
}

fn take_signature(record: &mut Record) -> Option<Signature> {
    let signed = record.take_bool("Signed");
    let signer = record.take_str("Signature");
    let status = record.take_str("SignatureStatus");
    if signed != Some(true) {
        if let Some(status) = status {
            record
                .fields
                .insert("SignatureStatus", crate::record::FieldValue::Str(status));
        }
        return None;
    }
    let (state_id, state) = match status.as_deref() {
        Some("Valid") => (1, "Valid".to_owned()),
        Some("Expired") => (2, "Expired".to_owned()),
        Some("Revoked") => (3, "Revoked".to_owned()),
        Some(other) => (99, other.to_owned()),
        None => (0, "Unknown".to_owned()),
    };
    Some(Signature {
        algorithm_id: 0,
        algorithm: "Unknown",
        certificate: signer.map(|subject| edr_ocsf::model::Certificate {
            subject,
            serial_number: String::new(),
            issuer: String::new(),
        }),
        state_id: Some(state_id),
        state: Some(state),
    })
}

fn image_load(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::ModuleActivity, 1);
    let process = take_process(converter, record, "");
    let mut file = File::from_path(&record.take_str("ImageLoaded").unwrap_or_default());
    take_version_info(record, &mut file);
    file.signature = take_signature(record);
    if let Some(original) = record.take_str("OriginalFileName") {
        event.add_unmapped("OriginalFileName", Value::String(original));
    }
    let user = user_from_account(record.take_str("User"));
    event.actor = Some(Actor {
        user,
        ..actor_of(process)
    });
    event.module = Some(Module {
        file: Some(file),
        load_type_id: 0,
        load_type: "Unknown".to_owned(),
        ..Module::default()
    });
    event
}

fn remote_thread(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::ProcessActivity, 4);
    let source = take_process(converter, record, "Source");
    let mut target = take_process(converter, record, "Target");
    target.tid = record.take_u32("NewThreadId");
    event.injection_type_id = Some(1);
    event.injection_type = Some("Remote Thread".to_owned());
    if let Some(user) = user_from_account(record.take_str("SourceUser")) {
        event.actor = Some(Actor {
            user: Some(user),
            ..actor_of(source)
        });
    } else {
        event.actor = Some(actor_of(source));
    }
    if let Some(user) = user_from_account(record.take_str("TargetUser")) {
        target.user = Some(user);
    }
    event.process = Some(target);
    event
}

fn process_access(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::ProcessActivity, 3);
    let mut source = take_process(converter, record, "Source");
    source.tid = record.take_u32("SourceThreadId");
    let mut target = take_process(converter, record, "Target");
    if let Some(user) = user_from_account(record.take_str("TargetUser")) {
        target.user = Some(user);
    }
    let user = user_from_account(record.take_str("SourceUser"));
    event.requested_permissions = record
        .take_u64("GrantedAccess")
        .and_then(|mask| i64::try_from(mask).ok());
    event.actor = Some(Actor {
        user,
        ..actor_of(source)
    });
    event.process = Some(target);
    event
}

fn process_tampering(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::ProcessActivity, 99);
    let kind = record
        .take_str("Type")
        .unwrap_or_else(|| "Process Tampering".to_owned());
    event.set_activity_other(&format!("Tampering: {kind}"));
    let mut process = take_process(converter, record, "");
    if let Some(user) = user_from_account(record.take_str("User")) {
        process.user = Some(user);
    }
    event.actor = Some(actor_of(process.clone()));
    event.process = Some(process);
    event
}

fn registry_event(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let event_type = record.take_str("EventType").unwrap_or_default();
    let target = record.take_str("TargetObject").unwrap_or_default();
    let process = take_process(converter, record, "");
    let user = user_from_account(record.take_str("User"));
    let actor = Actor {
        user,
        ..actor_of(process)
    };

    let mut event = match (record.event_id, event_type.as_str()) {
        (13, _) | (12, "DeleteValue") => {
            let activity = if record.event_id == 13 { 2 } else { 4 };
            let mut event = base_event(record, Class::RegistryValueActivity, activity);
            let (key, name) = target.rsplit_once('\\').unwrap_or(("", target.as_str()));
            let mut value = RegValue {
                path: key.to_owned(),
                name: name.to_owned(),
                is_default: Some(name == "(Default)"),
                ..RegValue::default()
            };
            if let Some(details) = record.take_str("Details") {
                set_value_data(&mut value, details);
            }
            event.reg_value = Some(value);
            event
        }
        (14, _) => {
            let mut event = base_event(record, Class::RegistryKeyActivity, 5);
            event.prev_reg_key = Some(RegKey {
                path: target.clone(),
            });
            event.reg_key = Some(RegKey {
                path: record.take_str("NewName").unwrap_or(target),
            });
            event
        }
        (_, kind) => {
            let activity = if kind == "DeleteKey" { 4 } else { 1 };
            let mut event = base_event(record, Class::RegistryKeyActivity, activity);
            event.reg_key = Some(RegKey { path: target });
            event
        }
    };
    event.actor = Some(actor);
    event
}

/// Reads Sysmon's `Details` text (`DWORD (0x00000001)`, `QWORD (0x...-0x...)`, `Binary Data`
/// or the string itself) into the typed registry value fields.
fn set_value_data(value: &mut RegValue, details: String) {
    let hex = |text: &str| {
        let digits: String = text.chars().filter(char::is_ascii_hexdigit).collect();
        i64::from_str_radix(&digits, 16).ok()
    };
    if let Some(rest) = details.strip_prefix("DWORD (0x") {
        value.set_type("REG_DWORD");
        value.reg_integer_data = hex(rest.trim_end_matches(')'));
    } else if let Some(rest) = details.strip_prefix("QWORD (0x") {
        value.set_type("REG_QWORD");
        value.reg_integer_data = hex(rest.trim_end_matches(')'));
    } else if details == "Binary Data" {
        value.set_type("REG_BINARY");
    } else {
        value.reg_string_data = Some(details.clone());
    }
    value.data = Some(Value::String(details));
}

fn wmi_event(record: &mut Record) -> Box<Event> {
    // A permanent WMI event subscription runs code when its filter fires: a triggered job.
    let operation = record.take_str("Operation").unwrap_or_default();
    let activity = match operation.as_str() {
        "Created" => 1,
        "Deleted" => 3,
        _ => 2,
    };
    let mut event = base_event(record, Class::ScheduledJobActivity, activity);
    let unquote = |text: String| text.trim().trim_matches('"').to_owned();
    let user = user_from_account(record.take_str("User"));
    let job = match record.event_id {
        19 => Job {
            name: record.take_str("Name").map(unquote).unwrap_or_default(),
            desc: record.take_str("Query").map(unquote),
            ..Job::default()
        },
        20 => Job {
            name: record.take_str("Name").map(unquote).unwrap_or_default(),
            cmd_line: record.take_str("Destination").map(unquote),
            desc: record.take_str("Type"),
            ..Job::default()
        },
        _ => Job {
            name: record.take_str("Consumer").map(unquote).unwrap_or_default(),
            desc: record.take_str("Filter").map(unquote),
            ..Job::default()
        },
    };
    event.job = Some(Job {
        user: user.clone(),
        ..job
    });
    event.actor = Some(Actor {
        user,
        ..crate::convert::writer_actor(record)
    });
    event
}

fn dns_query(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::DnsActivity, 1);
    let mut process = take_process(converter, record, "");
    if let Some(user) = user_from_account(record.take_str("User")) {
        process.user = Some(user);
    }
    // The querying host is the source; Sysmon does not log the DNS server.
    event.src_endpoint = (!record.computer.is_empty()).then(|| NetworkEndpoint {
        hostname: Some(record.computer.clone()),
        ..NetworkEndpoint::default()
    });
    event.query = Some(DnsQuery {
        hostname: record.take_str("QueryName").unwrap_or_default(),
        type_name: None,
    });
    let status = record.take_u32("QueryStatus");
    if let Some(status) = status {
        // QueryStatus is a Win32 error code: 0 succeeded, 9003 (DNS_ERROR_RCODE_NAME_ERROR) is NXDOMAIN.
        let (id, name) = match status {
            0 => (0, "NoError".to_owned()),
            9003 => (3, "NXDomain".to_owned()),
            other => (99, format!("Win32 error {other}")),
        };
        event.rcode_id = Some(id);
        event.rcode = Some(name);
        event.status_code = Some(status.to_string());
    }
    if let Some(results) = record.take_str("QueryResults") {
        let answers = parse_query_results(&results);
        if !answers.is_empty() {
            event.answers = Some(answers);
        }
    }
    event.actor = Some(actor_of(process));
    event
}

/// Parses Sysmon's `QueryResults` (`type:  5 name;::ffff:10.0.0.1;`) into answers.
fn parse_query_results(results: &str) -> Vec<DnsAnswer> {
    results
        .split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| match part.strip_prefix("type:") {
            Some(rest) => {
                let rest = rest.trim_start();
                let (code, data) = rest.split_once(' ').unwrap_or((rest, ""));
                let type_name = match code {
                    "5" => "CNAME".to_owned(),
                    "12" => "PTR".to_owned(),
                    "15" => "MX".to_owned(),
                    "16" => "TXT".to_owned(),
                    "33" => "SRV".to_owned(),
                    other => format!("TYPE{other}"),
                };
                DnsAnswer {
                    rdata: data.trim().to_owned(),
                    type_name: Some(type_name),
                }
            }
            None => {
                let address = part.strip_prefix("::ffff:").unwrap_or(part);
                let type_name = if address.contains(':') { "AAAA" } else { "A" };
                DnsAnswer {
                    rdata: address.to_owned(),
                    type_name: Some(type_name.to_owned()),
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_results_parse() {
        let answers = parse_query_results("type:  5 a.example.org;::ffff:10.0.0.1;fe80::1;");
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0].type_name.as_deref(), Some("CNAME"));
        assert_eq!(answers[0].rdata, "a.example.org");
        assert_eq!(answers[1].rdata, "10.0.0.1");
        assert_eq!(answers[2].type_name.as_deref(), Some("AAAA"));
    }

    #[test]
    fn registry_details_parse() {
        let mut value = RegValue::default();
        set_value_data(&mut value, "DWORD (0x00000001)".to_owned());
        assert_eq!(value.type_id, Some(2));
        assert_eq!(value.reg_integer_data, Some(1));
        let mut value = RegValue::default();
        set_value_data(&mut value, "C:\\x.dll".to_owned());
        assert_eq!(value.reg_string_data.as_deref(), Some("C:\\x.dll"));
    }
}
