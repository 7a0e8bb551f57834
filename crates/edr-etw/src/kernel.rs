//! NT Kernel Logger hook id groups: the provider GUID and name that a kernel header's
//! `group` byte stands for (`EVENT_TRACE_GROUP_*` in the Windows SDK, class GUIDs from the
//! `MSNT_SystemTrace` MOF classes).

use crate::guid::Guid;

/// Provider GUID of a kernel hook id group, `None` for groups without a documented class.
pub fn group_guid(group: u8) -> Option<Guid> {
    let value: u128 = match group {
        0x00 => 0x68fdd900_4a3e_11d1_84f4_0000f80464e3, // EventTrace (header events)
        0x01 => 0x3d6fa8d4_fe05_11d0_9dda_00c04fd7ba7c, // DiskIo
        0x02 => 0x3d6fa8d3_fe05_11d0_9dda_00c04fd7ba7c, // PageFault
        0x03 => 0x3d6fa8d0_fe05_11d0_9dda_00c04fd7ba7c, // Process
        0x04 => 0x90cbdc39_4a3e_11d1_84f4_0000f80464e3, // FileIo
        0x05 => 0x3d6fa8d1_fe05_11d0_9dda_00c04fd7ba7c, // Thread
        0x06 => 0x9a280ac0_c8e0_11d1_84e2_00c04fb998a2, // TcpIp
        0x07 => 0x3282fc76_feed_498e_8aa7_e70f459d430e, // Job
        0x08 => 0xbf3a50c5_a9c9_4988_a005_2df0b7c80f80, // UdpIp
        0x09 => 0xae53722e_c863_11d2_8659_00c04fa321a1, // Registry
        0x0a => 0x13976d09_a327_438c_950b_7f03192815c7, // DbgPrint
        0x0b => 0x01853a65_418f_4f36_aefc_dc0f1d2fd235, // SystemConfig
        0x0e => 0x0268a8b6_74fd_4302_9dd0_6e8f1795c0cf, // Pool
        0x0f => 0xce1dbfb4_137e_4da6_87b0_3f59aa102cbc, // PerfInfo
        0x10 => 0x222962ab_6180_4b88_a825_346b75f2a24a, // Heap
        0x11 => 0x89497f50_effe_4440_8cf2_ce6b1cdcaca7, // ObTrace
        0x12 => 0xe43445e0_0903_48c3_b878_ff0fccebdd04, // Power
        0x14 => 0x2cb15d1d_5fc1_11d2_abe1_00a0c911f518, // Image
        0x18 => 0xdef2fe46_7bd6_4b80_bd94_f57fe20d0ce3, // StackWalk
        0x1a => 0x45d8cccd_539f_4b72_a8b7_5c683142609a, // ALPC
        0x1b => 0xd837ca92_12b9_44a5_ad6a_3a65b3578aa8, // SplitIo
        0x1c => 0xc861d0e2_a2c1_4d36_9f9c_970bab943a12, // ThreadPool
        _ => return None,
    };
    Some(Guid::from_u128(value))
}

/// Hook of the image loads that the kernel writes under the Process group: `ntwmi.h` names it
/// `PERFINFO_LOG_TYPE_IMAGELOAD`. Its payload is an Image event's; PerfView and dissect.etl
/// read it as Image/Load.
const HOOK_PROCESS_IMAGE_LOAD: u16 = 0x030a;

/// Group of a kernel event's hook (`hook_id >> 8`), except that the image loads written under
/// the Process group ([`HOOK_PROCESS_IMAGE_LOAD`]) belong to the Image group.
pub fn hook_group(hook_id: u16) -> u8 {
    if hook_id == HOOK_PROCESS_IMAGE_LOAD {
        0x14
    } else {
        (hook_id >> 8) as u8
    }
}

/// Short group name, as trace tools print it (`Process`, `Image`, `TcpIp`...).
pub fn group_name(group: u8) -> &'static str {
    match group {
        0x00 => "Header",
        0x01 => "IO",
        0x02 => "Memory",
        0x03 => "Process",
        0x04 => "File",
        0x05 => "Thread",
        0x06 => "TcpIp",
        0x07 => "Job",
        0x08 => "UdpIp",
        0x09 => "Registry",
        0x0a => "DbgPrint",
        0x0b => "Config",
        0x0c => "Spare1",
        0x0d => "Wnf",
        0x0e => "Pool",
        0x0f => "PerfInfo",
        0x10 => "Heap",
        0x11 => "Object",
        0x12 => "Power",
        0x13 => "Modbound",
        0x14 => "Image",
        0x15 => "Dpc",
        0x16 => "Cc",
        0x17 => "Critsec",
        0x18 => "StackWalk",
        0x19 => "Ums",
        0x1a => "ALPC",
        0x1b => "SplitIo",
        0x1c => "ThreadPool",
        0x1d => "Hypervisor",
        0x1e => "HypervisorX",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_load_under_process_hook_is_image() {
        assert_eq!(hook_group(0x030a), 0x14);
        assert_eq!(group_guid(hook_group(0x030a)), group_guid(0x14));
        assert_eq!(hook_group(0x0301), 0x03, "process start stays Process");
        assert_eq!(hook_group(0x140a), 0x14);
    }
}
