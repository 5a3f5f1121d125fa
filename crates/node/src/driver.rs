//! The placement driver: runs on the meta group's leader and makes the cluster match its
//! records.
//!
//! Every interval, while the local meta replica leads, it:
//! 1. writes the founding records if the meta group has none yet (founding members only);
//! 2. updates node states from liveness: a node syncs every half second; one silent for
//!    `--down-after` (default 30 min) becomes `Down` and its replicas are re-created
//!    elsewhere; a `Down` or `Joining` node that syncs becomes `Up`. A node that restarts in
//!    seconds is never replaced: the cluster never shrinks because a pod restarted;
//! 3. advances every move by one step ([`ringkv_placement::planner::next_step`]), asking the
//!    shard's leader what its group looks like first, so each step is derived from Raft's
//!    state and a driver that crashed anywhere resumes where the group is;
//! 4. plans new moves towards the target placement ([`ringkv_placement::planner::plan`]) and
//!    records each one before any step is taken (the intent survives a crash of the driver).
//!
//! A move that cannot finish (its learner does not catch up within `--move-timeout`, or the
//! node it adds stops being up) is marked aborting: its learner is removed again and the move
//! dropped, to be planned afresh. A voter change, once proposed, is never undone: it is
//! finished and recorded as Raft has it.
//!
//! Liveness is what this leader has heard: when it becomes leader it has heard nothing, so for
//! one `live window` every node counts as live, and `Down` is only decided after a whole
//! `--down-after` of this leader's own silence.
//!
//! The driver also answers the membership requests that change records: `Join` (a new
//! identity, never reused; a name held by a node that is silent is taken over, and that
//! identity retired), drain, remove, and weight changes, each refused with a clear error when
//! it would leave fewer up nodes than the replication factor.

use crate::error::NodeError;
use crate::meta::{self, MetaCache, MetaView};
use crate::metrics::DriverMetrics;
use crate::registry::ShardRegistry;
use crate::shard::Shard;
use ringkv_placement::cluster::{
    ClusterRecord, ClusterState, META_SHARD, MetaKey, MoveRecord, NodeRecord, NodeState,
    ShardRecord, shard_name,
};
use ringkv_placement::planner::{self, GroupView, Limits, Step};
use ringkv_placement::shard_map::WEIGHT_MAX;
use ringkv_placement::{NodeId, NodeSpec, ShardId};
use ringkv_proto::internal::membership_client::MembershipClient;
use ringkv_proto::internal::{
    AddLearnerRequest, ChangeVotersRequest, GroupRequest, JoinRequest, RemoveLearnerRequest,
};
use ringkv_proto::v1::TransferLeaderRequest;
use ringkv_proto::v1::admin_client::AdminClient;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Names and zones are labels, not documents.
const NAME_BYTES_MAX: usize = 253;
const ZONE_BYTES_MAX: usize = 64;
/// A `Joining` identity that never synced (its node died before storing it) is retired.
const JOINING_EXPIRY: Duration = Duration::from_secs(600);
/// One step's RPC to a shard leader (a voter change waits for two commits, longer).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
const CHANGE_STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// NOT_LEADER hints followed when looking for a shard's leader.
const GROUP_HINTS_MAX: usize = 4;
/// Compare-and-swap retries of one admin request before it gives up (conflicts are rare:
/// only the driver and admin requests on this leader write).
const CAS_TRIES: usize = 5;

/// The driver's settings (see `crate::config`).
#[derive(Debug, Clone, Copy)]
pub struct DriverConfig {
    pub interval: Duration,
    pub down_after: Duration,
    pub move_timeout: Duration,
    /// A node that synced within this window counts as live.
    pub live_window: Duration,
    pub limits: Limits,
    /// Entries a learner may trail the leader by and still be promoted.
    pub caught_up_lag: u64,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            interval: Duration::from_millis(300),
            down_after: Duration::from_secs(30 * 60),
            move_timeout: Duration::from_secs(600),
            live_window: Duration::from_secs(3),
            limits: Limits::default(),
            caught_up_lag: 64,
        }
    }
}

