//! Reads of a shard's applied state, for the node's request handlers.
//!
//! These read RocksDB directly, outside Raft: the caller decides whether a read is allowed
//! (after a ReadIndex or lease check on the leader, or as a stale read on any replica). A
//! checksum is taken over a RocksDB snapshot together with the applied log id, so replicas
//! can be compared at equal applied indexes.

use crate::ShardId;
use crate::codec;
use crate::command::Versioned;
use crate::keys::{self, CF_KV, CF_SESSIONS, CF_SM_STATE, CF_STREAMS};
use crate::log_store::{cf, rocks_err};
use crate::state_machine::read_kv;
use crate::type_config::LogId;
use rocksdb::{DB, Direction, IteratorMode, ReadOptions};
use std::io;
use std::sync::Arc;

/// Read access to one shard's key-value data.
#[derive(Clone)]
pub struct ShardReader {
    pub(crate) shard: ShardId,
    pub(crate) db: Arc<DB>,
}

impl std::fmt::Debug for ShardReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardReader").field("shard", &self.shard).finish()
    }
}

/// A scan's bounds. `end` is exclusive; `prefix` further restricts the keys.
#[derive(Debug, Clone, Default)]
pub struct ScanRange<'a> {
    pub start: &'a [u8],
    pub end: Option<&'a [u8]>,
    pub prefix: &'a [u8],
}

/// A page of a scan, and where the next page starts if there may be one.
#[derive(Debug)]
pub struct ScanPage {
    pub items: Vec<(Vec<u8>, Versioned)>,
    pub next_start: Option<Vec<u8>>,
}

/// A checksum of a shard's content at an applied index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardChecksum {
    pub applied_index: u64,
    pub crc32: u32,
    pub keys: u64,
}

impl ShardReader {
    pub fn new(shard: ShardId, db: Arc<DB>) -> Self {
        ShardReader { shard, db }
    }

    /// The shard this reader reads.
    pub fn shard_id(&self) -> ShardId {
        self.shard
    }

    pub fn get(&self, key: &[u8]) -> io::Result<Option<Versioned>> {
        read_kv(&self.db, cf(&self.db, CF_KV)?, self.shard, key)
    }

    /// Keys in `range` in order, at most `limit` of them.
    pub fn scan(&self, range: &ScanRange<'_>, limit: usize) -> io::Result<ScanPage> {
        let kv_cf = cf(&self.db, CF_KV)?;
        let start = range.start.max(range.prefix);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::shard_end(self.shard));
        let from = keys::kv_key(self.shard, start);
        let mut items = Vec::new();
        let mut next_start = None;
        for item in
            self.db.iterator_cf_opt(kv_cf, opts, IteratorMode::From(&from, Direction::Forward))
        {
            let (raw_key, raw) = item.map_err(rocks_err)?;
            let key = &raw_key[8..];
            if !key.starts_with(range.prefix) || range.end.is_some_and(|end| key >= end) {
                break;
            }
            if items.len() == limit {
                next_start = Some(key.to_vec());
                break;
            }
            let (version, value) = keys::split_kv_value(&raw).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "kv value shorter than its version")
            })?;
            items.push((key.to_vec(), Versioned { value: value.to_vec(), version }));
        }
        Ok(ScanPage { items, next_start })
    }

    /// CRC32 over (key length, key, version, value length, value) of every key in order, then
    /// the session table and the `streams` records, with the applied index, all read from one
    /// RocksDB snapshot.
    pub fn checksum(&self) -> io::Result<ShardChecksum> {
        let view = self.db.snapshot();
        let sm_cf = cf(&self.db, CF_SM_STATE)?;
        let kv_cf = cf(&self.db, CF_KV)?;
        let applied_index = match view
            .get_cf(sm_cf, keys::tag_key(self.shard, keys::TAG_APPLIED))
            .map_err(rocks_err)?
        {
            Some(raw) => codec::decode::<LogId>(&raw).map_err(io::Error::other)?.index,
            None => 0,
        };
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::shard_end(self.shard));
        let from = keys::shard_prefix(self.shard);
        let mut hasher = crc32fast::Hasher::new();
        let mut count = 0u64;
        for item in view.iterator_cf_opt(kv_cf, opts, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, raw) = item.map_err(rocks_err)?;
            let (version, value) = keys::split_kv_value(&raw).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "kv value shorter than its version")
            })?;
            let key = &key[8..];
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(key);
            hasher.update(&version.to_le_bytes());
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value);
            count += 1;
        }
        // The session tables must match too: a replica that remembered different clients would
        // answer retries differently.
        let sessions_cf = cf(&self.db, CF_SESSIONS)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::shard_end(self.shard));
        let from = keys::shard_prefix(self.shard);
        for item in
            view.iterator_cf_opt(sessions_cf, opts, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, raw) = item.map_err(rocks_err)?;
            hasher.update(&key[8..]);
            hasher.update(&raw);
        }
        // And the event streams, offsets and change history.
        let streams_cf = cf(&self.db, CF_STREAMS)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::shard_end(self.shard));
        for item in
            view.iterator_cf_opt(streams_cf, opts, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, raw) = item.map_err(rocks_err)?;
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(&key[8..]);
            hasher.update(&raw);
        }
        Ok(ShardChecksum { applied_index, crc32: hasher.finalize(), keys: count })
    }
}
