//! Prometheus metrics of `serve`, rendered by hand in the text exposition format 0.0.4.
//!
//! Counters and the gauge are atomics updated on the ingest path; the store latency histogram
//! counts each batch's transaction time (validation excluded) into fixed buckets.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the store latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters shared by every stream.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) events_ingested: AtomicU64,
    pub(crate) records_other: AtomicU64,
    pub(crate) duplicates_dropped: AtomicU64,
    pub(crate) batches_stored: AtomicU64,
    pub(crate) batches_rejected: AtomicU64,
    pub(crate) event_bytes: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) active_streams: AtomicU64,
    pub(crate) streams_opened: AtomicU64,
    pub(crate) connections_rejected: AtomicU64,
    pub(crate) handshakes_rejected: AtomicU64,
    pub(crate) handshakes_timed_out: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl Metrics {
    /// Counts one store transaction that took `elapsed`.
    pub(crate) fn observe_store_latency(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Renders every metric in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &AtomicU64); 11] = [
            (
                "edr_collector_events_ingested_total",
                "OCSF events stored.",
                &self.events_ingested,
            ),
            (
                "edr_collector_records_other_total",
                "Gap and command-result records stored.",
                &self.records_other,
            ),
            (
                "edr_collector_duplicates_dropped_total",
                "Records at or below the sensor's high-water mark, dropped as duplicates.",
                &self.duplicates_dropped,
            ),
            (
                "edr_collector_batches_stored_total",
                "Batches committed and acknowledged.",
                &self.batches_stored,
            ),
            (
                "edr_collector_batches_rejected_total",
                "Batches rejected as invalid or failed to store.",
                &self.batches_rejected,
            ),
            (
                "edr_collector_event_bytes_total",
                "Bytes of OCSF JSON received in batches.",
                &self.event_bytes,
            ),
            (
                "edr_collector_heartbeats_total",
                "Heartbeats received.",
                &self.heartbeats,
            ),
            (
                "edr_collector_streams_opened_total",
                "Telemetry streams opened.",
                &self.streams_opened,
            ),
            (
                "edr_collector_connections_rejected_total",
                "New connections closed because --max-connections were open.",
                &self.connections_rejected,
            ),
            (
                "edr_collector_handshakes_rejected_total",
                "New connections closed because --max-pending-handshakes were in progress.",
                &self.handshakes_rejected,
            ),
            (
                "edr_collector_handshakes_timed_out_total",
                "Connections closed because the TLS handshake exceeded --handshake-timeout.",
                &self.handshakes_timed_out,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let name = "edr_collector_active_streams";
        let _ = writeln!(
            out,
            "# HELP {name} Telemetry streams open now.\n# TYPE {name} gauge\n{name} {}",
            self.active_streams.load(Ordering::Relaxed)
        );

        let name = "edr_collector_store_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to store one batch in SQLite, commit included.\n# TYPE {name} histogram"
        );
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
        );
        out
    }
}

/// Serves `GET /metrics` (any path is answered with the metrics) on `listener` forever.
/// Returns the method and path of an HTTP/1 request line, without any query string.
fn request_target(request: &[u8]) -> Option<(&str, &str)> {
    let line = request.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    parts.next()?.starts_with("HTTP/").then_some(())?;
    Some((method, target.split('?').next().unwrap_or(target)))
}

fn plain_response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

pub(crate) async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut socket, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(error = %err, "failed to accept a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = std::sync::Arc::clone(&metrics);
        tokio::spawn(async move {
            // Read the start of the request (bounded); only its request line matters.
            let mut request = [0_u8; 2048];
            let read =
                tokio::time::timeout(Duration::from_secs(5), socket.read(&mut request)).await;
            let n = match read {
                Ok(Ok(n)) if n > 0 => n,
                _ => {
                    tracing::debug!(%peer, "metrics client sent no request");
                    return;
                }
            };
            let response = match request_target(&request[..n]) {
                Some(("GET", "/metrics")) => {
                    let body = metrics.render();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                Some(("GET", _)) => {
                    plain_response("404 Not Found", "not found: metrics are at GET /metrics\n")
                }
                Some(_) => plain_response(
                    "405 Method Not Allowed",
                    "method not allowed: use GET /metrics\n",
                ),
                None => plain_response("400 Bad Request", "bad request: send GET /metrics\n"),
            };
            if let Err(err) = socket.write_all(response.as_bytes()).await {
                tracing::debug!(%peer, error = %err, "failed to write metrics");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::request_target;

    #[test]
    fn request_line_gives_method_and_path() {
        let get = request_target(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(get, Some(("GET", "/metrics")));
        let query = request_target(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert_eq!(query, Some(("GET", "/metrics")));
        assert_eq!(request_target(b"POST / HTTP/1.1\r\n"), Some(("POST", "/")));
    }

    #[test]
    fn malformed_request_line_is_rejected() {
        assert_eq!(request_target(b"\x16\x03\x01\x02\x00"), None);
        assert_eq!(request_target(b"GET /metrics\r\n"), None);
        assert_eq!(request_target(b"GET /metrics FTP/1\r\n"), None);
        assert_eq!(request_target(&[0xff, 0xfe, b' ', b'/']), None);
    }
}
