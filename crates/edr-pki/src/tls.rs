//! rustls configurations for both sides of the sensor–Collector connection.
//!
//! The Collector serves every RPC on one port. Its server configuration requests a client
//! certificate but does not require one, so the enrollment RPC works over server-auth TLS; the
//! Collector's RPC layer rejects every other RPC on a connection without a verified client
//! certificate. A client certificate that is presented is always verified against the
//! Collector CA and the revocation list, and a bad one fails the handshake.
//!
//! All configurations use the `ring` provider, TLS 1.2 and 1.3, and ALPN `h2`.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::verifier::{PinnedCaVerifier, RevocationCheckingVerifier};
use crate::{CaFingerprint, RevocationList, ServerIdentity};

pub use crate::verifier::PinMismatch;

/// ALPN protocol id of HTTP/2, which gRPC uses.
const ALPN_H2: &[u8] = b"h2";

/// Errors from building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// rustls rejected the certificates, key or protocol settings.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every configuration uses: `ring`.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Collector server configuration: server certificate, optional client certificates verified
/// against `ca_cert` and checked against `revocations` on every handshake.
pub fn server_config(
    ca_cert: CertificateDer<'static>,
    identity: ServerIdentity,
    revocations: Arc<RevocationList>,
) -> Result<ServerConfig, TlsConfigError> {
    let provider = crypto_provider();
    let verifier = RevocationCheckingVerifier::new(ca_cert, revocations, Arc::clone(&provider))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Sensor configuration for the first contact: no client certificate, the Collector CA pinned
/// by the SHA-256 from the enrollment token.
pub fn enrollment_client_config(pin: CaFingerprint) -> Result<ClientConfig, TlsConfigError> {
    let provider = crypto_provider();
    let verifier = PinnedCaVerifier::new(pin, Arc::clone(&provider));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Sensor configuration after enrollment: trusts only the Collector CA and presents the
/// sensor certificate.
pub fn mtls_client_config(
    ca_cert: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, TlsConfigError> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(ca_roots(ca_cert)?)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Configuration that trusts the Collector CA but presents no client certificate.
pub fn server_auth_client_config(
    ca_cert: CertificateDer<'static>,
) -> Result<ClientConfig, TlsConfigError> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(ca_roots(ca_cert)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

fn ca_roots(ca_cert: CertificateDer<'static>) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert)?;
    Ok(roots)
}
