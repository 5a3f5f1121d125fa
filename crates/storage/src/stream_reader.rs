//! Reads of a shard's event-stream data and change history, for the node's handlers.
//!
//! Like [`ShardReader::get`], these read what the shard has applied; the caller decides
//! whether that is fresh enough. Every read is bounded (events and bytes per call, changes per
//! call), so a request can never make the node materialize a whole partition.

use crate::codec;
use crate::keys::CF_STREAMS;
use crate::log_store::{cf, rocks_err};
use crate::reader::ShardReader;
use crate::streams::*;
use rocksdb::{Direction, IteratorMode, ReadOptions};
use serde::de::DeserializeOwned;
use std::io;

fn corrupt(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("corrupt {what}: {e}"))
}

/// Change records looked at per call, matching or not: a watch on a rare key must not make
/// one call walk the whole history.
pub const CHANGES_SCANNED_MAX: usize = 20_000;

/// One partition on this shard, as the retention task sees it.
#[derive(Debug, Clone)]
pub struct PartitionEntry {
    pub topic: String,
    pub partition: u32,
    pub record: PartitionRecord,
}

/// A page of the change history.
#[derive(Debug, Default)]
pub struct ChangePage {
    /// (revision, change), in revision order; never splits one revision.
    pub changes: Vec<(u64, ChangeRecord)>,
    /// Every change up to this revision was looked at (matching or not).
    pub scanned_to: u64,
}

/// Which keys a watch wants.
#[derive(Debug, Clone, Copy)]
pub enum KeyFilter<'a> {
    Exact(&'a [u8]),
    Prefix(&'a [u8]),
}

impl KeyFilter<'_> {
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            KeyFilter::Exact(k) => key == *k,
            KeyFilter::Prefix(p) => key.starts_with(p),
        }
    }
}

impl ShardReader {
    fn get_stream<T: DeserializeOwned>(&self, key: &[u8], what: &str) -> io::Result<Option<T>> {
        let cf = cf(&self.db, CF_STREAMS)?;
        match self.db.get_pinned_cf(cf, key).map_err(rocks_err)? {
            None => Ok(None),
            Some(raw) => codec::decode(&raw).map(Some).map_err(|e| corrupt(what, e)),
        }
    }

    /// Topics of the catalog (on the catalog shard), in name order; one if `name` is given.
    pub fn topics(&self, name: Option<&str>) -> io::Result<Vec<TopicRecord>> {
        if let Some(n) = name {
            return Ok(self
                .get_stream::<TopicRecord>(&topic_key(self.shard, n), "topic record")?
                .into_iter()
                .collect());
        }
        let cf = cf(&self.db, CF_STREAMS)?;
        let from = space(self.shard, SPACE_TOPIC);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(space_end(self.shard, SPACE_TOPIC));
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(cf, opts, IteratorMode::From(&from, Direction::Forward))
        {
            let (_, raw) = item.map_err(rocks_err)?;
            out.push(codec::decode(&raw).map_err(|e| corrupt("topic record", e))?);
            // The catalog is bounded by TOPICS_MAX; this keeps a damaged count from mattering.
            if out.len() as u64 >= TOPICS_MAX {
                break;
            }
        }
        Ok(out)
    }

    pub fn partition(&self, topic: &str, partition: u32) -> io::Result<Option<PartitionRecord>> {
        self.get_stream(&partition_key(self.shard, topic, partition), "partition record")
    }

