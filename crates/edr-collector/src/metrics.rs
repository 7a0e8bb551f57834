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
    pub(crate) command_results_dropped: AtomicU64,
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
        let counters: [(&str, &str, &AtomicU64); 12] = [
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
                "edr_collector_command_results_dropped_total",
                "Command results dropped because no command has their id or it was issued to another sensor.",
                &self.command_results_dropped,
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

/// Largest request head read; the request line must end within it.
const MAX_REQUEST_BYTES: usize = 2048;

/// Returns the method and path of an HTTP/1 request line, without any query string. Empty
/// lines before the request line are skipped, and an absolute target
/// (`http://host:port/metrics`) gives its path.
fn request_target(request: &[u8]) -> Option<(&str, &str)> {
    let line = request
        .split(|b| *b == b'\n')
        .find(|line| !line.is_empty() && *line != b"\r")?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let mut target = parts.next()?;
    parts.next()?.starts_with("HTTP/").then_some(())?;
    if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        target = rest.find('/').map_or("/", |at| &rest[at..]);
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

/// Returns true once `request` contains a complete request line.
fn has_request_line(request: &[u8]) -> bool {
    request
        .split(|b| *b == b'\n')
        .rev()
        .skip(1)
        .any(|line| !line.is_empty() && line != b"\r")
}

fn plain_response(status: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Builds the response to one request head.
fn respond(request: &[u8], metrics: &Metrics) -> String {
    match request_target(request) {
        Some((method @ ("GET" | "HEAD"), "/metrics")) => {
            let body = metrics.render();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if method == "GET" { head + &body } else { head }
        }
        Some(("GET" | "HEAD", _)) => plain_response(
            "404 Not Found",
            "",
            "not found: metrics are at GET /metrics\n",
        ),
        Some(_) => plain_response(
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "method not allowed: use GET /metrics\n",
        ),
        None => plain_response("400 Bad Request", "", "bad request: send GET /metrics\n"),
    }
}

/// Serves the metrics at `GET /metrics` on `listener` forever; other paths get 404, other
/// methods 405. Each connection serves one request and is then closed.
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
            // Read until the request line is complete, within a bounded size and time; the
            // headers after it do not matter.
            let mut request = Vec::with_capacity(MAX_REQUEST_BYTES);
            let mut chunk = [0_u8; MAX_REQUEST_BYTES];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !has_request_line(&request) && request.len() < MAX_REQUEST_BYTES {
                let room = MAX_REQUEST_BYTES - request.len();
                match tokio::time::timeout_at(deadline, socket.read(&mut chunk[..room])).await {
                    Ok(Ok(n)) if n > 0 => request.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            if request.is_empty() {
                tracing::debug!(%peer, "metrics client sent no request");
                return;
            }
            let response = respond(&request, &metrics);
            if let Err(err) = socket.write_all(response.as_bytes()).await {
                tracing::debug!(%peer, error = %err, "failed to write metrics");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{Metrics, has_request_line, request_target, respond};

    #[test]
    fn request_line_gives_method_and_path() {
        let get = request_target(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(get, Some(("GET", "/metrics")));
        let query = request_target(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert_eq!(query, Some(("GET", "/metrics")));
        assert_eq!(request_target(b"POST / HTTP/1.1\r\n"), Some(("POST", "/")));
    }

    #[test]
    fn absolute_target_and_blank_lines_accepted() {
        let absolute = request_target(b"GET http://127.0.0.1:9464/metrics HTTP/1.1\r\n");
        assert_eq!(absolute, Some(("GET", "/metrics")));
        let blank = request_target(b"\r\nGET /metrics HTTP/1.1\r\n");
        assert_eq!(blank, Some(("GET", "/metrics")));
        assert!(!has_request_line(b"GET /met"));
        assert!(!has_request_line(b"\r\n"));
        assert!(has_request_line(b"GET /metrics HTTP/1.1\r\n"));
    }

    #[test]
    fn head_and_other_methods_answered() {
        let metrics = Metrics::default();
        let head = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &metrics);
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        let get = respond(b"GET /metrics HTTP/1.1\r\n\r\n", &metrics);
        assert!(get.contains("edr_collector_"), "{get}");
        let post = respond(b"POST /metrics HTTP/1.1\r\n\r\n", &metrics);
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
    }

    #[test]
    fn malformed_request_line_is_rejected() {
        assert_eq!(request_target(b"\x16\x03\x01\x02\x00"), None);
        assert_eq!(request_target(b"GET /metrics\r\n"), None);
        assert_eq!(request_target(b"GET /metrics FTP/1\r\n"), None);
        assert_eq!(request_target(&[0xff, 0xfe, b' ', b'/']), None);
    }
}
