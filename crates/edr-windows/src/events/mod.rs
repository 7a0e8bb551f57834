//! Decoders from ETW event records to typed raw events.
//!
//! # Dispatch
//!
//! [`Decoder::decode`] picks the decoder for a record with one `match` on the provider GUID
//! (for NT Kernel Logger events, the GUID of the hook id group) followed by a `match` on the
//! event id or opcode and the version. Layouts are compiled in: there is no TDH call and no
//! schema lookup per event. TraceLogging events carry their metadata in the record; the AMSI
//! decoder reads it to locate fields by name.
//!
//! # Versions
//!
//! Each decoder lists the versions it has a layout for. A record with a known version is
//! decoded with that layout. A record with a newer version is decoded with the newest known
//! layout only when the payload proves that layout fits: every fixed field present and every
//! string terminated inside the payload (later versions append fields). Otherwise, and for
//! versions older than every known layout, the record is counted as undecodable in
//! [`DecodeStats`] with its provider, id and version, and nothing is guessed.
//!
//! # Coverage
//!
//! | source | events |
//! |---|---|
//! | NT Kernel Logger | Process, Thread, Image, FileIo, TcpIp, UdpIp, Registry (see [`kernel`]) |
//! | Microsoft-Windows-Kernel-Process, -Network, -File, -Registry, -DNS-Client | see [`manifest`] |
//! | Microsoft-Windows-PowerShell, AMSI (TraceLogging and manifest) | see [`script`] |
//!
//! Everything else is counted as not covered.

pub mod kernel;
pub mod manifest;
mod payload;
pub mod script;
mod types;

use std::collections::BTreeMap;

use edr_etw::{EventRecord, Guid, HeaderKind};
use serde::Serialize;

pub use payload::format_sid;
pub use types::*;

use payload::LayoutMismatch;

/// Provider GUIDs the decoders dispatch on.
pub mod providers {
    use edr_etw::Guid;

    /// NT Kernel Logger Process group.
    pub const KERNEL_PROCESS_GROUP: Guid = Guid::from_u128(0x3d6fa8d0_fe05_11d0_9dda_00c04fd7ba7c);
    /// NT Kernel Logger Thread group.
    pub const KERNEL_THREAD_GROUP: Guid = Guid::from_u128(0x3d6fa8d1_fe05_11d0_9dda_00c04fd7ba7c);
    /// NT Kernel Logger Image group.
    pub const KERNEL_IMAGE_GROUP: Guid = Guid::from_u128(0x2cb15d1d_5fc1_11d2_abe1_00a0c911f518);
    /// NT Kernel Logger FileIo group.
    pub const KERNEL_FILE_GROUP: Guid = Guid::from_u128(0x90cbdc39_4a3e_11d1_84f4_0000f80464e3);
    /// NT Kernel Logger TcpIp group.
    pub const KERNEL_TCPIP_GROUP: Guid = Guid::from_u128(0x9a280ac0_c8e0_11d1_84e2_00c04fb998a2);
    /// NT Kernel Logger UdpIp group.
    pub const KERNEL_UDPIP_GROUP: Guid = Guid::from_u128(0xbf3a50c5_a9c9_4988_a005_2df0b7c80f80);
    /// NT Kernel Logger Registry group.
    pub const KERNEL_REGISTRY_GROUP: Guid = Guid::from_u128(0xae53722e_c863_11d2_8659_00c04fa321a1);
    /// Microsoft-Windows-Kernel-Process.
    pub const KERNEL_PROCESS: Guid = Guid::from_u128(0x22fb2cd6_0e7b_422b_a0c7_2fad1fd0e716);
    /// Microsoft-Windows-Kernel-Network.
    pub const KERNEL_NETWORK: Guid = Guid::from_u128(0x7dd42a49_5329_4832_8dfd_43d979153a88);
    /// Microsoft-Windows-Kernel-File.
    pub const KERNEL_FILE: Guid = Guid::from_u128(0xedd08927_9cc4_4e65_b970_c2560fb5c289);
    /// Microsoft-Windows-Kernel-Registry.
    pub const KERNEL_REGISTRY: Guid = Guid::from_u128(0x70eb4f03_c1de_4f73_a051_33d13d5413bd);
    /// Microsoft-Windows-DNS-Client.
    pub const DNS_CLIENT: Guid = Guid::from_u128(0x1c95126e_7eea_49a9_a3fe_a378b03ddb4d);
    /// Microsoft-Windows-PowerShell.
    pub const POWERSHELL: Guid = Guid::from_u128(0xa0c1853b_5c40_4b15_8766_3cf1c58f985a);
    /// Microsoft-Antimalware-Scan-Interface (manifest).
    pub const AMSI: Guid = Guid::from_u128(0x2a576b87_09a7_520e_c21a_4942f0271d67);
    /// `AmsiTrace`, the TraceLogging provider of PowerShell's AMSI tracing.
    pub const AMSI_TRACELOGGING: Guid = Guid::from_u128(0x8e805eb3_6a8f_4a1e_90fa_a831d94e54a1);

