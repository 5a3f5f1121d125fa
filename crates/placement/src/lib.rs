//! Placement: where a key lives, and which nodes hold it.
//!
//! ringkv spreads keys over a fixed number of *shards*, and each shard over *RF* nodes (its
//! replicas, one Raft group). Both steps use consistent hashing, so that changing the set of
//! shards or nodes moves only a small, predictable fraction of the data:
//!
//! ```text
//!   key ──hash──▶ key ring (vnodes of shards) ──▶ shard ──▶ node ring (vnodes of nodes) ──▶ RF nodes
//! ```
//!
//! - [`KeyRing`] maps a key to a shard: every shard owns `vnodes_per_shard` points on a ring,
//!   and a key belongs to the first point at or after its hash. Many points per shard even out
//!   the arcs, so shards get similar numbers of keys.
//! - [`ReplicaRing`] maps a shard to RF distinct nodes: every node owns points in proportion
//!   to its weight, and a shard's replicas are the first RF distinct nodes walking the ring
//!   from the shard's hash. Adding a node inserts it into some shards' walks; each such shard
//!   moves exactly one replica, to the new node, and no replica moves between old nodes.
//! - [`ShardMap`] puts both together with an *epoch* that versions the placement, so a
//!   client with an older map can tell its routes are stale.
//!
//! - [`cluster`] is the cluster as the meta group records it (nodes, replica sets, moves), and
//!   [`planner`] the placement driver's decisions over it: the target replica sets, the moves
//!   towards them, and each move's next step.
//!
//! Everything here is pure and deterministic: no I/O, no clocks, no randomness. The hash is
//! SipHash-1-3 with zero keys (the `consistent_hash` crate's default) fed with explicitly
//! little-endian bytes ([`hash`]), so the same key maps to the same shard on every build and
//! platform; test vectors in this crate pin that down.

pub mod cluster;
pub mod error;
pub mod hash;
pub mod key_ring;
pub mod planner;
pub mod replica_ring;
pub mod shard_map;
pub mod topics;

pub use error::PlacementError;
pub use key_ring::KeyRing;
pub use replica_ring::ReplicaRing;
pub use shard_map::{Layout, NodeSpec, ShardMap};
pub use topics::{CATALOG_KEY, check_topic_name, partition_key};

/// A node's id, unique in a cluster, never 0 (0 reads as "unknown" on the wire).
pub type NodeId = u64;
/// A shard's id: `0..shard_count`.
pub type ShardId = u64;
