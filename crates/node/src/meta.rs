//! The meta group as seen from a node that holds one of its replicas: reading its records and
//! proposing changes to them.
//!
//! The meta group is an ordinary shard group (same storage, snapshots, transport) whose
//! key-value space holds the cluster's records (see [`ringkv_placement::cluster`]). Reads come
//! from the local replica's applied state and are cached per applied index: the state only
//! changes when the replica applies something, and rebuilding it is a scan of a few thousand
//! small records. Writes are compare-and-swap proposals on each record's version, so a driver
//! that lost leadership, or two requests racing, can never apply a decision made on an old
//! view: the loser re-reads and decides again.

use crate::error::NodeError;
use crate::shard::Shard;
use ringkv_placement::cluster::{ClusterState, MetaKey, encode_record};
use ringkv_proto::internal::MetaRecord;
use ringkv_storage::{BatchOp, Command, CommandResult, Expected, Proposal, ScanRange};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a meta proposal may wait: the meta group is small and local to the driver.
pub const META_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// More records than any cluster can have (nodes + shards + moves); a scan is one page.
const RECORDS_MAX: usize = 1 << 20;

/// The meta state at one applied index of the local replica.
#[derive(Debug, Clone)]
pub struct MetaView {
    pub applied_index: u64,
    /// `None` until the founders' records have been written.
    pub state: Option<Arc<ClusterState>>,
    /// The raw records, as sent to syncing nodes.
    pub records: Arc<Vec<MetaRecord>>,
}

/// Caches the view of the local meta replica by applied index.
#[derive(Debug, Default)]
pub struct MetaCache {
    view: Mutex<Option<Arc<MetaView>>>,
}

impl MetaCache {
    /// The view at the replica's current applied index (rebuilt when it moved).
    pub fn view(&self, meta: &Shard) -> Result<Arc<MetaView>, NodeError> {
        let applied = meta.applied_index();
        if let Some(v) = self.view.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && v.applied_index == applied
        {
            return Ok(v.clone());
        }
        let view = Arc::new(read(meta, applied)?);
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Some(view.clone());
        Ok(view)
    }
}

fn read(meta: &Shard, applied_index: u64) -> Result<MetaView, NodeError> {
    let page = meta
        .reader
        .scan(&ScanRange::default(), RECORDS_MAX)
        .map_err(|e| NodeError::Internal(format!("reading the meta records: {e}")))?;
    let records: Vec<MetaRecord> = page
        .items
        .into_iter()
        .map(|(key, v)| MetaRecord { key: key.into(), value: v.value.into(), version: v.version })
        .collect();
    let state = ClusterState::from_records(
        records.iter().map(|r| (r.key.as_ref(), r.value.as_ref(), r.version)),
    )
    .map_err(|e| NodeError::Internal(e.to_string()))?
    // Read at the applied index: a record deleted since the newest remaining one was written
    // still makes this state newer (see `ClusterState::version`).
    .map(|s| Arc::new(s.at_version(applied_index)));
    Ok(MetaView { applied_index, state, records: Arc::new(records) })
}

/// Builds a state from records received from the meta leader.
pub fn state_from_records(records: &[MetaRecord]) -> Result<Option<ClusterState>, String> {
    ClusterState::from_records(
        records.iter().map(|r| (r.key.as_ref(), r.value.as_ref(), r.version)),
    )
    .map_err(|e| e.to_string())
}

/// Writes `value` at `key` only if the record's version is still `expected` (`None`: only if
/// it does not exist). `Ok(false)` when someone changed it first.
pub async fn cas<T: Serialize>(
    meta: &Shard,
    key: MetaKey,
    expected: Option<u64>,
    value: Option<&T>,
) -> Result<bool, NodeError> {
    let command = Command::Cas {
        key: key.encode(),
        expected: expected.map_or(Expected::Absent, Expected::Version),
        new: value.map(encode_record),
    };
    match meta.write(Proposal::from(command), META_WRITE_TIMEOUT).await? {
        CommandResult::Cas { succeeded, .. } => Ok(succeeded),
        other => Err(NodeError::Internal(format!("meta compare-and-swap returned {other:?}"))),
    }
}

/// Writes the founding records in one atomic batch.
pub async fn seed(meta: &Shard, records: Vec<(MetaKey, Vec<u8>)>) -> Result<(), NodeError> {
    let ops =
        records.into_iter().map(|(k, v)| BatchOp::Put { key: k.encode(), value: v }).collect();
    meta.write(Proposal::from(Command::Batch { ops }), META_WRITE_TIMEOUT).await.map(|_| ())
}
