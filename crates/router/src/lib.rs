//! `ringkv-router`: the ambassador in front of a ringkv cluster.
//!
//! It serves the same `ringkv.v1.KV` API as a node, so an application talks to it as if the
//! cluster were one big node: locally as a sidecar (listen on 127.0.0.1 next to the app) or as
//! a shared deployment. Behind that API the routing core ([`ringkv_routing::Cluster`]) finds
//! each key's shard and leader, spreads stale reads by the configured policy, retries safely
//! (every write carries a session), ejects failing nodes and merges cross-shard scans. It also
//! serves `ringkv.v1.Events` and `ringkv.v1.Watch` (see [`events_service`]), built from the
//! nodes' shard-level `Streams` service.
//!
//! Traffic splitting: with a second cluster configured, a fixed percentage of keys (chosen by
//! key hash, so a key always goes to the same cluster) is sent there — for canaries and
//! migrations, like nginx's `weight=9` with `ip_hash`, but sticky per key rather than per
//! client. Multi-gets and scans merge both clusters (a scan shows each key from the cluster
//! that owns it); a batch is atomic, so one whose keys the split sends to both clusters is
//! refused with `INVALID_ARGUMENT` rather than divided.
//!
//! Authorization: with an access policy, every call is checked here before it is routed
//! (see `ringkv_auth`), and the routed calls carry the caller's credential, so the nodes
//! check the caller again rather than trusting the router.

pub mod admission;
pub mod deadline;
pub mod events_service;
pub mod metrics;
pub mod ready;
pub mod service;

pub use ready::Ready;
use ringkv_routing::{Cluster, RoutingConfig, RoutingError};
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

/// A second cluster that receives `percent` of the keys.
#[derive(Debug, Clone)]
pub struct Split {
    pub routing: RoutingConfig,
    pub percent: u32,
}

