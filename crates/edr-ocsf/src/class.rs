//! The OCSF 1.8.0 event classes this project emits, with their ids, names and activities.
//!
//! Every id and caption here comes from the schema release 1.8.0 (`events/` and the windows
//! extension, uid 2); the validator in [`crate::validate`] checks them against the schema files.

use serde::Serialize;

/// An OCSF event class emitted by the sensor or by offline conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Class {
    /// `base_event`, used for collected records that no mapper covers.
    BaseEvent,
    FileSystemActivity,
    KernelExtensionActivity,
    ModuleActivity,
    ScheduledJobActivity,
    ProcessActivity,
    EventLogActivity,
    ScriptActivity,
    DetectionFinding,
    AccountChange,
    Authentication,
    NetworkActivity,
    DnsActivity,
    RegistryKeyActivity,
    RegistryValueActivity,
    WindowsServiceActivity,
}

/// Activity ids every class shares.
pub const ACTIVITY_UNKNOWN: u8 = 0;
/// The `Other` activity: the event has an activity the class does not list.
pub const ACTIVITY_OTHER: u8 = 99;

impl Class {
    /// All classes, in `class_uid` order.
    pub const ALL: [Class; 16] = [
        Class::BaseEvent,
        Class::FileSystemActivity,
        Class::KernelExtensionActivity,
        Class::ModuleActivity,
        Class::ScheduledJobActivity,
        Class::ProcessActivity,
        Class::EventLogActivity,
        Class::ScriptActivity,
        Class::DetectionFinding,
        Class::AccountChange,
        Class::Authentication,
        Class::NetworkActivity,
        Class::DnsActivity,
        Class::RegistryKeyActivity,
        Class::RegistryValueActivity,
        Class::WindowsServiceActivity,
    ];

    /// The `class_uid`.
    pub fn uid(self) -> u32 {
        match self {
            Class::BaseEvent => 0,
            Class::FileSystemActivity => 1001,
            Class::KernelExtensionActivity => 1002,
            Class::ModuleActivity => 1005,
            Class::ScheduledJobActivity => 1006,
            Class::ProcessActivity => 1007,
            Class::EventLogActivity => 1008,
            Class::ScriptActivity => 1009,
            Class::DetectionFinding => 2004,
            Class::AccountChange => 3001,
            Class::Authentication => 3002,
            Class::NetworkActivity => 4001,
            Class::DnsActivity => 4003,
            Class::RegistryKeyActivity => 201_001,
            Class::RegistryValueActivity => 201_002,
            Class::WindowsServiceActivity => 201_004,
        }
    }

