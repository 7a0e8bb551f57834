//! Windows Security auditing (`Security` channel) records to OCSF.
//!
//! Security records have no process GUID: process creations (4688) go into the process cache
//! under a uid derived from the host, pid and record time, and exits (4689) close them.

use edr_ocsf::model::{
    Actor, AuthenticationToken, ConnectionInfo, EncryptionDetails, File, Group, Job,
    NetworkEndpoint, Process, Service, Session, User, WinService,
};
use edr_ocsf::process_cache::{ProcessInfo, derive_process_uid};
use edr_ocsf::{Class, Event};
use serde_json::Value;

use super::process_from;
use crate::convert::{Converter, base_event, keep_remaining, writer_actor};
use crate::record::Record;

/// Maps one Security record, or returns `None` for an event id without a mapper.
pub(crate) fn map(converter: &mut Converter, record: &mut Record) -> Option<Box<Event>> {
    let mut event = match record.event_id {
        4624 | 4625 => logon(converter, record),
        4634 | 4647 => logoff(record),
        4648 => explicit_logon(converter, record),
        4672 => special_privileges(record),
        4776 => credential_validation(record),
        4688 => process_create(converter, record),
        4689 => process_exit(converter, record),
        4697 => service_install(converter, record),
        4698 | 4699 | 4702 => scheduled_task(record),
        4720 | 4722 | 4724 | 4726 | 4738 | 4740 => account_change(record),
        4728 | 4732 => group_member_added(record),
        1102 => log_cleared(record),
        5140 | 5145 => share_access(record),
        4768..=4771 => kerberos(record),
        5156 | 5157 => filtering_connection(converter, record),
        5154 | 5155 | 5158 | 5159 => filtering_port(converter, record),
        _ => return None,
    };
    keep_remaining(record, &mut event);
    Some(event)
}

/// `<prefix>UserName`, `<prefix>DomainName` and `<prefix>UserSid` (or `<prefix>Sid`) as a user.
fn take_user(record: &mut Record, prefix: &str) -> Option<User> {
    // One key buffer for the four names: this runs for most Security records.
    let mut key = String::with_capacity(prefix.len() + "DomainName".len());
    let mut take = |suffix: &str| {
        key.clear();
        key.push_str(prefix);
        key.push_str(suffix);
        record.take_str(&key)
    };
    let name = take("UserName");
    let domain = take("DomainName");
    let sid = take("UserSid").or_else(|| take("Sid"));
    User::from_parts(domain.as_deref(), name.as_deref(), sid.as_deref())
}

/// Takes the subject (who acted) with its logon session as the actor.
fn take_subject(record: &mut Record) -> Actor {
    let user = take_user(record, "Subject");
    let session = record.take_str("SubjectLogonId").map(|uid| Session {
        uid: Some(uid),
        ..Session::default()
    });
    let actor = Actor {
        user,
        session,
        ..Actor::default()
    };
    if actor.user.is_none() && actor.session.is_none() {
        writer_actor(record)
    } else {
        actor
    }
}

/// Takes the process that `ProcessId`/`ProcessName` name, enriched from the cache.
fn take_caller(
    converter: &Converter,
    record: &mut Record,
    pid_field: &str,
    name_field: &str,
) -> Option<Process> {
    let pid = record.take_u32(pid_field).filter(|pid| *pid != 0);
    let image = record.take_str(name_field);
    converter.process_by_pid(pid, image, record.time_ms)
}

fn logon_type_name(logon_type: u32) -> Option<&'static str> {
    Some(match logon_type {
        // Windows logs type 0 only for the System account; OCSF calls that id 1.
        0 => "System",
        2 => "Interactive",
        3 => "Network",
        4 => "Batch",
        5 => "OS Service",
        7 => "Unlock",
        8 => "Network Cleartext",
        9 => "New Credentials",
        10 => "Remote Interactive",
        11 => "Cached Interactive",
        12 => "Cached Remote Interactive",
        13 => "Cached Unlock",
        _ => return None,
    })
}

fn set_logon_type(event: &mut Event, record: &mut Record) {
    let Some(logon_type) = record.take_u32("LogonType") else {
        return;
    };
    match logon_type_name(logon_type) {
        Some(name) => {
            event.logon_type_id = u8::try_from(logon_type.max(1)).ok();
            event.logon_type = Some(name.to_owned());
        }
        None => {
            event.logon_type_id = Some(99);
            event.logon_type = Some(format!("Logon type {logon_type}"));
        }
    }
    event.is_remote = Some(matches!(logon_type, 3 | 8 | 10 | 12));
}

