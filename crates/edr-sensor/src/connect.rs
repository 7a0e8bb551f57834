//! gRPC channels to the Collector over rustls, and readable descriptions of TLS failures.
//!
//! tonic's built-in TLS cannot take a custom certificate verifier, so the channel gets a
//! connector that opens TCP and runs the rustls handshake itself. The endpoint URI handed to
//! tonic therefore uses the `http` scheme; the bytes on the wire are TLS.
//!
//! Under TLS 1.3 the server judges the client certificate after the client considers the
//! handshake complete, so a rejected certificate shows up as an alert on the first read. The
//! connector therefore reads the server's first bytes (the HTTP/2 server preface, which the
//! server sends unprompted) before handing the stream to tonic. A rejection then fails
//! `connect` with the alert instead of surfacing later as "connection closed".

use std::error::Error as StdError;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// Time allowed for TCP connect plus the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one unary RPC.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of HTTP/2 pings on an open connection, so that a peer that vanished without
/// closing it (a dropped NAT entry, a powered-off host) is found without waiting for TCP.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Time a ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors from parsing a Collector URL or connecting to it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not of the form `https://HOST:PORT`.
    #[error("invalid Collector URL \"{url}\": {reason}; write it as https://HOST:PORT")]
    InvalidUrl { url: String, reason: String },
    /// TCP connect, the TLS handshake or the HTTP/2 handshake failed.
    #[error("failed to connect to the Collector at {url}: {reason}")]
    Connect { url: String, reason: String },
}

/// A parsed `https://HOST:PORT` Collector address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorUrl {
    url: String,
    host: String,
    port: u16,
}

