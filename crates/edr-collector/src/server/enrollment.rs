//! The Enrollment service: `Enroll` (server-auth TLS) and `Renew` (mTLS).
//!
//! A CSR that requests CA status, certificate signing or any extended key usage other than
//! client authentication is rejected: an honest sensor sends a CSR without extensions, and
//! the signer would ignore such requests anyway.

use std::sync::Arc;

use edr_pki::csr::sign_client_certificate;
use edr_pki::{EnrollmentToken, IssuedCertificate, ParsedCsr, SensorId, Validity};
use edr_proto::v1::enrollment_server::Enrollment;
use edr_proto::v1::{EnrollRequest, EnrollResponse, RenewRequest, RenewResponse};
use prost::Message;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use super::{Shared, auth, timestamp};
use crate::store::{EnrollError, NewSensor};

/// Maximum stored length of a hostname reported by a sensor.
const MAX_HOSTNAME_LEN: usize = 253;

#[derive(Debug)]
pub(crate) struct EnrollmentService {
    shared: Arc<Shared>,
}

impl EnrollmentService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let token = EnrollmentToken::parse(&request.token)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let ours = self.shared.ca.fingerprint();
        if token.ca_sha256() != ours {
            return Err(Status::permission_denied(format!(
                "enrollment token {} pins CA {}, but this Collector's CA is {ours}: use a token created by this Collector",
                token.id(),
                token.ca_sha256()
            )));
        }
        let csr = parse_csr(&request.csr_pem)?;

        let host = request.host.unwrap_or_default();
        let sensor = NewSensor {
            hostname: sanitize(&host.hostname),
            host_facts_json: format!(
                "{{\"hostname\":{},\"os_family\":{},\"os_build\":{},\"architecture\":{}}}",
                json_string(&host.hostname),
                json_string(&host.os_family),
                json_string(&host.os_build),
                json_string(&host.architecture)
            ),
            capabilities: request.capabilities.unwrap_or_default().encode_to_vec(),
        };

        let shared = Arc::clone(&self.shared);
        let token_id = token.id();
        let issued = tokio::task::spawn_blocking(move || {
            let mut store = shared
                .store
                .lock()
                .map_err(|_| EnrollError::Issue("database lock poisoned".into()))?;
            store.enroll(&token, &sensor, OffsetDateTime::now_utc(), |sensor_id| {
                issue(&shared, &csr, sensor_id)
            })
        })
        .await
        .map_err(|err| Status::internal(format!("enrollment task failed: {err}")))?;

        let issued = match issued {
            Ok(issued) => issued,
            // A failure of the Collector itself is an error in its log; a bad token is not.
            Err(err @ (EnrollError::Issue(_) | EnrollError::Store(_))) => {
                tracing::error!(?peer, token_id = %token_id, error = %err, "enrollment failed");
                return Err(enroll_status(err));
            }
            Err(err) => {
                tracing::warn!(?peer, token_id = %token_id, error = %err, "rejected enrollment");
                return Err(enroll_status(err));
            }
        };
        tracing::info!(
            ?peer,
            sensor_id = %issued.sensor_id,
            token_id = %token_id,
            serial = %hex::encode(&issued.serial),
            "enrolled sensor"
        );
        Ok(Response::new(EnrollResponse {
            sensor_id: issued.sensor_id.to_string(),
            certificate_chain_pem: issued.chain_pem(&self.shared.ca),
            ca_certificate_pem: self.shared.ca.certificate_pem().to_string(),
            not_after: Some(timestamp(issued.validity.not_after())),
        }))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let sensor_id = auth::peer_sensor(&request, &self.shared.revocations)?;
        let csr = parse_csr(&request.into_inner().csr_pem)?;

        let shared = Arc::clone(&self.shared);
        let issued = tokio::task::spawn_blocking(move || {
            let store = shared
                .store
                .lock()
                .map_err(|_| Status::internal("database lock poisoned"))?;
            let renewal_failed = |err: &dyn std::fmt::Display| {
                tracing::error!(sensor_id = %sensor_id, error = %err, "certificate renewal failed");
                internal_status("renew this sensor's certificate")
            };
            if let Some(revoked_at) = store
                .sensor_revoked_at(sensor_id)
                .map_err(|err| renewal_failed(&err))?
            {
                return Err(Status::permission_denied(format!(
                    "sensor {sensor_id} was revoked at {}: enroll it again with a new token",
                    edr_pki::token::format_time(revoked_at)
                )));
            }
            let issued = issue(&shared, &csr, sensor_id).map_err(|err| renewal_failed(&err))?;
            store
                .record_certificate(&issued, OffsetDateTime::now_utc())
                .map_err(|err| renewal_failed(&err))?;
            Ok(issued)
        })
        .await
        .map_err(|err| Status::internal(format!("renewal task failed: {err}")))??;

        tracing::info!(sensor_id = %sensor_id, serial = %hex::encode(&issued.serial), "renewed sensor certificate");
        Ok(Response::new(RenewResponse {
            certificate_chain_pem: issued.chain_pem(&self.shared.ca),
            not_after: Some(timestamp(issued.validity.not_after())),
        }))
    }
}

fn issue(
    shared: &Shared,
    csr: &ParsedCsr,
    sensor_id: SensorId,
) -> Result<IssuedCertificate, String> {
    sign_client_certificate(
        &shared.ca,
        csr,
        sensor_id,
        Validity::starting_now(shared.sensor_certificate_lifetime),
    )
    .map_err(|err| err.to_string())
}

fn parse_csr(pem: &str) -> Result<ParsedCsr, Status> {
    let csr = ParsedCsr::from_pem(pem).map_err(|err| Status::invalid_argument(err.to_string()))?;
    if !csr.forbidden_claims().is_empty() {
        let claims: Vec<String> = csr
            .forbidden_claims()
            .iter()
            .map(ToString::to_string)
            .collect();
        return Err(Status::invalid_argument(format!(
            "the certificate signing request asks for {}, which a sensor certificate never has: send a CSR without extensions",
            claims.join(", ")
        )));
    }
    Ok(csr)
}

fn enroll_status(err: EnrollError) -> Status {
    match err {
        EnrollError::UnknownToken { .. }
        | EnrollError::TokenRevoked { .. }
        | EnrollError::Token(_) => Status::permission_denied(err.to_string()),
        EnrollError::Issue(_) | EnrollError::Store(_) => internal_status("enroll this sensor"),
    }
}

/// Returns the status for a failure of the Collector itself, which the caller has logged.
/// The sensor learns that the Collector failed, but not the Collector's paths or SQLite
/// messages.
fn internal_status(action: &str) -> Status {
    Status::internal(format!(
        "the Collector failed to {action}; its log names the cause"
    ))
}

/// Returns a bounded, printable copy of a string the sensor controls.
fn sanitize(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_HOSTNAME_LEN)
        .collect()
}

fn json_string(value: &str) -> String {
    serde_json::to_string(&sanitize(value)).unwrap_or_else(|_| "\"\"".into())
}
