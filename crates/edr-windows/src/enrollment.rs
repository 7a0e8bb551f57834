//! Windows protection of the sensor identity: DPAPI for the private key and a directory ACL
//! for SYSTEM and Administrators only.
//!
//! The key is sealed with `CryptProtectData` under the account the sensor runs as (the
//! service runs as LocalSystem), without `CRYPTPROTECT_LOCAL_MACHINE`: with that flag any
//! process on the machine could decrypt the key. The state directory gets a protected DACL
//! granting full control to SYSTEM and Administrators only.
//!
//! NOTE: this path has been type-checked for Windows and its DPAPI round trip runs under
//! Wine; it has not run on a real Windows host. On other platforms [`platform_protection`]
//! returns the Unix file-permission protection from `edr-sensor`.

use std::sync::Arc;

use edr_sensor::identity::KeyProtection;

/// Returns the protection scheme this build uses for the identity store.
pub fn platform_protection() -> Arc<dyn KeyProtection> {
    #[cfg(windows)]
    {
        Arc::new(Dpapi)
    }
    #[cfg(not(windows))]
    {
        Arc::new(edr_sensor::identity::FilePermissions)
    }
}

/// DPAPI key sealing (user scope) and a SYSTEM/Administrators directory ACL.
#[cfg(windows)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Dpapi;

#[cfg(windows)]
impl KeyProtection for Dpapi {
    fn scheme(&self) -> &'static str {
        "dpapi-user"
    }

    fn seal(&self, key: &[u8]) -> Result<Vec<u8>, edr_sensor::identity::ProtectionError> {
        crate::sys::security::protect_data(key).map_err(protection_error)
    }

    fn unseal(
        &self,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, edr_sensor::identity::ProtectionError> {
        crate::sys::security::unprotect_data(sealed).map_err(protection_error)
    }

    fn secure_directory(
        &self,
        dir: &std::path::Path,
    ) -> Result<(), edr_sensor::identity::ProtectionError> {
        crate::sys::security::restrict_to_system_and_admins(dir).map_err(protection_error)
    }
}

#[cfg(windows)]
fn protection_error(err: crate::sys::OsError) -> edr_sensor::identity::ProtectionError {
    edr_sensor::identity::ProtectionError {
        operation: err.api,
        detail: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_protection_round_trips_a_key() {
        let protection = platform_protection();
        let sealed = protection.seal(b"pkcs8 bytes").unwrap();
        assert_eq!(
            protection.unseal(&sealed).unwrap().as_slice(),
            b"pkcs8 bytes"
        );
    }

    #[cfg(windows)]
    #[test]
    fn dpapi_scheme_is_user_scoped() {
        assert_eq!(Dpapi.scheme(), "dpapi-user");
        let sealed = Dpapi.seal(b"k").unwrap();
        assert_ne!(sealed, b"k");
    }
}
