//! Choosing the replica for a `STALE` read.
//!
//! Stale reads are where replication turns into read capacity, so how they are spread decides
//! whether a slow replica drags the tail latency up. Round-robin ignores load; least
//! outstanding requests (power of two choices: sample two replicas, take the less busy) and
//! peak-EWMA (the same, weighing in-flight requests by recent worst latency) steer away from a
//! slow or overloaded replica; key affinity keeps a key on one replica for cache locality.
//! Ejected replicas are skipped while any other is available.

use crate::config::ReadPolicy;
use crate::nodes::NodeEntry;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Picks a replica for a stale read of `key_hash`, or `None` if `replicas` is empty.
pub fn pick(
    policy: ReadPolicy,
    replicas: &[Arc<NodeEntry>],
    key_hash: u64,
    rr: &AtomicUsize,
) -> Option<Arc<NodeEntry>> {
    let live: Vec<&Arc<NodeEntry>> = replicas.iter().filter(|n| !n.is_ejected()).collect();
    let pool: Vec<&Arc<NodeEntry>> = if live.is_empty() { replicas.iter().collect() } else { live };
    let n = pool.len();
    if n == 0 {
        return None;
    }
    let chosen = match policy {
        ReadPolicy::RoundRobin => pool[rr.fetch_add(1, Ordering::Relaxed) % n],
        ReadPolicy::KeyAffinity => pool[(key_hash % n as u64) as usize],
        ReadPolicy::LeastOutstanding | ReadPolicy::PeakEwma => {
            let (a, b) = two_distinct(n);
            let cost = |x: &NodeEntry| match policy {
                ReadPolicy::PeakEwma => (x.ewma_us().max(1)).saturating_mul(x.in_flight() + 1),
                _ => x.in_flight(),
            };
            if cost(pool[b]) < cost(pool[a]) { pool[b] } else { pool[a] }
        }
    };
    Some(chosen.clone())
}

fn two_distinct(n: usize) -> (usize, usize) {
    if n == 1 {
        return (0, 0);
    }
    let a = rand::random_range(0..n);
    let b = (a + 1 + rand::random_range(0..n - 1)) % n;
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::Nodes;

    fn replicas() -> Vec<Arc<NodeEntry>> {
        let nodes = Nodes::default();
        (1..=3).map(|i| nodes.get(i, &format!("127.0.0.1:{}", 1000 + i)).unwrap()).collect()
    }

    #[tokio::test]
    async fn round_robin_cycles_and_affinity_sticks() {
        let r = replicas();
        let rr = AtomicUsize::new(0);
        let ids: Vec<_> =
            (0..6).map(|_| pick(ReadPolicy::RoundRobin, &r, 0, &rr).unwrap().id).collect();
        assert_eq!(ids, [1, 2, 3, 1, 2, 3]);
        let a = pick(ReadPolicy::KeyAffinity, &r, 12345, &rr).unwrap().id;
        assert!((0..10).all(|_| pick(ReadPolicy::KeyAffinity, &r, 12345, &rr).unwrap().id == a));
    }

    #[tokio::test]
    async fn least_outstanding_avoids_the_busy_replica() {
        let r = replicas();
        let _busy: Vec<_> = (0..50).map(|_| r[0].start()).collect();
        let rr = AtomicUsize::new(0);
        let hits = (0..1000)
            .filter(|_| pick(ReadPolicy::LeastOutstanding, &r, 0, &rr).unwrap().id == 1)
            .count();
        // Node 1 only wins when both samples are node 1, which two distinct samples never are.
        assert_eq!(hits, 0);
    }
}
