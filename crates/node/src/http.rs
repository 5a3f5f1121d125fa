//! The node's HTTP port: `/metrics` (Prometheus text format), `/livez` and `/readyz`.
//!
//! Probes and scrapes share one small port, away from the gRPC one, so a NetworkPolicy can
//! open it to the kubelet and Prometheus alone. What live and ready mean is in
//! [`crate::health`]; `/readyz` answers 503 with the reasons when the node is not ready.

use crate::health::Health;
use crate::metrics::NodeMetrics;
use axum::http::StatusCode;
use axum::routing::get;
use std::net::SocketAddr;
use tokio::task::JoinHandle;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves `/metrics`, `/livez` and `/readyz` until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    metrics: NodeMetrics,
    health: Health,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
                }
            }),
        )
        .route("/livez", get(|| async { "live\n" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    let r = health.readiness();
                    let code =
                        if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (code, r.body())
                }
            }),
        );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok((bound, task))
}
