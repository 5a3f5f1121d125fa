//! Errors of building a placement from a configuration.

use crate::NodeId;

/// Why a placement cannot be built. Every variant names the value that broke the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("shard_count must be between 1 and {max}, got {got}")]
    ShardCount { got: u32, max: u32 },
    #[error("replication_factor must be between 1 and {max}, got {got}")]
    ReplicationFactor { got: u32, max: u32 },
    #[error("replication_factor {rf} needs at least {rf} nodes, but {nodes} are configured")]
    TooFewNodes { rf: u32, nodes: usize },
    #[error("vnodes_per_shard must be between 1 and {max}, got {got}")]
    Vnodes { got: u32, max: u32 },
    #[error("node id {0} appears more than once")]
    DuplicateNode(NodeId),
    #[error("node id 0 is reserved (it means 'unknown' on the wire)")]
    ZeroNodeId,
    #[error("node {id} has weight {weight}; weights must be between 1 and {max}")]
    Weight { id: NodeId, weight: u32, max: u32 },
    #[error("a map needs one replica set per shard: {got} sets for {shards} shards")]
    ReplicaSets { got: usize, shards: u32 },
    #[error("shard {shard} names node {node}, which is not in the map")]
    UnknownReplica { shard: u64, node: NodeId },
    #[error("shard {shard} names node {node} twice")]
    DuplicateReplica { shard: u64, node: NodeId },
}
