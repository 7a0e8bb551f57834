//! Manifest providers of the kernel and the DNS client.
//!
//! Layouts, by event id and version, from the providers' instrumentation manifests
//! (Windows 7 and later; `ptr` is pointer-sized):
//!
//! - Microsoft-Windows-Kernel-Process: 1 ProcessStart v0 ProcessID, CreateTime, ParentProcessID,
//!   SessionID, ImageName; v1 adds Flags before ImageName; v2 appends ImageChecksum,
//!   TimeDateStamp, PackageFullName, PackageRelativeAppId; v3 inserts ProcessSequenceNumber
//!   (u64) after ProcessID, ParentProcessSequenceNumber (u64) after ParentProcessID, and
//!   ProcessTokenElevationType, ProcessTokenIsElevated (u32) and MandatoryLabel (SID) before
//!   ImageName. 2 ProcessStop v0 ProcessID, CreateTime, ExitTime, ExitCode, TokenElevationType,
//!   HandleCount, CommitCharge, CommitPeak (u64), ImageName (ANSI); v1 adds CPUCycleCount (u64)
//!   and five u32 I/O counters before ImageName; v2 inserts ProcessSequenceNumber after ProcessID.
//!   3 ThreadStart and 4 ThreadStop: ProcessID, ThreadID, seven `ptr` (stack bounds,
//!   StartAddr, Win32StartAddr, TebBase), then from v1 SubProcessTag. 5 ImageLoad and 6
//!   ImageUnload v0: `ptr` ImageBase, `ptr` ImageSize, ProcessID, ImageCheckSum, TimeDateStamp,
//!   `ptr` DefaultBase, ImageName.
//! - Microsoft-Windows-Kernel-Network v0: the TcpIp and UdpIp kernel layouts with event ids equal
//!   to the kernel opcodes for TCP (10 to 18, 26 to 34) and 42, 43 (UDP IPv4), 58, 59 (UDP IPv6),
//!   49 UDP failure; `connid` is a u32.
//! - Microsoft-Windows-Kernel-File: 10 NameCreate, 11 NameDelete: `ptr` FileKey, FileName.
//!   12 Create and 30 CreateNewFile v1: `ptr` Irp, `ptr` FileObject, IssuingThreadId,
//!   CreateOptions, CreateAttributes, ShareAccess, FileName (v0: Irp, ThreadId, FileObject all
//!   `ptr`, then the same). 16 Write v1: ByteOffset (u64), Irp, FileObject, FileKey (`ptr`),
//!   IssuingThreadId, IOSize, IOFlags, ExtraFlags. 17 SetInformation, 18 Delete, 19 Rename v1:
//!   Irp, FileObject, FileKey, ExtraInformation (`ptr`), IssuingThreadId, InfoClass. 26
//!   DeletePath, 27 RenamePath v1: the same plus FilePath.
//! - Microsoft-Windows-Kernel-Registry v0: 1 CreateKey, 2 OpenKey: `ptr` BaseObject, `ptr`
//!   KeyObject, Status, Disposition, BaseName, RelativeName. 3 DeleteKey, 13 CloseKey: `ptr`
//!   KeyObject, Status, KeyName. 5 SetValueKey: `ptr` KeyObject, Status, Type, DataSize, KeyName,
//!   ValueName, CapturedDataSize (u16), CapturedData, then previous-value fields. 6
//!   DeleteValueKey: `ptr` KeyObject, Status, KeyName, ValueName.
//! - Microsoft-Windows-DNS-Client: 3006 query: QueryName, QueryType, QueryOptions (u64),
//!   ServerList, IsNetworkQuery, NetworkQueryIndex, InterfaceIndex, IsAsyncQuery. 3008 query
//!   completed: QueryName, QueryType, QueryOptions (u64), QueryStatus, QueryResults. 3020
//!   response: QueryName, QueryType, NetworkIndex, InterfaceIndex, Status, QueryResults. 1001
//!   server for interface: Interface, TotalServerCount, Index, DynamicAddress (u8),
//!   AddressLength, Address (a `SOCKADDR` of AddressLength bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edr_etw::PointerSize;

use super::payload::{LayoutMismatch, Payload};
use super::types::*;
use super::{Decoding, Version, kernel};

type Result<T> = std::result::Result<T, LayoutMismatch>;

fn empty_process(lifecycle: Lifecycle) -> ProcessEvent {
    ProcessEvent {
        lifecycle,
        process_id: 0,
        parent_process_id: None,
        unique_process_key: None,
        sequence_number: None,
        parent_sequence_number: None,
        session_id: None,
        exit_code: None,
        flags: None,
        user_sid: None,
        image_name: String::new(),
        command_line: None,
        package_full_name: None,
        application_id: None,
        create_time: None,
        exit_time: None,
        directory_table_base: None,
    }
}

