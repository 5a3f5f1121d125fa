//! The key ring: key -> shard.
//!
//! Each shard owns `vnodes_per_shard` points on a 64-bit ring; a key belongs to the shard of
//! the first point at or after the key's hash. With V points per shard the arcs' sizes vary
//! with a relative spread of about 1/sqrt(V), which is what bounds how unevenly keys land on
//! shards (see the property tests for the bound we hold ourselves to).

use crate::ShardId;
use crate::hash::{KeyBytes, RingOwner, StableHash, TAG_SHARD_VNODE};
use consistent_hash::{Node, StaticHashRing};

/// Maps keys to shards. Immutable; build a new one to change the shard count.
pub struct KeyRing {
    ring: StaticHashRing<'static, RingOwner, (), StableHash>,
    shard_count: u32,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("shard_count", &self.shard_count).finish()
    }
}

impl KeyRing {
    /// A ring over shards `0..shard_count`. Callers validate the arguments (see
    /// [`crate::ShardMap::new`]); both must be at least 1.
    pub fn new(shard_count: u32, vnodes_per_shard: u32) -> Self {
        debug_assert!(shard_count >= 1 && vnodes_per_shard >= 1);
        let nodes = (0..u64::from(shard_count)).map(|id| {
            Node::new(RingOwner { tag: TAG_SHARD_VNODE, id }).quantity(vnodes_per_shard as usize)
        });
        KeyRing { ring: StaticHashRing::new(StableHash, nodes), shard_count }
    }

    /// The shard that owns `key`.
    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        self.ring
            .calc_candidates(&KeyBytes(key))
            .next()
            .map(|node| node.key.id)
            // A ring built from at least one shard always has a first candidate.
            .unwrap_or(0)
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pinned: a change here silently moves keys of deployed clusters between shards.
    #[test]
    fn shard_of_is_pinned() {
        let ring = KeyRing::new(8, 256);
        let got: Vec<ShardId> = ["", "a", "user:1", "user:2", "order/2026/11/23", "\u{1F980}"]
            .iter()
            .map(|k| ring.shard_of(k.as_bytes()))
            .collect();
        assert_eq!(got, [1, 0, 5, 2, 6, 6]);
    }

    #[test]
    fn keys_spread_evenly_over_shards() {
        // 1M keys; the bound is max/mean <= 1.25 for every shard count we ship presets for.
        for shards in [4u32, 8, 16, 64] {
            let ring = KeyRing::new(shards, 256);
            let mut load = vec![0u64; shards as usize];
            for i in 0..1_000_000u64 {
                let key = format!("key-{i}");
                load[ring.shard_of(key.as_bytes()) as usize] += 1;
            }
            let mean = 1_000_000.0 / f64::from(shards);
            let max = *load.iter().max().unwrap() as f64;
            let min = *load.iter().min().unwrap() as f64;
            assert!(max / mean <= 1.25, "{shards} shards: max/mean {:.3}", max / mean);
            assert!(min / mean >= 0.75, "{shards} shards: min/mean {:.3}", min / mean);
        }
    }

    proptest! {
        #[test]
        fn deterministic_and_in_range(key in proptest::collection::vec(any::<u8>(), 0..64),
                                      shards in 1u32..128) {
            let a = KeyRing::new(shards, 64);
            let b = KeyRing::new(shards, 64);
            let s = a.shard_of(&key);
            prop_assert!(s < u64::from(shards));
            prop_assert_eq!(s, b.shard_of(&key));
        }
    }
}
