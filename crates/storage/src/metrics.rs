//! Storage metrics, registered into the node's Prometheus registry.
//!
//! The group-commit figures say how well fsyncs are shared: `jobs_per_sync` near 1 under load
//! means the shards are not writing concurrently (or the disk is fast enough not to queue).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct StorageMetrics {
    syncs: Counter,
    jobs_per_sync: Histogram,
    sync_seconds: Histogram,
    /// CRC or decode failures found on read, by shard.
    corruptions: Family<Vec<(String, String)>, Counter>,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            syncs: Counter::default(),
            jobs_per_sync: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            sync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            corruptions: Family::default(),
        }
    }
}

impl StorageMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ringkv_storage");
        r.register(
            "group_commit_syncs",
            "WAL fsyncs made by the group committer",
            self.syncs.clone(),
        );
        r.register(
            "group_commit_jobs",
            "Durable writes (appends, votes, ...) covered by one fsync",
            self.jobs_per_sync.clone(),
        );
        r.register("group_commit_seconds", "Time of one WAL fsync", self.sync_seconds.clone());
        r.register(
            "corruptions",
            "Records that failed their CRC or did not decode",
            self.corruptions.clone(),
        );
    }

    pub(crate) fn observe_group_commit(&self, jobs: usize, took: Duration) {
        self.syncs.inc();
        self.jobs_per_sync.observe(jobs as f64);
        self.sync_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn corruption(&self, shard: u64) {
        self.corruptions.get_or_create(&vec![("shard".to_string(), shard.to_string())]).inc();
    }
}