    /// The `class_name` (the class caption).
    pub fn name(self) -> &'static str {
        match self {
            Class::BaseEvent => "Base Event",
            Class::FileSystemActivity => "File System Activity",
            Class::KernelExtensionActivity => "Kernel Extension Activity",
            Class::ModuleActivity => "Module Activity",
            Class::ScheduledJobActivity => "Scheduled Job Activity",
            Class::ProcessActivity => "Process Activity",
            Class::EventLogActivity => "Event Log Activity",
            Class::ScriptActivity => "Script Activity",
            Class::DetectionFinding => "Detection Finding",
            Class::AccountChange => "Account Change",
            Class::Authentication => "Authentication",
            Class::NetworkActivity => "Network Activity",
            Class::DnsActivity => "DNS Activity",
            Class::RegistryKeyActivity => "Registry Key Activity",
            Class::RegistryValueActivity => "Registry Value Activity",
            Class::WindowsServiceActivity => "Windows Service Activity",
        }
    }

    /// The `category_uid` and `category_name`.
    pub fn category(self) -> (u32, &'static str) {
        match self.uid() % 100_000 / 1000 {
            1 => (1, "System Activity"),
            2 => (2, "Findings"),
            3 => (3, "Identity & Access Management"),
            4 => (4, "Network Activity"),
            _ => (0, "Uncategorized"),
        }
    }

    /// The caption of `activity_id` in this class, or `None` when the class does not list it.
    pub fn activity_name(self, activity_id: u8) -> Option<&'static str> {
        let common = match activity_id {
            ACTIVITY_UNKNOWN => Some("Unknown"),
            ACTIVITY_OTHER => Some("Other"),
            _ => None,
        };
        if common.is_some() {
            return common;
        }
        let table: &[&str] = match self {
            Class::BaseEvent => &[],
            Class::FileSystemActivity => &[
                "Create",
                "Read",
                "Update",
                "Delete",
                "Rename",
                "Set Attributes",
                "Set Security",
                "Get Attributes",
                "Get Security",
                "Encrypt",
                "Decrypt",
                "Mount",
                "Unmount",
                "Open",
            ],
            Class::KernelExtensionActivity => &["Load", "Unload"],
            Class::ModuleActivity => &["Load", "Unload", "Invoke"],
            Class::ScheduledJobActivity => {
                &["Create", "Update", "Delete", "Enable", "Disable", "Start"]
            }
            Class::ProcessActivity => &["Launch", "Terminate", "Open", "Inject", "Set User ID"],
            Class::EventLogActivity => &[
                "Clear", "Delete", "Export", "Archive", "Rotate", "Start", "Stop", "Restart",
                "Enable", "Disable",
            ],
            Class::ScriptActivity => &["Execute"],
            Class::DetectionFinding => &["Create", "Update", "Close"],
            Class::AccountChange => &[
                "Create",
                "Enable",
                "Password Change",
                "Password Reset",
                "Disable",
                "Delete",
                "Attach Policy",
                "Detach Policy",
                "Lock",
                "MFA Factor Enable",
                "MFA Factor Disable",
                "Unlock",
            ],
            Class::Authentication => &[
                "Logon",
                "Logoff",
                "Authentication Ticket",
                "Service Ticket Request",
                "Service Ticket Renew",
                "Preauth",
                "Account Switch",
            ],
            Class::NetworkActivity => &[
                "Open", "Close", "Reset", "Fail", "Refuse", "Traffic", "Listen",
            ],
            // DNS Activity lists 1, 2 and 6 only.
            Class::DnsActivity => {
                return match activity_id {
                    1 => Some("Query"),
                    2 => Some("Response"),
                    6 => Some("Traffic"),
                    _ => None,
                };
            }
            Class::RegistryKeyActivity => &[
                "Create",
                "Read",
                "Modify",
                "Delete",
                "Rename",
                "Set Security",
                "Restore",
                "Import",
                "Export",
            ],
            Class::RegistryValueActivity => &["Get", "Set", "Modify", "Delete"],
            Class::WindowsServiceActivity => &[
                "Create",
                "Reconfigure",
                "Start",
                "Stop",
                "Pause",
                "Continue",
                "Delete",
            ],
        };
        table.get(usize::from(activity_id).checked_sub(1)?).copied()
    }
}

/// The event's `severity_id`, with `severity` as its caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Severity {
    Unknown,
    #[default]
    Informational,
    Low,
    Medium,
    High,
    Critical,
    Fatal,
    Other,
}

impl Severity {
    /// The `severity_id`.
    pub fn id(self) -> u8 {
        match self {
            Severity::Unknown => 0,
            Severity::Informational => 1,
            Severity::Low => 2,
            Severity::Medium => 3,
            Severity::High => 4,
            Severity::Critical => 5,
            Severity::Fatal => 6,
            Severity::Other => 99,
        }
    }

    /// The `severity` caption.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Unknown => "Unknown",
            Severity::Informational => "Informational",
            Severity::Low => "Low",
            Severity::Medium => "Medium",
            Severity::High => "High",
            Severity::Critical => "Critical",
            Severity::Fatal => "Fatal",
            Severity::Other => "Other",
        }
    }
}
