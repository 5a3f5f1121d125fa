//! The per-shard client session table, for at-most-once writes.
//!
//! For each client id the shard keeps the last applied sequence number and its result, in
//! the `sessions` family, written in the same batch as the write itself (so a crash can never
//! separate "applied" from "remembered"). A retry with the same sequence number gets the
//! stored result; an older one gets `SessionSuperseded`.
//!
//! The table is bounded: at most [`SESSIONS_PER_SHARD_MAX`] clients per shard. When a new
//! client would exceed it, one of the clients whose last write is oldest is forgotten: an age
//! index orders clients by the *age bucket* of their last write (its log index divided by
//! 2^[`SESSION_AGE_SHIFT`]), then by client id. Every replica applies the same entries in the
//! same order and evicts by the same rule, so tables stay identical without coordination. A
//! forgotten client's retry would be applied again, so the bound is set far above the number
//! of concurrently retrying clients (routers use a few hundred lanes each).
//!
//! Buckets rather than exact indexes keep writes cheap: a client writing again within its
//! bucket leaves its age entry alone, so the common write touches one session key, not three
//! (the old age entry's delete, the new one, the record). The client count is written only
//! when it changes. Reads of records go through the shard's
//! [`SessionCache`](crate::session_cache::SessionCache) before RocksDB.

use crate::ShardId;
use crate::codec;
use crate::command::{CommandResult, Session};
use crate::keys::{self, CF_SESSIONS};
use crate::log_store::rocks_err;
use crate::session_cache::{SessionCache, SessionChange};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::Mutex;

pub const SESSIONS_PER_SHARD_MAX: u64 = 100_000;
/// Age buckets of 1,024 log entries: a client writing at least that often keeps its age entry.
pub const SESSION_AGE_SHIFT: u32 = 10;

/// What a shard remembers about one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub last_seq: u64,
    pub last_index: u64,
    pub result: CommandResult,
}

/// The age bucket of a write at log index `index`.
pub fn age_bucket(index: u64, shift: u32) -> u64 {
    index.checked_shr(shift).unwrap_or(0)
}

/// The sessions touched by one apply batch, over what is on disk.
pub(crate) struct SessionOverlay<'a> {
    shard: ShardId,
    cache: &'a Mutex<SessionCache>,
    changed: HashMap<u64, SessionChange>,
    /// (age bucket, client) of the live records written by this batch. Eviction must see them
    /// exactly as if they were on disk, or replicas that cut apply batches differently would
    /// evict different clients.
    young: BTreeSet<(u64, u64)>,
    count: Option<u64>,
    limit: u64,
    age_shift: u32,
}

impl<'a> SessionOverlay<'a> {
    pub fn new(shard: ShardId, limit: u64, age_shift: u32, cache: &'a Mutex<SessionCache>) -> Self {
        SessionOverlay {
            shard,
            cache,
            changed: HashMap::new(),
            young: BTreeSet::new(),
            count: None,
            limit,
            age_shift,
        }
    }

