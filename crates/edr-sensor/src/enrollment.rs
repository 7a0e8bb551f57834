//! The enrollment client: turns a token into a stored mTLS identity, and renews it.
//!
//! # Enrollment
//!
//! 1. Parse the token; a malformed token fails before anything touches the network or disk.
//! 2. Reject a state directory that already contains an identity, or that cannot be created
//!    because a file is in the way.
//! 3. Generate an ECDSA P-256 key pair and a CSR. The private key never leaves this process
//!    except into the identity store.
//! 4. Connect over TLS without a client certificate, trusting only a CA whose certificate's
//!    SHA-256 equals the one in the token, and call `Enroll`.
//! 5. Check the reply: the certificate carries the generated public key and names the
//!    returned sensor id, and the CA certificate is the pinned one.
//! 6. Save the identity atomically. Only this step creates the state directory.
//!
//! A failure in steps 1 to 5 leaves the state directory as it was. The Collector consumes a
//! token use only when it returns a certificate, so a failure in step 6 (disk full, say)
//! costs a use of the token; the error says so.
//!
//! # Renewal
//!
//! [`renew`] connects with the current certificate (mTLS), sends a CSR for a new key and
//! replaces the stored identity with the new key and certificate. When to renew is the
//! caller's decision; see [`edr_pki::renewal_due`].

use edr_pki::{CaFingerprint, EnrollmentToken};
use edr_proto::v1::enrollment_client::EnrollmentClient;
use edr_proto::v1::{CapabilityManifest, EnrollRequest, HostFacts, RenewRequest};
use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::connect::{self, CollectorUrl, ConnectError};
use crate::identity::{Identity, IdentityError, IdentityStore};

/// Errors from enrolling or renewing.
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    /// The token text is not a valid token.
    #[error(transparent)]
    Token(#[from] edr_pki::token::TokenError),
    /// The Collector URL is invalid or the connection failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The state directory already contains an identity.
    #[error(
        "the state directory \"{dir}\" already contains the identity of sensor {sensor_id}: use it, or remove the directory to enroll again"
    )]
    AlreadyEnrolled { dir: String, sensor_id: String },
    /// Generating the key pair or CSR failed.
    #[error("failed to generate the sensor key pair or CSR: {0}")]
    KeyGeneration(rcgen::Error),
    /// Building the TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] edr_pki::tls::TlsConfigError),
    /// The Collector returned an error status for the RPC.
    #[error("the Collector at {url} rejected the {rpc} request: {message}")]
    Rejected {
        url: String,
        rpc: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// Something in front of the Collector, such as a proxy or load balancer, ended the RPC
    /// with an HTTP status and no gRPC status. Retrying later may succeed.
    #[error(
        "the {rpc} request to {url} got HTTP status {http_status} without a gRPC status, so a proxy or load balancer in front of the Collector answered, not the Collector: check its routing to the Collector"
    )]
    HttpStatus {
        url: String,
        rpc: &'static str,
        http_status: u16,
    },
    /// The Collector's reply is inconsistent with the request or the pinned CA.
    #[error(
        "the Collector at {url} sent an invalid {rpc} reply ({reason}): report this to the Collector operator"
    )]
    InvalidReply {
        url: String,
        rpc: &'static str,
        reason: String,
    },
    /// Loading or saving the identity failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Saving failed after the Collector issued a certificate.
    #[error(
        "the Collector issued a certificate for sensor {sensor_id}, but saving it failed ({source}); the token use is spent: fix the state directory and enroll again with a new token"
    )]
    SaveAfterEnroll {
        sensor_id: String,
        source: IdentityError,
    },
}

impl EnrollmentError {
    /// Returns whether retrying the same call later may succeed (network or server trouble).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(ConnectError::Connect { .. }) | Self::HttpStatus { .. } => true,
            Self::Rejected { code, .. } => matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Internal
            ),
            _ => false,
        }
    }
}

