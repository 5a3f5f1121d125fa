//! Key choice, as YCSB does it.
//!
//! Records are numbered `0..count`; record `i` is key `user` + a 64-bit FNV hash of `i` (so
//! consecutive records are not neighbours in key order, as in YCSB). Distributions:
//! - **uniform**: every record equally likely;
//! - **zipfian** (constant 0.99, YCSB's default): a few records are hot; ranks are scrambled
//!   by hashing so the hot records are spread over the key space (YCSB's scrambled zipfian);
//! - **latest**: zipfian over recency: the newest inserted records are the hottest (workload D).
//!
//! Inserts take fresh record numbers from a shared counter, so `latest` follows them.

use rand::{Rng, RngExt};
use rand_distr::{Distribution as _, Zipf};
use std::sync::atomic::{AtomicU64, Ordering};

/// YCSB's zipfian constant.
pub const ZIPF_THETA: f64 = 0.99;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Zipfian,
    Latest,
}

fn fnv64(mut x: u64) -> u64 {
    // FNV-1a over the 8 bytes of x, as YCSB's hashing of record numbers.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for _ in 0..8 {
        h ^= x & 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
        x >>= 8;
    }
    h
}

/// The key of record `i`.
pub fn key(i: u64) -> Vec<u8> {
    format!("user{:020}", fnv64(i)).into_bytes()
}

/// Chooses records. Shared by all clients of a run.
#[derive(Debug)]
pub struct KeyChooser {
    dist: Distribution,
    /// Records that exist (loaded + inserted so far).
    count: AtomicU64,
    zipf: Zipf<f64>,
}

impl KeyChooser {
    pub fn new(dist: Distribution, records: u64) -> anyhow::Result<Self> {
        anyhow::ensure!(records > 0, "need at least one record");
        let zipf = Zipf::new(records as f64, ZIPF_THETA)
            .map_err(|e| anyhow::anyhow!("zipfian over {records} records: {e}"))?;
        Ok(KeyChooser { dist, count: AtomicU64::new(records), zipf })
    }

    pub fn records(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// A record to read or update.
    pub fn next<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let n = self.records();
        match self.dist {
            Distribution::Uniform => rng.random_range(0..n),
            Distribution::Zipfian => {
                // Ranks 1..=loaded; scrambled over all existing records.
                let rank = self.zipf.sample(rng) as u64;
                fnv64(rank) % n
            }
            Distribution::Latest => {
                let rank = self.zipf.sample(rng) as u64;
                n.saturating_sub(rank.min(n))
            }
        }
    }

    /// A fresh record number for an insert.
    pub fn insert(&self) -> u64 {
        self.count.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_is_skewed_and_uniform_is_not() {
        let mut rng = rand::rng();
        let n = 1000u64;
        let mut count = |d| {
            let k = KeyChooser::new(d, n).unwrap();
            let mut hits = vec![0u32; n as usize];
            for _ in 0..100_000 {
                hits[k.next(&mut rng) as usize] += 1;
            }
            hits.sort_unstable();
            hits.iter().rev().take(10).sum::<u32>()
        };
        // The 10 hottest of 1000 records: ~1% of accesses when uniform, ~25%+ when zipfian.
        assert!(count(Distribution::Uniform) < 2_000);
        assert!(count(Distribution::Zipfian) > 20_000);
    }

    #[test]
    fn latest_favours_new_records_and_keys_are_stable() {
        let mut rng = rand::rng();
        let k = KeyChooser::new(Distribution::Latest, 1000).unwrap();
        let newest = k.insert();
        assert_eq!(newest, 1000);
        let recent = (0..10_000).filter(|_| k.next(&mut rng) >= 990).count();
        assert!(recent > 3_000, "{recent} of 10000 reads in the 10 newest records");
        assert_eq!(key(7), key(7));
        assert_ne!(key(7), key(8));
    }
}
