//! Router readiness: it can route once it has the shard map of every cluster it serves.
//!
//! The router starts before it has found its cluster (see [`crate::start`]), so Kubernetes
//! must not send it traffic until it has: `/readyz` on the metrics port and the gRPC health
//! service say NOT_SERVING until then. Liveness (`/livez`) only says the process answers; a
//! router that cannot reach a cluster is not helped by a restart.

use ringkv_routing::Cluster;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often readiness is rechecked for the gRPC health service.
const REFRESH: Duration = Duration::from_millis(200);
/// The router's client services, whose health follows readiness.
const SERVICES: [&str; 5] =
    ["", "ringkv.v1.KV", "ringkv.v1.Events", "ringkv.v1.Watch", "ringkv.v1.Admin"];

/// What the router needs before it can route.
#[derive(Clone, Debug)]
pub struct Ready {
    pub primary: Cluster,
    pub secondary: Option<Cluster>,
}

impl Ready {
    /// `Err` says what is missing.
    pub fn check(&self) -> Result<(), String> {
        if self.primary.map().is_none() {
            return Err(format!(
                "no shard map yet from the cluster (seeds {})",
                self.primary.config().seeds.join(",")
            ));
        }
        if let Some(s) = &self.secondary
            && s.map().is_none()
        {
            return Err(format!(
                "no shard map yet from the split cluster (seeds {})",
                s.config().seeds.join(",")
            ));
        }
        Ok(())
    }

    /// Sets every service NOT_SERVING now, then keeps the statuses in step with readiness.
    pub async fn spawn_reporter(self, reporter: HealthReporter) -> tokio::task::JoinHandle<()> {
        for service in SERVICES {
            reporter.set_service_status(service, ServingStatus::NotServing).await;
        }
        tokio::spawn(async move {
            let mut last = false;
            loop {
                let ready = self.check().is_ok();
                if ready != last {
                    let status =
                        if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
                    for service in SERVICES {
                        reporter.set_service_status(service, status).await;
                    }
                    tracing::info!(ready, "router readiness changed");
                    last = ready;
                }
                tokio::time::sleep(REFRESH).await;
            }
        })
    }
}
