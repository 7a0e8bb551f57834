//! Decoders against recorded traces: field values agree with PerfView's decodings, and the
//! kernel, network, file, DNS, PowerShell and AMSI traces yield plausible typed events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use edr_etw::EtlReader;
use edr_windows::events::*;

fn data_dir() -> PathBuf {
    match std::env::var_os("EDR_DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    }
}

/// Returns a trace under `<data>/etl`, or `None` after printing why the test is skipped.
fn trace(relative: &str) -> Option<PathBuf> {
    let path = data_dir().join("etl").join(relative);
    if path.is_file() {
        Some(path)
    } else {
        println!(
            "skipped: recorded trace {} is absent (set EDR_DATA_DIR)",
            path.display()
        );
        None
    }
}

/// A decoded event with its time in milliseconds from the session start.
struct Timed {
    relative_ms: f64,
    decoded: DecodedEvent,
}

fn decode_all(path: &Path) -> (Vec<Timed>, DecodeStats) {
    let mut reader = EtlReader::open(path).unwrap();
    let clock = *reader.clock();
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    reader
        .for_each_record(|record| {
            if let Some(decoded) = decoder.decode(record) {
                out.push(Timed {
                    relative_ms: clock.relative_ms(record.timestamp_raw),
                    decoded,
                });
            }
        })
        .unwrap();
    assert_eq!(reader.stats().skip_count, 0);
    (out, decoder.stats().clone())
}

const NET: &str = "perfview_MIT/src/TraceEvent/TraceEvent.Tests/inputs/net.4.5.2.x64.etl.zip-unzipped/net.4.5.2.x64.etl";
const NET_BASELINE: &str =
    "perfview_MIT/src/TraceEvent/TraceEvent.Tests/inputs/net.4.5.2.x64.baseline.txt";

/// One baseline line: time, event name and `Name=value` fields.
struct BaselineEvent {
    relative_ms: f64,
    name: String,
    fields: BTreeMap<String, String>,
}

fn parse_baseline(text: &str) -> Vec<BaselineEvent> {
    let mut events = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("EVENT ") else {
            continue;
        };
        let (time, rest) = rest.split_once(": ").unwrap();
        let relative_ms: f64 = time.replace(',', "").parse().unwrap();
        let (name, fields_text) = rest.split_once(" PID=").unwrap();
        let fields_text = format!("PID={fields_text}");
        let fields = fields_text
            .split("; ")
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim_end_matches(';').to_owned()))
            .collect();
        events.push(BaselineEvent {
            relative_ms,
            name: name.to_owned(),
            fields,
        });
    }
    events
}

/// PerfView truncates long values to 20 characters followed by `...`.
fn text_matches(expected: &str, actual: &str) -> bool {
    match expected.strip_suffix("...") {
        Some(prefix) => actual.starts_with(prefix),
        None => expected == actual,
    }
}

fn number(text: &str) -> i64 {
    let clean = text.replace(',', "");
    match clean.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap() as i64,
        None => clean.parse().unwrap(),
    }
}

/// Strips a drive letter, as PerfView maps `\Device\HarddiskVolumeN` to drive letters, and the
/// leading `\\` it writes for `\Device\Mup`.
fn path_tail(path: &str) -> &str {
    if let Some(unc) = path.strip_prefix("\\\\") {
        return unc;
    }
    path.get(2..)
        .filter(|_| path.as_bytes().get(1) == Some(&b':'))
        .unwrap_or(path)
}

