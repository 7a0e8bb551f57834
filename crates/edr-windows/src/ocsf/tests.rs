//! Mapper behaviour that the recorded traces do not exercise: pid reuse, events that arrive
//! before their process, script block reassembly, DNS answers and registry key names. Every
//! event produced is checked against the OCSF schema when the schema is present.

use std::net::{IpAddr, Ipv4Addr};

use edr_etw::{FileTime, Guid};
use serde_json::Value;

use super::*;
use crate::events::*;

/// FILETIME of 2024-01-01T00:00:00Z.
const BASE: i64 = 133_485_408_000_000_000;

fn at_ms(ms: i64) -> FileTime {
    FileTime(BASE + ms * 10_000)
}

fn header(provider: Guid, event_id: u16, ms: i64, pid: u32) -> EventHeader {
    EventHeader {
        provider,
        event_id,
        opcode: 0,
        version: 0,
        timestamp: at_ms(ms),
        header_process_id: pid,
        header_thread_id: 1,
        processor: 0,
    }
}

fn start(pid: u32, parent: u32, image: &str, ms: i64) -> DecodedEvent {
    DecodedEvent {
        header: header(providers::KERNEL_PROCESS, 1, ms, parent),
        event: RawEvent::Process(ProcessEvent {
            lifecycle: Lifecycle::Start,
            process_id: pid,
            parent_process_id: Some(parent),
            unique_process_key: None,
            sequence_number: None,
            parent_sequence_number: None,
            session_id: Some(1),
            exit_code: None,
            flags: None,
            user_sid: Some("S-1-5-18".to_owned()),
            image_name: image.to_owned(),
            command_line: Some(format!("{image} /run")),
            package_full_name: None,
            application_id: None,
            create_time: Some(at_ms(ms)),
            exit_time: None,
            directory_table_base: None,
        }),
    }
}

fn stop(pid: u32, ms: i64) -> DecodedEvent {
    let mut event = start(pid, 0, "", ms);
    if let RawEvent::Process(p) = &mut event.event {
        p.lifecycle = Lifecycle::Stop;
        p.parent_process_id = None;
        p.exit_time = Some(at_ms(ms));
        p.exit_code = Some(0);
    }
    event.header.event_id = 2;
    event
}

fn connect(pid: u32, ms: i64) -> DecodedEvent {
    DecodedEvent {
        header: header(providers::KERNEL_NETWORK, 12, ms, pid),
        event: RawEvent::Network(NetworkEvent {
            protocol: Protocol::Tcp,
            operation: NetworkOperation::Connect,
            process_id: pid,
            size: 0,
            destination_address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            destination_port: 443,
            source_address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
            source_port: 50_000,
            connection_id: None,
            sequence_number: None,
            mss: None,
        }),
    }
}

fn mapper() -> EtwMapper {
    EtwMapper::new(TraceContext {
        host_key: "boot-test".to_owned(),
        trace_start_ms: 0,
        hostname: Some("host1".to_owned()),
    })
}

/// Serialises `events`, validating each against the schema when it is available.
fn json(events: &[Box<Event>]) -> Vec<Value> {
    let data = std::env::var_os("EDR_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        });
    let schema = edr_ocsf::Schema::load(&edr_ocsf::schema_dir(&data)).ok();
    events
        .iter()
        .map(|event| {
            let value = serde_json::to_value(event).unwrap();
            if let Some(schema) = &schema
                && let Err(error) = schema.validate(&value)
            {
                panic!("invalid event: {error}\n{value}");
            }
            value
        })
        .collect()
}

#[test]
fn pid_reuse_gives_each_generation_its_process() {
    let mut mapper = mapper();
    let mut out = Vec::new();
    mapper.map(start(100, 4, r"C:\a.exe", 1_000), &mut out);
    mapper.map(connect(100, 1_500), &mut out);
    mapper.map(stop(100, 2_000), &mut out);
    mapper.map(start(100, 4, r"C:\b.exe", 3_000), &mut out);
    mapper.map(connect(100, 3_500), &mut out);
    let events = json(&out);

    let connects: Vec<&Value> = events.iter().filter(|e| e["class_uid"] == 4001).collect();
    assert_eq!(connects.len(), 2);
    assert_eq!(
        connects[0].pointer("/actor/process/path"),
        Some(&Value::from(r"C:\a.exe"))
    );
    assert_eq!(
        connects[1].pointer("/actor/process/path"),
        Some(&Value::from(r"C:\b.exe"))
    );
    let first_uid = connects[0].pointer("/actor/process/uid").unwrap();
    let second_uid = connects[1].pointer("/actor/process/uid").unwrap();
    assert_ne!(first_uid, second_uid);
    assert_eq!(
        first_uid,
        &Value::from(edr_ocsf::process_cache::derive_process_uid(
            "boot-test",
            100,
            1_704_067_201_000
        ))
    );
}

#[test]
fn event_before_process_waits_for_start() {
    let mut mapper = mapper();
    let mut out = Vec::new();
    // The connect is flushed from another CPU's buffer before the start that precedes it.
    mapper.map(connect(200, 1_010), &mut out);
    assert!(out.is_empty(), "held until the start");
    mapper.map(start(200, 4, r"C:\late.exe", 1_000), &mut out);
    let events = json(&out);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["class_uid"], 1007);
    assert_eq!(
        events[1].pointer("/actor/process/path"),
        Some(&Value::from(r"C:\late.exe"))
    );
    assert_eq!(mapper.stats().held, 1);
    assert_eq!(mapper.stats().with_process, 1);
}

