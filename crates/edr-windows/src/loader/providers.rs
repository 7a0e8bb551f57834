//! The ETW sessions the sensor runs and the providers enabled in each.
//!
//! Only the keywords and event ids the sensor maps to OCSF are enabled, and each provider gets an
//! `EVENT_FILTER_TYPE_EVENT_ID` filter, so providers drop unmapped events before they reach a
//! buffer. Keyword values come from the providers' instrumentation manifests
//! (Microsoft-Windows-Kernel-Process, -Kernel-File, -Kernel-Registry, -Kernel-Network) and from the
//! published event ids of DNS-Client and PowerShell.

use super::controller::ProviderEnable;

/// `TRACE_LEVEL_INFORMATION`.
const LEVEL_INFORMATION: u8 = 4;
/// `TRACE_LEVEL_VERBOSE`; PowerShell logs script blocks (4104) at this level.
const LEVEL_VERBOSE: u8 = 5;

/// `EVENT_ENABLE_PROPERTY_SID`: attach the user SID as an extended data item.
pub const ENABLE_PROPERTY_SID: u32 = 0x1;
/// `EVENT_ENABLE_PROPERTY_PROCESS_START_KEY`: attach the process start key, which survives pid
/// reuse.
pub const ENABLE_PROPERTY_PROCESS_START_KEY: u32 = 0x80;

/// The two sessions the loader runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionKind {
    /// Low-latency session for process and image events.
    Process,
    /// Larger-buffered session for file, registry, network, DNS and script events.
    Bulk,
}

impl SessionKind {
    /// Both sessions, in start order.
    pub const ALL: [SessionKind; 2] = [SessionKind::Process, SessionKind::Bulk];

    /// The session's fixed name. A session left by a crashed sensor has the same name, which is
    /// how the loader finds and replaces it.
    pub fn session_name(self) -> &'static str {
        match self {
            SessionKind::Process => "EdrSensor-Process",
            SessionKind::Bulk => "EdrSensor-Bulk",
        }
    }

    /// A small number stored in each copied record to say which session delivered it.
    pub fn index(self) -> u8 {
        match self {
            SessionKind::Process => 0,
            SessionKind::Bulk => 1,
        }
    }

    /// Returns the kind whose [`SessionKind::index`] is `index`.
    pub fn from_index(index: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.index() == index)
    }

    /// The providers enabled in this session.
    pub fn providers(self) -> Vec<ProviderEnable> {
        match self {
            SessionKind::Process => vec![kernel_process()],
            SessionKind::Bulk => vec![
                kernel_file(),
                kernel_registry(),
                kernel_network(),
                dns_client(),
                powershell(),
            ],
        }
    }
}

fn kernel_process() -> ProviderEnable {
    ProviderEnable {
        name: "Microsoft-Windows-Kernel-Process",
        guid: 0x22fb2cd6_0e7b_422b_a0c7_2fad1fd0e716,
        level: LEVEL_INFORMATION,
        // WINEVENT_KEYWORD_PROCESS (0x10) | WINEVENT_KEYWORD_IMAGE (0x40).
        match_any_keyword: 0x10 | 0x40,
        // ProcessStart, ProcessStop, ImageLoad.
        event_ids: vec![1, 2, 5],
        enable_property: ENABLE_PROPERTY_SID | ENABLE_PROPERTY_PROCESS_START_KEY,
    }
}

fn kernel_file() -> ProviderEnable {
    ProviderEnable {
        name: "Microsoft-Windows-Kernel-File",
        guid: 0xedd08927_9cc4_4e65_b970_c2560fb5c289,
        level: LEVEL_INFORMATION,
        // KERNEL_FILE_KEYWORD_CREATE (0x80) | DELETE_PATH (0x400) | RENAME_SETLINK_PATH (0x800)
        // | CREATE_NEW_FILE (0x1000). FILEIO (0x20) is left out: it would turn on every read,
        // write and close.
        match_any_keyword: 0x80 | 0x400 | 0x800 | 0x1000,
        // Create, DeletePath, RenamePath, SetLinkPath, CreateNewFile.
        event_ids: vec![12, 26, 27, 28, 30],
        enable_property: ENABLE_PROPERTY_PROCESS_START_KEY,
    }
}