/// Microsoft-Windows-Kernel-Process.
// NOTE: the ProcessStart v2 and v3 and ProcessStop v2 layouts were not checked against a manifest
// file or a recorded trace; only payloads built from the description above test them.
pub(super) fn kernel_process(id: u16, version: u8, data: &[u8], ps: PointerSize) -> Decoding {
    match id {
        1 => {
            let Some(v) = Version::select(version, &[0, 1, 2, 3]) else {
                return Decoding::UnknownVersion;
            };
            let mut p = Payload::new(data, ps, v.strict);
            let parsed = (|| -> Result<ProcessEvent> {
                let mut e = empty_process(Lifecycle::Start);
                e.process_id = p.u32()?;
                if v.layout >= 3 {
                    e.sequence_number = Some(p.u64()?);
                }
                e.create_time = Some(p.filetime()?);
                e.parent_process_id = Some(p.u32()?);
                if v.layout >= 3 {
                    e.parent_sequence_number = Some(p.u64()?);
                }
                e.session_id = Some(p.u32()?);
                if v.layout >= 1 {
                    e.flags = Some(p.u32()?);
                }
                if v.layout >= 3 {
                    // ProcessTokenElevationType, ProcessTokenIsElevated, then MandatoryLabel: a
                    // plain SID sized by its sub-authority count.
                    p.skip(8)?;
                    let head = p.bytes(2)?;
                    p.skip(6 + 4 * usize::from(head[1]))?;
                }
                e.image_name = p.utf16()?;
                if v.layout >= 2 {
                    p.skip(8)?;
                    e.package_full_name = Some(p.utf16()?);
                    e.application_id = Some(p.utf16()?);
                }
                Ok(e)
            })();
            Decoding::from_result(parsed.map(RawEvent::Process))
        }
        2 => {
            let Some(v) = Version::select(version, &[0, 1, 2]) else {
                return Decoding::UnknownVersion;
            };
            let mut p = Payload::new(data, ps, v.strict);
            let parsed = (|| -> Result<ProcessEvent> {
                let mut e = empty_process(Lifecycle::Stop);
                e.process_id = p.u32()?;
                if v.layout >= 2 {
                    e.sequence_number = Some(p.u64()?);
                }
                e.create_time = Some(p.filetime()?);
                e.exit_time = Some(p.filetime()?);
                e.exit_code = Some(p.i32()?);
                p.skip(4 + 4 + 8 + 8)?;
                if v.layout >= 1 {
                    p.skip(8 + 5 * 4)?;
                }
                e.image_name = p.ansi()?;
                Ok(e)
            })();
            Decoding::from_result(parsed.map(RawEvent::Process))
        }
        3 | 4 => {
            let Some(v) = Version::select(version, &[0, 1]) else {
                return Decoding::UnknownVersion;
            };
            let mut p = Payload::new(data, ps, v.strict);
            let parsed = (|| -> Result<ThreadEvent> {
                Ok(ThreadEvent {
                    lifecycle: if id == 3 {
                        Lifecycle::Start
                    } else {
                        Lifecycle::Stop
                    },
                    process_id: p.u32()?,
                    thread_id: p.u32()?,
                    stack_base: Some(p.pointer()?),
                    stack_limit: Some(p.pointer()?),
                    user_stack_base: Some(p.pointer()?),
                    user_stack_limit: Some(p.pointer()?),
                    start_address: Some(p.pointer()?),
                    win32_start_address: Some(p.pointer()?),
                    teb_base: Some(p.pointer()?),
                    sub_process_tag: if v.layout >= 1 { Some(p.u32()?) } else { None },
                })
            })();
            Decoding::from_result(parsed.map(RawEvent::Thread))
        }
        5 | 6 => {
            let Some(v) = Version::select(version, &[0]) else {
                return Decoding::UnknownVersion;
            };
            let mut p = Payload::new(data, ps, v.strict);
            let parsed = (|| -> Result<ImageEvent> {
                Ok(ImageEvent {
                    lifecycle: if id == 5 {
                        Lifecycle::Start
                    } else {
                        Lifecycle::Stop
                    },
                    image_base: p.pointer()?,
                    image_size: p.pointer()?,
                    process_id: Some(p.u32()?),
                    image_checksum: Some(p.u32()?),
                    time_date_stamp: Some(p.u32()?),
                    default_base: Some(p.pointer()?),
                    signature_level: None,
                    signature_type: None,
                    file_name: p.utf16()?,
                })
            })();
            Decoding::from_result(parsed.map(RawEvent::Image))
        }
        _ => Decoding::NotCovered,
    }
}

