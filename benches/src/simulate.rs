//! The lab's questions at a scale no single machine can run, answered with the real
//! placement code (`ringkv-placement`): build the shard map ringkv would build for N nodes, S
//! shards and replication factor R, then
//! - fail F random nodes (many trials) and count the shards that lose quorum (fewer than
//!   ⌊R/2⌋+1 replicas left): the availability side;
//! - count replicas and preferred leaders per node: the load-distribution side;
//! - add one node, or remove one, and count the replicas that move: the cost of growing.

use anyhow::Result;
use rand::seq::index::sample;
use ringkv_placement::{Layout, NodeSpec, ShardMap};
use serde::Serialize;
use std::collections::HashSet;

#[derive(Debug, Clone, Serialize)]
pub struct Simulation {
    pub nodes: u64,
    pub shards: u32,
    pub rf: u32,
    pub failed: u64,
    pub trials: u32,
    /// Mean over trials of the fraction of shards without a quorum.
    pub quorum_lost_mean: f64,
    /// Worst trial.
    pub quorum_lost_max: f64,
    /// Trials in which at least one shard lost quorum.
    pub trials_with_loss: f64,
    /// Replicas per node: max / mean and min / mean.
    pub replicas_max_over_mean: f64,
    pub replicas_min_over_mean: f64,
    /// Preferred leaders per node: max / mean.
    pub leaders_max_over_mean: f64,
    /// Fraction of replicas that move when one node is added / removed.
    pub moved_on_add: f64,
    pub moved_on_remove: f64,
}

fn map(nodes: u64, shards: u32, rf: u32) -> Result<ShardMap> {
    let specs = (1..=nodes).map(|id| NodeSpec { id, addr: format!("n{id}"), weight: 1 }).collect();
    Ok(ShardMap::new(
        Layout { shard_count: shards, replication_factor: rf, vnodes_per_shard: 256 },
        specs,
        1,
    )?)
}

fn moved(a: &ShardMap, b: &ShardMap) -> f64 {
    let mut moved = 0usize;
    let mut total = 0usize;
    for s in a.shard_ids() {
        let old: HashSet<_> = a.replicas(s).iter().collect();
        total += old.len();
        moved += b.replicas(s).iter().filter(|n| !old.contains(n)).count();
    }
    moved as f64 / total.max(1) as f64
}

pub fn simulate(nodes: u64, shards: u32, rf: u32, failed: u64, trials: u32) -> Result<Simulation> {
    anyhow::ensure!(u64::from(rf) <= nodes, "replication factor {rf} needs at least {rf} nodes");
    anyhow::ensure!(failed <= nodes, "cannot fail {failed} of {nodes} nodes");
    let m = map(nodes, shards, rf)?;
    let quorum = rf / 2 + 1;
    let mut rng = rand::rng();
    let (mut sum, mut max, mut with_loss) = (0.0f64, 0.0f64, 0u32);
    for _ in 0..trials.max(1) {
        let down: HashSet<u64> = sample(&mut rng, nodes as usize, failed as usize)
            .into_iter()
            .map(|i| i as u64 + 1)
            .collect();
        let lost = m
            .shard_ids()
            .filter(|&s| {
                let alive = m.replicas(s).iter().filter(|n| !down.contains(n)).count();
                (alive as u32) < quorum
            })
            .count();
        let frac = lost as f64 / f64::from(shards);
        sum += frac;
        max = max.max(frac);
        with_loss += u32::from(lost > 0);
    }
    let mut replicas = vec![0u64; nodes as usize];
    let mut leaders = vec![0u64; nodes as usize];
    for s in m.shard_ids() {
        for &n in m.replicas(s) {
            replicas[(n - 1) as usize] += 1;
        }
        if let Some(l) = m.preferred_leader(s) {
            leaders[(l - 1) as usize] += 1;
        }
    }
    let spread = |v: &[u64]| {
        let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
        let max = *v.iter().max().unwrap_or(&0) as f64;
        let min = *v.iter().min().unwrap_or(&0) as f64;
        if mean == 0.0 { (0.0, 0.0) } else { (max / mean, min / mean) }
    };
    let (rmax, rmin) = spread(&replicas);
    let (lmax, _) = spread(&leaders);
    let moved_on_add = moved(&m, &map(nodes + 1, shards, rf)?);
    let moved_on_remove =
        if nodes > u64::from(rf) { moved(&m, &map(nodes - 1, shards, rf)?) } else { f64::NAN };
    let t = f64::from(trials.max(1));
    Ok(Simulation {
        nodes,
        shards,
        rf,
        failed,
        trials: trials.max(1),
        quorum_lost_mean: sum / t,
        quorum_lost_max: max,
        trials_with_loss: f64::from(with_loss) / t,
        replicas_max_over_mean: rmax,
        replicas_min_over_mean: rmin,
        leaders_max_over_mean: lmax,
        moved_on_add,
        moved_on_remove,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_loss_follows_replication() {
        // One failure never breaks an RF 3 quorum; two failures among many nodes break few.
        let one = simulate(20, 64, 3, 1, 50).unwrap();
        assert_eq!(one.quorum_lost_max, 0.0);
        let rf1 = simulate(20, 64, 1, 1, 50).unwrap();
        assert!(rf1.quorum_lost_mean > 0.0, "RF 1 loses every shard on the failed node");
        let two = simulate(20, 64, 3, 2, 200).unwrap();
        assert!(two.quorum_lost_mean > 0.0 && two.quorum_lost_mean < 0.1, "{two:?}");
        let rf5 = simulate(20, 64, 5, 2, 200).unwrap();
        assert_eq!(rf5.quorum_lost_max, 0.0, "RF 5 survives any two failures");
    }

    #[test]
    fn growth_moves_a_fraction() {
        let s = simulate(10, 128, 3, 0, 1).unwrap();
        // Adding one node to 10 should move about RF/(N+1)/RF = 1/11 of replicas.
        assert!(s.moved_on_add > 0.0 && s.moved_on_add < 0.25, "{s:?}");
        assert!(s.replicas_max_over_mean < 1.6, "{s:?}");
    }
}