/// Checks one baseline event against a decoded event; `None` when the kinds differ.
fn compare(expected: &BaselineEvent, actual: &RawEvent) -> Option<Result<(), String>> {
    let f = |name: &str| expected.fields.get(name).map(String::as_str).unwrap_or("");
    let mismatch = |what: &str, actual: String| {
        Err(format!(
            "{what}: expected {:?}, decoded {actual:?}",
            f(what)
        ))
    };
    match (expected.name.as_str(), actual) {
        (
            "Windows Kernel/Process/DCStart"
            | "Windows Kernel/Process/DCStop"
            | "Windows Kernel/Process/Start"
            | "Windows Kernel/Process/Stop",
            RawEvent::Process(p),
        ) => {
            if number(f("ProcessID")) != i64::from(p.process_id) {
                return None;
            }
            Some(
                if number(f("ParentID")) != i64::from(p.parent_process_id.unwrap()) {
                    mismatch("ParentID", format!("{:?}", p.parent_process_id))
                } else if !text_matches(f("ImageFileName"), &p.image_name) {
                    mismatch("ImageFileName", p.image_name.clone())
                } else if number(f("UniqueProcessKey")) as u64 != p.unique_process_key.unwrap() {
                    mismatch(
                        "UniqueProcessKey",
                        format!("{:#x}", p.unique_process_key.unwrap()),
                    )
                } else if !text_matches(f("CommandLine"), p.command_line.as_deref().unwrap()) {
                    mismatch("CommandLine", p.command_line.clone().unwrap())
                } else if number(f("ExitStatus")) != i64::from(p.exit_code.unwrap()) {
                    mismatch("ExitStatus", format!("{:?}", p.exit_code))
                } else {
                    Ok(())
                },
            )
        }
        (
            "Windows Kernel/Image/DCStart"
            | "Windows Kernel/Image/Load"
            | "Windows Kernel/Image/Unload"
            | "Windows Kernel/Image/DCStop",
            RawEvent::Image(i),
        ) => {
            if number(f("ImageBase")) as u64 != i.image_base {
                return None;
            }
            let tail = path_tail(f("FileName"));
            let tail = tail.strip_suffix("...").unwrap_or(tail);
            Some(if number(f("ImageSize")) as u64 != i.image_size {
                mismatch("ImageSize", i.image_size.to_string())
            } else if number(f("ImageChecksum")) != i64::from(i.image_checksum.unwrap()) {
                mismatch("ImageChecksum", format!("{:?}", i.image_checksum))
            } else if number(f("TimeDateStamp")) != i64::from(i.time_date_stamp.unwrap()) {
                mismatch("TimeDateStamp", format!("{:?}", i.time_date_stamp))
            } else if !i
                .file_name
                .replacen("\\SystemRoot\\", "\\Windows\\", 1)
                .to_ascii_lowercase()
                .contains(&tail.to_ascii_lowercase())
            {
                mismatch("FileName", i.file_name.clone())
            } else {
                Ok(())
            })
        }
        ("Windows Kernel/Thread/Start" | "Windows Kernel/Thread/DCStart", RawEvent::Thread(t)) => {
            if number(f("StackBase")) as u64 != t.stack_base.unwrap() {
                return None;
            }
            Some(
                if number(f("Win32StartAddr")) as u64 != t.win32_start_address.unwrap() {
                    mismatch("Win32StartAddr", format!("{:?}", t.win32_start_address))
                } else if number(f("TebBase")) as u64 != t.teb_base.unwrap() {
                    mismatch("TebBase", format!("{:?}", t.teb_base))
                } else {
                    Ok(())
                },
            )
        }
        (name, RawEvent::Network(n)) if name.starts_with("Windows Kernel/TcpIp/") => {
            if number(f("sport")) != i64::from(n.source_port)
                || number(f("size")) != i64::from(n.size)
            {
                return None;
            }
            Some(if number(f("dport")) != i64::from(n.destination_port) {
                mismatch("dport", n.destination_port.to_string())
            } else if !text_matches(f("daddr"), &n.destination_address.to_string()) {
                mismatch("daddr", n.destination_address.to_string())
            } else if !text_matches(f("saddr"), &n.source_address.to_string()) {
                mismatch("saddr", n.source_address.to_string())
            } else {
                Ok(())
            })
        }
        ("Microsoft-Windows-Kernel-File/Create", RawEvent::File(file)) => {
            if number(f("FileObject")) as u64 != file.file_object.unwrap() {
                return None;
            }
            Some(if number(f("IrpPtr")) as u64 != file.irp.unwrap() {
                mismatch("IrpPtr", format!("{:?}", file.irp))
            } else if !file.path.as_deref().unwrap().to_ascii_lowercase().contains(
                &path_tail(f("FileName"))
                    .trim_end_matches("...")
                    .to_ascii_lowercase(),
            ) {
                mismatch("FileName", format!("{:?}", file.path))
            } else {
                Ok(())
            })
        }
        ("Microsoft-Windows-DNS-Client/DnsServerForInterface", RawEvent::Dns(d)) => {
            let address = d.server_address.clone().unwrap_or_default();
            if !text_matches(f("Address"), &address) {
                return None;
            }
            Some(if d.interface.as_deref() != Some(f("Interface")) {
                mismatch("Interface", format!("{:?}", d.interface))
            } else {
                Ok(())
            })
        }
        _ => None,
    }
}

