//! DPAPI key protection, directory ACLs and the OS version.
//!
//! NOTE: these wrappers are type-checked on Linux and run under Wine in tests; they have not
//! run on a real Windows host. Wine proves linking and plumbing, not Windows behaviour.

use std::path::Path;

use super::{OsError, codes};

use windows::Wdk::System::SystemServices::RtlGetVersion;
use windows::Win32::Foundation::{HLOCAL, LocalFree};
use windows::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1, SE_FILE_OBJECT,
    SetNamedSecurityInfoW,
};
use windows::Win32::Security::Cryptography::{
    CRYPT_INTEGER_BLOB, CRYPTPROTECT_UI_FORBIDDEN, CryptProtectData, CryptUnprotectData,
};
use windows::Win32::Security::{
    ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl, PROTECTED_DACL_SECURITY_INFORMATION,
    PSECURITY_DESCRIPTOR,
};
use windows::Win32::System::SystemInformation::OSVERSIONINFOW;
use windows::core::{BOOL, PCWSTR, PWSTR};
use zeroize::Zeroizing;

/// A buffer that Win32 allocated with `LocalAlloc`, freed on drop.
struct LocalBuffer(CRYPT_INTEGER_BLOB);

impl LocalBuffer {
    fn as_slice(&self) -> &[u8] {
        if self.0.pbData.is_null() {
            return &[];
        }
        // SAFETY: CryptProtectData/CryptUnprotectData returned this blob: pbData points to
        // cbData initialised bytes that stay valid until LocalFree in `drop`.
        unsafe { std::slice::from_raw_parts(self.0.pbData, self.0.cbData as usize) }
    }
}

impl Drop for LocalBuffer {
    fn drop(&mut self) {
        if !self.0.pbData.is_null() {
            // SAFETY: pbData was allocated by the OS with LocalAlloc and is freed exactly once.
            unsafe {
                LocalFree(Some(HLOCAL(self.0.pbData.cast())));
            }
        }
    }
}

fn input_blob(data: &[u8]) -> Result<CRYPT_INTEGER_BLOB, OsError> {
    // DPAPI blobs carry a 32-bit length; a key is a few hundred bytes.
    let len = u32::try_from(data.len())
        .map_err(|_| OsError::new("CryptProtectData", codes::ERROR_INVALID_PARAMETER))?;
    Ok(CRYPT_INTEGER_BLOB {
        cbData: len,
        // The API takes a mutable pointer but only reads the input.
        pbData: data.as_ptr().cast_mut(),
    })
}

/// Encrypts `data` with DPAPI under the calling user (for the sensor service: LocalSystem).
/// `CRYPTPROTECT_LOCAL_MACHINE` is deliberately not set, so other accounts cannot decrypt it.
pub(crate) fn protect_data(data: &[u8]) -> Result<Vec<u8>, OsError> {
    let input = input_blob(data)?;
    let mut output = LocalBuffer(CRYPT_INTEGER_BLOB::default());
    // SAFETY: `input` points into `data`, which outlives the call; `output.0` is a valid
    // out-parameter that the OS fills with a LocalAlloc buffer that `LocalBuffer` frees.
    unsafe {
        CryptProtectData(
            &input,
            PCWSTR::null(),
            None,
            None,
            None,
            CRYPTPROTECT_UI_FORBIDDEN,
            &mut output.0,
        )
    }
    .map_err(|err| OsError::from_windows("CryptProtectData", &err))?;
    Ok(output.as_slice().to_vec())
}

