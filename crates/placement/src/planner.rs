//! The placement driver's decisions, free of I/O: where replicas should be, which moves to
//! start, and what a move's next step is.
//!
//! **Targets.** A shard's target replicas come from the same consistent-hash replica ring as
//! a new cluster's placement, built over the nodes that are `Up` (weighted): so adding a node
//! moves about RF/(N+1) of the shards, one replica each, onto the new node, and nothing moves
//! between old nodes. When nodes carry zone labels, the walk takes nodes of zones not yet
//! used first and falls back to the ring order only when there are fewer zones than replicas.
//! The meta group is placed the same way on an odd number of nodes, at most five.
//!
//! **Moves.** Where a shard's recorded replicas differ from its target, [`plan`] starts a
//! move that replaces one replica (or only adds, or only removes, to reach the size). Moves
//! that heal (a replica on a node that is down, draining or removed) go first, the meta group
//! first of all; at most `moves_max` run at once, and at most `moves_per_node_max` touch any
//! live node, because each one copies a snapshot to and from it.
//!
//! **Steps.** [`next_step`] compares a move with what the shard's Raft group says now (its
//! voters, learners, leader and replication progress) and returns the one action to take. It
//! is derived from the group's state, not from a remembered step, so a driver that crashed
//! anywhere resumes by asking again:
//!
//! ```text
//!  add learner ─▶ wait until it has caught up ─▶ hand leadership away from a leaving leader
//!      ─▶ one joint membership change (old voters → new voters) ─▶ record the new set
//!  (aborting: remove the learner again, then drop the move)
//! ```

use crate::cluster::{ClusterState, META_SHARD, MoveRecord, NodeState};
use crate::replica_ring::ReplicaRing;
use crate::{NodeId, ShardId};
use std::collections::{BTreeMap, BTreeSet};

/// The most replicas the meta group has: five survive two failures, more only slow it down.
pub const META_REPLICAS_MAX: usize = 5;

/// A node replicas may be placed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: NodeId,
    pub weight: u32,
    pub zone: String,
}

/// The meta group's size for `nodes` eligible nodes: odd (an even group tolerates no more
/// failures than the odd one below it), at most [`META_REPLICAS_MAX`].
pub fn meta_size(nodes: usize) -> usize {
    match nodes.min(META_REPLICAS_MAX) {
        0 => 0,
        n if n % 2 == 1 => n,
        n => n - 1,
    }
}

/// The first `size` candidates for `shard` on the replica ring over `candidates`, taking
/// distinct zones first. Fewer when there are fewer candidates.
pub fn target_replicas(candidates: &[Candidate], shard: ShardId, size: usize) -> Vec<NodeId> {
    let ring = ReplicaRing::new(candidates.iter().map(|c| (c.id, c.weight)));
    pick(&ring, candidates, shard, size)
}

fn pick(ring: &ReplicaRing, candidates: &[Candidate], shard: ShardId, size: usize) -> Vec<NodeId> {
    let order = ring.candidates(shard);
    let zone_of = |id: NodeId| candidates.iter().find(|c| c.id == id).map_or("", |c| &c.zone);
    let mut picked: Vec<NodeId> = Vec::with_capacity(size);
    let mut zones: BTreeSet<&str> = BTreeSet::new();
    for &id in &order {
        if picked.len() == size {
            break;
        }
        let zone = zone_of(id);
        // An unlabelled node is its own failure domain.
        if zone.is_empty() || zones.insert(zone) {
            picked.push(id);
        }
    }
    for &id in &order {
        if picked.len() == size {
            break;
        }
        if !picked.contains(&id) {
            picked.push(id);
        }
    }
    picked
}

/// Every shard's target over the cluster's up nodes.
#[derive(Debug)]
pub struct Targets {
    candidates: Vec<Candidate>,
    ring: ReplicaRing,
    rf: usize,
}

impl Targets {
    pub fn new(state: &ClusterState) -> Targets {
        let candidates: Vec<Candidate> = state
            .up_nodes()
            .map(|n| Candidate { id: n.id, weight: n.weight.max(1), zone: n.zone.clone() })
            .collect();
        let ring = ReplicaRing::new(candidates.iter().map(|c| (c.id, c.weight)));
        Targets { candidates, ring, rf: state.cluster.layout.replication_factor as usize }
    }

    fn size(&self, shard: ShardId) -> usize {
        if shard == META_SHARD { meta_size(self.candidates.len()) } else { self.rf }
    }

