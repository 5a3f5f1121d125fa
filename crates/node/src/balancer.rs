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
use openraft::{Instant, ServerState};
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
    let me = registry.node_id();
    let map = registry.map();
    for shard in registry.shards() {
        let m = shard.metrics();
        // A shard being moved is the placement driver's to lead around.
        if m.state != ServerState::Leader || registry.moving(shard.id) {
            continue;
        }
        let Some(preferred) = map.preferred_leader(shard.id) else { continue };
        if preferred == me || !m.membership_config.voter_ids().any(|v| v == preferred) {
            continue;
        }
        let heard_recently = m
            .heartbeat
            .as_ref()
            .and_then(|h| h.get(&preferred).cloned().flatten())
            .is_some_and(|acked| acked.elapsed() < liveness);
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&preferred).cloned().flatten())
            .map(|l| l.index);
        if heard_recently && matched.is_some() && matched == m.last_log_index {
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
