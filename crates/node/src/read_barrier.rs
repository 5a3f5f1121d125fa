//! Sharing ReadIndex rounds among a shard's concurrent LINEARIZABLE reads.
//!
//! A LINEARIZABLE read needs a ReadIndex round: the leader confirms with a quorum (a heartbeat
//! round) that it is still leader, then waits until it has applied up to the commit index it
//! saw. openraft starts a heartbeat broadcast per read; [`ReadBarrier`] runs one round at a
//! time per shard instead, and every read that arrived while a round was running waits for the
//! next one and shares it. That is safe because each read a round serves arrived before the
//! round started, so the quorum confirmed leadership after the read began (Raft dissertation
//! §6.4, batching ReadIndex requests), and a lone read waits for exactly one round, as before.
//! Measured: +40% linearizable reads at 64 clients (docs/performance.md). Each round is
//! bounded by [`ROUND_TIMEOUT`], so one round that cannot finish (a read index from a
//! leadership that ended before committing it, on a quiet shard) fails its readers, who
//! retry, instead of blocking the shard's reads behind it.
//!
//! Batching writes the same way (one `client_write_many` per shard at a time, taking every
//! write waiting) was tried and changed nothing measurable: write cost is per entry here, not
//! per round. The queue closes when the shard's Raft stops; waiters then get its fatal error.

use openraft::ReadPolicy;
use openraft::errors::{Fatal, LinearizableReadError, RaftError};
use ringkv_storage::TypeConfig;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use crate::shard::ShardRaft;

/// Reads waiting for the next ReadIndex round per shard.
pub const READ_QUEUE_MAX: usize = 4096;
/// The longest one round may take. A round normally takes a heartbeat round trip; one that
/// takes longer is waiting for something that may never come (its read index belonged to a
/// leadership that ended before committing it, and a quiet shard never reaches that index
/// again). Without a bound, every later read of the shard would queue behind it.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a round did not confirm the read.
#[derive(Debug, Clone)]
pub enum ReadFailure {
    Raft(RaftError<TypeConfig, LinearizableReadError<TypeConfig>>),
    /// The round took longer than [`ROUND_TIMEOUT`]; a new round may succeed.
    RoundTimeout,
}

pub type ReadOutcome = Result<(), ReadFailure>;

/// LINEARIZABLE reads of a shard share ReadIndex rounds.
///
/// The task that runs the rounds starts with the shard's first LINEARIZABLE read: most shards
/// of a node with thousands never serve one, and a task and its queue per shard are memory
/// held for nothing (~4 KiB each).
#[derive(Debug)]
pub struct ReadBarrier {
    raft: ShardRaft,
    tx: std::sync::OnceLock<mpsc::Sender<oneshot::Sender<ReadOutcome>>>,
}

impl ReadBarrier {
    pub fn new(raft: ShardRaft) -> Self {
        ReadBarrier { raft, tx: std::sync::OnceLock::new() }
    }

    fn queue(&self) -> &mpsc::Sender<oneshot::Sender<ReadOutcome>> {
        self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(READ_QUEUE_MAX);
            tokio::spawn(read_loop(self.raft.clone(), rx));
            tx
        })
    }

    /// Returns once a ReadIndex round that started after this call has completed and the
    /// shard has applied up to its read index.
    pub async fn wait(&self) -> ReadOutcome {
        let (tx, rx) = oneshot::channel();
        let stopped = || Err(ReadFailure::Raft(RaftError::Fatal(Fatal::Stopped)));
        if self.queue().send(tx).await.is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }
}

async fn read_loop(raft: ShardRaft, mut rx: mpsc::Receiver<oneshot::Sender<ReadOutcome>>) {
    while let Some(first) = rx.recv().await {
        // Everyone queued now arrived before the round below starts.
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let round = raft.ensure_linearizable(ReadPolicy::ReadIndex);
        let outcome = match tokio::time::timeout(ROUND_TIMEOUT, round).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ReadFailure::Raft(e)),
            Err(_) => Err(ReadFailure::RoundTimeout),
        };
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
    }
}
