//! NT Kernel Logger (classic `MSNT_SystemTrace`) layouts: process, thread, image, file,
//! TCP/IP, UDP/IP and registry groups.
//!
//! Layouts by group and version, from the `MSNT_SystemTrace` MOF classes as published with
//! Windows SDKs and PerfView's `kerneltraceeventparser` (pointer-sized fields follow the
//! event's pointer size; `ptr` below):
//!
//! - Process (1 Start, 2 End, 3 DCStart, 4 DCEnd, 39 Defunct). v1: `ptr` PageDirectoryBase,
//!   ProcessId, ParentId, SessionId, ExitStatus, SID, ImageFileName (ANSI). v2: `ptr`
//!   UniqueProcessKey, ProcessId, ParentId, SessionId, ExitStatus, SID, ImageFileName,
//!   CommandLine. v3: v2 with `ptr` DirectoryTableBase after ExitStatus. v4: v3 with Flags after
//!   DirectoryTableBase and PackageFullName, ApplicationId at the end.
//! - Thread (1 Start, 2 End, 3 DCStart, 4 DCEnd). v1 start: ProcessId, ThreadId, six `ptr`
//!   (stack base and limit, user stack base and limit, StartAddr, Win32StartAddr), WaitMode; v1
//!   end: ProcessId, ThreadId. v2: ProcessId, ThreadId, seven `ptr` (the six, TebBase),
//!   SubProcessTag. v3: v2 plus four priority and flag bytes.
//! - Image (10 Load, 2 Unload, 3 DCStart, 4 DCEnd). v2 and v3: `ptr` ImageBase, `ptr` ImageSize,
//!   ProcessId, ImageChecksum, TimeDateStamp, a u32 that v3 splits into SignatureLevel (u8),
//!   SignatureType (u8) and a reserved u16, `ptr` DefaultBase, four reserved u32, FileName.
//! - FileIo. v2: names (0 Name, 32 FileCreate, 35 FileDelete, 36 FileRundown): `ptr`
//!   FileObject, FileName. 64 Create: IrpPtr, TTID, FileObject (all `ptr`), CreateOptions,
//!   FileAttributes, ShareAccess, OpenPath. 67 Read and 68 Write: Offset (u64), IrpPtr, TTID,
//!   FileObject, FileKey (all `ptr`), IoSize, IoFlags. 69 SetInfo, 70 Delete, 71 Rename: IrpPtr,
//!   TTID, FileObject, FileKey, ExtraInfo (all `ptr`), InfoClass. v3 moves TTID to a u32 after
//!   the pointers and adds 79 DeletePath and 80 RenamePath (the v3 info layout plus FileName).
//! - TcpIp v2 (10/26 Send, 11/27 Recv, 12/28 Connect, 13/29 Disconnect, 14/30 Retransmit,
//!   15/31 Accept, 16/32 Reconnect, 18/34 Copy; the second number is IPv6): PID, size, daddr,
//!   saddr, dport, sport (ports big-endian), then for Send startime, endtime; for Connect and
//!   Accept mss, sackopt, tsopt, wsopt (u16), rcvwin (u32), rcvwinscale, sndwinscale (i16);
//!   then seqnum (u32) and `ptr` connid. 17 Fail: Proto, FailureCode (u16). v1 orders connid
//!   (u32) before seqnum and has no IPv6 events.
//! - UdpIp v2 (10/26 Send, 11/27 Recv): PID, size, daddr, saddr, dport, sport, seqnum, `ptr`
//!   connid. v1: the same without seqnum and connid. 17 Fail as TcpIp.
//! - Registry v2 (10 Create, 11 Open, 12 Delete, 14 SetValue, 15 DeleteValue, 16 QueryValue,
//!   22 KCBCreate, 23 KCBDelete, 24 and 25 KCB rundown, 27 Close): InitialTime (i64), Status,
//!   Index, `ptr` KeyHandle, KeyName.

use super::payload::{LayoutMismatch, Payload, format_sid};
use super::types::*;
use super::{Decoding, Version};

type Result<T> = std::result::Result<T, LayoutMismatch>;

fn lifecycle(opcode: u8) -> Option<Lifecycle> {
    Some(match opcode {
        1 | 10 => Lifecycle::Start,
        2 => Lifecycle::Stop,
        3 => Lifecycle::RundownStart,
        4 => Lifecycle::RundownEnd,
        39 => Lifecycle::Defunct,
        _ => return None,
    })
}