/// What this node, as meta leader, has heard from the others. It belongs to one leadership
/// (one meta term): a node that loses the meta leadership and wins it back, or wins it before
/// its driver's next round, must not judge nodes by syncs from another term, nor before it
/// had the chance to hear from them.
#[derive(Debug, Default)]
struct Liveness {
    /// The meta term this leadership began in.
    term: Option<u64>,
    leader_since: Option<Instant>,
    seen: HashMap<NodeId, Instant>,
}

/// Shard counts by replication health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    pub under_replicated: u32,
    pub without_quorum: u32,
    /// Off their target placement, with no move yet.
    pub pending: u32,
    /// Off their target placement, moving or not.
    pub off_target: u32,
}

/// What an admin request does to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    Drain,
    Remove,
    /// Back to up (a drained or down node the operator wants used again).
    Activate,
}

#[derive(Debug)]
pub struct Driver {
    registry: ShardRegistry,
    cfg: DriverConfig,
    cache: MetaCache,
    liveness: Mutex<Liveness>,
    /// Serializes the record-changing requests of this leader (join, drain, ...).
    admin: tokio::sync::Mutex<()>,
    /// shard -> the node last seen leading it.
    leaders: Mutex<HashMap<ShardId, NodeId>>,
    /// The inputs (meta applied index, live nodes) of the last round, if it planned nothing.
    settled: Mutex<Option<(u64, BTreeSet<NodeId>)>>,
    pub metrics: DriverMetrics,
}

fn now_unix_ms() -> u64 {
    crate::network::unix_ms()
}

fn refused(reason: impl Into<String>) -> NodeError {
    NodeError::Refused { reason: reason.into() }
}

fn was_removed(node: NodeId) -> NodeError {
    refused(format!("node {node} was removed; its id is never used again"))
}

impl Driver {
    pub fn new(registry: ShardRegistry, cfg: DriverConfig, metrics: DriverMetrics) -> Self {
        Driver {
            registry,
            cfg,
            cache: MetaCache::default(),
            liveness: Mutex::default(),
            admin: tokio::sync::Mutex::new(()),
            leaders: Mutex::default(),
            settled: Mutex::default(),
            metrics,
        }
    }

    pub fn config(&self) -> &DriverConfig {
        &self.cfg
    }

