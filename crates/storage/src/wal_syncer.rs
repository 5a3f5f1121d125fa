//! Group commit: one thread fsyncs the write-ahead log for every shard of the node.
//!
//! Raft may only be told that a log entry or a vote is persisted once it is on stable storage.
//! Syncing once per entry, or once per shard, would cap a node at a few hundred writes per
//! second. So durable writes happen in two steps:
//!
//! 1. the caller writes its batch to RocksDB *without* sync: it is now readable (in the
//!    memtable) and in the WAL's OS buffer, but not yet durable;
//! 2. the caller hands a completion to this thread, which takes every completion waiting (up
//!    to [`GROUP_MAX`]), calls `FlushWAL(sync = true)` once, and only then completes them all.
//!
//! One WAL serves all column families and all shards, and a WAL sync makes every byte written
//! before it durable, so one fsync covers the appends and votes of every shard that wrote
//! since the last one. Step 1 returning early is what lets openraft pipeline: it replicates
//! entries to followers while the leader's own fsync is still in flight, and counts the
//! leader's copy only when the completion fires.
//!
//! The queue is bounded ([`QUEUE_MAX`]): when the disk falls behind, callers wait instead of
//! growing memory. If a sync fails the error goes to every completion of the group: openraft
//! then stops the shard (a failed fsync leaves the page cache in an unknown state, so retrying
//! it would risk acknowledging lost data).

use crate::metrics::StorageMetrics;
use rocksdb::DB;
use std::sync::{Arc, Weak};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Completions waiting for the syncer before callers block.
pub const QUEUE_MAX: usize = 8192;
/// Completions finished by one fsync.
pub const GROUP_MAX: usize = 4096;

/// Something to run once the WAL is synced (or failed to sync).
pub type Completion = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

/// A handle to the node's WAL sync thread. Cheap to clone.
#[derive(Clone)]
pub struct WalSyncer {
    tx: mpsc::Sender<Completion>,
}

impl std::fmt::Debug for WalSyncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WalSyncer")
    }
}

impl WalSyncer {
    /// Starts the sync thread. It stops when every handle is dropped.
    pub fn start(db: Arc<DB>, metrics: StorageMetrics) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        std::thread::Builder::new()
            .name("ringkv-wal-sync".into())
            // A weak handle: the database closes as soon as the stores using it are dropped,
            // without waiting for this thread to notice its queue closed.
            .spawn({
                let db = Arc::downgrade(&db);
                move || run(&db, rx, &metrics)
            })?;
        Ok(WalSyncer { tx })
    }

    /// Runs `done` after the next WAL sync, which covers everything written before this call.
    pub async fn after_sync(&self, done: Completion) -> Result<(), std::io::Error> {
        self.tx.send(done).await.map_err(|_| closed())
    }

    /// Waits until everything written before this call is durable.
    pub async fn sync(&self) -> Result<(), std::io::Error> {
        let (tx, rx) = oneshot::channel();
        self.after_sync(Box::new(move |r| {
            // The waiter may have been cancelled; then nobody needs the answer.
            let _ = tx.send(r);
        }))
        .await?;
        rx.await.map_err(|_| closed())?
    }
}

fn closed() -> std::io::Error {
    std::io::Error::other("the WAL syncer has stopped")
}

fn run(db: &Weak<DB>, mut rx: mpsc::Receiver<Completion>, metrics: &StorageMetrics) {
    let mut group: Vec<Completion> = Vec::with_capacity(64);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = match db.upgrade() {
            Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
            None => Err("the database is closed".to_string()),
        };
        metrics.observe_group_commit(group.len(), started.elapsed());
        if let Err(e) = &result {
            tracing::error!(error = %e, waiting = group.len(), "WAL sync failed");
        }
        for done in group.drain(..) {
            done(result.clone().map_err(std::io::Error::other));
        }
    }
}
