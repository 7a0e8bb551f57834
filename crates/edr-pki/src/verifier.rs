//! Certificate verifiers: revocation checking for client certificates on the Collector, and
//! CA pinning for the sensor's first contact.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{CaFingerprint, RevocationList};

/// Wraps the webpki client verifier and rejects certificates in the current revocation set.
///
/// A client may connect without a certificate, because the enrollment RPC needs that. A
/// client that presents one must present a valid, unrevoked certificate issued by the
/// Collector CA, or the handshake fails.
pub(crate) struct RevocationCheckingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: Arc<RevocationList>,
}

impl fmt::Debug for RevocationCheckingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationCheckingVerifier")
            .field("revoked", &self.revocations.snapshot().len())
            .finish_non_exhaustive()
    }
}

impl RevocationCheckingVerifier {
    pub(crate) fn new(
        ca_cert: CertificateDer<'static>,
        revocations: Arc<RevocationList>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert)?;
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|err| Error::General(format!("client verifier: {err}")))?;
        Ok(Self { inner, revocations })
    }
}

impl ClientCertVerifier for RevocationCheckingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|err| tracing::warn!(error = %err, "rejected client certificate"))?;

        // The chain is valid; now check the revocation set that is current at this handshake.
        let serial = crate::csr::certificate_serial(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let sensor_id = crate::sensor_id_from_certificate(end_entity).ok();
        if self.revocations.snapshot().is_revoked(&serial, sensor_id) {
            tracing::warn!(
                serial = %hex::encode(&serial),
                sensor_id = ?sensor_id,
                "rejected revoked client certificate"
            );
            return Err(Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The Collector's chain contains no certificate with the pinned SHA-256.
#[derive(Debug, thiserror::Error)]
#[error(
    "the Collector's TLS certificate chain contains no CA certificate with SHA-256 {expected}, which the enrollment token pins: check that the token was created by this Collector"
)]
pub struct PinMismatch {
    pub expected: CaFingerprint,
}

/// First-contact server verifier: trusts the CA certificate that the server itself sends,
/// but only if its SHA-256 equals the digest carried in the enrollment token. The server
/// certificate must then verify against that CA (signature, validity, server name).
pub(crate) struct PinnedCaVerifier {
    pin: CaFingerprint,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCaVerifier")
            .field("pin", &self.pin)
            .finish()
    }
}

impl PinnedCaVerifier {
    pub(crate) fn new(pin: CaFingerprint, provider: Arc<CryptoProvider>) -> Self {
        Self { pin, provider }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|cert| CaFingerprint::of(cert) == self.pin)
        else {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch { expected: self.pin })),
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|err| Error::General(format!("server verifier: {err}")))?;
        webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
