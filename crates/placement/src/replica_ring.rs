//! The replica ring: shard -> RF distinct nodes.
//!
//! Each node owns `vnodes_per_weight * weight` points on a ring. A shard hashes to a position
//! and takes the first RF *distinct* nodes found walking clockwise. This is rendezvous-like in
//! effect: when a node joins, it enters the walk of a shard only where one of its points falls
//! before the shard's RF-th distinct node, which happens for about RF/(N+1) of the shards, and
//! then it replaces exactly that shard's last replica. Nothing moves between the old nodes.

use crate::hash::{RingOwner, StableHash, TAG_NODE_VNODE, TAG_SHARD_ITEM, TaggedId};
use crate::{NodeId, ShardId};
use consistent_hash::{Node, StaticHashRing};

/// Points per unit of node weight. 128 keeps the replica counts per node within a few percent
/// of their weight share for realistic shard counts, and the ring tiny.
pub const VNODES_PER_WEIGHT: u32 = 128;

/// Maps shards to replica sets.
pub struct ReplicaRing {
    ring: StaticHashRing<'static, RingOwner, (), StableHash>,
}

impl std::fmt::Debug for ReplicaRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaRing").field("nodes", &self.ring.nodes().len()).finish()
    }
}

impl ReplicaRing {
    /// `nodes` are `(id, weight)`; callers validate ids and weights (see [`crate::ShardMap`]).
    pub fn new(nodes: impl IntoIterator<Item = (NodeId, u32)>) -> Self {
        let nodes = nodes.into_iter().map(|(id, weight)| {
            Node::new(RingOwner { tag: TAG_NODE_VNODE, id })
                .quantity((weight * VNODES_PER_WEIGHT) as usize)
        });
        ReplicaRing { ring: StaticHashRing::new(StableHash, nodes) }
    }

    /// The first `rf` distinct nodes for `shard`, in preference order. Fewer if the ring has
    /// fewer nodes.
    pub fn replicas(&self, shard: ShardId, rf: u32) -> Vec<NodeId> {
        let item = TaggedId { tag: TAG_SHARD_ITEM, id: shard, seq: 0 };
        self.ring.calc_candidates(&item).take(rf as usize).map(|n| n.key.id).collect()
    }

    /// Every node, in `shard`'s preference order (the walk [`Self::replicas`] takes the head
    /// of), for choosers that skip some nodes (zones).
    pub fn candidates(&self, shard: ShardId) -> Vec<NodeId> {
        let item = TaggedId { tag: TAG_SHARD_ITEM, id: shard, seq: 0 };
        self.ring.calc_candidates(&item).map(|n| n.key.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn ring(n: u64) -> ReplicaRing {
        ReplicaRing::new((1..=n).map(|id| (id, 1)))
    }

    #[test]
    fn replicas_are_pinned() {
        let r = ring(5);
        let got: Vec<Vec<NodeId>> = (0..4).map(|s| r.replicas(s, 3)).collect();
        assert_eq!(got, [[3, 2, 5], [2, 5, 3], [2, 5, 4], [5, 1, 2]]);
    }

    proptest! {
        #[test]
        fn replicas_are_distinct_and_deterministic(n in 1u64..40, rf in 1u32..6, shard in 0u64..10_000) {
            let a = ring(n).replicas(shard, rf);
            prop_assert_eq!(a.len(), rf.min(n as u32) as usize);
            let set: BTreeSet<_> = a.iter().collect();
            prop_assert_eq!(set.len(), a.len());
            prop_assert_eq!(a, ring(n).replicas(shard, rf));
        }

        /// Adding one node to N: each shard changes at most one replica, only ever to the new
        /// node, and the fraction of shards that change is at most 2*RF/(N+1) (expected:
        /// RF/(N+1); the factor 2 leaves room for sampling noise with 2,000 shards).
        #[test]
        fn adding_a_node_moves_little(n in 3u64..30, rf in 1u32..4) {
            prop_assume!(u64::from(rf) <= n);
            let before = ring(n);
            let after = ring(n + 1);
            let shards = 2_000u64;
            let mut changed = 0u64;
            for s in 0..shards {
                let b: BTreeSet<_> = before.replicas(s, rf).into_iter().collect();
                let a: BTreeSet<_> = after.replicas(s, rf).into_iter().collect();
                let gained: Vec<_> = a.difference(&b).collect();
                let lost: Vec<_> = b.difference(&a).collect();
                prop_assert!(gained.len() <= 1 && lost.len() == gained.len());
                if let Some(&&g) = gained.first() {
                    prop_assert_eq!(g, n + 1, "a replica moved between old nodes");
                    changed += 1;
                }
            }
            let bound = 2.0 * f64::from(rf) / (n as f64 + 1.0);
            let frac = changed as f64 / shards as f64;
            prop_assert!(frac <= bound, "moved {frac:.3} of shards, bound {bound:.3}");
        }
    }

    #[test]
    fn replica_load_follows_weight() {
        // Node 3 has weight 2; with 3,000 shards x RF 1 it should hold about half of them.
        let r = ReplicaRing::new([(1, 1), (2, 1), (3, 2)]);
        let mut count = [0u32; 4];
        for s in 0..3_000 {
            count[r.replicas(s, 1)[0] as usize] += 1;
        }
        let share = f64::from(count[3]) / 3_000.0;
        assert!((0.42..=0.58).contains(&share), "weight-2 node got {share:.3}");
    }
}