fn set_auth_protocol(event: &mut Event, package: Option<String>) {
    let Some(package) = package else { return };
    let (id, name) = match package.to_ascii_uppercase().as_str() {
        "NTLM" | "MICROSOFT_AUTHENTICATION_PACKAGE_V1_0" => (1, "NTLM".to_owned()),
        "KERBEROS" => (2, "Kerberos".to_owned()),
        _ => (99, package),
    };
    event.auth_protocol_id = Some(id);
    event.auth_protocol = Some(name);
}

fn take_src_endpoint(record: &mut Record) -> Option<NetworkEndpoint> {
    let address = record.take_str("IpAddress");
    let port = record
        .take_u64("IpPort")
        .and_then(|p| u16::try_from(p).ok());
    let workstation = record.take_str("WorkstationName");
    let mut endpoint = NetworkEndpoint::from_parts(address.as_deref(), port);
    if let Some(workstation) = workstation {
        let endpoint = endpoint.get_or_insert_with(NetworkEndpoint::default);
        endpoint.hostname = Some(workstation);
    }
    endpoint
}

fn logon(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let success = record.event_id == 4624;
    let mut event = base_event(record, Class::Authentication, 1);
    event.set_status(success);
    if !success {
        event.status_code = record.take_str("Status");
        event.status_detail = record
            .take_str("SubStatus")
            .filter(|s| s != "0x0")
            .or_else(|| record.take_str("FailureReason"));
    }
    let mut actor = take_subject(record);
    actor.process = take_caller(converter, record, "ProcessId", "ProcessName");
    event.actor = Some(actor);
    event.user = take_user(record, "Target").or_else(null_user);
    if let Some(logon_id) = record.take_str("TargetLogonId") {
        event.session = Some(Session {
            uid: Some(logon_id),
            uuid: record
                .take_str("LogonGuid")
                .map(|g| g.trim_matches(['{', '}']).to_owned())
                .filter(|g| g != "00000000-0000-0000-0000-000000000000"),
            ..Session::default()
        });
    }
    set_logon_type(&mut event, record);
    if let Some(session) = event.session.as_mut() {
        session.is_remote = event.is_remote;
    }
    set_auth_protocol(&mut event, record.take_str("AuthenticationPackageName"));
    event.src_endpoint = take_src_endpoint(record);
    event.dst_endpoint = local_endpoint(record);
    event
}

/// Returns the host that wrote the record, as the endpoint a logon targeted.
fn local_endpoint(record: &Record) -> Option<NetworkEndpoint> {
    (!record.computer.is_empty()).then(|| NetworkEndpoint {
        hostname: Some(record.computer.clone()),
        ..NetworkEndpoint::default()
    })
}

/// Returns the user for empty account fields: the NULL SID, which Windows logs there.
fn null_user() -> Option<User> {
    Some(User {
        uid: Some("S-1-0-0".to_owned()),
        ..User::default()
    })
}

fn logoff(record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::Authentication, 2);
    event.user = take_user(record, "Target").or_else(null_user);
    event.session = record.take_str("TargetLogonId").map(|uid| Session {
        uid: Some(uid),
        ..Session::default()
    });
    set_logon_type(&mut event, record);
    event.dst_endpoint = local_endpoint(record);
    event.actor = Some(writer_actor(record));
    event
}

fn explicit_logon(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::Authentication, 1);
    let mut actor = take_subject(record);
    actor.process = take_caller(converter, record, "ProcessId", "ProcessName");
    event.actor = Some(actor);
    event.user = take_user(record, "Target").or_else(null_user);
    event.dst_endpoint = record
        .take_str("TargetServerName")
        .map(|name| NetworkEndpoint {
            hostname: Some(name),
            ..NetworkEndpoint::default()
        })
        .or_else(|| local_endpoint(record));
    event.src_endpoint = take_src_endpoint(record);
    event.message = Some("A logon was attempted using explicit credentials".to_owned());
    event
}

fn special_privileges(record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::Authentication, 99);
    event.set_activity_other("Special Privileges Assigned");
    let actor = take_subject(record);
    event.session = actor.session.clone();
    let mut user = actor.user.clone().or_else(null_user).unwrap_or_default();
    let privileges: Vec<String> = record
        .take_str("PrivilegeList")
        .map(|list| list.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    if !privileges.is_empty() {
        user.groups = Some(vec![Group {
            name: Some("Special privileges".to_owned()),
            privileges: Some(privileges),
            ..Group::default()
        }]);
    }
    event.user = Some(user);
    event.dst_endpoint = local_endpoint(record);
    event
}

