//! Node-pair failure detection for sleeping groups: one ping per peer and heartbeat interval,
//! answered with the peer's boot id.

use crate::registry::ShardRegistry;
use crate::shard::Shard;
use ringkv_placement::NodeId;
use ringkv_proto::internal::PingRequest;
use ringkv_proto::internal::raft_client::RaftClient;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the pinger knows of one peer node.
#[derive(Debug)]
struct Peer {
    /// The last sign of life: an answered ping, a ping from it, or a quiesce request from it.
    last_ok: Instant,
    /// The last ping received from it (see `PeerLiveness::pinged_us_within`).
    pinged_us: Option<Instant>,
    /// Pings failed in a row.
    failures: u32,
}

/// Pings failed in a row, besides `dead_after` of silence, before a peer is taken for dead:
/// one slow answer on a loaded machine must not cost an election.
const PING_FAILURES_MAX: u32 = 3;

/// Node-pair liveness, shared by the pinger (which updates it) and the Raft service (which
/// asks it before letting a sleeping replica take part in an election).
#[derive(Debug)]
pub struct PeerLiveness {
    dead_after: Duration,
    peers: Mutex<HashMap<NodeId, Peer>>,
    /// The boot id each peer last gave, kept while `peers` forgets peers no group sleeps on:
    /// learning one again each time a peer is watched again would count as a restart (see
    /// `record`) and wake its groups every time they fell asleep. One per node id ever heard.
    boot_ids: Mutex<HashMap<NodeId, u64>>,
    /// Peers that said they are shutting down, and when (see `crate::handoff`).
    stopping: Mutex<HashMap<NodeId, Instant>>,
}

/// A stopping mark outlives any hand-off and stop; a peer that restarts clears it sooner by
/// saying so, and one that never does is trusted again after this.
const STOPPING_MARK_MAX: Duration = Duration::from_secs(60);

impl PeerLiveness {
    pub fn new(dead_after: Duration) -> Self {
        PeerLiveness {
            dead_after,
            peers: Mutex::new(HashMap::new()),
            boot_ids: Mutex::new(HashMap::new()),
            stopping: Mutex::new(HashMap::new()),
        }
    }

    /// `node` said it is shutting down (`true`) or has started (`false`).
    pub fn mark_stopping(&self, node: NodeId, stopping: bool) {
        let mut marks = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
        marks.retain(|_, at| at.elapsed() < STOPPING_MARK_MAX);
        if stopping {
            marks.insert(node, Instant::now());
        } else {
            marks.remove(&node);
        }
    }

