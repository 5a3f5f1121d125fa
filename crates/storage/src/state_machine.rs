//! The key-value state machine of one shard.
//!
//! Applying a batch of committed entries produces one RocksDB `WriteBatch` holding the data
//! changes *and* the new last-applied log id (and membership, for membership entries), written
//! atomically. After a crash the shard resumes exactly after the last batch that reached disk
//! and replays the rest from the durable log, so every entry is applied at most once to what
//! is stored. These writes are not synced on their own: the log they come from is durable, and
//! the next WAL sync (there is one for every append) makes them durable too.
//!
//! Within a batch, later commands must see earlier ones (two CAS on one key in one batch), so
//! reads go through an overlay of the batch's pending writes before RocksDB. Batches are cut
//! at [`APPLY_BATCH_BYTES_MAX`] / [`APPLY_BATCH_ENTRIES_MAX`] to bound memory during a long
//! replay.

use crate::ShardId;
use crate::codec;
use crate::command::{BatchOp, Command, CommandResult, Expected, Proposal, Versioned};
use crate::keys::{self, CF_KV, CF_SESSIONS, CF_SM_STATE, CF_STREAMS};
use crate::log_store::{cf, rocks_err};
use crate::metrics::StorageMetrics;
use crate::session_cache::SessionCache;
use crate::sessions::{
    SESSION_AGE_SHIFT, SESSIONS_PER_SHARD_MAX, SessionOverlay, SessionRecord, age_bucket,
};
use crate::snapshot::{Chunk, SnapshotFile, SnapshotReader, SnapshotWriter, sync_dir};
use crate::stream_apply::{StreamOverlay, Target};
use crate::streams::{ChangeRecord, StreamCommand};
use crate::type_config::{LogId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::wal_syncer::WalSyncer;
use futures::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{DB, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const APPLY_BATCH_BYTES_MAX: usize = 16 << 20;
pub const APPLY_BATCH_ENTRIES_MAX: usize = 4096;

pub type ShardSnapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// Where the shard's current snapshot is, recorded under `sm_state`.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta,
    file_name: String,
}

/// One shard's state machine. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct ShardStateMachine {
    shard: ShardId,
    db: Arc<DB>,
    syncer: WalSyncer,
    snapshot_dir: PathBuf,
    metrics: StorageMetrics,
    session_limit: u64,
    session_age_shift: u32,
    /// Shared by every handle of this shard (see [`NodeStorage`](crate::NodeStorage)).
    session_cache: Arc<Mutex<SessionCache>>,
    /// The last log index applied, for watchers and subscribers waiting for new data.
    applied: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for ShardStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStateMachine").field("shard", &self.shard).finish()
    }
}

impl ShardStateMachine {
    /// `snapshot_dir` holds this shard's snapshot files; it is created if missing.
    pub fn new(
        shard: ShardId,
        db: Arc<DB>,
        syncer: WalSyncer,
        snapshot_dir: PathBuf,
        metrics: StorageMetrics,
        session_cache: Arc<Mutex<SessionCache>>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let sm = ShardStateMachine {
            shard,
            db,
            syncer,
            snapshot_dir,
            metrics,
            session_limit: SESSIONS_PER_SHARD_MAX,
            session_age_shift: SESSION_AGE_SHIFT,
            session_cache,
            applied: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        // Partial files of builds or transfers cut short by a crash.
        sm.remove_files(|name| name.ends_with(".building") || name.ends_with(".tmp"));
        Ok(sm)
    }

    /// Lowers the session table bound (tests exercise eviction with small tables).
    pub fn with_session_limit(mut self, limit: u64) -> Self {
        self.session_limit = limit.max(1);
        self
    }

    /// Narrows the session age buckets to 2^`shift` log entries (tests cross buckets with a
    /// handful of entries).
    pub fn with_session_age_shift(mut self, shift: u32) -> Self {
        self.session_age_shift = shift.min(63);
        self
    }

    fn apply_batch(&self) -> io::Result<ApplyBatch<'_>> {
        ApplyBatch::new(
            self.shard,
            &self.db,
            SessionOverlay::new(
                self.shard,
                self.session_limit,
                self.session_age_shift,
                &self.session_cache,
            ),
        )
    }

    /// Writes a finished apply batch, with `applied` as the shard's last-applied log id.
    fn write_batch(&self, mut pending: ApplyBatch<'_>, applied: Option<LogId>) -> io::Result<()> {
        if let Some(id) = applied {
            let sm_cf = cf(&self.db, CF_SM_STATE)?;
            let raw = codec::encode(&id).map_err(io::Error::other)?;
            pending.batch.put_cf(sm_cf, keys::tag_key(self.shard, keys::TAG_APPLIED), raw);
        }
        self.db.write(pending.batch).map_err(rocks_err)?;
        pending.sessions.written();
        Ok(())
    }

