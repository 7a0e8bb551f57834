//! The OCSF event and the objects it carries, serialised to the schema's JSON.
//!
//! Every optional attribute is an `Option` that is left out of the JSON when `None`. Enum ids
//! and their names travel together: the constructors and setters here fill both from one
//! value, so an event built through them has a name that matches its id.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::class::{Class, Severity};

/// The OCSF schema version every event declares in `metadata.version`.
pub const OCSF_VERSION: &str = "1.8.0";

fn is_false(value: &bool) -> bool {
    !*value
}

/// One OCSF event of any class.
///
/// The classification attributes (`class_uid`, `category_uid`, `type_uid` and their names) are
/// derived from [`Class`] and the activity in [`Event::new`] and [`Event::set_activity`], so
/// they cannot disagree with each other.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    class_uid: u32,
    class_name: &'static str,
    category_uid: u32,
    category_name: &'static str,
    activity_id: u8,
    activity_name: String,
    type_uid: u64,
    type_name: String,
    severity_id: u8,
    severity: &'static str,
    /// Event time in milliseconds since the Unix epoch.
    pub time: i64,
    pub metadata: Metadata,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,

    // Class-specific attributes; the validator rejects one used outside its class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<Module>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<KernelDriver>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<Script>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logon_type_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logon_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logon_process: Option<Process>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_protocol_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_remote: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
    /// Authentication: the service a Kerberos ticket was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    /// Authentication: the Kerberos ticket asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication_token: Option<AuthenticationToken>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_endpoint: Option<NetworkEndpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_endpoint: Option<NetworkEndpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_info: Option<ConnectionInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<DnsQuery>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answers: Option<Vec<DnsAnswer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcode_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reg_key: Option<RegKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_reg_key: Option<RegKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reg_value: Option<RegValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub win_service: Option<WinService>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding_info: Option<FindingInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidences: Option<Vec<Evidence>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malware: Option<Vec<Malware>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_alert: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_permissions: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injection_type_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injection_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Event Log Activity: the log acted on, such as `Security`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_provider: Option<String>,
    /// Source fields that no OCSF attribute holds, keyed by their original names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmapped: Option<Map<String, Value>>,
}

impl Event {
    /// Builds an event of `class` with `activity_id`, at `time` (ms since the Unix epoch).
    ///
    /// An activity id the class does not list becomes 99 (`Other`), and the caller may name it
    /// with [`Event::set_activity_other`].
    pub fn new(class: Class, activity_id: u8, time: i64, metadata: Metadata) -> Event {
        let (category_uid, category_name) = class.category();
        let mut event = Event {
            class_uid: class.uid(),
            class_name: class.name(),
            category_uid,
            category_name,
            activity_id: 0,
            activity_name: String::new(),
            type_uid: 0,
            type_name: String::new(),
            severity_id: Severity::Informational.id(),
            severity: Severity::Informational.name(),
            time,
            metadata,
            message: None,
            status_id: None,
            status: None,
            status_code: None,
            status_detail: None,
            device: None,
            actor: None,
            process: None,
            file: None,
            module: None,
            driver: None,
            job: None,
            script: None,
            user: None,
            logon_type_id: None,
            logon_type: None,
            logon_process: None,
            auth_protocol_id: None,
            auth_protocol: None,
            is_remote: None,
            session: None,
            src_endpoint: None,
            dst_endpoint: None,
            connection_info: None,
            service: None,
            authentication_token: None,
            query: None,
            answers: None,
            rcode_id: None,
            rcode: None,
            reg_key: None,
            prev_reg_key: None,
            reg_value: None,
            win_service: None,
            finding_info: None,
            evidences: None,
            malware: None,
            is_alert: None,
            requested_permissions: None,
            injection_type_id: None,
            injection_type: None,
            exit_code: None,
            log_name: None,
            log_provider: None,
            unmapped: None,
        };
        event.set_activity(activity_id);
        event
    }

    /// The event's class.
    pub fn class(&self) -> Class {
        Class::ALL
            .into_iter()
            .find(|class| class.uid() == self.class_uid)
            .unwrap_or(Class::BaseEvent)
    }

    /// The `activity_id`.
    pub fn activity_id(&self) -> u8 {
        self.activity_id
    }

    /// Sets `activity_id` with its name and `type_uid`/`type_name`.
    pub fn set_activity(&mut self, activity_id: u8) {
        let class = self.class();
        match class.activity_name(activity_id) {
            Some(name) => self.set_activity_named(activity_id, name.to_owned()),
            None => self.set_activity_named(99, "Other".to_owned()),
        }
    }

    /// Sets activity 99 (`Other`) with the source's own activity name.
    pub fn set_activity_other(&mut self, name: &str) {
        self.set_activity_named(99, name.to_owned());
    }

