//! The cluster grows and shrinks under the chaos workloads: 3 → 5 nodes by joining two, then
//! 5 → 3 by draining two, while clients read and write through the router (register and
//! append workloads, checked for linearizability and exactly-once appends).
//!
//! After each change has settled:
//! - every shard is on the replica set the placement function gives for the nodes that are up
//!   (the consistent-hash ring over them), the meta group on an odd number of them;
//! - every node holds between half and 1.6 times the mean number of replicas (consistent
//!   hashing with 16 shards: the spread is sampling noise, see the placement crate's tests) and
//!   leads between one and the ceiling of the mean plus one shards once leader balancing ran;
//! - every shard's replicas have equal checksums at equal indexes.
//!
//! The moves happen under load; the checks run with the clients paused (see `check_paused`).
//!
//! At the end every checker's verdict must be valid: nothing acknowledged was lost, nothing
//! applied twice, no read went back in time, through every move.

use anyhow::{Context, Result, ensure};
use ringkv_jepsen::runner::{Campaign, RunOptions};
use ringkv_jepsen::workload::{ReadMode, Workload};
use ringkv_placement::shard_map::balance_leaders;
use ringkv_placement::{Layout, NodeSpec, ShardMap};
use ringkv_proto::v1::NodeRequest;
use ringkv_tests::{Cluster, Tuning, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const SHARDS: u32 = 16;
const SETTLE: Duration = Duration::from_secs(240);

/// Checks the placement after a change; returns replicas per node.
async fn check_placement(c: &Cluster, what: &str) -> Result<BTreeMap<u64, usize>> {
    let nodes = c.wait_settled(SETTLE).await.with_context(|| format!("{what}: settling"))?;
    let up: Vec<NodeSpec> = nodes
        .nodes
        .iter()
        .filter(|n| n.state == "up")
        .map(|n| NodeSpec { id: n.id, addr: n.addr.clone(), weight: n.weight })
        .collect();
    let layout = Layout { shard_count: SHARDS, replication_factor: 3, vnodes_per_shard: 256 };
    let expected = ShardMap::new(layout, up.clone(), 0)?;
    let map = c.current_map().await?;
    let mut per_node: BTreeMap<u64, usize> = up.iter().map(|n| (n.id, 0)).collect();
    for s in &map.shards {
        let got: BTreeSet<u64> = s.replicas.iter().copied().collect();
        let want: BTreeSet<u64> = expected.replicas(s.shard_id).iter().copied().collect();
        ensure!(got == want, "{what}: shard {} on {got:?}, placement says {want:?}", s.shard_id);
        for r in &s.replicas {
            *per_node.get_mut(r).context("a replica on a node that is not up")? += 1;
        }
    }
    let meta = nodes.meta_replicas.len();
    ensure!(meta % 2 == 1 && meta <= 5 && meta <= up.len(), "{what}: meta group on {meta} nodes");
    let mean = f64::from(SHARDS * 3) / up.len() as f64;
    for (node, &n) in &per_node {
        let n = n as f64;
        ensure!(
            n >= mean * 0.5 && n <= mean * 1.6,
            "{what}: node {node} holds {n} replicas, mean {mean:.1}: {per_node:?}"
        );
    }
    // Leader balancing puts each shard's leadership on its preferred replica.
    let sets: Vec<Vec<u64>> = map.shards.iter().map(|s| s.replicas.clone()).collect();
    let preferred = balance_leaders(&sets);
    let max_led = (f64::from(SHARDS) / up.len() as f64).ceil() as usize + 1;
    c.learn_identities().await;
    // What the last look saw, so a timeout says which shards were off their preferred leader.
    let seen = std::sync::Mutex::new(String::new());
    // Generous: on a loaded machine elections keep moving leaderships while the balancer
    // moves them back, one transfer per shard per interval.
    let balanced = wait_for(Duration::from_secs(180), &format!("{what}: balanced leaders"), || async {
        let leaders = c.leaders().await;
        let mut led: BTreeMap<u64, usize> = BTreeMap::new();
        let mut off = Vec::new();
        for (shard, slot) in &leaders {
            let id = c.identity_of(*slot).await.ok()?;
            if preferred.get(*shard as usize) != Some(&id) {
                off.push((*shard, id, preferred.get(*shard as usize).copied()));
            }
            *led.entry(id).or_default() += 1;
        }
        *seen.lock().unwrap_or_else(|p| p.into_inner()) = format!(
            "{} of {SHARDS} leaders known; (shard, leader, preferred) off: {off:?}; led {led:?}",
            leaders.len()
        );
        // Every shard on its preferred replica. One used to stay off it for good after a
        // move (3 of 3 runs with three copies of this test at once): nodes that synced during
        // the move kept its record after it was deleted, and the balancer leaves a moving
        // shard alone (docs/chaos.md, bug 13).
        (off.is_empty()
            && leaders.len() == SHARDS as usize
            && led.len() == up.len()
            && led.values().all(|&l| (1..=max_led).contains(&l)))
        .then_some(())
    })
    .await;
    if let Err(e) = balanced {
        // The node logs say why a leadership stayed put (the balancer logs every transfer).
        let dir = std::env::temp_dir().join(format!("ringkv-membership-{}", std::process::id()));
        let kept = c.copy_logs(&dir).map(|()| dir.display().to_string());
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // The leader's own view of each shard it leads but does not prefer: its map's epoch
        // and preferred leader, the voters, its last index and every replica's progress.
        for (shard, slot) in c.leaders().await {
            let Ok(st) = c.status(slot).await else { continue };
            let Some(m) = st.map.as_ref() else { continue };
            let sets: Vec<Vec<u64>> = m.shards.iter().map(|s| s.replicas.clone()).collect();
            let theirs = balance_leaders(&sets).get(shard as usize).copied();
            if st.node.as_ref().map(|n| n.id) == preferred.get(shard as usize).copied() {
                continue;
            }
            if let Some(ss) = st.shards.iter().find(|s| s.shard_id == shard) {
                seen.push_str(&format!(
                    "; shard {shard} on slot {slot}: map epoch {} prefers {theirs:?}, voters {:?}, last index {}, progress {:?}",
                    m.epoch, ss.voters, ss.last_log_index, ss.progress
                ));
            }
        }
        return Err(e.context(format!("{seen}; node logs: {kept:?}")));
    }
    Ok(per_node)
}

/// Placement, spread, leaders and checksums, checked with the clients paused: leader
/// balancing only hands a shard to a replica that has every entry, and replicas compare
/// checksums at equal indexes, both of which a steady stream of writes keeps from settling.
async fn check_paused(camp: &mut Campaign, what: &str) -> Result<BTreeMap<u64, usize>> {
    camp.pause_clients().await;
    let r = async {
        let per_node = check_placement(&camp.cluster, what).await?;
        camp.cluster
            .assert_checksums_equal(Duration::from_secs(60))
            .await
            .with_context(|| format!("{what}: checksums"))?;
        Ok(per_node)
    }
    .await;
    camp.resume_clients();
    r
}

/// The register and append workloads on 3 nodes at RF 3, with no nemesis of their own: the
/// tests make the membership changes.
fn options(out: &tempfile::TempDir, spare_nodes: u64, shards: u32) -> RunOptions {
    RunOptions {
        time: Duration::from_secs(600),
        workloads: vec![Workload::Register, Workload::Append],
        reads: ReadMode::default(),
        nemeses: Vec::new(),
        interval: Duration::from_secs(3),
        hold: Duration::from_secs(2),
        cycle_faults: true,
        clients: 6,
        keys: 3,
        key_lifetime: Duration::from_secs(10),
        nodes: 3,
        spare_nodes,
        shards,
        rf: 3,
        op_timeout: Duration::from_secs(3),
        net: false,
        tls: false,
        out: out.path().join("run"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_to_five_then_drain_back_to_three_under_load() -> Result<()> {
    let out = tempfile::tempdir()?;
    let opts = options(&out, 2, SHARDS);
    let tuning = Tuning { moves_max: 4, moves_per_node_max: 2, ..Tuning::default() };
    let mut camp = Campaign::start(&opts, tuning).await?;
    wait_for(Duration::from_secs(30), "operations before the change", || async {
        (camp.events().await > 200).then_some(())
    })
    .await?;

    let t = camp.now_ns();
    let a = camp.cluster.add_node()?;
    let b = camp.cluster.add_node()?;
    for slot in [a, b] {
        camp.cluster.wait_node_serving(slot, Duration::from_secs(60)).await?;
    }
    camp.cluster.wait_settled(SETTLE).await.context("3 → 5: settling under load")?;
    let grown = check_paused(&mut camp, "3 → 5").await?;
    camp.record(format!("grow 3 → 5: replicas per node {grown:?}"), t);
    ensure!(grown.len() == 5);

    let t = camp.now_ns();
    let mut drained = Vec::new();
    for slot in [a, b] {
        let id = camp.cluster.identity_of(slot).await?;
        let mut admin = camp.cluster.admin(1).await?;
        admin.drain_node(NodeRequest { node_id: id }).await?;
        drained.push((slot, id));
    }
    camp.cluster.wait_settled(SETTLE).await.context("5 → 3: settling under load")?;
    let shrunk = check_paused(&mut camp, "5 → 3").await?;
    for (slot, id) in drained {
        ensure!(!shrunk.contains_key(&id), "drained node {id} still up");
        let l = camp.cluster.list_nodes().await?;
        let rec = l.nodes.iter().find(|n| n.id == id).context("drained node listed")?;
        ensure!(rec.replicas == 0, "drained node {id} holds {} replicas", rec.replicas);
        camp.cluster.admin(1).await?.remove_node(NodeRequest { node_id: id }).await?;
        camp.cluster.retire(slot)?;
    }
    camp.record(format!("drain 5 → 3: replicas per node {shrunk:?}"), t);

    let report = camp.finish().await?;
    for v in &report.verdicts {
        println!("{}: {} ops={} {:?}", v.checker, v.outcome(), v.ops, v.counterexamples);
    }
    ensure!(report.verdicts.iter().all(|v| v.ops > 100), "too few operations to mean anything");
    ensure!(report.valid(), "history not proven valid through the membership changes");
    Ok(())
}

/// A node loses its data directory and starts again while the register and append workloads
/// run (linearizable reads included): it comes back under a new identity, its old identity's
/// replicas are re-created, every shard returns to RF 3 with equal checksums, and the checkers
/// stay valid (no acknowledged write lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_node_rejoins_under_load_and_nothing_is_lost() -> Result<()> {
    let out = tempfile::tempdir()?;
    let opts = options(&out, 0, 8);
    let mut camp = Campaign::start(&opts, Tuning::default()).await?;
    wait_for(Duration::from_secs(30), "operations before the wipe", || async {
        (camp.events().await > 200).then_some(())
    })
    .await?;
    let what = camp.inject(ringkv_jepsen::nemesis::Fault::Wipe).await?;
    ensure!(what.starts_with("wipe:") && what.contains("rejoined as node"), "{what}");
    let old: u64 = what
        .split_whitespace()
        .nth(2)
        .and_then(|w| w.parse().ok())
        .context("the wiped identity")?;
    camp.cluster.wait_settled(SETTLE).await?;
    camp.pause_clients().await;
    let l = camp.cluster.list_nodes().await?;
    let rec = l.nodes.iter().find(|n| n.id == old).context("old identity listed")?;
    ensure!(rec.state == "removed" && rec.replaced_by.is_some() && rec.replicas == 0, "{rec:?}");
    let map = camp.cluster.wait_for_rf(SETTLE).await?;
    ensure!(map.shards.iter().all(|s| !s.replicas.contains(&old)), "{map:?}");
    camp.cluster.learn_identities().await;
    camp.cluster.assert_checksums_equal(Duration::from_secs(60)).await?;
    camp.resume_clients();
    wait_for(Duration::from_secs(30), "operations after the wipe", || async {
        (camp.events().await > 600).then_some(())
    })
    .await?;
    let report = camp.finish().await?;
    for v in &report.verdicts {
        println!("{}: {} ops={} {:?}", v.checker, v.outcome(), v.ops, v.counterexamples);
    }
    ensure!(report.valid(), "history not proven valid through the wipe");
    Ok(())
}
