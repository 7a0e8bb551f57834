//! Collector CA, enrollment tokens, CSR signing, revocation and rustls configurations.
//!
//! Both sides use this crate: the Collector creates the CA, issues tokens, signs sensor
//! CSRs and serves TLS with [`tls::server_config`]; the sensor parses tokens and connects
//! with [`tls::enrollment_client_config`] (first contact, CA pinned by the SHA-256 in the
//! token) or [`tls::mtls_client_config`] (every later connection).
//!
//! Cryptography comes from `ring` through `rcgen` and `rustls`; no other TLS stack is linked.
//! Nothing in this crate logs a private key, a token secret or a whole certificate.
#![forbid(unsafe_code)]

pub mod ca;
pub mod csr;
pub mod revocation;
pub mod tls;
pub mod token;
mod verifier;

pub use ca::{CaFingerprint, CollectorCa, ServerIdentity};
pub use csr::{
    DEFAULT_CLIENT_VALIDITY, ForbiddenClaim, IssuedCertificate, ParsedCsr, SensorId, Validity,
    renewal_due, sensor_id_from_certificate,
};
pub use revocation::{RevocationList, RevocationSet};
pub use token::{EnrollmentToken, TokenPolicy};

/// Returns the SHA-256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(buf)
}
