//! The key layout of the node's one RocksDB.
//!
//! All shards share one database (one WAL, so one fsync can make the writes of many shards
//! durable at once) and a handful of column families. Every key starts with the shard id as 8
//! big-endian bytes, so a shard's keys are one contiguous range in each family and sort by
//! shard first:
//!
//! | family       | key                          | value                                   |
//! |--------------|------------------------------|-----------------------------------------|
//! | `raft_log`   | shard, log index (u64 BE)     | framed `Entry` (CRC32 checked on read)  |
//! | `raft_state` | shard, tag                   | framed vote / committed / purged log id |
//! | `kv`         | shard, user key              | version (u64 LE), value bytes           |
//! | `sm_state`   | shard, tag                   | framed last-applied / membership / snapshot meta |
//! | `node`       | name                         | framed node-wide records (cluster config) |
//! | `sessions`   | shard, 1, client id / shard, 2, age bucket, client id | framed session record / empty (age index) |
//! | `streams`    | shard, space, ... (see `streams`) | topics, events, offsets, KV changes |
//!
//! A handful of families rather than one per shard: thousands of column families each carry
//! their own memtable and files, and per-shard families would make adding shards a schema
//! change.

use crate::ShardId;

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_STATE: &str = "raft_state";
pub const CF_KV: &str = "kv";
pub const CF_SM_STATE: &str = "sm_state";
pub const CF_NODE: &str = "node";
pub const CF_SESSIONS: &str = "sessions";
/// Topics, events, consumer offsets and the KV change history (see [`crate::streams`]).
pub const CF_STREAMS: &str = "streams";

pub const ALL_CFS: [&str; 7] =
    [CF_RAFT_LOG, CF_RAFT_STATE, CF_KV, CF_SM_STATE, CF_NODE, CF_SESSIONS, CF_STREAMS];

/// Tags of the single-value records under `raft_state`.
pub const TAG_VOTE: u8 = 1;
pub const TAG_COMMITTED: u8 = 2;
pub const TAG_PURGED: u8 = 3;

/// Tags of the single-value records under `sm_state`.
pub const TAG_APPLIED: u8 = 1;
pub const TAG_MEMBERSHIP: u8 = 2;
pub const TAG_SNAPSHOT: u8 = 3;
pub const TAG_SESSION_COUNT: u8 = 4;

/// Sub-spaces of a shard in `sessions`.
pub const SESSION_RECORD: u8 = 1;
pub const SESSION_AGE: u8 = 2;

pub fn session_key(shard: ShardId, client_id: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&shard.to_be_bytes());
    k[8] = SESSION_RECORD;
    k[9..].copy_from_slice(&client_id.to_be_bytes());
    k
}

/// Orders a shard's sessions by the age bucket of their last write, oldest first (see
/// [`crate::sessions`]).
pub fn session_age_key(shard: ShardId, age: u64, client_id: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[..8].copy_from_slice(&shard.to_be_bytes());
    k[8] = SESSION_AGE;
    k[9..17].copy_from_slice(&age.to_be_bytes());
    k[17..].copy_from_slice(&client_id.to_be_bytes());
    k
}

/// `[shard, space]`: the first key of a sub-space of `sessions`.
pub fn session_space(shard: ShardId, space: u8) -> [u8; 9] {
    tag_key(shard, space)
}

pub fn shard_prefix(shard: ShardId) -> [u8; 8] {
    shard.to_be_bytes()
}

/// The first key after every key of `shard` in any family.
pub fn shard_end(shard: ShardId) -> Vec<u8> {
    match shard.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 9],
    }
}

pub fn log_key(shard: ShardId, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&shard.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The log index of a `raft_log` key, if it is one.
pub fn log_index_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

pub fn tag_key(shard: ShardId, tag: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&shard.to_be_bytes());
    k[8] = tag;
    k
}

pub fn kv_key(shard: ShardId, user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + user_key.len());
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(user_key);
    k
}

/// A `kv` value: the version (u64 LE) then the user value.
pub fn kv_value(version: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(value);
    v
}

/// Splits a `kv` value into (version, user value); `None` if it is too short to be one.
pub fn split_kv_value(raw: &[u8]) -> Option<(u64, &[u8])> {
    let (head, value) = raw.split_at_checked(8)?;
    Some((u64::from_le_bytes(head.try_into().ok()?), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ranges_do_not_overlap_and_sort_by_index() {
        assert!(log_key(1, u64::MAX).as_slice() < shard_end(1).as_slice());
        assert!(log_key(1, 9).as_slice() < log_key(1, 10).as_slice());
        assert!(shard_end(1).as_slice() <= log_key(2, 0).as_slice());
        assert!(kv_key(3, &[0xff; 40]).as_slice() < shard_end(3).as_slice());
        assert_eq!(log_index_of(&log_key(7, 42)), Some(42));
        assert_eq!(split_kv_value(&kv_value(5, b"v")), Some((5, &b"v"[..])));
        assert_eq!(split_kv_value(b"short"), None);
    }
}
