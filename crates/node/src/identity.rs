//! What a node keeps about itself in its data directory: its identity, the replicas it holds,
//! and the last cluster state it saw.
//!
//! **Identity.** A node belongs to one cluster (a random id made when the cluster was
//! founded) under one node id handed out by that cluster. The id is the node's name in every
//! Raft group it is part of, and Raft's safety rests on each voter remembering its votes and
//! log: so an identity lives and dies with its data directory. A node that starts on an empty
//! directory has no identity, whatever its flags say, and must get a new one (see
//! [`crate::discovery`]); the old one is retired and its replicas re-created elsewhere. The
//! `--node-id` flag or pod name is only a *name* (and, for the founding members, which
//! initial identity to take).
//!
//! **Replicas.** The set of shard groups this node runs, written before a group is created
//! and after one is destroyed, so a restart reopens exactly the groups that may hold votes
//! and data, before it hears from anyone: a shard's quorum may depend on them.
//!
//! **Cluster state.** The last meta records received, so a restarted node serves a shard map
//! and knows where the meta group lives before its first sync.

use ringkv_placement::{Layout, NodeId, NodeSpec, ShardId};
use ringkv_proto::internal::MetaRecord;
use ringkv_storage::NodeStorage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io;

const IDENTITY: &str = "identity";
/// Written by versions before identities existed; such a directory cannot be adopted.
const LEGACY_CLUSTER: &str = "cluster";
const REPLICAS: &str = "replicas";
const CLUSTER_STATE: &str = "cluster_state";

/// This node's place in its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: u64,
    pub node_id: NodeId,
    pub name: String,
    pub layout: Layout,
    /// The founding members, kept by the nodes that founded the cluster: whichever of them
    /// leads the meta group first writes the initial records from them. Empty for nodes that
    /// joined later.
    pub founders: Vec<NodeSpec>,
    /// Only on the founder, while founding: the members that have stored the cluster id (it
    /// never sends a second identity to one of them, even if it later answers empty).
    pub founding_acks: Option<BTreeSet<NodeId>>,
    /// Whether this founding member has initialized its initial groups. Groups are created
    /// with their first membership only then: a replica created later (to be added by a move)
    /// must never invent a membership of its own.
    pub formed: bool,
}

/// Reads the identity; an error for a directory written by a version without identities.
pub fn load(storage: &NodeStorage) -> io::Result<Option<Identity>> {
    if let Some(id) = storage.get_record::<Identity>(IDENTITY)? {
        return Ok(Some(id));
    }
    if storage.has_record(LEGACY_CLUSTER)? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "this data directory was written by a ringkv version without node identities; \
             start on an empty data directory (the node joins the cluster under a new identity)",
        ));
    }
    Ok(None)
}

pub async fn store(storage: &NodeStorage, identity: &Identity) -> io::Result<()> {
    storage.put_record(IDENTITY, identity).await
}

pub fn replicas(storage: &NodeStorage) -> io::Result<BTreeSet<ShardId>> {
    Ok(storage.get_record::<BTreeSet<ShardId>>(REPLICAS)?.unwrap_or_default())
}

pub async fn store_replicas(storage: &NodeStorage, set: &BTreeSet<ShardId>) -> io::Result<()> {
    storage.put_record(REPLICAS, set).await
}

/// A meta record as stored here: key, value, version.
pub type StoredRecord = (Vec<u8>, Vec<u8>, u64);

/// The meta records last received.
pub fn cluster_records(storage: &NodeStorage) -> io::Result<Vec<StoredRecord>> {
    Ok(storage.get_record(CLUSTER_STATE)?.unwrap_or_default())
}

pub async fn store_cluster_records(
    storage: &NodeStorage,
    records: &[MetaRecord],
) -> io::Result<()> {
    let plain: Vec<(&[u8], &[u8], u64)> =
        records.iter().map(|r| (r.key.as_ref(), r.value.as_ref(), r.version)).collect();
    storage.put_record(CLUSTER_STATE, &plain).await
}