    fn set_activity_named(&mut self, activity_id: u8, name: String) {
        self.activity_id = activity_id;
        self.type_uid = u64::from(self.class_uid) * 100 + u64::from(activity_id);
        let mut type_name = String::with_capacity(self.class_name.len() + 2 + name.len());
        type_name.push_str(self.class_name);
        type_name.push_str(": ");
        type_name.push_str(&name);
        self.type_name = type_name;
        self.activity_name = name;
    }

    /// Sets `severity_id` and `severity`.
    pub fn set_severity(&mut self, severity: Severity) {
        self.severity_id = severity.id();
        self.severity = severity.name();
    }

    /// Sets `status_id` and `status`: success (1) or failure (2).
    pub fn set_status(&mut self, success: bool) {
        let (id, name) = if success {
            (1, "Success")
        } else {
            (2, "Failure")
        };
        self.status_id = Some(id);
        self.status = Some(name.to_owned());
    }

    /// Adds one field under `unmapped`.
    pub fn add_unmapped(&mut self, key: &str, value: Value) {
        self.unmapped
            .get_or_insert_with(Map::new)
            .insert(key.to_owned(), value);
    }
}

/// `metadata`: where the event came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metadata {
    pub product: Product,
    /// The OCSF schema version, [`OCSF_VERSION`].
    pub version: &'static str,
    /// The source's own timestamp text, for example the EVTX `SystemTime`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_time: Option<String>,
    /// The log or channel, for example `Microsoft-Windows-Sysmon/Operational`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_name: Option<String>,
    /// The provider that wrote the record, for example `Microsoft-Windows-Sysmon`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_provider: Option<String>,
    /// The source's event id, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_code: Option<String>,
    /// The record's unique id within its source (for EVTX, the event record id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Vec<String>>,
}

impl Metadata {
    /// Metadata naming `product` with everything else empty.
    pub fn new(product: Product) -> Metadata {
        Metadata {
            product,
            version: OCSF_VERSION,
            original_time: None,
            log_name: None,
            log_provider: None,
            event_code: None,
            uid: None,
            correlation_uid: None,
            log_format: None,
            profiles: None,
        }
    }
}

/// `product`: the software that produced the original record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Product {
    pub name: String,
    pub vendor_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `device`: the host the event happened on.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Device {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Always set; 0 (`Unknown`) when the source does not say what kind of device it is.
    pub type_id: u8,
    #[serde(rename = "type")]
    pub type_name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<Os>,
}

impl Device {
    /// A Windows device known by `hostname`.
    pub fn windows(hostname: &str) -> Device {
        Device {
            hostname: Some(hostname.to_owned()),
            name: hostname.split('.').next().map(str::to_owned),
            type_id: 0,
            type_name: "Unknown",
            os: Some(Os {
                name: "Windows".to_owned(),
                type_id: 100,
                type_name: "Windows",
            }),
            ..Device::default()
        }
    }
}

/// `os`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Os {
    pub name: String,
    pub type_id: u8,
    #[serde(rename = "type")]
    pub type_name: &'static str,
}

/// `actor`: who performed the activity.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Actor {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
}

/// Writes a Windows process or thread id, a `DWORD`, as OCSF's `integer_t`, a signed 32-bit
/// integer: an id above `i32::MAX` becomes the negative number with the same bits, as
/// PerfView shows it. Only the `-1` that Windows writes for "no process" and damaged records
/// give such ids; writing them as they are would make the event invalid.
fn as_integer_t<S: serde::Serializer>(id: &Option<u32>, serializer: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => serializer.serialize_i32(i32::from_ne_bytes(id.to_ne_bytes())),
        None => serializer.serialize_none(),
    }
}

/// `process`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Process {
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "as_integer_t"
    )]
    pub pid: Option<u32>,
    /// Stable process identity; see [`crate::process_cache`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_process: Option<Box<Process>>,
    /// Start time in ms since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminated_time: Option<i64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "as_integer_t"
    )]
    pub tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
}

impl Process {
    /// Sets `integrity_id` and `integrity` from a Windows integrity level name such as `High`.
    pub fn set_integrity(&mut self, level: &str) {
        let id = match level {
            "Untrusted" => 1,
            "Low" => 2,
            "Medium" | "MediumPlus" => 3,
            "High" => 4,
            "System" => 5,
            "Protected" => 6,
            _ => 99,
        };
        self.integrity_id = Some(id);
        self.integrity = Some(match id {
            3 => "Medium".to_owned(),
            99 => level.to_owned(),
            _ => level.to_owned(),
        });
    }
}

/// `file`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct File {
    pub name: String,
    pub type_id: u8,
    #[serde(rename = "type")]
    pub type_name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_folder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hashes: Option<Vec<Fingerprint>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<FileProduct>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    #[serde(skip_serializing_if = "is_false")]
    pub is_deleted: bool,
}

