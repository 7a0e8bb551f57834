//! The identity store: the sensor's private key, certificate chain, Collector CA and
//! Collector address, kept in one state directory.
//!
//! # Format
//!
//! The directory contains one file, `identity.json` (format version 1):
//!
//! ```json
//! {
//!   "format": 1,
//!   "sensor_id": "<uuid>",
//!   "collector_url": "https://collector.example:7443",
//!   "ca_sha256": "<64 hex>",
//!   "ca_certificate_pem": "-----BEGIN CERTIFICATE-----...",
//!   "certificate_chain_pem": "<sensor certificate, then CA certificate>",
//!   "not_after": "2027-01-03T10:00:00Z",
//!   "enrolled_at": "2026-12-04T10:00:00Z",
//!   "renewed_at": null,
//!   "private_key": { "protection": "file-permissions", "data": "<base64>" }
//! }
//! ```
//!
//! `private_key.data` is the PKCS#8 DER of the key after [`KeyProtection::seal`]; the
//! `protection` field names the scheme that can unseal it.
//!
//! # Invariants
//!
//! - The file is replaced atomically: written to a temporary file in the same directory,
//!   flushed, renamed over `identity.json`, then the directory is flushed. A crash leaves the
//!   old identity or the new one, never a mix; a failed save leaves at most a temporary file
//!   that the next save ignores.
//! - The directory is created only by [`IdentityStore::save`], so a failed enrollment leaves
//!   no state directory behind.
//! - On Unix the directory has mode 0700 and the file 0600, and the key is stored unsealed.
//!   On Windows the platform crate seals the key with DPAPI and restricts the directory ACL.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// Name of the identity file inside the state directory.
pub const IDENTITY_FILE: &str = "identity.json";

/// Version of the identity file format written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// A failure of a [`KeyProtection`] operation.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {detail}")]
pub struct ProtectionError {
    /// The operation or OS call that failed, for example `CryptProtectData`.
    pub operation: &'static str,
    pub detail: String,
}

/// Protection of the private key and the state directory on one platform.
pub trait KeyProtection: Send + Sync + fmt::Debug {
    /// Scheme name stored in the identity file, for example `file-permissions`.
    fn scheme(&self) -> &'static str;
    /// Seals a PKCS#8 private key for storage.
    fn seal(&self, key: &[u8]) -> Result<Vec<u8>, ProtectionError>;
    /// Reverses [`seal`](Self::seal).
    fn unseal(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, ProtectionError>;
    /// Restricts access to the state directory, which exists when this is called.
    fn secure_directory(&self, dir: &Path) -> Result<(), ProtectionError>;
}

/// Unix protection: the key is stored as is, and only the owner may read the directory.
///
/// On other platforms this provides no protection beyond the default ACL; Windows builds use
/// the DPAPI protection from the platform crate instead.
#[derive(Debug, Clone, Copy, Default)]
pub struct FilePermissions;

impl KeyProtection for FilePermissions {
    fn scheme(&self) -> &'static str {
        "file-permissions"
    }

    fn seal(&self, key: &[u8]) -> Result<Vec<u8>, ProtectionError> {
        Ok(key.to_vec())
    }

    fn unseal(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, ProtectionError> {
        Ok(Zeroizing::new(sealed.to_vec()))
    }

    fn secure_directory(&self, dir: &Path) -> Result<(), ProtectionError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|err| {
                ProtectionError {
                    operation: "chmod 0700",
                    detail: format!("{}: {err}", dir.display()),
                }
            })?;
        }
        #[cfg(not(unix))]
        let _ = dir;
        Ok(())
    }
}

/// Errors from loading or saving the identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No identity file exists.
    #[error("this sensor is not enrolled: \"{}\" does not exist; run `edr-windows enroll` first", path.display())]
    NotEnrolled { path: PathBuf },
    /// Reading or writing the state directory failed.
    #[error("failed to {action} \"{}\": {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The identity file does not parse or has an unknown format version.
    #[error("the identity file \"{}\" is invalid ({reason}): remove the state directory and enroll again", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// The key was sealed with a scheme this build cannot unseal.
    #[error("the private key in \"{}\" is protected with \"{found}\" but this build uses \"{expected}\": enroll again with this build", path.display())]
    ProtectionMismatch {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    /// A file is where the state directory or one of its parent folders has to be.
    #[error("the state directory \"{}\" cannot be created because \"{}\" is a file, not a folder: choose another state directory", dir.display(), blocker.display())]
    NotADirectory { dir: PathBuf, blocker: PathBuf },
    /// Sealing, unsealing or securing the directory failed.
    #[error("failed to protect the sensor identity in \"{}\": {source}", path.display())]
    Protection {
        path: PathBuf,
        source: ProtectionError,
    },
}

