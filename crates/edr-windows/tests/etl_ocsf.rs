//! ETL files to OCSF through the library pipeline: every event validates against OCSF 1.8.0,
//! real values from the recorded traces come through, and file, network and module events get
//! their process from the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use edr_ocsf::Schema;
use edr_windows::pipeline::{self, FileCounts, InputFormat};
use serde_json::Value;

fn data_dir() -> PathBuf {
    std::env::var_os("EDR_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        })
}

/// Converts `relative` under the ETL data folder; `None` (with a printed reason) when absent.
fn convert(relative: &str) -> Option<(Vec<Value>, FileCounts)> {
    let data = data_dir();
    let path = data.join("etl").join(relative);
    let schema_dir = edr_ocsf::schema_dir(&data);
    if !path.exists() || !schema_dir.exists() {
        eprintln!(
            "skipped: {} or the OCSF schema is missing (set EDR_DATA_DIR)",
            path.display()
        );
        return None;
    }
    let schema = Schema::load(&schema_dir).unwrap();
    let mut events = Vec::new();
    let counts = pipeline::convert_file(&path, |event| {
        events.push(serde_json::to_value(&event).unwrap());
    })
    .unwrap();
    for (index, event) in events.iter().enumerate() {
        if let Err(error) = schema.validate(event) {
            panic!("{relative}: invalid event {index}: {error}\n{event}");
        }
    }
    assert_eq!(counts.events, events.len() as u64);
    Some((events, counts))
}

fn find(events: &[Value], predicate: impl Fn(&Value) -> bool) -> Option<&Value> {
    events.iter().find(|event| predicate(event))
}

fn str_at<'a>(event: &'a Value, pointer: &str) -> Option<&'a str> {
    event.pointer(pointer).and_then(Value::as_str)
}

#[test]
fn format_detected_by_content() {
    let data = data_dir();
    let etl = data.join("etl/krabsetw_MIT/Process.etl");
    if !etl.exists() {
        eprintln!("skipped: {} is missing (set EDR_DATA_DIR)", etl.display());
        return;
    }
    assert_eq!(
        pipeline::detect_format(&etl).unwrap(),
        Some(InputFormat::Etl)
    );
    let dir = tempfile::tempdir().unwrap();
    let renamed = dir.path().join("trace.bin");
    std::fs::copy(&etl, &renamed).unwrap();
    assert_eq!(
        pipeline::detect_format(&renamed).unwrap(),
        Some(InputFormat::Etl)
    );
    let text = dir.path().join("notes.etl");
    std::fs::write(&text, b"not a trace at all, only text").unwrap();
    assert_eq!(pipeline::detect_format(&text).unwrap(), None);
    assert!(pipeline::convert_file(&text, |_| {}).is_err());
}

#[test]
fn every_etl_file_validates() {
    let root = data_dir().join("etl");
    if !root.exists() {
        eprintln!("skipped: {} is missing (set EDR_DATA_DIR)", root.display());
        return;
    }
    let mut files = Vec::new();
    collect(&root, &mut files);
    let mut total = FileCounts::default();
    for file in &files {
        let relative = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if pipeline::detect_format(file).unwrap() != Some(InputFormat::Etl) {
            continue;
        }
        let (_, counts) = convert(&relative).unwrap();
        total.merge(&counts);
    }
    eprintln!("{total:#?}");
    assert!(total.events > 10_000, "{} events", total.events);
    assert!(!total.filtered.is_empty());
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}

#[test]
fn process_start_has_image_and_parent() {
    let Some((events, counts)) = convert("microsoft-tx_Apache-2.0/Traces/Process.etl") else {
        return;
    };
    let start = find(&events, |e| {
        e["class_uid"] == 1007
            && e["activity_id"] == 1
            && e.pointer("/process/pid") == Some(&Value::from(5864))
    })
    .expect("devenv.exe start");
    assert_eq!(
        str_at(start, "/process/path"),
        Some(
            r"\Device\HarddiskVolume2\Program Files (x86)\Microsoft Visual Studio 10.0\Common7\IDE\devenv.exe"
        )
    );
    assert_eq!(
        start.pointer("/process/parent_process/pid"),
        Some(&Value::from(3324))
    );
    assert_eq!(
        start.pointer("/actor/process/pid"),
        Some(&Value::from(3324))
    );
    let uid = str_at(start, "/process/uid").expect("derived uid");

    // Images loaded into the new process carry it, with the same uid.
    let module = find(&events, |e| {
        e["class_uid"] == 1005 && e.pointer("/actor/process/pid") == Some(&Value::from(5864))
    })
    .expect("module load in devenv.exe");
    assert_eq!(str_at(module, "/actor/process/uid"), Some(uid));
    assert_eq!(str_at(module, "/actor/process/name"), Some("devenv.exe"));
    // Measured: 2103 of 2268 module events find their process (the trace has no rundown, so
    // processes started before it stay unknown).
    assert!(
        counts.with_process * 100 >= 90 * (counts.with_process + counts.without_process),
        "{} of {}",
        counts.with_process,
        counts.with_process + counts.without_process
    );
}

