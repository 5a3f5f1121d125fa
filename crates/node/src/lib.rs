//! The ringkv storage node.
//!
//! A node process holds one replica of many shards. Each shard is its own Raft group
//! (openraft), all of them sharing one RocksDB, one WAL fsync thread and one gRPC server:
//!
//! ```text
//!            gRPC :7001 ──┬── ringkv.v1.KV ────────┐
//!                         ├── ringkv.v1.Streams ───┤  topic/partition ─▶ shard
//!                         ├── ringkv.v1.Admin      │  key ─▶ shard (placement)
//!                         ├── internal Membership (join, sync, moves)
//!                         └── internal Raft ◀──┐   ▼
//!                                              │  ShardRegistry ─▶ Shard { Raft group }
//!            peers ◀── PeerPool (1 channel/node)┘         │
//!                                                        ▼
//!                                    NodeStorage: RocksDB (log, state, kv) + WAL syncer
//! ```
//!
//! Membership: [`identity`] (what the data directory says about the node), [`discovery`]
//! (how an empty node finds or founds its cluster), [`meta`] (the meta group's records),
//! [`sync`] (following them, creating and destroying local replicas), [`driver`] (the
//! placement driver on the meta leader), [`membership_service`] (the node-to-node RPCs),
//! [`bootstrap`] (a founded cluster's first memberships), [`incoming`] (one listener, two
//! servers), [`peer_addr`] (the optional port of its own for peer traffic).
//!
//! Modules: [`config`] (TOML/env/flags), [`node`] (start-up and shutdown), [`registry`] and
//! [`shard`] (local replicas and their read/write paths), [`read_barrier`] (sharing ReadIndex
//! rounds among concurrent reads), [`read_pool`] (RocksDB reads off the async runtime,
//! bounded), [`kv_service`] and
//! [`admin_service`] (the public API), [`raft_service`] and [`network`] (the Raft transport),
//! [`streams_service`] (event streams and watch, shard level), [`retention`] (trimming events
//! and watch history through Raft), [`balancer`] (spreading leaderships), [`error`] (the one
//! error-to-status table), [`admission`] (shedding client load beyond the node's limits),
//! [`validate`] and [`validate_events`] (input limits), [`metrics`] and [`http`]
//! (observability), [`wire`] (payload encoding).

pub mod admin_service;
pub mod admission;
pub mod balancer;
pub mod bootstrap;
pub mod config;
pub mod discovery;
pub mod driver;
pub mod error;
pub mod frames;
pub mod freshness;
pub mod handoff;
pub mod health;
pub mod http;
pub mod identity;
pub mod incoming;
pub mod kv_service;
pub mod leader_clock;
pub mod membership_service;
pub mod meta;
pub mod metrics;
pub mod network;
pub mod node;
pub mod packed_server;
pub mod packer;
pub mod peer_addr;
pub mod quiesce;
pub mod raft_service;
pub mod read_barrier;
pub mod read_pool;
pub mod registry;
pub mod retention;
pub mod shard;
pub mod streams_service;
pub mod sync;
pub mod transport;
pub mod validate;
pub mod validate_events;
pub mod wire;

pub use config::{Args, NodeConfig};
pub use error::NodeError;
pub use node::{NodeHandle, StartError, start};
