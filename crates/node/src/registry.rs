//! The shards this node holds, and the shard map they were placed by.
//!
//! Built once at start-up (the set of shards is fixed by the layout) and shared by every
//! service. Looking a shard up is a hash-map read, no lock.

use crate::error::NodeError;
use crate::shard::Shard;
use ringkv_placement::{NodeId, ShardId, ShardMap};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct ShardRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node_id: NodeId,
    map: ShardMap,
    shards: HashMap<ShardId, Arc<Shard>>,
}

impl ShardRegistry {
    pub fn new(node_id: NodeId, map: ShardMap, shards: impl IntoIterator<Item = Shard>) -> Self {
        let shards = shards.into_iter().map(|s| (s.id, Arc::new(s))).collect();
        ShardRegistry { inner: Arc::new(Inner { node_id, map, shards }) }
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub fn map(&self) -> &ShardMap {
        &self.inner.map
    }

    /// The local replica of `shard`, or `WrongShard`.
    pub fn shard(&self, shard: ShardId) -> Result<Arc<Shard>, NodeError> {
        self.inner
            .shards
            .get(&shard)
            .cloned()
            .ok_or(NodeError::WrongShard { shard, epoch: self.inner.map.epoch() })
    }

    /// The local replica of the shard that owns `key`.
    pub fn shard_for_key(&self, key: &[u8]) -> Result<Arc<Shard>, NodeError> {
        self.shard(self.inner.map.shard_of(key))
    }

    /// For the Raft transport: errors are plain strings sent back to the peer.
    pub fn raft(&self, shard: ShardId) -> Result<Arc<Shard>, String> {
        self.shard(shard).map_err(|e| e.to_string())
    }

    /// Local shards in id order.
    pub fn shards(&self) -> Vec<Arc<Shard>> {
        let mut v: Vec<_> = self.inner.shards.values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }
}
