//! The mTLS gate for every RPC except `Enroll`.

use std::sync::Arc;

use edr_pki::{RevocationList, SensorId};
use tonic::{Request, Status};

/// The sensor id of a request's verified client certificate, stored in request extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuthenticatedSensor(pub(crate) SensorId);

/// Returns the sensor named by the verified client certificate of the connection.
pub(crate) fn peer_sensor<T>(
    request: &Request<T>,
    revocations: &RevocationList,
) -> Result<SensorId, Status> {
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
    Ok(sensor_id)
}

/// Interceptor that rejects requests without a verified, unrevoked client certificate.
pub(crate) fn require_sensor(
    revocations: Arc<RevocationList>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let sensor_id = peer_sensor(&request, &revocations)?;
        request
            .extensions_mut()
            .insert(AuthenticatedSensor(sensor_id));
        Ok(request)
    }
}

/// Returns the sensor id that the interceptor stored.
pub(crate) fn authenticated<T>(request: &Request<T>) -> Result<SensorId, Status> {
    request
        .extensions()
        .get::<AuthenticatedSensor>()
        .map(|sensor| sensor.0)
        .ok_or_else(|| Status::internal("the mTLS interceptor did not run for this service"))
}