    /// Registered name of a provider the decoders know.
    pub fn name(provider: Guid) -> Option<&'static str> {
        Some(match provider {
            KERNEL_PROCESS => "Microsoft-Windows-Kernel-Process",
            KERNEL_NETWORK => "Microsoft-Windows-Kernel-Network",
            KERNEL_FILE => "Microsoft-Windows-Kernel-File",
            KERNEL_REGISTRY => "Microsoft-Windows-Kernel-Registry",
            DNS_CLIENT => "Microsoft-Windows-DNS-Client",
            POWERSHELL => "Microsoft-Windows-PowerShell",
            AMSI => "Microsoft-Antimalware-Scan-Interface",
            AMSI_TRACELOGGING => "AmsiTrace",
            _ => return None,
        })
    }
}

/// The layout chosen for a record version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version {
    /// Known layout version to decode with.
    pub(crate) layout: u8,
    /// Whether the payload must prove the layout fits (the record's version is not known).
    pub(crate) strict: bool,
}

impl Version {
    /// Picks the layout for `version` among `known` (ascending): exact, or the nearest older
    /// one in strict mode; `None` below the oldest.
    pub(crate) fn select(version: u8, known: &[u8]) -> Option<Version> {
        if known.contains(&version) {
            return Some(Version {
                layout: version,
                strict: false,
            });
        }
        known
            .iter()
            .rev()
            .find(|&&k| k < version)
            .map(|&k| Version {
                layout: k,
                strict: true,
            })
    }
}

/// Outcome of one decoder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decoding {
    Decoded(RawEvent),
    /// The event is not one the sensor consumes.
    NotCovered,
    /// No known layout applies to the version.
    UnknownVersion,
    /// The payload does not fit the layout.
    Mismatch,
}

impl Decoding {
    fn from_result(result: Result<RawEvent, LayoutMismatch>) -> Self {
        match result {
            Ok(event) => Decoding::Decoded(event),
            Err(LayoutMismatch) => Decoding::Mismatch,
        }
    }
}

/// Identity of an event kind in the undecodable counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct EventKey {
    /// Provider (or kernel group) GUID.
    pub provider: Guid,
    /// Event id, or the opcode for kernel events.
    pub id_or_opcode: u16,
    /// Version.
    pub version: u8,
}

/// Cause of an undecodable event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum UndecodableReason {
    /// The version is older than every known layout, or newer and the payload does not prove
    /// the newest layout fits.
    UnknownVersion,
    /// The payload is too short for the layout of its known version.
    LayoutMismatch,
}

/// Decoding counters, kept per decoder instance.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DecodeStats {
    /// Records decoded into typed events.
    pub decoded: u64,
    /// Records of events the sensor does not consume.
    pub not_covered: u64,
    /// Records of consumed events that could not be decoded, by kind and reason.
    pub undecodable: BTreeMap<(EventKey, UndecodableReason), u64>,
}

impl DecodeStats {
    /// Total undecodable records.
    pub fn undecodable_total(&self) -> u64 {
        self.undecodable.values().sum()
    }
}

