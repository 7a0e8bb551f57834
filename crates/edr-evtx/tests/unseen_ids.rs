//! Event ids the issue requires that no recorded sample contains: Sysmon 14, 25 and 26 and
//! Security 4689 and 4740. Each is built here with the fields Sysmon and Windows write, and
//! must map to its class, keep its key values and validate against OCSF 1.8.0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use edr_evtx::Converter;
use edr_evtx::record::Record;
use serde_json::{Value, json};

const SYSMON: (&str, &str) = (
    "Microsoft-Windows-Sysmon",
    "Microsoft-Windows-Sysmon/Operational",
);
const SECURITY: (&str, &str) = ("Microsoft-Windows-Security-Auditing", "Security");

/// Converts one record of `event_id` from `(provider, channel)` and returns its only event,
/// checked against the schema when the schema is present.
fn convert_one(source: (&str, &str), event_id: u32, data: Value) -> Value {
    let (provider, channel) = source;
    let value = json!({"Event": {"System": {
        "Provider": {"#attributes": {"Name": provider}},
        "EventID": event_id,
        "Channel": channel,
        "Computer": "ws01.example.org",
        "TimeCreated": {"#attributes": {"SystemTime": "2024-03-01T10:00:00.0000000Z"}},
        "Execution": {"#attributes": {"ProcessID": 3120, "ThreadID": 4410}},
        "Security": {"#attributes": {"UserID": "S-1-5-18"}}
    }, "EventData": data}});
    let mut converter = Converter::new();
    let mut out = Vec::new();
    converter.convert(
        Record::from_json(value, 7, 1_709_287_200_000).unwrap(),
        &mut out,
    );
    converter.finish(&mut out);
    assert_eq!(out.len(), 1, "one event for {channel} {event_id}");
    assert!(
        converter.stats().unmapped.is_empty(),
        "{channel} {event_id} fell back to unmapped"
    );
    let event = serde_json::to_value(&out[0]).unwrap();
    if let Some(schema) = common::schema()
        && let Err(error) = schema.validate(&event)
    {
        panic!("{channel} {event_id}: {error}\n{event}");
    }
    event
}

#[test]
fn sysmon_14_registry_rename() {
    let event = convert_one(
        SYSMON,
        14,
        json!({
            "RuleName": "-", "EventType": "RenameKey", "UtcTime": "2024-03-01 10:00:00.000",
            "ProcessGuid": "{5770385f-c22a-43e0-bf4c-06f5698ffbd9}", "ProcessId": 2644,
            "Image": "C:\\Windows\\regedit.exe",
            "TargetObject": "HKLM\\SOFTWARE\\Example\\Old",
            "NewName": "HKLM\\SOFTWARE\\Example\\New",
            "User": "EXAMPLE\\alice"
        }),
    );
    assert_eq!(event["class_uid"], 201001, "{event}");
    assert_eq!(event["actor"]["process"]["pid"], 2644);
    assert_eq!(
        event["actor"]["process"]["uid"],
        "{5770385f-c22a-43e0-bf4c-06f5698ffbd9}"
    );
    let text = event.to_string();
    assert!(text.contains("Example\\\\New"), "new name kept: {event}");
    assert!(text.contains("Example\\\\Old"), "old name kept: {event}");
}

#[test]
fn sysmon_25_process_tampering() {
    let event = convert_one(
        SYSMON,
        25,
        json!({
            "RuleName": "-", "UtcTime": "2024-03-01 10:00:00.000",
            "ProcessGuid": "{5770385f-c22a-43e0-bf4c-06f5698ffbda}", "ProcessId": 5120,
            "Image": "C:\\Users\\alice\\AppData\\Local\\Temp\\hollow.exe",
            "Type": "Image is replaced", "User": "EXAMPLE\\alice"
        }),
    );
    assert_eq!(event["class_uid"], 1007, "{event}");
    assert_eq!(event["activity_id"], 99);
    assert_eq!(event["process"]["pid"], 5120);
    assert_eq!(
        event["process"]["path"],
        "C:\\Users\\alice\\AppData\\Local\\Temp\\hollow.exe"
    );
    assert!(
        event.to_string().contains("Image is replaced"),
        "tampering type kept: {event}"
    );
}

#[test]
fn sysmon_26_file_delete_logged() {
    let event = convert_one(
        SYSMON,
        26,
        json!({
            "RuleName": "-", "UtcTime": "2024-03-01 10:00:00.000",
            "ProcessGuid": "{5770385f-c22a-43e0-bf4c-06f5698ffbdb}", "ProcessId": 6400,
            "User": "EXAMPLE\\alice", "Image": "C:\\Windows\\System32\\cmd.exe",
            "TargetFilename": "C:\\Users\\alice\\Desktop\\payload.dll",
            "Hashes": "SHA256=0B5C3E0A3C2D2A0B7E7A6E40C5D5C09C0A6C8D1B0B9B5E5D3F6A8C1D2E3F4A5B",
            "IsExecutable": true
        }),
    );
    assert_eq!(event["class_uid"], 1001, "{event}");
    assert_eq!(event["activity_id"], 4, "Delete");
    assert_eq!(
        event["file"]["path"],
        "C:\\Users\\alice\\Desktop\\payload.dll"
    );
    assert_eq!(event["actor"]["process"]["pid"], 6400);
}

#[test]
fn security_4689_process_exit() {
    let event = convert_one(
        SECURITY,
        4689,
        json!({
            "SubjectUserSid": "S-1-5-21-1004336348-1177238915-682003330-1104",
            "SubjectUserName": "alice", "SubjectDomainName": "EXAMPLE",
            "SubjectLogonId": "0x3e7f21", "Status": "0x0", "ProcessId": "0x1a2c",
            "ProcessName": "C:\\Windows\\System32\\whoami.exe"
        }),
    );
    assert_eq!(event["class_uid"], 1007, "{event}");
    assert_eq!(event["activity_id"], 2, "Terminate");
    assert_eq!(event["process"]["pid"], 0x1a2c);
    assert_eq!(
        event["process"]["path"],
        "C:\\Windows\\System32\\whoami.exe"
    );
}

#[test]
fn security_4740_account_locked_out() {
    let event = convert_one(
        SECURITY,
        4740,
        json!({
            "TargetUserName": "bob", "TargetDomainName": "WS07",
            "TargetSid": "S-1-5-21-1004336348-1177238915-682003330-1112",
            "SubjectUserSid": "S-1-5-18", "SubjectUserName": "DC01$",
            "SubjectDomainName": "EXAMPLE", "SubjectLogonId": "0x3e7"
        }),
    );
    assert_eq!(event["class_uid"], 3001, "{event}");
    assert_eq!(event["activity_id"], 9, "Lock");
    assert_eq!(event["user"]["name"], "bob");
    assert_eq!(
        event["user"]["uid"],
        "S-1-5-21-1004336348-1177238915-682003330-1112"
    );
    assert!(
        event.to_string().contains("WS07"),
        "caller machine kept: {event}"
    );
}