#[test]
fn tcp_traffic_has_endpoints() {
    let Some((events, _)) = convert("microsoft-tx_Apache-2.0/Traces/KernelNetwork.etl") else {
        return;
    };
    let first = find(&events, |e| e["class_uid"] == 4001).expect("network event");
    assert_eq!(str_at(first, "/activity_name"), Some("Traffic"));
    assert_eq!(
        str_at(first, "/src_endpoint/ip"),
        Some("2001:4898:0:fff:0:5efe:a79:6a76")
    );
    assert_eq!(
        first.pointer("/src_endpoint/port"),
        Some(&Value::from(3389))
    );
    assert_eq!(
        str_at(first, "/dst_endpoint/ip"),
        Some("2001:4898:0:fff:0:5efe:af6:60d")
    );
    assert_eq!(
        first.pointer("/dst_endpoint/port"),
        Some(&Value::from(24485))
    );
    assert_eq!(str_at(first, "/connection_info/protocol_name"), Some("tcp"));
    assert_eq!(
        first.pointer("/actor/process/pid"),
        Some(&Value::from(2432))
    );
}

#[test]
fn amsi_scan_keeps_content() {
    let Some((events, _)) = convert("airbus-etl-parser_Apache-2.0/tests/example/AMSITrace.etl")
    else {
        return;
    };
    // Events are mapped in time order, so this scan, the first in the file, is not the first
    // in the output.
    let scan = find(&events, |e| {
        e["class_uid"] == 1009
            && str_at(e, "/script/script_content/value")
                .is_some_and(|c| c.starts_with("if ($this.Name.IndexOf('-') -lt 0)"))
    })
    .expect("AMSI scan of the first script block");
    assert_eq!(str_at(scan, "/script/type"), Some("PowerShell"));
    assert_eq!(
        str_at(scan, "/actor/app_name"),
        Some(r"PowerShell_C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe_10.0.18362.1")
    );
    assert_eq!(
        scan.pointer("/actor/process/pid"),
        Some(&Value::from(29868))
    );
}

#[test]
fn powershell_pipeline_is_script_activity() {
    let Some((events, counts)) = convert("krabsetw_MIT/examples/NativeExamples/powershell.etl")
    else {
        return;
    };
    let pipeline = find(&events, |e| {
        e["class_uid"] == 1009
            && str_at(e, "/metadata/event_code") == Some("7937")
            && str_at(e, "/script/script_content/value") == Some("Script execution is Started.\r\n")
    })
    .expect("pipeline event");
    assert_eq!(
        str_at(pipeline, "/unmapped/HostApplication"),
        Some(r"C:\WINDOWS\System32\WindowsPowerShell\v1.0\powershell.exe")
    );
    assert_eq!(str_at(pipeline, "/actor/user/name"), Some("aaaaa"));
    assert_eq!(counts.per_class.get("Script Activity"), Some(&101));
    // Engine and console events have no mapper and stay as Base Event, counted.
    assert_eq!(
        counts
            .unmapped
            .get(&("Microsoft-Windows-PowerShell".to_owned(), 40961)),
        Some(&1)
    );
}

/// The kernel writes some image loads under the Process group's hook (0x030A). They are image
/// loads, with the Image event's payload, and must become Module Activity: Load.
#[test]
fn image_loads_under_process_hook_are_module_loads() {
    let Some((events, counts)) =
        convert("airbus-etl-parser_Apache-2.0/tests/example/ShutdownPerfDiagLogger.etl")
    else {
        return;
    };
    let process_opcode_10 = counts
        .unmapped
        .iter()
        .filter(|((source, id), _)| source.contains("Process") && *id == 10)
        .map(|(_, count)| count)
        .sum::<u64>();
    assert_eq!(process_opcode_10, 0, "{:?}", counts.unmapped);
    let loads = events
        .iter()
        .filter(|e| e["class_uid"] == 1005 && e["activity_id"] == 1)
        .count();
    // 2,145 image rundowns (Image opcode 3 at the start, 4 at the end) are state, not loads:
    // the loads are the 72 records of hook 0x030A.
    assert_eq!(loads, 72, "{:?}", counts.per_class);
    let load = find(&events, |e| e["class_uid"] == 1005 && e["activity_id"] == 1).unwrap();
    assert!(
        str_at(load, "/module/file/path").is_some_and(|p| p.contains('\\')),
        "{load}"
    );
    assert!(load.pointer("/actor/process/pid").is_some(), "{load}");
}
