//! The Collector CA: one self-signed ECDSA P-256 certificate and its key, created once.
//!
//! Files in the CA directory:
//! - `ca.crt`: the CA certificate, PEM, mode 0644.
//! - `ca.key`: the CA private key, PKCS#8 PEM, mode 0600 on Unix.
//!
//! [`CollectorCa::create`] rejects a directory that already contains either file, so an
//! existing CA (and every sensor certificate it signed) is never replaced by accident. Each
//! file is written to a temporary name, flushed to disk and then hard-linked to its final
//! name, which fails instead of overwriting when the name exists. If creation fails half-way,
//! the files already linked are removed again.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key inside the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Validity of the CA certificate.
pub const CA_VALIDITY: Duration = Duration::days(3650);

/// Errors from creating or loading the CA and from issuing the Collector's server certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// `create` found an existing CA file.
    #[error(
        "a Collector CA already exists at \"{}\": refusing to overwrite it; use the existing data directory or choose a new one",
        path.display()
    )]
    AlreadyExists { path: PathBuf },
    /// `load` found no CA file.
    #[error(
        "no Collector CA at \"{}\": run `edr-collector init --data-dir DIR` first",
        path.display()
    )]
    Missing { path: PathBuf },
    /// `load` found one of the two CA files but not the other. `init` refuses to overwrite
    /// the one left, so only a backup helps.
    #[error(
        "the Collector CA is incomplete: \"{}\" is missing while \"{}\" exists; restore the missing file from a backup (`edr-collector init` would not replace the CA that is left, and a new CA would make every enrolled sensor enroll again)",
        missing.display(),
        present.display()
    )]
    Incomplete { missing: PathBuf, present: PathBuf },
    /// Reading or writing a CA file failed.
    #[error("failed to {action} \"{}\": {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A CA file exists but does not contain a usable certificate or key.
    #[error("invalid Collector CA file \"{}\": {reason}; restore it from a backup", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// A server name given for the Collector's certificate is not a DNS name or IP address.
    #[error("invalid server name \"{name}\" for the Collector certificate: {reason}")]
    InvalidServerName { name: String, reason: String },
    /// rcgen failed to build or sign a certificate.
    #[error("failed to generate {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// SHA-256 digest of the CA certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaFingerprint(pub [u8; 32]);

impl CaFingerprint {
    /// Computes the fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        Self(crate::sha256(cert_der))
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaFingerprint({})", self.to_hex())
    }
}

/// The Collector's TLS server certificate chain and key.
#[derive(Debug)]
pub struct ServerIdentity {
    /// Server certificate followed by the CA certificate.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// The Collector CA, loaded in memory with its signing key.
pub struct CollectorCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CollectorCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectorCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl CollectorCa {
    /// Creates a new CA in `dir` (created with mode 0700 when missing) and returns it.
    pub fn create(dir: &Path, common_name: &str) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if ca_files_present(&cert_path, &key_path)? {
            return Err(CaError::AlreadyExists { path: cert_path });
        }
        create_private_dir(dir)?;

        let key = KeyPair::generate().map_err(|source| CaError::Generate {
            what: "the CA key pair",
            source,
        })?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        name.push(DnType::OrganizationName, "EDR");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Generate {
                what: "the CA certificate",
                source,
            })?;

