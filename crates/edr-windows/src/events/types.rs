//! Typed raw events: the sensor's internal model of what an EDR consumes, before mapping to
//! OCSF. Field names follow the ETW layouts they come from; units and byte orders are stated
//! where the layout does not make them obvious.

use std::net::IpAddr;

use edr_etw::{FileTime, Guid};
use serde::Serialize;

/// Provenance and time of an event, common to every raw event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventHeader {
    /// Provider GUID (the kernel group GUID for NT Kernel Logger events).
    pub provider: Guid,
    /// Event id (0 for kernel and classic events).
    pub event_id: u16,
    /// Opcode (the event type for kernel and classic events).
    pub opcode: u8,
    /// Layout version.
    pub version: u8,
    /// Time the event was written, UTC.
    pub timestamp: FileTime,
    /// Process that wrote the event; `u32::MAX` when the header carries none. This is often
    /// not the subject process (see each event's own process id).
    pub header_process_id: u32,
    /// Thread that wrote the event; `u32::MAX` when the header carries none.
    pub header_thread_id: u32,
    /// Processor.
    pub processor: u16,
}

/// A decoded event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecodedEvent {
    /// Provenance.
    pub header: EventHeader,
    /// The typed payload.
    pub event: RawEvent,
}

/// Typed payloads.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum RawEvent {
    /// Process start, stop, rundown or defunct.
    Process(ProcessEvent),
    /// Thread start, stop or rundown.
    Thread(ThreadEvent),
    /// Image (executable or DLL) load, unload or rundown.
    Image(ImageEvent),
    /// File system operation.
    File(FileEvent),
    /// Registry operation.
    Registry(RegistryEvent),
    /// TCP or UDP activity.
    Network(NetworkEvent),
    /// A failed TCP or UDP operation.
    NetworkFailure(NetworkFailureEvent),
    /// DNS client query, response or configuration.
    Dns(DnsEvent),
    /// PowerShell script block text (event 4104).
    ScriptBlock(ScriptBlockEvent),
    /// PowerShell pipeline, command and engine events with context strings.
    PowerShell(PowerShellEvent),
    /// AMSI content scan.
    AmsiScan(AmsiScanEvent),
}

/// Lifecycle step of a process, thread or image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Lifecycle {
    /// Created or loaded during the trace.
    Start,
    /// Exited or unloaded during the trace.
    Stop,
    /// Already present when the trace started (rundown at start, `DCStart`).
    RundownStart,
    /// Still present when the trace stopped (rundown at end, `DCEnd`).
    RundownEnd,
    /// Exited but still referenced (process `Defunct`).
    Defunct,
}

/// A process event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessEvent {
    /// Start, stop, rundown or defunct.
    pub lifecycle: Lifecycle,
    /// Process id.
    pub process_id: u32,
    /// Parent process id (absent from manifest stop events).
    pub parent_process_id: Option<u32>,
    /// Kernel address of the `EPROCESS`, unique while the process lives (kernel events).
    pub unique_process_key: Option<u64>,
    /// Process sequence number, unique per boot (manifest events from version 3).
    pub sequence_number: Option<u64>,
    /// Parent's sequence number (manifest start events from version 3).
    pub parent_sequence_number: Option<u64>,
    /// Terminal session id.
    pub session_id: Option<u32>,
    /// Exit status (kernel events; 259 `STILL_ACTIVE` for running processes).
    pub exit_code: Option<i32>,
    /// Process flags (`Flags` field).
    pub flags: Option<u32>,
    /// Owner SID as `S-1-...`.
    pub user_sid: Option<String>,
    /// Image file name: the short name for kernel events, the full NT path for manifest
    /// start events.
    pub image_name: String,
    /// Command line (kernel events from version 2).
    pub command_line: Option<String>,
    /// Package full name of a packaged app.
    pub package_full_name: Option<String>,
    /// Application id of a packaged app.
    pub application_id: Option<String>,
    /// Creation time (manifest events).
    pub create_time: Option<FileTime>,
    /// Exit time (manifest stop events).
    pub exit_time: Option<FileTime>,
    /// Page directory base (kernel events).
    pub directory_table_base: Option<u64>,
}

/// A thread event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThreadEvent {
    /// Start, stop or rundown.
    pub lifecycle: Lifecycle,
    /// Owning process id.
    pub process_id: u32,
    /// Thread id.
    pub thread_id: u32,
    /// Kernel stack base.
    pub stack_base: Option<u64>,
    /// Kernel stack limit.
    pub stack_limit: Option<u64>,
    /// User stack base.
    pub user_stack_base: Option<u64>,
    /// User stack limit.
    pub user_stack_limit: Option<u64>,
    /// Start address (kernel view).
    pub start_address: Option<u64>,
    /// Win32 start address: the entry a remote thread injection points at.
    pub win32_start_address: Option<u64>,
    /// Thread environment block address.
    pub teb_base: Option<u64>,
    /// Service tag.
    pub sub_process_tag: Option<u32>,
}

