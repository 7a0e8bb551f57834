//! The validator against the official OCSF 1.8.0 schema, when the data directory is present.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use edr_ocsf::model::{Actor, Device, File, Fingerprint, Process, RegValue, User};
use edr_ocsf::{Class, Event, Metadata, Product, Schema};
use serde_json::json;

fn load_schema() -> Option<Schema> {
    let data = std::env::var_os("EDR_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        });
    let dir = edr_ocsf::schema_dir(&data);
    if !dir.join("dictionary.json").exists() {
        eprintln!(
            "skipped: no OCSF schema at {} (set EDR_DATA_DIR)",
            dir.display()
        );
        return None;
    }
    Some(Schema::load(&dir).expect("schema loads"))
}

fn metadata() -> Metadata {
    let mut metadata = Metadata::new(Product {
        name: "test".to_owned(),
        vendor_name: "EDR".to_owned(),
        version: Some("0.1.0".to_owned()),
    });
    metadata.log_name = Some("test".to_owned());
    metadata
}

fn process_launch() -> Event {
    let mut event = Event::new(Class::ProcessActivity, 1, 1_700_000_000_000, metadata());
    event.device = Some(Device::windows("host.example.org"));
    let mut process = Process {
        pid: Some(42),
        uid: Some("{4a9e6d9c-0000-0000-0000-000000000000}".to_owned()),
        cmd_line: Some("cmd.exe /c whoami".to_owned()),
        file: Some(File::from_path(r"C:\Windows\System32\cmd.exe")),
        user: User::from_parts(None, Some(r"NT AUTHORITY\SYSTEM"), Some("S-1-5-18")),
        ..Process::default()
    };
    process.file.as_mut().unwrap().hashes = Some(vec![Fingerprint::from_label("SHA256", "00ff")]);
    process.set_integrity("System");
    event.actor = Some(Actor {
        process: Some(Process {
            pid: Some(4),
            name: Some("System".to_owned()),
            ..Process::default()
        }),
        ..Actor::default()
    });
    event.process = Some(process);
    event
}

#[test]
fn schema_resolves_emitted_classes() {
    let Some(schema) = load_schema() else { return };
    assert_eq!(schema.version(), "1.8.0");
    for class in Class::ALL {
        assert_eq!(
            schema.class_caption(i64::from(class.uid())),
            Some(class.name()),
            "class {class:?}"
        );
    }
}

#[test]
fn typed_process_launch_validates() {
    let Some(schema) = load_schema() else { return };
    let value = serde_json::to_value(process_launch()).unwrap();
    assert_eq!(value["type_uid"], json!(100701));
    assert_eq!(value["type_name"], json!("Process Activity: Launch"));
    schema.validate(&value).unwrap();
}

#[test]
fn registry_value_set_validates() {
    let Some(schema) = load_schema() else { return };
    let mut event = Event::new(Class::RegistryValueActivity, 2, 1, metadata());
    event.device = Some(Device::windows("h"));
    event.actor = Some(Actor {
        process: Some(Process {
            pid: Some(1),
            ..Process::default()
        }),
        ..Actor::default()
    });
    let mut value = RegValue {
        path: r"HKLM\SOFTWARE\x".to_owned(),
        name: "y".to_owned(),
        ..RegValue::default()
    };
    value.set_type("REG_DWORD");
    event.reg_value = Some(value);
    schema
        .validate(&serde_json::to_value(event).unwrap())
        .unwrap();
}

#[test]
fn missing_required_attribute_rejected() {
    let Some(schema) = load_schema() else { return };
    let mut value = serde_json::to_value(process_launch()).unwrap();
    value.as_object_mut().unwrap().remove("process");
    let error = schema.validate(&value).unwrap_err();
    assert!(
        error
            .violations
            .iter()
            .any(|v| v.path == "process" && v.message.contains("required")),
        "{error}"
    );
}

#[test]
fn undefined_attribute_rejected_outside_unmapped() {
    let Some(schema) = load_schema() else { return };
    let mut value = serde_json::to_value(process_launch()).unwrap();
    value["process"]["favourite_colour"] = json!("blue");
    let error = schema.validate(&value).unwrap_err();
    assert!(
        error
            .violations
            .iter()
            .any(|v| v.path == "process.favourite_colour"),
        "{error}"
    );

    let mut value = serde_json::to_value(process_launch()).unwrap();
    value["unmapped"] = json!({"favourite_colour": "blue"});
    schema.validate(&value).unwrap();
}

#[test]
fn wrong_types_and_enums_rejected() {
    let Some(schema) = load_schema() else { return };
    let cases = [
        ("/time", json!("yesterday"), "time"),
        ("/process/pid", json!("42"), "process.pid"),
        ("/process/integrity_id", json!(42), "process.integrity_id"),
        ("/severity_id", json!(7), "severity_id"),
        (
            "/process/file/hashes",
            json!({"value": "x"}),
            "process.file.hashes",
        ),
    ];
    for (pointer, bad, path) in cases {
        let mut value = serde_json::to_value(process_launch()).unwrap();
        *value.pointer_mut(pointer).unwrap() = bad;
        let error = schema.validate(&value).unwrap_err();
        assert!(
            error.violations.iter().any(|v| v.path == path),
            "{pointer}: {error}"
        );
    }
}

#[test]
fn names_must_match_ids() {
    let Some(schema) = load_schema() else { return };
    let cases = [
        ("/activity_name", json!("Terminate"), "activity_name"),
        ("/class_name", json!("File System Activity"), "class_name"),
        ("/category_name", json!("Findings"), "category_name"),
        ("/severity", json!("High"), "severity"),
        ("/type_uid", json!(100702), "type_uid"),
        ("/process/file/type", json!("Folder"), "process.file.type"),
    ];
    for (pointer, bad, path) in cases {
        let mut value = serde_json::to_value(process_launch()).unwrap();
        *value.pointer_mut(pointer).unwrap() = bad;
        let error = schema.validate(&value).unwrap_err();
        assert!(
            error.violations.iter().any(|v| v.path == path),
            "{pointer}: {error}"
        );
    }
}

#[test]
fn unknown_class_rejected() {
    let Some(schema) = load_schema() else { return };
    let mut value = serde_json::to_value(process_launch()).unwrap();
    value["class_uid"] = json!(1234);
    assert!(schema.validate(&value).is_err());
}

/// Windows ids are unsigned 32-bit; OCSF's `integer_t` is signed. An id above `i32::MAX` (the
/// `-1` of "no process", or a damaged record) is written with the same bits as a negative
/// number, and the event stays valid.
#[test]
fn ids_above_i32_max_stay_valid() {
    let mut event = process_launch();
    let process = event.process.as_mut().unwrap();
    process.pid = Some(u32::MAX);
    process.tid = Some(2_399_147_916);
    let value = serde_json::to_value(&event).unwrap();
    assert_eq!(value["process"]["pid"], json!(-1));
    assert_eq!(value["process"]["tid"], json!(-1_895_819_380));
    if let Some(schema) = load_schema() {
        schema.validate(&value).unwrap();
    }
}
