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
//!
//! One option is for speed: inserting into a memtable is a skiplist search, and with many
//! shards each insert lands somewhere else (shard ids lead every key). In a 64-shard write
//! profile the searches of the Raft log's inserts alone were ~6% of a node's CPU, although
//! every shard appends at the end of its own range. The families written that way (the log,
//! the Raft state, the state-machine records rewritten with every apply) keep an insert hint
//! per shard (`memtable_insert_with_hint_prefix_extractor` on the 8-byte shard prefix: ~250
//! bytes per shard and family in each memtable), so such an insert starts where the shard's
//! last one went. RocksDB ignores hints when several writers insert into memtables at once, so
//! concurrent memtable writes are off: a node's writers are its few runtime threads, whose
//! write groups are one or two batches.

use crate::keys::{ALL_CFS, CF_RAFT_LOG, CF_RAFT_STATE, CF_SM_STATE};
use rocksdb::{ColumnFamilyDescriptor, DB, Options};
use std::path::Path;
use std::sync::Arc;

/// Sizes that bound RocksDB's memory: the memtable budget is shared by all families.
const WRITE_BUFFER_BYTES: usize = 32 << 20;
const BLOCK_CACHE_BYTES: usize = 128 << 20;

/// Families whose writes for a shard land next to that shard's previous write (see above).
const HINTED_CFS: [&str; 3] = [CF_RAFT_LOG, CF_RAFT_STATE, CF_SM_STATE];
/// An insert hint per shard: every key starts with the shard id, 8 bytes (see `keys`).
const HINT_BY_SHARD: &str = "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.8";

pub fn open(path: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_atomic_flush(true);
    opts.set_manual_wal_flush(true);
    opts.set_max_background_jobs(2);
    opts.set_db_write_buffer_size(WRITE_BUFFER_BYTES * 4);
    opts.set_paranoid_checks(true);
    opts.set_allow_concurrent_memtable_write(false);
    let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let mut cfs = Vec::with_capacity(ALL_CFS.len());
    for name in ALL_CFS {
        let mut cf = if HINTED_CFS.contains(&name) {
            Options::default().get_options_from_string(HINT_BY_SHARD)?
        } else {
            Options::default()
        };
        cf.set_write_buffer_size(WRITE_BUFFER_BYTES);
        cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        cf.set_block_based_table_factory(&table);
        cfs.push(ColumnFamilyDescriptor::new(name, cf));
    }
    Ok(Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of the newest OPTIONS file RocksDB wrote (what it actually runs with).
    fn options_file(dir: &Path) -> String {
        let file = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("OPTIONS-"))
            .max_by_key(|e| e.file_name())
            .expect("an OPTIONS file");
        std::fs::read_to_string(file.path()).unwrap()
    }

    #[test]
    fn appending_families_keep_an_insert_hint_per_shard_and_the_others_none() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()).unwrap());
        let text = options_file(dir.path());
        // Hints are ignored while several writers insert at once.
        assert!(text.contains("allow_concurrent_memtable_write=false"));
        for name in ALL_CFS {
            let section = text
                .split("[CFOptions \"")
                .find_map(|s| s.strip_prefix(&format!("{name}\"")))
                .unwrap_or_else(|| panic!("family {name} recorded"));
            let hinted = section
                .contains("memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.8");
            assert_eq!(hinted, HINTED_CFS.contains(&name), "family {name}");
        }
    }
}
