//! Shard-map fetches shared by the calls that need one at the same moment.
//!
//! Every `WRONG_SHARD` answer, and every redirect to a node the map does not know, makes the
//! call fetch the whole shard map from the nodes. Those answers come in bursts: during a
//! replica move or while a node comes back empty, every call to the shards concerned runs
//! into the same stale map at once, and each fetching its own copy multiplied the load on the
//! nodes at the moment they were busiest.
//!
//! So fetches run one at a time and are numbered, and a caller joins the first fetch that
//! *starts after it asked*: it notes how many fetches had started, waits its turn, and if a
//! later-numbered fetch has finished meanwhile it takes that fetch's outcome (a map or the
//! error) instead of fetching again. A fetch that was already under way when the caller asked
//! does not count: it may have read the map before the change the caller ran into. A burst
//! of any size therefore costs at most two fetches: the one under way and one after it.
//!
//! A caller cancelled while fetching releases its turn without an outcome; the next one
//! fetches itself.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Mutex;

/// Coalesces concurrent fetches of one thing (the shard map) whose outcome is `T`.
#[derive(Debug)]
pub(crate) struct MapFetch<T> {
    /// Fetches started so far; only changed by the fetch holding `last`'s lock.
    started: AtomicU64,
    /// The number and outcome of the newest fetch that finished.
    last: Mutex<Option<(u64, T)>>,
}

impl<T> Default for MapFetch<T> {
    fn default() -> Self {
        MapFetch { started: AtomicU64::new(0), last: Mutex::new(None) }
    }
}

impl<T: Clone> MapFetch<T> {
    /// The outcome of a fetch that started after this call: a shared one if one finished while
    /// this call waited for its turn, else `fetch()`'s.
    pub(crate) async fn run<F, Fut>(&self, fetch: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let asked = self.started.load(Ordering::Acquire);
        let mut last = self.last.lock().await;
        if let Some((number, outcome)) = last.as_ref()
            && *number > asked
        {
            return outcome.clone();
        }
        let number = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        let outcome = fetch().await;
        *last = Some((number, outcome.clone()));
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    #[tokio::test]
    async fn callers_that_ask_together_share_one_fetch_after_the_one_under_way() {
        let fetch = Arc::new(MapFetch::<u64>::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        // A fetch under way, held until released.
        let first = tokio::spawn({
            let (fetch, fetches, release) = (fetch.clone(), fetches.clone(), release.clone());
            async move {
                fetch
                    .run(|| async move {
                        let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                        release.notified().await;
                        n as u64
                    })
                    .await
            }
        });
        while fetch.started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Fifty callers ask while it runs: it may predate what they saw, so they do not take
        // its outcome, but they share the one fetch that follows it.
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let (fetch, fetches) = (fetch.clone(), fetches.clone());
                tokio::spawn(async move {
                    fetch
                        .run(|| async move { (fetches.fetch_add(1, Ordering::SeqCst) + 1) as u64 })
                        .await
                })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        assert_eq!(first.await.unwrap(), 1);
        for w in waiters {
            assert_eq!(w.await.unwrap(), 2, "every waiter got the second fetch's outcome");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // A caller that asks after everything finished fetches again.
        let n = fetch.run(|| async { 3 }).await;
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn a_cancelled_fetch_leaves_no_outcome_and_the_next_caller_fetches() {
        let fetch = MapFetch::<u64>::default();
        let cancelled = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            fetch.run(|| async {
                std::future::pending::<()>().await;
                1
            }),
        )
        .await;
        assert!(cancelled.is_err());
        assert_eq!(fetch.run(|| async { 2 }).await, 2);
    }
}