/// Process group.
pub(super) fn process(opcode: u8, version: u8, data: &[u8], ps: edr_etw::PointerSize) -> Decoding {
    let Some(lifecycle) = lifecycle(opcode).filter(|_| opcode != 10) else {
        return Decoding::NotCovered;
    };
    let Some(v) = Version::select(version, &[1, 2, 3, 4]) else {
        return Decoding::UnknownVersion;
    };
    let mut p = Payload::new(data, ps, v.strict);
    let parsed = (|| -> Result<ProcessEvent> {
        let mut event = ProcessEvent {
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
        };
        if v.layout == 1 {
            event.directory_table_base = Some(p.pointer()?);
        } else {
            event.unique_process_key = Some(p.pointer()?);
        }
        event.process_id = p.u32()?;
        event.parent_process_id = Some(p.u32()?);
        event.session_id = Some(p.u32()?);
        event.exit_code = Some(p.i32()?);
        if v.layout >= 3 {
            event.directory_table_base = Some(p.pointer()?);
        }
        if v.layout >= 4 {
            event.flags = Some(p.u32()?);
        }
        event.user_sid = p.kernel_sid()?.as_deref().and_then(format_sid);
        event.image_name = p.ansi()?;
        if v.layout >= 2 {
            event.command_line = Some(p.utf16()?);
        }
        if v.layout >= 4 {
            event.package_full_name = Some(p.utf16()?);
            event.application_id = Some(p.utf16()?);
        }
        Ok(event)
    })();
    Decoding::from_result(parsed.map(RawEvent::Process))
}

/// Thread group.
pub(super) fn thread(opcode: u8, version: u8, data: &[u8], ps: edr_etw::PointerSize) -> Decoding {
    let Some(lifecycle) = lifecycle(opcode).filter(|_| (1..=4).contains(&opcode)) else {
        return Decoding::NotCovered;
    };
    let Some(v) = Version::select(version, &[1, 2, 3]) else {
        return Decoding::UnknownVersion;
    };
    let mut p = Payload::new(data, ps, v.strict);
    let parsed = (|| -> Result<ThreadEvent> {
        let mut event = ThreadEvent {
            lifecycle,
            process_id: p.u32()?,
            thread_id: p.u32()?,
            stack_base: None,
            stack_limit: None,
            user_stack_base: None,
            user_stack_limit: None,
            start_address: None,
            win32_start_address: None,
            teb_base: None,
            sub_process_tag: None,
        };
        // Version 1 end events stop after the ids.
        if v.layout == 1 && matches!(opcode, 2 | 4) {
            return Ok(event);
        }
        event.stack_base = Some(p.pointer()?);
        event.stack_limit = Some(p.pointer()?);
        event.user_stack_base = Some(p.pointer()?);
        event.user_stack_limit = Some(p.pointer()?);
        event.start_address = Some(p.pointer()?);
        event.win32_start_address = Some(p.pointer()?);
        if v.layout >= 2 {
            event.teb_base = Some(p.pointer()?);
            event.sub_process_tag = Some(p.u32()?);
        }
        if v.layout >= 3 {
            p.skip(4)?;
        }
        Ok(event)
    })();
    Decoding::from_result(parsed.map(RawEvent::Thread))
}

