//! Platform-stable hashing for the rings.
//!
//! `std::hash::Hash` is not a stable format: slices hash a `usize` length prefix (4 or 8 bytes
//! depending on the platform) and integers hash in native byte order. Ring positions must be
//! the same everywhere, forever, or a key would move shards after an upgrade. So the rings only
//! ever hash the wrapper types below, whose `Hash` impls feed explicit little-endian bytes to
//! the hasher, and [`StableHash`] hashes virtual nodes the same way.

use consistent_hash::{DefaultHash, RingHash};
use std::hash::{Hash, Hasher};

/// A key's bytes, hashed as exactly those bytes (no length prefix).
pub(crate) struct KeyBytes<'a>(pub &'a [u8]);

impl Hash for KeyBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// A 64-bit id hashed as 8 little-endian bytes, with a domain tag so the same number as a
/// shard id, a node id or a vnode never collides by construction.
pub(crate) struct TaggedId {
    pub tag: u8,
    pub id: u64,
    pub seq: u64,
}

impl Hash for TaggedId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut buf = [0u8; 17];
        buf[0] = self.tag;
        buf[1..9].copy_from_slice(&self.id.to_le_bytes());
        buf[9..17].copy_from_slice(&self.seq.to_le_bytes());
        state.write(&buf);
    }
}

pub(crate) const TAG_SHARD_VNODE: u8 = 1;
pub(crate) const TAG_NODE_VNODE: u8 = 2;
pub(crate) const TAG_SHARD_ITEM: u8 = 3;

/// SipHash-1-3 (zero keys) over stable bytes. Ring owners are `(tag, id)` pairs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StableHash;

impl RingHash for StableHash {
    fn hash_item<T: Hash>(&self, item: &T) -> u64 {
        DefaultHash.hash_item(item)
    }

    fn hash_vnode<K: Hash>(&self, node_key: &K, vnode_seq: usize) -> u64 {
        // Owners are always `RingOwner`s; hashing them through `TaggedId` keeps the format
        // ours rather than std's.
        let mut probe = OwnerProbe::default();
        node_key.hash(&mut probe);
        DefaultHash.hash_item(&TaggedId { tag: probe.tag, id: probe.id, seq: vnode_seq as u64 })
    }
}

/// The owner of a run of virtual nodes: a shard on the key ring, a node on the replica ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RingOwner {
    pub tag: u8,
    pub id: u64,
}

impl Hash for RingOwner {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Only ever consumed by `OwnerProbe` (see `StableHash::hash_vnode`).
        state.write_u8(self.tag);
        state.write_u64(self.id);
    }
}

/// Recovers `(tag, id)` from a `RingOwner`'s `Hash` calls without going through a real
/// hasher, so the vnode hash is built from our own byte layout.
#[derive(Default)]
struct OwnerProbe {
    tag: u8,
    id: u64,
}

impl Hasher for OwnerProbe {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, _bytes: &[u8]) {}
    fn write_u8(&mut self, i: u8) {
        self.tag = i;
    }
    fn write_u64(&mut self, i: u64) {
        self.id = i;
    }
}

/// The ring position of a key.
pub fn key_hash(key: &[u8]) -> u64 {
    DefaultHash.hash_item(&KeyBytes(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned values: if these change, every key in every deployed cluster changes shard.
    #[test]
    fn key_hash_is_pinned() {
        let keys: [&[u8]; 3] = [b"", b"user:42", b"\x00\xff\x10"];
        let got: Vec<u64> = keys.iter().map(|k| key_hash(k)).collect();
        assert_eq!(got, [15130871412783076140, 2467364908147093645, 5704123755490976502]);
    }
}
