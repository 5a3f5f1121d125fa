//! Liveness and readiness: what `/livez`, `/readyz` and the gRPC health service say.
//!
//! Kubernetes restarts a pod whose liveness probe fails and stops sending it traffic (and,
//! through the PodDisruptionBudget, stops evicting its peers) while its readiness probe fails.
//! So the two must mean different things:
//!
//! - **Live**: the process and its async runtime answer. `/livez` is served by the same
//!   runtime that drives every Raft group, so an answer means the runtime is not wedged.
//!   Nothing about the cluster belongs here: a node cut off by a partition is not helped by a
//!   restart.
//! - **Ready**: the node can do its share of the work now, and taking it down would not hurt
//!   more than a node is expected to. It is ready when
//!   - it is not stopping (SIGTERM: it is handing its leaderships off),
//!   - its record in the cluster is `up` (not joining, draining, down or removed), and
//!   - every replica it holds as a voter is current: its state is at most
//!     `ready_staleness_max_ms` old, measured exactly as a STALE read there would report it
//!     (a leader: since a quorum last acknowledged it; a follower: since the leader could vouch
//!     for a commit index it has applied). That one rule covers a restarted node still
//!     catching up, a follower whose leader it cannot reach, and a leader cut off from its
//!     quorum. A sleeping (quiesced) replica counts as current: it went to sleep caught up,
//!     and the node-pair pings wake it when its leader's node goes silent.
//!
//! The gRPC health service reports the same readiness for the client services (`""`,
//! `ringkv.v1.KV`, `ringkv.v1.Streams`), refreshed every second. The internal Raft service is
//! not reported: peers must reach a node that is not ready, or it could never catch up.

use crate::registry::ShardRegistry;
use ringkv_placement::ShardId;
use ringkv_placement::cluster::NodeState;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Reasons listed in a not-ready answer; the count of lagging replicas is always given.
const REASONS_MAX: usize = 8;
/// How often the gRPC health status is recomputed.
const REFRESH: Duration = Duration::from_secs(1);
/// Client services whose gRPC health follows readiness.
const CLIENT_SERVICES: [&str; 3] = ["", "ringkv.v1.KV", "ringkv.v1.Streams"];

/// What readiness needs to know about one local replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaView {
    pub shard: ShardId,
    pub voter: bool,
    pub quiet: bool,
    /// `None`: not caught up with any leader since this process started.
    pub staleness_ms: Option<u64>,
}

/// The answer of a readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, at most [`REASONS_MAX`] of them.
    pub reasons: Vec<String>,
    /// Voter replicas older than the bound (all of them, not only those in `reasons`).
    pub lagging: usize,
}

impl Readiness {
    /// The plain-text body of `/readyz`.
    pub fn body(&self) -> String {
        if self.ready {
            return "ready\n".into();
        }
        let mut out = format!("not ready ({} lagging replicas)\n", self.lagging);
        for r in &self.reasons {
            out.push_str("- ");
            out.push_str(r);
            out.push('\n');
        }
        out
    }
}

/// Readiness from what the node knows: I/O-free, so the rules are tested directly.
pub fn evaluate(
    stopping: bool,
    node_state: Option<NodeState>,
    replicas: impl IntoIterator<Item = ReplicaView>,
    staleness_max_ms: u64,
) -> Readiness {
    let mut reasons = Vec::new();
    if stopping {
        reasons.push("stopping: handing leaderships off".to_string());
    }
    match node_state {
        Some(NodeState::Up) => {}
        Some(other) => reasons.push(format!("node is {} in the cluster", other.name())),
        None => reasons.push("not yet a member of a cluster it has heard from".to_string()),
    }
    let mut lagging = 0;
    for r in replicas {
        if !r.voter || r.quiet {
            continue;
        }
        let why = match r.staleness_ms {
            None => "has not caught up with a leader since start".to_string(),
            Some(ms) if ms > staleness_max_ms => {
                format!("state is {ms} ms old (bound {staleness_max_ms} ms)")
            }
            Some(_) => continue,
        };
        lagging += 1;
        if reasons.len() < REASONS_MAX {
            reasons
                .push(format!("shard {}: {why}", ringkv_placement::cluster::shard_name(r.shard)));
        }
    }
    Readiness { ready: reasons.is_empty(), reasons, lagging }
}