impl CollectorUrl {
    pub fn parse(url: &str) -> Result<Self, ConnectError> {
        let invalid = |reason: &str| ConnectError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|_| invalid("it does not parse as a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(invalid("the scheme must be https"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("the host is missing"))?;
        let port = authority
            .port_u16()
            .ok_or_else(|| invalid("the port is missing"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("a path or query is not allowed"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        ServerName::try_from(host.clone()).map_err(|_| invalid("the host is not a valid name"))?;
        Ok(Self {
            url: format!("https://{authority}"),
            host,
            port,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }
}

impl std::fmt::Display for CollectorUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// Opens a gRPC channel to `url` whose connections use `tls`.
pub async fn connect(url: &CollectorUrl, tls: ClientConfig) -> Result<Channel, ConnectError> {
    let server_name =
        ServerName::try_from(url.host.clone()).map_err(|_| ConnectError::InvalidUrl {
            url: url.url.clone(),
            reason: "the host is not a valid name".into(),
        })?;
    let connector = TlsConnector::from(Arc::new(tls));
    let host = url.host.clone();
    let port = url.port;

    // Bracket IPv6 literals so the placeholder URI parses; the connector ignores it.
    let uri_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let endpoint = Endpoint::from_shared(format!("http://{uri_host}:{port}"))
        .map_err(|err| ConnectError::InvalidUrl {
            url: url.url.clone(),
            reason: err.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let service = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let host = host.clone();
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            // Acks, heartbeats and command results are small writes; without this, Nagle's
            // algorithm can hold one back until the previous segment is acknowledged.
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            let stream = Prefetched::first_read(tls).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(service)
        .await
        .map_err(|err| ConnectError::Connect {
            url: url.url.clone(),
            reason: describe_error(&err),
        })
}

/// A stream whose first bytes have already been read into `buf`.
struct Prefetched<S> {
    buf: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> Prefetched<S> {
    /// Reads the first bytes the server sends; fails with the TLS alert if it rejected us.
    async fn first_read(mut inner: S) -> io::Result<Self> {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(CONNECT_TIMEOUT, inner.read(&mut buf))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the Collector sent nothing after the TLS handshake",
                )
            })??;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the Collector closed the connection right after the TLS handshake",
            ));
        }
        buf.truncate(n);
        Ok(Self { buf, pos: 0, inner })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefetched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.buf.len() {
            let n = out.remaining().min(self.buf.len() - self.pos);
            let start = self.pos;
            out.put_slice(&self.buf[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefetched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Finds the rustls error in an error's source chain, if there is one.
pub fn find_tls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = err.source();
    }
    None
}

/// Start of the message tonic gives a status it made from an HTTP response without a
/// `grpc-status` header, followed by the HTTP status code.
const HTTP_STATUS_MESSAGE: &str = "grpc-status header missing, mapped from HTTP status code ";

/// End of the message tonic gives a status it made from a response body that is not gRPC,
/// followed by the HTTP status, such as `401 Unauthorized`.
const RESPONSE_STATUS_MESSAGE: &str = "while receiving response with status: ";

/// Returns the HTTP status code of a response that ended an RPC without a gRPC status, or
/// with a body that is not gRPC and a status other than 200. The Collector, a tonic server,
/// sends neither, so such a response comes from something in front of it, such as a proxy or
/// load balancer, and its code is not the Collector's decision. tonic maps 401, 403 and 404 to
/// UNAUTHENTICATED, PERMISSION_DENIED and UNIMPLEMENTED, and an error page to INTERNAL,
/// which would otherwise read as a rejection by the Collector.
pub fn http_status_without_grpc(status: &tonic::Status) -> Option<u16> {
    let message = status.message();
    if let Some(code) = message.strip_prefix(HTTP_STATUS_MESSAGE) {
        return code.parse().ok();
    }
    let (_, rest) = message.rsplit_once(RESPONSE_STATUS_MESSAGE)?;
    let code: u16 = rest.split_whitespace().next()?.parse().ok()?;
    (code != 200).then_some(code)
}

/// Decodes no message, so that a response body ends the stream at once.
#[cfg(test)]
struct NoMessages;

#[cfg(test)]
impl tonic::codec::Decoder for NoMessages {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, _: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        Ok(None)
    }
}

/// Returns the status tonic gives an RPC whose response has HTTP status `code`, the body
/// `body` and no `grpc-status`, as a proxy in front of the Collector may send.
#[cfg(test)]
pub(crate) async fn status_of_http_response(code: u16, body: &str) -> tonic::Status {
    let mut stream = tonic::codec::Streaming::new_response(
        NoMessages,
        tonic::body::Body::new(body.to_string()),
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK),
        None,
        None,
    );
    match stream.message().await {
        Err(status) => status,
        Ok(message) => panic!("HTTP {code} gave {message:?}, not a status"),
    }
}

/// Describes a connection failure in one line, naming TLS causes where there is one.
pub fn describe_error(err: &(dyn StdError + 'static)) -> String {
    if let Some(tls) = find_tls_error(err) {
        return describe_tls_error(tls);
    }
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = inner.source();
    }
    parts.join(": ")
}

fn describe_tls_error(err: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    match err {
        Error::InvalidCertificate(CertificateError::Other(other)) => {
            if let Some(pin) = other.0.downcast_ref::<edr_pki::tls::PinMismatch>() {
                return pin.to_string();
            }
            format!("the Collector's certificate is invalid ({err})")
        }
        Error::InvalidCertificate(cause) => format!(
            "the Collector's certificate is invalid ({cause:?}): check the Collector address and its CA"
        ),
        Error::AlertReceived(AlertDescription::CertificateRevoked) => {
            "the Collector rejected this sensor's certificate because it has been revoked: enroll again with a new token".into()
        }
        Error::AlertReceived(AlertDescription::CertificateExpired) => {
            "the Collector rejected this sensor's certificate because it has expired: enroll again with a new token".into()
        }
        Error::AlertReceived(
            alert @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::DecryptError),
        ) => format!(
            "the Collector rejected this sensor's certificate (TLS alert {alert:?}): the certificate was not issued by this Collector's CA; enroll with a token from this Collector"
        ),
        other => format!("TLS error: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_requires_https_host_and_port() {
        let url = CollectorUrl::parse("https://collector.example:7443").unwrap();
        assert_eq!(url.host(), "collector.example");
        assert_eq!(url.port(), 7443);
        let v6 = CollectorUrl::parse("https://[::1]:7443/").unwrap();
        assert_eq!(v6.host(), "::1");
        for bad in [
            "http://collector:7443",
            "https://collector",
            "collector:7443",
            "https://collector:7443/x",
        ] {
            let err = CollectorUrl::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("https://HOST:PORT"),
                "{bad}: {err}"
            );
        }
    }
}
