//! The node's storage as a whole: one RocksDB, one WAL syncer, per-shard stores on demand,
//! and node-wide records such as the cluster configuration the node was bootstrapped with.

use crate::codec;
use crate::entry_cache::EntryCache;
use crate::keys::{self, ALL_CFS, CF_NODE};
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
        let shared = self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(shard)
            .or_insert_with(|| {
                let cache = EntryCache::counted_in(
                    self.metrics.entry_cache_bytes.clone(),
                    crate::entry_cache::NODE_BYTES_MAX,
                );
                Arc::new(LogShared::new(cache))
            })
            .clone();
        ShardLogStore::new(
            shard,
            self.db.clone(),
            self.syncer.clone(),
            self.metrics.clone(),
            shared,
        )
    }

    /// Reads RocksDB's memory use into the metrics (a few property reads: call it with the
    /// node's metrics refresh, not per request).
    pub fn refresh_metrics(&self) {
        let mut memtables = 0;
        let mut table_readers = 0;
        for name in ALL_CFS {
            let Some(cf) = self.db.cf_handle(name) else { continue };
            let read = |property| self.db.property_int_value_cf(cf, property).ok().flatten();
            memtables += read("rocksdb.cur-size-all-mem-tables").unwrap_or(0);
            table_readers += read("rocksdb.estimate-table-readers-mem").unwrap_or(0);
        }
        // One block cache serves every family of `ALL_CFS` (`db::open`): read it once, through
        // one of them. Not through the DB itself: that asks the default family, which RocksDB
        // opens with a small cache of its own that holds nothing of ours.
        let block_cache = self
            .db
            .cf_handle(ALL_CFS[0])
            .and_then(|cf| self.db.property_int_value_cf(cf, "rocksdb.block-cache-usage").ok())
            .flatten()
            .unwrap_or(0);
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.metrics.rocksdb_memtable_bytes.set(gauge(memtables));
        self.metrics.rocksdb_table_readers_bytes.set(gauge(table_readers));
        self.metrics.rocksdb_block_cache_bytes.set(gauge(block_cache));
    }

    /// Empties the shard's entry and session caches and gives their memory back: the shard
    /// went to sleep, so nobody will read what they hold (see [`crate::entry_cache`]). Only
    /// caches: a miss reads RocksDB, so this never changes a result.
    pub fn release_caches(&self, shard: ShardId) {
        let log = self.logs.lock().unwrap_or_else(|p| p.into_inner()).get(&shard).cloned();
        if let Some(log) = log {
            log.release_cache();
        }
        let sessions =
            self.session_caches.lock().unwrap_or_else(|p| p.into_inner()).get(&shard).cloned();
        if let Some(sessions) = sessions {
            sessions.lock().unwrap_or_else(|p| p.into_inner()).release();
        }
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
                .or_insert_with(|| {
                    let cache = SessionCache::counted_in(self.metrics.session_cache_bytes.clone());
                    Arc::new(Mutex::new(cache))
                })
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

    /// Whether a node-wide record exists (whatever its format).
    pub fn has_record(&self, name: &str) -> io::Result<bool> {
        let cf = cf(&self.db, CF_NODE)?;
        Ok(self.db.get_pinned_cf(cf, name.as_bytes()).map_err(rocks_err)?.is_some())
    }

    /// Deletes every trace of this node's replica of `shard` except its Raft vote, and leaves a
    /// tombstone with the configuration epoch it was removed at, in one synced write.
    ///
    /// The vote stays because a replica that is created again later (a move brings the shard
    /// back to this node) must not vote twice in a term it already voted in; everything else
    /// (log, state machine, sessions, streams, snapshots) goes. The caller has stopped the
    /// shard's Raft group first.
    pub async fn destroy_shard(&self, shard: ShardId, config_epoch: u64) -> io::Result<()> {
        let (from, to) = (keys::shard_prefix(shard), keys::shard_end(shard));
        let mut batch = rocksdb::WriteBatch::default();
        for name in
            [keys::CF_RAFT_LOG, keys::CF_KV, keys::CF_SM_STATE, keys::CF_SESSIONS, keys::CF_STREAMS]
        {
            batch.delete_range_cf(cf(&self.db, name)?, from.as_slice(), to.as_slice());
        }
        let state = cf(&self.db, keys::CF_RAFT_STATE)?;
        batch.delete_cf(state, keys::tag_key(shard, keys::TAG_COMMITTED));
        batch.delete_cf(state, keys::tag_key(shard, keys::TAG_PURGED));
        let tomb = codec::encode(&config_epoch).map_err(io::Error::other)?;
        batch.put_cf(cf(&self.db, CF_NODE)?, tombstone_key(shard), tomb);
        self.db.write(batch).map_err(rocks_err)?;
        self.syncer.sync().await?;
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).remove(&shard);
        self.session_caches.lock().unwrap_or_else(|p| p.into_inner()).remove(&shard);
        match std::fs::remove_dir_all(self.snapshot_root.join(format!("shard-{shard}"))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The configuration epoch this node's replica of `shard` was last removed at, if ever.
    pub fn tombstone(&self, shard: ShardId) -> io::Result<Option<u64>> {
        let cf = cf(&self.db, CF_NODE)?;
        match self.db.get_pinned_cf(cf, tombstone_key(shard)).map_err(rocks_err)? {
            None => Ok(None),
            Some(raw) => codec::decode(&raw).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("tombstone of shard {shard}: {e}"),
                )
            }),
        }
    }

    /// For tests: the database, to damage records on purpose.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }
}

/// Tombstones live among the node-wide records, under a prefix no record name uses.
fn tombstone_key(shard: ShardId) -> Vec<u8> {
    let mut k = b"tombstone/".to_vec();
    k.extend_from_slice(&shard.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::CF_KV;

    #[test]
    fn rocksdb_memory_is_read_from_the_shared_block_cache_and_every_family() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = StorageMetrics::default();
        let storage = NodeStorage::open(dir.path(), metrics.clone()).expect("open");
        let kv = storage.db.cf_handle(CF_KV).expect("kv family");
        for i in 0u32..2000 {
            storage.db.put_cf(kv, i.to_be_bytes(), [7u8; 256]).expect("put");
        }
        storage.refresh_metrics();
        assert!(metrics.rocksdb_memtable_bytes.get() > 2000 * 256, "the kv family's memtable");
        // Flushed to a table and read back, the data blocks are in the shared cache.
        storage.db.flush_cf(kv).expect("flush");
        for i in 0u32..2000 {
            assert!(storage.db.get_pinned_cf(kv, i.to_be_bytes()).expect("get").is_some());
        }
        storage.refresh_metrics();
        assert!(
            metrics.rocksdb_block_cache_bytes.get() > 2000 * 256 / 2,
            "block cache: {}",
            metrics.rocksdb_block_cache_bytes.get()
        );
    }
}