#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub primary: RoutingConfig,
    pub split: Option<Split>,
    /// Requests routed at once; more are refused (see [`admission`]).
    pub inflight_requests_max: u32,
    /// Each caller's (IP address's) rate limit; none by default.
    pub rate_limit: Option<admission::RateLimit>,
    /// Serve clients over TLS with this certificate (client certificates optional, verified
    /// when presented); `None`: plaintext. Dialing nodes is the routing configs' `dialer`.
    pub tls: Option<ringkv_tls::Tls>,
    /// The access policy (see `ringkv_auth`): callers need a credential it names and a grant
    /// for each call, checked here before anything is routed (and again by the nodes, to
    /// which the caller's credential is forwarded). Needs `tls`. `None`: not checked here.
    pub auth_policy: Option<std::path::PathBuf>,
    /// How often the policy file is re-read.
    pub auth_reload_interval: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot reach the cluster: {0}")]
    Cluster(#[from] RoutingError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("split percent must be between 0 and 100, got {0}")]
    SplitPercent(u32),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("TLS: {0}")]
    Tls(#[from] ringkv_tls::TlsError),
    #[error("authorization: {0}")]
    Auth(#[from] ringkv_auth::AuthError),
}

/// A running router.
#[derive(Debug)]
pub struct RouterHandle {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    metrics_task: Option<JoinHandle<()>>,
    pruner: Option<JoinHandle<()>>,
    auth_watcher: Option<JoinHandle<()>>,
    health_task: JoinHandle<()>,
    ready: Ready,
}

impl RouterHandle {
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.metrics_task.take() {
            t.abort();
        }
        if let Some(t) = self.pruner.take() {
            t.abort();
        }
        if let Some(t) = self.auth_watcher.take() {
            t.abort();
        }
        self.health_task.abort();
        match tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.server).await {
            Ok(_) => {}
            Err(_) => self.server.abort(),
        }
    }

    /// Whether the router has found its cluster(s) (what `/readyz` says).
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    pub async fn wait(&mut self) -> Result<(), String> {
        match (&mut self.server).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Starts serving at once and finds the cluster(s) in the background: a router started
/// beside a cluster that is not up yet keeps looking (backing off) instead of exiting, and is
/// not ready (`/readyz`, gRPC health) until it has every cluster's shard map. Requests before
/// that fail with UNAVAILABLE.
pub async fn start(cfg: RouterConfig) -> Result<RouterHandle, RouterError> {
    let primary = Cluster::open(cfg.primary.clone())?;
    let secondary = match &cfg.split {
        Some(s) if s.percent > 100 => return Err(RouterError::SplitPercent(s.percent)),
        Some(s) => Some((Cluster::open(s.routing.clone())?, s.percent)),
        None => None,
    };
    let ready =
        Ready { primary: primary.clone(), secondary: secondary.as_ref().map(|(c, _)| c.clone()) };
    let metrics = metrics::RouterMetrics::new(&primary, secondary.as_ref().map(|(c, _)| c));
    if cfg.tls.as_ref().is_some_and(|t| !t.has_identity()) {
        return Err(RouterError::Tls(ringkv_tls::TlsError::NoIdentity));
    }
    let auth = match &cfg.auth_policy {
        Some(path) => ringkv_auth::Auth::load(path, cfg.tls.clone(), ringkv_auth::Side::Router)?,
        None => ringkv_auth::Auth::disabled(),
    };
    let auth_watcher = auth.watch(cfg.auth_reload_interval);
    if !auth.is_enabled() && cfg.primary.token.is_some() {
        tracing::warn!(
            "this router has a token but no access policy: callers that send no token act as \
             the router at the nodes (give the router the policy too; see docs/security.md)"
        );
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RouterError::Bind { addr: cfg.listen, source })?;
    let addr =
        listener.local_addr().map_err(|source| RouterError::Bind { addr: cfg.listen, source })?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let health_task = ready.clone().spawn_reporter(health_reporter).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ringkv_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RouterError::Reflection(e.to_string()))?;
    let kv = service::RouterKv::new(primary.clone(), secondary, metrics.clone());
    let events = events_service::RouterEvents::new(primary.clone(), metrics.clone());
    let admin = service::RouterAdmin::new(primary);
    let admission = admission::RouterAdmission::new(cfg.inflight_requests_max, cfg.rate_limit)
        .with_auth(auth.clone());
    metrics.with_registry(|r| {
        admission.register(r);
        ringkv_tls::register_metrics(r.sub_registry_with_prefix("ringkv_router"), cfg.tls.as_ref());
        auth.register(r.sub_registry_with_prefix("ringkv_router"));
    });
    let pruner = admission.spawn_pruner();
    let (tx, rx) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Outermost, so a request refused by admission is still logged in its trace.
        .layer(ringkv_trace::TraceLayer)
        .layer(admission::AdmissionLayer(admission))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(InterceptedService::new(
            ringkv_proto::v1::kv_server::KvServer::new(kv).max_decoding_message_size(16 << 20),
            auth.interceptor(),
        ))
        .add_service(InterceptedService::new(
            ringkv_proto::v1::events_server::EventsServer::new(events.clone())
                .max_decoding_message_size(16 << 20),
            auth.interceptor(),
        ))
        .add_service(ringkv_proto::v1::watch_server::WatchServer::with_interceptor(
            events,
            auth.interceptor(),
        ))
        .add_service(ringkv_proto::v1::admin_server::AdminServer::with_interceptor(
            admin,
            auth.interceptor(),
        ));
    // The builder's `tcp_nodelay` applies only to listeners tonic binds itself; ours must
    // say it again, or small responses wait for a delayed ACK (a 40 ms stall per request).
    let tcp = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stop = async {
        let _ = rx.await;
    };
    let server = match cfg.tls {
        None => tokio::spawn(router.serve_with_incoming_shutdown(tcp, stop)),
        Some(tls) => {
            let tls_incoming = ringkv_tls::accept(tls, ringkv_tls::ClientAuth::Optional, tcp);
            tokio::spawn(router.serve_with_incoming_shutdown(tls_incoming, stop))
        }
    };
    let (metrics_addr, metrics_task) = match cfg.metrics_listen {
        Some(a) => {
            let (bound, task) = metrics
                .serve(a, ready.clone())
                .await
                .map_err(|source| RouterError::Bind { addr: a, source })?;
            (Some(bound), Some(task))
        }
        None => (None, None),
    };
    tracing::info!(%addr, "router serving");
    Ok(RouterHandle {
        addr,
        metrics_addr,
        shutdown: Some(tx),
        server,
        metrics_task,
        pruner,
        auth_watcher,
        health_task,
        ready,
    })
}