#[test]
fn held_event_expires_without_process() {
    let mut mapper = mapper();
    let mut out = Vec::new();
    mapper.map(connect(300, 1_000), &mut out);
    mapper.map(connect(301, 1_000 + PENDING_MAX_AGE_MS + 1), &mut out);
    assert_eq!(out.len(), 1, "the first connect expired");
    mapper.finish(&mut out);
    let events = json(&out);
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].pointer("/actor/process/pid"),
        Some(&Value::from(300))
    );
    assert_eq!(events[0].pointer("/actor/process/path"), None);
    assert_eq!(mapper.stats().without_process, 2);
}

#[test]
fn rundown_at_end_names_image_process() {
    let mut mapper = mapper();
    let mut out = Vec::new();
    // The trace holds only the rundown at its end, which names the process before its images.
    let mut rundown = start(
        400,
        4,
        r"\Device\HarddiskVolume3\Windows\System32\smss.exe",
        5_000,
    );
    rundown.header.event_id = 4;
    if let RawEvent::Process(process) = &mut rundown.event {
        process.lifecycle = Lifecycle::RundownEnd;
        process.create_time = None;
    }
    mapper.map(rundown, &mut out);
    let image = DecodedEvent {
        header: header(providers::KERNEL_IMAGE_GROUP, 4, 5_001, 400),
        event: RawEvent::Image(ImageEvent {
            lifecycle: Lifecycle::RundownEnd,
            process_id: Some(400),
            image_base: 0x7ff7_c6ef_0000,
            image_size: 225_280,
            image_checksum: None,
            time_date_stamp: None,
            default_base: None,
            signature_level: None,
            signature_type: None,
            file_name: r"\Device\HarddiskVolume3\Windows\System32\ntdll.dll".to_owned(),
        }),
    };
    mapper.map(image, &mut out);
    mapper.finish(&mut out);
    let events = json(&out);

    let modules: Vec<&Value> = events.iter().filter(|e| e["class_uid"] == 1005).collect();
    assert_eq!(modules.len(), 1);
    assert_eq!(
        modules[0].pointer("/actor/process/name"),
        Some(&Value::from("smss.exe"))
    );
    assert_eq!(mapper.stats().with_process, 1);
}

#[test]
fn launch_names_parent_as_actor() {
    let mut mapper = mapper();
    let mut out = Vec::new();
    mapper.map(start(10, 4, r"C:\Windows\explorer.exe", 100), &mut out);
    mapper.map(start(11, 10, r"C:\Windows\System32\cmd.exe", 200), &mut out);
    let events = json(&out);
    let child = &events[1];
    assert_eq!(
        child.pointer("/process/cmd_line"),
        Some(&Value::from(r"C:\Windows\System32\cmd.exe /run"))
    );
    assert_eq!(
        child.pointer("/process/parent_process/name"),
        Some(&Value::from("explorer.exe"))
    );
    assert_eq!(
        child.pointer("/actor/process/name"),
        Some(&Value::from("explorer.exe"))
    );
    assert_eq!(
        child.pointer("/process/user/uid"),
        Some(&Value::from("S-1-5-18"))
    );
}

#[test]
fn script_block_parts_reassemble() {
    let mut mapper = mapper();
    let mut out = Vec::new();
    let part = |number: i32, text: &str| DecodedEvent {
        header: header(providers::POWERSHELL, 4104, 10 + i64::from(number), 50),
        event: RawEvent::ScriptBlock(ScriptBlockEvent {
            message_number: number,
            message_total: 2,
            script_block_text: text.to_owned(),
            script_block_id: "b1".to_owned(),
            path: String::new(),
        }),
    };
    mapper.map(part(2, "Write-Host 2"), &mut out);
    assert!(out.is_empty());
    mapper.map(part(1, "Write-Host 1; "), &mut out);
    mapper.finish(&mut out);
    let events = json(&out);
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].pointer("/script/script_content/value"),
        Some(&Value::from("Write-Host 1; Write-Host 2"))
    );
    assert_eq!(events[0].pointer("/script/uid"), Some(&Value::from("b1")));
}

