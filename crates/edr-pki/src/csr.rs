//! CSR parsing and sensor certificate signing.
//!
//! The Collector uses only the public key of a sensor's CSR. [`sign_client_certificate`]
//! ignores the requested subject and every requested extension and writes its own:
//! - subject `CN=<sensor id>`,
//! - SAN `URI:urn:edr:sensor:<sensor id>`, the only name the Collector reads back,
//! - basic constraints `CA:FALSE`, key usage `digitalSignature`, EKU `clientAuth` only,
//! - a random 128-bit serial and a bounded validity ([`DEFAULT_CLIENT_VALIDITY`] by default).
//!
//! [`ParsedCsr::forbidden_claims`] lists what a CSR asked for that a sensor never needs (CA
//! status, certificate signing, server authentication). The enrollment service rejects such
//! CSRs, because an honest sensor never sends them; the signer would drop them anyway.

use std::fmt;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use crate::CollectorCa;

/// Validity of a sensor certificate unless the caller sets another.
pub const DEFAULT_CLIENT_VALIDITY: Duration = Duration::days(30);

/// Prefix of the URI SAN that names a sensor.
pub const SENSOR_URI_PREFIX: &str = "urn:edr:sensor:";

/// How far `not_before` lies in the past, to tolerate clocks that run slightly behind.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::minutes(5);

/// A sensor id: a random UUID assigned by the Collector at enrollment.
pub type SensorId = uuid::Uuid;

/// Errors from parsing a CSR, signing a certificate or reading a sensor certificate.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// The CSR text contains no PEM `CERTIFICATE REQUEST` block.
    #[error(
        "the certificate signing request is not PEM-encoded ({reason}): send a PKCS#10 CSR in PEM"
    )]
    NotPem { reason: String },
    /// The DER inside the PEM block is not a PKCS#10 request.
    #[error("the certificate signing request is not a valid PKCS#10 structure: {reason}")]
    Malformed { reason: String },
    /// The CSR's signature does not verify with its own public key.
    #[error(
        "the certificate signing request's signature is invalid: the sender does not hold the key it requests a certificate for"
    )]
    BadSignature,
    /// The CSR's key algorithm is not one that rcgen supports (ECDSA, Ed25519, RSA).
    #[error(
        "unsupported key type in the certificate signing request ({algorithm}): use an ECDSA P-256 key"
    )]
    UnsupportedKey { algorithm: String },
    /// The requested validity ends before it starts.
    #[error(
        "invalid certificate validity: not_after {not_after} is not after not_before {not_before}"
    )]
    InvalidValidity {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    /// rcgen failed to sign the certificate.
    #[error("failed to sign the sensor certificate: {0}")]
    Sign(rcgen::Error),
    /// Serial generation failed.
    #[error("failed to generate a serial number: {0}")]
    Serial(#[from] crate::ca::CaError),
    /// A certificate does not parse as X.509.
    #[error("the certificate is not valid X.509: {reason}")]
    BadCertificate { reason: String },
    /// A certificate carries no `urn:edr:sensor:` URI SAN with a UUID.
    #[error(
        "the certificate names no sensor: it has no subject alternative name \"{SENSOR_URI_PREFIX}<uuid>\""
    )]
    NoSensorId,
}

/// Validity period of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Validity {
    /// From now (less a five-minute clock-skew allowance) for `lifetime`.
    pub fn starting_now(lifetime: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + lifetime,
        }
    }

    /// Explicit bounds; tests use this to issue certificates that have already expired.
    pub fn between(
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, CsrError> {
        if not_after <= not_before {
            return Err(CsrError::InvalidValidity {
                not_before,
                not_after,
            });
        }
        Ok(Self {
            not_before,
            not_after,
        })
    }

    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// Something a CSR requested that a sensor certificate must never have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForbiddenClaim {
    /// Basic constraints with `CA:TRUE`.
    CertificateAuthority,
    /// Key usage `keyCertSign` or `cRLSign`.
    CertificateSigning,
    /// An extended key usage other than `clientAuth`, named by its OID or short name.
    ExtendedKeyUsage(String),
}

impl fmt::Display for ForbiddenClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CertificateAuthority => f.write_str("CA:TRUE basic constraints"),
            Self::CertificateSigning => f.write_str("certificate or CRL signing key usage"),
            Self::ExtendedKeyUsage(name) => write!(f, "extended key usage {name}"),
        }
    }
}

/// A CSR whose signature has been verified.
#[derive(Debug)]
pub struct ParsedCsr {
    public_key: SubjectPublicKeyInfo,
    spki_der: Vec<u8>,
    forbidden_claims: Vec<ForbiddenClaim>,
}

