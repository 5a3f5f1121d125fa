//! The Raft log of one shard, in the node's shared RocksDB.
//!
//! Entries live under `raft_log` at `(shard, index)`, each framed with a CRC32 (see
//! [`crate::codec`]); the vote, the committed log id and the last purged log id live under
//! `raft_state`. Every method writes unsynced and, where openraft needs durability (append,
//! vote, truncate), waits for or hands its completion to the node's [`WalSyncer`], so all
//! shards share fsyncs.
//!
//! The committed log id is a recovery hint (openraft re-applies up to it on restart; the state
//! machine persists its own applied log id with every apply batch, so it is never needed for
//! correctness). Writing it on its own cost a RocksDB write per commit, about a third of a
//! node's writes under load; it is kept in memory and written inside the next append's batch
//! instead, so the hint on disk never names an entry the disk does not have.
//!
//! openraft calls these methods from one task per shard, in order, so a shard's writes are
//! never reordered; different shards only ever touch disjoint key ranges. The newest entries
//! are also kept in memory ([`EntryCache`]), shared by every handle of the shard, so the
//! replication streams and the state machine read them back without RocksDB.

use crate::ShardId;
use crate::codec;
use crate::entry_cache::EntryCache;
use crate::keys::{self, CF_RAFT_LOG, CF_RAFT_STATE};
use crate::metrics::StorageMetrics;
use crate::type_config::{Entry, LogId, TypeConfig, Vote};
use crate::wal_syncer::WalSyncer;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

/// A handle to one shard's log. Clones share everything (openraft asks for reader clones).
#[derive(Clone)]
pub struct ShardLogStore {
    shard: ShardId,
    db: Arc<DB>,
    syncer: WalSyncer,
    metrics: StorageMetrics,
    /// One per shard per process: every handle of the shard must share it (see
    /// [`crate::NodeStorage::log_store`]).
    shared: Arc<LogShared>,
}

/// What every handle of one shard's log shares: two caches of one log would go stale behind
/// each other's writes.
/// Made only with [`LogShared::new`], so its cache is counted in the node's gauge and budget.
#[derive(Debug)]
pub struct LogShared {
    cache: Mutex<EntryCache>,
    committed: Mutex<CommittedHint>,
}

impl LogShared {
    /// With its entry cache counted in the node's total.
    pub fn new(cache: EntryCache) -> Self {
        LogShared { cache: Mutex::new(cache), committed: Mutex::default() }
    }

    /// Empties the entry cache and gives its memory back (see [`EntryCache::release`]).
    pub fn release_cache(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).release();
    }
}

/// The newest committed log id openraft reported, and whether the disk has it yet.
#[derive(Debug, Default)]
struct CommittedHint {
    latest: Option<Option<LogId>>,
    unwritten: bool,
}

impl std::fmt::Debug for ShardLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLogStore").field("shard", &self.shard).finish()
    }
}

/// A RocksDB status as an `io::Error`, corruption as `InvalidData` (see [`crate::fault`]).
pub(crate) fn rocks_err(e: rocksdb::Error) -> io::Error {
    io::Error::new(crate::fault::rocks_io_kind(&e.kind()), e)
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> io::Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| io::Error::other(format!("column family {name} missing")))
}

impl ShardLogStore {
    pub fn new(
        shard: ShardId,
        db: Arc<DB>,
        syncer: WalSyncer,
        metrics: StorageMetrics,
        shared: Arc<LogShared>,
    ) -> Self {
        ShardLogStore { shard, db, syncer, metrics, shared }
    }

    fn cache(&self) -> MutexGuard<'_, EntryCache> {
        // The cache is only ever changed whole under the lock, so a poisoned one is intact.
        self.shared.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn committed(&self) -> MutexGuard<'_, CommittedHint> {
        self.shared.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A CRC or decode failure: counted, logged, and returned as `InvalidData` so openraft
    /// stops this shard rather than serve from a damaged log.
    fn corrupt(&self, what: &str, e: codec::CodecError) -> io::Error {
        self.metrics.corruption(self.shard);
        tracing::error!(shard = self.shard, what, error = %e, "corrupt Raft record");
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("shard {}: corrupt {what}: {e}", self.shard),
        )
    }

    fn get_state<T: DeserializeOwned>(&self, tag: u8, what: &str) -> io::Result<Option<T>> {
        let cf = cf(&self.db, CF_RAFT_STATE)?;
        match self.db.get_pinned_cf(cf, keys::tag_key(self.shard, tag)).map_err(rocks_err)? {
            None => Ok(None),
            Some(raw) => codec::decode(&raw).map(Some).map_err(|e| self.corrupt(what, e)),
        }
    }

    fn put_state<T: Serialize>(&self, tag: u8, value: &T) -> io::Result<()> {
        let cf = cf(&self.db, CF_RAFT_STATE)?;
        let raw = codec::encode(value).map_err(io::Error::other)?;
        self.db.put_cf(cf, keys::tag_key(self.shard, tag), raw).map_err(rocks_err)
    }

    fn decode_entry(&self, raw: &[u8]) -> io::Result<Entry> {
        codec::decode(raw).map_err(|e| self.corrupt("log entry", e))
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(keys::shard_prefix(self.shard).to_vec());
        let start = keys::log_key(self.shard, u64::MAX);
        let mut it =
            self.db.iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Reverse));
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(rocks_err)?;
                self.decode_entry(&value).map(Some)
            }
        }
    }
}