    /// Runs the driver loop until the task is aborted.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.cfg.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = self.tick().await {
                    tracing::debug!(error = %e, "placement driver round failed");
                }
            }
        })
    }

    /// The local meta replica while it leads, else NOT_LEADER naming the leader it knows.
    fn leading_meta(&self) -> Result<Arc<Shard>, NodeError> {
        let meta = self.registry.replica(META_SHARD).map_err(|_| NodeError::NotLeader {
            shard: META_SHARD,
            leader: self.registry.meta_leader_hint(),
        })?;
        if !meta.is_leader() {
            return Err(meta.not_leader());
        }
        Ok(meta)
    }

    fn view(&self, meta: &Shard) -> Result<Arc<MetaView>, NodeError> {
        self.cache.view(meta)
    }

    fn state(&self, meta: &Shard) -> Result<Arc<ClusterState>, NodeError> {
        self.view(meta)?.state.clone().ok_or_else(|| NodeError::ShardUnavailable {
            shard: META_SHARD,
            reason: "the cluster's records are not written yet".into(),
        })
    }

    /// The liveness record of the current meta leadership: reset when this node leads the
    /// meta group in another term than the record's, cleared when it does not lead.
    fn lock_liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        let leading_term = self
            .registry
            .replica(META_SHARD)
            .ok()
            .filter(|meta| meta.is_leader())
            .map(|meta| meta.metrics().current_term);
        let mut l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        if l.term != leading_term {
            l.seen.clear();
            l.term = leading_term;
            l.leader_since = leading_term.map(|term| {
                tracing::info!(term, "this node leads the meta group: placement driver active");
                Instant::now()
            });
        }
        l
    }

    /// Whether `node` synced within the live window (every node counts as live for the first
    /// window of a new leadership: it has not had the chance to hear from them).
    fn live_in(&self, l: &Liveness, node: NodeId) -> bool {
        match l.seen.get(&node) {
            Some(t) => t.elapsed() < self.cfg.live_window,
            None => l.leader_since.is_some_and(|s| s.elapsed() < self.cfg.live_window),
        }
    }

    /// The nodes of `state` that are live now, read under one lock. The planner and the
    /// health count ask about every replica of every shard (3,072 questions a round at 1,024
    /// shards); asked one by one, each took the lock and copied the meta replica's metrics.
    fn live_nodes(&self, state: &ClusterState) -> BTreeSet<NodeId> {
        let l = self.lock_liveness();
        state.nodes.keys().copied().filter(|&n| self.live_in(&l, n)).collect()
    }

    /// How long ago this leader heard from `node` (`None`: not since it became leader).
    pub fn last_seen(&self, node: NodeId) -> Option<Duration> {
        self.lock_liveness().seen.get(&node).map(Instant::elapsed)
    }

    /// How long this leader has not heard from `node`.
    fn silent_for(&self, node: NodeId) -> Duration {
        let l = self.lock_liveness();
        match (l.seen.get(&node), l.leader_since) {
            (Some(t), _) => t.elapsed(),
            (None, Some(s)) => s.elapsed(),
            (None, None) => Duration::ZERO,
        }
    }

    /// A node's sync: record that it is alive and return the current records.
    pub async fn sync(
        &self,
        node: NodeId,
        name: &str,
        addr: &str,
    ) -> Result<Arc<MetaView>, NodeError> {
        let meta = self.leading_meta()?;
        self.lock_liveness().seen.insert(node, Instant::now());
        let view = self.view(&meta)?;
        if let Some(state) = &view.state
            && let Some(rec) = state.node(node)
            && rec.state != NodeState::Removed
            && (rec.name != name || rec.addr != addr)
            && !name.is_empty()
            && state.node_named(name).is_none_or(|h| h.id == node)
        {
            // Founding members are recorded before anyone heard their names.
            let mut updated = rec.clone();
            updated.name = name.to_string();
            if rec.addr != addr && !addr.is_empty() {
                tracing::warn!(
                    node,
                    old = %rec.addr,
                    new = %addr,
                    "a node's address changed; peers keep the old one in their Raft groups: use stable (DNS) addresses"
                );
                updated.addr = addr.to_string();
            }
            let rev = state.revisions.get(&MetaKey::Node(node)).copied();
            let _ = meta::cas(&meta, MetaKey::Node(node), rev, Some(&updated)).await;
        }
        Ok(view)
    }

    async fn tick(&self) -> Result<(), NodeError> {
        let meta = match self.leading_meta() {
            Ok(m) => m,
            Err(e) => {
                drop(self.lock_liveness());
                self.metrics.leader.set(0);
                return Err(e);
            }
        };
        drop(self.lock_liveness());
        self.metrics.leader.set(1);
        let view = self.view(&meta)?;
        let Some(state) = view.state.clone() else {
            return self.seed(&meta).await;
        };
        self.update_node_states(&meta, &state).await;
        let steps = state.moves.iter().map(|(&shard, mv)| {
            let (meta, state) = (meta.clone(), state.clone());
            async move {
                if let Err(e) = self.advance(&meta, &state, shard, mv).await {
                    tracing::debug!(shard = %shard_name(shard), error = %e, "move step failed; retrying");
                }
            }
        });
        futures::future::join_all(steps).await;
        let live_nodes = self.live_nodes(&state);
        // Planning and the health count walk every replica of every shard; what they decide
        // depends only on the records and on who is live. A round with the same records and
        // live nodes as a round that planned nothing would plan nothing again.
        let inputs = (view.applied_index, live_nodes);
        if self.settled.lock().unwrap_or_else(|p| p.into_inner()).as_ref() == Some(&inputs) {
            return Ok(());
        }
        let live = |n: NodeId| inputs.1.contains(&n);
        let planned = planner::plan(&state, &live, self.cfg.limits, now_unix_ms());
        let nothing_planned = planned.is_empty();
        for (shard, mv) in planned {
            if meta::cas(&meta, MetaKey::Move(shard), None, Some(&mv)).await? {
                tracing::info!(
                    shard = %shard_name(shard),
                    add = ?mv.add,
                    remove = ?mv.remove,
                    "planned a replica move"
                );
                self.metrics.moves_started.inc();
            }
        }
        self.observe(&state, &inputs.1);
        *self.settled.lock().unwrap_or_else(|p| p.into_inner()) = nothing_planned.then_some(inputs);
        Ok(())
    }

    /// Writes the founding records, if this node founded the cluster and nobody did yet.
    async fn seed(&self, meta: &Arc<Shard>) -> Result<(), NodeError> {
        let identity = self.registry.identity();
        if identity.founders.is_empty() {
            return Ok(());
        }
        // Read linearizably before writing: a leader that is behind must not write twice.
        meta.read_barrier(ringkv_proto::v1::Consistency::Linearizable, STEP_TIMEOUT).await?;
        if self.view(meta)?.state.is_some() {
            return Ok(());
        }
        let names: BTreeMap<NodeId, String> =
            [(identity.node_id, identity.name.clone())].into_iter().collect();
        let records = ClusterState::initial(
            identity.cluster_id,
            identity.layout,
            &identity.founders,
            &names,
            now_unix_ms(),
        )
        .map_err(|e| NodeError::Internal(e.to_string()))?;
        meta::seed(meta, records).await?;
        tracing::info!(
            cluster = format!("{:#x}", identity.cluster_id),
            "wrote the cluster's founding records"
        );
        Ok(())
    }

    async fn update_node_states(&self, meta: &Shard, state: &ClusterState) {
        let now = now_unix_ms();
        for n in state.nodes.values() {
            let new = match n.state {
                NodeState::Up if self.silent_for(n.id) >= self.cfg.down_after => NodeState::Down,
                NodeState::Down if self.heard_recently(n.id) => NodeState::Up,
                NodeState::Joining if self.heard_recently(n.id) => NodeState::Up,
                NodeState::Joining
                    if now.saturating_sub(n.since_unix_ms) >= JOINING_EXPIRY.as_millis() as u64 =>
                {
                    NodeState::Removed
                }
                _ => continue,
            };
            let mut rec = n.clone();
            rec.state = new;
            rec.since_unix_ms = now;
            let rev = state.revisions.get(&MetaKey::Node(n.id)).copied();
            match meta::cas(meta, MetaKey::Node(n.id), rev, Some(&rec)).await {
                Ok(true) => tracing::info!(
                    node = n.id,
                    from = n.state.name(),
                    to = new.name(),
                    "node state changed"
                ),
                Ok(false) => {}
                Err(e) => tracing::debug!(node = n.id, error = %e, "node state change failed"),
            }
        }
    }

    /// Heard from by this leader itself (the grace window of a new leadership does not count).
    fn heard_recently(&self, node: NodeId) -> bool {
        self.lock_liveness().seen.get(&node).is_some_and(|t| t.elapsed() < self.cfg.live_window)
    }

    /// One step of the move of `shard`.
    async fn advance(
        &self,
        meta: &Shard,
        state: &ClusterState,
        shard: ShardId,
        mv: &MoveRecord,
    ) -> Result<(), String> {
        let rec = state.shards.get(&shard).ok_or("no shard record")?;
        let move_rev = state.revisions.get(&MetaKey::Move(shard)).copied();
        let recorded = rec.config_epoch == mv.from_epoch + 1
            && mv.add.is_none_or(|a| rec.replicas.contains(&a))
            && mv.remove.is_none_or(|r| !rec.replicas.contains(&r));
        if recorded {
            // The new set was recorded, and a crash came before the move was dropped.
            meta::cas::<MoveRecord>(meta, MetaKey::Move(shard), move_rev, None)
                .await
                .map_err(|e| e.to_string())?;
            self.metrics.moves_done.inc();
            return Ok(());
        }
        if !mv.aborting {
            let add_left =
                mv.add.is_some_and(|a| state.node(a).is_none_or(|n| n.state != NodeState::Up));
            let timed_out = now_unix_ms().saturating_sub(mv.started_unix_ms)
                > self.cfg.move_timeout.as_millis() as u64;
            // Planned from another configuration than the one recorded (a deposed driver's
            // view, or the record was written but the move not dropped before a crash).
            let stale = mv.from_epoch != rec.config_epoch;
            if add_left || timed_out || stale {
                let mut aborting = mv.clone();
                aborting.aborting = true;
                meta::cas(meta, MetaKey::Move(shard), move_rev, Some(&aborting))
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::warn!(
                    shard = %shard_name(shard),
                    add = ?mv.add,
                    reason = if stale {
                        "planned from another configuration epoch"
                    } else if add_left {
                        "the node it adds is no longer up"
                    } else {
                        "timed out"
                    },
                    "aborting a replica move"
                );
                return Ok(());
            }
        }
        let (leader, view) = self.group_view(state, shard, rec, mv).await?;
        let live_nodes = self.live_nodes(state);
        let live = |n: NodeId| live_nodes.contains(&n);
        let step = planner::next_step(&rec.replicas, mv, &view, self.cfg.caught_up_lag, &live);
        tracing::debug!(shard = %shard_name(shard), ?step, "move step");
        let cluster_id = self.registry.cluster_id();
        match step {
            Step::AddLearner(node) => {
                let addr = state.node(node).map(|n| n.addr.clone()).ok_or("unknown node")?;
                let mut client = self.membership(state, leader)?;
                client
                    .add_learner(timed(
                        AddLearnerRequest { cluster_id, shard_id: shard, node_id: node, addr },
                        STEP_TIMEOUT,
                    ))
                    .await
                    .map_err(|s| s.message().to_string())?;
            }
            Step::WaitCatchUp { .. } => {}
            Step::TransferLeader { to } => {
                let ch = self.channel(state, leader)?;
                AdminClient::new(ch)
                    .transfer_leader(ringkv_proto::with_cluster_id(
                        timed(
                            TransferLeaderRequest { shard_id: shard, to_node_id: to },
                            STEP_TIMEOUT,
                        ),
                        cluster_id,
                    ))
                    .await
                    .map_err(|s| s.message().to_string())?;
                self.leaders.lock().unwrap_or_else(|p| p.into_inner()).insert(shard, to);
            }
            Step::ChangeVoters(voters) => {
                let mut client = self.membership(state, leader)?;
                client
                    .change_voters(timed(
                        ChangeVotersRequest {
                            cluster_id,
                            shard_id: shard,
                            voters: voters.into_iter().collect(),
                            expected_membership_index: view.membership_index,
                        },
                        CHANGE_STEP_TIMEOUT,
                    ))
                    .await
                    .map_err(|s| s.message().to_string())?;
            }
            Step::Record(replicas) => {
                let new = ShardRecord { replicas, config_epoch: rec.config_epoch + 1 };
                let rev = state.revisions.get(&MetaKey::Shard(shard)).copied();
                let written = meta::cas(meta, MetaKey::Shard(shard), rev, Some(&new))
                    .await
                    .map_err(|e| e.to_string())?;
                if written {
                    // The old replica sees itself gone from the record and removes its data.
                    meta::cas::<MoveRecord>(meta, MetaKey::Move(shard), move_rev, None)
                        .await
                        .map_err(|e| e.to_string())?;
                    tracing::info!(
                        shard = %shard_name(shard),
                        replicas = ?new.replicas,
                        epoch = new.config_epoch,
                        "replica move done"
                    );
                    self.metrics.moves_done.inc();
                }
            }
            Step::RemoveLearner(node) => {
                let mut client = self.membership(state, leader)?;
                client
                    .remove_learner(timed(
                        RemoveLearnerRequest { cluster_id, shard_id: shard, node_id: node },
                        CHANGE_STEP_TIMEOUT,
                    ))
                    .await
                    .map_err(|s| s.message().to_string())?;
            }
            Step::Drop => {
                meta::cas::<MoveRecord>(meta, MetaKey::Move(shard), move_rev, None)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(shard = %shard_name(shard), "aborted replica move dropped");
                self.metrics.moves_aborted.inc();
            }
        }
        Ok(())
    }

    fn channel(&self, state: &ClusterState, node: NodeId) -> Result<Channel, String> {
        let addr = state.node(node).map(|n| n.addr.clone()).ok_or("unknown node")?;
        self.registry.pool().channel(node, &addr)
    }

    fn membership(
        &self,
        state: &ClusterState,
        node: NodeId,
    ) -> Result<MembershipClient<Channel>, String> {
        Ok(MembershipClient::new(self.channel(state, node)?))
    }

    /// The leader of `shard` and its view of the group: the cached leader first, then every
    /// replica (and the node being added), following NOT_LEADER hints.
    async fn group_view(
        &self,
        state: &ClusterState,
        shard: ShardId,
        rec: &ShardRecord,
        mv: &MoveRecord,
    ) -> Result<(NodeId, GroupView), String> {
        let cached = self.leaders.lock().unwrap_or_else(|p| p.into_inner()).get(&shard).copied();
        let mut order: Vec<NodeId> = cached.into_iter().collect();
        for n in rec.replicas.iter().chain(mv.add.iter()) {
            if !order.contains(n) {
                order.push(*n);
            }
        }
        let mut errors = Vec::new();
        let mut i = 0;
        // Every replica once, plus a few hints (two nodes naming each other must not loop).
        let tries = order.len() + GROUP_HINTS_MAX;
        while i < order.len() && i < tries {
            let node = order[i];
            i += 1;
            let Ok(mut client) = self.membership(state, node) else { continue };
            let req = GroupRequest { cluster_id: self.registry.cluster_id(), shard_id: shard };
            match client.group(timed(req, STEP_TIMEOUT)).await {
                Ok(reply) => {
                    let r = reply.into_inner();
                    self.leaders.lock().unwrap_or_else(|p| p.into_inner()).insert(shard, node);
                    let view = GroupView {
                        leader: r.leader_id,
                        voters: r
                            .voters
                            .iter()
                            .map(|v| v.voters.iter().copied().collect())
                            .collect(),
                        learners: r.learners.iter().copied().collect(),
                        last_log_index: r.last_log_index,
                        matched: r.matched.iter().map(|m| (m.node_id, m.index)).collect(),
                        membership_index: r.membership_index,
                    };
                    return Ok((node, view));
                }
                Err(s) => {
                    if let Some(l) = crate::error::leader_id_hint(&s)
                        && !order[i..].contains(&l)
                    {
                        order.insert(i, l);
                    }
                    errors.push(format!("node {node}: {}", s.message()));
                }
            }
        }
        Err(format!("no leader found for shard {}: {}", shard_name(shard), errors.join("; ")))
    }

    /// Replication health of every shard as this leader sees it (liveness from syncs).
    pub fn health(&self, state: &ClusterState) -> Health {
        self.health_with(state, &self.live_nodes(state))
    }

    fn health_with(&self, state: &ClusterState, live_nodes: &BTreeSet<NodeId>) -> Health {
        let targets = planner::Targets::new(state);
        let mut h = Health::default();
        for shard in state.shard_ids_with_meta() {
            let replicas = state.replicas(shard);
            let live = replicas.iter().filter(|&n| live_nodes.contains(n)).count();
            if live < replicas.len() / 2 + 1 {
                h.without_quorum += 1;
            }
            let target = targets.of(shard);
            if live < target.as_ref().map_or(replicas.len(), Vec::len) {
                h.under_replicated += 1;
            }
            let off_target = target.is_some_and(|t| {
                let mut a = t;
                let mut b = replicas.to_vec();
                a.sort_unstable();
                b.sort_unstable();
                a != b
            });
            if off_target {
                h.off_target += 1;
                if !state.moves.contains_key(&shard) {
                    h.pending += 1;
                }
            }
        }
        h
    }

    fn observe(&self, state: &ClusterState, live_nodes: &BTreeSet<NodeId>) {
        let h = self.health_with(state, live_nodes);
        self.metrics.moves_running.set(state.moves.len() as i64);
        self.metrics.moves_pending.set(i64::from(h.pending));
        self.metrics.under_replicated.set(i64::from(h.under_replicated));
        self.metrics.without_quorum.set(i64::from(h.without_quorum));
    }

    /// Hands out a new identity to a node that has no data (see the module notes).
    pub async fn join(&self, req: &JoinRequest) -> Result<NodeId, NodeError> {
        let meta = self.leading_meta()?;
        if req.name.is_empty() || req.name.len() > NAME_BYTES_MAX {
            return Err(NodeError::invalid("name", format!("must be 1 to {NAME_BYTES_MAX} bytes")));
        }
        if req.addr.is_empty() || req.addr.len() > NAME_BYTES_MAX || !req.addr.contains(':') {
            return Err(NodeError::invalid("addr", "must be host:port"));
        }
        if req.zone.len() > ZONE_BYTES_MAX {
            return Err(NodeError::invalid("zone", format!("at most {ZONE_BYTES_MAX} bytes")));
        }
        let weight = if req.weight == 0 { 1 } else { req.weight };
        if weight > WEIGHT_MAX {
            return Err(NodeError::invalid("weight", format!("must be 1 to {WEIGHT_MAX}")));
        }
        let _one_at_a_time = self.admin.lock().await;
        for _ in 0..CAS_TRIES {
            let state = self.state(&meta)?;
            let holder = state.node_named(&req.name).cloned();
            if let Some(h) = &holder
                && h.state != NodeState::Joining
                && self.heard_recently(h.id)
            {
                return Err(refused(format!(
                    "the name {:?} belongs to node {} at {}, which synced {} ms ago: a node with this name is running \
                     (or this one restarted on an empty data directory moments ago; it retries until that identity falls silent)",
                    req.name,
                    h.id,
                    h.addr,
                    self.silent_for(h.id).as_millis()
                )));
            }
            let id = state.cluster.next_node_id;
            let cluster = ClusterRecord { next_node_id: id + 1, ..state.cluster.clone() };
            let rev = state.revisions.get(&MetaKey::Cluster).copied();
            if !meta::cas(&meta, MetaKey::Cluster, rev, Some(&cluster)).await? {
                continue;
            }
            let now = now_unix_ms();
            let record = NodeRecord {
                id,
                name: req.name.clone(),
                addr: req.addr.clone(),
                state: NodeState::Joining,
                weight,
                zone: req.zone.clone(),
                since_unix_ms: now,
                replaced_by: None,
            };
            meta::cas(&meta, MetaKey::Node(id), None, Some(&record)).await?;
            if let Some(h) = holder {
                // The old identity lost its data (or never started): retire it for ever; its
                // replicas move to up nodes through the ordinary moves.
                let mut retired = h.clone();
                retired.state = NodeState::Removed;
                retired.since_unix_ms = now;
                retired.replaced_by = Some(id);
                let rev = state.revisions.get(&MetaKey::Node(h.id)).copied();
                meta::cas(&meta, MetaKey::Node(h.id), rev, Some(&retired)).await?;
                tracing::warn!(old = h.id, new = id, name = %req.name, "a node came back without its data: new identity, old one retired");
            }
            tracing::info!(node = id, name = %req.name, addr = %req.addr, "node joined");
            return Ok(id);
        }
        Err(NodeError::ShardUnavailable {
            shard: META_SHARD,
            reason: "the cluster's records kept changing; retry".into(),
        })
    }

    /// Drains, removes or re-activates a node.
    pub async fn node_action(
        &self,
        node: NodeId,
        action: NodeAction,
    ) -> Result<NodeRecord, NodeError> {
        let target = match action {
            NodeAction::Drain => NodeState::Draining,
            NodeAction::Remove => NodeState::Removed,
            NodeAction::Activate => NodeState::Up,
        };
        let updated = self
            .update_node(node, |state, rec| {
                if rec.state == target {
                    return Ok(None);
                }
                if rec.state == NodeState::Removed {
                    return Err(was_removed(node));
                }
                if target != NodeState::Up {
                    let rf = state.cluster.layout.replication_factor as usize;
                    let up_after = state.up_nodes().filter(|n| n.id != node).count();
                    if up_after < rf {
                        return Err(refused(format!(
                            "{} node {node} would leave {up_after} up nodes, fewer than the replication factor {rf}; add a node first",
                            if action == NodeAction::Drain { "draining" } else { "removing" },
                        )));
                    }
                }
                Ok(Some(NodeRecord { state: target, since_unix_ms: now_unix_ms(), ..rec.clone() }))
            })
            .await?;
        tracing::info!(node, to = target.name(), "node state set by an operator");
        Ok(updated)
    }

    pub async fn set_weight(&self, node: NodeId, weight: u32) -> Result<NodeRecord, NodeError> {
        if !(1..=WEIGHT_MAX).contains(&weight) {
            return Err(NodeError::invalid("weight", format!("must be 1 to {WEIGHT_MAX}")));
        }
        self.update_node(node, |_, rec| {
            if rec.state == NodeState::Removed {
                return Err(was_removed(node));
            }
            Ok(Some(NodeRecord { weight, ..rec.clone() }))
        })
        .await
    }

    /// An operator's change to one node's record: `change` returns the new record (`None`:
    /// nothing to change), decided on the current state and written by compare-and-swap.
    async fn update_node(
        &self,
        node: NodeId,
        change: impl Fn(&ClusterState, &NodeRecord) -> Result<Option<NodeRecord>, NodeError>,
    ) -> Result<NodeRecord, NodeError> {
        let meta = self.leading_meta()?;
        let _one_at_a_time = self.admin.lock().await;
        for _ in 0..CAS_TRIES {
            let state = self.state(&meta)?;
            let rec = state.node(node).cloned().ok_or_else(|| NodeError::NotFound {
                what: format!("node {node}"),
                topic: String::new(),
                partition: None,
            })?;
            let Some(new) = change(&state, &rec)? else { return Ok(rec) };
            let rev = state.revisions.get(&MetaKey::Node(node)).copied();
            if meta::cas(&meta, MetaKey::Node(node), rev, Some(&new)).await? {
                return Ok(new);
            }
        }
        Err(NodeError::ShardUnavailable {
            shard: META_SHARD,
            reason: "records kept changing; retry".into(),
        })
    }

    /// The current state, for admin listings (from the leader's replica).
    pub fn current(&self) -> Result<Arc<ClusterState>, NodeError> {
        let meta = self.leading_meta()?;
        self.state(&meta)
    }

    /// Founding members (for tests of the founding records).
    pub fn founders(&self) -> Vec<NodeSpec> {
        self.registry.identity().founders
    }
}

fn timed<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}