    fn corrupt(&self, what: &str, e: impl std::fmt::Display) -> io::Error {
        self.metrics.corruption(self.shard);
        tracing::error!(shard = self.shard, what, error = %e, "corrupt state-machine record");
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("shard {}: corrupt {what}: {e}", self.shard),
        )
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        tag: u8,
        what: &str,
    ) -> io::Result<Option<T>> {
        let cf = cf(&self.db, CF_SM_STATE)?;
        match self.db.get_pinned_cf(cf, keys::tag_key(self.shard, tag)).map_err(rocks_err)? {
            None => Ok(None),
            Some(raw) => codec::decode(&raw).map(Some).map_err(|e| self.corrupt(what, e)),
        }
    }

    fn snapshot_record(&self) -> io::Result<Option<SnapshotRecord>> {
        self.get_meta(keys::TAG_SNAPSHOT, "snapshot record")
    }

    /// Removes finished snapshot files other than `keep`. Files still being built or received
    /// are left alone; leftovers of a crash are removed when the shard starts.
    fn remove_other_snapshots(&self, keep: &str) {
        self.remove_files(|name| name.ends_with(".snap") && name != keep);
    }

    fn remove_files(&self, doomed: impl Fn(&str) -> bool) {
        let Ok(dir) = std::fs::read_dir(&self.snapshot_dir) else { return };
        for f in dir.flatten() {
            if f.file_name().to_str().is_some_and(&doomed)
                && let Err(e) = std::fs::remove_file(f.path())
            {
                tracing::warn!(path = %f.path().display(), error = %e, "cannot remove old snapshot");
            }
        }
    }

    /// Changes whenever entries are applied (its value: the last applied log index of this
    /// process; 0 until the first apply).
    pub fn applied_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn announce_applied(&self, index: u64) {
        self.applied.send_if_modified(|cur| {
            let changed = *cur != index;
            *cur = index;
            changed
        });
    }

    /// A fresh path in this shard's snapshot directory for an incoming snapshot transfer.
    pub fn incoming_snapshot_path(&self) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.snapshot_dir.join(format!("incoming-{nanos}.tmp"))
    }
}

fn snapshot_file_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(id) => {
            format!("snap-{}-{}-{}.snap", id.leader_id.term, id.leader_id.node_id, id.index)
        }
        None => "snap-empty.snap".to_string(),
    }
}

/// Pending changes of one apply batch, with the reads-see-writes overlay.
struct ApplyBatch<'a> {
    shard: ShardId,
    db: &'a DB,
    kv_cf: &'a rocksdb::ColumnFamily,
    sm_cf: &'a rocksdb::ColumnFamily,
    streams_cf: &'a rocksdb::ColumnFamily,
    batch: WriteBatch,
    overlay: HashMap<Vec<u8>, Option<Versioned>>,
    sessions: SessionOverlay<'a>,
    streams: StreamOverlay,
    /// The entry being applied and how many key changes it has recorded (for watchers).
    index: u64,
    changes: u32,
    bytes: usize,
    entries: usize,
}

impl<'a> ApplyBatch<'a> {
    fn new(shard: ShardId, db: &'a DB, sessions: SessionOverlay<'a>) -> io::Result<Self> {
        Ok(ApplyBatch {
            shard,
            db,
            kv_cf: cf(db, CF_KV)?,
            sm_cf: cf(db, CF_SM_STATE)?,
            streams_cf: cf(db, CF_STREAMS)?,
            batch: WriteBatch::default(),
            overlay: HashMap::new(),
            sessions,
            streams: StreamOverlay::new(shard),
            index: 0,
            changes: 0,
            bytes: 0,
            entries: 0,
        })
    }

    /// Applies a proposal at most once per session sequence number.
    fn apply_proposal(&mut self, p: Proposal, index: u64) -> io::Result<CommandResult> {
        let Some(session) = p.session else { return self.apply(p.command, index) };
        if let Some(earlier) = self.sessions.check(self.db, session)? {
            return Ok(earlier);
        }
        let result = self.apply(p.command, index)?;
        self.sessions.record(self.db, &mut self.batch, self.sm_cf, session, index, &result)?;
        Ok(result)
    }

