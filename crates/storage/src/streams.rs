//! Event streams and the KV change history: what the Raft log carries for them, and how they
//! are laid out in the `streams` column family.
//!
//! Everything lives under the shard's 8-byte prefix, then a one-byte *space*:
//!
//! | space | key after it                     | value                                   |
//! |-------|----------------------------------|-----------------------------------------|
//! | META  | tag                              | counters (topic count, first revision)  |
//! | TOPIC | name                             | [`TopicRecord`] (catalog shard only)     |
//! | PART  | partition key                    | [`PartitionRecord`]                     |
//! | EVENT | partition key, offset (u64 BE)   | [`EventRecord`]                         |
//! | PROD  | partition key, producer (u64 BE) | [`ProducerRecord`]                      |
//! | GROUP | partition key, group name        | committed offset (u64)                  |
//! | CHANGE| revision (u64 BE), n (u32 BE)    | [`ChangeRecord`]                        |
//!
//! A *partition key* is `[name length: u8] name [partition: u32 BE]`, so one partition's events
//! are one contiguous range sorted by offset, and the length byte keeps `ab`+`c` apart from
//! `a`+`bc`. Because every key of a shard shares its prefix, a snapshot copies the shard's
//! whole range of this family as it is, and installing one replaces that range.
//!
//! Byte positions: each event stores how many bytes the partition had received before it
//! (`pos`), so the size of what a partition keeps is `end_pos - pos(first kept event)`, and
//! trimming to an offset needs one point read instead of a scan of what it removes.

use crate::ShardId;
use serde::{Deserialize, Serialize};

pub const SPACE_META: u8 = 0;
pub const SPACE_TOPIC: u8 = 1;
pub const SPACE_PARTITION: u8 = 2;
pub const SPACE_EVENT: u8 = 3;
pub const SPACE_PRODUCER: u8 = 4;
pub const SPACE_GROUP: u8 = 5;
pub const SPACE_CHANGE: u8 = 6;

pub const META_TOPIC_COUNT: u8 = 1;
pub const META_FIRST_REVISION: u8 = 2;

/// Most topics in a cluster: the catalog is read whole by `ListTopics`.
pub const TOPICS_MAX: u64 = 10_000;
/// Producers remembered per partition; past it, the one that appended longest ago is
/// forgotten (its next batch must then start a new producer id, as with Kafka's expiry).
pub const PRODUCERS_PER_PARTITION_MAX: u32 = 1_000;
/// Consumer groups per partition; more are refused (they are never forgotten silently,
/// because a forgotten committed offset would re-deliver a whole partition).
pub const GROUPS_PER_PARTITION_MAX: u32 = 1_000;
/// Longest consumer group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 255;

/// What a partition keeps; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub max_age_ms: u64,
    pub max_bytes: u64,
    pub max_events: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub partitions: u32,
    pub retention: Retention,
}

/// A topic in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub config: TopicConfig,
    /// The catalog's log index when the topic was created: tells incarnations apart.
    pub topic_id: u64,
    pub deleting: bool,
}

/// A partition's state, on the shard that holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub topic_id: u64,
    pub config: TopicConfig,
    pub start_offset: u64,
    pub next_offset: u64,
    /// Byte position of the first kept event and of the end.
    pub start_pos: u64,
    pub end_pos: u64,
    pub producers: u32,
    pub groups: u32,
}

impl PartitionRecord {
    pub fn bytes(&self) -> u64 {
        self.end_pos - self.start_pos
    }
}

/// An event as appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl EventData {
    /// The bytes counted against retention and limits.
    pub fn size(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.key.len() + self.payload.len() + headers) as u64
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Bytes the partition had received before this event.
    pub pos: u64,
    pub timestamp_ms: u64,
    pub event: EventData,
}

/// What a partition remembers of an idempotent producer: its last batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerRecord {
    pub last_seq: u64,
    pub batch_first_seq: u64,
    pub batch_count: u32,
    pub batch_first_offset: u64,
    /// The log index of its last append, to forget the least recent producer first.
    pub last_index: u64,
}

/// One change of a key, for watchers. `value: None` is a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// The event-stream commands of the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamCommand {
    /// Catalog shard: create the topic unless it exists (idempotent for the same config).
    PutTopic {
        name: String,
        config: TopicConfig,
    },
    /// Catalog shard: mark as deleting, or remove, the topic with this id.
    RemoveTopic {
        name: String,
        topic_id: u64,
        mark_only: bool,
    },
    /// Create the partition for this incarnation (replacing an older one's data).
    CreatePartition {
        topic: String,
        partition: u32,
        topic_id: u64,
        config: TopicConfig,
    },
    DropPartition {
        topic: String,
        partition: u32,
        topic_id: u64,
    },
    Append {
        topic: String,
        partition: u32,
        /// 0: any incarnation.
        topic_id: u64,
        /// (producer id, sequence of the first event).
        producer: Option<(u64, u64)>,
        /// The proposing leader's clock, so every replica stores the same time.
        timestamp_ms: u64,
        events: Vec<EventData>,
    },
    /// Remove events before `before_offset` (retention; proposed by the leader).
    Trim {
        topic: String,
        partition: u32,
        before_offset: u64,
    },
    CommitOffset {
        topic: String,
        partition: u32,
        group: String,
        offset: u64,
    },
    /// Forget the change history below this revision.
    CompactChanges {
        below_revision: u64,
    },
}

