//! The routing core's view of the cluster: the shard map (pulled from the nodes, versioned by
//! epoch) and which node leads each shard (learned from answers).

use ringkv_placement::{Layout, NodeId, NodeSpec, ShardId, ShardMap};
use ringkv_proto::v1::ShardMap as ProtoMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// The wire form of a shard map (what `Admin.GetShardMap` returns).
pub fn map_to_proto(map: &ShardMap) -> ProtoMap {
    let layout = map.layout();
    ProtoMap {
        epoch: map.epoch(),
        shard_count: layout.shard_count,
        replication_factor: layout.replication_factor,
        vnodes_per_shard: layout.vnodes_per_shard,
        nodes: map
            .nodes()
            .iter()
            .map(|n| ringkv_proto::v1::NodeInfo {
                id: n.id,
                addr: n.addr.clone(),
                weight: n.weight,
            })
            .collect(),
        shards: map
            .shard_ids()
            .map(|s| ringkv_proto::v1::ShardPlacement {
                shard_id: s,
                replicas: map.replicas(s).to_vec(),
            })
            .collect(),
    }
}

/// Builds the placement map from a node's answer and checks that both agree on every shard's
/// replicas, so client and cluster can never route by different rules.
pub fn map_from_proto(p: &ProtoMap) -> Result<ShardMap, String> {
    let layout = Layout {
        shard_count: p.shard_count,
        replication_factor: p.replication_factor,
        vnodes_per_shard: p.vnodes_per_shard,
    };
    let nodes = p
        .nodes
        .iter()
        .map(|n| NodeSpec { id: n.id, addr: n.addr.clone(), weight: n.weight.max(1) })
        .collect();
    let map = ShardMap::new(layout, nodes, p.epoch)
        .map_err(|e| format!("shard map from the cluster is invalid: {e}"))?;
    for s in &p.shards {
        if map.replicas(s.shard_id) != s.replicas.as_slice() {
            return Err(format!(
                "shard {} has replicas {:?} in the cluster's map but {:?} by this client's placement code; \
                 client and cluster versions disagree",
                s.shard_id,
                s.replicas,
                map.replicas(s.shard_id)
            ));
        }
    }
    Ok(map)
}

#[derive(Debug, Default)]
pub struct Topology {
    map: RwLock<Option<Arc<ShardMap>>>,
    leaders: Mutex<HashMap<ShardId, NodeId>>,
}

impl Topology {
    pub fn map(&self) -> Option<Arc<ShardMap>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs `map` unless the current one is newer. Returns whether it was installed.
    pub fn install(&self, map: ShardMap) -> bool {
        let mut cur = self.map.write().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|c| c.epoch() > map.epoch()) {
            return false;
        }
        let changed = cur.as_ref().is_none_or(|c| c.epoch() != map.epoch());
        *cur = Some(Arc::new(map));
        if changed {
            self.leaders.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        true
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

    #[test]
    fn proto_roundtrip_and_disagreement_is_caught() {
        let nodes =
            (1..=4).map(|id| NodeSpec { id, addr: format!("n{id}:1"), weight: 1 }).collect();
        let layout = Layout { shard_count: 8, replication_factor: 3, vnodes_per_shard: 64 };
        let map = ShardMap::new(layout, nodes, 3).unwrap();
        let mut p = map_to_proto(&map);
        let back = map_from_proto(&p).unwrap();
        assert_eq!(back.epoch(), 3);
        assert!(map.shard_ids().all(|s| back.replicas(s) == map.replicas(s)));
        p.shards[2].replicas.reverse();
        assert!(map_from_proto(&p).unwrap_err().contains("disagree"));
    }
}
