//! The openraft type configuration shared by storage and the node.
//!
//! Node ids are `u64` and a node is known by its gRPC address ([`openraft::BasicNode`]). A
//! shard's Raft group is identified outside openraft: every store, network client and RPC
//! carries the shard id, and openraft itself never needs to know it.

use crate::command::{CommandResult, Proposal};

openraft::declare_raft_types!(
    /// ringkv's openraft types.
    pub TypeConfig:
        D = Proposal,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = openraft_rt_tokio::TokioRuntime,
        ErrorSource = crate::fault::Fault,
);

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type StorageError = openraft::StorageError<TypeConfig>;