/// Readiness of a running node.
#[derive(Clone, Debug)]
pub struct Health {
    registry: ShardRegistry,
    staleness_max_ms: u64,
}

impl Health {
    pub fn new(registry: ShardRegistry, staleness_max_ms: u64) -> Self {
        Health { registry, staleness_max_ms }
    }

    pub fn readiness(&self) -> Readiness {
        let state = self.registry.state();
        let node_state =
            state.as_ref().and_then(|s| s.node(self.registry.node_id())).map(|n| n.state);
        // A sleeping replica counts as current (see the module notes); its metrics are not
        // read at all, since this runs every second over every replica.
        let views =
            self.registry.replicas().into_iter().filter(|s| !s.quiet.is_quiet()).map(|shard| {
                ReplicaView {
                    shard: shard.id,
                    voter: shard.is_voter(),
                    quiet: false,
                    staleness_ms: shard.staleness_now_ms(),
                }
            });
        evaluate(self.registry.is_stopping(), node_state, views, self.staleness_max_ms)
    }

    /// Keeps the gRPC health service's client statuses and the readiness gauges in step with
    /// readiness until aborted.
    pub fn spawn_reporter(
        self,
        reporter: HealthReporter,
        metrics: crate::metrics::NodeMetrics,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = None;
            loop {
                tick.tick().await;
                let r = self.readiness();
                metrics.ready.set(i64::from(r.ready));
                metrics.lagging_replicas.set(i64::try_from(r.lagging).unwrap_or(i64::MAX));
                let ready = r.ready;
                if last == Some(ready) {
                    continue;
                }
                last = Some(ready);
                let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
                for service in CLIENT_SERVICES {
                    reporter.set_service_status(service, status).await;
                }
                tracing::info!(ready, "readiness changed");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(shard: ShardId, staleness_ms: Option<u64>) -> ReplicaView {
        ReplicaView { shard, voter: true, quiet: false, staleness_ms }
    }

    #[test]
    fn current_replicas_on_an_up_node_are_ready() {
        let r =
            evaluate(false, Some(NodeState::Up), [replica(1, Some(5)), replica(2, Some(0))], 100);
        assert!(r.ready, "{r:?}");
        assert_eq!(r.body(), "ready\n");
    }

    #[test]
    fn a_replica_behind_or_never_caught_up_is_not_ready() {
        let r =
            evaluate(false, Some(NodeState::Up), [replica(1, Some(101)), replica(2, None)], 100);
        assert!(!r.ready);
        assert_eq!(r.lagging, 2);
        assert!(r.body().contains("101 ms old"), "{}", r.body());
        assert!(r.body().contains("since start"), "{}", r.body());
    }

    #[test]
    fn learners_and_sleeping_replicas_do_not_count() {
        let learner = ReplicaView { voter: false, ..replica(1, None) };
        let asleep = ReplicaView { quiet: true, ..replica(2, Some(60_000)) };
        assert!(evaluate(false, Some(NodeState::Up), [learner, asleep], 100).ready);
    }

    #[test]
    fn stopping_draining_or_unknown_nodes_are_not_ready() {
        assert!(!evaluate(true, Some(NodeState::Up), [], 100).ready);
        for state in [NodeState::Joining, NodeState::Draining, NodeState::Down, NodeState::Removed]
        {
            let r = evaluate(false, Some(state), [], 100);
            assert!(!r.ready && r.body().contains(state.name()), "{state:?}: {r:?}");
        }
        assert!(!evaluate(false, None, [], 100).ready);
    }

    #[test]
    fn reasons_are_bounded_but_every_lagging_replica_is_counted() {
        let many = (0..100).map(|s| replica(s, None));
        let r = evaluate(false, Some(NodeState::Up), many, 100);
        assert_eq!(r.reasons.len(), REASONS_MAX);
        assert_eq!(r.lagging, 100);
    }
}