fn credential_validation(record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::Authentication, 99);
    event.set_activity_other("Credential Validation");
    let status = record.take_str("Status");
    event.set_status(status.as_deref().is_none_or(|s| s == "0x0"));
    event.status_code = status;
    set_auth_protocol(&mut event, record.take_str("PackageName"));
    event.user = take_user(record, "Target").or_else(null_user);
    event.src_endpoint = record.take_str("Workstation").map(|name| NetworkEndpoint {
        hostname: Some(name),
        ..NetworkEndpoint::default()
    });
    event.dst_endpoint = local_endpoint(record);
    event.actor = Some(writer_actor(record));
    event
}

fn process_create(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::ProcessActivity, 1);
    let mut actor = take_subject(record);
    let pid = record.take_u32("NewProcessId");
    let image = record.take_str("NewProcessName");
    let parent_pid = record.take_u32("ProcessId");
    let parent_image = record.take_str("ParentProcessName");
    let cmd_line = record.take_str("CommandLine");
    // Version 2 names the new process's user; older versions run it as the subject.
    let user = take_user(record, "Target").or_else(|| actor.user.clone());

    let host = record.computer.clone();
    let parent = converter
        .process_by_pid(parent_pid, parent_image, record.time_ms)
        .unwrap_or_default();
    let info = ProcessInfo {
        pid: pid.unwrap_or(0),
        uid: derive_process_uid(&host, pid.unwrap_or(0), record.time_ms),
        image,
        cmd_line,
        user,
        parent_pid,
        parent_uid: parent.uid.clone(),
        start_time: Some(record.time_ms),
        exit_time: None,
    };
    let mut process = info.to_process();
    process.parent_process = Some(Box::new(parent.clone()));
    if let Some(label) = record.take_str("MandatoryLabel") {
        let level = match label.as_str() {
            "S-1-16-0" => "Untrusted",
            "S-1-16-4096" => "Low",
            "S-1-16-8192" | "S-1-16-8448" => "Medium",
            "S-1-16-12288" => "High",
            "S-1-16-16384" => "System",
            "S-1-16-20480" => "Protected",
            other => other,
        };
        process.set_integrity(level);
    }
    converter.processes.insert(info);
    actor.process = Some(parent);
    event.actor = Some(actor);
    event.process = Some(process);
    event
}

fn process_exit(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::ProcessActivity, 2);
    let mut actor = take_subject(record);
    let pid = record.take_u32("ProcessId");
    let image = record.take_str("ProcessName");
    let mut process = converter
        .process_by_pid(pid, image, record.time_ms)
        .unwrap_or_else(|| process_from(pid, None));
    if let Some(pid) = pid {
        converter.processes.exit(pid, record.time_ms);
    }
    process.terminated_time = Some(record.time_ms);
    // The exit status is an NTSTATUS or exit code, written as unsigned hex.
    event.exit_code = record
        .take_u64("Status")
        .and_then(|code| u32::try_from(code).ok())
        .map(|code| code as i32);
    actor.process = Some(process.clone());
    event.actor = Some(actor);
    event.process = Some(process);
    event
}

fn service_install(converter: &mut Converter, record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::WindowsServiceActivity, 1);
    let mut actor = take_subject(record);
    actor.process = converter.process_by_pid(record.execution_pid, None, record.time_ms);
    event.actor = Some(actor);
    let mut service = WinService {
        name: record.take_str("ServiceName").unwrap_or_default(),
        cmd_line: record.take_str("ServiceFileName"),
        service_start_name: record.take_str("ServiceAccount"),
        ..WinService::default()
    };
    if let Some(kind) = record.take_str("ServiceType") {
        service.set_service_type(&kind);
    }
    if let Some(start) = record.take_str("ServiceStartType") {
        service.set_start_type(&start);
    }
    event.win_service = Some(service);
    event
}

