//! The per-shard client session table, for at-most-once writes.
//!
//! For each client id the shard keeps the last applied sequence number and its result, in
//! the `sessions` family, written in the same batch as the write itself (so a crash can never
//! separate "applied" from "remembered"). A retry with the same sequence number gets the
//! stored result; an older one gets `SessionSuperseded`.
//!
//! The table is bounded: at most [`SESSIONS_PER_SHARD_MAX`] clients per shard. When a new
//! client would exceed it, the client whose last write is oldest (by log index, via an age
//! index) is forgotten. Every replica applies the same entries in the same order and evicts
//! by the same rule, so tables stay identical without coordination. A forgotten client's
//! retry would be applied again, so the bound is set far above the number of concurrently
//! retrying clients (routers use a few hundred lanes each).

use crate::ShardId;
use crate::codec;
use crate::command::{CommandResult, Session};
use crate::keys::{self, CF_SESSIONS};
use crate::log_store::rocks_err;
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::io;

pub const SESSIONS_PER_SHARD_MAX: u64 = 100_000;

/// What a shard remembers about one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub last_seq: u64,
    pub last_index: u64,
    pub result: CommandResult,
}

/// The sessions touched by one apply batch, over what is on disk.
pub(crate) struct SessionOverlay {
    shard: ShardId,
    changed: HashMap<u64, Option<SessionRecord>>,
    /// (last index, client) of the live records written by this batch: they are younger than
    /// everything on disk, and eviction must see them exactly as if they were on disk, or
    /// replicas that cut apply batches differently would evict different clients.
    young: BTreeSet<(u64, u64)>,
    count: Option<u64>,
    limit: u64,
}

impl SessionOverlay {
    pub fn new(shard: ShardId, limit: u64) -> Self {
        SessionOverlay {
            shard,
            changed: HashMap::new(),
            young: BTreeSet::new(),
            count: None,
            limit,
        }
    }

    fn read(&self, db: &DB, client_id: u64) -> io::Result<Option<SessionRecord>> {
        if let Some(r) = self.changed.get(&client_id) {
            return Ok(r.clone());
        }
        let cf = crate::log_store::cf(db, CF_SESSIONS)?;
        match db.get_pinned_cf(cf, keys::session_key(self.shard, client_id)).map_err(rocks_err)? {
            None => Ok(None),
            Some(raw) => codec::decode(&raw).map(Some).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("session record: {e}"))
            }),
        }
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
        let mut count = self.count(db, sm_cf)?;
        match self.read(db, s.client_id)? {
            Some(old) => {
                batch.delete_cf(cf, keys::session_age_key(self.shard, old.last_index, s.client_id));
                self.young.remove(&(old.last_index, s.client_id));
            }
            None => {
                count += 1;
                if count > self.limit {
                    // The evicted record is in `changed` before this client is added, so it
                    // is never this client itself.
                    if self.evict_oldest(db, batch)? {
                        count -= 1;
                    }
                }
            }
        }
        let rec = SessionRecord { last_seq: s.seq, last_index: index, result: result.clone() };
        batch.put_cf(
            cf,
            keys::session_key(self.shard, s.client_id),
            codec::encode(&rec).map_err(io::Error::other)?,
        );
        batch.put_cf(cf, keys::session_age_key(self.shard, index, s.client_id), []);
        self.changed.insert(s.client_id, Some(rec));
        self.young.insert((index, s.client_id));
        self.count = Some(count);
        batch.put_cf(
            sm_cf,
            keys::tag_key(self.shard, keys::TAG_SESSION_COUNT),
            codec::encode(&count).map_err(io::Error::other)?,
        );
        Ok(())
    }

    /// Forgets the client whose last write is oldest: the oldest on disk that this batch has
    /// not touched (touched clients' age entries on disk are stale), else the oldest written by
    /// this batch. Returns whether one was forgotten.
    fn evict_oldest(&mut self, db: &DB, batch: &mut WriteBatch) -> io::Result<bool> {
        let cf = crate::log_store::cf(db, CF_SESSIONS)?;
        let from = keys::session_space(self.shard, keys::SESSION_AGE);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(
            keys::session_space(self.shard, keys::SESSION_AGE + 1).to_vec(),
        );
        for item in db.iterator_cf_opt(cf, opts, IteratorMode::From(&from, Direction::Forward)) {
            let (key, _) = item.map_err(rocks_err)?;
            let Some(client) =
                key.get(17..25).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes)
            else {
                continue;
            };
            if self.changed.contains_key(&client) {
                continue;
            }
            batch.delete_cf(cf, &key);
            batch.delete_cf(cf, keys::session_key(self.shard, client));
            self.changed.insert(client, None);
            return Ok(true);
        }
        let Some((index, client)) = self.young.pop_first() else { return Ok(false) };
        batch.delete_cf(cf, keys::session_age_key(self.shard, index, client));
        batch.delete_cf(cf, keys::session_key(self.shard, client));
        self.changed.insert(client, None);
        Ok(true)
    }
}