/// Microsoft-Windows-Kernel-Network: the kernel layouts with a u32 connection id.
pub(super) fn kernel_network(id: u16, version: u8, data: &[u8], ps: PointerSize) -> Decoding {
    let (protocol, opcode) = match id {
        10..=18 | 26..=34 => (Protocol::Tcp, id as u8),
        42 | 43 => (Protocol::Udp, id as u8 - 32),
        58 | 59 => (Protocol::Udp, id as u8 - 32),
        49 => (Protocol::Udp, 17),
        _ => return Decoding::NotCovered,
    };
    let Some(v) = Version::select(version, &[0]) else {
        return Decoding::UnknownVersion;
    };
    // The manifest layout equals kernel version 2 with a 32-bit connection id.
    let layout = Version {
        layout: 2,
        strict: v.strict,
    };
    kernel::network_layout(protocol, opcode, layout, false, data, ps)
}

fn file_event(operation: FileOperation) -> FileEvent {
    FileEvent {
        operation,
        irp: None,
        file_object: None,
        file_key: None,
        issuing_thread_id: None,
        path: None,
        create_options: None,
        file_attributes: None,
        share_access: None,
        offset: None,
        io_size: None,
        info_class: None,
    }
}

/// Microsoft-Windows-Kernel-File.
pub(super) fn kernel_file(id: u16, version: u8, data: &[u8], ps: PointerSize) -> Decoding {
    let operation = match id {
        10 => FileOperation::NameCreate,
        11 => FileOperation::NameDelete,
        12 => FileOperation::Create,
        30 => FileOperation::CreateNewFile,
        16 => FileOperation::Write,
        17 => FileOperation::SetInformation,
        18 => FileOperation::Delete,
        19 => FileOperation::Rename,
        26 => FileOperation::DeletePath,
        27 => FileOperation::RenamePath,
        _ => return Decoding::NotCovered,
    };
    let known: &[u8] = if matches!(id, 10 | 11) { &[0] } else { &[0, 1] };
    let Some(v) = Version::select(version, known) else {
        return Decoding::UnknownVersion;
    };
    let mut p = Payload::new(data, ps, v.strict);
    let v1 = v.layout >= 1;
    let parsed = (|| -> Result<FileEvent> {
        let mut e = file_event(operation);
        match id {
            10 | 11 => {
                e.file_key = Some(p.pointer()?);
                e.path = Some(p.utf16()?);
            }
            12 | 30 => {
                e.irp = Some(p.pointer()?);
                if !v1 {
                    e.issuing_thread_id = Some(p.pointer()? as u32);
                }
                e.file_object = Some(p.pointer()?);
                if v1 {
                    e.issuing_thread_id = Some(p.u32()?);
                }
                e.create_options = Some(p.u32()?);
                e.file_attributes = Some(p.u32()?);
                e.share_access = Some(p.u32()?);
                e.path = Some(p.utf16()?);
            }
            16 => {
                e.offset = Some(p.u64()?);
                e.irp = Some(p.pointer()?);
                if !v1 {
                    e.issuing_thread_id = Some(p.pointer()? as u32);
                }
                e.file_object = Some(p.pointer()?);
                e.file_key = Some(p.pointer()?);
                if v1 {
                    e.issuing_thread_id = Some(p.u32()?);
                }
                e.io_size = Some(p.u32()?);
                p.u32()?;
            }
            _ => {
                e.irp = Some(p.pointer()?);
                if !v1 {
                    e.issuing_thread_id = Some(p.pointer()? as u32);
                }
                e.file_object = Some(p.pointer()?);
                e.file_key = Some(p.pointer()?);
                p.pointer()?;
                if v1 {
                    e.issuing_thread_id = Some(p.u32()?);
                }
                e.info_class = Some(p.u32()?);
                if matches!(id, 26 | 27) {
                    e.path = Some(p.utf16()?);
                }
            }
        }
        Ok(e)
    })();
    Decoding::from_result(parsed.map(RawEvent::File))
}

