//! Quiescence: an idle shard stops its Raft timers on every replica, so a node can hold
//! thousands of shards that cost nothing while nobody uses them (TiKV's hibernate regions,
//! CockroachDB's quiescence).
//!
//! **Why.** An awake openraft group ticks every ~1/5 of the heartbeat interval on every
//! replica and its leader sends a heartbeat to every follower each interval: 128 idle shards
//! on 3 nodes kept a fifth of a core busy per node. A quiesced group has its ticker parked
//! (`runtime_config().tick(false)`): no wake-ups, no heartbeats, no election timeouts.
//!
//! **Going quiet** (leader-driven, [`Quiescer::round`]). The leader of a group that served no
//! request for `quiesce_after`, whose every voter has acknowledged it recently and holds its
//! last log entry, that has applied everything of its own term, has a uniform membership with
//! no learners and no replica move, and that the leader balancer would not hand away, asks
//! each follower to quiesce, naming its term and last index. A follower agrees only if it
//! follows that leader in that term and has applied exactly that index; it then turns off its
//! ticker (and with it its election timer). When all agreed and nothing happened on the
//! leader meanwhile, the leader turns off its heartbeats and ticker. A follower that agreed
//! while the leader did not finish is woken by the leader's next heartbeat.
//!
//! **Waking.** Any Raft message handled by a quiesced replica wakes it, *after* the message
//! was handled: a follower's election timer counts from the last leader contact, which was
//! long ago; turned on first, it would start an election at once instead of taking the
//! leader's message. A request at a quiesced leader (write, read, membership change, leader
//! transfer) wakes it and sends a heartbeat round at once; writes and lease reads then wait
//! for a quorum to acknowledge it, since openraft refuses writes while the leader lease
//! (renewed only by acknowledgements) has expired.
//!
//! **Failure detection without heartbeats** ([`Pinger`]). One ping per node pair and
//! heartbeat interval replaces the heartbeats of every quiesced group between the two nodes.
//! A ping answers with the peer's boot id (random per process start). A follower whose
//! leader's node stops answering for an election timeout, or restarted (its groups no longer
//! lead), wakes the groups that node led, which then elect as usual. A leader whose follower
//! restarted or stopped answering wakes too, so the restarted follower hears a heartbeat
//! before its own election timer fires and does not depose a healthy leader.
//!
//! The meta group never quiesces: every node syncs with it each interval anyway.

use crate::registry::ShardRegistry;
use crate::shard::{Shard, ShardRaft};
use futures::StreamExt;
use openraft::{Instant as _, ServerState};
use ringkv_placement::NodeId;
use ringkv_placement::cluster::META_SHARD;
use ringkv_proto::internal::raft_client::RaftClient;
use ringkv_proto::internal::{PingRequest, QuiesceRequest};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const AWAKE: u8 = 0;
const LEADING: u8 = 1;
const FOLLOWING: u8 = 2;

/// Groups asked to quiesce at once per round, so one round's RPCs stay bounded.
const QUIESCE_IN_FLIGHT_MAX: usize = 32;

/// One replica's quiescence state.
#[derive(Debug)]
pub struct Quiet {
    /// AWAKE, LEADING (quiesced as leader) or FOLLOWING (quiesced as follower); read without
    /// the lock on every message and request, changed only under it.
    mode: AtomicU8,
    /// The leader a quiesced follower follows.
    leader: AtomicU64,
    /// When this replica last served a request, in ms since `epoch`.
    last_active_ms: AtomicU64,
    /// How many times this replica went to sleep: a vote or snapshot wakes it only if it
    /// arrived after the sleep began (see `Shard::after_raft_message`).
    sleeps: AtomicU64,
    /// How many times this replica woke as a sleeping leader (or gave up going to sleep after
    /// its followers agreed); stamped on its messages (`RaftRequest.leader_wakes`).
    wakes: Arc<AtomicU64>,
    /// While asleep as a follower: the leader's wake count when it went to sleep. Its
    /// messages with a higher count were sent after it woke.
    leader_wakes: AtomicU64,
    epoch: Instant,
    transitions: Mutex<()>,
}

impl Quiet {
    /// `wakes` is shared with the replica's Raft network, which stamps it on every message.
    pub fn new(wakes: Arc<AtomicU64>) -> Self {
        Quiet {
            mode: AtomicU8::new(AWAKE),
            leader: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            wakes,
            leader_wakes: AtomicU64::new(0),
            epoch: Instant::now(),
            transitions: Mutex::new(()),
        }
    }

