//! The routing core's view of the cluster: the shard map (pulled from the nodes, versioned by
//! epoch) and which node leads each shard (learned from answers).

use ringkv_placement::{NodeId, ShardId, ShardMap};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

pub use ringkv_proto::shard_map::{map_from_proto, map_to_proto};

#[derive(Debug, Default)]
pub struct Topology {
    map: RwLock<Option<Arc<ShardMap>>>,
    /// The cluster the first map came from (0: unknown, an older node that does not say).
    cluster_id: Mutex<u64>,
    leaders: Mutex<HashMap<ShardId, NodeId>>,
}

impl Topology {
    pub fn map(&self) -> Option<Arc<ShardMap>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs `map` of `cluster_id` unless the current one is newer. Returns whether it was
    /// installed; a map of another cluster than the first one's is an error (a seed list that
    /// mixes clusters would otherwise route some keys to the wrong cluster).
    pub fn install(&self, map: ShardMap, cluster_id: u64) -> Result<bool, String> {
        {
            let mut known = self.cluster_id.lock().unwrap_or_else(|p| p.into_inner());
            if *known != 0 && cluster_id != 0 && *known != cluster_id {
                return Err(format!(
                    "this map is of cluster {cluster_id:#x}, but the client follows cluster {:#x}",
                    *known
                ));
            }
            if cluster_id != 0 {
                *known = cluster_id;
            }
        }
        let mut cur = self.map.write().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|c| c.epoch() > map.epoch()) {
            return Ok(false);
        }
        let changed = cur.as_ref().is_none_or(|c| c.epoch() != map.epoch());
        *cur = Some(Arc::new(map));
        if changed {
            self.leaders.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        Ok(true)
    }

    /// The cluster this topology follows (0 until a map said).
    pub fn cluster_id(&self) -> u64 {
        *self.cluster_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn leader(&self, shard: ShardId) -> Option<NodeId> {
        self.leaders.lock().unwrap_or_else(|p| p.into_inner()).get(&shard).copied()
    }

    pub fn set_leader(&self, shard: ShardId, node: NodeId) {
        self.leaders.lock().unwrap_or_else(|p| p.into_inner()).insert(shard, node);
    }

    pub fn forget_leader(&self, shard: ShardId, node: NodeId) {
        let mut l = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        if l.get(&shard) == Some(&node) {
            l.remove(&shard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_placement::{Layout, NodeSpec};

    #[test]
    fn proto_roundtrip_keeps_the_clusters_replica_sets() {
        let nodes: Vec<NodeSpec> =
            (1..=4).map(|id| NodeSpec { id, addr: format!("n{id}:1"), weight: 1 }).collect();
        let layout = Layout { shard_count: 8, replication_factor: 3, vnodes_per_shard: 64 };
        let map = ShardMap::new(layout, nodes, 3).unwrap();
        let mut p = map_to_proto(&map);
        let back = map_from_proto(&p).unwrap();
        assert_eq!(back.epoch(), 3);
        assert!(map.shard_ids().all(|s| back.replicas(s) == map.replicas(s)));
        // Mid-move sets differ from the placement function's: taken as the cluster says.
        p.shards[2].replicas = vec![4, 1];
        assert_eq!(map_from_proto(&p).unwrap().replicas(2), [4, 1]);
        p.shards[2].replicas = vec![9];
        assert!(map_from_proto(&p).unwrap_err().contains("node 9"));
        p.shards[2].shard_id = 99;
        assert!(map_from_proto(&p).unwrap_err().contains("beyond"));
    }

    #[test]
    fn a_map_of_another_cluster_is_refused() {
        let nodes: Vec<NodeSpec> =
            (1..=3).map(|id| NodeSpec { id, addr: format!("n{id}:1"), weight: 1 }).collect();
        let layout = Layout { shard_count: 2, replication_factor: 3, vnodes_per_shard: 8 };
        let t = Topology::default();
        assert!(t.install(ShardMap::new(layout, nodes.clone(), 2).unwrap(), 7).unwrap());
        assert!(t.install(ShardMap::new(layout, nodes.clone(), 3).unwrap(), 8).is_err());
        assert_eq!(t.map().unwrap().epoch(), 2);
        assert!(!t.install(ShardMap::new(layout, nodes, 1).unwrap(), 7).unwrap(), "older epoch");
    }
}
