//! Helpers shared by the integration tests: a real `edr-collector serve` process on loopback,
//! CLI runs against its data directory, and sensor identities.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use edr_pki::{CollectorCa, EnrollmentToken, ParsedCsr, Validity};
use edr_proto::v1::telemetry_client::TelemetryClient;
use edr_proto::v1::{
    CapabilityManifest, Heartbeat, HostFacts, SensorMessage, collector_message, sensor_message,
};
use edr_sensor::connect::describe_error;
use edr_sensor::enrollment::{EnrollmentError, connect_mtls, enroll};
use edr_sensor::identity::{FilePermissions, Identity, IdentityStore};

pub const BIN: &str = env!("CARGO_BIN_EXE_edr-collector");

/// A running `edr-collector serve` with its own data directory; killed on drop.
pub struct Collector {
    pub root: tempfile::TempDir,
    pub child: Child,
    pub url: String,
    pub metrics_addr: Option<String>,
    /// Every line that `serve` wrote to standard error, across restarts.
    pub log: ServeLog,
    extra: Vec<String>,
}

/// Lines of a `serve` process's standard error, shared with the thread that reads them.
pub type ServeLog = Arc<std::sync::Mutex<Vec<String>>>;

/// Starts `edr-collector serve` and waits for its start-up line; returns the child, the URL
/// and the metrics address when one is served.
pub fn spawn_serve(
    data_dir: &Path,
    listen: &str,
    extra: &[&str],
    log: &ServeLog,
) -> (Child, String, Option<String>) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            listen,
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::clone(log);
    std::thread::spawn(move || {
        let field = |line: &str, name: &str| {
            let pos = line.find(name)?;
            Some(
                line[pos + name.len()..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect::<String>(),
            )
        };
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = field(&line, "listen_addr=") {
                let metrics = field(&line, "metrics_addr=").filter(|a| a != "none");
                let _ = tx.send((addr, metrics));
            }
            if std::env::var_os("EDR_TEST_QUIET").is_none() {
                eprintln!("[collector] {line}");
            }
            log.lock().unwrap().push(line);
        }
    });
    let (addr, metrics) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("collector did not log its listen address");
    (child, format!("https://{addr}"), metrics)
}

impl Collector {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Initialises a data directory and starts `serve` with `extra` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let data_dir = root.path().join("data");
        let init = run(&["init", "--data-dir", data_dir.to_str().unwrap()]);
        assert!(init.status.success(), "init failed: {init:?}");
        let log = ServeLog::default();
        let (child, url, metrics_addr) = spawn_serve(&data_dir, "127.0.0.1:0", extra, &log);
        Self {
            root,
            child,
            url,
            metrics_addr,
            log,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Stops `serve` with SIGKILL and starts it again on the same address and data directory.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let addr = self.url.trim_start_matches("https://").to_string();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (child, url, metrics_addr) = spawn_serve(&self.data_dir(), &addr, &extra, &self.log);
        self.child = child;
        self.url = url;
        self.metrics_addr = metrics_addr;
    }

    /// Fetches the Prometheus metrics text; `serve` must run with `--metrics-listen`.
    pub fn metrics(&self) -> String {
        self.metrics_request("GET /metrics")
    }