/// Enrolls this sensor with the Collector at `collector_url` and stores the identity.
pub async fn enroll(
    store: &IdentityStore,
    collector_url: &str,
    token_text: &str,
    host: HostFacts,
    capabilities: CapabilityManifest,
) -> Result<Identity, EnrollmentError> {
    let token = EnrollmentToken::parse(token_text)?;
    let url = CollectorUrl::parse(collector_url)?;
    if store.exists() {
        let sensor_id = store
            .load()
            .map(|identity| identity.sensor_id)
            .unwrap_or_else(|_| "unknown".to_string());
        return Err(EnrollmentError::AlreadyEnrolled {
            dir: store.dir().display().to_string(),
            sensor_id,
        });
    }
    store.check_creatable()?;

    let (key, csr_pem) = generate_key_and_csr()?;
    let tls = edr_pki::tls::enrollment_client_config(token.ca_sha256())?;
    let channel = connect::connect(&url, tls).await?;
    let request = EnrollRequest {
        token: token_text.trim().to_string(),
        csr_pem,
        host: Some(host),
        capabilities: Some(capabilities),
    };
    tracing::info!(collector = %url, token_id = %token.id(), "sending enrollment request");
    let reply = EnrollmentClient::new(channel)
        .enroll(request)
        .await
        .map_err(|status| rejected(&url, "Enroll", status))?
        .into_inner();

    let invalid = |reason: String| EnrollmentError::InvalidReply {
        url: url.to_string(),
        rpc: "Enroll",
        reason,
    };
    let ca_der = CertificateDer::from_pem_slice(reply.ca_certificate_pem.as_bytes())
        .map_err(|err| invalid(format!("CA certificate is not PEM: {err}")))?;
    if CaFingerprint::of(&ca_der) != token.ca_sha256() {
        return Err(invalid(
            "the CA certificate differs from the one the token pins".into(),
        ));
    }
    let not_after = check_issued_chain(&reply.certificate_chain_pem, &key, &reply.sensor_id)
        .map_err(invalid)?;

    let identity = Identity {
        sensor_id: reply.sensor_id.clone(),
        collector_url: url.to_string(),
        ca_sha256: token.ca_sha256().to_hex(),
        ca_certificate_pem: reply.ca_certificate_pem,
        certificate_chain_pem: reply.certificate_chain_pem,
        private_key_der: Zeroizing::new(key.serialize_der()),
        not_after,
        enrolled_at: OffsetDateTime::now_utc(),
        renewed_at: None,
    };
    store
        .save(&identity)
        .map_err(|source| EnrollmentError::SaveAfterEnroll {
            sensor_id: reply.sensor_id,
            source,
        })?;
    tracing::info!(sensor_id = %identity.sensor_id, not_after = %identity.not_after, "enrolled");
    Ok(identity)
}

/// Renews the stored identity over mTLS with a new key pair and stores the result.
pub async fn renew(store: &IdentityStore) -> Result<Identity, EnrollmentError> {
    let current = store.load()?;
    let url = CollectorUrl::parse(&current.collector_url)?;
    let channel = connect_mtls(&current).await?;

    let (key, csr_pem) = generate_key_and_csr()?;
    let reply = EnrollmentClient::new(channel)
        .renew(RenewRequest { csr_pem })
        .await
        .map_err(|status| rejected(&url, "Renew", status))?
        .into_inner();
    let not_after = check_issued_chain(&reply.certificate_chain_pem, &key, &current.sensor_id)
        .map_err(|reason| EnrollmentError::InvalidReply {
            url: url.to_string(),
            rpc: "Renew",
            reason,
        })?;

    let renewed = Identity {
        certificate_chain_pem: reply.certificate_chain_pem,
        private_key_der: Zeroizing::new(key.serialize_der()),
        not_after,
        renewed_at: Some(OffsetDateTime::now_utc()),
        ..current
    };
    store.save(&renewed)?;
    tracing::info!(sensor_id = %renewed.sensor_id, not_after = %renewed.not_after, "renewed certificate");
    Ok(renewed)
}

