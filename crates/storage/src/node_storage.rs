//! The node's storage as a whole: one RocksDB, one WAL syncer, per-shard stores on demand,
//! and node-wide records such as the cluster configuration the node was bootstrapped with.

use crate::codec;
use crate::keys::CF_NODE;
use crate::log_store::{LogShared, cf, rocks_err};
use crate::session_cache::SessionCache;
use crate::{ShardId, ShardLogStore, ShardReader, ShardStateMachine, StorageMetrics, WalSyncer};
use rocksdb::DB;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Opened once per node process.
#[derive(Clone)]
pub struct NodeStorage {
    db: Arc<DB>,
    syncer: WalSyncer,
    snapshot_root: PathBuf,
    metrics: StorageMetrics,
    /// What each shard's log store handles share (its entry cache and committed hint).
    logs: Arc<Mutex<HashMap<ShardId, Arc<LogShared>>>>,
    /// Each shard's session cache, shared by all its state machine handles, for the same
    /// reason.
    session_caches: Arc<Mutex<HashMap<ShardId, Arc<Mutex<SessionCache>>>>>,
}

impl std::fmt::Debug for NodeStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStorage").field("snapshot_root", &self.snapshot_root).finish()
    }
}

impl NodeStorage {
    /// Opens (or creates) the node's data directory: `db/` for RocksDB, `snapshots/` for
    /// snapshot files.
    pub fn open(data_dir: &Path, metrics: StorageMetrics) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let db = crate::db::open(&data_dir.join("db")).map_err(rocks_err)?;
        let syncer = WalSyncer::start(db.clone(), metrics.clone())?;
        Ok(NodeStorage {
            db,
            syncer,
            snapshot_root: data_dir.join("snapshots"),
            metrics,
            logs: Arc::default(),
            session_caches: Arc::default(),
        })
    }

    pub fn log_store(&self, shard: ShardId) -> ShardLogStore {
        let shared =
            self.logs.lock().unwrap_or_else(|p| p.into_inner()).entry(shard).or_default().clone();
        ShardLogStore::new(
            shard,
            self.db.clone(),
            self.syncer.clone(),
            self.metrics.clone(),
            shared,
        )
    }

    pub fn state_machine(&self, shard: ShardId) -> io::Result<ShardStateMachine> {
        ShardStateMachine::new(
            shard,
            self.db.clone(),
            self.syncer.clone(),
            self.snapshot_root.join(format!("shard-{shard}")),
            self.metrics.clone(),
            self.session_caches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(shard)
                .or_default()
                .clone(),
        )
    }

    pub fn reader(&self, shard: ShardId) -> ShardReader {
        ShardReader::new(shard, self.db.clone())
    }

    /// Reads a node-wide record (CRC-checked).
    pub fn get_record<T: DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        let cf = cf(&self.db, CF_NODE)?;
        match self.db.get_pinned_cf(cf, name.as_bytes()).map_err(rocks_err)? {
            None => Ok(None),
            Some(raw) => codec::decode(&raw).map(Some).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("node record {name}: {e}"))
            }),
        }
    }

    /// Writes a node-wide record durably.
    pub async fn put_record<T: Serialize>(&self, name: &str, value: &T) -> io::Result<()> {
        let cf = cf(&self.db, CF_NODE)?;
        let raw = codec::encode(value).map_err(io::Error::other)?;
        self.db.put_cf(cf, name.as_bytes(), raw).map_err(rocks_err)?;
        self.syncer.sync().await
    }

    /// For tests: the database, to damage records on purpose.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }
}