/// An image event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageEvent {
    /// Load, unload or rundown.
    pub lifecycle: Lifecycle,
    /// Process the image is mapped in (0 for kernel images).
    pub process_id: Option<u32>,
    /// Base address.
    pub image_base: u64,
    /// Size in bytes.
    pub image_size: u64,
    /// PE checksum.
    pub image_checksum: Option<u32>,
    /// PE `TimeDateStamp`.
    pub time_date_stamp: Option<u32>,
    /// Preferred base address.
    pub default_base: Option<u64>,
    /// Code integrity signature level (kernel events from version 3).
    pub signature_level: Option<u8>,
    /// Code integrity signature type (kernel events from version 3).
    pub signature_type: Option<u8>,
    /// File name, usually an NT path such as `\Device\HarddiskVolume2\Windows\System32\x.dll`.
    pub file_name: String,
}

/// Kinds of file events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FileOperation {
    /// Open or create (`IRP_MJ_CREATE`).
    Create,
    /// A create that made a new file.
    CreateNewFile,
    /// Data read.
    Read,
    /// Data written.
    Write,
    /// Delete disposition set.
    Delete,
    /// Renamed.
    Rename,
    /// Delete with the path of the file.
    DeletePath,
    /// Rename with the new path.
    RenamePath,
    /// Other set-information call.
    SetInformation,
    /// File object name created (name mapping for later events).
    NameCreate,
    /// File object name deleted.
    NameDelete,
    /// File object name at trace start (rundown).
    NameRundown,
}

/// A file event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEvent {
    /// Operation.
    pub operation: FileOperation,
    /// I/O request packet address, correlating the operation with its completion.
    pub irp: Option<u64>,
    /// File object address.
    pub file_object: Option<u64>,
    /// File key (stable per open file); name events key their names by it.
    pub file_key: Option<u64>,
    /// Thread that issued the operation.
    pub issuing_thread_id: Option<u32>,
    /// Path, when the event carries one.
    pub path: Option<String>,
    /// `CreateOptions` (create disposition in the top byte).
    pub create_options: Option<u32>,
    /// File attributes requested.
    pub file_attributes: Option<u32>,
    /// Share access requested.
    pub share_access: Option<u32>,
    /// Byte offset of a read or write.
    pub offset: Option<u64>,
    /// Bytes read or written.
    pub io_size: Option<u32>,
    /// `FILE_INFORMATION_CLASS` of a set-information call.
    pub info_class: Option<u32>,
}

/// Kinds of registry events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RegistryOperation {
    /// Key created (or opened by a create call).
    CreateKey,
    /// Key opened.
    OpenKey,
    /// Key deleted.
    DeleteKey,
    /// Value set.
    SetValue,
    /// Value deleted.
    DeleteValue,
    /// Value queried.
    QueryValue,
    /// Key control block created: maps a key handle to its name.
    KcbCreate,
    /// Key control block deleted.
    KcbDelete,
    /// Key control block present at trace start or end (rundown).
    KcbRundown,
    /// Key closed.
    CloseKey,
}

/// A registry event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryEvent {
    /// Operation.
    pub operation: RegistryOperation,
    /// NTSTATUS of the operation.
    pub status: u32,
    /// Key object (manifest) or key control block (kernel) address.
    pub key_object: u64,
    /// Key name: full for creates and rundowns, relative to the key for other kernel events.
    pub key_name: String,
    /// Value name, for value operations of the manifest provider.
    pub value_name: Option<String>,
    /// Name relative to `key_name` for manifest create and open events.
    pub relative_name: Option<String>,
    /// Registry value type (`REG_SZ` = 1...) of a set value.
    pub value_type: Option<u32>,
    /// Size of the value data.
    pub data_size: Option<u32>,
    /// First bytes of the value data as captured by the provider.
    pub captured_data: Option<Vec<u8>>,
}

/// Transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Kinds of network events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NetworkOperation {
    /// Data sent.
    Send,
    /// Data received.
    Receive,
    /// Outbound connection established.
    Connect,
    /// Inbound connection accepted.
    Accept,
    /// Connection closed.
    Disconnect,
    /// Segment retransmitted.
    Retransmit,
    /// Connection attempt repeated.
    Reconnect,
    /// Data copied to the application.
    Copy,
}

/// A TCP or UDP event, with the endpoints as the layout names them (`daddr`/`dport`,
/// `saddr`/`sport`).
///
/// In recorded traces the kernel fills the destination with the remote and the source with the
/// local endpoint for TCP in both directions and for unicast UDP. For UDP datagrams received on a
/// multicast or broadcast address, the destination is that group address and the source is the
/// sender. [`NetworkEvent::remote`] applies this rule for IP multicast; a subnet-directed
/// broadcast cannot be told from a unicast address without the interface's prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkEvent {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Operation.
    pub operation: NetworkOperation,
    /// Process that owns the socket.
    pub process_id: u32,
    /// Bytes transferred.
    pub size: u32,
    /// `daddr`.
    pub destination_address: IpAddr,
    /// `dport`, converted to host order.
    pub destination_port: u16,
    /// `saddr`.
    pub source_address: IpAddr,
    /// `sport`, converted to host order.
    pub source_port: u16,
    /// Connection id.
    pub connection_id: Option<u64>,
    /// Sequence number.
    pub sequence_number: Option<u32>,
    /// Maximum segment size (connect and accept).
    pub mss: Option<u16>,
}

