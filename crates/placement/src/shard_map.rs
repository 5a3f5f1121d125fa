//! The shard map: the whole placement of a cluster at one epoch.
//!
//! A map is a pure function of its [`Layout`], its node list and its epoch, so every node
//! builds the same map from the same configuration without talking to the others. The epoch
//! starts at 1 and is bumped by whatever changes the placement; clients compare epochs to
//! notice that their cached routes are out of date.

use crate::{KeyRing, NodeId, PlacementError, ReplicaRing, ShardId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Largest shard count: each shard is a Raft group with its own timers and tasks.
pub const SHARD_COUNT_MAX: u32 = 4096;
/// Largest replication factor: beyond 7 replicas every write waits on a quorum of 4+.
pub const REPLICATION_FACTOR_MAX: u32 = 7;
/// Largest number of key-ring points per shard (the ring is shard_count * vnodes entries).
pub const VNODES_PER_SHARD_MAX: u32 = 4096;
/// Largest node weight (relative share of replicas).
pub const WEIGHT_MAX: u32 = 100;
/// Default key-ring points per shard: keeps max/mean keys per shard under 1.25.
pub const VNODES_PER_SHARD_DEFAULT: u32 = 256;

/// How keys are cut into shards and shards into replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub shard_count: u32,
    pub replication_factor: u32,
    pub vnodes_per_shard: u32,
}

/// A member node: its id, gRPC address and relative weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub id: NodeId,
    pub addr: String,
    pub weight: u32,
}

/// The placement of every shard at one epoch.
#[derive(Debug)]
pub struct ShardMap {
    epoch: u64,
    layout: Layout,
    nodes: Vec<NodeSpec>,
    replicas: Vec<Vec<NodeId>>,
    preferred_leaders: Vec<NodeId>,
    key_ring: KeyRing,
}

impl ShardMap {
    /// Validates the configuration and computes every shard's replicas.
    pub fn new(layout: Layout, nodes: Vec<NodeSpec>, epoch: u64) -> Result<Self, PlacementError> {
        check_layout(layout)?;
        let Layout { shard_count, replication_factor: rf, .. } = layout;
        let mut seen = BTreeSet::new();
        for n in &nodes {
            if n.id == 0 {
                return Err(PlacementError::ZeroNodeId);
            }
            if !seen.insert(n.id) {
                return Err(PlacementError::DuplicateNode(n.id));
            }
            if !(1..=WEIGHT_MAX).contains(&n.weight) {
                return Err(PlacementError::Weight { id: n.id, weight: n.weight, max: WEIGHT_MAX });
            }
        }
        if nodes.len() < rf as usize {
            return Err(PlacementError::TooFewNodes { rf, nodes: nodes.len() });
        }
        let ring = ReplicaRing::new(nodes.iter().map(|n| (n.id, n.weight)));
        let replicas: Vec<Vec<NodeId>> =
            (0..u64::from(shard_count)).map(|s| ring.replicas(s, rf)).collect();
        Self::with_replicas(layout, nodes, replicas, epoch)
    }

