//! Node metrics in Prometheus text format, served at `/metrics`.
//!
//! Per shard (label `shard`): Raft role, term, last log / committed / applied index, refreshed
//! every second from openraft's metrics. Per request method (label `method`, and `code` for
//! the counter): request counts and latencies. Storage adds its group-commit figures.

use crate::error::NodeError;
use crate::registry::ShardRegistry;
use openraft::ServerState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use ringkv_placement::cluster::META_SHARD;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCodeLabel {
    pub method: &'static str,
    pub code: String,
}

/// The placement driver's view (set by the meta leader; 0 elsewhere), and what moves cost.
#[derive(Clone, Debug, Default)]
pub struct DriverMetrics {
    /// 1 on the node whose meta replica leads (its driver is the active one).
    pub leader: Gauge,
    pub moves_running: Gauge,
    /// Shards whose replicas differ from their target and have no move yet.
    pub moves_pending: Gauge,
    pub moves_started: Counter,
    pub moves_done: Counter,
    pub moves_aborted: Counter,
    /// Shards (meta included) with fewer live replicas than their target.
    pub under_replicated: Gauge,
    /// Shards (meta included) whose live replicas are not a majority of their replicas.
    pub without_quorum: Gauge,
}

impl DriverMetrics {
    pub fn register(&self, reg: &mut Registry) {
        let r = reg.sub_registry_with_prefix("ringkv");
        r.register(
            "meta_leader",
            "1 where this node's meta replica leads (the active placement driver)",
            self.leader.clone(),
        );
        r.register(
            "moves_running",
            "Replica moves in progress (meta leader)",
            self.moves_running.clone(),
        );
        r.register(
            "moves_pending",
            "Shards off their target placement with no move yet (meta leader)",
            self.moves_pending.clone(),
        );
        r.register("moves_started", "Replica moves planned", self.moves_started.clone());
        r.register("moves_done", "Replica moves completed", self.moves_done.clone());
        r.register(
            "moves_aborted",
            "Replica moves given up and undone",
            self.moves_aborted.clone(),
        );
        r.register(
            "under_replicated_shards",
            "Shards with fewer live replicas than their target (meta leader)",
            self.under_replicated.clone(),
        );
        r.register(
            "shards_without_quorum",
            "Shards whose live replicas are not a majority (meta leader)",
            self.without_quorum.clone(),
        );
    }
}

/// A shard's gauges: role, term, last log index, committed index, applied index.
type ShardNumbers = [i64; 5];

