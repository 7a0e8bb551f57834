//! Admission of new connections: caps on open connections and on TLS handshakes in flight,
//! and the handshake timeout.
//!
//! Each accepted TCP connection first takes a connection slot and then a handshake slot. A
//! connection that finds either kind of slot taken is closed at once, without a TLS alert.
//! Queueing it instead would let a flood of silent clients keep new sensors waiting in the
//! kernel backlog. A sensor whose connection is closed this way sees `TransportError::Connect` and
//! retries with backoff. The handshake slot is released when the handshake ends, succeeds,
//! fails or times out; the connection slot travels with the connection in [`Admitted`] and
//! is released when the HTTP/2 server drops it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::log_limit::LogLimit;
use crate::metrics::Metrics;

/// Limits on connections that have not yet become gRPC connections, and on their number.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdmissionLimits {
    /// Connections open at once, handshaking or established.
    pub(crate) max_connections: usize,
    /// TLS handshakes in progress at once.
    pub(crate) max_pending_handshakes: usize,
    /// Time a client has from the TCP accept to the end of the TLS handshake.
    pub(crate) handshake_timeout: Duration,
}

/// Reason a new connection was closed before TLS was established.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdmissionError {
    /// Every connection slot is taken.
    #[error("connection limit of {max} reached: raise --max-connections if this is expected load")]
    ConnectionLimit { max: usize },
    /// Every handshake slot is taken.
    #[error(
        "limit of {max} TLS handshakes in progress reached: raise --max-pending-handshakes if sensors reconnect in bursts"
    )]
    HandshakeLimit { max: usize },
    /// The client did not finish the handshake in time.
    #[error("TLS handshake timed out after {} ms", timeout.as_millis())]
    HandshakeTimeout { timeout: Duration },
    /// The handshake failed, for example on an untrusted or revoked client certificate.
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
}

/// The slots that admission hands out.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    limits: AdmissionLimits,
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Admission {
    pub(crate) fn new(limits: AdmissionLimits, metrics: Arc<Metrics>) -> Self {
        // Semaphore::new panics above MAX_PERMITS, a count no machine reaches in connections.
        let max_connections = limits.max_connections.min(Semaphore::MAX_PERMITS);
        let max_handshakes = limits.max_pending_handshakes.min(Semaphore::MAX_PERMITS);
        Self {
            limits,
            connections: Arc::new(Semaphore::new(max_connections)),
            handshakes: Arc::new(Semaphore::new(max_handshakes)),
            metrics,
        }
    }

    /// Takes both slots for a new TCP connection, or returns why it must be closed. Called in
    /// the accept loop, so that a rejected connection costs no task.
    pub(crate) fn admit(&self) -> Result<Slots, AdmissionError> {
        let Ok(connection) = Arc::clone(&self.connections).try_acquire_owned() else {
            self.metrics
                .connections_rejected
                .fetch_add(1, Ordering::Relaxed);
            return Err(AdmissionError::ConnectionLimit {
                max: self.limits.max_connections,
            });
        };
        let Ok(handshake) = Arc::clone(&self.handshakes).try_acquire_owned() else {
            self.metrics
                .handshakes_rejected
                .fetch_add(1, Ordering::Relaxed);
            return Err(AdmissionError::HandshakeLimit {
                max: self.limits.max_pending_handshakes,
            });
        };
        Ok(Slots {
            connection,
            handshake,
        })
    }

    /// Runs the TLS handshake within the timeout; the handshake slot is released on return.
    pub(crate) async fn handshake(
        &self,
        acceptor: &TlsAcceptor,
        tcp: TcpStream,
        slots: Slots,
    ) -> Result<Admitted<TlsStream<TcpStream>>, AdmissionError> {
        let Slots {
            connection,
            handshake,
        } = slots;
        let timeout = self.limits.handshake_timeout;
        let result = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
        drop(handshake);
        match result {
            Ok(Ok(tls)) => Ok(Admitted {
                inner: tls,
                _connection: connection,
            }),
            Ok(Err(err)) => Err(AdmissionError::Handshake(err)),
            Err(_) => {
                self.metrics
                    .handshakes_timed_out
                    .fetch_add(1, Ordering::Relaxed);
                Err(AdmissionError::HandshakeTimeout { timeout })
            }
        }
    }
}

/// A connection slot and a handshake slot, taken together before the handshake starts.
#[derive(Debug)]
pub(crate) struct Slots {
    connection: OwnedSemaphorePermit,
    handshake: OwnedSemaphorePermit,
}

/// A connection that keeps its connection slot until it is dropped.
#[derive(Debug)]
pub(crate) struct Admitted<S> {
    inner: S,
    _connection: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Passes the TLS connection info through, so `Request::peer_certs` returns the client certificate.
impl<S: Connected> Connected for Admitted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Logs rejected connections, or failed handshakes, at most once per
/// [`LOG_INTERVAL`](crate::log_limit::LOG_INTERVAL), with the number suppressed since the last
/// line.
#[derive(Debug, Default)]
pub(crate) struct RejectionLog(LogLimit);

impl RejectionLog {
    pub(crate) fn record(&mut self, peer: SocketAddr, err: &AdmissionError) {
        if let Some(suppressed) = self.allow() {
            tracing::warn!(%peer, error = %err, suppressed, "closed a new connection");
        }
    }

    /// Returns the number of lines suppressed since the last one when a line may be logged
    /// now, or `None` when this one has to be suppressed.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        self.0.allow()
    }
}