/// Decodes records into typed events, counting what it cannot decode.
#[derive(Debug, Default)]
pub struct Decoder {
    stats: DecodeStats,
}

impl Decoder {
    /// Creates a decoder with zeroed counters.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Counters so far.
    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// Decodes one record; `None` when the event is not covered or cannot be decoded (both
    /// counted).
    pub fn decode(&mut self, record: &EventRecord<'_>) -> Option<DecodedEvent> {
        let outcome = dispatch(record);
        match outcome {
            Decoding::Decoded(event) => {
                self.stats.decoded += 1;
                Some(DecodedEvent {
                    header: event_header(record),
                    event,
                })
            }
            Decoding::NotCovered => {
                self.stats.not_covered += 1;
                None
            }
            Decoding::UnknownVersion | Decoding::Mismatch => {
                let reason = if outcome == Decoding::Mismatch {
                    UndecodableReason::LayoutMismatch
                } else {
                    UndecodableReason::UnknownVersion
                };
                let key = EventKey {
                    provider: record.provider_id,
                    id_or_opcode: if record.header_kind == HeaderKind::Event {
                        record.descriptor.id
                    } else {
                        u16::from(record.descriptor.opcode)
                    },
                    version: record.descriptor.version,
                };
                *self.stats.undecodable.entry((key, reason)).or_default() += 1;
                None
            }
        }
    }
}

fn event_header(record: &EventRecord<'_>) -> EventHeader {
    EventHeader {
        provider: record.provider_id,
        event_id: record.descriptor.id,
        opcode: record.descriptor.opcode,
        version: record.descriptor.version,
        timestamp: record.timestamp,
        header_process_id: record.process_id,
        header_thread_id: record.thread_id,
        processor: record.processor,
    }
}

/// The decoder table: provider, then event id or opcode, then version.
fn dispatch(record: &EventRecord<'_>) -> Decoding {
    use providers::*;

    let d = &record.descriptor;
    let data = record.user_data;
    let ps = record.pointer_size;

    if record.header_kind.is_kernel() {
        return match record.provider_id {
            KERNEL_PROCESS_GROUP => kernel::process(d.opcode, d.version, data, ps),
            KERNEL_THREAD_GROUP => kernel::thread(d.opcode, d.version, data, ps),
            KERNEL_IMAGE_GROUP => kernel::image(d.opcode, d.version, data, ps),
            KERNEL_FILE_GROUP => kernel::file(d.opcode, d.version, data, ps),
            KERNEL_TCPIP_GROUP => kernel::network(Protocol::Tcp, d.opcode, d.version, data, ps),
            KERNEL_UDPIP_GROUP => kernel::network(Protocol::Udp, d.opcode, d.version, data, ps),
            KERNEL_REGISTRY_GROUP => kernel::registry(d.opcode, d.version, data, ps),
            _ => Decoding::NotCovered,
        };
    }
    if record.header_kind != HeaderKind::Event {
        return Decoding::NotCovered;
    }
    match record.provider_id {
        KERNEL_PROCESS => manifest::kernel_process(d.id, d.version, data, ps),
        KERNEL_NETWORK => manifest::kernel_network(d.id, d.version, data, ps),
        KERNEL_FILE => manifest::kernel_file(d.id, d.version, data, ps),
        KERNEL_REGISTRY => manifest::kernel_registry(d.id, d.version, data, ps),
        DNS_CLIENT => manifest::dns_client(d.id, d.version, data, ps),
        POWERSHELL => script::powershell(d.id, d.version, data, ps),
        AMSI => script::amsi_manifest(d.id, d.version, data, ps),
        AMSI_TRACELOGGING => script::amsi_tracelogging(record),
        _ => Decoding::NotCovered,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn version_selection_prefers_exact_then_older_strict() {
        assert_eq!(
            Version::select(2, &[1, 2, 3]),
            Some(Version {
                layout: 2,
                strict: false
            })
        );
        assert_eq!(
            Version::select(5, &[1, 2, 3]),
            Some(Version {
                layout: 3,
                strict: true
            })
        );
        assert_eq!(Version::select(0, &[1, 2, 3]), None);
    }
}
