//! A read cache of one shard's session table.
//!
//! Every write with a session reads its client's record before it is applied (to answer a
//! retry with the stored result instead of applying it twice). A node profile under 64
//! writing clients put that read, a RocksDB point lookup in a memtable that changes all the
//! time, at about 5% of the node's CPU. The same few clients write over and over, so the
//! shard's state machine keeps the records it last wrote in memory.
//!
//! The cache only ever holds what RocksDB holds: it is filled from an apply batch's session
//! changes *after* that batch is written, forgets a client evicted from the table, and is
//! emptied when a snapshot replaces the shard's data. A miss reads RocksDB, so what the cache
//! keeps or drops never changes a result; that is why it may drop entries by any rule it
//! likes, while the table itself must evict the same client on every replica.
//!
//! Bounded by [`CLIENTS_MAX`] records and [`BYTES_MAX`] of encoded records per shard; a
//! record larger than [`RECORD_BYTES_MAX`] (a failed CAS keeps the current value as its
//! result) is not kept. When full it starts over empty: a shard with more writing clients than
//! the cache holds misses either way.
//!
//! Like the entry cache, it is released whole when its shard goes to sleep (a woken shard's
//! first write per client reads its record once), and what all of a node's session caches hold
//! is one gauge.

use crate::counted_bytes::CountedBytes;
use crate::sessions::SessionRecord;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;

pub const CLIENTS_MAX: usize = 4096;
pub const BYTES_MAX: usize = 1 << 20;
pub const RECORD_BYTES_MAX: usize = 1024;
/// What a kept record costs beyond its encoded size (map slot, key, allocation), roughly.
const RECORD_OVERHEAD_BYTES: usize = 64;

/// A change to one client's record, as written by an apply batch: the new record and its
/// encoded size, or `None` when the client was forgotten.
pub(crate) type SessionChange = Option<(SessionRecord, usize)>;

#[derive(Debug, Default)]
pub struct SessionCache {
    records: HashMap<u64, (SessionRecord, usize)>,
    /// This cache's bytes, counted in the node's gauge too.
    bytes: CountedBytes,
}

impl SessionCache {
    /// An empty cache whose bytes are counted in `node_bytes` too.
    pub fn counted_in(node_bytes: Gauge) -> Self {
        SessionCache { records: HashMap::new(), bytes: CountedBytes::in_node(node_bytes) }
    }

    /// The client's record, if the cache holds it (a miss says nothing: read RocksDB).
    pub(crate) fn get(&self, client_id: u64) -> Option<SessionRecord> {
        self.records.get(&client_id).map(|(rec, _)| rec.clone())
    }

    /// Takes in the changes of an apply batch that has been written.
    pub(crate) fn absorb(&mut self, changes: impl IntoIterator<Item = (u64, SessionChange)>) {
        for (client, change) in changes {
            if let Some((_, size)) = self.records.remove(&client) {
                self.bytes.sub(size + RECORD_OVERHEAD_BYTES);
            }
            let Some((rec, size)) = change else { continue };
            if size > RECORD_BYTES_MAX {
                continue;
            }
            if self.records.len() >= CLIENTS_MAX
                || self.bytes.get() + size + RECORD_OVERHEAD_BYTES > BYTES_MAX
            {
                self.clear();
            }
            self.bytes.add(size + RECORD_OVERHEAD_BYTES);
            self.records.insert(client, (rec, size));
        }
    }

    /// Forgets everything (the shard's data was replaced).
    pub(crate) fn clear(&mut self) {
        self.records.clear();
        self.bytes.clear();
    }

    /// Empties the cache and gives its memory back (its shard went to sleep).
    pub(crate) fn release(&mut self) {
        self.clear();
        self.records = HashMap::new();
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::CommandResult;

    fn rec(seq: u64) -> SessionRecord {
        SessionRecord { last_seq: seq, last_index: seq, result: CommandResult::Nothing }
    }

    #[test]
    fn follows_writes_and_evictions() {
        let mut c = SessionCache::default();
        c.absorb([(1, Some((rec(1), 10))), (2, Some((rec(2), 10)))]);
        assert_eq!(c.get(1), Some(rec(1)));
        c.absorb([(1, Some((rec(5), 10))), (2, None)]);
        assert_eq!(c.get(1), Some(rec(5)));
        assert_eq!(c.get(2), None, "a forgotten client must miss");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_record_too_big_to_keep_drops_the_old_one() {
        let mut c = SessionCache::default();
        c.absorb([(1, Some((rec(1), 10)))]);
        c.absorb([(1, Some((rec(2), RECORD_BYTES_MAX + 1)))]);
        assert_eq!(c.get(1), None, "the old record would be stale");
    }

    #[test]
    fn stays_within_its_bounds() {
        let mut c = SessionCache::default();
        for client in 0..(CLIENTS_MAX as u64 * 3) {
            c.absorb([(client, Some((rec(client), RECORD_BYTES_MAX)))]);
            assert!(c.len() <= CLIENTS_MAX);
            assert!(c.bytes.get() <= BYTES_MAX);
            assert_eq!(c.get(client), Some(rec(client)), "the newest record is kept");
        }
        let size: usize = c.records.values().map(|(_, s)| s + RECORD_OVERHEAD_BYTES).sum();
        assert_eq!(c.bytes.get(), size, "the byte count matches what is held");
    }

    #[test]
    fn the_node_gauge_follows_the_cache_and_release_gives_memory_back() {
        let node = Gauge::default();
        let mut c = SessionCache::counted_in(node.clone());
        c.absorb([(1, Some((rec(1), 10))), (2, Some((rec(2), 20)))]);
        assert_eq!(node.get(), 30 + 2 * RECORD_OVERHEAD_BYTES as i64);
        c.absorb([(2, None)]);
        assert_eq!(node.get(), 10 + RECORD_OVERHEAD_BYTES as i64);
        c.release();
        assert_eq!((c.len(), c.records.capacity(), node.get()), (0, 0, 0));
        c.absorb([(3, Some((rec(3), 10)))]);
        drop(c);
        assert_eq!(node.get(), 0, "a dropped cache leaves the count");
    }
}
