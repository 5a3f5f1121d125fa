//! The workloads: YCSB's core mixes A–F plus write-only.
//!
//! | name | mix | default keys |
//! |---|---|---|
//! | A | 50% read, 50% update | zipfian |
//! | B | 95% read, 5% update | zipfian |
//! | C | 100% read | zipfian |
//! | D | 95% read, 5% insert | latest |
//! | E | 95% scan (1–100 records), 5% insert | zipfian |
//! | F | 50% read, 50% read-modify-write (read then compare-and-swap) | zipfian |
//! | W | 100% update (write-only) | uniform |

use crate::keys::Distribution;
use rand::{Rng, RngExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
pub enum Workload {
    A,
    B,
    C,
    D,
    E,
    F,
    W,
}

/// One operation kind; also the name of its latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Read,
    Update,
    Insert,
    Scan,
    Rmw,
}

impl OpKind {
    pub const ALL: [OpKind; 5] =
        [OpKind::Read, OpKind::Update, OpKind::Insert, OpKind::Scan, OpKind::Rmw];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::Rmw => "rmw",
        }
    }
}

/// Longest scan of workload E, in records.
pub const SCAN_RECORDS_MAX: u32 = 100;

impl Workload {
    /// (kind, weight in percent) pairs.
    pub fn mix(self) -> &'static [(OpKind, u32)] {
        match self {
            Workload::A => &[(OpKind::Read, 50), (OpKind::Update, 50)],
            Workload::B => &[(OpKind::Read, 95), (OpKind::Update, 5)],
            Workload::C => &[(OpKind::Read, 100)],
            Workload::D => &[(OpKind::Read, 95), (OpKind::Insert, 5)],
            Workload::E => &[(OpKind::Scan, 95), (OpKind::Insert, 5)],
            Workload::F => &[(OpKind::Read, 50), (OpKind::Rmw, 50)],
            Workload::W => &[(OpKind::Update, 100)],
        }
    }

    pub fn default_distribution(self) -> Distribution {
        match self {
            Workload::D => Distribution::Latest,
            Workload::W => Distribution::Uniform,
            _ => Distribution::Zipfian,
        }
    }

    pub fn pick<R: Rng + ?Sized>(self, rng: &mut R) -> OpKind {
        let mut x = rng.random_range(0..100u32);
        for &(kind, w) in self.mix() {
            if x < w {
                return kind;
            }
            x -= w;
        }
        self.mix()[0].0
    }
}

/// A value of `size` bytes (random printable bytes: values compress no better than real ones).
pub fn value<R: Rng + ?Sized>(rng: &mut R, size: usize) -> Vec<u8> {
    // One bulk fill, then letters: a draw per byte cost the load generator more than the gRPC
    // call it made. (The letters are not quite uniform; nothing here depends on it.)
    let mut v = vec![0u8; size];
    rng.fill_bytes(&mut v);
    for b in &mut v {
        *b = b'a' + *b % 26;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_letters_of_the_asked_size() {
        let v = value(&mut rand::rng(), 256);
        assert_eq!(v.len(), 256);
        assert!(v.iter().all(u8::is_ascii_lowercase), "{v:?}");
        assert!(v.iter().any(|&b| b != v[0]), "random, not constant");
    }

    #[test]
    fn mixes_sum_to_100_and_pick_follows_them() {
        let all = [
            Workload::A,
            Workload::B,
            Workload::C,
            Workload::D,
            Workload::E,
            Workload::F,
            Workload::W,
        ];
        for w in all {
            assert_eq!(w.mix().iter().map(|m| m.1).sum::<u32>(), 100, "{w:?}");
        }
        let mut rng = rand::rng();
        let reads = (0..10_000).filter(|_| Workload::B.pick(&mut rng) == OpKind::Read).count();
        assert!((9_300..9_700).contains(&reads), "{reads}");
    }
}
