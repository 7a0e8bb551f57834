//! End-to-end enrollment and mTLS tests against the real `edr-collector` binary on loopback.
//!
//! The sensor side runs in-process through `edr-sensor`, which is the code the `edr-windows`
//! binary calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use edr_pki::{CollectorCa, EnrollmentToken, Validity};
use edr_proto::v1::command_client::CommandClient;
use edr_proto::v1::enrollment_client::EnrollmentClient;
use edr_proto::v1::telemetry_client::TelemetryClient;
use edr_proto::v1::{EnrollRequest, RenewRequest, command_envelope};
use edr_sensor::connect::{CollectorUrl, connect};
use edr_sensor::enrollment::{EnrollmentError, connect_mtls, renew};
use x509_parser::extensions::GeneralName;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn enroll_issues_client_certificate_once() {
    let collector = Collector::start();
    let token = collector.token(&["--uses", "1", "--label", "site=lab"]);
    let root = tempfile::tempdir().unwrap();

    let identity = enroll_at(&collector, &token, &root.path().join("a"))
        .await
        .unwrap();
    let leaf =
        rustls_pki_types::pem::PemObject::pem_slice_iter(identity.certificate_chain_pem.as_bytes())
            .next()
            .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.unwrap())
            .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(
        san.general_names,
        vec![GeneralName::URI(&format!(
            "urn:edr:sensor:{}",
            identity.sensor_id
        ))]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth);
    assert!(!eku.server_auth);
    assert!(!eku.any);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let stored = store(&root.path().join("a")).load().unwrap();
    assert_eq!(stored.sensor_id, identity.sensor_id);
    assert_eq!(collector.token_uses(&token), "1/1");

    // The same token again: rejected, nothing written on either side.
    let err = enroll_at(&collector, &token, &root.path().join("b"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("has already been used 1 of 1 times"),
        "{err}"
    );
    assert!(
        err.to_string().contains("edr-collector token create"),
        "{err}"
    );
    assert_no_state(&root.path().join("b"));
    assert_eq!(collector.sensor_count(), 1);

    // Enrolling into a directory that contains an identity is rejected before any request.
    let second = collector.token(&[]);
    let err = enroll_at(&collector, &second, &root.path().join("a"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EnrollmentError::AlreadyEnrolled { .. }),
        "{err}"
    );
    assert_eq!(collector.token_uses(&second), "0/1");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_token_is_rejected() {
    let collector = Collector::start();
    let token = collector.token(&["--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let root = tempfile::tempdir().unwrap();
    let err = enroll_at(&collector, &token, &root.path().join("s"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("has expired (expired at 20"), "{text}");
    assert!(text.contains("edr-collector token create"), "{text}");
    assert_no_state(&root.path().join("s"));
    assert_eq!(collector.token_uses(&token), "0/1");
    assert_eq!(collector.sensor_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_ca_pin_is_rejected() {
    let collector = Collector::start();
    let token = collector.token(&[]);
    // Same id and secret, another CA digest, valid check digits.
    let fields: Vec<&str> = token.split('.').collect();
    let body = format!(
        "{}.{}.{}.{}",
        fields[0],
        fields[1],
        fields[2],
        "ab".repeat(32)
    );
    let check = hex::encode(&edr_pki::sha256(body.as_bytes())[..4]);
    let wrong = format!("{body}.{check}");
    EnrollmentToken::parse(&wrong).unwrap();

    let root = tempfile::tempdir().unwrap();
    let err = enroll_at(&collector, &wrong, &root.path().join("s"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "no CA certificate with SHA-256 {}",
            "ab".repeat(32)
        )),
        "{text}"
    );
    assert!(text.contains("created by this Collector"), "{text}");
    assert_no_state(&root.path().join("s"));
    assert_eq!(collector.token_uses(&token), "0/1");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_token_is_rejected_locally() {
    let collector = Collector::start();
    let root = tempfile::tempdir().unwrap();
    for garbage in ["not-a-token", "edr1.zz", ""] {
        let err = enroll_at(&collector, garbage, &root.path().join("s"))
            .await
            .unwrap_err();
        assert!(matches!(err, EnrollmentError::Token(_)), "{garbage}: {err}");
        assert!(err.to_string().contains("token create"), "{err}");
        assert_no_state(&root.path().join("s"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn csr_claiming_ca_or_server_auth_is_rejected() {
    let collector = Collector::start();
    let token = collector.token(&[]);
    let pin = EnrollmentToken::parse(&token).unwrap().ca_sha256();

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["collector.example".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    // basicConstraints CA:TRUE, written by hand because rcgen refuses it in a CSR.
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 19],
            vec![0x30, 0x03, 0x01, 0x01, 0xff],
        ));
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();

    let url = CollectorUrl::parse(&collector.url).unwrap();
    let channel = connect(&url, edr_pki::tls::enrollment_client_config(pin).unwrap())
        .await
        .unwrap();
    let status = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            token: token.clone(),
            csr_pem,
            host: Some(host()),
            capabilities: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("CA:TRUE"), "{}", status.message());
    assert!(
        status.message().contains("serverAuth"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("send a CSR without extensions"),
        "{}",
        status.message()
    );
    assert_eq!(collector.token_uses(&token), "0/1");
    assert_eq!(collector.sensor_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_gates_every_rpc_but_enroll() {
    let collector = Collector::start();
    let token = collector.token(&[]);
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("a");
    let identity = enroll_at(&collector, &token, &state).await.unwrap();

    // The enrolled identity works, and the Collector names it from the certificate.
    assert_eq!(heartbeat(&identity).await.unwrap(), identity.sensor_id);
    let queued = collector.cli(&["command", "ping", &identity.sensor_id]);
    assert!(queued.status.success(), "command ping failed: {queued:?}");
    let channel = connect_mtls(&identity).await.unwrap();
    let mut commands = CommandClient::new(channel)
        .stream(tokio_stream::pending())
        .await
        .unwrap()
        .into_inner();
    let envelope = commands.message().await.unwrap().unwrap();
    assert!(matches!(
        envelope.kind,
        Some(command_envelope::Kind::Ping(_))
    ));
    assert!(envelope.expires_at.unwrap().seconds > envelope.issued_at.unwrap().seconds);

    // No client certificate: Telemetry, Command and Renew are refused.
    let url = CollectorUrl::parse(&collector.url).unwrap();
    let ca_der = collector.ca().certificate_der().clone();
    let anonymous = connect(
        &url,
        edr_pki::tls::server_auth_client_config(ca_der).unwrap(),
    )
    .await
    .unwrap();
    let status = TelemetryClient::new(anonymous.clone())
        .stream(tokio_stream::pending())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().contains("requires the client certificate"),
        "{}",
        status.message()
    );
    let status = CommandClient::new(anonymous.clone())
        .stream(tokio_stream::pending())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = EnrollmentClient::new(anonymous)
        .renew(RenewRequest {
            csr_pem: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // A certificate from another CA fails the handshake.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = CollectorCa::create(other_dir.path(), "Other CA").unwrap();
    let foreign = forged_identity(
        &collector,
        &other_ca,
        Validity::starting_now(time::Duration::days(1)),
    );
    let err = heartbeat(&foreign).await.unwrap_err();
    assert!(err.contains("not issued by this Collector's CA"), "{err}");

    // An expired certificate from the right CA fails the handshake.
    let now = time::OffsetDateTime::now_utc();
    let past = Validity::between(
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    )
    .unwrap();
    let expired = forged_identity(&collector, &collector.ca(), past);
    let err = heartbeat(&expired).await.unwrap_err();
    assert!(err.contains("has expired"), "{err}");

    // Renewal over mTLS replaces the key and certificate and keeps the sensor id.
    let renewed = renew(&store(&state)).await.unwrap();
    assert_eq!(renewed.sensor_id, identity.sensor_id);
    assert_ne!(
        renewed.certificate_chain_pem,
        identity.certificate_chain_pem
    );
    assert_ne!(*renewed.private_key_der, *identity.private_key_der);
    assert!(renewed.renewed_at.is_some());
    assert_eq!(heartbeat(&renewed).await.unwrap(), identity.sensor_id);

    // Revocation through the CLI reaches the running server.
    let out = collector.cli(&["sensors", "revoke", &identity.sensor_id]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match heartbeat(&renewed).await {
            Err(err) => break err,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(_) => panic!("revoked sensor still accepted after 10 s"),
        }
    };
    assert!(err.contains("revoked"), "{err}");
    // The original certificate of the same sensor is rejected too.
    let err = heartbeat(&identity).await.unwrap_err();
    assert!(err.contains("revoked"), "{err}");
    let err = renew(&store(&state)).await.unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
}

#[test]
fn cli_errors_name_value_and_next_step() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let data = data.to_str().unwrap();

    let out = run(&["token", "create", "--data-dir", data]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("edr-collector init --data-dir"), "{stderr}");

    assert!(run(&["init", "--data-dir", data]).status.success());
    let out = run(&["init", "--data-dir", data]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");

    let out = run(&["serve", "--data-dir", data, "--listen", "localhost:7443"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("\"localhost:7443\" is not an IP address and port"),
        "{stderr}"
    );
    assert!(stderr.contains("127.0.0.1:7443"), "{stderr}");

    let out = run(&["token", "create", "--data-dir", data, "--label", "novalue"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid token label \"novalue\""),
        "{stderr}"
    );

    let out = run(&["sensors", "revoke", "--data-dir", data, "nope"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no sensor with id \"nope\""), "{stderr}");

    let out = run(&["token", "revoke", "--data-dir", data, "nope"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no enrollment token with id \"nope\""),
        "{stderr}"
    );
}

/// A revocation ends the telemetry stream a sensor already has open: the handshake checks the
/// revocation list only when a connection opens.
#[tokio::test(flavor = "multi_thread")]
async fn revocation_ends_an_open_stream() {
    let collector = Collector::start();
    let token = collector.token(&[]);
    let root = tempfile::tempdir().unwrap();
    let identity = enroll_at(&collector, &token, &root.path().join("a"))
        .await
        .unwrap();
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(event_batch(1..=2)).await.unwrap(), 2);

    let out = collector.cli(&["sensors", "revoke", &identity.sensor_id]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 3;
    let status = loop {
        match session.send(event_batch([seq])).await {
            Err(status) => break status,
            Ok(_) if Instant::now() < deadline => {
                seq += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(_) => panic!("the open stream of a revoked sensor still stores batches after 10 s"),
        }
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    // Nothing sent after the stream ended is stored.
    assert!(
        stored_seqs(&collector, &identity.sensor_id)
            .iter()
            .all(|s| *s < seq),
        "a batch was stored after the revocation ended the stream"
    );
    // A command for the revoked sensor is refused with the reason, not as an unknown sensor.
    let out = collector.cli(&["command", "ping", &identity.sensor_id]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("was revoked at"), "{stderr}");
}

/// A certificate that expires while its stream is open ends the stream at the next message.
#[tokio::test(flavor = "multi_thread")]
async fn expiry_ends_an_open_stream() {
    let collector = Collector::start();
    let ca = collector.ca();
    let identity = forged_identity(
        &collector,
        &ca,
        Validity::starting_now(time::Duration::seconds(3)),
    );
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(event_batch(1..=2)).await.unwrap(), 2);
    // Certificate times have whole seconds; wait past the expiry with a margin.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = session
        .send(event_batch([3]))
        .await
        .expect_err("a batch on the stream of an expired certificate was acked");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    assert_eq!(stored_seqs(&collector, &identity.sensor_id), vec![1, 2]);
}

/// SQLite would fill a zero-byte `collector.db` with new, empty tables, losing the
/// revocations among them. Every command that opens the database rejects it instead and
/// leaves it as it is.
#[test]
fn empty_database_rejected_by_every_command() {
    let root = tempfile::tempdir().unwrap();
    let data_path = root.path().join("data");
    let data = data_path.to_str().unwrap();
    assert!(run(&["init", "--data-dir", data]).status.success());
    let database = data_path.join("collector.db");
    let export = root.path().join("export");
    let export = export.to_str().unwrap();

    let commands: [&[&str]; 10] = [
        &["events"],
        &["sensors", "list"],
        &["sensors", "revoke", "some-sensor"],
        &["token", "create"],
        &["token", "list"],
        &["token", "revoke", "some-token"],
        &["command", "ping", "some-sensor"],
        &["commands", "list"],
        &["export", "--format", "jsonl", "--output", export],
        &["serve", "--listen", "127.0.0.1:0"],
    ];
    // SQLite starts a new database in a 1-byte file too.
    for content in [&b""[..], b"x"] {
        std::fs::write(&database, content).unwrap();
        for command in commands {
            let mut args = command.to_vec();
            args.extend(["--data-dir", data]);
            let out = run(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
            assert!(
                stderr.contains(&format!(
                    "the Collector database \"{}\" is {} bytes long, too short to be a database",
                    database.display(),
                    content.len()
                )),
                "{command:?}: {stderr}"
            );
            assert!(
                stderr.contains("restore it from a backup"),
                "{command:?}: {stderr}"
            );
            assert_eq!(
                std::fs::read(&database).unwrap(),
                content,
                "{command:?} changed the file"
            );
        }
    }
    assert!(!data_path.join("collector.lock").exists());
}
