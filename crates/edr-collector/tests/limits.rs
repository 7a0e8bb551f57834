//! Limits of `edr-collector serve` against misbehaving clients: silent connections, stalled
//! streams and oversized messages end with clear errors and leave other streams working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread")]
async fn silent_tls_client_is_dropped() {
    let collector = Collector::start_with(&["--connection-idle-timeout", "2s"]);
    let fingerprint = collector.ca().fingerprint();
    let config = edr_pki::tls::enrollment_client_config(fingerprint).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = collector.url.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let server_name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(server_name, tcp).await.unwrap();

    // Send nothing; the server must close the connection after about 2 s.
    let started = Instant::now();
    let mut buf = vec![0_u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "silent connection still open after 15 s");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed too early: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_stream_is_closed() {
    let collector = Collector::start_with(&["--stream-idle-timeout", "1s"]);
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(event_batch(1..=3)).await.unwrap(), 3);

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = session.send(event_batch(4..=5)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("idle timeout"), "{status:?}");

    // A new stream of the same sensor works.
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(event_batch(4..=5)).await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_message_is_rejected() {
    let collector = Collector::start_with(&["--max-message-bytes", "65536"]);
    let identity = direct_identity(&collector);
    let other = direct_identity(&collector);
    let mut other_session = TelemetrySession::open(&other).await;

    let mut session = TelemetrySession::open(&identity).await;
    // About 400 bytes per event: 1,000 events exceed 64 KiB even before compression matters,
    // because the limit applies after decompression.
    let status = session.send(event_batch(1..=1000)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("size limit"), "{status:?}");
    assert!(stored_seqs(&collector, &identity.sensor_id).is_empty());

    assert_eq!(other_session.send(event_batch(1..=10)).await.unwrap(), 10);
}