fn scheduled_task(record: &mut Record) -> Box<Event> {
    let activity = match record.event_id {
        4698 => 1,
        4699 => 3,
        _ => 2,
    };
    let mut event = base_event(record, Class::ScheduledJobActivity, activity);
    event.actor = Some(take_subject(record));
    let name = record.take_str("TaskName").unwrap_or_default();
    let content = record
        .take_str("TaskContent")
        .or_else(|| record.take_str("TaskContentNew"));
    let mut job = Job {
        name,
        ..Job::default()
    };
    if let Some(xml) = &content {
        let command = xml_element(xml, "Command");
        let arguments = xml_element(xml, "Arguments");
        job.cmd_line = match (command, arguments) {
            (Some(command), Some(arguments)) => Some(format!("{command} {arguments}")),
            (command, _) => command.map(str::to_owned),
        };
        job.desc = xml_element(xml, "Description").map(str::to_owned);
        job.user = xml_element(xml, "UserId").and_then(|id| {
            if id.starts_with("S-1-") {
                User::from_parts(None, None, Some(id))
            } else {
                User::from_parts(None, Some(id), None)
            }
        });
        event.add_unmapped("TaskContent", Value::String(xml.clone()));
    }
    event.job = Some(job);
    event
}

/// Returns the text of the first `<name>` element in task XML, which is enough for the flat
/// task schema.
fn xml_element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    let text = xml[start..end].trim();
    (!text.is_empty()).then_some(text)
}

fn account_change(record: &mut Record) -> Box<Event> {
    let activity = match record.event_id {
        4720 => 1,
        4722 => 2,
        4724 => 4,
        4726 => 6,
        4740 => 9,
        _ => 99,
    };
    let mut event = base_event(record, Class::AccountChange, activity);
    if record.event_id == 4738 {
        event.set_activity_other("Account Changed");
    }
    event.actor = Some(take_subject(record));
    // 4740 names the locked account as TargetUserName and the caller machine as TargetDomainName.
    event.user = take_user(record, "Target").or_else(null_user);
    event
}

fn group_member_added(record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::AccountChange, 99);
    event.set_activity_other("Added To Group");
    event.actor = Some(take_subject(record));
    let member_name = record.take_str("MemberName");
    let member_sid = record.take_str("MemberSid");
    let group = take_user(record, "Target").map(|group| Group {
        name: group.name,
        uid: group.uid,
        domain: group.domain,
        privileges: None,
    });
    // MemberName is an LDAP distinguished name for domain accounts.
    let mut user = User::from_parts(None, member_name.as_deref(), member_sid.as_deref())
        .or_else(null_user)
        .unwrap_or_default();
    user.groups = group.map(|g| vec![g]);
    event.user = Some(user);
    event
}

fn log_cleared(record: &mut Record) -> Box<Event> {
    let mut event = base_event(record, Class::EventLogActivity, 1);
    event.actor = Some(take_subject(record));
    event.log_name = Some("Security".to_owned());
    event
}

fn share_access(record: &mut Record) -> Box<Event> {
    // 5140: a share was accessed; 5145: access to an object on a share was checked.
    let mut event = base_event(record, Class::FileSystemActivity, 14);
    let mut actor = take_subject(record);
    let share = record.take_str("ShareName").unwrap_or_default();
    let local = record.take_str("ShareLocalPath");
    let relative = record.take_str("RelativeTargetName");
    let path = match &relative {
        Some(relative) => format!(
            "{}\\{}",
            share.trim_end_matches('\\'),
            relative.trim_start_matches('\\')
        ),
        None => share.clone(),
    };
    let mut file = File::from_path(&path);
    if file.name.is_empty() {
        file.name = share.clone();
    }
    if relative.is_none() || relative.as_deref() == Some("\\") {
        file.type_id = 2;
        file.type_name = "Folder";
    }
    if let Some(local) = local {
        event.add_unmapped("ShareLocalPath", Value::String(local));
    }
    let source = take_src_endpoint(record);
    if let Some(source) = source {
        event.add_unmapped(
            "IpAddress",
            source
                .ip
                .or(source.name)
                .map(Value::String)
                .unwrap_or(Value::Null),
        );
        if let Some(port) = source.port {
            event.add_unmapped("IpPort", Value::from(port));
        }
    }
    if let Some(session) = actor.session.as_mut() {
        session.is_remote = Some(true);
    }
    event.actor = Some(actor);
    event.file = Some(file);
    event
}

