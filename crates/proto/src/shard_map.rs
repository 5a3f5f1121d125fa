//! A shard map's wire form (`Admin.GetShardMap`) and back.
//!
//! Both ends of the API need it: a node answers with its map, and the routing core, the
//! client and the CLI read it. It lives here, beside the types it converts, so that no layer
//! depends on a layer above it for it.

use crate::v1::ShardMap as ProtoMap;
use ringkv_placement::{Layout, NodeSpec, ShardMap};

/// The wire form of a shard map (what `Admin.GetShardMap` returns; the node sets the
/// cluster id and the nodes' names and states).
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
            .map(|n| crate::v1::NodeInfo {
                id: n.id,
                addr: n.addr.clone(),
                weight: n.weight,
                ..Default::default()
            })
            .collect(),
        shards: map
            .shard_ids()
            .map(|s| crate::v1::ShardPlacement { shard_id: s, replicas: map.replicas(s).to_vec() })
            .collect(),
        cluster_id: 0,
    }
}

/// Builds the map from a node's answer. Replica sets are the cluster's own (they differ from
/// the placement function's while replicas move, so they are taken as given); what is checked
/// is that the map is whole: a valid layout, one set per shard, every replica's address known.
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
    let mut replicas = vec![Vec::new(); p.shard_count as usize];
    for s in &p.shards {
        let slot = usize::try_from(s.shard_id).ok().and_then(|i| replicas.get_mut(i)).ok_or_else(
            || {
                format!(
                    "the cluster's map names shard {}, beyond its {} shards",
                    s.shard_id, p.shard_count
                )
            },
        )?;
        *slot = s.replicas.clone();
    }
    ShardMap::with_replicas(layout, nodes, replicas, p.epoch)
        .map_err(|e| format!("shard map from the cluster is invalid: {e}"))
}