    /// A map with explicit replica sets (as the meta group records them, which differ from the
    /// placement function's while replicas move). A shard may have no known replicas (a map
    /// not yet heard from the meta group); every named replica must be among `nodes`.
    pub fn with_replicas(
        layout: Layout,
        mut nodes: Vec<NodeSpec>,
        replicas: Vec<Vec<NodeId>>,
        epoch: u64,
    ) -> Result<Self, PlacementError> {
        check_layout(layout)?;
        nodes.sort_by_key(|n| n.id);
        nodes.dedup_by_key(|n| n.id);
        if replicas.len() != layout.shard_count as usize {
            return Err(PlacementError::ReplicaSets {
                got: replicas.len(),
                shards: layout.shard_count,
            });
        }
        for (shard, set) in replicas.iter().enumerate() {
            for (i, r) in set.iter().enumerate() {
                if nodes.binary_search_by_key(r, |n| n.id).is_err() {
                    return Err(PlacementError::UnknownReplica { shard: shard as u64, node: *r });
                }
                if set[..i].contains(r) {
                    return Err(PlacementError::DuplicateReplica { shard: shard as u64, node: *r });
                }
            }
        }
        let preferred_leaders = balance_leaders(&replicas);
        Ok(ShardMap {
            epoch,
            layout,
            nodes,
            replicas,
            preferred_leaders,
            key_ring: KeyRing::new(layout.shard_count, layout.vnodes_per_shard),
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Member nodes, sorted by id.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn shard_ids(&self) -> impl Iterator<Item = ShardId> + '_ {
        0..u64::from(self.layout.shard_count)
    }

    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        self.key_ring.shard_of(key)
    }

    /// The replicas of `shard`, or an empty slice for a shard id outside the map.
    pub fn replicas(&self, shard: ShardId) -> &[NodeId] {
        usize::try_from(shard).ok().and_then(|i| self.replicas.get(i)).map_or(&[], |v| v)
    }

    /// The replica that should lead `shard` when it is healthy: leaderships are spread so that
    /// every node leads as evenly as its replicas allow (see [`balance_leaders`]).
    pub fn preferred_leader(&self, shard: ShardId) -> Option<NodeId> {
        usize::try_from(shard).ok().and_then(|i| self.preferred_leaders.get(i)).copied()
    }

    /// The shards that `node` holds a replica of.
    pub fn shards_of_node(&self, node: NodeId) -> Vec<ShardId> {
        self.shard_ids().filter(|&s| self.replicas(s).contains(&node)).collect()
    }
}

fn check_layout(layout: Layout) -> Result<(), PlacementError> {
    let Layout { shard_count, replication_factor: rf, vnodes_per_shard } = layout;
    if !(1..=SHARD_COUNT_MAX).contains(&shard_count) {
        return Err(PlacementError::ShardCount { got: shard_count, max: SHARD_COUNT_MAX });
    }
    if !(1..=REPLICATION_FACTOR_MAX).contains(&rf) {
        return Err(PlacementError::ReplicationFactor { got: rf, max: REPLICATION_FACTOR_MAX });
    }
    if !(1..=VNODES_PER_SHARD_MAX).contains(&vnodes_per_shard) {
        return Err(PlacementError::Vnodes { got: vnodes_per_shard, max: VNODES_PER_SHARD_MAX });
    }
    Ok(())
}

/// Picks one leader per shard among its replicas so that leaderships are spread evenly: shards
/// in id order each take the replica that leads the fewest shards so far (ties: placement
/// order). Greedy, deterministic, and exact when every shard is on every node (each node then
/// leads within one of every other).
pub fn balance_leaders(replicas: &[Vec<NodeId>]) -> Vec<NodeId> {
    let mut led: std::collections::HashMap<NodeId, usize> = std::collections::HashMap::new();
    replicas
        .iter()
        .map(|set| {
            let best =
                set.iter().copied().min_by_key(|n| led.get(n).copied().unwrap_or(0)).unwrap_or(0);
            *led.entry(best).or_default() += 1;
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> Vec<NodeSpec> {
        (1..=n)
            .map(|id| NodeSpec { id, addr: format!("127.0.0.1:{}", 7000 + id), weight: 1 })
            .collect()
    }

    fn layout(shards: u32, rf: u32) -> Layout {
        Layout { shard_count: shards, replication_factor: rf, vnodes_per_shard: 256 }
    }

    #[test]
    fn rejects_bad_configurations_with_the_offending_value() {
        let e = ShardMap::new(layout(0, 3), nodes(3), 1).unwrap_err();
        assert_eq!(e, PlacementError::ShardCount { got: 0, max: SHARD_COUNT_MAX });
        let e = ShardMap::new(layout(8, 3), nodes(2), 1).unwrap_err();
        assert_eq!(e, PlacementError::TooFewNodes { rf: 3, nodes: 2 });
        let mut dup = nodes(3);
        dup[2].id = 1;
        assert_eq!(
            ShardMap::new(layout(8, 1), dup, 1).unwrap_err(),
            PlacementError::DuplicateNode(1)
        );
        let mut zero = nodes(3);
        zero[0].id = 0;
        assert_eq!(ShardMap::new(layout(8, 1), zero, 1).unwrap_err(), PlacementError::ZeroNodeId);
        assert!(matches!(
            ShardMap::new(layout(8, 8), nodes(9), 1),
            Err(PlacementError::ReplicationFactor { got: 8, .. })
        ));
    }

    #[test]
    fn same_config_same_map_whatever_the_node_order() {
        let a = ShardMap::new(layout(16, 3), nodes(5), 1).unwrap();
        let mut rev = nodes(5);
        rev.reverse();
        let b = ShardMap::new(layout(16, 3), rev, 1).unwrap();
        for s in a.shard_ids() {
            assert_eq!(a.replicas(s), b.replicas(s));
            assert_eq!(a.replicas(s).len(), 3);
        }
        assert_eq!(a.shard_of(b"k"), b.shard_of(b"k"));
    }

    #[test]
    fn preferred_leaders_are_replicas_and_spread_evenly() {
        let m = ShardMap::new(layout(8, 3), nodes(3), 1).unwrap();
        let mut led = [0usize; 4];
        for s in m.shard_ids() {
            let l = m.preferred_leader(s).unwrap();
            assert!(m.replicas(s).contains(&l));
            led[l as usize] += 1;
        }
        let (max, min) = (led[1..].iter().max().unwrap(), led[1..].iter().min().unwrap());
        assert!(max - min <= 1, "leaders per node {:?}", &led[1..]);
        // Partial replication: every node that holds replicas leads some shard.
        let m = ShardMap::new(layout(64, 3), nodes(7), 1).unwrap();
        for n in 1..=7 {
            let leads = m.shard_ids().filter(|&s| m.preferred_leader(s) == Some(n)).count();
            assert!((6..=13).contains(&leads), "node {n} leads {leads} of 64 shards");
        }
    }

    #[test]
    fn explicit_replica_sets_are_checked() {
        let l = layout(2, 3);
        let m = ShardMap::with_replicas(l, nodes(4), vec![vec![4, 2, 1], vec![]], 9).unwrap();
        assert_eq!(m.replicas(0), [4, 2, 1]);
        assert!(m.replicas(1).is_empty());
        assert_eq!(m.epoch(), 9);
        assert!(m.replicas(0).contains(&m.preferred_leader(0).unwrap()));
        assert_eq!(
            ShardMap::with_replicas(l, nodes(3), vec![vec![1, 5], vec![1]], 1).unwrap_err(),
            PlacementError::UnknownReplica { shard: 0, node: 5 }
        );
        assert_eq!(
            ShardMap::with_replicas(l, nodes(3), vec![vec![1], vec![2, 2]], 1).unwrap_err(),
            PlacementError::DuplicateReplica { shard: 1, node: 2 }
        );
        assert!(matches!(
            ShardMap::with_replicas(l, nodes(3), vec![vec![1]], 1),
            Err(PlacementError::ReplicaSets { got: 1, shards: 2 })
        ));
    }

    #[test]
    fn rf_equal_to_nodes_puts_every_shard_everywhere() {
        let m = ShardMap::new(layout(8, 3), nodes(3), 1).unwrap();
        for n in 1..=3 {
            assert_eq!(m.shards_of_node(n).len(), 8);
        }
        assert!(m.replicas(8).is_empty());
    }
}