#[test]
fn dns_query_completed_has_answers() {
    let mut mapper = mapper();
    let mut out = Vec::new();
    mapper.map(
        DecodedEvent {
            header: header(providers::DNS_CLIENT, 3008, 10, 60),
            event: RawEvent::Dns(DnsEvent {
                operation: DnsOperation::QueryCompleted,
                query_name: Some("www.example.com".to_owned()),
                query_type: Some(1),
                query_options: None,
                status: Some(0),
                results: Some("type:  5 edge.example.net;::ffff:192.0.2.7;".to_owned()),
                answers: vec![
                    "type:  5 edge.example.net".to_owned(),
                    "::ffff:192.0.2.7".to_owned(),
                ],
                server_list: None,
                interface_index: None,
                interface: None,
                server_address: None,
            }),
        },
        &mut out,
    );
    mapper.finish(&mut out);
    let events = json(&out);
    let dns = &events[0];
    assert_eq!(dns["class_uid"], 4003);
    assert_eq!(
        dns.pointer("/query/hostname"),
        Some(&Value::from("www.example.com"))
    );
    assert_eq!(dns.pointer("/query/type"), Some(&Value::from("A")));
    assert_eq!(dns.pointer("/answers/0/type"), Some(&Value::from("CNAME")));
    assert_eq!(
        dns.pointer("/answers/0/rdata"),
        Some(&Value::from("edge.example.net"))
    );
    assert_eq!(
        dns.pointer("/answers/1/rdata"),
        Some(&Value::from("192.0.2.7"))
    );
    assert_eq!(dns.pointer("/rcode_id"), Some(&Value::from(0)));
}

#[test]
fn kernel_registry_value_uses_kcb_name() {
    let mut mapper = mapper();
    let mut out = Vec::new();
    let registry = |operation, key_object, name: &str| DecodedEvent {
        header: header(providers::KERNEL_REGISTRY_GROUP, 0, 10, 70),
        event: RawEvent::Registry(RegistryEvent {
            operation,
            status: 0,
            key_object,
            key_name: name.to_owned(),
            value_name: None,
            relative_name: None,
            value_type: Some(1),
            data_size: Some(8),
            captured_data: None,
        }),
    };
    mapper.map(
        registry(
            RegistryOperation::KcbCreate,
            0xfe00,
            r"\REGISTRY\MACHINE\SOFTWARE\Run",
        ),
        &mut out,
    );
    assert!(out.is_empty());
    mapper.map(
        registry(RegistryOperation::SetValue, 0xfe00, "Updater"),
        &mut out,
    );
    mapper.finish(&mut out);
    let events = json(&out);
    assert_eq!(events[0]["class_uid"], 201_002);
    assert_eq!(
        events[0].pointer("/reg_value/path"),
        Some(&Value::from(r"\REGISTRY\MACHINE\SOFTWARE\Run"))
    );
    assert_eq!(
        events[0].pointer("/reg_value/name"),
        Some(&Value::from("Updater"))
    );
    assert_eq!(
        events[0].pointer("/reg_value/type"),
        Some(&Value::from("REG_SZ"))
    );
    assert_eq!(mapper.stats().filtered.len(), 1);
}

/// A trace with both the NT Kernel Logger and Microsoft-Windows-Kernel-Process reports each
/// start and exit twice, with start times a few ms apart: both reports name one process.
#[test]
fn start_reported_by_two_providers_has_one_uid() {
    let mut mapper = mapper();
    let mut out = Vec::new();
    // Kernel-Process: the full image path and the create time.
    mapper.map(
        start(300, 4, r"\Device\HarddiskVolume2\Tools\Test.x86.exe", 1_000),
        &mut out,
    );
    // NT Kernel Logger: the file name only, stamped 12 ms later, with the command line.
    let mut logger = start(300, 4, "Test.x86.exe", 1_012);
    logger.header.provider = providers::KERNEL_PROCESS_GROUP;
    if let RawEvent::Process(p) = &mut logger.event {
        p.create_time = None;
    }
    mapper.map(logger, &mut out);
    mapper.map(connect(300, 1_500), &mut out);
    mapper.map(stop(300, 2_000), &mut out);
    let mut logger_stop = stop(300, 2_003);
    logger_stop.header.provider = providers::KERNEL_PROCESS_GROUP;
    mapper.map(logger_stop, &mut out);
    // A process of another image that gets the pid later is a new process.
    mapper.map(start(300, 4, r"C:\other.exe", 2_500), &mut out);
    let events = json(&out);

    let uid_of = |e: &Value| e.pointer("/process/uid").cloned();
    let launches: Vec<&Value> = events
        .iter()
        .filter(|e| e["class_uid"] == 1007 && e["activity_id"] == 1)
        .collect();
    assert_eq!(launches.len(), 3);
    assert_eq!(uid_of(launches[0]), uid_of(launches[1]), "{launches:?}");
    assert_ne!(uid_of(launches[0]), uid_of(launches[2]));
    let uid = uid_of(launches[0]).unwrap();
    let exits: Vec<&Value> = events
        .iter()
        .filter(|e| e["class_uid"] == 1007 && e["activity_id"] == 2)
        .collect();
    assert_eq!(exits.len(), 2);
    for exit in exits {
        assert_eq!(exit.pointer("/process/uid"), Some(&uid), "{exit}");
    }
    let connect = events.iter().find(|e| e["class_uid"] == 4001).unwrap();
    assert_eq!(connect.pointer("/actor/process/uid"), Some(&uid));
    // The full path of the first report is kept.
    assert_eq!(
        connect.pointer("/actor/process/path"),
        Some(&Value::from(r"\Device\HarddiskVolume2\Tools\Test.x86.exe"))
    );
}