/// Decrypts data sealed by [`protect_data`] under the same user.
pub(crate) fn unprotect_data(sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OsError> {
    let input = input_blob(sealed)?;
    let mut output = LocalBuffer(CRYPT_INTEGER_BLOB::default());
    // SAFETY: as in `protect_data`; the description out-parameter is not requested.
    unsafe {
        CryptUnprotectData(
            &input,
            None::<*mut PWSTR>,
            None,
            None,
            None,
            CRYPTPROTECT_UI_FORBIDDEN,
            &mut output.0,
        )
    }
    .map_err(|err| OsError::from_windows("CryptUnprotectData", &err))?;
    Ok(Zeroizing::new(output.as_slice().to_vec()))
}

/// Replaces the DACL of `dir` with full control for SYSTEM and Administrators only, inherited
/// by files and subdirectories, and blocks inheritance from the parent.
pub(crate) fn restrict_to_system_and_admins(dir: &Path) -> Result<(), OsError> {
    // P: protected (no inheritance from the parent); OICI: inherited by files and folders;
    // FA: full access; SY: LocalSystem; BA: built-in Administrators.
    const SDDL: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";
    let sddl = wide(SDDL);
    let mut descriptor = PSECURITY_DESCRIPTOR::default();
    // SAFETY: `sddl` is a NUL-terminated UTF-16 string alive for the call; `descriptor`
    // receives a LocalAlloc buffer freed below.
    unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            PCWSTR(sddl.as_ptr()),
            SDDL_REVISION_1,
            &mut descriptor,
            None,
        )
    }
    .map_err(|err| {
        OsError::from_windows("ConvertStringSecurityDescriptorToSecurityDescriptorW", &err)
    })?;
    let _guard = LocalDescriptor(descriptor);

    let mut present = BOOL::default();
    let mut defaulted = BOOL::default();
    let mut dacl: *mut ACL = std::ptr::null_mut();
    // SAFETY: `descriptor` is the valid descriptor created above; the out-pointers are valid.
    unsafe { GetSecurityDescriptorDacl(descriptor, &mut present, &mut dacl, &mut defaulted) }
        .map_err(|err| OsError::from_windows("GetSecurityDescriptorDacl", &err))?;

    let path = wide(&dir.to_string_lossy());
    // SAFETY: `path` is NUL-terminated UTF-16; `dacl` points into `descriptor`, which lives
    // until `_guard` drops after this call.
    let status = unsafe {
        SetNamedSecurityInfoW(
            PCWSTR(path.as_ptr()),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            None,
            None,
            Some(dacl.cast_const()),
            None,
        )
    };
    if status.0 != 0 {
        let err = windows::core::Error::from(status.to_hresult());
        return Err(OsError::from_windows("SetNamedSecurityInfoW", &err));
    }
    Ok(())
}

struct LocalDescriptor(PSECURITY_DESCRIPTOR);

impl Drop for LocalDescriptor {
    fn drop(&mut self) {
        if !self.0.0.is_null() {
            // SAFETY: the descriptor was allocated by the OS with LocalAlloc; freed once.
            unsafe {
                LocalFree(Some(HLOCAL(self.0.0)));
            }
        }
    }
}

/// Returns the OS version as `major.minor.build`, for example `10.0.19045`.
pub(crate) fn os_build() -> Result<String, OsError> {
    let mut info = OSVERSIONINFOW {
        dwOSVersionInfoSize: u32::try_from(std::mem::size_of::<OSVERSIONINFOW>()).unwrap_or(0),
        ..Default::default()
    };
    // SAFETY: `info` is a valid OSVERSIONINFOW with its size field set, as the API requires.
    let status = unsafe { RtlGetVersion(&mut info) };
    if status.0 != 0 {
        // RtlGetVersion returns an NTSTATUS, which is kept as its bit pattern.
        return Err(OsError::new("RtlGetVersion", status.0 as u32));
    }
    Ok(format!(
        "{}.{}.{}",
        info.dwMajorVersion, info.dwMinorVersion, info.dwBuildNumber
    ))
}

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(std::iter::once(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpapi_round_trip() {
        let secret = b"sensor private key bytes";
        let sealed = protect_data(secret).unwrap();
        assert_ne!(sealed.as_slice(), secret.as_slice());
        assert_eq!(
            unprotect_data(&sealed).unwrap().as_slice(),
            secret.as_slice()
        );
    }

    #[test]
    fn dpapi_rejects_tampered_blob() {
        let mut sealed = protect_data(b"key").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 0xff;
        let err = unprotect_data(&sealed).unwrap_err();
        assert_eq!(err.api, "CryptUnprotectData");
    }

    #[test]
    fn os_build_has_three_parts() {
        let build = os_build().unwrap();
        assert_eq!(build.split('.').count(), 3, "{build}");
    }
}
