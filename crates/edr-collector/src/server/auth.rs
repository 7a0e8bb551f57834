//! The mTLS gate for every RPC except `Enroll`.

use std::sync::Arc;

use edr_pki::{RevocationList, SensorId};
use time::OffsetDateTime;
use tonic::{Request, Status};

/// The sensor of a request's verified client certificate, stored in request extensions, with
/// what a long stream needs to check again: the certificate's serial and expiry.
#[derive(Debug, Clone)]
pub(crate) struct AuthenticatedSensor {
    pub(crate) id: SensorId,
    serial: Arc<[u8]>,
    not_after: OffsetDateTime,
}

impl AuthenticatedSensor {
    /// Fails when the sensor or its certificate has been revoked, or the certificate has
    /// expired, since the stream opened. The handshake checks both only when a connection
    /// opens, and a stream that keeps sending can stay open for days.
    pub(crate) fn check_still_valid(
        &self,
        revocations: &RevocationList,
        now: OffsetDateTime,
    ) -> Result<(), Status> {
        if revocations
            .snapshot()
            .is_revoked(&self.serial, Some(self.id))
        {
            return Err(Status::permission_denied(format!(
                "sensor {} has been revoked: enroll it again with a new token",
                self.id
            )));
        }
        if now > self.not_after {
            return Err(Status::unauthenticated(format!(
                "the client certificate of sensor {} expired at {}: the sensor renews it before it expires, so reconnect; if renewal failed, enroll it again with a new token",
                self.id,
                self.not_after
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| self.not_after.unix_timestamp().to_string())
            )));
        }
        Ok(())
    }
}

/// Returns the sensor named by the verified client certificate of the connection.
pub(crate) fn peer_sensor<T>(
    request: &Request<T>,
    revocations: &RevocationList,
) -> Result<SensorId, Status> {
    peer_certificate(request, revocations).map(|sensor| sensor.id)
}

/// Returns the sensor and certificate of the connection's verified client certificate.
fn peer_certificate<T>(
    request: &Request<T>,
    revocations: &RevocationList,
) -> Result<AuthenticatedSensor, Status> {
    let certs = request.peer_certs().filter(|certs| !certs.is_empty()).ok_or_else(|| {
        Status::unauthenticated(
            "this RPC requires the client certificate issued at enrollment, and the connection has none: enroll the sensor with `edr-windows enroll` and connect with its identity",
        )
    })?;
    let leaf = &certs[0];
    let summary = edr_pki::csr::certificate_summary(leaf).map_err(|err| {
        Status::unauthenticated(format!("the client certificate is unusable: {err}"))
    })?;
    let sensor_id = summary.sensor_id.ok_or_else(|| {
        Status::unauthenticated(
            "the client certificate names no sensor (no urn:edr:sensor: URI SAN): enroll the sensor again",
        )
    })?;
    // The handshake checked the revocation list; check again for connections opened before
    // a revocation.
    if revocations
        .snapshot()
        .is_revoked(&summary.serial, Some(sensor_id))
    {
        return Err(Status::permission_denied(format!(
            "sensor {sensor_id} has been revoked: enroll it again with a new token"
        )));
    }
    Ok(AuthenticatedSensor {
        id: sensor_id,
        serial: summary.serial.into(),
        not_after: summary.not_after,
    })
}

/// Interceptor that rejects requests without a verified, unrevoked client certificate.
pub(crate) fn require_sensor(
    revocations: Arc<RevocationList>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let sensor = peer_certificate(&request, &revocations)?;
        request.extensions_mut().insert(sensor);
        Ok(request)
    }
}

/// Returns the sensor that the interceptor stored.
pub(crate) fn authenticated<T>(request: &Request<T>) -> Result<AuthenticatedSensor, Status> {
    request
        .extensions()
        .get::<AuthenticatedSensor>()
        .cloned()
        .ok_or_else(|| Status::internal("the mTLS interceptor did not run for this service"))
}
