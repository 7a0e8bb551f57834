//! End-to-end enrollment and mTLS tests against the real `edr-collector` binary on loopback.
//!
//! The sensor side runs in-process through `edr-sensor`, which is the code the `edr-windows`
//! binary calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edr_pki::{CollectorCa, EnrollmentToken, ParsedCsr, Validity};
use edr_proto::v1::command_client::CommandClient;
use edr_proto::v1::enrollment_client::EnrollmentClient;
use edr_proto::v1::telemetry_client::TelemetryClient;
use edr_proto::v1::{
    CapabilityManifest, EnrollRequest, Heartbeat, HostFacts, RenewRequest, SensorMessage,
    collector_message, command_envelope, sensor_message,
};
use edr_sensor::connect::{CollectorUrl, connect, describe_error};
use edr_sensor::enrollment::{EnrollmentError, connect_mtls, enroll, renew};
use edr_sensor::identity::{FilePermissions, Identity, IdentityStore};
use x509_parser::extensions::GeneralName;

const BIN: &str = env!("CARGO_BIN_EXE_edr-collector");

/// A running `edr-collector serve` with its own data directory; killed on drop.
struct Collector {
    root: tempfile::TempDir,
    child: Child,
    url: String,
}

impl Collector {
    fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let data_dir = root.path().join("data");
        let init = run(&["init", "--data-dir", data_dir.to_str().unwrap()]);
        assert!(init.status.success(), "init failed: {init:?}");

        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(pos) = line.find("listen_addr=") {
                    let addr: String = line[pos + "listen_addr=".len()..]
                        .chars()
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                    let _ = tx.send(addr);
                }
                eprintln!("[collector] {line}");
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("collector did not log its listen address");
        Self {
            root,
            child,
            url: format!("https://{addr}"),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = args.to_vec();
        let data_dir = self.data_dir();
        full.extend(["--data-dir", data_dir.to_str().unwrap()]);
        run(&full)
    }

    fn token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create"];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(out.status.success(), "token create failed: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn token_uses(&self, token_text: &str) -> String {
        let id = EnrollmentToken::parse(token_text).unwrap().id();
        let out = String::from_utf8(self.cli(&["token", "list"]).stdout).unwrap();
        let line = out
            .lines()
            .find(|l| l.starts_with(&id))
            .unwrap()
            .to_string();
        line.split_whitespace().nth(3).unwrap().to_string()
    }

    fn sensor_count(&self) -> usize {
        let out = String::from_utf8(self.cli(&["sensors", "list"]).stdout).unwrap();
        out.lines().skip(1).count()
    }

    fn ca(&self) -> CollectorCa {
        CollectorCa::load(&self.data_dir().join("ca")).unwrap()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn store(dir: &Path) -> IdentityStore {
    IdentityStore::new(dir, Arc::new(FilePermissions))
}

fn host() -> HostFacts {
    HostFacts {
        hostname: "test-host".into(),
        os_family: "linux".into(),
        os_build: "non-windows".into(),
        architecture: std::env::consts::ARCH.into(),
    }
}

async fn enroll_at(
    collector: &Collector,
    token: &str,
    dir: &Path,
) -> Result<Identity, EnrollmentError> {
    enroll(
        &store(dir),
        &collector.url,
        token,
        host(),
        CapabilityManifest::default(),
    )
    .await
}

fn assert_no_state(dir: &Path) {
    assert!(
        !dir.exists(),
        "state directory {} must not exist",
        dir.display()
    );
}

/// Sends one heartbeat with `identity` and returns the sensor id in the ack, or the error text.
async fn heartbeat(identity: &Identity) -> Result<String, String> {
    let channel = connect_mtls(identity)
        .await
        .map_err(|err| err.to_string())?;
    let outbound = tokio_stream::iter(vec![SensorMessage {
        kind: Some(sensor_message::Kind::Heartbeat(Heartbeat::default())),
    }]);
    let mut inbound = TelemetryClient::new(channel)
        .stream(outbound)
        .await
        .map_err(|status| status_text(&status))?
        .into_inner();
    match inbound
        .message()
        .await
        .map_err(|status| status_text(&status))?
    {
        Some(message) => match message.kind {
            Some(collector_message::Kind::HeartbeatAck(ack)) => Ok(ack.sensor_id),
            other => Err(format!("unexpected reply {other:?}")),
        },
        None => Err("stream ended without an ack".into()),
    }
}

fn status_text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!("{}: {}", status.message(), describe_error(source)),
        None => status.message().to_string(),
    }
}

/// Builds an identity for a fresh key whose certificate `ca` signs with `validity`.
fn forged_identity(collector: &Collector, ca: &CollectorCa, validity: Validity) -> Identity {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr_pem = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let csr = ParsedCsr::from_pem(&csr_pem).unwrap();
    let issued =
        edr_pki::csr::sign_client_certificate(ca, &csr, uuid::Uuid::new_v4(), validity).unwrap();
    let collector_ca = collector.ca();
    Identity {
        sensor_id: issued.sensor_id.to_string(),
        collector_url: collector.url.clone(),
        ca_sha256: collector_ca.fingerprint().to_hex(),
        ca_certificate_pem: collector_ca.certificate_pem().to_string(),
        certificate_chain_pem: issued.chain_pem(ca),
        private_key_der: zeroize::Zeroizing::new(key.serialize_der()),
        not_after: validity.not_after(),
        enrolled_at: time::OffsetDateTime::now_utc(),
        renewed_at: None,
    }
}

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