    /// Sends `request_line` to the metrics listener and returns the whole response.
    pub fn metrics_request(&self, request_line: &str) -> String {
        use std::io::{Read, Write};
        let addr = self
            .metrics_addr
            .as_ref()
            .expect("serve runs without --metrics-listen");
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        socket
            .write_all(format!("{request_line} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .unwrap();
        let mut text = String::new();
        socket.read_to_string(&mut text).unwrap();
        text
    }

    /// Reads one metric's value from the Prometheus text.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = args.to_vec();
        let data_dir = self.data_dir();
        full.extend(["--data-dir", data_dir.to_str().unwrap()]);
        run(&full)
    }

    pub fn token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create"];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(out.status.success(), "token create failed: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn token_uses(&self, token_text: &str) -> String {
        let id = EnrollmentToken::parse(token_text).unwrap().id();
        let out = String::from_utf8(self.cli(&["token", "list"]).stdout).unwrap();
        let line = out
            .lines()
            .find(|l| l.starts_with(&id))
            .unwrap()
            .to_string();
        line.split_whitespace().nth(3).unwrap().to_string()
    }

    pub fn sensor_count(&self) -> usize {
        let out = String::from_utf8(self.cli(&["sensors", "list"]).stdout).unwrap();
        out.lines().skip(1).count()
    }

    pub fn ca(&self) -> CollectorCa {
        CollectorCa::load(&self.data_dir().join("ca")).unwrap()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

pub fn store(dir: &Path) -> IdentityStore {
    IdentityStore::new(dir, Arc::new(FilePermissions))
}

pub fn host() -> HostFacts {
    HostFacts {
        hostname: "test-host".into(),
        os_family: "linux".into(),
        os_build: "non-windows".into(),
        architecture: std::env::consts::ARCH.into(),
    }
}

pub async fn enroll_at(
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

pub fn assert_no_state(dir: &Path) {
    assert!(
        !dir.exists(),
        "state directory {} must not exist",
        dir.display()
    );
}

/// Sends one heartbeat with `identity` and returns the sensor id in the ack, or the error text.
pub async fn heartbeat(identity: &Identity) -> Result<String, String> {
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

pub fn status_text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!("{}: {}", status.message(), describe_error(source)),
        None => status.message().to_string(),
    }
}

/// Builds an identity for a fresh key whose certificate `ca` signs with `validity`.
pub fn forged_identity(collector: &Collector, ca: &CollectorCa, validity: Validity) -> Identity {
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

/// Builds an OCSF process activity event with sequence-dependent fields.
pub fn ocsf_event(seq: u64) -> Vec<u8> {
    format!(
        r#"{{"class_uid":1007,"activity_id":1,"severity_id":1,"time":{},"category_uid":1,"type_uid":100701,"metadata":{{"version":"1.8.0","product":{{"name":"test"}}}},"process":{{"uid":"proc-{seq}","pid":{seq},"file":{{"name":"cmd.exe"}}}},"actor":{{"user":{{"name":"alice"}}}}}}"#,
        1_700_000_000_000_u64 + seq
    )
    .into_bytes()
}

/// Builds a batch of OCSF events numbered `seqs`.
pub fn event_batch(seqs: impl IntoIterator<Item = u64>) -> edr_proto::v1::EventBatch {
    let records: Vec<_> = seqs
        .into_iter()
        .map(|seq| edr_proto::v1::BufferedRecord {
            seq,
            kind: Some(edr_proto::v1::buffered_record::Kind::OcsfEventJson(
                ocsf_event(seq).into(),
            )),
        })
        .collect();
    edr_proto::v1::EventBatch {
        first_seq: records.first().map_or(0, |r| r.seq),
        last_seq: records.last().map_or(0, |r| r.seq),
        records,
    }
}

/// A telemetry stream driven one message at a time.
pub struct TelemetrySession {
    tx: tokio::sync::mpsc::Sender<SensorMessage>,
    inbound: tonic::Streaming<edr_proto::v1::CollectorMessage>,
}

impl TelemetrySession {
    /// Opens a stream with `identity`, zstd compression on.
    pub async fn open(identity: &Identity) -> Self {
        Self::open_with(identity, true).await
    }

    /// Opens a stream with `identity` that sends its messages uncompressed.
    pub async fn open_uncompressed(identity: &Identity) -> Self {
        Self::open_with(identity, false).await
    }

    async fn open_with(identity: &Identity, compressed: bool) -> Self {
        let channel = connect_mtls(identity).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut client = TelemetryClient::new(channel)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
            .max_decoding_message_size(64 * 1024 * 1024);
        if compressed {
            client = client.send_compressed(tonic::codec::CompressionEncoding::Zstd);
        }
        let inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { tx, inbound }
    }

    /// Sends `batch` and returns the acked `durable_seq` or the error status.
    pub async fn send(&mut self, batch: edr_proto::v1::EventBatch) -> Result<u64, tonic::Status> {
        self.send_message(sensor_message::Kind::Batch(batch))
            .await
            .map(|reply| match reply {
                collector_message::Kind::Ack(ack) => ack.durable_seq,
                other => panic!("expected an ack, got {other:?}"),
            })
    }

    /// Sends one message and waits for the reply.
    pub async fn send_message(
        &mut self,
        kind: sensor_message::Kind,
    ) -> Result<collector_message::Kind, tonic::Status> {
        if self
            .tx
            .send(SensorMessage { kind: Some(kind) })
            .await
            .is_err()
        {
            // The server ended the call; its status is on the response stream.
            let end = self.inbound.message().await?;
            return Err(tonic::Status::unavailable(format!(
                "request stream closed; response stream returned {end:?}"
            )));
        }
        match self.inbound.message().await? {
            Some(message) => Ok(message.kind.expect("reply without a kind")),
            None => Err(tonic::Status::unavailable("stream ended without a reply")),
        }
    }
}

/// Identity with a certificate issued directly by the Collector CA, for sensors that need no
/// enrollment round trip.
pub fn direct_identity(collector: &Collector) -> Identity {
    let ca = collector.ca();
    forged_identity(
        collector,
        &ca,
        Validity::starting_now(time::Duration::days(1)),
    )
}

/// Opens the Collector database read-only.
pub fn database(collector: &Collector) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        collector.data_dir().join("collector.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// Counts stored events of `sensor_id` and checks that no sequence number appears twice.
pub fn stored_seqs(collector: &Collector, sensor_id: &str) -> Vec<u64> {
    let db = database(collector);
    let mut stmt = db
        .prepare("SELECT seq FROM events WHERE sensor_id = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([sensor_id], |row| row.get::<_, i64>(0))
        .unwrap()
        .map(|seq| u64::try_from(seq.unwrap()).unwrap())
        .collect()
}

impl TelemetrySession {
    /// Sends `batches` without waiting, then returns the acked `durable_seq` of each reply in
    /// arrival order.
    pub async fn send_pipelined(
        &mut self,
        batches: Vec<edr_proto::v1::EventBatch>,
    ) -> Result<Vec<u64>, tonic::Status> {
        let count = batches.len();
        let tx = self.tx.clone();
        let sender = tokio::spawn(async move {
            for batch in batches {
                let message = SensorMessage {
                    kind: Some(sensor_message::Kind::Batch(batch)),
                };
                if tx.send(message).await.is_err() {
                    break;
                }
            }
        });
        let mut acks = Vec::with_capacity(count);
        while acks.len() < count {
            match self.inbound.message().await? {
                Some(message) => match message.kind {
                    Some(collector_message::Kind::Ack(ack)) => acks.push(ack.durable_seq),
                    other => panic!("expected an ack, got {other:?}"),
                },
                None => return Err(tonic::Status::unavailable("stream ended early")),
            }
        }
        sender.await.unwrap();
        Ok(acks)
    }
}
