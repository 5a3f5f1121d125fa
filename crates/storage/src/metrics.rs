//! Storage metrics, registered into the node's Prometheus registry.
//!
//! The group-commit figures say how well fsyncs are shared: `jobs_per_sync` near 1 under load
//! means the shards are not writing concurrently (or the disk is fast enough not to queue).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    /// What the shards' entry caches hold, all together (see `entry_cache`).
    pub(crate) entry_cache_bytes: Gauge,
    /// What the shards' session caches hold, all together (see `session_cache`).
    pub(crate) session_cache_bytes: Gauge,
    /// RocksDB's own memory, node-wide (read by [`crate::NodeStorage::refresh_metrics`]).
    pub(crate) rocksdb_memtable_bytes: Gauge,
    pub(crate) rocksdb_block_cache_bytes: Gauge,
    pub(crate) rocksdb_table_readers_bytes: Gauge,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            syncs: Counter::default(),
            jobs_per_sync: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            sync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            corruptions: Family::default(),
            entry_cache_bytes: Gauge::default(),
            session_cache_bytes: Gauge::default(),
            rocksdb_memtable_bytes: Gauge::default(),
            rocksdb_block_cache_bytes: Gauge::default(),
            rocksdb_table_readers_bytes: Gauge::default(),
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
        r.register(
            "entry_cache_bytes",
            "Log entries the shards keep in memory, estimated bytes (sleeping shards keep none)",
            self.entry_cache_bytes.clone(),
        );
        r.register(
            "session_cache_bytes",
            "Session records the shards keep in memory, estimated bytes (sleeping shards keep none)",
            self.session_cache_bytes.clone(),
        );
        r.register(
            "rocksdb_memtable_bytes",
            "RocksDB memtables, every column family (bounded by the write buffer budget)",
            self.rocksdb_memtable_bytes.clone(),
        );
        r.register(
            "rocksdb_block_cache_bytes",
            "RocksDB block cache in use (one cache for the node)",
            self.rocksdb_block_cache_bytes.clone(),
        );
        r.register(
            "rocksdb_table_readers_bytes",
            "RocksDB's table readers (indexes and filters outside the block cache), estimated",
            self.rocksdb_table_readers_bytes.clone(),
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