/// Microsoft-Windows-Kernel-Registry.
pub(super) fn kernel_registry(id: u16, version: u8, data: &[u8], ps: PointerSize) -> Decoding {
    let operation = match id {
        1 => RegistryOperation::CreateKey,
        2 => RegistryOperation::OpenKey,
        3 => RegistryOperation::DeleteKey,
        5 => RegistryOperation::SetValue,
        6 => RegistryOperation::DeleteValue,
        7 => RegistryOperation::QueryValue,
        13 => RegistryOperation::CloseKey,
        _ => return Decoding::NotCovered,
    };
    let Some(v) = Version::select(version, &[0]) else {
        return Decoding::UnknownVersion;
    };
    let mut p = Payload::new(data, ps, v.strict);
    let parsed = (|| -> Result<RegistryEvent> {
        let mut e = RegistryEvent {
            operation,
            status: 0,
            key_object: 0,
            key_name: String::new(),
            value_name: None,
            relative_name: None,
            value_type: None,
            data_size: None,
            captured_data: None,
        };
        match id {
            1 | 2 => {
                let _base_object = p.pointer()?;
                e.key_object = p.pointer()?;
                e.status = p.u32()?;
                let _disposition = p.u32()?;
                e.key_name = p.utf16()?;
                e.relative_name = Some(p.utf16()?);
            }
            5 | 7 => {
                e.key_object = p.pointer()?;
                e.status = p.u32()?;
                let value_type = p.u32()?;
                e.data_size = Some(p.u32()?);
                e.key_name = p.utf16()?;
                e.value_name = Some(p.utf16()?);
                if id == 5 {
                    e.value_type = Some(value_type);
                }
                let captured = usize::from(p.u16()?);
                e.captured_data = Some(p.bytes(captured)?.to_vec());
            }
            6 => {
                e.key_object = p.pointer()?;
                e.status = p.u32()?;
                e.key_name = p.utf16()?;
                e.value_name = Some(p.utf16()?);
            }
            _ => {
                e.key_object = p.pointer()?;
                e.status = p.u32()?;
                e.key_name = p.utf16()?;
            }
        }
        Ok(e)
    })();
    Decoding::from_result(parsed.map(RawEvent::Registry))
}

fn empty_dns(operation: DnsOperation) -> DnsEvent {
    DnsEvent {
        operation,
        query_name: None,
        query_type: None,
        query_options: None,
        status: None,
        results: None,
        answers: Vec::new(),
        server_list: None,
        interface_index: None,
        interface: None,
        server_address: None,
    }
}

/// Splits `QueryResults` (`record;record;`) into its records.
fn split_answers(results: &str) -> Vec<String> {
    results
        .split(';')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Formats a `SOCKADDR_IN` or `SOCKADDR_IN6`.
fn sockaddr_text(bytes: &[u8]) -> Option<String> {
    let family = u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]);
    let port = u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]);
    match family {
        2 => {
            let a = bytes.get(4..8)?;
            Some(format!(
                "{}:{port}",
                IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
            ))
        }
        23 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(bytes.get(8..24)?);
            Some(format!("[{}]:{port}", Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

/// Microsoft-Windows-DNS-Client.
// NOTE: only event 1001 appears in a recorded trace (checked against PerfView). The 3006, 3008
// and 3020 layouts were not checked against a manifest file or a recorded trace.
pub(super) fn dns_client(id: u16, version: u8, data: &[u8], ps: PointerSize) -> Decoding {
    if !matches!(id, 1001 | 3006 | 3008 | 3020) {
        return Decoding::NotCovered;
    }
    let Some(v) = Version::select(version, &[0]) else {
        return Decoding::UnknownVersion;
    };
    let mut p = Payload::new(data, ps, v.strict);
    let parsed = (|| -> Result<DnsEvent> {
        match id {
            3006 => {
                let mut e = empty_dns(DnsOperation::Query);
                e.query_name = Some(p.utf16()?);
                e.query_type = Some(p.u32()?);
                e.query_options = Some(p.u64()?);
                e.server_list = Some(p.utf16()?);
                let _is_network_query = p.u32()?;
                let _network_query_index = p.u32()?;
                e.interface_index = Some(p.u32()?);
                let _is_async = p.u32()?;
                Ok(e)
            }
            3008 => {
                let mut e = empty_dns(DnsOperation::QueryCompleted);
                e.query_name = Some(p.utf16()?);
                e.query_type = Some(p.u32()?);
                e.query_options = Some(p.u64()?);
                e.status = Some(p.u32()?);
                let results = p.utf16()?;
                e.answers = split_answers(&results);
                e.results = Some(results);
                Ok(e)
            }
            3020 => {
                let mut e = empty_dns(DnsOperation::Response);
                e.query_name = Some(p.utf16()?);
                e.query_type = Some(p.u32()?);
                let _network_index = p.u32()?;
                e.interface_index = Some(p.u32()?);
                e.status = Some(p.u32()?);
                let results = p.utf16()?;
                e.answers = split_answers(&results);
                e.results = Some(results);
                Ok(e)
            }
            _ => {
                let mut e = empty_dns(DnsOperation::ServerForInterface);
                e.interface = Some(p.utf16()?);
                let _total = p.u32()?;
                let _index = p.u32()?;
                let _dynamic = p.u8()?;
                let length = p.u32()? as usize;
                let address = p.bytes(length)?;
                e.server_address = sockaddr_text(address);
                Ok(e)
            }
        }
    })();
    Decoding::from_result(parsed.map(RawEvent::Dns))
}