    /// The target replicas of `shard`, or `None` when there are too few up nodes to place it
    /// (then it stays where it is).
    pub fn of(&self, shard: ShardId) -> Option<Vec<NodeId>> {
        let size = self.size(shard);
        if size == 0 || self.candidates.len() < size {
            return None;
        }
        Some(pick(&self.ring, &self.candidates, shard, size))
    }
}

/// Bounds on concurrent moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub moves_max: usize,
    pub moves_per_node_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { moves_max: 8, moves_per_node_max: 2 }
    }
}

/// The moves to start now, given the recorded state and which nodes answer (`live`).
pub fn plan(
    state: &ClusterState,
    live: &dyn Fn(NodeId) -> bool,
    limits: Limits,
    now_unix_ms: u64,
) -> Vec<(ShardId, MoveRecord)> {
    let targets = Targets::new(state);
    let mut busy: BTreeMap<NodeId, usize> = BTreeMap::new();
    let touch = |busy: &mut BTreeMap<NodeId, usize>, n: Option<NodeId>| {
        if let Some(n) = n.filter(|&n| live(n)) {
            *busy.entry(n).or_default() += 1;
        }
    };
    for m in state.moves.values() {
        touch(&mut busy, m.add);
        touch(&mut busy, m.remove);
    }
    let mut running = state.moves.len();
    let healthy = |n: NodeId| live(n) && state.node(n).is_some_and(|r| r.state == NodeState::Up);
    // Healing first (a replica on a node that is gone or leaving), the meta group first.
    let mut order: Vec<(u8, ShardId)> = state
        .shard_ids_with_meta()
        .filter(|s| !state.moves.contains_key(s))
        .map(|s| {
            let heal = state.replicas(s).iter().any(|&n| !healthy(n));
            let rank = match (s == META_SHARD, heal) {
                (true, _) => 0,
                (false, true) => 1,
                (false, false) => 2,
            };
            (rank, s)
        })
        .collect();
    order.sort();
    let mut out = Vec::new();
    for (_, shard) in order {
        if running >= limits.moves_max {
            break;
        }
        let Some(target) = targets.of(shard) else { continue };
        let current = state.replicas(shard);
        let Some(mv) = one_step_towards(current, &target, &healthy) else { continue };
        let over = |n: Option<NodeId>, busy: &BTreeMap<NodeId, usize>| {
            n.filter(|&n| live(n))
                .is_some_and(|n| busy.get(&n).copied().unwrap_or(0) >= limits.moves_per_node_max)
        };
        if over(mv.0, &busy) || over(mv.1, &busy) {
            continue;
        }
        touch(&mut busy, mv.0);
        touch(&mut busy, mv.1);
        running += 1;
        let from_epoch = state.shards.get(&shard).map_or(0, |r| r.config_epoch);
        out.push((
            shard,
            MoveRecord {
                add: mv.0,
                remove: mv.1,
                from_epoch,
                started_unix_ms: now_unix_ms,
                aborting: false,
            },
        ));
    }
    out
}

/// One replica change that brings `current` closer to `target`: (add, remove).
fn one_step_towards(
    current: &[NodeId],
    target: &[NodeId],
    healthy: &dyn Fn(NodeId) -> bool,
) -> Option<(Option<NodeId>, Option<NodeId>)> {
    let add = target.iter().copied().find(|t| !current.contains(t));
    // Remove an unhealthy replica first, else the last one the target does not keep.
    let extra: Vec<NodeId> = current.iter().copied().filter(|c| !target.contains(c)).collect();
    let remove = extra.iter().copied().find(|&n| !healthy(n)).or_else(|| extra.last().copied());
    let (add, remove) = match current.len().cmp(&target.len()) {
        std::cmp::Ordering::Less => (add, None),
        std::cmp::Ordering::Greater => (None, remove),
        std::cmp::Ordering::Equal => (add, remove),
    };
    (add.is_some() || remove.is_some()).then_some((add, remove))
}

/// What a shard's Raft group says about itself, from its leader.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupView {
    pub leader: NodeId,
    /// The voter sets: one when the configuration is uniform, two while it is joint.
    pub voters: Vec<BTreeSet<NodeId>>,
    pub learners: BTreeSet<NodeId>,
    pub last_log_index: u64,
    /// The last log index known to be on each replica (learners included).
    pub matched: BTreeMap<NodeId, u64>,
    /// The log index of the membership in effect: a voter change is guarded by it.
    pub membership_index: u64,
}

