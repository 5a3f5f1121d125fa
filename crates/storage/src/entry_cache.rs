//! The newest entries of one shard's Raft log, kept in memory.
//!
//! Every entry is read back soon after it is appended: by the leader's replication streams
//! (one read per follower) and by the state-machine worker on every replica, which openraft
//! feeds from the log store. From RocksDB each such read costs an iterator, a seek through
//! memtables (and the range tombstones that purges leave), a CRC check and a decode; in a
//! 64-client write profile, reading entries back was about a tenth of a node's CPU. The
//! cache answers those reads with clones of the entries just written (TiKV keeps an entry
//! cache for the same reason).
//!
//! The invariant that makes it safe: every cached entry is the entry the log holds at its
//! index (a contiguous run, possibly empty). Every change to the log (append, truncate,
//! purge) changes the cache in the same call, and openraft makes those calls from one task
//! in order; an append that overwrites or skips indexes empties the cache rather than reason
//! about it. Only bounded ranges the cache holds whole are answered; everything else goes to
//! RocksDB, which stays the source of truth (after a restart the cache starts empty).
//!
//! Bounded by [`ENTRIES_MAX`] and [`BYTES_MAX`] per shard (the oldest entries leave first),
//! counting an over-estimate of each entry's size in memory, not its encoded size: a follower
//! far behind reads from RocksDB, as before.
//!
//! A per-shard bound alone would let a node with a thousand shards keep a gigabyte of entries
//! nobody will read again, so the cache is also released whole when its shard goes to sleep
//! (see the node's `quiesce`): a group may only sleep once every follower it waits for holds
//! its last entry and everything is applied, so no reader needs the cached entries any more
//! (a follower left out as gone reads RocksDB, like any follower far behind), and a woken
//! group fills its cache again from the entries it appends. What all of a node's caches hold
//! is one gauge ([`EntryCache::counted_in`]), so the bound can be watched, not assumed.
//!
//! And awake shards share a node-wide budget ([`NODE_BYTES_MAX`]): a thousand busy shards would
//! otherwise fill a gibibyte. An append that finds the node past it sheds the appending
//! shard's oldest entries until the node is within the budget again or the shard is down to
//! [`SHARD_FLOOR_BYTES`] (what its followers and its apply read next, at the rates these
//! shards see; always its newest entry); the shards that stopped appending give theirs back
//! when they fall asleep, a second or so later. No global eviction order is kept: the shards
//! that write are the ones that pay, which is cheap and needs no lock beyond their own. The
//! price: where idle shards cannot sleep (quiescence off, a move or a transfer pending, no
//! quorum), they keep their entries and the writing shards stay at their floors, reading
//! more from RocksDB; memory stays bounded either way.
//!
//! One thing the cache gives up: entries it serves are the ones written from memory, so their
//! CRC is not checked again. Damage to a recent entry on disk is found when it is next read
//! from disk (after a restart, or by a follower far behind), as with entries the RocksDB block
//! cache serves.

use crate::counted_bytes::CountedBytes;
use crate::type_config::Entry;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::VecDeque;

/// Entries kept per shard at most.
pub const ENTRIES_MAX: usize = 1024;
/// Bytes kept per shard at most, as estimated by the log store (64 shards on a node: 64 MiB).
pub const BYTES_MAX: usize = 1 << 20;
/// What all of a node's entry caches may hold before appending shards shed down to
/// [`SHARD_FLOOR_BYTES`]: 256 shards' full caches, as much as RocksDB's memtables and block
/// cache together.
pub const NODE_BYTES_MAX: usize = 256 << 20;
/// What a shard keeps when the node is over its budget: about a hundred entries of a few
/// hundred bytes, more than a follower in step lags behind (and always its newest entry, which
/// every reader wants next).
pub const SHARD_FLOOR_BYTES: usize = 64 << 10;

#[derive(Debug)]
pub struct EntryCache {
    /// (entry, its encoded size), consecutive indexes.
    entries: VecDeque<(Entry, usize)>,
    /// This cache's bytes, counted in the node's gauge too.
    bytes: CountedBytes,
    /// Past this in the node's gauge, appends shed this cache down to [`SHARD_FLOOR_BYTES`].
    node_bytes_max: usize,
}

impl Default for EntryCache {
    /// A cache counted alone, under the node budget.
    fn default() -> Self {
        EntryCache::counted_in(Gauge::default(), NODE_BYTES_MAX)
    }
}

impl EntryCache {
    /// An empty cache whose bytes are counted in `node_bytes` too, which it helps keep
    /// within `node_bytes_max` ([`NODE_BYTES_MAX`] on a node).
    pub fn counted_in(node_bytes: Gauge, node_bytes_max: usize) -> Self {
        EntryCache {
            entries: VecDeque::new(),
            bytes: CountedBytes::in_node(node_bytes),
            node_bytes_max,
        }
    }

