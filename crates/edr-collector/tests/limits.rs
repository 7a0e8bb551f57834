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

    // tonic checks the length in the frame header first, so an uncompressed message above
    // the limit gets another code.
    let mut session = TelemetrySession::open_uncompressed(&identity).await;
    let status = session.send(event_batch(1..=1000)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status
            .message()
            .contains("decoded message length too large"),
        "{status:?}"
    );
    assert!(stored_seqs(&collector, &identity.sensor_id).is_empty());

    assert_eq!(other_session.send(event_batch(1..=10)).await.unwrap(), 10);
}

/// Opens a TLS connection that completes the handshake (server authentication only) and then
/// sends nothing.
async fn silent_tls_connection(
    collector: &Collector,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = edr_pki::tls::enrollment_client_config(collector.ca().fingerprint()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = collector.url.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    let server_name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(server_name, tcp).await
}

/// Waits until the server closes `stream` and returns how long that took; panics after 15 s.
async fn wait_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Duration {
    let started = Instant::now();
    let mut buf = vec![0_u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after 15 s");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_above_cap_are_closed() {
    let collector =
        Collector::start_with(&["--max-connections", "3", "--metrics-listen", "127.0.0.1:0"]);
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(event_batch(1..=3)).await.unwrap(), 3);

    // Two silent connections take the remaining slots.
    let first = silent_tls_connection(&collector).await.unwrap();
    let second = silent_tls_connection(&collector).await.unwrap();

    // The fourth connection is closed before its handshake completes.
    let started = Instant::now();
    let rejected = silent_tls_connection(&collector).await;
    assert!(rejected.is_err(), "a connection above the cap was accepted");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "rejection took {:?}",
        started.elapsed()
    );
    assert!(collector.metric("edr_collector_connections_rejected_total") >= 1.0);

    // The admitted sensor keeps streaming.
    assert_eq!(session.send(event_batch(4..=6)).await.unwrap(), 6);

    // Closing the silent connections frees their slots for a new sensor.
    drop((first, second));
    let other = direct_identity(&collector);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut other_session = loop {
        let attempt = tokio::spawn({
            let other = other.clone();
            async move { TelemetrySession::open(&other).await }
        })
        .await;
        match attempt {
            Ok(opened) => break opened,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("no slot was freed within 10 s: {err}"),
        }
    };
    assert_eq!(other_session.send(event_batch(1..=2)).await.unwrap(), 2);
    assert_eq!(
        stored_seqs(&collector, &identity.sensor_id),
        (1..=6).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_handshakes_are_capped_and_timed_out() {
    let collector = Collector::start_with(&[
        "--max-pending-handshakes",
        "2",
        "--handshake-timeout",
        "1s",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let identity = direct_identity(&collector);
    let mut session = TelemetrySession::open(&identity).await;
    assert_eq!(session.send(event_batch(1..=3)).await.unwrap(), 3);

    // Two TCP clients that never start TLS take both handshake slots.
    let addr = collector.url.trim_start_matches("https://").to_string();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Let the accept loop take them before the next connection arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A third one is closed at once rather than queued behind them.
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let waited = wait_closed(&mut third).await;
    assert!(
        waited < Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert!(collector.metric("edr_collector_handshakes_rejected_total") >= 1.0);

    // The established stream is not affected.
    assert_eq!(session.send(event_batch(4..=6)).await.unwrap(), 6);

    // The stalled clients are closed by the handshake timeout.
    for stream in &mut stalled {
        let waited = wait_closed(stream).await;
        assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    }
    // The server counts a timeout just after it drops the socket, so allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while collector.metric("edr_collector_handshakes_timed_out_total") < 2.0 {
        assert!(Instant::now() < deadline, "handshake timeouts not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        collector.metric("edr_collector_handshakes_timed_out_total"),
        2.0
    );

    // With the slots free again, a new sensor connects and streams.
    let other = direct_identity(&collector);
    let mut other_session = TelemetrySession::open(&other).await;
    assert_eq!(other_session.send(event_batch(1..=2)).await.unwrap(), 2);
    assert_eq!(session.send(event_batch(7..=8)).await.unwrap(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_handshakes_are_logged_rate_limited() {
    use tokio::io::AsyncWriteExt;

    let collector = Collector::start();
    let addr = collector.url.trim_start_matches("https://").to_string();

    // Bytes that are not a TLS record make each handshake fail at once.
    for _ in 0..40 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        wait_closed(&mut tcp).await;
    }
    // The log line is written after the socket is closed, so allow it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let warnings = collector
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains("closed a connection before TLS was established"))
        .count();
    assert!(warnings >= 1, "no warning about the failed handshakes");
    assert!(
        warnings <= 2,
        "{warnings} warnings for 40 failed handshakes"
    );
}

#[cfg(unix)]
#[test]
fn sigterm_stops_serve_gracefully() {
    let mut collector = Collector::start();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &collector.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let status = collector.child.wait().unwrap();
    // The log is read by another thread, so allow it a moment to take the last lines.
    std::thread::sleep(Duration::from_millis(300));
    let log = collector.log.lock().unwrap().join("\n");

    assert!(status.success(), "serve exited with {status}: {log}");
    assert!(log.contains("received SIGTERM, shutting down"), "{log}");
    assert!(log.contains("edr-collector stopped"), "{log}");
}