#[test]
fn net_trace_agrees_with_perfview_baseline() {
    let (Some(path), Some(baseline_path)) = (trace(NET), trace(NET_BASELINE)) else {
        return;
    };
    let baseline = parse_baseline(&std::fs::read_to_string(baseline_path).unwrap());
    let (decoded, stats) = decode_all(&path);
    assert_eq!(stats.undecodable_total(), 0, "{:?}", stats.undecodable);

    let covered = [
        "Windows Kernel/Process/DCStart",
        "Windows Kernel/Image/DCStart",
        "Windows Kernel/Thread/Start",
        "Windows Kernel/TcpIp/",
        "Microsoft-Windows-Kernel-File/Create",
        "Microsoft-Windows-DNS-Client/DnsServerForInterface",
    ];
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    for expected in &baseline {
        if !covered.iter().any(|c| expected.name.starts_with(c)) {
            continue;
        }
        // Candidates: decoded events within a millisecond of the baseline time.
        let candidates: Vec<&Timed> = decoded
            .iter()
            .filter(|t| (t.relative_ms - expected.relative_ms).abs() < 1.0)
            .collect();
        let outcome = candidates
            .iter()
            .find_map(|t| compare(expected, &t.decoded.event));
        match outcome {
            Some(Ok(())) => *checked.entry(expected.name.clone()).or_default() += 1,
            Some(Err(message)) => panic!(
                "{} at {} ms: {message}",
                expected.name, expected.relative_ms
            ),
            None => panic!(
                "{} at {} ms {:?}: no decoded event of that kind and key among {} candidates",
                expected.name,
                expected.relative_ms,
                expected.fields,
                candidates.len()
            ),
        }
    }
    println!("checked against the baseline: {checked:?}");
    assert!(
        checked
            .get("Windows Kernel/Process/DCStart")
            .copied()
            .unwrap_or(0)
            >= 3,
        "{checked:?}"
    );
    assert!(
        checked
            .get("Windows Kernel/Image/DCStart")
            .copied()
            .unwrap_or(0)
            >= 5,
        "{checked:?}"
    );
    assert!(
        checked
            .get("Microsoft-Windows-Kernel-File/Create")
            .copied()
            .unwrap_or(0)
            >= 2,
        "{checked:?}"
    );
    assert!(
        checked
            .get("Microsoft-Windows-DNS-Client/DnsServerForInterface")
            .copied()
            .unwrap_or(0)
            == 4,
        "{checked:?}"
    );
    assert!(
        checked
            .keys()
            .any(|k| k.starts_with("Windows Kernel/TcpIp/")),
        "{checked:?}"
    );
    assert!(
        checked.contains_key("Windows Kernel/Thread/Start"),
        "{checked:?}"
    );
}

/// Process ids known to a kernel trace: process starts and rundowns.
fn process_table(events: &[Timed]) -> HashSet<u32> {
    events
        .iter()
        .filter_map(|t| match &t.decoded.event {
            RawEvent::Process(p) => Some(p.process_id),
            _ => None,
        })
        .collect()
}

#[test]
fn kernel_traces_reference_known_processes() {
    for relative in [
        "airbus-etl-parser_Apache-2.0/tests/example/ShutdownPerfDiagLogger.etl",
        NET,
    ] {
        let Some(path) = trace(relative) else { return };
        let (events, stats) = decode_all(&path);
        assert_eq!(
            stats.undecodable_total(),
            0,
            "{relative}: {:?}",
            stats.undecodable
        );
        let table = process_table(&events);
        assert!(table.len() > 20, "{relative}: {} processes", table.len());

        let mut images = 0;
        let mut threads = 0;
        for t in &events {
            match &t.decoded.event {
                RawEvent::Image(i) => {
                    images += 1;
                    let pid = i.process_id.unwrap();
                    assert!(
                        pid == 0 || table.contains(&pid),
                        "{relative}: image {} in unknown pid {pid}",
                        i.file_name
                    );
                    assert!(i.image_size > 0, "{relative}: {i:?}");
                    assert!(i.image_base > 0, "{relative}: {i:?}");
                    assert!(i.file_name.contains('\\'), "{relative}: {i:?}");
                }
                RawEvent::Thread(th) => {
                    threads += 1;
                    assert!(
                        th.process_id == 0 || table.contains(&th.process_id),
                        "{relative}: thread {} in unknown pid {}",
                        th.thread_id,
                        th.process_id
                    );
                }
                RawEvent::Process(p) => {
                    assert!(!p.image_name.is_empty(), "{relative}: {p:?}");
                    if t.decoded.header.provider == providers::KERNEL_PROCESS_GROUP {
                        assert!(p.unique_process_key.unwrap() > 0, "{relative}: {p:?}");
                    }
                }
                _ => {}
            }
        }
        assert!(
            images > 1000 && threads > 500,
            "{relative}: {images} images, {threads} threads"
        );
    }
}

