//! Applying event-stream commands: topics, partitions, appends with idempotent producers,
//! retention trims, consumer-group offsets and change-history compaction.
//!
//! Like key-value commands, these run inside one apply batch, so a later command must see an
//! earlier one's writes (two appends to one partition in one batch). [`StreamOverlay`] holds
//! the batch's pending writes *and* range deletes over the `streams` family; reads go through
//! it first. Replicas cut apply batches differently (a live follower applies a few entries at
//! a time, a restarted one replays thousands), so anything read here must come out the same
//! either way: nothing may read the database behind a pending write or delete.
//!
//! Every outcome is decided from the shard's state and the entry alone (timestamps come in
//! the command, set by the proposing leader), so every replica stores the same bytes.

use crate::ShardId;
use crate::codec;
use crate::log_store::rocks_err;
use crate::streams::*;
use rocksdb::{ColumnFamily, DB, Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::io;

/// Pending changes to the `streams` family within one apply batch.
pub(crate) struct StreamOverlay {
    shard: ShardId,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Ranges deleted by this batch, `[from, to)`; a pending put after a delete wins.
    deleted: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The database side of an apply: where reads fall through to and writes go.
pub(crate) struct Target<'a> {
    pub db: &'a DB,
    pub cf: &'a ColumnFamily,
    pub batch: &'a mut WriteBatch,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("corrupt {what}: {e}"))
}

impl StreamOverlay {
    pub fn new(shard: ShardId) -> Self {
        StreamOverlay { shard, pending: BTreeMap::new(), deleted: Vec::new() }
    }

    fn get(&self, t: &Target<'_>, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if let Some(v) = self.pending.get(key) {
            return Ok(v.clone());
        }
        if self.deleted.iter().any(|(from, to)| key >= from.as_slice() && key < to.as_slice()) {
            return Ok(None);
        }
        t.db.get_cf(t.cf, key).map_err(rocks_err)
    }

    fn get_rec<T: DeserializeOwned>(
        &self,
        t: &Target<'_>,
        key: &[u8],
        what: &str,
    ) -> io::Result<Option<T>> {
        match self.get(t, key)? {
            None => Ok(None),
            Some(raw) => codec::decode(&raw).map(Some).map_err(|e| corrupt(what, e)),
        }
    }

    fn put_rec<T: Serialize>(&mut self, t: &mut Target<'_>, key: Vec<u8>, v: &T) -> io::Result<()> {
        let raw = codec::encode(v).map_err(io::Error::other)?;
        t.batch.put_cf(t.cf, &key, &raw);
        self.pending.insert(key, Some(raw));
        Ok(())
    }

    fn delete(&mut self, t: &mut Target<'_>, key: Vec<u8>) {
        t.batch.delete_cf(t.cf, &key);
        self.pending.insert(key, None);
    }

    fn delete_range(&mut self, t: &mut Target<'_>, from: Vec<u8>, to: Vec<u8>) {
        t.batch.delete_range_cf(t.cf, &from, &to);
        let doomed: Vec<Vec<u8>> =
            self.pending.range(from.clone()..to.clone()).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.pending.remove(&k);
        }
        self.deleted.push((from, to));
    }

    /// Every live key in `[from, to)`, database and overlay merged. Only for small ranges
    /// (one partition's producers).
    fn scan(
        &self,
        t: &Target<'_>,
        from: &[u8],
        to: &[u8],
    ) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(to.to_vec());
        for item in t.db.iterator_cf_opt(t.cf, opts, IteratorMode::From(from, Direction::Forward)) {
            let (k, v) = item.map_err(rocks_err)?;
            if !self.deleted.iter().any(|(a, b)| *k >= **a && *k < **b) {
                out.insert(k.to_vec(), v.to_vec());
            }
        }
        for (k, v) in self.pending.range(from.to_vec()..to.to_vec()) {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out)
    }

    fn count(&self, t: &Target<'_>, tag: u8) -> io::Result<u64> {
        Ok(self.get_rec::<u64>(t, &meta_key(self.shard, tag), "stream counter")?.unwrap_or(0))
    }

    fn set_count(&mut self, t: &mut Target<'_>, tag: u8, v: u64) -> io::Result<()> {
        self.put_rec(t, meta_key(self.shard, tag), &v)
    }

    /// Applies one stream command at log index `index`.
    pub fn apply(
        &mut self,
        t: &mut Target<'_>,
        cmd: StreamCommand,
        index: u64,
    ) -> io::Result<StreamResult> {
        use StreamResult::Rejected;
        let shard = self.shard;
        Ok(match cmd {
            StreamCommand::PutTopic { name, config } => {
                let key = topic_key(shard, &name);
                match self.get_rec::<TopicRecord>(t, &key, "topic record")? {
                    Some(r) if r.deleting => Rejected(StreamRejection::TopicDeleting),
                    Some(r) if r.config == config => {
                        StreamResult::Topic { topic: r, created: false }
                    }
                    Some(r) => Rejected(StreamRejection::TopicExists { existing: r }),
                    None => {
                        let count = self.count(t, META_TOPIC_COUNT)?;
                        if count >= TOPICS_MAX {
                            Rejected(StreamRejection::TooManyTopics { limit: TOPICS_MAX })
                        } else {
                            let topic =
                                TopicRecord { name, config, topic_id: index, deleting: false };
                            self.put_rec(t, key, &topic)?;
                            self.set_count(t, META_TOPIC_COUNT, count + 1)?;
                            StreamResult::Topic { topic, created: true }
                        }
                    }
                }
            }
            StreamCommand::RemoveTopic { name, topic_id, mark_only } => {
                let key = topic_key(shard, &name);
                match self.get_rec::<TopicRecord>(t, &key, "topic record")? {
                    None => StreamResult::Removed { existed: false },
                    Some(r) if topic_id != 0 && r.topic_id != topic_id => {
                        Rejected(StreamRejection::TopicChanged { current_topic_id: r.topic_id })
                    }
                    Some(mut r) if mark_only => {
                        r.deleting = true;
                        self.put_rec(t, key, &r)?;
                        StreamResult::Removed { existed: true }
                    }
                    Some(_) => {
                        self.delete(t, key);
                        let count = self.count(t, META_TOPIC_COUNT)?;
                        self.set_count(t, META_TOPIC_COUNT, count.saturating_sub(1))?;
                        StreamResult::Removed { existed: true }
                    }
                }
            }
            StreamCommand::CreatePartition { topic, partition, topic_id, config } => {
                let key = partition_key(shard, &topic, partition);
                match self.get_rec::<PartitionRecord>(t, &key, "partition record")? {
                    Some(p) if p.topic_id == topic_id => StreamResult::Partition(p),
                    Some(p) if p.topic_id > topic_id => {
                        Rejected(StreamRejection::TopicChanged { current_topic_id: p.topic_id })
                    }
                    old => {
                        if old.is_some() {
                            self.wipe_partition(t, &topic, partition);
                        }
                        let p = PartitionRecord { topic_id, config, ..Default::default() };
                        self.put_rec(t, key, &p)?;
                        StreamResult::Partition(p)
                    }
                }
            }
            StreamCommand::DropPartition { topic, partition, topic_id } => {
                let key = partition_key(shard, &topic, partition);
                match self.get_rec::<PartitionRecord>(t, &key, "partition record")? {
                    None => StreamResult::Removed { existed: false },
                    Some(p) if topic_id != 0 && p.topic_id > topic_id => {
                        Rejected(StreamRejection::TopicChanged { current_topic_id: p.topic_id })
                    }
                    Some(_) => {
                        self.wipe_partition(t, &topic, partition);
                        StreamResult::Removed { existed: true }
                    }
                }
            }
            StreamCommand::Append {
                topic,
                partition,
                topic_id,
                producer,
                timestamp_ms,
                events,
            } => {
                self.append(t, &topic, partition, topic_id, producer, timestamp_ms, events, index)?
            }
            StreamCommand::Trim { topic, partition, before_offset } => {
                let key = partition_key(shard, &topic, partition);
                let Some(mut p) = self.get_rec::<PartitionRecord>(t, &key, "partition record")?
                else {
                    return Ok(Rejected(StreamRejection::NoPartition));
                };
                let before = before_offset.min(p.next_offset);
                if before > p.start_offset {
                    let start_pos = if before == p.next_offset {
                        p.end_pos
                    } else {
                        let k = event_key(shard, &topic, partition, before);
                        self.get_rec::<EventRecord>(t, &k, "event")?
                            .ok_or_else(|| {
                                corrupt("partition", format!("event {before} is missing"))
                            })?
                            .pos
                    };
                    self.delete_range(
                        t,
                        event_key(shard, &topic, partition, p.start_offset),
                        event_key(shard, &topic, partition, before),
                    );
                    p.start_offset = before;
                    p.start_pos = start_pos;
                    self.put_rec(t, key, &p)?;
                }
                StreamResult::Trimmed { start_offset: p.start_offset }
            }
            StreamCommand::CommitOffset { topic, partition, group, offset } => {
                let key = partition_key(shard, &topic, partition);
                let Some(mut p) = self.get_rec::<PartitionRecord>(t, &key, "partition record")?
                else {
                    return Ok(Rejected(StreamRejection::NoPartition));
                };
                if offset > p.next_offset {
                    return Ok(Rejected(StreamRejection::OffsetBeyondEnd {
                        end_offset: p.next_offset,
                    }));
                }
                let gkey = group_key(shard, &topic, partition, &group);
                if self.get(t, &gkey)?.is_none() {
                    if p.groups >= GROUPS_PER_PARTITION_MAX {
                        return Ok(Rejected(StreamRejection::TooManyGroups {
                            limit: GROUPS_PER_PARTITION_MAX,
                        }));
                    }
                    p.groups += 1;
                    self.put_rec(t, key, &p)?;
                }
                self.put_rec(t, gkey, &offset)?;
                StreamResult::Committed
            }
            StreamCommand::CompactChanges { below_revision } => {
                let first = self.count(t, META_FIRST_REVISION)?;
                if below_revision > first {
                    self.delete_range(
                        t,
                        change_key(shard, 0, 0),
                        change_key(shard, below_revision, 0),
                    );
                    self.set_count(t, META_FIRST_REVISION, below_revision)?;
                }
                StreamResult::Compacted { first_revision: below_revision.max(first) }
            }
        })
    }

    fn wipe_partition(&mut self, t: &mut Target<'_>, topic: &str, partition: u32) {
        self.delete(t, partition_key(self.shard, topic, partition));
        for s in [SPACE_EVENT, SPACE_PRODUCER, SPACE_GROUP] {
            let from = partition_prefix(self.shard, s, topic, partition);
            // A partition prefix never ends in 0xff.. only (it ends with the partition number
            // and is below the next space), so it always has an end.
            let to = prefix_end(&from).unwrap_or_else(|| space_end(self.shard, s));
            self.delete_range(t, from, to);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        t: &mut Target<'_>,
        topic: &str,
        partition: u32,
        topic_id: u64,
        producer: Option<(u64, u64)>,
        timestamp_ms: u64,
        events: Vec<EventData>,
        index: u64,
    ) -> io::Result<StreamResult> {
        use StreamResult::Rejected;
        let shard = self.shard;
        let key = partition_key(shard, topic, partition);
        let Some(mut p) = self.get_rec::<PartitionRecord>(t, &key, "partition record")? else {
            return Ok(Rejected(StreamRejection::NoPartition));
        };
        if topic_id != 0 && p.topic_id != topic_id {
            return Ok(Rejected(StreamRejection::TopicChanged { current_topic_id: p.topic_id }));
        }
        let count = u32::try_from(events.len()).unwrap_or(u32::MAX);
        let mut known_producer = false;
        if let Some((id, seq)) = producer {
            let pkey = producer_key(shard, topic, partition, id);
            match self.get_rec::<ProducerRecord>(t, &pkey, "producer record")? {
                None if seq != 0 => {
                    return Ok(Rejected(StreamRejection::OutOfOrderSequence { expected: 0 }));
                }
                None => {}
                Some(r) if seq == r.batch_first_seq && count == r.batch_count => {
                    return Ok(StreamResult::Appended {
                        first_offset: r.batch_first_offset,
                        count,
                        duplicate: true,
                    });
                }
                Some(r) if seq <= r.last_seq => {
                    return Ok(Rejected(StreamRejection::DuplicateSequence {
                        last_seq: r.last_seq,
                    }));
                }
                Some(r) if seq != r.last_seq + 1 => {
                    return Ok(Rejected(StreamRejection::OutOfOrderSequence {
                        expected: r.last_seq + 1,
                    }));
                }
                Some(_) => known_producer = true,
            }
        }
        let first_offset = p.next_offset;
        for event in events {
            let size = event.size();
            let rec = EventRecord { pos: p.end_pos, timestamp_ms, event };
            self.put_rec(t, event_key(shard, topic, partition, p.next_offset), &rec)?;
            p.next_offset += 1;
            p.end_pos += size;
        }
        if let Some((id, seq)) = producer {
            if !known_producer {
                if p.producers >= PRODUCERS_PER_PARTITION_MAX {
                    self.forget_oldest_producer(t, topic, partition)?;
                } else {
                    p.producers += 1;
                }
            }
            let rec = ProducerRecord {
                last_seq: seq + u64::from(count) - 1,
                batch_first_seq: seq,
                batch_count: count,
                batch_first_offset: first_offset,
                last_index: index,
            };
            self.put_rec(t, producer_key(shard, topic, partition, id), &rec)?;
        }
        self.put_rec(t, key, &p)?;
        Ok(StreamResult::Appended { first_offset, count, duplicate: false })
    }

    fn forget_oldest_producer(
        &mut self,
        t: &mut Target<'_>,
        topic: &str,
        partition: u32,
    ) -> io::Result<()> {
        let from = partition_prefix(self.shard, SPACE_PRODUCER, topic, partition);
        let to = prefix_end(&from).unwrap_or_else(|| space_end(self.shard, SPACE_PRODUCER));
        let mut oldest: Option<(u64, Vec<u8>)> = None;
        for (k, raw) in self.scan(t, &from, &to)? {
            let r: ProducerRecord =
                codec::decode(&raw).map_err(|e| corrupt("producer record", e))?;
            // Ties cannot happen (one append per index), but keys break them deterministically.
            if oldest.as_ref().is_none_or(|(idx, _)| r.last_index < *idx) {
                oldest = Some((r.last_index, k));
            }
        }
        if let Some((_, k)) = oldest {
            self.delete(t, k);
        }
        Ok(())
    }
}
