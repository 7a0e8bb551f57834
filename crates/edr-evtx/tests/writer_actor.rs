//! A record whose header names no writing process (no `Execution/@ProcessID`) still gives an
//! event that validates. Its actor keeps the logging SID and has no process; without a SID
//! either, the actor is the provider that wrote the record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use edr_evtx::Converter;
use edr_evtx::record::Record;
use serde_json::{Value, json};

fn credential_validation(execution: Option<Value>) -> Value {
    credential_validation_by(execution, Some("S-1-5-18"))
}

fn credential_validation_by(execution: Option<Value>, sid: Option<&str>) -> Value {
    let mut system = json!({
        "Provider": {"#attributes": {"Name": "Microsoft-Windows-Security-Auditing"}},
        "EventID": 4776,
        "Channel": "Security",
        "Computer": "host.example.org",
        "TimeCreated": {"#attributes": {"SystemTime": "2019-03-18T23:24:15.6474299Z"}}
    });
    if let Some(sid) = sid {
        system["Security"] = json!({"#attributes": {"UserID": sid}});
    }
    if let Some(execution) = execution {
        system["Execution"] = execution;
    }
    let value = json!({"Event": {"System": system, "EventData": {
        "PackageName": "MICROSOFT_AUTHENTICATION_PACKAGE_V1_0",
        "TargetUserName": "Administrator", "Workstation": "HOST", "Status": "0x0"
    }}});
    let mut converter = Converter::new();
    let mut out = Vec::new();
    converter.convert(Record::from_json(value, 1, 0).unwrap(), &mut out);
    assert_eq!(out.len(), 1);
    serde_json::to_value(&out[0]).unwrap()
}

#[test]
fn thread_id_alone_gives_no_process() {
    // As in a damaged record whose ProcessID attribute did not survive.
    let event = credential_validation(Some(json!({"#attributes": {"ThreadID": 1208}})));
    assert_eq!(event["class_uid"], 3002);
    assert!(event["actor"].get("process").is_none(), "{event}");
    assert_eq!(event["actor"]["user"]["uid"], "S-1-5-18");
    if let Some(schema) = common::schema() {
        schema.validate(&event).unwrap();
    }
}

#[test]
fn no_execution_gives_no_process() {
    let event = credential_validation(None);
    assert!(event["actor"].get("process").is_none(), "{event}");
    if let Some(schema) = common::schema() {
        schema.validate(&event).unwrap();
    }
}

#[test]
fn no_pid_or_sid_names_provider() {
    let event = credential_validation_by(None, None);
    assert_eq!(
        event["actor"],
        json!({"app_name": "Microsoft-Windows-Security-Auditing"}),
        "{event}"
    );
    if let Some(schema) = common::schema() {
        schema.validate(&event).unwrap();
    }
}

#[test]
fn writing_process_is_kept() {
    let event = credential_validation(Some(
        json!({"#attributes": {"ProcessID": 588, "ThreadID": 1208}}),
    ));
    assert_eq!(event["actor"]["process"]["pid"], 588);
    assert_eq!(event["actor"]["process"]["tid"], 1208);
    if let Some(schema) = common::schema() {
        schema.validate(&event).unwrap();
    }
}