    fn read(&self, db: &DB, client_id: u64) -> io::Result<Option<SessionRecord>> {
        if let Some(r) = self.changed.get(&client_id) {
            return Ok(r.as_ref().map(|(rec, _)| rec.clone()));
        }
        if let Some(rec) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(client_id) {
            return Ok(Some(rec));
        }
        let cf = crate::log_store::cf(db, CF_SESSIONS)?;
        match db.get_pinned_cf(cf, keys::session_key(self.shard, client_id)).map_err(rocks_err)? {
            None => Ok(None),
            Some(raw) => codec::decode(&raw).map(Some).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("session record: {e}"))
            }),
        }
    }

    /// The batch has been written: its changes are what RocksDB holds now.
    pub fn written(self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).absorb(self.changed);
    }

    /// The stored outcome if this write was already handled.
    pub fn check(&self, db: &DB, s: Session) -> io::Result<Option<CommandResult>> {
        Ok(match self.read(db, s.client_id)? {
            Some(rec) if rec.last_seq == s.seq => Some(rec.result),
            Some(rec) if rec.last_seq > s.seq => {
                Some(CommandResult::SessionSuperseded { last_seq: rec.last_seq })
            }
            _ => None,
        })
    }

    fn count(&mut self, db: &DB, sm_cf: &rocksdb::ColumnFamily) -> io::Result<u64> {
        if let Some(c) = self.count {
            return Ok(c);
        }
        let c = match db
            .get_pinned_cf(sm_cf, keys::tag_key(self.shard, keys::TAG_SESSION_COUNT))
            .map_err(rocks_err)?
        {
            Some(raw) => {
                codec::decode(&raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            }
            None => 0,
        };
        self.count = Some(c);
        Ok(c)
    }

    /// Remembers `result` as the outcome of `s`, applied at `index`.
    pub fn record(
        &mut self,
        db: &DB,
        batch: &mut WriteBatch,
        sm_cf: &rocksdb::ColumnFamily,
        s: Session,
        index: u64,
        result: &CommandResult,
    ) -> io::Result<()> {
        let cf = crate::log_store::cf(db, CF_SESSIONS)?;
        let age = age_bucket(index, self.age_shift);
        let mut age_entry_current = false;
        match self.read(db, s.client_id)? {
            Some(old) => {
                let old_age = age_bucket(old.last_index, self.age_shift);
                self.young.remove(&(old_age, s.client_id));
                if old_age == age {
                    age_entry_current = true;
                } else {
                    batch.delete_cf(cf, keys::session_age_key(self.shard, old_age, s.client_id));
                }
            }
            None => {
                let mut count = self.count(db, sm_cf)? + 1;
                if count > self.limit {
                    // The evicted record is in `changed` before this client is added, so it
                    // is never this client itself.
                    if self.evict_oldest(db, batch)? {
                        count -= 1;
                    }
                }
                self.count = Some(count);
                batch.put_cf(
                    sm_cf,
                    keys::tag_key(self.shard, keys::TAG_SESSION_COUNT),
                    codec::encode(&count).map_err(io::Error::other)?,
                );
            }
        }
        let rec = SessionRecord { last_seq: s.seq, last_index: index, result: result.clone() };
        let raw = codec::encode(&rec).map_err(io::Error::other)?;
        let size = raw.len();
        batch.put_cf(cf, keys::session_key(self.shard, s.client_id), raw);
        if !age_entry_current {
            batch.put_cf(cf, keys::session_age_key(self.shard, age, s.client_id), []);
        }
        self.changed.insert(s.client_id, Some((rec, size)));
        self.young.insert((age, s.client_id));
        Ok(())
    }

    /// Forgets the client first in age order (age bucket, then client id) among all live
    /// records: the first on disk that this batch has not touched (touched clients' age
    /// entries on disk may be stale), or the first written by this batch, whichever comes
    /// first. Returns whether one was forgotten.
    fn evict_oldest(&mut self, db: &DB, batch: &mut WriteBatch) -> io::Result<bool> {
        let cf = crate::log_store::cf(db, CF_SESSIONS)?;
        let from = keys::session_space(self.shard, keys::SESSION_AGE);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(
            keys::session_space(self.shard, keys::SESSION_AGE + 1).to_vec(),
        );
        let mut on_disk = None;
        for item in db.iterator_cf_opt(cf, opts, IteratorMode::From(&from, Direction::Forward)) {
            let (key, _) = item.map_err(rocks_err)?;
            let field = |at: usize| {
                key.get(at..at + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
            };
            let (Some(age), Some(client)) = (field(9), field(17)) else { continue };
            if !self.changed.contains_key(&client) {
                on_disk = Some((age, client));
                break;
            }
        }
        let oldest = match (on_disk, self.young.first().copied()) {
            (Some(d), Some(y)) => d.min(y),
            (d, y) => match d.or(y) {
                Some(first) => first,
                None => return Ok(false),
            },
        };
        let (age, client) = oldest;
        self.young.remove(&oldest);
        batch.delete_cf(cf, keys::session_age_key(self.shard, age, client));
        batch.delete_cf(cf, keys::session_key(self.shard, client));
        self.changed.insert(client, None);
        Ok(true)
    }
}
