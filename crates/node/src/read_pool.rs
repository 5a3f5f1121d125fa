//! RocksDB reads off the async runtime, bounded.
//!
//! A node's tokio runtime drives every shard's Raft timers, heartbeats, replication and the
//! gRPC servers. A RocksDB read blocks its thread: a point read that misses the block cache
//! waits for the disk, and a scan of up to 10,000 keys or a page of stream events takes
//! milliseconds of CPU. Run on a runtime thread (two of them on a 2-core machine), a few such
//! reads at once stall every group's heartbeats behind them, and followers start elections
//! that nothing but a slow read caused.
//!
//! So every read of a shard's applied state goes through one [`ReadPool`] per node: the read
//! runs on tokio's blocking threads, and a semaphore bounds how many run at once. The bound
//! keeps the blocking pool from growing a thread per request under a read storm (tokio
//! allows 512): readers beyond it wait, asynchronously, for a permit; their wait is bounded
//! by the request's own deadline upstream and by the gRPC server's concurrency limits. The
//! permit travels into the blocking closure, so a read whose caller gave up still holds its
//! permit until it really ends: the bound counts threads, not callers.

use crate::error::NodeError;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Reads in flight at most per node, per core: a read that waits on the disk leaves its core
/// free for another, so a little more than one per core keeps the cores busy without
/// crowding out the runtime threads.
const READS_PER_CORE_MAX: usize = 2;
/// The floor, for machines that report one core.
const READS_MIN: usize = 4;

/// Runs blocking reads on tokio's blocking threads, at most `reads_max` at a time.
#[derive(Debug, Clone)]
pub struct ReadPool {
    permits: Arc<Semaphore>,
    reads_max: usize,
}

impl ReadPool {
    pub fn new(reads_max: usize) -> Self {
        let reads_max = reads_max.max(1);
        ReadPool { permits: Arc::new(Semaphore::new(reads_max)), reads_max }
    }

    /// A pool sized for this machine's cores.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ReadPool::new((cores * READS_PER_CORE_MAX).max(READS_MIN))
    }

    pub fn reads_max(&self) -> usize {
        self.reads_max
    }

    /// Reads running now.
    pub fn in_flight(&self) -> usize {
        self.reads_max - self.permits.available_permits()
    }

    /// Runs `read` on a blocking thread once a permit is free.
    pub async fn run<T, F>(&self, read: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, NodeError> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| NodeError::Internal("the read pool is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            read()
        })
        .await
        .map_err(|e| NodeError::Internal(format!("a read task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_runs_more_reads_than_its_bound() {
        let pool = ReadPool::new(3);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        // Reads 0, 1 and 2 hold their permits until all three run together, so the bound is
        // reached while nine more reads queue for it; none of those may start beside them.
        let barrier = Arc::new(Barrier::new(3));
        let mut tasks = Vec::new();
        for i in 0..12 {
            let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    if i < 3 {
                        barrier.wait();
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(i)
                })
                .await
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.expect("task").expect("read"));
        }
        got.sort_unstable();
        assert_eq!(got, (0..12).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 3, "the bound is reached and never passed");
        assert_eq!(pool.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_failed_read_returns_its_error_and_frees_its_permit() {
        let pool = ReadPool::new(1);
        let e = pool.run(|| Err::<(), _>(NodeError::Internal("disk".into()))).await;
        assert!(matches!(e, Err(NodeError::Internal(m)) if m == "disk"));
        let panicked = pool.run(|| -> Result<(), NodeError> { panic!("bad read") }).await;
        assert!(matches!(panicked, Err(NodeError::Internal(m)) if m.contains("read task")));
        assert_eq!(pool.run(|| Ok(7)).await.expect("the permit came back"), 7);
    }
}
