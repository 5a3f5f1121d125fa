//! The router's `/metrics`: requests and latency by method and code, plus the routing core's
//! retries, redirects, ejections, and per-shard and per-node counts.

use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use ringkv_routing::Cluster;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    pub method: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: &'static str,
}

#[derive(Clone, Debug)]
pub struct RouterMetrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<MethodCode, Counter>,
    latency: Family<Method, Histogram>,
}

impl RouterMetrics {
    pub fn new(primary: &Cluster, secondary: Option<&Cluster>) -> Self {
        let m = RouterMetrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
            }),
        };
        {
            let mut reg = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            let r = reg.sub_registry_with_prefix("ringkv_router");
            r.register("requests", "Requests by method and gRPC code", m.requests.clone());
            r.register("request_duration_seconds", "Request latency by method", m.latency.clone());
            primary.stats().register(&mut reg);
            if let Some(s) = secondary {
                s.stats()
                    .register(reg.sub_registry_with_label(("cluster".into(), "secondary".into())));
            }
        }
        m
    }

    /// Lets other components (admission) add their metrics.
    pub fn with_registry(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Runs a routed call for `caller` (whose credential every call it makes to the nodes
    /// carries) and records its method, gRPC code and latency.
    pub async fn observed<T>(
        &self,
        caller: &ringkv_auth::Caller,
        method: &'static str,
        f: impl Future<Output = Result<T, ringkv_routing::RoutingError>>,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        use tracing::Instrument;
        let started = std::time::Instant::now();
        // Retries and redirects logged by the routing core carry the method; at debug level
        // each request logs its outcome and latency (RUST_LOG=ringkv_router::metrics=debug).
        let span = tracing::debug_span!("request", method);
        let result = match caller.forward() {
            // Nothing of the caller's to carry: no scope to set up on every poll.
            ringkv_auth::Forward::Own => f.instrument(span).await,
            forward => ringkv_auth::forward::scope(forward, f.instrument(span)).await,
        }
        .map_err(|e| e.to_status());
        let code = result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        let took = started.elapsed();
        self.observe(method, took, code);
        tracing::debug!(method, took_us = took.as_micros() as u64, ?code, "request");
        result.map(tonic::Response::new)
    }

    pub fn observe(&self, method: &'static str, took: Duration, code: tonic::Code) {
        self.requests.get_or_create(&MethodCode { method, code: format!("{code:?}") }).inc();
        self.latency.get_or_create(&Method { method }).observe(took.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            out = format!("# encoding failed: {e}\n");
        }
        out
    }

    /// Serves `/metrics`, `/livez` and `/readyz` (503 with the reason until `ready` holds).
    pub async fn serve(
        &self,
        addr: SocketAddr,
        ready: crate::Ready,
    ) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let me = self.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let me = me.clone();
                    async move { me.encode() }
                }),
            )
            .route("/livez", get(|| async { "live\n" }))
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.clone();
                    async move {
                        match ready.check() {
                            Ok(()) => (axum::http::StatusCode::OK, "ready\n".to_string()),
                            Err(why) => (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                format!("not ready: {why}\n"),
                            ),
                        }
                    }
                }),
            );
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "router HTTP server stopped");
            }
        });
        Ok((bound, task))
    }
}
