//! openraft's storage conformance suite, run against the RocksDB stores: append, truncate,
//! purge, vote, applied state, snapshot build/install and restart-style re-reads. Every store
//! built here is one shard of a fresh database, with other shards' data absent; the
//! multi-shard isolation tests below add neighbours.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use ringkv_storage::type_config::StorageError;
use ringkv_storage::{NodeStorage, ShardLogStore, ShardStateMachine, StorageMetrics, TypeConfig};

struct Builder {
    shard: u64,
}

impl StoreBuilder<TypeConfig, ShardLogStore, ShardStateMachine, (tempfile::TempDir, NodeStorage)>
    for Builder
{
    async fn build(
        &self,
    ) -> Result<((tempfile::TempDir, NodeStorage), ShardLogStore, ShardStateMachine), StorageError>
    {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        let storage = NodeStorage::open(dir.path(), StorageMetrics::default())
            .map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        let log = storage.log_store(self.shard);
        let sm = storage
            .state_machine(self.shard)
            .map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        Ok(((dir, storage), log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_store_passes_openraft_suite_shard_0() {
    Suite::test_all(Builder { shard: 0 }).await.unwrap();
}

/// A shard id with high bits set exercises the key prefixing (shard ids are big-endian
/// prefixes, so an off-by-one in range ends would leak into neighbours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_store_passes_openraft_suite_high_shard() {
    Suite::test_all(Builder { shard: u64::MAX - 1 }).await.unwrap();
}