impl GroupView {
    fn uniform(&self) -> Option<&BTreeSet<NodeId>> {
        match self.voters.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// The one thing to do next for a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    AddLearner(NodeId),
    /// The learner is `behind` entries behind the leader: wait (or abort on timeout).
    WaitCatchUp {
        node: NodeId,
        behind: u64,
    },
    TransferLeader {
        to: NodeId,
    },
    /// Make these the voters (a joint change, or finishing one).
    ChangeVoters(BTreeSet<NodeId>),
    /// The group has these voters: record them and drop the move.
    Record(Vec<NodeId>),
    /// Undo an aborted move's learner.
    RemoveLearner(NodeId),
    /// Nothing left to do in the group: drop the (aborted) move.
    Drop,
}

/// The next step of `mv` on a shard recorded with `replicas`, given the group's `view`.
///
/// `caught_up_lag` is how many entries a learner may trail the leader's last index and still
/// be promoted (it will catch the rest up as a voter); `live` says which nodes answer.
pub fn next_step(
    replicas: &[NodeId],
    mv: &MoveRecord,
    view: &GroupView,
    caught_up_lag: u64,
    live: &dyn Fn(NodeId) -> bool,
) -> Step {
    let old: BTreeSet<NodeId> = replicas.iter().copied().collect();
    let new_order = mv.apply_to(replicas);
    let new: BTreeSet<NodeId> = new_order.iter().copied().collect();
    let Some(uniform) = view.uniform() else {
        // Joint: only finishing the change leaves it (an abort cannot undo a voter change).
        let last = view.voters.last().cloned().unwrap_or_default();
        return Step::ChangeVoters(if mv.aborting { last } else { new });
    };
    if *uniform == new && !mv.aborting {
        return Step::Record(new_order);
    }
    if *uniform != old {
        // The group moved on without the record (a change finished before a crash, or an
        // abort arriving after the change): Raft is the truth, record it as it is.
        let mut actual: Vec<NodeId> =
            replicas.iter().copied().filter(|r| uniform.contains(r)).collect();
        actual.extend(uniform.iter().copied().filter(|v| !replicas.contains(v)));
        return Step::Record(actual);
    }
    if mv.aborting {
        return match mv.add.filter(|a| view.learners.contains(a) && !old.contains(a)) {
            Some(a) => Step::RemoveLearner(a),
            None => Step::Drop,
        };
    }
    if let Some(add) = mv.add.filter(|a| !old.contains(a)) {
        if !view.learners.contains(&add) {
            return Step::AddLearner(add);
        }
        let matched = view.matched.get(&add).copied().unwrap_or(0);
        let behind = view.last_log_index.saturating_sub(matched);
        if matched == 0 || behind > caught_up_lag {
            return Step::WaitCatchUp { node: add, behind };
        }
    }
    if mv.remove == Some(view.leader) {
        // Hand leadership to the most caught-up live voter that stays.
        let to = old
            .intersection(&new)
            .copied()
            .filter(|&n| live(n))
            .max_by_key(|n| (view.matched.get(n).copied().unwrap_or(0), std::cmp::Reverse(*n)));
        if let Some(to) = to {
            return Step::TransferLeader { to };
        }
    }
    Step::ChangeVoters(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClusterRecord, MetaKey, NodeRecord, ShardRecord};
    use crate::{Layout, ShardMap};
    use proptest::prelude::*;

    fn node(id: NodeId, state: NodeState, zone: &str) -> NodeRecord {
        NodeRecord {
            id,
            name: format!("n{id}"),
            addr: format!("h{id}:1"),
            state,
            weight: 1,
            zone: zone.to_string(),
            since_unix_ms: 0,
            replaced_by: None,
        }
    }

    /// A state with `nodes` up, every shard placed by the placement function over the
    /// first `placed` of them.
    fn state(nodes: u64, placed: u64, shards: u32) -> ClusterState {
        let layout = Layout { shard_count: shards, replication_factor: 3, vnodes_per_shard: 64 };
        let specs: Vec<crate::NodeSpec> = (1..=placed)
            .map(|id| crate::NodeSpec { id, addr: format!("h{id}:1"), weight: 1 })
            .collect();
        let map = ShardMap::new(layout, specs.clone(), 1).unwrap();
        let mut shards: BTreeMap<ShardId, ShardRecord> = map
            .shard_ids()
            .map(|s| (s, ShardRecord { replicas: map.replicas(s).to_vec(), config_epoch: 1 }))
            .collect();
        shards.insert(
            META_SHARD,
            ShardRecord {
                replicas: crate::cluster::initial_meta_replicas(&specs),
                config_epoch: 1,
            },
        );
        ClusterState {
            version: 1,
            epoch: 1,
            cluster: ClusterRecord {
                cluster_id: 1,
                layout,
                next_node_id: nodes + 1,
                created_unix_ms: 0,
            },
            nodes: (1..=nodes).map(|id| (id, node(id, NodeState::Up, ""))).collect(),
            shards,
            moves: BTreeMap::new(),
            revisions: BTreeMap::<MetaKey, u64>::new(),
        }
    }

    /// Runs the planner to completion, applying each planned move at once.
    fn settle(s: &mut ClusterState, live: &dyn Fn(NodeId) -> bool) -> usize {
        let mut moves = 0;
        for _ in 0..10_000 {
            let planned = plan(s, live, Limits { moves_max: 1_000, moves_per_node_max: 1_000 }, 0);
            if planned.is_empty() {
                return moves;
            }
            for (shard, mv) in planned {
                let rec = s.shards.get_mut(&shard).unwrap();
                rec.replicas = mv.apply_to(&rec.replicas);
                rec.config_epoch += 1;
                moves += 1;
            }
        }
        panic!("the planner did not settle");
    }

    #[test]
    fn meta_size_is_odd_and_capped() {
        let sizes: Vec<usize> = (0..8).map(meta_size).collect();
        assert_eq!(sizes, [0, 1, 1, 3, 3, 5, 5, 5]);
    }

    #[test]
    fn a_settled_cluster_plans_nothing() {
        let s = state(3, 3, 16);
        assert!(plan(&s, &|_| true, Limits::default(), 0).is_empty());
    }

    #[test]
    fn growing_ends_on_the_placement_of_the_larger_cluster() {
        let mut s = state(5, 3, 32);
        let moves = settle(&mut s, &|_| true);
        let layout = s.cluster.layout;
        let specs: Vec<crate::NodeSpec> =
            (1..=5).map(|id| crate::NodeSpec { id, addr: format!("h{id}:1"), weight: 1 }).collect();
        let five = ShardMap::new(layout, specs, 1).unwrap();
        for shard in 0..32 {
            let got: BTreeSet<_> = s.replicas(shard).iter().collect();
            let want: BTreeSet<_> = five.replicas(shard).iter().collect();
            assert_eq!(got, want, "shard {shard}");
        }
        assert_eq!(s.meta_replicas().len(), 5);
        // Consistent hashing: each changed shard gained at most two replicas on the new
        // nodes; far fewer moves than re-placing everything (32 shards x 3 replicas).
        assert!(moves < 40, "{moves} moves");
    }

    #[test]
    fn draining_moves_every_replica_off_and_respects_the_limits() {
        let mut s = state(4, 4, 16);
        s.nodes.get_mut(&4).unwrap().state = NodeState::Draining;
        let planned = plan(&s, &|_| true, Limits { moves_max: 3, moves_per_node_max: 2 }, 0);
        assert!(planned.len() <= 3);
        let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (_, m) in &planned {
            for n in m.add.iter().chain(m.remove.iter()) {
                *per_node.entry(*n).or_default() += 1;
            }
            assert_eq!(m.remove, Some(4), "healing moves (off the draining node) go first");
        }
        assert!(per_node.values().all(|&c| c <= 2), "{per_node:?}");
        settle(&mut s, &|_| true);
        assert_eq!(s.replica_counts()[&4], 0);
    }

    #[test]
    fn too_few_up_nodes_leaves_shards_where_they_are() {
        let mut s = state(3, 3, 8);
        s.nodes.get_mut(&3).unwrap().state = NodeState::Down;
        let planned = plan(&s, &|n| n != 3, Limits::default(), 0);
        // Data shards cannot be placed on 2 nodes with RF 3; the meta group shrinks to one.
        assert!(planned.iter().all(|(s, _)| *s == META_SHARD), "{planned:?}");
    }

    #[test]
    fn zones_spread_replicas() {
        let c: Vec<Candidate> =
            (1..=6).map(|id| Candidate { id, weight: 1, zone: format!("z{}", id % 3) }).collect();
        for shard in 0..50 {
            let r = target_replicas(&c, shard, 3);
            let zones: BTreeSet<u64> = r.iter().map(|id| id % 3).collect();
            assert_eq!(zones.len(), 3, "shard {shard}: {r:?}");
        }
        // Fewer zones than replicas: still RF distinct nodes.
        let two: Vec<Candidate> =
            (1..=4).map(|id| Candidate { id, weight: 1, zone: format!("z{}", id % 2) }).collect();
        let r = target_replicas(&two, 7, 3);
        assert_eq!(r.iter().collect::<BTreeSet<_>>().len(), 3);
    }

    fn mv(add: Option<NodeId>, remove: Option<NodeId>) -> MoveRecord {
        MoveRecord { add, remove, from_epoch: 1, started_unix_ms: 0, aborting: false }
    }

    fn view(leader: NodeId, voters: &[&[NodeId]], learners: &[NodeId]) -> GroupView {
        GroupView {
            leader,
            voters: voters.iter().map(|v| v.iter().copied().collect()).collect(),
            learners: learners.iter().copied().collect(),
            last_log_index: 100,
            matched: [(1, 100), (2, 100), (3, 100), (4, 99)].into_iter().collect(),
            membership_index: 1,
        }
    }

    #[test]
    fn steps_of_a_replacement_in_order() {
        let all = |_| true;
        let m = mv(Some(4), Some(1));
        let set = |v: &[NodeId]| v.iter().copied().collect::<BTreeSet<_>>();
        assert_eq!(
            next_step(&[1, 2, 3], &m, &view(2, &[&[1, 2, 3]], &[]), 8, &all),
            Step::AddLearner(4)
        );
        let mut lagging = view(2, &[&[1, 2, 3]], &[4]);
        lagging.matched.insert(4, 10);
        assert_eq!(
            next_step(&[1, 2, 3], &m, &lagging, 8, &all),
            Step::WaitCatchUp { node: 4, behind: 90 }
        );
        // Caught up; the leader stays: change the voters.
        assert_eq!(
            next_step(&[1, 2, 3], &m, &view(2, &[&[1, 2, 3]], &[4]), 8, &all),
            Step::ChangeVoters(set(&[2, 3, 4]))
        );
        // The leaving node leads: hand leadership to a staying voter first.
        assert_eq!(
            next_step(&[1, 2, 3], &m, &view(1, &[&[1, 2, 3]], &[4]), 8, &all),
            Step::TransferLeader { to: 2 }
        );
        // Left joint by a crash: finish it.
        assert_eq!(
            next_step(&[1, 2, 3], &m, &view(2, &[&[1, 2, 3], &[2, 3, 4]], &[]), 8, &all),
            Step::ChangeVoters(set(&[2, 3, 4]))
        );
        assert_eq!(
            next_step(&[1, 2, 3], &m, &view(2, &[&[2, 3, 4]], &[]), 8, &all),
            Step::Record(vec![4, 2, 3])
        );
    }

    #[test]
    fn aborting_removes_the_learner_but_never_undoes_a_voter_change() {
        let all = |_| true;
        let mut m = mv(Some(4), Some(1));
        m.aborting = true;
        assert_eq!(
            next_step(&[1, 2, 3], &m, &view(2, &[&[1, 2, 3]], &[4]), 8, &all),
            Step::RemoveLearner(4)
        );
        assert_eq!(next_step(&[1, 2, 3], &m, &view(2, &[&[1, 2, 3]], &[]), 8, &all), Step::Drop);
        // Too late: the change committed; record what Raft has.
        assert_eq!(
            next_step(&[1, 2, 3], &m, &view(2, &[&[2, 3, 4]], &[]), 8, &all),
            Step::Record(vec![2, 3, 4])
        );
    }

    proptest! {
        /// Whatever the up/down pattern, a settled plan puts every shard on its target, with
        /// RF distinct up nodes, and never plans a move for a shard that has one.
        #[test]
        fn plans_converge(nodes in 3u64..9, down_mask in 0u16..512, shards in 1u32..24) {
            let mut s = state(nodes, 3, shards);
            for id in 1..=nodes {
                if down_mask & (1 << id) != 0 {
                    s.nodes.get_mut(&id).unwrap().state = NodeState::Down;
                }
            }
            let up = s.up_nodes().count();
            let before = s.clone();
            settle(&mut s, &|n| before.node(n).is_some_and(|r| r.state == NodeState::Up));
            let targets = Targets::new(&s);
            for shard in s.shard_ids_with_meta() {
                let r = s.replicas(shard);
                let distinct: BTreeSet<_> = r.iter().collect();
                prop_assert_eq!(distinct.len(), r.len());
                if let Some(t) = targets.of(shard) {
                    prop_assert_eq!(distinct, t.iter().collect::<BTreeSet<_>>());
                } else {
                    prop_assert!(up < 3 || shard == META_SHARD);
                }
            }
        }
    }
}