impl File {
    /// A regular file (type 1) at `path`, with `name` and `parent_folder` split from it.
    ///
    /// Both `\` and `/` separate components, so device paths such as `\Device\HarddiskVolume2\x`
    /// and plain names both work.
    pub fn from_path(path: &str) -> File {
        let (parent, name) = match path.rfind(['\\', '/']) {
            Some(index) => (Some(&path[..index]), &path[index + 1..]),
            None => (None, path),
        };
        File {
            name: name.to_owned(),
            type_id: 1,
            type_name: "Regular File",
            path: Some(path.to_owned()),
            parent_folder: parent.filter(|p| !p.is_empty()).map(str::to_owned),
            ..File::default()
        }
    }
}

/// `product` as used inside `file`: the product a file belongs to.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct FileProduct {
    pub name: String,
}

/// `signature`: a file's digital signature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signature {
    pub algorithm_id: u8,
    pub algorithm: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Certificate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// `certificate`, carrying only the signer's subject here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Certificate {
    pub subject: String,
    pub serial_number: String,
    pub issuer: String,
}

/// `fingerprint`: one hash of a file or script.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fingerprint {
    pub algorithm_id: u8,
    pub algorithm: String,
    pub value: String,
}

impl Fingerprint {
    /// A fingerprint from an algorithm label as Windows tools write it (`SHA256`, `MD5`,
    /// `IMPHASH`...); an unknown label becomes id 99 with the label as its name.
    pub fn from_label(label: &str, value: &str) -> Fingerprint {
        let (id, name) = match label.to_ascii_uppercase().as_str() {
            "MD5" => (1, "MD5"),
            "SHA1" | "SHA-1" => (2, "SHA-1"),
            "SHA256" | "SHA-256" => (3, "SHA-256"),
            "SHA512" | "SHA-512" => (4, "SHA-512"),
            "IMPHASH" => (18, "Imphash"),
            _ => (99, label),
        };
        Fingerprint {
            algorithm_id: id,
            algorithm: name.to_owned(),
            value: value.to_owned(),
        }
    }
}

/// `user`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct User {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The security identifier (SID) on Windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_id: Option<u8>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Group>>,
}

impl User {
    /// A user from `DOMAIN\name` or a bare name, with an optional SID; `None` when both are empty
    /// or placeholders (`-`).
    pub fn from_parts(domain: Option<&str>, name: Option<&str>, sid: Option<&str>) -> Option<User> {
        let clean = |value: Option<&str>| {
            value
                .map(str::trim)
                .filter(|v| !v.is_empty() && *v != "-")
                .map(str::to_owned)
        };
        let mut domain = clean(domain);
        let mut name = clean(name);
        if let Some(full) = name.clone()
            && let Some((d, n)) = full.split_once('\\')
        {
            domain = domain.or_else(|| Some(d.to_owned()).filter(|d| !d.is_empty()));
            name = Some(n.to_owned());
        }
        let uid = clean(sid).filter(|sid| sid != "S-1-0-0");
        if name.is_none() && uid.is_none() {
            return None;
        }
        Some(User {
            name,
            uid,
            domain,
            ..User::default()
        })
    }
}

/// `group`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Group {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privileges: Option<Vec<String>>,
}

/// `session`: a logon session.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Session {
    /// The logon id, as Windows writes it (for example `0x3e7`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_remote: Option<bool>,
}

/// `service`: what a user authenticates to, such as a Kerberos service principal.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Service {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// `authentication_token`: a Kerberos ticket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthenticationToken {
    pub type_id: u8,
    #[serde(rename = "type")]
    pub type_name: &'static str,
    /// The ticket options as Windows writes them, such as `0x40810010`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kerberos_flags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_details: Option<EncryptionDetails>,
}

/// `encryption_details`: how a ticket is encrypted.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct EncryptionDetails {
    /// The encryption type's name, such as `AES256-CTS-HMAC-SHA1-96`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_length: Option<u32>,
}

/// `network_endpoint`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct NetworkEndpoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svc_name: Option<String>,
}

impl NetworkEndpoint {
    /// An endpoint from an address and port as Windows logs write them; placeholders such as
    /// `-` and `::1`-style text that does not parse as an IP address go to `name` instead.
    pub fn from_parts(address: Option<&str>, port: Option<u16>) -> Option<NetworkEndpoint> {
        let address = address
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "-");
        let mut endpoint = NetworkEndpoint {
            port: port.filter(|p| *p != 0),
            ..NetworkEndpoint::default()
        };
        match address {
            Some(a) if a.parse::<std::net::IpAddr>().is_ok() => endpoint.ip = Some(a.to_owned()),
            Some(a) => endpoint.name = Some(a.to_owned()),
            None => {}
        }
        (endpoint.ip.is_some() || endpoint.name.is_some()).then_some(endpoint)
    }
}