impl ParsedCsr {
    /// Parses a PEM CSR and verifies its self-signature, which proves that the sender has the private key.
    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        use rustls_pki_types::CertificateSigningRequestDer;
        use rustls_pki_types::pem::PemObject;

        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|err| {
            CsrError::NotPem {
                reason: err.to_string(),
            }
        })?;
        let (rest, csr) = X509CertificationRequest::from_der(der.as_ref()).map_err(|err| {
            CsrError::Malformed {
                reason: err.to_string(),
            }
        })?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed {
                reason: format!("{} trailing bytes", rest.len()),
            });
        }
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

        let spki = &csr.certification_request_info.subject_pki;
        let spki_der = spki.raw.to_vec();
        let public_key =
            SubjectPublicKeyInfo::from_der(&spki_der).map_err(|_| CsrError::UnsupportedKey {
                algorithm: spki.algorithm.algorithm.to_id_string(),
            })?;
        let forbidden_claims = csr
            .requested_extensions()
            .map(|extensions| forbidden_claims(extensions.collect()))
            .unwrap_or_default();
        Ok(Self {
            public_key,
            spki_der,
            forbidden_claims,
        })
    }

    /// Requested extensions that a sensor certificate must never carry.
    pub fn forbidden_claims(&self) -> &[ForbiddenClaim] {
        &self.forbidden_claims
    }

    /// Returns the DER SubjectPublicKeyInfo of the requested key.
    pub fn subject_public_key_info(&self) -> &[u8] {
        &self.spki_der
    }
}

fn forbidden_claims(extensions: Vec<&ParsedExtension<'_>>) -> Vec<ForbiddenClaim> {
    let mut claims = Vec::new();
    for extension in extensions {
        match extension {
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                claims.push(ForbiddenClaim::CertificateAuthority);
            }
            ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                claims.push(ForbiddenClaim::CertificateSigning);
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                if eku.any {
                    claims.push(ForbiddenClaim::ExtendedKeyUsage(
                        "anyExtendedKeyUsage".into(),
                    ));
                }
                if eku.server_auth {
                    claims.push(ForbiddenClaim::ExtendedKeyUsage("serverAuth".into()));
                }
                if eku.code_signing {
                    claims.push(ForbiddenClaim::ExtendedKeyUsage("codeSigning".into()));
                }
                if eku.ocsp_signing {
                    claims.push(ForbiddenClaim::ExtendedKeyUsage("OCSPSigning".into()));
                }
                for oid in &eku.other {
                    claims.push(ForbiddenClaim::ExtendedKeyUsage(oid.to_id_string()));
                }
            }
            _ => {}
        }
    }
    claims
}

/// A certificate issued to a sensor.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub sensor_id: SensorId,
    pub der: CertificateDer<'static>,
    pub pem: String,
    /// Serial number, big-endian bytes without a leading zero.
    pub serial: Vec<u8>,
    pub validity: Validity,
}

impl IssuedCertificate {
    /// Certificate followed by the CA certificate, PEM.
    pub fn chain_pem(&self, ca: &CollectorCa) -> String {
        format!("{}{}", self.pem, ca.certificate_pem())
    }
}

/// Signs a client certificate for `sensor_id` over the CSR's public key.
///
/// Everything the CSR requested besides its key is ignored; see the module documentation.
pub fn sign_client_certificate(
    ca: &CollectorCa,
    csr: &ParsedCsr,
    sensor_id: SensorId,
    validity: Validity,
) -> Result<IssuedCertificate, CsrError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, sensor_id.to_string());
    params.distinguished_name = dn;
    let uri = format!("{SENSOR_URI_PREFIX}{sensor_id}");
    params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(CsrError::Sign)?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let serial = crate::ca::random_serial()?;
    params.serial_number = Some(serial.clone());

    let cert = params
        .signed_by(&csr.public_key, ca.issuer())
        .map_err(CsrError::Sign)?;
    Ok(IssuedCertificate {
        sensor_id,
        der: cert.der().clone(),
        pem: cert.pem(),
        serial: serial.to_bytes(),
        validity,
    })
}

/// Reads the sensor id from a certificate's `urn:edr:sensor:<uuid>` URI SAN.
pub fn sensor_id_from_certificate(der: &[u8]) -> Result<SensorId, CsrError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|err| CsrError::BadCertificate {
            reason: err.to_string(),
        })?;
    let san = cert
        .subject_alternative_name()
        .map_err(|err| CsrError::BadCertificate {
            reason: err.to_string(),
        })?
        .ok_or(CsrError::NoSensorId)?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri
                .strip_prefix(SENSOR_URI_PREFIX)
                .and_then(|id| uuid::Uuid::parse_str(id).ok()),
            _ => None,
        })
        .ok_or(CsrError::NoSensorId)
}

/// Serial number of a certificate, big-endian bytes without a leading zero.
pub fn certificate_serial(der: &[u8]) -> Result<Vec<u8>, CsrError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|err| CsrError::BadCertificate {
            reason: err.to_string(),
        })?;
    Ok(cert
        .raw_serial()
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect())
}

/// The fields of a certificate that enrollment and status reports need.
#[derive(Debug, Clone)]
pub struct CertificateSummary {
    /// DER SubjectPublicKeyInfo.
    pub subject_public_key_info: Vec<u8>,
    pub serial: Vec<u8>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Sensor id from the `urn:edr:sensor:` URI SAN, if the certificate has one.
    pub sensor_id: Option<SensorId>,
}