    /// This replica's wake count as leader.
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::SeqCst)
    }

    /// Counts a wake-up of this replica as leader: followers asleep since before it wake on
    /// its next message.
    fn bump_wakes(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }

    /// Wakes a sleeping follower on an AppendEntries handled from `from` stamped `wakes`:
    /// when the leader woke since it went to sleep, or another node sends (a new leader). A
    /// sleeping leader that receives one (from a leader of a newer term) wakes too.
    pub fn wake_on_append(&self, raft: &ShardRaft, from: NodeId, wakes: u64) {
        match self.mode.load(Ordering::SeqCst) {
            AWAKE => {}
            FOLLOWING => {
                if from != self.leader.load(Ordering::SeqCst)
                    || wakes > self.leader_wakes.load(Ordering::SeqCst)
                {
                    self.wake(raft);
                }
            }
            _ => {
                self.wake(raft);
            }
        }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.transitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The sleep count, to take before handling a Raft message.
    pub fn sleeps(&self) -> u64 {
        self.sleeps.load(Ordering::SeqCst)
    }

    /// Wakes the group if it sleeps since before the message that took `sleeps_before` was
    /// received. A message that was in flight when the group went to sleep (a reply yielded
    /// late, a heartbeat handled while the follower agreed to sleep) says nothing about the
    /// leader being awake: waking on it would leave an awake follower that hears from no
    /// one, and its election timer would depose the sleeping leader.
    pub fn wake_on_message(&self, raft: &ShardRaft, sleeps_before: u64) {
        if self.mode.load(Ordering::SeqCst) == AWAKE || self.sleeps() != sleeps_before {
            return;
        }
        self.wake(raft);
    }

    /// Whether the group is quiesced on this replica.
    pub fn is_quiet(&self) -> bool {
        self.mode.load(Ordering::SeqCst) != AWAKE
    }

    /// The leader this replica follows while quiesced as a follower.
    pub fn quiet_leader(&self) -> Option<NodeId> {
        (self.mode.load(Ordering::SeqCst) == FOLLOWING).then(|| self.leader.load(Ordering::SeqCst))
    }

    /// Whether this replica is quiesced as the group's leader.
    pub fn is_quiet_leader(&self) -> bool {
        self.mode.load(Ordering::SeqCst) == LEADING
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms().saturating_sub(self.last_active_ms.load(Ordering::SeqCst)),
        )
    }

    /// A request arrived: it keeps the group awake, and wakes a quiesced leader. Returns
    /// whether it did (the caller sends a heartbeat round). A quiesced follower serving a
    /// STALE read stays asleep: woken alone, its election timer (counting from a leader
    /// contact long ago) would start an election against a healthy leader.
    pub fn activity(&self, raft: &ShardRaft) -> bool {
        // Store first, read the mode second; `quiesce_leader` does the reverse, so either this
        // sees the group quiesced (and wakes it) or the quiescer sees this activity (and backs
        // off).
        self.last_active_ms.store(self.now_ms(), Ordering::SeqCst);
        if self.mode.load(Ordering::SeqCst) != LEADING {
            return false;
        }
        self.wake_leader(raft)
    }

    /// Wakes a quiesced leader (not a follower: see `activity`). Returns whether it slept.
    pub fn wake_leader(&self, raft: &ShardRaft) -> bool {
        let _g = self.lock();
        if self.mode.load(Ordering::SeqCst) != LEADING {
            return false;
        }
        self.mode.store(AWAKE, Ordering::SeqCst);
        self.bump_wakes();
        let rc = raft.runtime_config();
        rc.heartbeat(true);
        rc.tick(true);
        true
    }

    /// Wakes the group on this replica: timers on again. Returns whether it was quiesced as
    /// leader.
    pub fn wake(&self, raft: &ShardRaft) -> bool {
        let _g = self.lock();
        let was = self.mode.swap(AWAKE, Ordering::SeqCst);
        let rc = raft.runtime_config();
        match was {
            LEADING => {
                self.bump_wakes();
                rc.heartbeat(true);
                rc.tick(true);
                true
            }
            FOLLOWING => {
                rc.elect(true);
                rc.tick(true);
                false
            }
            _ => false,
        }
    }

    /// Quiesces this follower (the leader checked everything else; the caller checked the
    /// replica follows it and is caught up).
    fn quiesce_follower(&self, raft: &ShardRaft, leader: NodeId, leader_wakes: u64) {
        let _g = self.lock();
        self.sleeps.fetch_add(1, Ordering::SeqCst);
        self.leader.store(leader, Ordering::SeqCst);
        self.leader_wakes.store(leader_wakes, Ordering::SeqCst);
        self.mode.store(FOLLOWING, Ordering::SeqCst);
        let rc = raft.runtime_config();
        rc.elect(false);
        rc.tick(false);
    }

    /// Quiesces this leader unless a request arrived since `idle_since_ms`.
    fn quiesce_leader(&self, raft: &ShardRaft, active_at_ms: u64) -> bool {
        let _g = self.lock();
        if self.mode.load(Ordering::SeqCst) != AWAKE {
            return false;
        }
        self.mode.store(LEADING, Ordering::SeqCst);
        if self.last_active_ms.load(Ordering::SeqCst) != active_at_ms {
            self.mode.store(AWAKE, Ordering::SeqCst);
            // Followers agreed: they must wake on this leader's next message.
            self.bump_wakes();
            return false;
        }
        self.sleeps.fetch_add(1, Ordering::SeqCst);
        let rc = raft.runtime_config();
        rc.heartbeat(false);
        rc.tick(false);
        true
    }
}

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
    Ok(())
}

