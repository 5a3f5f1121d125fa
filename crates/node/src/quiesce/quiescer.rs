//! The leader side of quiescence: finds idle groups this node leads, asks their followers,
//! and puts the leader to sleep when all agreed; and the follower's answer.

use crate::registry::ShardRegistry;
use crate::shard::Shard;
use futures::StreamExt;
use openraft::{Instant as _, ServerState};
use ringkv_placement::NodeId;
use ringkv_proto::internal::QuiesceRequest;
use ringkv_proto::internal::raft_client::RaftClient;
use std::sync::Arc;
use std::time::Duration;

/// Groups asked to quiesce at once per round, so one round's RPCs stay bounded.
const QUIESCE_IN_FLIGHT_MAX: usize = 32;

/// Whether a follower may quiesce at the request of `leader` in `term` with `last_index`.
pub fn follower_may_quiesce(
    shard: &Shard,
    leader: NodeId,
    term: u64,
    last_index: u64,
) -> Result<(), String> {
    let m = shard.metrics();
    if m.running_state.is_err() {
        return Err("replica stopped".into());
    }
    if m.state != ServerState::Follower && m.state != ServerState::Learner {
        return Err(format!("replica is {:?}", m.state));
    }
    if m.current_term != term || m.current_leader != Some(leader) {
        return Err(format!(
            "replica follows {:?} in term {}, not {leader} in term {term}",
            m.current_leader, m.current_term
        ));
    }
    let applied = m.last_applied.map_or(0, |l| l.index);
    if m.last_log_index != Some(last_index) || applied != last_index {
        return Err(format!(
            "replica has log up to {:?} and applied {applied}, not {last_index}",
            m.last_log_index
        ));
    }
    // Asleep, it hears no leader message until woken: one that cannot yet bound how stale
    // its state is (no message whose claim covers what it applied) would refuse every STALE
    // read for as long as it sleeps. It stays awake until a heartbeat gives it one (found
    // by quiescence.rs: a shard that went quiet right after its first writes).
    if shard.staleness_now_ms().is_none() {
        return Err(
            "replica cannot bound its staleness yet (no freshness claim from its leader)".into()
        );
    }
    Ok(())
}

/// Handles a quiesce request on a follower.
pub fn accept(registry: &ShardRegistry, shard: &Shard, req: &QuiesceRequest) -> Result<(), String> {
    let leader = req.from_node_id;
    follower_may_quiesce(shard, leader, req.term, req.last_index)?;
    registry.peers().contact(leader);
    let addr = shard
        .metrics()
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.addr.clone())
        .ok_or_else(|| format!("the leader, node {leader}, is not in this replica's membership"))?;
    shard.quiet.quiesce_follower(&shard.raft, (leader, addr), req.leader_wakes);
    // Caught up and applied: nobody reads what the caches hold until the group wakes.
    registry.storage().release_caches(shard.id);
    Ok(())
}

/// Whether a follower that has not acknowledged this leader lately may be left out of the
/// group's sleep as gone. `silent_for` is the age of its last acknowledgement (none yet: as
/// old as the leadership, `leading_for`); `awake_for` is how long the leader has been awake
/// since it last slept. A sleeping leader sends nothing, so every follower's last
/// acknowledgement is as old as the sleep: judged on that alone, a follower whose reply to the
/// wake-up heartbeat was still on its way would be taken for gone, and the group would go back
/// to sleep without it, unwatched (found by reading the code, not seen in a run: the
/// leaderships seen stuck after replica moves were docs/chaos.md's bug 13). Only silence while
/// awake counts.
fn absent(
    silent_for: Option<Duration>,
    leading_for: Duration,
    awake_for: Duration,
    absent_after: Duration,
) -> bool {
    silent_for.unwrap_or(leading_for).min(awake_for) >= absent_after
}

/// What a leader asks its followers, if its group may quiesce now.
struct Candidate {
    shard: Arc<Shard>,
    term: u64,
    last_index: u64,
    /// (node, address) of every follower asked.
    followers: Vec<(NodeId, String)>,
    active_at_ms: u64,
    /// The leader's wake count as it asks.
    wakes: u64,
}

/// The leader-side part: finds idle groups this node leads and quiesces them.
pub struct Quiescer {
    registry: ShardRegistry,
    quiesce_after: Duration,
    /// How recent every follower's last acknowledgement must be.
    ack_within: Duration,
    /// A follower silent for this long is absent: the group may sleep without it.
    absent_after: Duration,
    rpc_timeout: Duration,
}

impl Quiescer {
    pub fn new(
        registry: ShardRegistry,
        quiesce_after: Duration,
        ack_within: Duration,
        rpc_timeout: Duration,
    ) -> Self {
        // As long as the group must be idle, and several acknowledgement windows, so that a
        // follower only slowed down (a pause, a loaded machine) is not taken for gone.
        let absent_after = quiesce_after.max(ack_within * 4);
        Quiescer { registry, quiesce_after, ack_within, absent_after, rpc_timeout }
    }

