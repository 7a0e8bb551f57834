//! Sysmon writes the all-zero GUID as `ParentProcessGuid` for a parent it has no record of.
//! That GUID names no process, so it must not become a process uid, which would join every
//! such parent into one process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use edr_evtx::Converter;
use edr_evtx::record::Record;
use serde_json::{Value, json};

const ZERO: &str = "{00000000-0000-0000-0000-000000000000}";

fn sysmon(event_id: u32, record_id: u64, data: Value) -> Record {
    let value = json!({"Event": {"System": {
        "Provider": {"#attributes": {"Name": "Microsoft-Windows-Sysmon"}},
        "EventID": event_id,
        "Channel": "Microsoft-Windows-Sysmon/Operational",
        "Computer": "ws01.example.org",
        "TimeCreated": {"#attributes": {"SystemTime": "2024-03-01T10:00:00.0000000Z"}},
        "Execution": {"#attributes": {"ProcessID": 3120, "ThreadID": 4410}},
        "Security": {"#attributes": {"UserID": "S-1-5-18"}}
    }, "EventData": data}});
    Record::from_json(value, record_id, 1_709_287_200_000).unwrap()
}

#[test]
fn zero_parent_guid_is_no_uid() {
    let mut converter = Converter::new();
    let mut out = Vec::new();
    for pid in [6084_u32, 6090] {
        let create = sysmon(
            1,
            u64::from(pid),
            json!({
                "RuleName": "-", "UtcTime": "2024-03-01 10:00:00.000",
                "ProcessGuid": format!("{{5770385f-c22a-43e0-bf4c-06f5698f{pid:04x}}}"),
                "ProcessId": pid, "Image": "C:\\Windows\\System32\\svchost.exe",
                "CommandLine": "svchost.exe -k netsvcs", "CurrentDirectory": "C:\\Windows\\system32\\",
                "User": "NT AUTHORITY\\SYSTEM", "LogonGuid": "{5770385f-0000-0000-e703-000000000000}",
                "LogonId": "0x3e7", "TerminalSessionId": 0, "IntegrityLevel": "System",
                "Hashes": "SHA256=3096D8E82917A9B73F322F4B1743E52E9B0C8B3C5933A957E73E29D6973CDD5B",
                "ParentProcessGuid": ZERO, "ParentProcessId": 660,
                "ParentImage": "-", "ParentCommandLine": "-", "ParentUser": "-"
            }),
        );
        converter.convert(create, &mut out);
    }
    let terminate = sysmon(
        5,
        9,
        json!({
            "RuleName": "-", "UtcTime": "2024-03-01 10:00:01.000",
            "ProcessGuid": "{5770385f-c22a-43e0-bf4c-06f5698f17c4}", "ProcessId": 6084,
            "Image": "C:\\Windows\\System32\\svchost.exe", "User": "NT AUTHORITY\\SYSTEM"
        }),
    );
    converter.convert(terminate, &mut out);
    converter.finish(&mut out);
    assert_eq!(out.len(), 3);
    let schema = common::schema();
    for event in &out {
        let event = serde_json::to_value(event).unwrap();
        for uid in [
            "/process/uid",
            "/process/parent_process/uid",
            "/actor/process/uid",
            "/actor/process/parent_process/uid",
        ] {
            assert_ne!(
                event.pointer(uid),
                Some(&Value::from(ZERO)),
                "zero GUID kept as {uid}: {event}"
            );
        }
        if event["metadata"]["event_code"] == "1" {
            // The original field is still there for an analyst.
            assert_eq!(event["unmapped"]["ParentProcessGuid"], ZERO, "{event}");
        }
        assert_eq!(event["process"]["parent_process"]["pid"], 660, "{event}");
        if let Some(schema) = &schema
            && let Err(error) = schema.validate(&event)
        {
            panic!("{error}\n{event}");
        }
    }
}
