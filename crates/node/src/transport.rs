//! How a node's servers accept connections and its clients dial: plaintext, or TLS.
//!
//! With TLS configured (see `ringkv_tls`), every gRPC port of the node speaks TLS only:
//! - the client port serves with client certificates optional (applications and the CLI
//!   need only the CA), verified when presented (the router presents its own);
//! - the peer port (`raft_port_offset`) requires a certificate of the nodes' CA (the peer CA
//!   when one is configured, else the cluster's CA), so the handshake itself shuts out
//!   everything that is not a node of this cluster;
//! - the peer-only services (Raft, membership) also check each request's client certificate
//!   is a node's ([`Transport::peer_check`]): that is what protects them when a cluster
//!   serves everything on one port, where client certificates are optional;
//! - a node dials other nodes only, so it trusts servers of the nodes' CA only.
//!
//! The HTTP port (metrics, `/livez`, `/readyz`) stays plaintext: it is read by probes and
//! Prometheus, carries no data and accepts no writes.

use crate::error::NodeError;
use ringkv_tls::{ClientAuth, Dialer, Tls};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::Router;

#[derive(Debug, Clone, Default)]
pub struct Transport {
    tls: Option<Tls>,
    dialer: Dialer,
}

impl Transport {
    pub fn new(tls: Option<Tls>) -> Self {
        Transport { dialer: Dialer::to_peers(tls.clone()), tls }
    }

    /// Loads the node's certificates (when configured) and keeps them in step with the files.
    pub fn load(
        paths: Option<&ringkv_tls::TlsPaths>,
        reload_interval: Duration,
    ) -> Result<(Self, Option<tokio::task::JoinHandle<()>>), ringkv_tls::TlsError> {
        let tls = paths.cloned().map(Tls::load).transpose()?;
        let watcher = tls.as_ref().map(|t| t.watch(reload_interval));
        Ok((Transport::new(tls), watcher))
    }

    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Serves `router` (with whatever layers `L` its server has) on `listener` until
    /// `shutdown`.
    pub fn serve<L>(
        &self,
        router: Router<L>,
        listener: Arc<TcpListener>,
        auth: ClientAuth,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static
    where
        L: tower_layer::Layer<Routes> + Send + 'static,
        L::Service: tower_service::Service<
                ::http::Request<tonic::body::Body>,
                Response = ::http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        <L::Service as tower_service::Service<::http::Request<tonic::body::Body>>>::Future:
            Send + 'static,
    {
        let tls = self.tls.clone();
        async move {
            let tcp = crate::incoming::incoming(listener);
            match tls {
                None => router.serve_with_incoming_shutdown(tcp, shutdown).await,
                Some(tls) => {
                    let tls_incoming = ringkv_tls::accept(tls, auth, tcp);
                    router.serve_with_incoming_shutdown(tls_incoming, shutdown).await
                }
            }
        }
    }

    /// The interceptor of a service only nodes may call: with TLS, a request without a
    /// verified client certificate is refused `UNAUTHENTICATED`.
    pub fn peer_check(
        &self,
        service: &'static str,
    ) -> impl tonic::service::Interceptor + Clone + Send + Sync + 'static {
        let tls = self.tls.clone();
        move |req: tonic::Request<()>| {
            if let Some(tls) = &tls
                && !ringkv_tls::from_peer(tls, &req)
            {
                return Err(NodeError::Unauthenticated {
                    service,
                    needs: "present a node certificate of the cluster (mutual TLS; of the peer CA when the cluster has one)",
                }
                .to_status());
            }
            Ok(req)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn peer_services_need_a_client_certificate_only_when_tls_is_on() {
        let mut plaintext = Transport::new(None).peer_check("Raft");
        assert!(plaintext.call(tonic::Request::new(())).is_ok());

        let dir = tempfile::TempDir::new().unwrap();
        let ca = ringkv_tls::DevCa::generate("test").unwrap();
        let paths = ca.write_identity(dir.path(), &["127.0.0.1"], ringkv_tls::Usage::Peer).unwrap();
        let tls = Transport::new(Some(Tls::load(paths).unwrap()));
        // A request that came without a verified certificate (none in its connection info).
        let refused = tls.peer_check("Raft").call(tonic::Request::new(())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().contains("Raft service is only for this cluster's nodes"));
    }
}