/// The sensor's enrolled identity, in memory. The private key is zeroed on drop.
#[derive(Clone)]
pub struct Identity {
    pub sensor_id: String,
    pub collector_url: String,
    pub ca_sha256: String,
    pub ca_certificate_pem: String,
    pub certificate_chain_pem: String,
    /// PKCS#8 DER private key, unsealed.
    pub private_key_der: Zeroizing<Vec<u8>>,
    pub not_after: OffsetDateTime,
    pub enrolled_at: OffsetDateTime,
    pub renewed_at: Option<OffsetDateTime>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("sensor_id", &self.sensor_id)
            .field("collector_url", &self.collector_url)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct IdentityFile {
    format: u32,
    sensor_id: String,
    collector_url: String,
    ca_sha256: String,
    ca_certificate_pem: String,
    certificate_chain_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    not_after: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    enrolled_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    renewed_at: Option<OffsetDateTime>,
    private_key: SealedKey,
}

#[derive(Serialize, Deserialize)]
struct SealedKey {
    protection: String,
    data: String,
}

/// The state directory and the protection scheme for its key.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    dir: PathBuf,
    protection: Arc<dyn KeyProtection>,
}

impl IdentityStore {
    pub fn new(dir: impl Into<PathBuf>, protection: Arc<dyn KeyProtection>) -> Self {
        Self {
            dir: dir.into(),
            protection,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the identity file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(IDENTITY_FILE)
    }

    /// Returns whether an identity file exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Loads and unseals the identity.
    pub fn load(&self) -> Result<Identity, IdentityError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::NotEnrolled { path });
            }
            Err(source) => {
                return Err(IdentityError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        let invalid = |reason: String| IdentityError::Invalid {
            path: path.clone(),
            reason,
        };
        let file: IdentityFile =
            serde_json::from_str(&text).map_err(|err| invalid(err.to_string()))?;
        if file.format != FORMAT_VERSION {
            return Err(invalid(format!(
                "format version {} is not supported, expected {FORMAT_VERSION}",
                file.format
            )));
        }
        if file.private_key.protection != self.protection.scheme() {
            return Err(IdentityError::ProtectionMismatch {
                path,
                found: file.private_key.protection,
                expected: self.protection.scheme(),
            });
        }
        let sealed = BASE64
            .decode(file.private_key.data.as_bytes())
            .map_err(|err| invalid(format!("private key is not base64 ({err})")))?;
        let private_key_der =
            self.protection
                .unseal(&sealed)
                .map_err(|source| IdentityError::Protection {
                    path: path.clone(),
                    source,
                })?;
        Ok(Identity {
            sensor_id: file.sensor_id,
            collector_url: file.collector_url,
            ca_sha256: file.ca_sha256,
            ca_certificate_pem: file.ca_certificate_pem,
            certificate_chain_pem: file.certificate_chain_pem,
            private_key_der,
            not_after: file.not_after,
            enrolled_at: file.enrolled_at,
            renewed_at: file.renewed_at,
        })
    }

    /// Checks that the state directory exists as a folder or can be created, because no file is
    /// in the way. It creates nothing, so enrollment can run it before the token use is spent.
    pub fn check_creatable(&self) -> Result<(), IdentityError> {
        for ancestor in self.dir.ancestors() {
            match fs::metadata(ancestor) {
                Ok(metadata) if metadata.is_dir() => return Ok(()),
                Ok(_) => {
                    return Err(IdentityError::NotADirectory {
                        dir: self.dir.clone(),
                        blocker: ancestor.to_owned(),
                    });
                }
                // A parent that is a file gives NotADirectory here; the loop reaches it next.
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) => {}
                Err(source) => {
                    return Err(IdentityError::Io {
                        action: "inspect",
                        path: ancestor.to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Seals the key and replaces the identity file atomically, creating the state directory
    /// when it does not exist.
    pub fn save(&self, identity: &Identity) -> Result<(), IdentityError> {
        let path = self.path();
        let sealed = self
            .protection
            .seal(&identity.private_key_der)
            .map_err(|source| IdentityError::Protection {
                path: path.clone(),
                source,
            })?;
        let file = IdentityFile {
            format: FORMAT_VERSION,
            sensor_id: identity.sensor_id.clone(),
            collector_url: identity.collector_url.clone(),
            ca_sha256: identity.ca_sha256.clone(),
            ca_certificate_pem: identity.ca_certificate_pem.clone(),
            certificate_chain_pem: identity.certificate_chain_pem.clone(),
            not_after: identity.not_after,
            enrolled_at: identity.enrolled_at,
            renewed_at: identity.renewed_at,
            private_key: SealedKey {
                protection: self.protection.scheme().to_string(),
                data: BASE64.encode(&sealed),
            },
        };
        let json = Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(|err| {
            IdentityError::Invalid {
                path: path.clone(),
                reason: err.to_string(),
            }
        })?);

        let created_dir = !self.dir.exists();
        let result = self.write_atomically(&json);
        if result.is_err() && created_dir {
            // Leave nothing behind from a failed first save.
            let _ = fs::remove_dir_all(&self.dir);
        }
        result
    }

    fn write_atomically(&self, contents: &[u8]) -> Result<(), IdentityError> {
        let io_err = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io {
                action,
                path,
                source,
            }
        };
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&self.dir)
            .map_err(io_err("create directory", &self.dir))?;
        self.protection
            .secure_directory(&self.dir)
            .map_err(|source| IdentityError::Protection {
                path: self.dir.clone(),
                source,
            })?;

        // `tempfile` creates the file with mode 0600 on Unix.
        let mut tmp = tempfile::Builder::new()
            .prefix(".identity.")
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(io_err("create a temporary file in", &self.dir))?;
        let tmp_path = tmp.path().to_path_buf();
        tmp.write_all(contents)
            .map_err(io_err("write", &tmp_path))?;
        tmp.as_file()
            .sync_all()
            .map_err(io_err("flush", &tmp_path))?;
        let path = self.path();
        tmp.persist(&path).map_err(|err| IdentityError::Io {
            action: "rename the temporary file to",
            path: path.clone(),
            source: err.error,
        })?;
        sync_dir(&self.dir);
        Ok(())
    }
}

/// Flushes a directory entry change to disk where the platform allows opening directories.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            sensor_id: "8b0f1c9e-0000-4000-8000-000000000001".into(),
            collector_url: "https://127.0.0.1:7443".into(),
            ca_sha256: "00".repeat(32),
            ca_certificate_pem: "ca".into(),
            certificate_chain_pem: "chain".into(),
            private_key_der: Zeroizing::new(vec![1, 2, 3]),
            not_after: OffsetDateTime::UNIX_EPOCH,
            enrolled_at: OffsetDateTime::UNIX_EPOCH,
            renewed_at: None,
        }
    }

    fn store(dir: &Path) -> IdentityStore {
        IdentityStore::new(dir, Arc::new(FilePermissions))
    }

    #[test]
    fn save_then_load_round_trips() {
        let root = tempfile::tempdir().unwrap();
        let store = store(&root.path().join("state"));
        store.save(&identity()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.sensor_id, identity().sensor_id);
        assert_eq!(*loaded.private_key_der, vec![1, 2, 3]);
        let entries: Vec<_> = fs::read_dir(store.dir()).unwrap().collect();
        assert_eq!(entries.len(), 1, "no temporary files remain");
    }

    #[cfg(unix)]
    #[test]
    fn directory_and_file_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let store = store(&root.path().join("state"));
        store.save(&identity()).unwrap();
        let dir_mode = fs::metadata(store.dir()).unwrap().permissions().mode();
        let file_mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(file_mode & 0o777, 0o600);
    }

    #[test]
    fn missing_identity_is_not_enrolled() {
        let root = tempfile::tempdir().unwrap();
        let err = store(root.path()).load().unwrap_err();
        assert!(matches!(err, IdentityError::NotEnrolled { .. }), "{err}");
    }

    #[test]
    fn truncated_file_is_invalid() {
        let root = tempfile::tempdir().unwrap();
        let store = store(root.path());
        store.save(&identity()).unwrap();
        let text = fs::read(store.path()).unwrap();
        fs::write(store.path(), &text[..text.len() / 2]).unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, IdentityError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("enroll again"), "{err}");
    }

    #[test]
    fn failed_first_save_leaves_no_directory() {
        #[derive(Debug)]
        struct FailingProtection;
        impl KeyProtection for FailingProtection {
            fn scheme(&self) -> &'static str {
                "failing"
            }
            fn seal(&self, key: &[u8]) -> Result<Vec<u8>, ProtectionError> {
                Ok(key.to_vec())
            }
            fn unseal(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, ProtectionError> {
                Ok(Zeroizing::new(sealed.to_vec()))
            }
            fn secure_directory(&self, _dir: &Path) -> Result<(), ProtectionError> {
                Err(ProtectionError {
                    operation: "test",
                    detail: "refused".into(),
                })
            }
        }
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let store = IdentityStore::new(&dir, Arc::new(FailingProtection));
        assert!(store.save(&identity()).is_err());
        assert!(!dir.exists());
    }
}
