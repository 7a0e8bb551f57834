//! Enabling privileges in the process token: `OpenProcessToken`, `LookupPrivilegeValueW`,
//! `AdjustTokenPrivileges`.

use windows::Win32::Foundation::{CloseHandle, GetLastError, HANDLE, LUID};
use windows::Win32::Security::{
    AdjustTokenPrivileges, LUID_AND_ATTRIBUTES, LookupPrivilegeValueW, SE_PRIVILEGE_ENABLED,
    TOKEN_ADJUST_PRIVILEGES, TOKEN_PRIVILEGES, TOKEN_QUERY,
};
use windows::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
use windows::core::HSTRING;

use super::{OsError, codes};
use crate::service::Privileges;

/// Enables privileges in the current process's token.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessPrivileges;

impl Privileges for ProcessPrivileges {
    fn enable(&self, privilege: &'static str) -> Result<(), OsError> {
        enable_privilege(privilege)
    }
}

/// Enables `privilege` (for example `SeDebugPrivilege`). Fails with `ERROR_NOT_ALL_ASSIGNED`
/// when the account does not hold it.
pub fn enable_privilege(privilege: &str) -> Result<(), OsError> {
    let mut luid = LUID::default();
    // SAFETY: the name is a NUL-terminated HSTRING that outlives the call; `luid` is a valid out
    // pointer.
    unsafe { LookupPrivilegeValueW(None, &HSTRING::from(privilege), &mut luid) }
        .map_err(|error| OsError::from_windows("LookupPrivilegeValueW", &error))?;

    let token = Token::open()?;
    let state = TOKEN_PRIVILEGES {
        PrivilegeCount: 1,
        Privileges: [LUID_AND_ATTRIBUTES {
            Luid: luid,
            Attributes: SE_PRIVILEGE_ENABLED,
        }],
    };
    // SAFETY: `token` is an open token handle with TOKEN_ADJUST_PRIVILEGES; `state` outlives the
    // call and holds exactly PrivilegeCount entries.
    unsafe { AdjustTokenPrivileges(token.0, false, Some(&state), 0, None, None) }
        .map_err(|error| OsError::from_windows("AdjustTokenPrivileges", &error))?;

    // AdjustTokenPrivileges succeeds even when it assigned nothing; GetLastError tells.
    // SAFETY: GetLastError only reads thread-local state.
    let last = unsafe { GetLastError() }.0;
    if last == codes::ERROR_NOT_ALL_ASSIGNED {
        return Err(OsError::new("AdjustTokenPrivileges", last));
    }
    Ok(())
}

/// An open process token, closed on drop.
struct Token(HANDLE);

impl Token {
    fn open() -> Result<Self, OsError> {
        let mut handle = HANDLE::default();
        // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing; `handle` is a
        // valid out pointer.
        unsafe {
            OpenProcessToken(
                GetCurrentProcess(),
                TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY,
                &mut handle,
            )
        }
        .map_err(|error| OsError::from_windows("OpenProcessToken", &error))?;
        Ok(Self(handle))
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        // SAFETY: the handle came from OpenProcessToken and is closed once.
        let _ = unsafe { CloseHandle(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_privilege_fails_lookup() {
        let error = enable_privilege("SeNoSuchPrivilegeForTests").unwrap_err();
        assert_eq!(error.api, "LookupPrivilegeValueW");
        assert_eq!(error.code, codes::ERROR_NO_SUCH_PRIVILEGE);
    }

    #[test]
    fn debug_privilege_enabled_or_reported_missing() {
        match enable_privilege("SeDebugPrivilege") {
            Ok(()) => {}
            Err(error) => assert_eq!(error.code, codes::ERROR_NOT_ALL_ASSIGNED, "{error}"),
        }
    }
}