    /// Every partition this shard holds (for retention; a shard holds a bounded number:
    /// topics × partitions / shards).
    pub fn partitions(&self) -> io::Result<Vec<PartitionEntry>> {
        let cf = cf(&self.db, CF_STREAMS)?;
        let from = space(self.shard, SPACE_PARTITION);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(space_end(self.shard, SPACE_PARTITION));
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(cf, opts, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, raw) = item.map_err(rocks_err)?;
            let rest = &key[9..];
            let len = usize::from(*rest.first().ok_or_else(|| corrupt("partition key", "empty"))?);
            let name = rest.get(1..1 + len).ok_or_else(|| corrupt("partition key", "short"))?;
            let p = rest.get(1 + len..5 + len).ok_or_else(|| corrupt("partition key", "short"))?;
            out.push(PartitionEntry {
                topic: String::from_utf8(name.to_vec()).map_err(|e| corrupt("topic name", e))?,
                partition: u32::from_be_bytes(
                    p.try_into().map_err(|e| corrupt("partition key", e))?,
                ),
                record: codec::decode(&raw).map_err(|e| corrupt("partition record", e))?,
            });
        }
        Ok(out)
    }

    pub fn event(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> io::Result<Option<EventRecord>> {
        self.get_stream(&event_key(self.shard, topic, partition, offset), "event")
    }

    /// Events from `offset` on, at most `max_events` and about `max_bytes` (at least one
    /// event if there is one).
    pub fn events(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_events: usize,
        max_bytes: u64,
    ) -> io::Result<Vec<(u64, EventRecord)>> {
        let cf = cf(&self.db, CF_STREAMS)?;
        let from = event_key(self.shard, topic, partition, offset);
        let prefix = partition_prefix(self.shard, SPACE_EVENT, topic, partition);
        let mut opts = ReadOptions::default();
        if let Some(end) = prefix_end(&prefix) {
            opts.set_iterate_upper_bound(end);
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for item in self.db.iterator_cf_opt(cf, opts, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, raw) = item.map_err(rocks_err)?;
            let off = key
                .get(prefix.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("event key", "bad length"))?;
            let rec: EventRecord = codec::decode(&raw).map_err(|e| corrupt("event", e))?;
            bytes += rec.event.size();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push((off, rec));
            if out.len() >= max_events {
                break;
            }
        }
        Ok(out)
    }

    pub fn group_offset(
        &self,
        topic: &str,
        partition: u32,
        group: &str,
    ) -> io::Result<Option<u64>> {
        self.get_stream(&group_key(self.shard, topic, partition, group), "group offset")
    }

    /// The oldest revision still in the change history (0: nothing was compacted).
    pub fn first_revision(&self) -> io::Result<u64> {
        Ok(self
            .get_stream(&meta_key(self.shard, META_FIRST_REVISION), "first revision")?
            .unwrap_or(0))
    }

    /// Changes in revisions `[from, to]` matching `filter`, at most about `max_changes` (cut
    /// only between revisions).
    pub fn changes(
        &self,
        from: u64,
        to: u64,
        filter: KeyFilter<'_>,
        max_changes: usize,
    ) -> io::Result<ChangePage> {
        let mut page = ChangePage { changes: Vec::new(), scanned_to: from.saturating_sub(1) };
        if from > to {
            return Ok(page);
        }
        let cf = cf(&self.db, CF_STREAMS)?;
        let start = change_key(self.shard, from, 0);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(match to.checked_add(1) {
            Some(end) => change_key(self.shard, end, 0),
            None => space_end(self.shard, SPACE_CHANGE),
        });
        let mut last_rev = None;
        for (scanned, item) in self
            .db
            .iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward))
            .enumerate()
        {
            let (key, raw) = item.map_err(rocks_err)?;
            let rev = change_revision(&key).ok_or_else(|| corrupt("change key", "short"))?;
            let full = page.changes.len() >= max_changes || scanned >= CHANGES_SCANNED_MAX;
            if full && last_rev != Some(rev) {
                // Stop between revisions: everything before this one has been looked at.
                page.scanned_to = rev - 1;
                return Ok(page);
            }
            last_rev = Some(rev);
            let change: ChangeRecord = codec::decode(&raw).map_err(|e| corrupt("change", e))?;
            if filter.matches(&change.key) {
                page.changes.push((rev, change));
            }
        }
        page.scanned_to = to;
        Ok(page)
    }
}