/// Handles a quiesce request on a follower.
pub fn accept(registry: &ShardRegistry, shard: &Shard, req: &QuiesceRequest) -> Result<(), String> {
    let leader = req.from_node_id;
    follower_may_quiesce(shard, leader, req.term, req.last_index)?;
    registry.peers().contact(leader);
    shard.quiet.quiesce_follower(&shard.raft, leader, req.leader_wakes);
    Ok(())
}

/// What a leader asks its followers, if its group may quiesce now.
struct Candidate {
    shard: Arc<Shard>,
    term: u64,
    last_index: u64,
    /// (node, address) of every follower.
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
    rpc_timeout: Duration,
}

impl Quiescer {
    pub fn new(
        registry: ShardRegistry,
        quiesce_after: Duration,
        ack_within: Duration,
        rpc_timeout: Duration,
    ) -> Self {
        Quiescer { registry, quiesce_after, ack_within, rpc_timeout }
    }

    fn candidate(&self, shard: &Arc<Shard>) -> Option<Candidate> {
        if shard.id == META_SHARD || shard.quiet.is_quiet() {
            return None;
        }
        let active_at_ms = shard.quiet.last_active_ms.load(Ordering::SeqCst);
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
        let mut followers = Vec::new();
        for id in membership.voter_ids().filter(|&v| v != me) {
            let acked = heartbeat.get(&id).cloned().flatten()?;
            let matched = replication.get(&id).cloned().flatten()?;
            if acked.elapsed() >= self.ack_within || matched.index != last_index {
                return None;
            }
            followers.push((id, membership.get_node(&id)?.addr.clone()));
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
        c.shard.quiet.quiesce_leader(&c.shard.raft, c.active_at_ms)
    }

    /// One pass over the groups this node leads; returns how many quiesced.
    pub async fn round(&self) -> usize {
        let candidates: Vec<Candidate> =
            self.registry.shards().iter().filter_map(|s| self.candidate(s)).collect();
        futures::stream::iter(candidates)
            .map(|c| self.try_quiesce(c))
            .buffer_unordered(QUIESCE_IN_FLIGHT_MAX)
            .filter(|&q| futures::future::ready(q))
            .count()
            .await
    }
}

/// What the pinger knows of one peer node.
#[derive(Debug)]
struct Peer {
    boot_id: Option<u64>,
    /// The last sign of life: an answered ping, or a quiesce request from it.
    last_ok: Instant,
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
}

impl PeerLiveness {
    pub fn new(dead_after: Duration) -> Self {
        PeerLiveness { dead_after, peers: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Peer>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sign of life from `node` other than a ping (a quiesce request).
    pub fn contact(&self, node: NodeId) {
        let mut peers = self.lock();
        let p = peers.entry(node).or_insert(Peer {
            boot_id: None,
            last_ok: Instant::now(),
            failures: 0,
        });
        p.last_ok = Instant::now();
        p.failures = 0;
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
        let p = peers.entry(node).or_insert(Peer { boot_id: None, last_ok: now, failures: 0 });
        match result {
            Ok(boot) => {
                let restarted = p.boot_id.is_some_and(|b| b != boot);
                p.boot_id = Some(boot);
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

    fn retain(&self, watched: &HashMap<NodeId, (String, Vec<Arc<Shard>>)>) {
        self.lock().retain(|p, _| watched.contains_key(p));
    }
}

/// Node-pair liveness for quiesced groups (see the module comment).
pub struct Pinger {
    registry: ShardRegistry,
    rpc_timeout: Duration,
}

impl Pinger {
    pub fn new(registry: ShardRegistry, rpc_timeout: Duration) -> Self {
        Pinger { registry, rpc_timeout }
    }

    /// The peers quiesced groups here depend on, with an address, and the groups per peer.
    fn watched(&self) -> HashMap<NodeId, (String, Vec<Arc<Shard>>)> {
        let me = self.registry.node_id();
        let mut out: HashMap<NodeId, (String, Vec<Arc<Shard>>)> = HashMap::new();
        for shard in self.registry.shards() {
            let peers: BTreeSet<NodeId> = if let Some(leader) = shard.quiet.quiet_leader() {
                BTreeSet::from([leader])
            } else if shard.quiet.is_quiet_leader() {
                shard.metrics().membership_config.voter_ids().filter(|&v| v != me).collect()
            } else {
                continue;
            };
            let m = shard.metrics();
            for peer in peers {
                let Some(node) = m.membership_config.membership().get_node(&peer) else {
                    continue;
                };
                out.entry(peer)
                    .or_insert_with(|| (node.addr.clone(), Vec::new()))
                    .1
                    .push(shard.clone());
            }
        }
        out
    }

    async fn ping(&self, peer: NodeId, addr: &str) -> Result<u64, String> {
        let ch = self.registry.pool().channel(peer, addr)?;
        let mut req = tonic::Request::new(PingRequest {
            cluster_id: self.registry.cluster_id(),
            from_node_id: self.registry.node_id(),
            to_node_id: peer,
        });
        req.set_timeout(self.rpc_timeout);
        let reply = tokio::time::timeout(self.rpc_timeout, RaftClient::new(ch).ping(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|s| s.message().to_string())?;
        Ok(reply.into_inner().boot_id)
    }

    /// Pings every watched peer once; wakes the groups of peers that restarted or are silent.
    /// Returns how many groups it woke.
    pub async fn round(&mut self) -> usize {
        let watched = self.watched();
        let liveness = self.registry.peers();
        liveness.retain(&watched);
        let this = &*self;
        let pings = watched
            .iter()
            .map(|(&peer, (addr, _))| async move { (peer, this.ping(peer, addr).await) });
        let results = futures::future::join_all(pings).await;
        let mut woken = 0;
        for (peer, result) in results {
            if !liveness.record(peer, result) {
                continue;
            }
            let groups = &watched[&peer].1;
            for shard in groups {
                if shard.quiet.wake(&shard.raft) {
                    let _ = shard.raft.trigger().heartbeat().await;
                }
                woken += 1;
            }
            tracing::info!(
                peer,
                groups = groups.len(),
                "peer restarted or silent: woke the groups sleeping on it"
            );
        }
        woken
    }
}

/// Runs the quiescer and the pinger until aborted. The pinger runs every `interval`
/// (the heartbeat interval); the quiescer every few.
pub fn spawn(
    mut pinger: Pinger,
    quiescer: Quiescer,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            pinger.round().await;
            // The quiescer's checks walk every group's metrics: a few times per second is
            // plenty for a decision measured in seconds of idleness.
            if n.is_multiple_of(4) {
                quiescer.round().await;
            }
            n += 1;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::PeerLiveness;
    use std::time::Duration;

    #[test]
    fn a_peer_is_lost_when_it_restarts_or_stays_silent() {
        let l = PeerLiveness::new(Duration::ZERO);
        assert!(!l.record(1, Ok(7)), "the first answer only learns the boot id");
        assert!(!l.record(1, Ok(7)));
        assert!(l.record(1, Ok(8)), "a new boot id is a restart");
        // Silence counts only after several failed pings in a row, however long it lasted.
        assert!(!l.record(1, Err("timed out".into())));
        assert!(!l.record(1, Err("timed out".into())));
        assert!(l.record(1, Err("timed out".into())));
        assert!(!l.record(1, Ok(8)), "an answer resets the count");
        assert!(!l.record(1, Err("timed out".into())));
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
