//! The server side: TCP connections in, TLS connections out, plaintext answered clearly.
//!
//! [`incoming`] wraps a listener's stream of accepted TCP connections. Each handshake runs in
//! a task of its own (its crypto on any worker thread), bounded in number per listener
//! ([`HANDSHAKES_MAX`]: past it a new connection is closed at once, so accepting never
//! stalls behind slow clients) and in time (the first byte within [`FIRST_BYTE_TIMEOUT`],
//! the whole handshake within [`HANDSHAKE_TIMEOUT`]). The stream is pulled by the gRPC
//! server, so it lives as long as the server: stopping the server accepts nothing more, and
//! handshakes in flight end by their timeout.
//!
//! A connection whose first byte is not a TLS handshake record is plaintext. It gets one
//! HTTP/2 exchange in which every request is answered `UNAUTHENTICATED` with
//! [`PLAINTEXT_REFUSED`], then it is closed. Those answers are bounded too
//! ([`PLAINTEXT_ANSWERS_MAX`] at once, each for at most [`PLAINTEXT_ANSWER_TIMEOUT`]).

use crate::Tls;
use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Handshakes in progress at once per listener; a connection past it is closed at once.
pub const HANDSHAKES_MAX: usize = 128;
/// A client that has not sent its first byte by then is dropped (a silent connection must
/// not hold a handshake slot for long).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one log line about refused handshakes per this interval per process (the
/// counter `ringkv_tls_handshake_failures_total` has them all): a scanner must not flood
/// the logs.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Plaintext connections being answered at once per process; more are closed at once.
pub const PLAINTEXT_ANSWERS_MAX: usize = 64;
pub const PLAINTEXT_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The first byte of every TLS connection: a handshake record (RFC 8446, 5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plaintext client is told.
pub const PLAINTEXT_REFUSED: &str = "this port requires TLS: connect with TLS and the cluster's \
     CA bundle (ringkv --tls-ca, or --tls-dir), see docs/security.md";

static PLAINTEXT_ANSWERS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(PLAINTEXT_ANSWERS_MAX)));

/// Whether a server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Verified when presented; a client without one is served (client ports).
    Optional,
    /// Only clients presenting a certificate of the CA are served (the peer port).
    Required,
}

/// TLS connections from `tcp`'s accepted connections.
pub fn incoming<S>(
    tls: Tls,
    auth: ClientAuth,
    tcp: S,
) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    tcp.map(move |accepted| {
        let tls = tls.clone();
        let slot = slots.clone().try_acquire_owned();
        async move {
            let tcp = match accepted {
                Ok(tcp) => tcp,
                Err(e) => return Some(Err(e)),
            };
            let Ok(slot) = slot else {
                tracing::debug!(peer = ?tcp.peer_addr().ok(), "too many TLS handshakes at once; connection closed");
                return None;
            };
            let shake = tokio::spawn(async move {
                let _slot = slot;
                handshake(&tls, auth, tcp).await
            });
            shake.await.ok().flatten().map(Ok)
        }
    })
    // Beyond the slots: a connection refused for want of a slot resolves at once.
    .buffer_unordered(HANDSHAKES_MAX * 2)
    .filter_map(futures::future::ready)
}

async fn handshake(tls: &Tls, auth: ClientAuth, tcp: TcpStream) -> Option<TlsStream<TcpStream>> {
    let peer = tcp.peer_addr().ok();
    let shake = async {
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)).await;
        if peeked.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no first byte"))?? == 0 {
            return Ok(None);
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            answer_plaintext(tcp);
            return Ok(None);
        }
        let material = tls.material();
        let config = match auth {
            ClientAuth::Optional => material.server_optional.clone(),
            ClientAuth::Required => material.server_required.clone(),
        };
        let config = config.ok_or_else(|| io::Error::other(crate::TlsError::NoIdentity))?;
        TlsAcceptor::from(config).accept(tcp).await.map(Some)
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, shake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => None,
        Ok(Err(e)) => {
            tls.handshake_failures().inc();
            // A peer of another CA, an expired certificate, a scanner: worth a line, since a
            // peer that cannot connect is otherwise silent on this side (one per interval).
            if tls.may_log_refusal(REFUSAL_LOG_INTERVAL) {
                tracing::warn!(peer = ?peer, error = %e, "TLS handshake refused (more are counted in ringkv_tls_handshake_failures_total)");
            }
            None
        }
        Err(_) => {
            tracing::debug!(peer = ?peer, "TLS handshake timed out");
            None
        }
    }
}

/// Answers every request on a plaintext connection with `UNAUTHENTICATED`, in the background.
fn answer_plaintext(tcp: TcpStream) {
    let Ok(permit) = PLAINTEXT_ANSWERS.clone().try_acquire_owned() else { return };
    tracing::info!(peer = ?tcp.peer_addr().ok(), "plaintext connection to a TLS port refused");
    tokio::spawn(async move {
        let _permit = permit;
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(
                tonic::Status::unauthenticated(PLAINTEXT_REFUSED).into_http::<tonic::body::Body>(),
            )
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), service);
        let _ = tokio::time::timeout(PLAINTEXT_ANSWER_TIMEOUT, conn).await;
    });
}