impl StreamCommand {
    /// The command's kind, for logs (topic names, events and groups stay out of them).
    pub fn name(&self) -> &'static str {
        match self {
            StreamCommand::PutTopic { .. } => "put_topic",
            StreamCommand::RemoveTopic { .. } => "remove_topic",
            StreamCommand::CreatePartition { .. } => "create_partition",
            StreamCommand::DropPartition { .. } => "drop_partition",
            StreamCommand::Append { .. } => "append",
            StreamCommand::Trim { .. } => "trim",
            StreamCommand::CommitOffset { .. } => "commit_offset",
            StreamCommand::CompactChanges { .. } => "compact_changes",
        }
    }
}

/// Why a committed stream command changed nothing. Decided while applying, so the same on
/// every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamRejection {
    TopicExists {
        existing: TopicRecord,
    },
    TopicDeleting,
    TooManyTopics {
        limit: u64,
    },
    NoPartition,
    /// The partition belongs to another incarnation of the topic.
    TopicChanged {
        current_topic_id: u64,
    },
    OutOfOrderSequence {
        expected: u64,
    },
    DuplicateSequence {
        last_seq: u64,
    },
    TooManyGroups {
        limit: u32,
    },
    OffsetBeyondEnd {
        end_offset: u64,
    },
}

/// The outcome of a [`StreamCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamResult {
    Topic { topic: TopicRecord, created: bool },
    Removed { existed: bool },
    Partition(PartitionRecord),
    Appended { first_offset: u64, count: u32, duplicate: bool },
    Trimmed { start_offset: u64 },
    Committed,
    Compacted { first_revision: u64 },
    Rejected(StreamRejection),
}

/// `[shard][space]`: the first key of a space.
pub fn space(shard: ShardId, space: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(64);
    k.extend_from_slice(&shard.to_be_bytes());
    k.push(space);
    k
}

/// The first key after a space.
pub fn space_end(shard: ShardId, s: u8) -> Vec<u8> {
    match s.checked_add(1) {
        Some(next) => space(shard, next),
        None => crate::keys::shard_end(shard),
    }
}

pub fn meta_key(shard: ShardId, tag: u8) -> Vec<u8> {
    let mut k = space(shard, SPACE_META);
    k.push(tag);
    k
}

pub fn topic_key(shard: ShardId, name: &str) -> Vec<u8> {
    let mut k = space(shard, SPACE_TOPIC);
    k.extend_from_slice(name.as_bytes());
    k
}

/// `[shard][space][len][name][partition]`: the prefix of a partition's records in `s`.
pub fn partition_prefix(shard: ShardId, s: u8, topic: &str, partition: u32) -> Vec<u8> {
    let mut k = space(shard, s);
    // Names are at most 249 bytes (checked before proposing); a longer one would only make
    // two names share a prefix length byte, never corrupt another space.
    k.push(u8::try_from(topic.len()).unwrap_or(u8::MAX));
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

pub fn partition_key(shard: ShardId, topic: &str, partition: u32) -> Vec<u8> {
    partition_prefix(shard, SPACE_PARTITION, topic, partition)
}

pub fn event_key(shard: ShardId, topic: &str, partition: u32, offset: u64) -> Vec<u8> {
    let mut k = partition_prefix(shard, SPACE_EVENT, topic, partition);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

pub fn producer_key(shard: ShardId, topic: &str, partition: u32, producer: u64) -> Vec<u8> {
    let mut k = partition_prefix(shard, SPACE_PRODUCER, topic, partition);
    k.extend_from_slice(&producer.to_be_bytes());
    k
}

pub fn group_key(shard: ShardId, topic: &str, partition: u32, group: &str) -> Vec<u8> {
    let mut k = partition_prefix(shard, SPACE_GROUP, topic, partition);
    k.extend_from_slice(group.as_bytes());
    k
}

pub fn change_key(shard: ShardId, revision: u64, n: u32) -> Vec<u8> {
    let mut k = space(shard, SPACE_CHANGE);
    k.extend_from_slice(&revision.to_be_bytes());
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The revision of a change key (after the shard and space bytes).
pub fn change_revision(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(9..17)?.try_into().ok()?))
}

/// The first key after every key starting with `prefix`, or `None` if there is none.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_do_not_share_prefixes() {
        let a = partition_prefix(1, SPACE_EVENT, "ab", 1);
        let b = partition_prefix(1, SPACE_EVENT, "a", 1);
        assert!(!a.starts_with(&b) && !b.starts_with(&a));
        assert!(event_key(1, "t", 0, 9) < event_key(1, "t", 0, 10));
        assert!(
            event_key(1, "t", 0, u64::MAX)
                < prefix_end(&partition_prefix(1, SPACE_EVENT, "t", 0)).unwrap()
        );
        assert_eq!(change_revision(&change_key(3, 77, 2)), Some(77));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
        assert!(space_end(1, SPACE_CHANGE) <= crate::keys::shard_end(1));
    }
}