impl NetworkEvent {
    /// Returns the remote endpoint: the source for datagrams sent to an IP multicast or limited
    /// broadcast address, the destination otherwise.
    pub fn remote(&self) -> (IpAddr, u16) {
        if self.is_group_destination() {
            (self.source_address, self.source_port)
        } else {
            (self.destination_address, self.destination_port)
        }
    }

    /// Returns the local endpoint, the counterpart of [`NetworkEvent::remote`].
    pub fn local(&self) -> (IpAddr, u16) {
        if self.is_group_destination() {
            (self.destination_address, self.destination_port)
        } else {
            (self.source_address, self.source_port)
        }
    }

    fn is_group_destination(&self) -> bool {
        match self.destination_address {
            IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast(),
            IpAddr::V6(v6) => v6.is_multicast(),
        }
    }
}

/// A failed network operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkFailureEvent {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Protocol of the failed operation as recorded.
    pub proto: u16,
    /// Failure code.
    pub failure_code: u16,
}

/// Kinds of DNS client events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DnsOperation {
    /// A query was issued (3006).
    Query,
    /// A query completed with a status and results (3008).
    QueryCompleted,
    /// A response arrived from a server (3020).
    Response,
    /// A DNS server configured for an interface (1001).
    ServerForInterface,
}

/// A DNS client event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsEvent {
    /// Operation.
    pub operation: DnsOperation,
    /// Queried name.
    pub query_name: Option<String>,
    /// Query type (1 A, 28 AAAA, 5 CNAME...).
    pub query_type: Option<u32>,
    /// Query option bits.
    pub query_options: Option<u64>,
    /// Status (0 success, 9003 name does not exist...).
    pub status: Option<u32>,
    /// Results as recorded: records separated by `;`.
    pub results: Option<String>,
    /// `results` split at `;`, with `type:  5 name` prefixes kept as recorded.
    pub answers: Vec<String>,
    /// Servers queried, as recorded.
    pub server_list: Option<String>,
    /// Interface index.
    pub interface_index: Option<u32>,
    /// Interface name (server configuration events).
    pub interface: Option<String>,
    /// Server address (server configuration events).
    pub server_address: Option<String>,
}

/// A PowerShell script block (event 4104): script text as compiled, split into parts when long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScriptBlockEvent {
    /// Part number, from 1.
    pub message_number: i32,
    /// Part count.
    pub message_total: i32,
    /// Script text of this part.
    pub script_block_text: String,
    /// Script block id (a GUID), shared by the parts.
    pub script_block_id: String,
    /// Script path, empty for interactive input.
    pub path: String,
}

/// A PowerShell pipeline, command or engine event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PowerShellEvent {
    /// Event id (4103 command invocation, 7937 to 7942 engine and pipeline, 40961 and 40962
    /// console start, 53504 IPC listener).
    pub event_id: u16,
    /// `ContextInfo`: `Name = value` lines (host, engine, runspace, pipeline, command, user).
    pub context_info: Option<String>,
    /// `UserData`.
    pub user_data: Option<String>,
    /// `Payload`: the message, for 4103 the command and its parameter bindings.
    pub payload: Option<String>,
    /// `Host Application` from the context: the command line of the host process.
    pub host_application: Option<String>,
    /// `Command Name` from the context.
    pub command_name: Option<String>,
    /// `Script Name` from the context.
    pub script_name: Option<String>,
    /// `User` from the context.
    pub user: Option<String>,
    /// Other string fields in payload order (53504 parameters).
    pub parameters: Vec<String>,
}

/// An AMSI scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AmsiScanEvent {
    /// AMSI session handle.
    pub session: Option<u64>,
    /// Scan status.
    pub scan_status: Option<u32>,
    /// `AMSI_RESULT` (0 clean, 1 not detected, 32768 and above detected).
    pub scan_result: Option<u32>,
    /// Application that submitted the content (for example `PowerShell_C:\...\powershell.exe_10.0...`).
    pub app_name: String,
    /// Content name (script path or URL), often empty.
    pub content_name: String,
    /// Bytes of content in the event.
    pub content_size: Option<u32>,
    /// Bytes of content submitted.
    pub original_size: Option<u32>,
    /// Content decoded as UTF-16 text (scripts are submitted as UTF-16).
    pub content: String,
    /// SHA-256 of the content, when recorded.
    pub hash: Option<Vec<u8>>,
    /// Whether the content was filtered out of the event.
    pub content_filtered: Option<bool>,
}
