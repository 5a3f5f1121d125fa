//! The client side: gRPC channels that speak TLS when the process has a TLS configuration.
//!
//! Every place that dials another ringkv process builds its `Endpoint` as before (timeouts,
//! keep-alives) and asks a [`Dialer`] for the channel. A plaintext dialer is tonic's own
//! connector; a TLS one connects TCP itself, then runs the handshake with the *current*
//! configuration, so a reconnect after a rotation presents the new certificate. The name
//! checked in the server's certificate is the host dialed (a DNS name or an IP).

use crate::Tls;
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::io;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How a process dials its peers: plaintext, or TLS with its configuration.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    tls: Option<Tls>,
    /// Servers must be nodes (certificates of the nodes' CA): how nodes dial each other.
    peers_only: bool,
}

impl Dialer {
    /// Dials routers and nodes, trusting every CA of `tls`.
    pub fn new(tls: Option<Tls>) -> Self {
        Dialer { tls, peers_only: false }
    }

    /// Dials nodes only: a server must hold a certificate of the nodes' CA (the peer CA when
    /// one is configured). What a node uses for every call to another node.
    pub fn to_peers(tls: Option<Tls>) -> Self {
        Dialer { tls, peers_only: true }
    }

    pub fn plaintext() -> Self {
        Dialer { tls: None, peers_only: false }
    }

    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The endpoint for `addr` (`host:port`), to configure before [`Dialer::lazy`] or
    /// [`Dialer::connect`].
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        Endpoint::from_shared(format!("http://{addr}"))
    }

    /// A channel that connects on first use and reconnects by itself.
    pub fn lazy(&self, endpoint: &Endpoint) -> Channel {
        match &self.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(self.connector(tls)),
        }
    }

    /// A channel connected now.
    pub async fn connect(&self, endpoint: &Endpoint) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            None => endpoint.connect().await,
            Some(tls) => endpoint.connect_with_connector(self.connector(tls)).await,
        }
    }
}

impl Dialer {
    fn connector(&self, tls: &Tls) -> Connector {
        Connector { tls: tls.clone(), peers_only: self.peers_only }
    }
}

#[derive(Clone)]
struct Connector {
    tls: Tls,
    peers_only: bool,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Response>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let material = self.tls.material();
        let config = if self.peers_only {
            material.client_to_peers.clone()
        } else {
            material.client.clone()
        };
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
            let host = host.to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{host} is not a TLS name: {e}"),
                )
            })?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            // Small responses must not wait for a delayed ACK.
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(config).connect(name, tcp).await.map_err(|e| {
                let hint =
                    if not_tls(&e) { " (the server does not seem to speak TLS)" } else { "" };
                io::Error::new(
                    e.kind(),
                    format!("TLS handshake with {host}:{port} failed: {e}{hint}"),
                )
            })?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Whether a handshake failed because the other side answered with something that is not
/// TLS (a plaintext HTTP/2 server sends its SETTINGS frame).
fn not_tls(e: &io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidMessage(_))
    )
}