    fn read(&self, key: &[u8]) -> io::Result<Option<Versioned>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        read_kv(self.db, self.kv_cf, self.shard, key)
    }

    fn put(&mut self, key: &[u8], value: &[u8], version: u64) {
        self.bytes += key.len() + value.len();
        self.batch.put_cf(
            self.kv_cf,
            keys::kv_key(self.shard, key),
            keys::kv_value(version, value),
        );
        self.overlay.insert(key.to_vec(), Some(Versioned { value: value.to_vec(), version }));
        self.record_change(key, Some(value));
    }

    /// Appends to the shard's change history (revision = this entry's index), for watchers.
    fn record_change(&mut self, key: &[u8], value: Option<&[u8]>) {
        let change = ChangeRecord { key: key.to_vec(), value: value.map(<[u8]>::to_vec) };
        // Encoding a struct of two byte vectors cannot fail; a failure would be a bug in the
        // codec, and dropping a watch record is better than failing the write.
        if let Ok(raw) = codec::encode(&change) {
            self.bytes += raw.len();
            let key = crate::streams::change_key(self.shard, self.index, self.changes);
            self.batch.put_cf(self.streams_cf, key, raw);
            self.changes += 1;
        }
    }

    fn delete(&mut self, key: &[u8]) -> io::Result<bool> {
        let existed = self.read(key)?.is_some();
        if existed {
            self.bytes += key.len();
            self.batch.delete_cf(self.kv_cf, keys::kv_key(self.shard, key));
            self.overlay.insert(key.to_vec(), None);
            self.record_change(key, None);
        }
        Ok(existed)
    }

    fn apply(&mut self, cmd: Command, index: u64) -> io::Result<CommandResult> {
        self.entries += 1;
        self.index = index;
        self.changes = 0;
        Ok(match cmd {
            Command::Put { key, value } => {
                self.put(&key, &value, index);
                CommandResult::Put { version: index }
            }
            Command::Delete { key } => CommandResult::Delete { deleted: self.delete(&key)? },
            Command::Cas { key, expected, new } => {
                let current = self.read(&key)?;
                let holds = match (&expected, &current) {
                    (Expected::Absent, cur) => cur.is_none(),
                    (Expected::Value(v), Some(cur)) => cur.value == *v,
                    (Expected::Version(ver), Some(cur)) => cur.version == *ver,
                    (_, None) => false,
                };
                if !holds {
                    CommandResult::Cas { succeeded: false, version: 0, current }
                } else if let Some(value) = new {
                    self.put(&key, &value, index);
                    CommandResult::Cas { succeeded: true, version: index, current: None }
                } else {
                    self.delete(&key)?;
                    CommandResult::Cas { succeeded: true, version: 0, current: None }
                }
            }
            Command::Batch { ops } => {
                for op in ops {
                    match op {
                        BatchOp::Put { key, value } => self.put(&key, &value, index),
                        BatchOp::Delete { key } => {
                            self.delete(&key)?;
                        }
                    }
                }
                CommandResult::Batch { version: index }
            }
            Command::Stream(cmd) => {
                if let StreamCommand::Append { events, .. } = &cmd {
                    self.bytes += events.iter().map(|e| e.size() as usize + 32).sum::<usize>();
                }
                let mut t = Target { db: self.db, cf: self.streams_cf, batch: &mut self.batch };
                CommandResult::Stream(self.streams.apply(&mut t, cmd, index)?)
            }
        })
    }

    fn is_full(&self) -> bool {
        self.bytes >= APPLY_BATCH_BYTES_MAX || self.entries >= APPLY_BATCH_ENTRIES_MAX
    }
}