/// An entry's footprint in the cache, over-estimated: its encoded bytes, plus the overhead
/// of each allocation its command holds (a batch of many tiny operations takes several times
/// its encoded size in memory), plus the entry itself.
fn memory_bytes(entry: &Entry, encoded_bytes: usize) -> usize {
    const ALLOCATION_BYTES: usize = 48;
    const ENTRY_BYTES: usize = 128;
    let allocations = match &entry.payload {
        openraft::EntryPayload::Normal(p) => p.allocations(),
        _ => 1,
    };
    encoded_bytes.saturating_add(allocations.saturating_mul(ALLOCATION_BYTES)) + ENTRY_BYTES
}

impl RaftLogReader<TypeConfig> for ShardLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.checked_add(1),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        if let Some(entries) = end.and_then(|end| self.cache().get(start, end)) {
            return Ok(entries);
        }
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(match end {
            Some(end) => keys::log_key(self.shard, end).to_vec(),
            None => keys::shard_end(self.shard),
        });
        let from = keys::log_key(self.shard, start);
        let mut entries = Vec::new();
        for item in self.db.iterator_cf_opt(cf, opts, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item.map_err(rocks_err)?;
            let entry = self.decode_entry(&value)?;
            // The key and the entry inside must agree, or a record was written to the wrong
            // place (or the key was damaged): either way the log cannot be trusted.
            let key_index = keys::log_index_of(&key).unwrap_or(u64::MAX);
            if key_index != entry.log_id.index {
                let e = codec::CodecError::Misplaced { key_index, entry_index: entry.log_id.index };
                return Err(self.corrupt("log entry", e));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_state(keys::TAG_VOTE, "vote")
    }
}

impl RaftLogStorage<TypeConfig> for ShardLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> =
            self.get_state(keys::TAG_PURGED, "purged log id")?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_state(keys::TAG_VOTE, vote)?;
        // A vote must be on disk before it is acted on: a node that forgets its vote after a
        // crash could vote twice in one term.
        self.syncer.sync().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Written with the next append (see the module notes).
        let mut hint = self.committed();
        hint.latest = Some(committed);
        hint.unwritten = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if let Some(latest) = self.committed().latest {
            return Ok(latest);
        }
        Ok(self.get_state::<Option<LogId>>(keys::TAG_COMMITTED, "committed log id")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let log_cf = cf(&self.db, CF_RAFT_LOG)?;
        let state_cf = cf(&self.db, CF_RAFT_STATE)?;
        let mut batch = WriteBatch::default();
        let mut written = Vec::new();
        for entry in entries {
            let raw = codec::encode(&entry).map_err(io::Error::other)?;
            batch.put_cf(log_cf, keys::log_key(self.shard, entry.log_id.index), &raw);
            let size = memory_bytes(&entry, raw.len());
            written.push((entry, size));
        }
        // Entries are only committed once appended, so every entry the hint names was
        // written by an earlier batch: the disk never has a hint without its entries.
        let hint = {
            let hint = self.committed();
            if hint.unwritten { hint.latest } else { None }
        };
        if let Some(committed) = &hint {
            let raw = codec::encode(committed).map_err(io::Error::other)?;
            batch.put_cf(state_cf, keys::tag_key(self.shard, keys::TAG_COMMITTED), raw);
        }
        // openraft truncates before it overwrites, but if an append ever did overwrite, no
        // reader may see a cached entry that the write below replaces.
        if let Some((first, _)) = written.first() {
            self.cache().truncate_from(first.log_id.index);
        }
        // Readable now; durable once the syncer's next fsync completes the callback.
        if let Err(e) = self.db.write(batch) {
            // What the failed batch left is unknown; the shard stops on this error anyway.
            self.cache().clear();
            return Err(rocks_err(e));
        }
        self.cache().append(written);
        if let Some(committed) = hint {
            let mut now = self.committed();
            // Still unwritten only if nothing newer came in between.
            if now.latest == Some(committed) {
                now.unwritten = false;
            }
        }
        self.syncer.after_sync(Box::new(move |result| callback.io_completed(result))).await
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index.saturating_add(1));
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf,
            keys::log_key(self.shard, from).as_slice(),
            keys::shard_end(self.shard).as_slice(),
        );
        // The cache first: a reader racing this call then misses and reads RocksDB.
        self.cache().truncate_from(from);
        self.db.write(batch).map_err(rocks_err)?;
        // Synced so that conflicting entries removed here can never come back after a crash
        // alongside entries appended after the truncation.
        self.syncer.sync().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purged id goes in the same batch as the deletion, so the log state stays
        // consistent (openraft requires last_purged to be known once entries are gone).
        let state_cf = cf(&self.db, CF_RAFT_STATE)?;
        let log_cf = cf(&self.db, CF_RAFT_LOG)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            state_cf,
            keys::tag_key(self.shard, keys::TAG_PURGED),
            codec::encode(&log_id).map_err(io::Error::other)?,
        );
        let end = keys::log_key(self.shard, log_id.index.saturating_add(1));
        batch.delete_range_cf(log_cf, keys::shard_prefix(self.shard).as_slice(), end.as_slice());
        self.cache().purge_upto(log_id.index);
        // Unsynced: losing a purge in a crash only leaves entries that will be purged again.
        self.db.write(batch).map_err(rocks_err)
    }
}