    /// Whether `node` is shutting down: leaderships must not be handed to it.
    pub fn is_stopping(&self, node: NodeId) -> bool {
        let marks = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
        marks.get(&node).is_some_and(|at| at.elapsed() < STOPPING_MARK_MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Peer>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sign of life from `node` other than a ping (a quiesce request).
    pub fn contact(&self, node: NodeId) {
        let mut peers = self.lock();
        let p = peers.entry(node).or_insert(Peer {
            last_ok: Instant::now(),
            pinged_us: None,
            failures: 0,
        });
        p.last_ok = Instant::now();
        p.failures = 0;
    }

    /// A ping from `node`, which started as `boot_id`: a sign of life like an answered ping.
    /// Returns whether it restarted since last heard of, or is heard of for the first time
    /// (the caller wakes the groups that sleep on it, as the pinger does when an answer says
    /// so).
    pub fn pinged_by(&self, node: NodeId, boot_id: u64) -> bool {
        let restarted = self.record(node, Ok(boot_id));
        if let Some(p) = self.lock().get_mut(&node) {
            p.pinged_us = Some(Instant::now());
        }
        restarted
    }

    /// Whether `node` pinged this node within `window`: then pinging it back tells nothing
    /// new, and the pinger skips it. Of two nodes pinging each other every interval, the one
    /// whose turn comes second keeps skipping, which halves the pings of an idle cluster.
    fn pinged_us_within(&self, node: NodeId, window: Duration) -> bool {
        self.lock().get(&node).and_then(|p| p.pinged_us).is_some_and(|at| at.elapsed() < window)
    }

    /// Whether `node` showed life within the dead-after window. While it does, a sleeping
    /// replica refuses pre-votes, as an awake follower does while its leader lease holds:
    /// the lease of a sleeping follower has long expired (nothing renews it), so without
    /// this one follower that wrongly thought its leader dead could win the other's vote and
    /// depose a healthy leader.
    pub fn alive(&self, node: NodeId) -> bool {
        self.lock().get(&node).is_some_and(|p| p.last_ok.elapsed() < self.dead_after)
    }

    /// Records a ping's outcome; returns whether the peer is lost (restarted, or silent for
    /// `dead_after` and `PING_FAILURES_MAX` pings).
    fn record(&self, node: NodeId, result: Result<u64, String>) -> bool {
        let now = Instant::now();
        let mut peers = self.lock();
        let p = peers.entry(node).or_insert(Peer { last_ok: now, pinged_us: None, failures: 0 });
        match result {
            Ok(boot) => {
                // An incarnation learned for the first time counts as a restart too: a group
                // that fell asleep on this peer before any of its boot ids reached us cannot
                // tell whether it slept on this incarnation or on one killed and restarted
                // before a ping got through; it would then sleep for good, refusing every
                // pre-vote because the peer answers pings, while the restarted peer no longer
                // leads it. Waking costs one heartbeat, once per peer per start. (Found by
                // tls.rs, a node killed 0.7 s after founding: a shard without a leader.)
                let known =
                    self.boot_ids.lock().unwrap_or_else(|p| p.into_inner()).insert(node, boot);
                let restarted = known != Some(boot);
                p.last_ok = now;
                p.failures = 0;
                restarted
            }
            Err(_) => {
                p.failures = p.failures.saturating_add(1);
                p.failures >= PING_FAILURES_MAX && p.last_ok.elapsed() >= self.dead_after
            }
        }
    }

    fn retain(&self, watched: &HashMap<NodeId, String>) {
        self.lock().retain(|p, _| watched.contains_key(p));
    }
}

/// One ping to `peer` at `addr`, saying whether this node is stopping; its boot id.
pub async fn ping(
    registry: &ShardRegistry,
    peer: NodeId,
    addr: &str,
    stopping: bool,
    timeout: Duration,
) -> Result<u64, String> {
    let ch = registry.pool().channel(peer, addr)?;
    let mut req = tonic::Request::new(PingRequest {
        cluster_id: registry.cluster_id(),
        from_node_id: registry.node_id(),
        to_node_id: peer,
        stopping,
        boot_id: registry.boot_id(),
    });
    req.set_timeout(timeout);
    let reply = tokio::time::timeout(timeout, RaftClient::new(ch).ping(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|s| s.message().to_string())?;
    Ok(reply.into_inner().boot_id)
}

/// Rounds after which the watched peers are recomputed even if no sleep began: drops the
/// peers that no sleeping group depends on any more (pinging them longer only costs).
const WATCHED_REFRESH_ROUNDS: u32 = 10;

/// Node-pair liveness for quiesced groups (see the module comment).
pub struct Pinger {
    registry: ShardRegistry,
    rpc_timeout: Duration,
    /// How often it runs: a peer that pinged this node within it is not pinged back.
    interval: Duration,
    /// The peers watched, as of `watched_at` sleeps begun, `watched_age` rounds ago.
    watched: HashMap<NodeId, String>,
    watched_at: Option<u64>,
    watched_age: u32,
}

impl Pinger {
    pub fn new(registry: ShardRegistry, rpc_timeout: Duration, interval: Duration) -> Self {
        Pinger {
            registry,
            rpc_timeout,
            interval,
            watched: HashMap::new(),
            watched_at: None,
            watched_age: 0,
        }
    }

    /// The peers quiesced groups here depend on, with an address. Walking every group each
    /// heartbeat interval was 5% of an idle node's CPU at 1,024 shards, so the walk runs
    /// only when a sleep began since the last one (a group that wakes only makes a watched
    /// peer unneeded, which costs a ping, not safety), and every few rounds to drop those.
    /// The count is read before the walk, and bumped under the lock that `each_peer` takes,
    /// before the replica's mode says it sleeps: a sleep the walk missed moves the count
    /// past what is cached, and the next round walks again.
    fn refresh_watched(&mut self) {
        let begun = self.registry.sleeps_begun();
        self.watched_age += 1;
        if self.watched_at != Some(begun) || self.watched_age >= WATCHED_REFRESH_ROUNDS {
            let mut out: HashMap<NodeId, String> = HashMap::new();
            for shard in self.registry.replicas() {
                shard.quiet.each_peer(|peer, addr| {
                    out.entry(peer).or_insert_with(|| addr.to_string());
                });
            }
            self.watched = out;
            self.watched_at = Some(begun);
            self.watched_age = 0;
        }
    }

    async fn ping(&self, peer: NodeId, addr: &str) -> Result<u64, String> {
        ping(&self.registry, peer, addr, false, self.rpc_timeout).await
    }

    /// Pings every watched peer once; wakes the groups of peers that restarted or are silent.
    /// Returns how many groups it woke.
    pub async fn round(&mut self) -> usize {
        self.refresh_watched();
        let watched = &self.watched;
        let liveness = self.registry.peers();
        liveness.retain(watched);
        let this = &*self;
        let pings = watched
            .iter()
            .filter(|&(&peer, _)| !liveness.pinged_us_within(peer, self.interval))
            .map(|(&peer, addr)| async move { (peer, this.ping(peer, addr).await) });
        let results = futures::future::join_all(pings).await;
        let mut woken = 0;
        for (peer, result) in results {
            if liveness.record(peer, result) {
                woken += wake_sleeping_on(&self.registry, peer).await;
            }
        }
        woken
    }
}

/// Wakes the groups here that sleep depending on `peer`, which restarted or went silent.
/// Returns how many.
pub async fn wake_sleeping_on(registry: &ShardRegistry, peer: NodeId) -> usize {
    let groups: Vec<Arc<Shard>> =
        registry.replicas().into_iter().filter(|s| s.quiet.sleeps_on(peer)).collect();
    for shard in &groups {
        if shard.quiet.wake(&shard.raft) {
            let _ = shard.raft.trigger().heartbeat().await;
        }
    }
    if !groups.is_empty() {
        tracing::info!(
            peer,
            groups = groups.len(),
            "peer restarted or silent: woke the groups sleeping on it"
        );
    }
    groups.len()
}

#[cfg(test)]
mod tests {
    use super::PeerLiveness;
    use std::time::Duration;

    #[test]
    fn a_stopping_peer_is_marked_until_it_says_it_started() {
        let l = PeerLiveness::new(Duration::from_millis(100));
        assert!(!l.is_stopping(2));
        l.mark_stopping(2, true);
        assert!(l.is_stopping(2) && !l.is_stopping(3));
        l.mark_stopping(2, false);
        assert!(!l.is_stopping(2));
    }

    #[test]
    fn a_peer_is_lost_when_it_restarts_or_stays_silent() {
        let l = PeerLiveness::new(Duration::ZERO);
        assert!(l.record(1, Ok(7)), "a first boot id may be a restart nobody saw");
        assert!(!l.record(1, Ok(7)));
        assert!(l.record(1, Ok(8)), "a new boot id is a restart");
        // Silence counts only after several failed pings in a row, however long it lasted.
        assert!(!l.record(1, Err("timed out".into())));
        assert!(!l.record(1, Err("timed out".into())));
        assert!(l.record(1, Err("timed out".into())));
        assert!(!l.record(1, Ok(8)), "an answer resets the count");
        assert!(!l.record(1, Err("timed out".into())));
        // Unwatched (no group sleeps on it) and watched again: the same incarnation.
        l.retain(&std::collections::HashMap::new());
        assert!(!l.record(1, Ok(8)), "a peer watched again is no restart");
        assert!(l.record(1, Ok(9)));
    }

    #[test]
    fn a_ping_received_is_a_sign_of_life_and_says_when_its_sender_restarted() {
        let l = PeerLiveness::new(Duration::from_secs(3600));
        assert!(!l.pinged_us_within(2, Duration::from_secs(60)), "never pinged by");
        assert!(l.pinged_by(2, 7), "a first boot id may be a restart nobody saw");
        assert!(l.alive(2));
        assert!(l.pinged_us_within(2, Duration::from_secs(60)), "so it need not be pinged");
        assert!(!l.pinged_us_within(2, Duration::ZERO));
        assert!(!l.pinged_by(2, 7));
        assert!(l.pinged_by(2, 8), "a new boot id is a restart");
        // An answer with the id a ping already told is no restart.
        assert!(!l.record(2, Ok(8)));
        // A ping clears failures as an answer does.
        for _ in 0..2 {
            assert!(!l.record(2, Err("refused".into())));
        }
        assert!(!l.pinged_by(2, 8));
        assert!(!l.record(2, Err("refused".into())), "the count started again");
    }

    #[test]
    fn silence_must_also_last_the_dead_after_window() {
        let l = PeerLiveness::new(Duration::from_secs(3600));
        l.contact(2);
        assert!(l.alive(2));
        for _ in 0..10 {
            assert!(!l.record(2, Err("refused".into())), "three failures within the window");
        }
        assert!(!l.alive(3), "never heard of");
    }
}