/// `network_connection_info`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ConnectionInfo {
    pub direction_id: u8,
    pub direction: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_num: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_ver_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_ver: Option<&'static str>,
}

impl ConnectionInfo {
    /// Connection info with a direction (`true` for outbound) and a protocol name such as `tcp`.
    pub fn new(outbound: Option<bool>, protocol: Option<&str>) -> ConnectionInfo {
        let (direction_id, direction) = match outbound {
            Some(true) => (2, "Outbound"),
            Some(false) => (1, "Inbound"),
            None => (0, "Unknown"),
        };
        let protocol_name = protocol.map(str::to_ascii_lowercase);
        let protocol_num = match protocol_name.as_deref() {
            Some("tcp") => Some(6),
            Some("udp") => Some(17),
            Some("icmp") => Some(1),
            _ => None,
        };
        ConnectionInfo {
            direction_id,
            direction,
            protocol_name,
            protocol_num,
            ..ConnectionInfo::default()
        }
    }
}

/// `dns_query`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsQuery {
    pub hostname: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
}

/// `dns_answer`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsAnswer {
    pub rdata: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
}

/// `reg_key` (windows extension).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegKey {
    pub path: String,
}

/// `reg_value` (windows extension).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RegValue {
    /// The path of the key that holds the value.
    pub path: String,
    /// The value name; `(Default)` for a key's default value.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_id: Option<u8>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reg_string_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reg_integer_data: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reg_binary_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_default: Option<bool>,
}

impl RegValue {
    /// Sets `type_id` and `type` from a registry type name such as `REG_SZ`; unknown names
    /// become 99 with the name kept.
    pub fn set_type(&mut self, name: &str) {
        const TYPES: [&str; 10] = [
            "REG_BINARY",
            "REG_DWORD",
            "REG_DWORD_BIG_ENDIAN",
            "REG_EXPAND_SZ",
            "REG_LINK",
            "REG_MULTI_SZ",
            "REG_NONE",
            "REG_QWORD",
            "REG_QWORD_LITTLE_ENDIAN",
            "REG_SZ",
        ];
        let id = TYPES
            .iter()
            .position(|t| *t == name)
            .map_or(99, |index| index as u8 + 1);
        self.type_id = Some(id);
        self.type_name = Some(name.to_owned());
    }
}

/// `module`: a loaded image.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Module {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
    pub load_type_id: u8,
    pub load_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_name: Option<String>,
}

/// `kernel_driver`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelDriver {
    pub file: File,
}

/// `job`: a scheduled task.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Job {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
}

/// `script`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Script {
    pub script_content: LongString,
    pub type_id: u8,
    #[serde(rename = "type")]
    pub type_name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
}

/// `long_string`: text with an optional truncation marker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LongString {
    pub value: String,
    #[serde(skip_serializing_if = "is_false")]
    pub is_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untruncated_size: Option<u64>,
}

/// `win_service` (windows extension).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WinService {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_file: Option<File>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_start_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_start_type_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_start_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_type_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_type: Option<String>,
}

impl WinService {
    /// Sets the start type from Windows' text (`auto start`, `demand start`...) or number (2, 3...).
    pub fn set_start_type(&mut self, text: &str) {
        let lower = text.trim().to_ascii_lowercase();
        let (id, name) = match lower.as_str() {
            "0" | "boot start" => (1, "Boot"),
            "1" | "system start" => (2, "System"),
            "2" | "auto start" => (3, "Auto"),
            "3" | "demand start" => (4, "Demand"),
            "4" | "disabled" => (5, "Disabled"),
            _ => (99, text),
        };
        self.service_start_type_id = Some(id);
        self.service_start_type = Some(name.to_owned());
    }

    /// Sets the service type from Windows' text (`user mode service`, `kernel mode driver`...)
    /// or its `SERVICE_*` number.
    pub fn set_service_type(&mut self, text: &str) {
        let lower = text.trim().to_ascii_lowercase();
        let (id, name) = match lower.as_str() {
            "0x1" | "1" | "kernel mode driver" => (1, "Kernel Driver"),
            "0x2" | "2" | "file system driver" => (2, "File System Driver"),
            "0x10" | "16" | "user mode service" => (3, "Own Process"),
            "0x20" | "32" | "share process" => (4, "Share Process"),
            _ => (99, text),
        };
        self.service_type_id = Some(id);
        self.service_type = Some(name.to_owned());
    }
}

/// `finding_info`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct FindingInfo {
    pub uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analytic: Option<Analytic>,
}

/// `analytic`: the rule or signature behind a finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analytic {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    pub type_id: u8,
    #[serde(rename = "type")]
    pub type_name: &'static str,
}

/// `evidences`: what a finding points at.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Evidence {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// `malware`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Malware {
    pub name: String,
    pub classification_ids: Vec<u8>,
    pub classifications: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}