    fn candidate(&self, shard: &Arc<Shard>) -> Option<Candidate> {
        if shard.quiet.is_quiet() {
            return None;
        }
        let active_at_ms = shard.quiet.active_at_ms();
        if shard.quiet.idle_for() < self.quiesce_after || self.registry.moving(shard.id) {
            return None;
        }
        let me = self.registry.node_id();
        let m = shard.metrics();
        if m.state != ServerState::Leader || m.running_state.is_err() {
            return None;
        }
        let last_index = m.last_log_index?;
        let applied = m.last_applied.as_ref()?;
        // Everything applied, including the leader's own blank entry of this term.
        if applied.index != last_index || applied.leader_id.term != m.current_term {
            return None;
        }
        let membership = m.membership_config.membership();
        if membership.get_joint_config().len() != 1 || membership.learner_ids().next().is_some() {
            return None;
        }
        let heartbeat = m.heartbeat.as_ref()?;
        let replication = m.replication.as_ref()?;
        let leading_for = shard.quiet.leading_for(m.current_term);
        let awake_for = shard.quiet.awake_for();
        let mut followers = Vec::new();
        let mut voters = 0;
        for id in membership.voter_ids() {
            voters += 1;
            if id == me {
                continue;
            }
            let silent_for = heartbeat.get(&id).cloned().flatten().map(|a| a.elapsed());
            let matched = replication.get(&id).cloned().flatten().map(|l| l.index);
            if silent_for.is_some_and(|s| s < self.ack_within) && matched == Some(last_index) {
                followers.push((id, membership.get_node(&id)?.addr.clone()));
                continue;
            }
            // A follower silent for long (its node down or cut off) need not keep the group
            // awake: heartbeats to it only cost, and Raft needs only a quorum (CockroachDB
            // quiesces past dead replicas too). It is neither asked nor watched. When it comes
            // back, it is caught up either by replication (the leader keeps retrying the
            // entries it lacks, with backoff, asleep or not) or, if it lacks nothing, after
            // its election timer makes it pre-vote, which wakes this leader (see
            // `RaftService::sleeping_refusal`).
            if !absent(silent_for, leading_for, awake_for, self.absent_after) {
                return None;
            }
        }
        // With the leader, the followers that agree must be a majority: a group cut off from
        // its quorum stays awake and keeps trying.
        if (followers.len() + 1) * 2 <= voters {
            return None;
        }
        // The balancer would hand this leadership to its preferred replica: let it first.
        if crate::balancer::transfer_target(&self.registry, shard, &m, self.ack_within).is_some() {
            return None;
        }
        Some(Candidate {
            shard: shard.clone(),
            term: m.current_term,
            last_index,
            followers,
            active_at_ms,
            wakes: shard.quiet.wakes(),
        })
    }

    async fn ask(&self, c: &Candidate, to: NodeId, addr: &str) -> Result<(), String> {
        let ch = self.registry.pool().channel(to, addr)?;
        let mut req = tonic::Request::new(QuiesceRequest {
            cluster_id: self.registry.cluster_id(),
            from_node_id: self.registry.node_id(),
            to_node_id: to,
            shard_id: c.shard.id,
            term: c.term,
            last_index: c.last_index,
            leader_wakes: c.wakes,
        });
        req.set_timeout(self.rpc_timeout);
        let reply = tokio::time::timeout(self.rpc_timeout, RaftClient::new(ch).quiesce(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|s| s.message().to_string())?
            .into_inner();
        if reply.accepted { Ok(()) } else { Err(reply.reason) }
    }

    async fn try_quiesce(&self, c: Candidate) -> bool {
        let asks = c.followers.iter().map(|(to, addr)| self.ask(&c, *to, addr));
        let answers = futures::future::join_all(asks).await;
        let m = c.shard.metrics();
        let declined = answers.iter().find_map(|a| a.as_ref().err());
        // Still the leader of the same term with nothing new, and everyone agreed: otherwise
        // those that agreed must wake on this leader's next heartbeat or append.
        if declined.is_some()
            || m.state != ServerState::Leader
            || m.current_term != c.term
            || m.last_log_index != Some(c.last_index)
        {
            if let Some(e) = declined {
                tracing::debug!(shard = c.shard.id, reason = %e, "a follower declined to quiesce");
            }
            c.shard.quiet.bump_wakes();
            return false;
        }
        let slept = c.shard.quiet.quiesce_leader(&c.shard.raft, c.active_at_ms, &c.followers);
        if slept {
            // The followers it waited for hold the last entry and all is applied: only a
            // follower left out as gone could still read those entries, and it reads RocksDB
            // like any follower far behind.
            self.registry.storage().release_caches(c.shard.id);
        }
        slept
    }

    /// One pass over the groups this node leads; returns how many quiesced.
    pub async fn round(&self) -> usize {
        let candidates: Vec<Candidate> =
            self.registry.replicas().iter().filter_map(|s| self.candidate(s)).collect();
        futures::stream::iter(candidates)
            .map(|c| self.try_quiesce(c))
            .buffer_unordered(QUIESCE_IN_FLIGHT_MAX)
            .filter(|&q| futures::future::ready(q))
            .count()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::absent;
    use std::time::Duration;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_follower_is_gone_only_after_silence_while_the_leader_was_awake() {
        let after = 10 * S;
        // Silent for long while the leader was awake: gone.
        assert!(absent(Some(30 * S), 60 * S, 60 * S, after));
        assert!(absent(Some(after), after, after, after), "the bound itself counts");
        // Acknowledged lately: present.
        assert!(!absent(Some(S), 60 * S, 60 * S, after));
        // Never acknowledged: as old as the leadership.
        assert!(!absent(None, 2 * S, 60 * S, after), "a new leader waits for the first reply");
        assert!(absent(None, 30 * S, 60 * S, after));
    }

    #[test]
    fn a_follower_is_not_gone_because_the_leader_slept() {
        let after = 10 * S;
        // Just woken after an hour's sleep: every acknowledgement is an hour old, yet no
        // follower has had a chance to answer.
        assert!(!absent(Some(3600 * S), 7200 * S, S, after));
        assert!(!absent(None, 7200 * S, S, after));
        // Silent for the whole bound since the wake-up: gone.
        assert!(absent(Some(3600 * S), 7200 * S, after, after));
    }
}