/// Opens an mTLS channel to the Collector named in `identity`.
pub async fn connect_mtls(
    identity: &Identity,
) -> Result<tonic::transport::Channel, EnrollmentError> {
    let url = CollectorUrl::parse(&identity.collector_url)?;
    let invalid = |reason: String| {
        EnrollmentError::Identity(IdentityError::Invalid {
            path: std::path::PathBuf::from(&identity.collector_url),
            reason,
        })
    };
    let ca = CertificateDer::from_pem_slice(identity.ca_certificate_pem.as_bytes())
        .map_err(|err| invalid(format!("CA certificate: {err}")))?;
    let chain = CertificateDer::pem_slice_iter(identity.certificate_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(format!("certificate chain: {err}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.private_key_der.to_vec()));
    let tls = edr_pki::tls::mtls_client_config(ca, chain, key)?;
    Ok(connect::connect(&url, tls).await?)
}

fn generate_key_and_csr() -> Result<(KeyPair, String), EnrollmentError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(EnrollmentError::KeyGeneration)?;
    // The Collector replaces the subject and every extension, so the request carries none.
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(EnrollmentError::KeyGeneration)?;
    Ok((key, csr))
}

/// Checks that the first certificate of `chain_pem` is for `key` and names `sensor_id`;
/// returns its `not_after`.
fn check_issued_chain(
    chain_pem: &str,
    key: &KeyPair,
    sensor_id: &str,
) -> Result<OffsetDateTime, String> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or("the certificate chain is empty")?
        .map_err(|err| format!("the certificate chain is not PEM: {err}"))?;
    let summary = edr_pki::csr::certificate_summary(&leaf).map_err(|err| err.to_string())?;
    if summary.subject_public_key_info != key.subject_public_key_info() {
        return Err("the certificate is not for the key this sensor generated".into());
    }
    let named = summary
        .sensor_id
        .ok_or("the certificate names no sensor")?
        .to_string();
    if named != sensor_id {
        return Err(format!(
            "the certificate names sensor {named}, expected {sensor_id}"
        ));
    }
    Ok(summary.not_after)
}

fn rejected(url: &CollectorUrl, rpc: &'static str, status: tonic::Status) -> EnrollmentError {
    if let Some(http_status) = connect::http_status_without_grpc(&status) {
        return EnrollmentError::HttpStatus {
            url: url.to_string(),
            rpc,
            http_status,
        };
    }
    // A TLS failure after the handshake (for example a certificate alert under TLS 1.3)
    // arrives as a status whose source chain contains the rustls error.
    let message = match std::error::Error::source(&status) {
        Some(source) if connect::find_tls_error(source).is_some() => {
            connect::describe_error(source)
        }
        _ => status.message().to_string(),
    };
    EnrollmentError::Rejected {
        url: url.to_string(),
        rpc,
        code: status.code(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use edr_pki::{CaFingerprint, EnrollmentToken};
    use edr_proto::v1::{CapabilityManifest, HostFacts};

    use super::{EnrollmentError, enroll, rejected};
    use crate::connect::{CollectorUrl, status_of_http_response};
    use crate::identity::{FilePermissions, IdentityError, IdentityStore};

    /// A proxy's HTTP status is retried; the Collector's own UNAUTHENTICATED is not.
    #[tokio::test]
    async fn proxy_http_status_is_retried() {
        let url = CollectorUrl::parse("https://collector.example:7443").unwrap();
        for code in [401, 403, 404] {
            let err = rejected(&url, "Renew", status_of_http_response(code, "").await);
            assert!(
                matches!(err, EnrollmentError::HttpStatus { http_status, .. } if http_status == code),
                "{code}: {err:?}"
            );
            assert!(err.is_retryable(), "{code}");
        }

        let own = rejected(&url, "Renew", tonic::Status::unauthenticated("revoked"));
        assert!(matches!(own, EnrollmentError::Rejected { .. }), "{own:?}");
        assert!(!own.is_retryable());
    }

    #[test]
    fn state_dir_under_file_fails_before_connecting() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("file");
        std::fs::write(&file, "not a folder").unwrap();
        let store = IdentityStore::new(file.join("state"), Arc::new(FilePermissions));
        let token = EnrollmentToken::generate(CaFingerprint([0; 32]))
            .unwrap()
            .to_text();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();

        // Nothing listens on port 1, so an attempt to connect would fail with a Connect error.
        let err = runtime
            .block_on(enroll(
                &store,
                "https://127.0.0.1:1",
                &token,
                HostFacts::default(),
                CapabilityManifest::default(),
            ))
            .unwrap_err();
        assert!(
            matches!(
                &err,
                EnrollmentError::Identity(IdentityError::NotADirectory { blocker, .. }) if *blocker == file
            ),
            "{err}"
        );
    }
}