/// Kerberos, as domain controllers log it: 4768 a ticket-granting ticket was requested, 4769
/// a service ticket was requested, 4770 a service ticket was renewed, and 4771
/// pre-authentication failed (usually a wrong password).
fn kerberos(record: &mut Record) -> Box<Event> {
    let (activity, token_type) = match record.event_id {
        4768 => (3, (1, "Ticket Granting Ticket")),
        4769 => (4, (2, "Service Ticket")),
        4770 => (5, (2, "Service Ticket")),
        _ => (6, (1, "Ticket Granting Ticket")),
    };
    let mut event = base_event(record, Class::Authentication, activity);

    let status = record.take_str("Status");
    let success = activity != 6 && status.as_deref().is_none_or(|s| parse_code(s) == Some(0));
    event.set_status(success);
    if !success {
        event.status_detail = status
            .as_deref()
            .and_then(kerberos_error)
            .map(str::to_owned);
        event.status_code = status;
    }
    event.user = take_user(record, "Target").or_else(null_user);
    if let Some(logon_guid) = record
        .take_str("LogonGuid")
        .map(|g| g.trim_matches(['{', '}']).to_owned())
        .filter(|g| g != "00000000-0000-0000-0000-000000000000")
    {
        event.session = Some(Session {
            uuid: Some(logon_guid),
            ..Session::default()
        });
    }

    event.service = take_kerberos_service(record);
    let encryption = record
        .take_str("TicketEncryptionType")
        .and_then(|value| kerberos_encryption(&value));
    event.authentication_token = Some(AuthenticationToken {
        type_id: token_type.0,
        type_name: token_type.1,
        kerberos_flags: record.take_str("TicketOptions"),
        encryption_details: encryption,
    });

    set_auth_protocol(&mut event, Some("Kerberos".to_owned()));
    event.src_endpoint = take_src_endpoint(record);
    event.dst_endpoint = local_endpoint(record);
    event.actor = Some(writer_actor(record));
    event
}

/// `ServiceName` and `ServiceSid` as the service a ticket is for.
fn take_kerberos_service(record: &mut Record) -> Option<Service> {
    let name = record.take_str("ServiceName");
    let uid = record.take_str("ServiceSid").filter(|sid| sid != "S-1-0-0");
    (name.is_some() || uid.is_some()).then_some(Service { name, uid })
}

/// Parses a status or type that Windows writes in hex (`0x18`) or decimal.
fn parse_code(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Returns the name of a Kerberos error code (RFC 4120, section 7.5.9) that domain controllers
/// log.
fn kerberos_error(status: &str) -> Option<&'static str> {
    Some(match parse_code(status)? {
        0x6 => "KDC_ERR_C_PRINCIPAL_UNKNOWN: client not found in the Kerberos database",
        0x7 => "KDC_ERR_S_PRINCIPAL_UNKNOWN: server not found in the Kerberos database",
        0xC => "KDC_ERR_POLICY: a policy rejected the request",
        0xD => "KDC_ERR_BADOPTION: the KDC cannot accommodate a requested option",
        0xE => "KDC_ERR_ETYPE_NOSUPP: no supported encryption type",
        0x12 => "KDC_ERR_CLIENT_REVOKED: account disabled, expired or locked out",
        0x17 => "KDC_ERR_KEY_EXPIRED: password expired",
        0x18 => "KDC_ERR_PREAUTH_FAILED: wrong password",
        0x19 => "KDC_ERR_PREAUTH_REQUIRED: pre-authentication required",
        0x1F => "KRB_AP_ERR_BAD_INTEGRITY: integrity check on a decrypted field failed",
        0x20 => "KRB_AP_ERR_TKT_EXPIRED: ticket expired",
        0x25 => "KRB_AP_ERR_SKEW: clock skew too great",
        _ => return None,
    })
}

/// Returns a Kerberos encryption type (RFC 3961 numbers, as Windows writes them) as encryption
/// details. `0xffffffff`, which Windows logs for failed requests, gives none.
fn kerberos_encryption(value: &str) -> Option<EncryptionDetails> {
    let code = parse_code(value)?;
    let (name, algorithm, key_length) = match code {
        0xFFFF_FFFF => return None,
        0x1 => ("DES-CBC-CRC", (1, "DES"), Some(56)),
        0x3 => ("DES-CBC-MD5", (1, "DES"), Some(56)),
        0x11 => ("AES128-CTS-HMAC-SHA1-96", (3, "AES"), Some(128)),
        0x12 => ("AES256-CTS-HMAC-SHA1-96", (3, "AES"), Some(256)),
        0x17 => ("RC4-HMAC", (99, "RC4"), Some(128)),
        0x18 => ("RC4-HMAC-EXP", (99, "RC4"), Some(40)),
        _ => {
            return Some(EncryptionDetails {
                type_name: Some(value.to_owned()),
                ..EncryptionDetails::default()
            });
        }
    };
    Some(EncryptionDetails {
        type_name: Some(name.to_owned()),
        algorithm_id: Some(algorithm.0),
        algorithm: Some(algorithm.1.to_owned()),
        key_length,
    })
}

