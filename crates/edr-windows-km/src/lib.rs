//! Kernel-mode component of the Windows sensor (not built yet).
//!
//! The driver will register a file-system minifilter and process, thread and image-load
//! callbacks, and pass what they see to the user-mode sensor over a filter communication port.
//! It is excluded from the workspace because it needs the Windows Driver Kit.
//!
//! Only the names shared with user mode are fixed here, so that the sensor and the driver agree
//! on them before the driver exists.
#![no_std]
#![forbid(unsafe_code)]

/// Name of the filter communication port the user-mode sensor connects to.
pub const COMMUNICATION_PORT_NAME: &str = "\\EdrSensorPort";

/// Minifilter altitude, in the FSFilter Activity Monitor range (360000-389999).
///
/// NOTE: a placeholder. A shipping driver needs an altitude assigned by Microsoft.
pub const MINIFILTER_ALTITUDE: &str = "385100";