fn kernel_registry() -> ProviderEnable {
    ProviderEnable {
        name: "Microsoft-Windows-Kernel-Registry",
        guid: 0x70eb4f03_c1de_4f73_a051_33d13d5413bd,
        level: LEVEL_INFORMATION,
        // CreateKey (0x1000) | DeleteKey (0x4000) | SetValueKey (0x100) | DeleteValueKey (0x200).
        match_any_keyword: 0x1000 | 0x4000 | 0x100 | 0x200,
        event_ids: vec![1, 3, 5, 6],
        enable_property: ENABLE_PROPERTY_PROCESS_START_KEY,
    }
}

fn kernel_network() -> ProviderEnable {
    ProviderEnable {
        name: "Microsoft-Windows-Kernel-Network",
        guid: 0x7dd42a49_5329_4832_8dfd_43d979153a88,
        level: LEVEL_INFORMATION,
        // KERNEL_NETWORK_KEYWORD_IPV4 (0x10) | KERNEL_NETWORK_KEYWORD_IPV6 (0x20).
        match_any_keyword: 0x10 | 0x20,
        // TCP connect and accept for IPv4 (12, 15) and IPv6 (28, 31). Send and receive events
        // are the bulk of this provider's volume and are filtered out.
        event_ids: vec![12, 15, 28, 31],
        enable_property: ENABLE_PROPERTY_PROCESS_START_KEY,
    }
}

fn dns_client() -> ProviderEnable {
    ProviderEnable {
        name: "Microsoft-Windows-DNS-Client",
        guid: 0x1c95126e_7eea_49a9_a3fe_a378b03ddb4d,
        level: LEVEL_INFORMATION,
        match_any_keyword: u64::MAX,
        // Query completed (3008) and query response (3020).
        event_ids: vec![3008, 3020],
        enable_property: ENABLE_PROPERTY_PROCESS_START_KEY,
    }
}

fn powershell() -> ProviderEnable {
    ProviderEnable {
        name: "Microsoft-Windows-PowerShell",
        guid: 0xa0c1853b_5c40_4b15_8766_3cf1c58f985a,
        level: LEVEL_VERBOSE,
        match_any_keyword: u64::MAX,
        // Script block logging (4104) and module logging (4103).
        event_ids: vec![4103, 4104],
        enable_property: ENABLE_PROPERTY_SID | ENABLE_PROPERTY_PROCESS_START_KEY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_are_fixed_and_distinct() {
        assert_eq!(SessionKind::Process.session_name(), "EdrSensor-Process");
        assert_eq!(SessionKind::Bulk.session_name(), "EdrSensor-Bulk");
    }

    #[test]
    fn session_index_round_trips() {
        for kind in SessionKind::ALL {
            assert_eq!(SessionKind::from_index(kind.index()), Some(kind));
        }
        assert_eq!(SessionKind::from_index(9), None);
    }

    #[test]
    fn every_provider_filters_event_ids() {
        for kind in SessionKind::ALL {
            for provider in kind.providers() {
                assert!(
                    !provider.event_ids.is_empty(),
                    "{} has no event id filter",
                    provider.name
                );
                // EVENT_FILTER_EVENT_ID holds at most MAX_EVENT_FILTER_EVENT_ID_COUNT (64) ids.
                assert!(
                    provider.event_ids.len() <= 64,
                    "{} has too many ids",
                    provider.name
                );
                assert_ne!(
                    provider.match_any_keyword, 0,
                    "{} enables no keyword",
                    provider.name
                );
            }
        }
    }

    #[test]
    fn process_session_has_only_kernel_process() {
        let providers = SessionKind::Process.providers();
        assert_eq!(providers.len(), 1);
        assert_eq!(providers[0].name, "Microsoft-Windows-Kernel-Process");
    }
}
