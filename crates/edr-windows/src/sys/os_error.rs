//! The error every wrapper in `sys` returns: the failing API and the Win32 error code.
//!
//! The codes the loader and the service branch on are defined here as plain numbers, so that the
//! logic that classifies them compiles and is tested on Linux.

use std::fmt;

/// A Win32 call failed: which API, and the code it or `GetLastError` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsError {
    /// The Win32 function that failed, for example `StartTraceW`.
    pub api: &'static str,
    /// The Win32 error code (`ERROR_*`).
    pub code: u32,
}

impl OsError {
    /// Creates an error for `api` failing with `code`.
    pub const fn new(api: &'static str, code: u32) -> Self {
        Self { api, code }
    }

    /// Converts an error from the `windows` crate, unwrapping `HRESULT_FROM_WIN32` codes.
    #[cfg(windows)]
    pub fn from_windows(api: &'static str, error: &windows::core::Error) -> Self {
        let hresult = error.code().0 as u32;
        let code = if hresult & 0xFFFF_0000 == 0x8007_0000 {
            hresult & 0xFFFF
        } else {
            hresult
        };
        Self { api, code }
    }

    /// Whether the failure is a transient shortage of kernel memory or ETW buffers, which is
    /// worth retrying after a delay.
    pub fn is_resource_shortage(&self) -> bool {
        matches!(
            self.code,
            codes::ERROR_NO_SYSTEM_RESOURCES
                | codes::ERROR_NOT_ENOUGH_MEMORY
                | codes::ERROR_OUTOFMEMORY
        )
    }
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match codes::name(self.code) {
            Some(name) => write!(f, "{} failed with error {} ({name})", self.api, self.code),
            None => write!(f, "{} failed with error {}", self.api, self.code),
        }
    }
}

impl std::error::Error for OsError {}

/// Win32 error codes that this crate handles by value.
pub mod codes {
    pub const ERROR_SUCCESS: u32 = 0;
    pub const ERROR_FILE_NOT_FOUND: u32 = 2;
    pub const ERROR_ACCESS_DENIED: u32 = 5;
    pub const ERROR_INVALID_HANDLE: u32 = 6;
    pub const ERROR_NOT_ENOUGH_MEMORY: u32 = 8;
    pub const ERROR_OUTOFMEMORY: u32 = 14;
    pub const ERROR_NOT_SUPPORTED: u32 = 50;
    pub const ERROR_INVALID_PARAMETER: u32 = 87;
    pub const ERROR_BAD_PATHNAME: u32 = 161;
    pub const ERROR_ALREADY_EXISTS: u32 = 183;
    pub const ERROR_MORE_DATA: u32 = 234;
    pub const ERROR_SERVICE_ALREADY_RUNNING: u32 = 1056;
    pub const ERROR_SERVICE_DISABLED: u32 = 1058;
    pub const ERROR_SERVICE_DOES_NOT_EXIST: u32 = 1060;
    pub const ERROR_SERVICE_CANNOT_ACCEPT_CTRL: u32 = 1061;
    pub const ERROR_SERVICE_NOT_ACTIVE: u32 = 1062;
    pub const ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: u32 = 1063;
    pub const ERROR_SERVICE_MARKED_FOR_DELETE: u32 = 1072;
    pub const ERROR_SERVICE_EXISTS: u32 = 1073;
    pub const ERROR_CANCELLED: u32 = 1223;
    pub const ERROR_NOT_ALL_ASSIGNED: u32 = 1300;
    pub const ERROR_NO_SUCH_PRIVILEGE: u32 = 1313;
    pub const ERROR_NO_SYSTEM_RESOURCES: u32 = 1450;
    pub const ERROR_WMI_INSTANCE_NOT_FOUND: u32 = 4201;
    pub const ERROR_CTX_CLOSE_PENDING: u32 = 7007;

    /// Returns the symbolic name of a code this crate knows, for messages.
    pub fn name(code: u32) -> Option<&'static str> {
        Some(match code {
            ERROR_SUCCESS => "ERROR_SUCCESS",
            ERROR_FILE_NOT_FOUND => "ERROR_FILE_NOT_FOUND",
            ERROR_ACCESS_DENIED => "ERROR_ACCESS_DENIED",
            ERROR_INVALID_HANDLE => "ERROR_INVALID_HANDLE",
            ERROR_NOT_ENOUGH_MEMORY => "ERROR_NOT_ENOUGH_MEMORY",
            ERROR_OUTOFMEMORY => "ERROR_OUTOFMEMORY",
            ERROR_NOT_SUPPORTED => "ERROR_NOT_SUPPORTED",
            ERROR_INVALID_PARAMETER => "ERROR_INVALID_PARAMETER",
            ERROR_BAD_PATHNAME => "ERROR_BAD_PATHNAME",
            ERROR_ALREADY_EXISTS => "ERROR_ALREADY_EXISTS",
            ERROR_MORE_DATA => "ERROR_MORE_DATA",
            ERROR_SERVICE_ALREADY_RUNNING => "ERROR_SERVICE_ALREADY_RUNNING",
            ERROR_SERVICE_DISABLED => "ERROR_SERVICE_DISABLED",
            ERROR_SERVICE_DOES_NOT_EXIST => "ERROR_SERVICE_DOES_NOT_EXIST",
            ERROR_SERVICE_CANNOT_ACCEPT_CTRL => "ERROR_SERVICE_CANNOT_ACCEPT_CTRL",
            ERROR_SERVICE_NOT_ACTIVE => "ERROR_SERVICE_NOT_ACTIVE",
            ERROR_FAILED_SERVICE_CONTROLLER_CONNECT => "ERROR_FAILED_SERVICE_CONTROLLER_CONNECT",
            ERROR_SERVICE_MARKED_FOR_DELETE => "ERROR_SERVICE_MARKED_FOR_DELETE",
            ERROR_SERVICE_EXISTS => "ERROR_SERVICE_EXISTS",
            ERROR_CANCELLED => "ERROR_CANCELLED",
            ERROR_NOT_ALL_ASSIGNED => "ERROR_NOT_ALL_ASSIGNED",
            ERROR_NO_SUCH_PRIVILEGE => "ERROR_NO_SUCH_PRIVILEGE",
            ERROR_NO_SYSTEM_RESOURCES => "ERROR_NO_SYSTEM_RESOURCES",
            ERROR_WMI_INSTANCE_NOT_FOUND => "ERROR_WMI_INSTANCE_NOT_FOUND",
            ERROR_CTX_CLOSE_PENDING => "ERROR_CTX_CLOSE_PENDING",
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_api_and_code() {
        let error = OsError::new("StartTraceW", codes::ERROR_ACCESS_DENIED);
        assert_eq!(
            error.to_string(),
            "StartTraceW failed with error 5 (ERROR_ACCESS_DENIED)"
        );
        let unknown = OsError::new("ControlTraceW", 99_999);
        assert_eq!(unknown.to_string(), "ControlTraceW failed with error 99999");
    }

    #[test]
    fn resource_shortage_classification() {
        assert!(
            OsError::new("StartTraceW", codes::ERROR_NO_SYSTEM_RESOURCES).is_resource_shortage()
        );
        assert!(OsError::new("StartTraceW", codes::ERROR_OUTOFMEMORY).is_resource_shortage());
        assert!(!OsError::new("StartTraceW", codes::ERROR_ACCESS_DENIED).is_resource_shortage());
    }
}
