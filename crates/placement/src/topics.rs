//! Where event-stream data lives.
//!
//! Topics are placed like keys: partition `p` of topic `t` belongs to the shard that the key
//! `t/p` hashes to, so a topic's partitions spread over shards (and their leaders over nodes)
//! the way keys do. The catalog of topics (names and configurations) is small and changes
//! rarely, so it lives in one shard, the one [`CATALOG_KEY`] hashes to; everything that needs
//! "all topics" asks that one shard.
//!
//! Topic names are restricted (as Kafka's) so they can be printed, used in paths and never
//! contain the `/` that separates them from the partition number.

use crate::{ShardId, ShardMap};

/// The key whose shard holds the topic catalog. Starts with a NUL byte, so it is unlikely to
/// be an application key (and would only share its shard if it were).
pub const CATALOG_KEY: &[u8] = b"\0ringkv/topics";
/// Longest topic name, in bytes (Kafka's limit, which also keeps storage keys small).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Most partitions per topic.
pub const PARTITIONS_MAX: u32 = 1024;

/// The placement key of a partition: `topic/partition`.
pub fn partition_key(topic: &str, partition: u32) -> Vec<u8> {
    format!("{topic}/{partition}").into_bytes()
}

/// Checks a topic name: 1 to 249 characters of `[A-Za-z0-9._-]`.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a topic name must not be empty".into());
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "{} bytes exceeds the limit of {TOPIC_NAME_BYTES_MAX} bytes",
            name.len()
        ));
    }
    if let Some(c) =
        name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("{c:?} is not allowed; use only A-Z, a-z, 0-9, '.', '_' and '-'"));
    }
    Ok(())
}

impl ShardMap {
    /// The shard that holds the topic catalog.
    pub fn catalog_shard(&self) -> ShardId {
        self.shard_of(CATALOG_KEY)
    }

    /// The shard that holds partition `partition` of `topic`.
    pub fn partition_shard(&self, topic: &str, partition: u32) -> ShardId {
        self.shard_of(&partition_key(topic, partition))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Layout, NodeSpec};

    #[test]
    fn names_are_checked() {
        assert!(check_topic_name("orders.v1_eu-west").is_ok());
        assert!(check_topic_name("").is_err());
        assert!(check_topic_name("a/b").unwrap_err().contains("'/'"));
        assert!(check_topic_name(&"x".repeat(250)).is_err());
    }

    #[test]
    fn partitions_spread_over_shards() {
        let nodes =
            (1..=3).map(|id| NodeSpec { id, addr: format!("n{id}:1"), weight: 1 }).collect();
        let layout = Layout { shard_count: 16, replication_factor: 3, vnodes_per_shard: 256 };
        let map = ShardMap::new(layout, nodes, 1).expect("valid map");
        let shards: std::collections::BTreeSet<_> =
            (0..32).map(|p| map.partition_shard("orders", p)).collect();
        assert!(shards.len() >= 8, "32 partitions landed on only {} of 16 shards", shards.len());
        assert_eq!(map.partition_shard("orders", 3), map.shard_of(b"orders/3"));
    }
}