/// Shared handles to every node metric, plus the registry they are in.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    registry: Arc<Mutex<Registry>>,
    role: Family<ShardLabel, Gauge>,
    term: Family<ShardLabel, Gauge>,
    last_log_index: Family<ShardLabel, Gauge>,
    committed_index: Family<ShardLabel, Gauge>,
    applied_index: Family<ShardLabel, Gauge>,
    requests: Family<MethodCodeLabel, Counter>,
    latency: Family<MethodLabel, Histogram>,
    /// Subscriptions and watches being served.
    pub open_streams: Gauge,
    /// Events stored by appends (retried duplicates not counted).
    pub events_appended: Counter,
    /// Retention trims and history compactions proposed by this node's leaders.
    pub retention_proposals: Counter,
    /// Replicas this node holds (meta group included).
    replicas: Gauge,
    quiesced: Gauge,
    /// 1 while the node is ready (`/readyz`; see `crate::health`).
    pub ready: Gauge,
    /// Voter replicas here whose state is older than the readiness bound.
    pub lagging_replicas: Gauge,
    /// The shards whose gauges are set, with the numbers last set (role, term, last log,
    /// committed, applied), so a replica that moved away stops being reported and one whose
    /// numbers did not change (every sleeping one) costs no gauge lookups.
    reported: Arc<Mutex<std::collections::BTreeMap<u64, ShardNumbers>>>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl NodeMetrics {
    pub fn new() -> Self {
        let m = NodeMetrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            role: Family::default(),
            term: Family::default(),
            last_log_index: Family::default(),
            committed_index: Family::default(),
            applied_index: Family::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            open_streams: Gauge::default(),
            events_appended: Counter::default(),
            retention_proposals: Counter::default(),
            replicas: Gauge::default(),
            quiesced: Gauge::default(),
            ready: Gauge::default(),
            lagging_replicas: Gauge::default(),
            reported: Arc::default(),
        };
        {
            let mut reg = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            let r = reg.sub_registry_with_prefix("ringkv");
            r.register(
                "shard_role",
                "Raft role per shard: 0 follower, 1 leader, 2 candidate, 3 learner, 4 shutdown",
                m.role.clone(),
            );
            r.register("shard_term", "Current Raft term per shard", m.term.clone());
            r.register(
                "shard_last_log_index",
                "Last log index per shard",
                m.last_log_index.clone(),
            );
            r.register(
                "shard_committed_index",
                "Committed log index per shard",
                m.committed_index.clone(),
            );
            r.register(
                "shard_applied_index",
                "Applied log index per shard",
                m.applied_index.clone(),
            );
            r.register("requests", "KV requests by method and gRPC code", m.requests.clone());
            r.register(
                "request_duration_seconds",
                "KV request latency by method",
                m.latency.clone(),
            );
            r.register(
                "open_streams",
                "Subscriptions and watches being served",
                m.open_streams.clone(),
            );
            r.register(
                "events_appended",
                "Events stored by appends on this node's leaders",
                m.events_appended.clone(),
            );
            r.register(
                "retention_proposals",
                "Trims and watch-history compactions proposed",
                m.retention_proposals.clone(),
            );
            r.register(
                "replicas",
                "Replicas this node holds (meta group included)",
                m.replicas.clone(),
            );
            r.register(
                "replicas_quiesced",
                "Replicas whose group sleeps (no ticks, no heartbeats) because it is idle",
                m.quiesced.clone(),
            );
            r.register(
                "node_ready",
                "1 while the node is ready (/readyz): up, not stopping, every voter replica current",
                m.ready.clone(),
            );
            r.register(
                "lagging_replicas",
                "Voter replicas older than the readiness bound (catching up or cut off)",
                m.lagging_replicas.clone(),
            );
        }
        m
    }

    /// Lets other components (storage) add their metrics.
    pub fn with_registry(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Runs a request handler and records its method, outcome and latency; the one place a
    /// node's errors become gRPC statuses on their way out.
    pub async fn observed<T>(
        &self,
        method: &'static str,
        f: impl Future<Output = Result<T, NodeError>>,
    ) -> Result<tonic::Response<T>, tonic::Status> {
        use tracing::Instrument;
        let started = std::time::Instant::now();
        // Whatever the handler logs carries the method; at debug level each request logs its
        // outcome and latency (RUST_LOG=ringkv_node::metrics=debug).
        let span = tracing::debug_span!("request", method);
        let result = f.instrument(span).await;
        let took = started.elapsed();
        self.observe_request(method, took, result.as_ref().err());
        tracing::debug!(method, took_us = took.as_micros() as u64, error = ?result.as_ref().err(), "request");
        result.map(tonic::Response::new).map_err(|e| e.to_status())
    }

    pub fn observe_request(&self, method: &'static str, took: Duration, error: Option<&NodeError>) {
        let code = match error {
            None => "OK".to_string(),
            Some(e) => format!("{:?}", e.to_status().code()),
        };
        self.requests.get_or_create(&MethodCodeLabel { method, code }).inc();
        self.latency.get_or_create(&MethodLabel { method }).observe(took.as_secs_f64());
    }

    /// Copies every shard's Raft metrics into the gauges (and drops the gauges of replicas
    /// that moved away).
    pub fn refresh(&self, registry: &ShardRegistry) {
        // One look at the registry: the meta group counts as a replica, not as a shard.
        let replicas = registry.replicas();
        self.replicas.set(i64::try_from(replicas.len()).unwrap_or(i64::MAX));
        let quiesced = replicas.iter().filter(|s| s.quiet.is_quiet()).count();
        self.quiesced.set(i64::try_from(quiesced).unwrap_or(i64::MAX));
        let shards: Vec<_> = replicas.into_iter().filter(|s| s.id != META_SHARD).collect();
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let now: std::collections::BTreeSet<u64> = shards.iter().map(|s| s.id).collect();
        reported.retain(|shard, _| {
            let keep = now.contains(shard);
            if !keep {
                let l = ShardLabel { shard: *shard };
                for f in [
                    &self.role,
                    &self.term,
                    &self.last_log_index,
                    &self.committed_index,
                    &self.applied_index,
                ] {
                    f.remove(&l);
                }
            }
            keep
        });
        for shard in shards {
            // Read in place and only the numbers: a clone copies the membership's maps, once
            // per shard every refresh.
            let numbers = shard.with_metrics(|m| {
                let role = match m.state {
                    ServerState::Follower => 0,
                    ServerState::Leader => 1,
                    ServerState::Candidate => 2,
                    ServerState::Learner => 3,
                    ServerState::Shutdown => 4,
                };
                let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                [
                    role,
                    as_i64(m.current_term),
                    as_i64(m.last_log_index.unwrap_or(0)),
                    as_i64(m.local_committed.map_or(0, |c| c.index)),
                    as_i64(m.last_applied.map_or(0, |c| c.index)),
                ]
            });
            if reported.get(&shard.id) == Some(&numbers) {
                continue;
            }
            let l = ShardLabel { shard: shard.id };
            let gauges = [
                &self.role,
                &self.term,
                &self.last_log_index,
                &self.committed_index,
                &self.applied_index,
            ];
            for (gauge, value) in gauges.into_iter().zip(numbers) {
                gauge.get_or_create(&l).set(value);
            }
            reported.insert(shard.id, numbers);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            out = format!("# encoding failed: {e}\n");
        }
        out
    }
}
