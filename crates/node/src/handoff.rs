//! Graceful stop: hand every leadership to another replica before the process exits.
//!
//! A node killed while it leads shards leaves them without a leader until the followers' election
//! timeout fires (0.5–1 s by default), and every request to them in that window fails or waits.
//! A rolling restart does that to every shard several times. A leadership transfer costs one
//! round trip instead: the leader stops taking writes, tells a caught-up follower to campaign at
//! once, and that follower wins before anyone's timer would have fired.
//!
//! On SIGTERM the node marks itself stopping (readiness goes false, so Kubernetes stops sending
//! it new clients and the PodDisruptionBudget holds further evictions) and tells its peers
//! (a ping with `stopping`), whose leader balancers then stop handing it leaderships, then,
//! until it leads
//! nothing or the hand-off time is up, asks each group it leads to transfer to the best other
//! voter that is not stopping itself: the shard's preferred leader when that replica is
//! current, else the voter that acknowledged a heartbeat most recently and is at most a few
//! entries behind. A leadership that comes back
//! (a peer's leader balancer preferring this node) is handed off again. A group that has no
//! current follower keeps its leader until the process stops; that is no worse than a kill.

use crate::registry::ShardRegistry;
use crate::shard::Shard;
use openraft::async_runtime::WatchReceiver;
use openraft::{Instant as _, RaftMetrics, ServerState};
use ringkv_placement::NodeId;
use ringkv_storage::TypeConfig;
use std::time::{Duration, Instant};

/// How often the node looks at what it still leads.
const POLL: Duration = Duration::from_millis(50);
/// A transfer not done after this long is asked for again (possibly to another voter).
const RETRY: Duration = Duration::from_millis(500);
/// Leading nothing for this long ends the hand-off: long enough that a transfer racing back
/// (a leader balancer elsewhere) is seen, short enough not to hold up the stop.
const SETTLED: Duration = Duration::from_millis(300);
/// With no transfer possible for this long (no other voter is current: the peers are down or
/// behind), waiting longer will not help: stop.
const HOPELESS: Duration = Duration::from_secs(2);

/// What a hand-off achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOff {
    /// Groups this node led when the hand-off began.
    pub led_at_start: usize,
    /// Groups it still led when it gave up (0 when every leadership moved).
    pub still_led: usize,
    pub elapsed: Duration,
}

/// A follower this many entries behind the leader's last one may still take over: openraft's
/// transfer target waits until it has the leader's last entry (the leader stops taking writes
/// once it asks), and under steady writes a follower is nearly always a few entries behind.
const TARGET_LAG_MAX: u64 = 64;
/// How long each announcement ping may take.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_millis(500);

/// Tells every other node of the cluster that this one is stopping (`true`: do not hand it
/// leaderships) or has started (`false`: clears a mark its previous process left). Best effort:
/// a peer that misses it only hands a leadership back that the hand-off passes on again.
pub async fn announce(registry: &ShardRegistry, stopping: bool) {
    let me = registry.node_id();
    let peers: Vec<(NodeId, String)> = registry
        .state()
        .map(|s| {
            s.nodes
                .values()
                .filter(|n| n.id != me && n.state != ringkv_placement::cluster::NodeState::Removed)
                .map(|n| (n.id, n.addr.clone()))
                .collect()
        })
        .unwrap_or_default();
    let pings = peers
        .iter()
        .map(|(id, addr)| crate::quiesce::ping(registry, *id, addr, stopping, ANNOUNCE_TIMEOUT));
    futures::future::join_all(pings).await;
}

/// Marks the node stopping and moves its leaderships away, for at most `timeout`.
pub async fn hand_off_leaders(registry: &ShardRegistry, timeout: Duration) -> HandOff {
    registry.set_stopping();
    let start = Instant::now();
    // First, so that no peer's leader balancer hands a leadership back meanwhile.
    tokio::time::timeout(timeout, announce(registry, true)).await.ok();
    let liveness = Duration::from_millis(registry.raft_config().election_timeout_min);
    let mut asked: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let mut led_at_start = None;
    let mut empty_since: Option<Instant> = None;
    let mut last_progress = Instant::now();
    loop {
        // A group with no other voter (replication factor 1) has nobody to hand off to.
        let leading: Vec<_> =
            registry.replicas().into_iter().filter(|s| s.is_leader() && has_peers(s)).collect();
        led_at_start.get_or_insert(leading.len());
        if leading.is_empty() {
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SETTLED {
                break;
            }
        } else {
            empty_since = None;
        }
        if start.elapsed() >= timeout || last_progress.elapsed() >= HOPELESS {
            break;
        }
        for shard in leading {
            if asked.get(&shard.id).is_some_and(|at| at.elapsed() < RETRY) {
                continue;
            }
            // A sleeping leader's acknowledgements are as old as its sleep: wake it (one
            // heartbeat round) and pick a target from fresh ones on a later poll.
            if shard.wake_leader().await {
                last_progress = Instant::now();
                continue;
            }
            let m = shard.metrics();
            let Some(to) = target(registry, &shard, &m, liveness) else {
                continue;
            };
            if let Err(e) = shard.raft.trigger().transfer_leader(to).await {
                tracing::warn!(shard = shard.id, error = %e, "leadership hand-off failed");
            }
            asked.insert(shard.id, Instant::now());
            last_progress = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
    let still_led = registry.replicas().iter().filter(|s| s.is_leader() && has_peers(s)).count();
    let done =
        HandOff { led_at_start: led_at_start.unwrap_or(0), still_led, elapsed: start.elapsed() };
    tracing::info!(
        led = done.led_at_start,
        still_led = done.still_led,
        elapsed_ms = done.elapsed.as_millis() as u64,
        "leaderships handed off"
    );
    done
}

fn has_peers(shard: &Shard) -> bool {
    let me = shard.node_id;
    shard.raft.metrics().borrow_watched().membership_config.voter_ids().any(|v| v != me)
}

/// The voter to hand `shard` to: its preferred leader when current, else the current voter
/// that acknowledged most recently.
fn target(
    registry: &ShardRegistry,
    shard: &Shard,
    m: &RaftMetrics<TypeConfig>,
    liveness: Duration,
) -> Option<NodeId> {
    if m.state != ServerState::Leader {
        return None;
    }
    let me = registry.node_id();
    let current = |v: NodeId| {
        let acked = m
            .heartbeat
            .as_ref()
            .and_then(|h| h.get(&v).cloned().flatten())
            .map(|at| at.elapsed())
            .filter(|age| *age < liveness);
        let matched = m.replication.as_ref().and_then(|r| r.get(&v).cloned().flatten());
        let last = m.last_log_index.unwrap_or(0);
        let close = matched.is_some_and(|l| l.index + TARGET_LAG_MAX >= last);
        if registry.peers().is_stopping(v) {
            return None;
        }
        close.then_some(acked).flatten()
    };
    let preferred = registry.map().preferred_leader(shard.id).filter(|&p| p != me);
    if let Some(p) = preferred
        && m.membership_config.voter_ids().any(|v| v == p)
        && current(p).is_some()
    {
        return Some(p);
    }
    m.membership_config
        .voter_ids()
        .filter(|&v| v != me)
        .filter_map(|v| current(v).map(|age| (age, v)))
        .min()
        .map(|(_, v)| v)
}
