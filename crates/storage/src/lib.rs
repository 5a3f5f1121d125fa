//! ringkv's storage: the Raft logs and state machines of every shard on a node, in one
//! RocksDB.
//!
//! The pieces, bottom-up:
//! - [`keys`]: the layout: a few column families, every key prefixed by its shard id.
//! - [`codec`]: framed records with a CRC32, checked on every read.
//! - [`wal_syncer`]: group commit. Writes go to RocksDB unsynced; one thread fsyncs the WAL
//!   for all shards at once and only then tells openraft the entries are durable.
//! - [`log_store`]: openraft's `RaftLogStorage` for one shard, with an [`entry_cache`] of its
//!   newest entries (read back by replication and apply without RocksDB).
//! - [`state_machine`]: openraft's `RaftStateMachine` for one shard: the key-value data,
//!   applied atomically with the applied log id; snapshots via [`snapshot`] files; the
//!   [`sessions`] table for at-most-once writes, read through a [`session_cache`].
//! - [`streams`], [`stream_apply`], [`stream_reader`]: event-stream partitions, consumer
//!   offsets and the KV change history (for watch), in the `streams` family.
//! - [`reader`]: reads of applied data for the request handlers.
//! - [`NodeStorage`]: opens the database and hands out per-shard stores.
//! - [`fault`]: storage errors carry whether data is corrupt, by type, through openraft.
//!
//! Every store must pass openraft's storage conformance suite (`tests/conformance.rs`).

pub mod codec;
pub mod command;
mod counted_bytes;
pub mod db;
pub mod entry_cache;
pub mod fault;
pub mod keys;
pub mod log_store;
pub mod metrics;
pub mod node_storage;
pub mod reader;
pub mod session_cache;
pub mod sessions;
pub mod snapshot;
pub mod state_machine;
pub mod stream_apply;
pub mod stream_reader;
pub mod streams;
pub mod type_config;
pub mod wal_syncer;

pub use command::{BatchOp, Command, CommandResult, Expected, Proposal, Session, Versioned};
pub use fault::{Fault, FaultKind};
pub use log_store::ShardLogStore;
pub use metrics::StorageMetrics;
pub use node_storage::NodeStorage;
pub use reader::{ScanPage, ScanRange, ShardChecksum, ShardReader};
pub use snapshot::SnapshotFile;
pub use state_machine::{ShardSnapshot, ShardStateMachine};
pub use type_config::TypeConfig;
pub use wal_syncer::WalSyncer;

/// A shard id (see `ringkv-placement`).
pub type ShardId = u64;