#[test]
fn manifest_process_trace_decodes() {
    let Some(path) = trace("microsoft-tx_Apache-2.0/Traces/Process.etl") else {
        return;
    };
    let (events, stats) = decode_all(&path);
    assert_eq!(stats.undecodable_total(), 0, "{:?}", stats.undecodable);
    let writers: HashSet<u32> = events
        .iter()
        .map(|t| t.decoded.header.header_process_id)
        .collect();
    let mut starts = 0;
    let mut images = 0;
    for t in &events {
        match &t.decoded.event {
            RawEvent::Process(p) if p.lifecycle == Lifecycle::Start => {
                starts += 1;
                assert!(p.image_name.to_ascii_lowercase().ends_with(".exe"), "{p:?}");
                assert!(writers.contains(&p.parent_process_id.unwrap()), "{p:?}");
                assert!(p.create_time.unwrap().0 > 0);
            }
            RawEvent::Image(i) => {
                images += 1;
                assert!(
                    writers.contains(&i.process_id.unwrap()) || i.process_id == Some(0),
                    "{i:?}"
                );
                assert!(i.file_name.contains('\\'), "{i:?}");
            }
            _ => {}
        }
    }
    assert_eq!(starts, 4);
    assert_eq!(images, 1115 + 1153);
}

#[test]
fn kernel_network_trace_has_plausible_endpoints() {
    let Some(path) = trace("microsoft-tx_Apache-2.0/Traces/KernelNetwork.etl") else {
        return;
    };
    let (events, stats) = decode_all(&path);
    assert_eq!(stats.undecodable_total(), 0);
    let mut tcp_sources = BTreeSet::new();
    let mut remote = BTreeSet::new();
    let mut count = 0;
    for t in &events {
        let RawEvent::Network(n) = &t.decoded.event else {
            continue;
        };
        count += 1;
        assert!(n.source_port != 0 && n.destination_port != 0, "{n:?}");
        assert!(
            !n.destination_address.is_unspecified() && !n.source_address.is_unspecified(),
            "{n:?}"
        );
        assert_eq!(
            n.source_address.is_ipv4(),
            n.destination_address.is_ipv4(),
            "{n:?}"
        );
        if n.protocol == Protocol::Tcp {
            tcp_sources.insert(n.source_address);
        }
        remote.insert(n.remote().0);
        assert!(
            !n.local().0.is_multicast() || n.protocol == Protocol::Udp,
            "{n:?}"
        );
    }
    assert_eq!(count, 8923);
    // TCP in both directions: the source is the machine, one address per IP family.
    let expected: BTreeSet<IpAddr> = [
        "10.121.106.118".parse().unwrap(),
        "2001:4898:0:fff:0:5efe:a79:6a76".parse().unwrap(),
    ]
    .into();
    assert_eq!(tcp_sources, expected);
    assert!(
        remote.contains(&"157.56.244.38".parse::<IpAddr>().unwrap()),
        "{remote:?}"
    );
    assert!(!remote.iter().any(IpAddr::is_multicast), "{remote:?}");
}

#[test]
fn powershell_trace_yields_its_events() {
    let Some(path) = trace("krabsetw_MIT/examples/NativeExamples/powershell.etl") else {
        return;
    };
    let (events, stats) = decode_all(&path);
    assert_eq!(stats.decoded, 112);
    let mut by_id: BTreeMap<u16, usize> = BTreeMap::new();
    for t in &events {
        let RawEvent::PowerShell(p) = &t.decoded.event else {
            panic!("{:?}", t.decoded.event)
        };
        *by_id.entry(p.event_id).or_default() += 1;
        if p.event_id == 7937 {
            let host = p.host_application.as_deref().unwrap();
            assert!(
                host.to_ascii_lowercase().contains("powershell.exe"),
                "{host}"
            );
            assert!(p.context_info.as_deref().unwrap().contains("Runspace ID"));
        }
    }
    let expected: BTreeMap<u16, usize> = [
        (7937, 101),
        (7938, 1),
        (7939, 6),
        (7942, 1),
        (40961, 1),
        (40962, 1),
        (53504, 1),
    ]
    .into();
    assert_eq!(by_id, expected);
}

#[test]
fn amsi_trace_yields_script_contents() {
    let Some(path) = trace("airbus-etl-parser_Apache-2.0/tests/example/AMSITrace.etl") else {
        return;
    };
    let (events, stats) = decode_all(&path);
    assert_eq!(stats.decoded, 19);
    let scans: Vec<&AmsiScanEvent> = events
        .iter()
        .filter_map(|t| match &t.decoded.event {
            RawEvent::AmsiScan(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(scans.len(), 19);
    assert!(
        scans
            .iter()
            .all(|s| !s.content.is_empty() && !s.app_name.is_empty())
    );
    assert!(scans.iter().any(|s| s.content == "Get-Alias"));
    assert!(
        scans
            .iter()
            .any(|s| s.app_name == "VBScript" && s.content.contains("powershell.exe -nop"))
    );
}