/// Windows Filtering Platform: 5156 a connection was permitted, 5157 it was blocked.
///
/// WFP names the local side `Source` and the remote side `Destination` in both directions,
/// so for an inbound connection the initiator, OCSF's source, is WFP's `Destination`.
fn filtering_connection(converter: &Converter, record: &mut Record) -> Box<Event> {
    let activity = if record.event_id == 5156 { 1 } else { 5 };
    let mut event = base_event(record, Class::NetworkActivity, activity);
    let process = take_filtering_process(converter, record);
    let outbound = record
        .take_str("Direction")
        .and_then(|d| filtering_direction(&d));
    let local = take_endpoint(record, "SourceAddress", "SourcePort");
    let remote = take_endpoint(record, "DestAddress", "DestPort");
    if outbound == Some(false) {
        event.src_endpoint = remote;
        event.dst_endpoint = local;
    } else {
        event.src_endpoint = local;
        event.dst_endpoint = remote;
    }
    event.connection_info = Some(filtering_connection_info(record, outbound));
    event.actor = Some(Actor {
        process,
        ..Actor::default()
    });
    event
}

/// Windows Filtering Platform: 5154 a listen was permitted, 5155 it was blocked, 5158 a
/// bind to a local port was permitted, 5159 it was blocked.
fn filtering_port(converter: &Converter, record: &mut Record) -> Box<Event> {
    let (activity, bind) = match record.event_id {
        5154 => (7, false),
        5155 => (5, false),
        5158 => (99, true),
        _ => (5, true),
    };
    let mut event = base_event(record, Class::NetworkActivity, activity);
    if activity == 99 {
        event.set_activity_other("Bind");
    }
    let process = take_filtering_process(converter, record);
    let local = take_endpoint(record, "SourceAddress", "SourcePort");
    // A listening socket is where connections go; a bound one may send as well as receive.
    if bind {
        event.src_endpoint = local;
    } else {
        event.dst_endpoint = local;
    }
    event.connection_info = Some(filtering_connection_info(record, None));
    event.actor = Some(Actor {
        process,
        ..Actor::default()
    });
    event
}

/// Takes the process of a WFP record: `ProcessID` (5156, 5157) or `ProcessId` (the others),
/// and the image path in the kernel's device form (`\device\harddiskvolume2\...`).
fn take_filtering_process(converter: &Converter, record: &mut Record) -> Option<Process> {
    let pid_field = if record.fields.get("ProcessID").is_some() {
        "ProcessID"
    } else {
        "ProcessId"
    };
    take_caller(converter, record, pid_field, "Application")
}

fn take_endpoint(record: &mut Record, address: &str, port: &str) -> Option<NetworkEndpoint> {
    let ip = record.take_str(address);
    let port = record.take_u64(port).and_then(|p| u16::try_from(p).ok());
    NetworkEndpoint::from_parts(ip.as_deref(), port)
}

/// WFP's direction, as the message id Windows logs (`%%14592` inbound, `%%14593` outbound) or
/// as its rendered text; `true` for outbound.
fn filtering_direction(direction: &str) -> Option<bool> {
    match direction.trim() {
        "%%14593" => Some(true),
        "%%14592" => Some(false),
        other if other.eq_ignore_ascii_case("outbound") => Some(true),
        other if other.eq_ignore_ascii_case("inbound") => Some(false),
        _ => None,
    }
}

/// Takes the IP protocol number of a WFP record, with its name for TCP, UDP, ICMP and ICMPv6.
fn filtering_connection_info(record: &mut Record, outbound: Option<bool>) -> ConnectionInfo {
    let number = record
        .take_u64("Protocol")
        .and_then(|p| u8::try_from(p).ok());
    let name = match number {
        Some(6) => Some("tcp"),
        Some(17) => Some("udp"),
        Some(1) => Some("icmp"),
        Some(58) => Some("ipv6-icmp"),
        _ => None,
    };
    let mut info = ConnectionInfo::new(outbound, name);
    info.protocol_num = number;
    info
}