/// Reads one key of `shard` (through `get` so a RocksDB snapshot can be used too).
pub(crate) fn read_kv(
    db: &DB,
    kv_cf: &rocksdb::ColumnFamily,
    shard: ShardId,
    key: &[u8],
) -> io::Result<Option<Versioned>> {
    match db.get_pinned_cf(kv_cf, keys::kv_key(shard, key)).map_err(rocks_err)? {
        None => Ok(None),
        Some(raw) => {
            let (version, value) = keys::split_kv_value(&raw).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "kv value shorter than its version")
            })?;
            Ok(Some(Versioned { value: value.to_vec(), version }))
        }
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.get_meta::<LogId>(keys::TAG_APPLIED, "applied log id")?;
        let membership = self.get_meta(keys::TAG_MEMBERSHIP, "membership")?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let sm_cf = cf(&self.db, CF_SM_STATE)?;
        let mut pending = self.apply_batch()?;
        let mut replies = Vec::new();
        let mut last = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id;
            last = Some(log_id);
            let result = match entry.payload {
                EntryPayload::Blank => CommandResult::Nothing,
                EntryPayload::Normal(proposal) => pending.apply_proposal(proposal, log_id.index)?,
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(log_id), m);
                    let raw = codec::encode(&stored).map_err(io::Error::other)?;
                    pending.batch.put_cf(
                        sm_cf,
                        keys::tag_key(self.shard, keys::TAG_MEMBERSHIP),
                        raw,
                    );
                    CommandResult::Nothing
                }
            };
            if let Some(r) = responder {
                replies.push((r, result));
            }
            if pending.is_full() {
                let full = std::mem::replace(&mut pending, self.apply_batch()?);
                self.write_batch(full, last)?;
                self.announce_applied(log_id.index);
                for (r, result) in replies.drain(..) {
                    r.send(result);
                }
            }
        }
        self.write_batch(pending, last)?;
        if let Some(id) = last {
            self.announce_applied(id.index);
        }
        for (r, result) in replies {
            r.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let this = self.clone();
        let applied = meta.last_log_id.map_or(0, |l| l.index);
        let meta = meta.clone();
        let installed =
            tokio::task::spawn_blocking(move || this.install_blocking(&meta, &snapshot.path))
                .await
                .map_err(io::Error::other);
        // Whatever the install left in RocksDB, the cached records may no longer be it.
        self.session_cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        installed??;
        // The install batch replaced the shard's data; make it durable before openraft
        // purges the log behind it.
        self.syncer.sync().await?;
        self.announce_applied(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<ShardSnapshot>, io::Error> {
        Ok(self.snapshot_record()?.map(|rec| Snapshot {
            meta: rec.meta,
            snapshot: SnapshotFile { path: self.snapshot_dir.join(rec.file_name) },
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ShardStateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<ShardSnapshot, io::Error> {
        let this = self.clone();
        let snapshot = tokio::task::spawn_blocking(move || this.build_blocking())
            .await
            .map_err(io::Error::other)??;
        self.syncer.sync().await?;
        Ok(snapshot)
    }
}

impl ShardStateMachine {
    fn build_blocking(&self) -> io::Result<ShardSnapshot> {
        let view = self.db.snapshot();
        let sm_cf = cf(&self.db, CF_SM_STATE)?;
        let kv_cf = cf(&self.db, CF_KV)?;
        let read_meta =
            |tag: u8| view.get_cf(sm_cf, keys::tag_key(self.shard, tag)).map_err(rocks_err);
        let last_log_id: Option<LogId> = match read_meta(keys::TAG_APPLIED)? {
            Some(raw) => Some(codec::decode(&raw).map_err(|e| self.corrupt("applied log id", e))?),
            None => None,
        };
        let last_membership: StoredMembership = match read_meta(keys::TAG_MEMBERSHIP)? {
            Some(raw) => codec::decode(&raw).map_err(|e| self.corrupt("membership", e))?,
            None => StoredMembership::default(),
        };
        let meta = SnapshotMeta { last_log_id, last_membership };
        let file_name = snapshot_file_name(&meta);
        let tmp = self.snapshot_dir.join(format!("{file_name}.building"));
        let mut w = SnapshotWriter::create(&tmp, self.shard, &meta)?;
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(keys::shard_end(self.shard));
        let from = keys::shard_prefix(self.shard);
        let mode = rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward);
        for item in view.iterator_cf_opt(kv_cf, opts, mode) {
            let (key, raw) = item.map_err(rocks_err)?;
            let (version, value) =
                keys::split_kv_value(&raw).ok_or_else(|| self.corrupt("kv value", "too short"))?;
            w.push(key[8..].to_vec(), version, value.to_vec())?;
        }
        let sessions_cf = cf(&self.db, CF_SESSIONS)?;
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(
            keys::session_space(self.shard, keys::SESSION_RECORD + 1).to_vec(),
        );
        let from = keys::session_space(self.shard, keys::SESSION_RECORD);
        let mode = rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward);
        for item in view.iterator_cf_opt(sessions_cf, opts, mode) {
            let (key, raw) = item.map_err(rocks_err)?;
            let client =
                key.get(9..17).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
            let client = client.ok_or_else(|| self.corrupt("session key", "too short"))?;
            let rec: SessionRecord =
                codec::decode(&raw).map_err(|e| self.corrupt("session record", e))?;
            w.push_session(client, rec)?;
        }
        let streams_cf = cf(&self.db, CF_STREAMS)?;
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(keys::shard_end(self.shard));
        let from = keys::shard_prefix(self.shard);
        let mode = rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward);
        for item in view.iterator_cf_opt(streams_cf, opts, mode) {
            let (key, raw) = item.map_err(rocks_err)?;
            w.push_stream(key[8..].to_vec(), raw.to_vec())?;
        }
        drop(view);
        w.finish()?;
        let path = self.snapshot_dir.join(&file_name);
        std::fs::rename(&tmp, &path)?;
        sync_dir(&path)?;
        self.record_snapshot(&meta, &file_name)?;
        self.remove_other_snapshots(&file_name);
        Ok(Snapshot { meta, snapshot: SnapshotFile { path } })
    }

    fn record_snapshot(&self, meta: &SnapshotMeta, file_name: &str) -> io::Result<()> {
        let sm_cf = cf(&self.db, CF_SM_STATE)?;
        let rec = SnapshotRecord { meta: meta.clone(), file_name: file_name.to_string() };
        let raw = codec::encode(&rec).map_err(io::Error::other)?;
        self.db.put_cf(sm_cf, keys::tag_key(self.shard, keys::TAG_SNAPSHOT), raw).map_err(rocks_err)
    }

    fn install_blocking(&self, meta: &SnapshotMeta, path: &Path) -> io::Result<()> {
        let (mut reader, shard, file_meta) = SnapshotReader::open(path)?;
        if shard != self.shard || file_meta.last_log_id != meta.last_log_id {
            return Err(self.corrupt(
                "snapshot",
                format!(
                    "file is of shard {shard} at {:?}, expected shard {} at {:?}",
                    file_meta.last_log_id, self.shard, meta.last_log_id
                ),
            ));
        }
        let kv_cf = cf(&self.db, CF_KV)?;
        let sm_cf = cf(&self.db, CF_SM_STATE)?;
        let sessions_cf = cf(&self.db, CF_SESSIONS)?;
        let streams_cf = cf(&self.db, CF_STREAMS)?;
        // One batch: readers see either the old state or the whole new one, never a mix.
        let mut batch = WriteBatch::default();
        let (from, to) = (keys::shard_prefix(self.shard), keys::shard_end(self.shard));
        batch.delete_range_cf(kv_cf, from.as_slice(), to.as_slice());
        batch.delete_range_cf(sessions_cf, from.as_slice(), to.as_slice());
        batch.delete_range_cf(streams_cf, from.as_slice(), to.as_slice());
        let mut session_count = 0u64;
        while let Some(chunk) = reader.next_chunk().map_err(|e| self.corrupt("snapshot", e))? {
            match chunk {
                Chunk::Kvs(kvs) => {
                    for (key, version, value) in kvs {
                        batch.put_cf(
                            kv_cf,
                            keys::kv_key(self.shard, &key),
                            keys::kv_value(version, &value),
                        );
                    }
                }
                Chunk::Sessions(records) => {
                    for (client, rec) in records {
                        let age = age_bucket(rec.last_index, self.session_age_shift);
                        batch.put_cf(
                            sessions_cf,
                            keys::session_age_key(self.shard, age, client),
                            [],
                        );
                        let raw = codec::encode(&rec).map_err(io::Error::other)?;
                        batch.put_cf(sessions_cf, keys::session_key(self.shard, client), raw);
                        session_count += 1;
                    }
                }
                Chunk::Streams(records) => {
                    for (key, value) in records {
                        batch.put_cf(streams_cf, keys::kv_key(self.shard, &key), value);
                    }
                }
            }
        }
        let raw = codec::encode(&session_count).map_err(io::Error::other)?;
        batch.put_cf(sm_cf, keys::tag_key(self.shard, keys::TAG_SESSION_COUNT), raw);
        match meta.last_log_id {
            Some(id) => batch.put_cf(
                sm_cf,
                keys::tag_key(self.shard, keys::TAG_APPLIED),
                codec::encode(&id).map_err(io::Error::other)?,
            ),
            None => batch.delete_cf(sm_cf, keys::tag_key(self.shard, keys::TAG_APPLIED)),
        }
        let membership = codec::encode(&meta.last_membership).map_err(io::Error::other)?;
        batch.put_cf(sm_cf, keys::tag_key(self.shard, keys::TAG_MEMBERSHIP), membership);
        let file_name = snapshot_file_name(meta);
        let final_path = self.snapshot_dir.join(&file_name);
        if path != final_path {
            std::fs::rename(path, &final_path)?;
            sync_dir(&final_path)?;
        }
        let rec = SnapshotRecord { meta: meta.clone(), file_name: file_name.clone() };
        batch.put_cf(
            sm_cf,
            keys::tag_key(self.shard, keys::TAG_SNAPSHOT),
            codec::encode(&rec).map_err(io::Error::other)?,
        );
        self.db.write(batch).map_err(rocks_err)?;
        self.remove_other_snapshots(&file_name);
        Ok(())
    }
}