/// Reads a [`CertificateSummary`] from a DER certificate.
pub fn certificate_summary(der: &[u8]) -> Result<CertificateSummary, CsrError> {
    let bad = |reason: String| CsrError::BadCertificate { reason };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|err| bad(err.to_string()))?;
    let time = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|err| bad(err.to_string()))
    };
    Ok(CertificateSummary {
        subject_public_key_info: cert.public_key().raw.to_vec(),
        serial: certificate_serial(der)?,
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
        sensor_id: sensor_id_from_certificate(der).ok(),
    })
}

/// Returns whether a certificate valid from `not_before` to `not_after` should be renewed at
/// `now`: once two thirds of its lifetime have passed.
pub fn renewal_due(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> bool {
    let lifetime = not_after - not_before;
    now >= not_before + lifetime * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CustomExtension, KeyPair, PublicKeyData};
    use x509_parser::parse_x509_certificate;

    fn test_ca() -> (tempfile::TempDir, CollectorCa) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CollectorCa::create(dir.path(), "Test CA").unwrap();
        (dir, ca)
    }

    fn csr_pem(params: CertificateParams, key: &KeyPair) -> String {
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn signed_certificate_names_sensor_with_client_auth_only() {
        let (_dir, ca) = test_ca();
        let key = KeyPair::generate().unwrap();
        let csr = ParsedCsr::from_pem(&csr_pem(CertificateParams::default(), &key)).unwrap();
        let id = uuid::Uuid::new_v4();
        let issued = sign_client_certificate(
            &ca,
            &csr,
            id,
            Validity::starting_now(DEFAULT_CLIENT_VALIDITY),
        )
        .unwrap();

        assert_eq!(sensor_id_from_certificate(&issued.der).unwrap(), id);
        let (_, cert) = parse_x509_certificate(&issued.der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth);
        assert!(!eku.server_auth);
        assert!(!eku.any);
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(lifetime <= (DEFAULT_CLIENT_VALIDITY + CLOCK_SKEW_ALLOWANCE).whole_seconds());
        assert_eq!(certificate_serial(&issued.der).unwrap(), issued.serial);
    }

    #[test]
    fn requested_ca_and_server_auth_are_reported_and_ignored() {
        let (_dir, ca) = test_ca();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["collector.example".to_string()]).unwrap();
        // rcgen refuses `is_ca` in a CSR, so write basicConstraints CA:TRUE by hand:
        // SEQUENCE { BOOLEAN TRUE }.
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &[2, 5, 29, 19],
                vec![0x30, 0x03, 0x01, 0x01, 0xff],
            ));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "attacker");
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![5, 0]));
        let csr = ParsedCsr::from_pem(&csr_pem(params, &key)).unwrap();
        let claims = csr.forbidden_claims();
        assert!(
            claims.contains(&ForbiddenClaim::CertificateAuthority),
            "{claims:?}"
        );
        assert!(
            claims.contains(&ForbiddenClaim::CertificateSigning),
            "{claims:?}"
        );
        assert!(
            claims.contains(&ForbiddenClaim::ExtendedKeyUsage("serverAuth".into())),
            "{claims:?}"
        );

        let id = uuid::Uuid::new_v4();
        let issued =
            sign_client_certificate(&ca, &csr, id, Validity::starting_now(Duration::days(1)))
                .unwrap();
        let (_, cert) = parse_x509_certificate(&issued.der).unwrap();
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(!eku.server_auth);
        assert!(eku.client_auth);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(!ku.key_cert_sign());
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names.len(), 1);
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            id.to_string()
        );
        assert!(
            cert.extensions()
                .iter()
                .all(|ext| ext.oid.to_id_string() != "1.2.3.4")
        );
    }

    #[test]
    fn tampered_csr_signature_is_rejected() {
        let key = KeyPair::generate().unwrap();
        let der = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        let mut tampered = der.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        let pem = pem_encode("CERTIFICATE REQUEST", &tampered);
        let err = ParsedCsr::from_pem(&pem).unwrap_err();
        assert!(
            matches!(err, CsrError::BadSignature | CsrError::Malformed { .. }),
            "{err}"
        );
    }

    #[test]
    fn garbage_csr_is_not_pem() {
        let err = ParsedCsr::from_pem("hello").unwrap_err();
        assert!(matches!(err, CsrError::NotPem { .. }), "{err}");
    }

    #[test]
    fn validity_rejects_inverted_bounds() {
        let now = OffsetDateTime::now_utc();
        assert!(Validity::between(now, now - Duration::hours(1)).is_err());
        assert!(Validity::between(now - Duration::days(2), now - Duration::days(1)).is_ok());
    }

    #[test]
    fn renewal_due_after_two_thirds() {
        let start = OffsetDateTime::now_utc();
        let end = start + Duration::days(30);
        assert!(!renewal_due(start, end, start + Duration::days(19)));
        assert!(renewal_due(start, end, start + Duration::days(21)));
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    }
}