/// Image group.
pub(super) fn image(opcode: u8, version: u8, data: &[u8], ps: edr_etw::PointerSize) -> Decoding {
    let Some(lifecycle) = lifecycle(opcode).filter(|_| matches!(opcode, 10 | 2 | 3 | 4)) else {
        return Decoding::NotCovered;
    };
    let Some(v) = Version::select(version, &[2, 3]) else {
        return Decoding::UnknownVersion;
    };
    let mut p = Payload::new(data, ps, v.strict);
    let parsed = (|| -> Result<ImageEvent> {
        let image_base = p.pointer()?;
        let image_size = p.pointer()?;
        let process_id = p.u32()?;
        let image_checksum = p.u32()?;
        let time_date_stamp = p.u32()?;
        let (signature_level, signature_type) = if v.layout >= 3 {
            let level = p.u8()?;
            let kind = p.u8()?;
            p.skip(2)?;
            (Some(level), Some(kind))
        } else {
            p.skip(4)?;
            (None, None)
        };
        let default_base = p.pointer()?;
        p.skip(16)?;
        Ok(ImageEvent {
            lifecycle,
            process_id: Some(process_id),
            image_base,
            image_size,
            image_checksum: Some(image_checksum),
            time_date_stamp: Some(time_date_stamp),
            default_base: Some(default_base),
            signature_level,
            signature_type,
            file_name: p.utf16()?,
        })
    })();
    Decoding::from_result(parsed.map(RawEvent::Image))
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

/// FileIo group.
pub(super) fn file(opcode: u8, version: u8, data: &[u8], ps: edr_etw::PointerSize) -> Decoding {
    let operation = match opcode {
        0 | 32 => FileOperation::NameCreate,
        35 => FileOperation::NameDelete,
        36 => FileOperation::NameRundown,
        64 => FileOperation::Create,
        67 => FileOperation::Read,
        68 => FileOperation::Write,
        69 => FileOperation::SetInformation,
        70 => FileOperation::Delete,
        71 => FileOperation::Rename,
        79 => FileOperation::DeletePath,
        80 => FileOperation::RenamePath,
        _ => return Decoding::NotCovered,
    };
    let known: &[u8] = if matches!(opcode, 79 | 80) {
        &[3]
    } else {
        &[2, 3]
    };
    let Some(v) = Version::select(version, known) else {
        return Decoding::UnknownVersion;
    };
    let mut p = Payload::new(data, ps, v.strict);
    let v3 = v.layout >= 3;
    let parsed = (|| -> Result<FileEvent> {
        let mut event = file_event(operation);
        match opcode {
            0 | 32 | 35 | 36 => {
                event.file_object = Some(p.pointer()?);
                event.path = Some(p.utf16()?);
            }
            64 => {
                event.irp = Some(p.pointer()?);
                if !v3 {
                    event.issuing_thread_id = Some(p.pointer()? as u32);
                }
                event.file_object = Some(p.pointer()?);
                if v3 {
                    event.issuing_thread_id = Some(p.u32()?);
                }
                event.create_options = Some(p.u32()?);
                event.file_attributes = Some(p.u32()?);
                event.share_access = Some(p.u32()?);
                event.path = Some(p.utf16()?);
            }
            67 | 68 => {
                event.offset = Some(p.u64()?);
                event.irp = Some(p.pointer()?);
                if !v3 {
                    event.issuing_thread_id = Some(p.pointer()? as u32);
                }
                event.file_object = Some(p.pointer()?);
                event.file_key = Some(p.pointer()?);
                if v3 {
                    event.issuing_thread_id = Some(p.u32()?);
                }
                event.io_size = Some(p.u32()?);
                p.u32()?;
            }
            _ => {
                event.irp = Some(p.pointer()?);
                if !v3 {
                    event.issuing_thread_id = Some(p.pointer()? as u32);
                }
                event.file_object = Some(p.pointer()?);
                event.file_key = Some(p.pointer()?);
                p.pointer()?;
                if v3 {
                    event.issuing_thread_id = Some(p.u32()?);
                }
                event.info_class = Some(p.u32()?);
                if matches!(opcode, 79 | 80) {
                    event.path = Some(p.utf16()?);
                }
            }
        }
        Ok(event)
    })();
    Decoding::from_result(parsed.map(RawEvent::File))
}

fn tcp_operation(opcode: u8) -> Option<(NetworkOperation, bool)> {
    let ipv6 = opcode >= 26;
    let base = if ipv6 { opcode - 16 } else { opcode };
    let operation = match base {
        10 => NetworkOperation::Send,
        11 => NetworkOperation::Receive,
        12 => NetworkOperation::Connect,
        13 => NetworkOperation::Disconnect,
        14 => NetworkOperation::Retransmit,
        15 => NetworkOperation::Accept,
        16 => NetworkOperation::Reconnect,
        18 => NetworkOperation::Copy,
        _ => return None,
    };
    Some((operation, ipv6))
}

/// TcpIp and UdpIp groups.
pub(super) fn network(
    protocol: Protocol,
    opcode: u8,
    version: u8,
    data: &[u8],
    ps: edr_etw::PointerSize,
) -> Decoding {
    let known: &[u8] = if opcode == 17 { &[2] } else { &[1, 2] };
    let Some(v) = Version::select(version, known) else {
        return Decoding::UnknownVersion;
    };
    network_layout(protocol, opcode, v, true, data, ps)
}

/// TCP and UDP layouts; `pointer_connection_id` is false for the manifest provider, whose
/// connection id is a u32.
pub(super) fn network_layout(
    protocol: Protocol,
    opcode: u8,
    v: Version,
    pointer_connection_id: bool,
    data: &[u8],
    ps: edr_etw::PointerSize,
) -> Decoding {
    if opcode == 17 {
        let mut p = Payload::new(data, ps, v.strict);
        let parsed = (|| -> Result<NetworkFailureEvent> {
            Ok(NetworkFailureEvent {
                protocol,
                proto: p.u16()?,
                failure_code: p.u16()?,
            })
        })();
        return Decoding::from_result(parsed.map(RawEvent::NetworkFailure));
    }
    let Some((operation, ipv6)) = tcp_operation(opcode) else {
        return Decoding::NotCovered;
    };
    if protocol == Protocol::Udp
        && !matches!(
            operation,
            NetworkOperation::Send | NetworkOperation::Receive
        )
    {
        return Decoding::NotCovered;
    }
    if v.layout == 1 && ipv6 {
        return Decoding::UnknownVersion;
    }
    let mut p = Payload::new(data, ps, v.strict);
    let parsed = (|| -> Result<NetworkEvent> {
        let process_id = p.u32()?;
        let size = p.u32()?;
        let (destination_address, source_address) = if ipv6 {
            (p.ipv6()?, p.ipv6()?)
        } else {
            (p.ipv4()?, p.ipv4()?)
        };
        let destination_port = p.port()?;
        let source_port = p.port()?;
        let mut event = NetworkEvent {
            protocol,
            operation,
            process_id,
            size,
            destination_address,
            destination_port,
            source_address,
            source_port,
            connection_id: None,
            sequence_number: None,
            mss: None,
        };
        if protocol == Protocol::Udp && v.layout == 1 {
            return Ok(event);
        }
        if protocol == Protocol::Tcp {
            match operation {
                NetworkOperation::Send => p.skip(8)?,
                NetworkOperation::Connect | NetworkOperation::Accept => {
                    event.mss = Some(p.u16()?);
                    p.skip(3 * 2 + 4 + 2 * 2)?;
                }
                _ => {}
            }
        }
        if v.layout == 1 {
            event.connection_id = Some(u64::from(p.u32()?));
            event.sequence_number = Some(p.u32()?);
        } else {
            event.sequence_number = Some(p.u32()?);
            event.connection_id = Some(if pointer_connection_id {
                p.pointer()?
            } else {
                u64::from(p.u32()?)
            });
        }
        Ok(event)
    })();
    Decoding::from_result(parsed.map(RawEvent::Network))
}

/// Registry group.
pub(super) fn registry(opcode: u8, version: u8, data: &[u8], ps: edr_etw::PointerSize) -> Decoding {
    let operation = match opcode {
        10 => RegistryOperation::CreateKey,
        11 => RegistryOperation::OpenKey,
        12 => RegistryOperation::DeleteKey,
        14 => RegistryOperation::SetValue,
        15 => RegistryOperation::DeleteValue,
        16 => RegistryOperation::QueryValue,
        22 => RegistryOperation::KcbCreate,
        23 => RegistryOperation::KcbDelete,
        24 | 25 => RegistryOperation::KcbRundown,
        27 => RegistryOperation::CloseKey,
        _ => return Decoding::NotCovered,
    };
    let Some(v) = Version::select(version, &[2]) else {
        return Decoding::UnknownVersion;
    };
    let mut p = Payload::new(data, ps, v.strict);
    let parsed = (|| -> Result<RegistryEvent> {
        let _initial_time = p.i64()?;
        let status = p.u32()?;
        let _index = p.u32()?;
        let key_object = p.pointer()?;
        Ok(RegistryEvent {
            operation,
            status,
            key_object,
            key_name: p.utf16()?,
            value_name: None,
            relative_name: None,
            value_type: None,
            data_size: None,
            captured_data: None,
        })
    })();
    Decoding::from_result(parsed.map(RawEvent::Registry))
}
