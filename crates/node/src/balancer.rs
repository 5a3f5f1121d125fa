//! Leader balancing: spread shard leaderships over the nodes.
//!
//! Raft elects whichever replica times out first, so after a start or a failover the
//! leaderships of many shards can pile up on one node, and that node then does all their
//! writes and linearizable reads. The shard map names a preferred leader per shard, chosen so
//! that nodes lead equally often ([`ringkv_placement::shard_map::balance_leaders`]). Every
//! interval, a node hands each shard it leads but does not prefer to the preferred replica,
//! only when that replica is healthy: it acknowledged a heartbeat within the election timeout
//! and has every log entry. A transfer costs the shard a short pause (no election timeout:
//! the target campaigns at once), so the check is conservative and at most one transfer per
//! shard is started per interval. Shards with a replica move under way are left alone: the
//! placement driver hands leadership away from a leaving replica itself.

use crate::registry::ShardRegistry;
use crate::shard::Shard;
use openraft::{Instant, RaftMetrics, ServerState};
use ringkv_placement::NodeId;
use ringkv_storage::TypeConfig;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Starts the balancer; `liveness` is how recent the preferred replica's last heartbeat
/// acknowledgement must be.
pub fn spawn(registry: ShardRegistry, interval: Duration, liveness: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            balance_once(&registry, liveness).await;
        }
    })
}

async fn balance_once(registry: &ShardRegistry, liveness: Duration) {
    for shard in registry.shards() {
        // A quiesced leader's acknowledgements are as old as its sleep: wake it when its
        // leadership belongs elsewhere and the preferred node answers pings (it slept with
        // that replica as a follower, so the pinger watches it), and decide on fresh ones
        // next round. A group asleep without its preferred replica (gone: see
        // `crate::quiesce`) stays asleep: woken every interval, the shards a lost node
        // preferred kept a fifth of a core busy on its survivors at 1,024 shards.
        // Metrics read in place: every shard is looked at each interval, and a clone copies
        // the membership's maps.
        if shard.quiet.is_quiet_leader() {
            let off = shard.with_metrics(|m| {
                m.state == ServerState::Leader
                    && off_preferred(registry, &shard, m)
                        .is_some_and(|preferred| registry.peers().alive(preferred))
            });
            if off {
                shard.wake_leader().await;
            }
            continue;
        }
        let target = shard.with_metrics(|m| transfer_target(registry, &shard, m, liveness));
        if let Some(preferred) = target {
            tracing::info!(
                shard = shard.id,
                to = preferred,
                "moving leadership to the preferred replica"
            );
            if let Err(e) = shard.raft.trigger().transfer_leader(preferred).await {
                tracing::warn!(shard = shard.id, error = %e, "leader transfer failed");
            }
        }
    }
}

/// The preferred replica of a shard this node leads, when it is another voter.
fn off_preferred(
    registry: &ShardRegistry,
    shard: &Shard,
    m: &RaftMetrics<TypeConfig>,
) -> Option<NodeId> {
    // A shard being moved is the placement driver's to lead around.
    if m.state != ServerState::Leader || registry.moving(shard.id) {
        return None;
    }
    let preferred = registry.map().preferred_leader(shard.id)?;
    (preferred != registry.node_id() && m.membership_config.voter_ids().any(|v| v == preferred))
        .then_some(preferred)
}

/// The replica this leader should hand its leadership to now, if any: the preferred one,
/// when it acknowledged a heartbeat within `liveness` and holds every log entry.
pub fn transfer_target(
    registry: &ShardRegistry,
    shard: &Shard,
    m: &RaftMetrics<TypeConfig>,
    liveness: Duration,
) -> Option<NodeId> {
    let preferred = off_preferred(registry, shard, m)?;
    // A node that said it is shutting down would take the leadership with it.
    if registry.peers().is_stopping(preferred) {
        return None;
    }
    let heard_recently = m
        .heartbeat
        .as_ref()
        .and_then(|h| h.get(&preferred).cloned().flatten())
        .is_some_and(|acked| acked.elapsed() < liveness);
    let matched =
        m.replication.as_ref().and_then(|r| r.get(&preferred).cloned().flatten()).map(|l| l.index);
    (heard_recently && matched.is_some() && matched == m.last_log_index).then_some(preferred)
}
