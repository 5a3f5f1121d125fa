//! TLS for every ringkv connection: node to node, router to node, client to router or node.
//!
//! **What is protected, and how.** A cluster has a certificate authority (its CA bundle, a
//! PEM file that may hold several CAs while one is being rotated out). Every node holds a
//! certificate of that CA naming the host its peers dial (`ringkv-0.ringkv`, an IP), usable
//! both to serve and to dial; the router holds one too. Then:
//! - node ↔ node is mutual TLS: a node only accepts Raft and membership traffic from a peer
//!   whose certificate chains to the CA, and only dials peers whose certificate does, for the
//!   name it dialed;
//! - router → node is mutual TLS the same way;
//! - client → router and client → node is server TLS: the client checks the server's
//!   certificate against the CA; a client certificate is optional (accepted and verified
//!   when presented).
//!
//! **Rotation without restart.** cert-manager (or an operator) replaces the files in place.
//! [`Tls`] holds the configuration built from the files; [`Tls::watch`] re-reads them every
//! few seconds and, when their bytes changed and the new set is valid (a certificate with
//! its key, a CA that parses), swaps it in. New connections use the new certificates at once;
//! open ones keep the session they negotiated (TLS does not re-check a certificate once the
//! handshake is done). A set that does not load (a key written before its certificate) is
//! reported and retried; the previous one stays in use.
//!
//! **Plaintext on a TLS port** is not silently dropped: the acceptor looks at the first byte
//! of each connection, and one that does not start a TLS handshake gets a gRPC answer,
//! `UNAUTHENTICATED` "this port requires TLS", so a misconfigured client says what is wrong
//! instead of "connection reset" ([`accept`]). The other way round, a TLS dial to a plaintext
//! port fails with an error that says the peer does not seem to speak TLS ([`Dialer`]).
//!
//! Only rustls with the ring provider is used: no OpenSSL, no system trust store (a cluster
//! trusts its own CA, never the web's).

mod accept;
mod dev;
mod dial;
mod error;
mod material;
mod paths;
mod reload;

pub use accept::{
    ClientAuth, FIRST_BYTE_TIMEOUT, HANDSHAKE_TIMEOUT, HANDSHAKES_MAX, PLAINTEXT_REFUSED,
    incoming as accept,
};
pub use dev::{DevCa, Usage};
pub use dial::Dialer;
pub use error::TlsError;
pub use paths::TlsPaths;
pub use reload::Tls;

/// Registers a process's TLS metrics under `registry` (prefixed by the caller:
/// `ringkv_tls_*` on nodes, `ringkv_router_tls_*` on routers): refused handshakes and when the
/// certificate in use expires. Registered without TLS too (at 0), so dashboards and alerts
/// find them on every process.
pub fn register_metrics(registry: &mut prometheus_client::registry::Registry, tls: Option<&Tls>) {
    registry.register(
        "tls_handshake_failures",
        "TLS handshakes refused or failed on this process's ports (another CA, no certificate where one is required; plaintext excluded)",
        tls.map(Tls::handshake_failures).unwrap_or_default(),
    );
    registry.register(
        "tls_certificate_not_after_seconds",
        "When this process's TLS certificate expires (Unix seconds; 0 without TLS); follows renewals",
        tls.map(Tls::certificate_not_after).unwrap_or_default(),
    );
}

/// Whether a verified client certificate came with `req` (mutual TLS).
pub fn has_client_cert<T>(req: &tonic::Request<T>) -> bool {
    req.peer_certs().is_some_and(|certs| !certs.is_empty())
}

/// Whether `req` came with a node's certificate (see [`Tls::is_peer`]).
pub fn from_peer<T>(tls: &Tls, req: &tonic::Request<T>) -> bool {
    req.peer_certs().is_some_and(|certs| tls.is_peer(&certs))
}
