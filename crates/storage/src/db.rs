//! Opening the node's RocksDB.
//!
//! One database per node holds every shard (see [`crate::keys`]). The options that matter for
//! correctness:
//! - the WAL is on, and nothing that acknowledges something (log appends, votes, snapshot
//!   installs, purges) counts as durable before the [`crate::WalSyncer`] has run
//!   `FlushWAL(sync = true)` after it; one sync makes every earlier write durable, since all
//!   families share the one WAL;
//! - `manual_wal_flush`: writes stay in RocksDB's WAL buffer until that sync instead of costing
//!   a `write(2)` each. A crash loses the unsynced tail either way (page cache or buffer), and
//!   nothing in it was acknowledged;
//! - `atomic_flush`, so memtables of different families are flushed together and a crash can
//!   never leave the state machine flushed ahead of the log it came from.
//!
//! State-machine applies are written without sync: they can be replayed from the durable log,
//! and the applied index is written in the same batch, so a replay never applies twice.

use crate::keys::ALL_CFS;
use rocksdb::{ColumnFamilyDescriptor, DB, Options};
use std::path::Path;
use std::sync::Arc;

/// Sizes that bound RocksDB's memory: the memtable budget is shared by all families.
const WRITE_BUFFER_BYTES: usize = 32 << 20;
const BLOCK_CACHE_BYTES: usize = 128 << 20;

pub fn open(path: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_atomic_flush(true);
    opts.set_manual_wal_flush(true);
    opts.set_max_background_jobs(2);
    opts.set_db_write_buffer_size(WRITE_BUFFER_BYTES * 4);
    opts.set_paranoid_checks(true);
    let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let cfs = ALL_CFS.iter().map(|name| {
        let mut cf = Options::default();
        cf.set_write_buffer_size(WRITE_BUFFER_BYTES);
        cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        cf.set_block_based_table_factory(&table);
        ColumnFamilyDescriptor::new(*name, cf)
    });
    Ok(Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?))
}