        // The key goes first: a crash between the two steps leaves a key without a
        // certificate, which `load` reports, never a certificate whose key is lost.
        write_new_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        if let Err(err) = write_new_file(&cert_path, cert.pem().as_bytes(), 0o644) {
            let _ = fs::remove_file(&key_path);
            return Err(err);
        }
        tracing::info!(dir = %dir.display(), fingerprint = %CaFingerprint::of(cert.der()), "created Collector CA");
        Self::load(dir)
    }

    /// Loads the CA from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        ca_files_present(&cert_path, &key_path)?;
        let cert_pem = read_existing(&cert_path)?;
        let key_pem = read_existing(&key_path)?;

        let key = KeyPair::from_pem(&key_pem).map_err(|err| CaError::Invalid {
            path: key_path.clone(),
            reason: format!("not a PKCS#8 private key ({err})"),
        })?;
        let cert_der = pem_certificate(&cert_pem).map_err(|reason| CaError::Invalid {
            path: cert_path.clone(),
            reason,
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|err| CaError::Invalid {
            path: cert_path.clone(),
            reason: format!("not a CA certificate ({err})"),
        })?;
        let spki_matches = x509_parser::parse_x509_certificate(&cert_der)
            .map(|(_, cert)| cert.public_key().raw == issuer.key().subject_public_key_info())
            .unwrap_or(false);
        if !spki_matches {
            return Err(CaError::Invalid {
                path: key_path,
                reason: format!("the key does not belong to the certificate in {CA_CERT_FILE}"),
            });
        }
        Ok(Self {
            cert_der,
            cert_pem,
            issuer,
        })
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate; enrollment tokens carry it so sensors can pin the CA.
    pub fn fingerprint(&self) -> CaFingerprint {
        CaFingerprint::of(&self.cert_der)
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Issues a fresh server certificate for the Collector's TLS listener.
    ///
    /// Each entry of `names` becomes a SAN: an IP address when it parses as one, else a DNS
    /// name. The certificate carries the server-auth EKU only and a new P-256 key.
    pub fn issue_server_certificate(
        &self,
        names: &[String],
        validity: Duration,
    ) -> Result<ServerIdentity, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map_or("edr-collector", String::as_str),
        );
        params.distinguished_name = dn;
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    SanType::DnsName(name.clone().try_into().map_err(|err: rcgen::Error| {
                        CaError::InvalidServerName {
                            name: name.clone(),
                            reason: err.to_string(),
                        }
                    })?)
                }
            };
            params.subject_alt_names.push(san);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + validity;
        params.serial_number = Some(random_serial()?);

        let key = KeyPair::generate().map_err(|source| CaError::Generate {
            what: "the server key pair",
            source,
        })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CaError::Generate {
                what: "the server certificate",
                source,
            })?;
        Ok(ServerIdentity {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

/// Returns a random positive 128-bit serial number.
pub(crate) fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    crate::random_bytes(&mut bytes).map_err(|_| CaError::Random)?;
    // Clear the top bit so the DER INTEGER is positive, and set the next one so the
    // encoding keeps its full length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Decodes the first certificate of a PEM text.
pub(crate) fn pem_certificate(pem: &str) -> Result<CertificateDer<'static>, String> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|err| format!("no PEM certificate found ({err})"))
}

/// Returns whether both CA files exist, `false` when neither does, and
/// [`CaError::Incomplete`] when only one of them is left.
fn ca_files_present(cert_path: &Path, key_path: &Path) -> Result<bool, CaError> {
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (false, true) => Err(CaError::Incomplete {
            missing: cert_path.to_path_buf(),
            present: key_path.to_path_buf(),
        }),
        (true, false) => Err(CaError::Incomplete {
            missing: key_path.to_path_buf(),
            present: cert_path.to_path_buf(),
        }),
    }
}

fn read_existing(path: &Path) -> Result<String, CaError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(CaError::Missing {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(CaError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| CaError::Io {
        action: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path`, which must not exist, through a flushed temporary file.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let io_err = |action: &'static str| {
        move |source| CaError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp_path = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("ca"),
        std::process::id()
    ));

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options.open(&tmp_path).map_err(io_err("create"))?;
        file.write_all(contents).map_err(io_err("write"))?;
        file.sync_all().map_err(io_err("flush"))?;
        fs::hard_link(&tmp_path, path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                CaError::AlreadyExists {
                    path: path.to_path_buf(),
                }
            } else {
                io_err("link")(source)
            }
        })
    })();
    let _ = fs::remove_file(&tmp_path);
    result?;
    if let Ok(dir_file) = fs::File::open(dir) {
        let _ = dir_file.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_keeps_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CollectorCa::create(&dir.path().join("ca"), "Test CA").unwrap();
        let loaded = CollectorCa::load(&dir.path().join("ca")).unwrap();
        assert_eq!(ca.fingerprint(), loaded.fingerprint());
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        CollectorCa::create(dir.path(), "Test CA").unwrap();
        let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn create_rejects_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = CollectorCa::create(dir.path(), "Test CA").unwrap();
        let err = CollectorCa::create(dir.path(), "Test CA").unwrap_err();
        assert!(matches!(err, CaError::AlreadyExists { .. }), "{err}");
        let loaded = CollectorCa::load(dir.path()).unwrap();
        assert_eq!(first.fingerprint(), loaded.fingerprint());
    }

    #[test]
    fn load_missing_ca_names_init() {
        let dir = tempfile::tempdir().unwrap();
        let err = CollectorCa::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("edr-collector init"), "{err}");
    }

    #[test]
    fn half_ca_names_missing_file() {
        for missing in [CA_CERT_FILE, CA_KEY_FILE] {
            let dir = tempfile::tempdir().unwrap();
            CollectorCa::create(dir.path(), "Test CA").unwrap();
            fs::remove_file(dir.path().join(missing)).unwrap();
            let err = CollectorCa::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains("incomplete"), "{err}");
            assert!(err.contains(missing), "{err}");
            assert!(err.contains("restore the missing file"), "{err}");
            // `init` reports the same error, not that a CA exists.
            let err = CollectorCa::create(dir.path(), "Test CA")
                .unwrap_err()
                .to_string();
            assert!(err.contains("incomplete"), "{err}");
            assert!(err.contains(missing), "{err}");
        }
    }

    #[test]
    fn load_rejects_foreign_key() {
        let dir = tempfile::tempdir().unwrap();
        CollectorCa::create(dir.path(), "Test CA").unwrap();
        fs::write(
            dir.path().join(CA_KEY_FILE),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let err = CollectorCa::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