    fn node_over_budget(&self) -> bool {
        usize::try_from(self.bytes.node()).is_ok_and(|b| b > self.node_bytes_max)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    /// Records entries just written to the log, with their encoded sizes (consecutive
    /// indexes).
    pub fn append(&mut self, written: Vec<(Entry, usize)>) {
        let Some(first) = written.first().map(|(e, _)| e.log_id.index) else { return };
        if self.last_index().is_some_and(|last| last.checked_add(1) != Some(first)) {
            // Overwritten indexes (openraft truncates first, so this is not expected) or a
            // gap (the log jumped after a snapshot): start over from these entries.
            self.clear();
        }
        for (entry, size) in written {
            self.bytes.add(size);
            self.entries.push_back((entry, size));
        }
        // An entry larger than the shard's whole budget is not kept at all (the run stays
        // contiguous: only the oldest entries leave). The node budget keeps the newest entry.
        while self.entries.len() > ENTRIES_MAX
            || self.bytes.get() > BYTES_MAX
            || (self.bytes.get() > SHARD_FLOOR_BYTES
                && self.entries.len() > 1
                && self.node_over_budget())
        {
            self.pop_front();
        }
    }

    /// Forgets entries at `from` and after (the log removed them).
    pub fn truncate_from(&mut self, from: u64) {
        while self.last_index().is_some_and(|last| last >= from) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes.sub(size);
            }
        }
    }

    /// Forgets entries up to and including `upto` (the log purged them).
    pub fn purge_upto(&mut self, upto: u64) {
        while self.first_index().is_some_and(|first| first <= upto) {
            self.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes.clear();
    }

    /// Empties the cache and gives its memory back (its shard went to sleep). `clear` keeps
    /// the buffer, which after a busy spell holds up to [`ENTRIES_MAX`] slots.
    pub fn release(&mut self) {
        self.clear();
        self.entries = VecDeque::new();
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes.sub(size);
        }
    }

    /// The entries with index in `start..end`, if the cache holds all of them; `None` if the
    /// log store must read them.
    pub fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        if start >= end {
            return Some(Vec::new());
        }
        let (first, last) = (self.first_index()?, self.last_index()?);
        if start < first || end - 1 > last {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(self.entries.range(from..to).map(|(e, _)| e.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::type_config::LogId;
    use openraft::entry::EntryPayload;
    use openraft::vote::leader_id_adv::LeaderId;

    fn entry(term: u64, index: u64) -> (Entry, usize) {
        let log_id = LogId { leader_id: LeaderId { term, node_id: 1 }, index };
        (Entry { log_id, payload: EntryPayload::Blank }, 100)
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        v.map(|v| v.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect())
    }

    #[test]
    fn answers_only_ranges_it_holds_whole() {
        let mut c = EntryCache::default();
        assert_eq!(indexes(c.get(1, 2)), None);
        c.append((5..=8).map(|i| entry(1, i)).collect());
        assert_eq!(indexes(c.get(6, 8)), Some(vec![(1, 6), (1, 7)]));
        assert_eq!(indexes(c.get(5, 9)), Some(vec![(1, 5), (1, 6), (1, 7), (1, 8)]));
        assert_eq!(indexes(c.get(4, 6)), None, "index 4 is not cached");
        assert_eq!(indexes(c.get(7, 10)), None, "index 9 is not cached");
        assert_eq!(indexes(c.get(7, 7)), Some(vec![]));
    }

    #[test]
    fn truncation_overwrites_and_gaps_never_leave_a_stale_entry() {
        let mut c = EntryCache::default();
        c.append((1..=5).map(|i| entry(1, i)).collect());
        c.truncate_from(4);
        assert_eq!(indexes(c.get(1, 4)), Some(vec![(1, 1), (1, 2), (1, 3)]));
        assert_eq!(indexes(c.get(1, 5)), None);
        c.append(vec![entry(2, 4)]);
        assert_eq!(indexes(c.get(3, 5)), Some(vec![(1, 3), (2, 4)]));
        // An append over cached indexes (no truncation first) empties the cache.
        c.append(vec![entry(3, 2)]);
        assert_eq!(indexes(c.get(1, 2)), None);
        assert_eq!(indexes(c.get(2, 3)), Some(vec![(3, 2)]));
        // After a gap only the new run is kept.
        c.append(vec![entry(3, 10)]);
        assert_eq!(indexes(c.get(2, 3)), None);
        assert_eq!(indexes(c.get(10, 11)), Some(vec![(3, 10)]));
    }

    #[test]
    fn purges_and_bounds_drop_the_oldest() {
        let mut c = EntryCache::default();
        c.append((1..=10).map(|i| entry(1, i)).collect());
        c.purge_upto(4);
        assert_eq!(indexes(c.get(4, 6)), None);
        assert_eq!(indexes(c.get(5, 6)), Some(vec![(1, 5)]));
        c.append((11..=(10 + ENTRIES_MAX as u64)).map(|i| entry(1, i)).collect());
        assert_eq!(c.entries.len(), ENTRIES_MAX);
        assert_eq!(c.bytes(), ENTRIES_MAX * 100);
        assert_eq!(c.last_index(), Some(10 + ENTRIES_MAX as u64));
        let big = (entry(1, 11 + ENTRIES_MAX as u64).0, BYTES_MAX + 1);
        c.append(vec![big]);
        assert_eq!(c.entries.len(), 0, "an entry over the whole budget is not kept");
        assert_eq!(c.bytes(), 0);
        c.append(vec![entry(1, 12 + ENTRIES_MAX as u64)]);
        assert_eq!(c.first_index(), Some(12 + ENTRIES_MAX as u64));
    }

    #[test]
    fn the_node_gauge_follows_every_cache_and_release_gives_memory_back() {
        let node = Gauge::default();
        let mut a = EntryCache::counted_in(node.clone(), NODE_BYTES_MAX);
        let mut b = EntryCache::counted_in(node.clone(), NODE_BYTES_MAX);
        a.append((1..=10).map(|i| entry(1, i)).collect());
        b.append((1..=5).map(|i| entry(1, i)).collect());
        assert_eq!(node.get(), 1500);
        a.purge_upto(2);
        a.truncate_from(10);
        assert_eq!(node.get(), 1200, "7 entries of a, 5 of b");
        a.append(vec![entry(2, 3)]); // a gap: starts over
        assert_eq!(node.get(), 600);
        a.release();
        assert_eq!((a.bytes(), a.entries.capacity(), node.get()), (0, 0, 500));
        assert_eq!(indexes(a.get(3, 4)), None, "a released cache answers nothing");
        a.append(vec![entry(2, 4)]);
        assert_eq!(indexes(a.get(4, 5)), Some(vec![(2, 4)]), "and fills again");
        drop(b);
        assert_eq!(node.get(), 100, "a dropped cache leaves the count");
        a.clear();
        assert_eq!(node.get(), 0);
    }

    #[test]
    fn past_the_node_budget_appending_shards_shed_their_oldest_down_to_a_floor() {
        let quarter = BYTES_MAX / 4;
        let small = 1024;
        let sized = |index: u64, bytes: usize| (entry(1, index).0, bytes);

        // Budget two and a half full caches; two are full; a third fills up.
        let node = Gauge::default();
        let budget = BYTES_MAX * 5 / 2;
        let mut c: Vec<EntryCache> =
            (0..3).map(|_| EntryCache::counted_in(node.clone(), budget)).collect();
        for cache in &mut c[..2] {
            cache.append((1..=4).map(|i| sized(i, quarter)).collect());
        }
        for i in 1..=4 {
            c[2].append(vec![sized(i, quarter)]);
        }
        // It shed just enough of its oldest to bring the node back within the budget.
        assert_eq!(node.get(), budget as i64);
        assert_eq!(indexes(c[2].get(3, 5)), Some(vec![(1, 3), (1, 4)]));
        assert_eq!(indexes(c[2].get(2, 3)), None);
        assert_eq!(c[0].bytes() + c[1].bytes(), 2 * BYTES_MAX, "the others keep theirs");

        // Where its own shedding cannot bring the node back, an appender keeps its floor.
        let node = Gauge::default();
        let mut full = EntryCache::counted_in(node.clone(), BYTES_MAX);
        let mut busy = EntryCache::counted_in(node.clone(), BYTES_MAX);
        full.append((1..=4).map(|i| sized(i, quarter)).collect());
        busy.append((1..=400).map(|i| sized(i, small)).collect());
        let kept = busy.bytes();
        assert!(kept > SHARD_FLOOR_BYTES - small && kept <= SHARD_FLOOR_BYTES, "kept {kept}");
        assert_eq!(busy.last_index(), Some(400), "the newest entries");
        // A huge entry alone is still kept: every reader wants the newest entry next.
        busy.append(vec![sized(401, quarter)]);
        assert_eq!(indexes(busy.get(401, 402)), Some(vec![(1, 401)]));

        // Within the budget again (the full one's shard fell asleep), nothing is shed.
        full.release();
        let before = busy.bytes();
        busy.append((402..=500).map(|i| sized(i, small)).collect());
        assert_eq!(busy.bytes(), before + 99 * small);
    }
}
