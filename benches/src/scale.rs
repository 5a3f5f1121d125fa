//! `lab scale`: grow and shrink a cluster under a write load, 3 → 4 → 5 → 4 → 3 nodes, and
//! measure what each change costs.
//!
//! Each size first runs a steady phase of writes. Then the change starts (a node joins, or
//! one is drained, removed and stopped), and the same load runs again while replicas move.
//! Per change, beside throughput and latency of both phases:
//! - `moves_predicted`: replicas the placement function puts on new nodes between the two
//!   sizes (what `lab simulate` computes at scale), and `moves`: replicas the cluster
//!   actually added (replica sets before and after, from the shard maps);
//! - `moved_mb`: snapshot bytes the nodes sent (`ringkv_snapshot_bytes_sent_total`), against
//!   `predicted_mb`: the predicted replicas times the data per replica;
//! - `rebalance_s`: seconds from the change until the placement settled (no moves, every shard
//!   on its target with all replicas live).
//!
//! The plot (`scale.svg`) is writes per second over the whole sequence, the moving phases
//! shaded.

use crate::driver;
use crate::lab::{LabOptions, connect, loaded, spec, start_cluster};
use crate::results::RunResult;
use crate::workload::Workload;
use anyhow::{Context, Result};
use ringkv_client::Consistency;
use ringkv_placement::{Layout, NodeId, NodeSpec, ShardMap};
use ringkv_proto::v1::NodeRequest;
use ringkv_tests::Cluster;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long a change may take to settle before the lab gives up.
const SETTLE_MAX: Duration = Duration::from_secs(600);

/// Snapshot bytes sent so far by every running node.
async fn snapshot_bytes(c: &Cluster) -> f64 {
    let mut total = 0.0;
    for slot in c.running() {
        let Ok(text) = c.metrics(slot).await else { continue };
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("ringkv_snapshot_bytes_sent_total ") {
                total += v.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    total
}

/// The up nodes, with the weights the placement gives them.
async fn up_nodes(c: &Cluster) -> Result<Vec<NodeSpec>> {
    Ok(c.list_nodes()
        .await?
        .nodes
        .iter()
        .filter(|n| n.state == "up")
        .map(|n| NodeSpec { id: n.id, addr: String::new(), weight: n.weight })
        .collect())
}

/// Replicas the placement function adds between node sets `a` and `b`.
fn predicted_moves(layout: Layout, a: &[NodeSpec], b: &[NodeSpec]) -> Result<usize> {
    let (ma, mb) = (ShardMap::new(layout, a.to_vec(), 0)?, ShardMap::new(layout, b.to_vec(), 0)?);
    Ok(ma
        .shard_ids()
        .map(|s| mb.replicas(s).iter().filter(|r| !ma.replicas(s).contains(r)).count())
        .sum())
}

/// A shard, the replicas it has, and the ones the placement function gives it.
type Misplaced = (u64, BTreeSet<NodeId>, BTreeSet<NodeId>);

/// Shards whose replicas in `map` differ from the placement function's for `nodes`.
fn off_placement(
    layout: Layout,
    nodes: &[NodeSpec],
    map: &ringkv_proto::v1::ShardMap,
) -> Result<Vec<Misplaced>> {
    let want = ShardMap::new(layout, nodes.to_vec(), 0)?;
    Ok(map
        .shards
        .iter()
        .filter_map(|s| {
            let got: BTreeSet<NodeId> = s.replicas.iter().copied().collect();
            let w: BTreeSet<NodeId> = want.replicas(s.shard_id).iter().copied().collect();
            (got != w).then_some((s.shard_id, got, w))
        })
        .collect())
}

/// Replicas in `after` that `before` did not have (shard maps of the cluster).
fn actual_moves(before: &ringkv_proto::v1::ShardMap, after: &ringkv_proto::v1::ShardMap) -> usize {
    after
        .shards
        .iter()
        .map(|s| {
            let old: BTreeSet<u64> = before
                .shards
                .iter()
                .find(|b| b.shard_id == s.shard_id)
                .map(|b| b.replicas.iter().copied().collect())
                .unwrap_or_default();
            s.replicas.iter().filter(|r| !old.contains(r)).count()
        })
        .sum()
}

/// One phase of the sequence, for the plot.
pub struct Phase {
    pub name: String,
    pub per_second: Vec<u64>,
    pub moving: bool,
}

/// Runs the sequence; returns the phases' results (steady and moving, alternately).
pub async fn sweep_scale(
    o: &LabOptions,
    shards: u32,
    sizes: &[u64],
) -> Result<(Vec<RunResult>, Vec<Phase>)> {
    anyhow::ensure!(sizes.len() >= 2, "give at least two sizes, e.g. 3,4,5,4,3");
    anyhow::ensure!(
        sizes.windows(2).all(|w| w[0].abs_diff(w[1]) == 1),
        "sizes must change by one node at a time"
    );
    let rf = 3u32.min(u32::try_from(sizes[0])?);
    let layout = Layout { shard_count: shards, replication_factor: rf, vnodes_per_shard: 256 };
    let mut c = start_cluster(sizes[0], shards, rf, None).await?;
    c.wait_settled(SETTLE_MAX).await?;
    let router = c.start_router("round-robin").await?;
    let keys = loaded(o, &c, Some(&router)).await?;
    let conns =
        connect(o.target, &c, Some(&router), o.connections, Consistency::Linearizable).await?;
    let per_replica_mb = o.records as f64 * o.value_bytes as f64 / f64::from(shards) / 1e6;
    let mut runs = Vec::new();
    let mut phases = Vec::new();
    let steady = |n: u64| {
        let s = spec(o, Workload::W, &keys, Consistency::Linearizable);
        let conns = conns.clone();
        async move { driver::run(&format!("{n} nodes, steady"), &conns, &s).await }
    };
    let first = steady(sizes[0]).await?;
    phases.push(Phase {
        name: first.name.clone(),
        per_second: first.per_second.clone(),
        moving: false,
    });
    runs.push(first);
    for w in sizes.windows(2) {
        let (from, to) = (w[0], w[1]);
        let before_nodes = up_nodes(&c).await?;
        let before_map = c.current_map().await?;
        let bytes_before = snapshot_bytes(&c).await;
        let started = Instant::now();
        // The change: a node joins, or the newest one is drained.
        let leaving = if to > from {
            let slot = c.add_node()?;
            c.wait_node_serving(slot, SETTLE_MAX).await?;
            None
        } else {
            let slot = *c.members().last().context("no node to drain")?;
            let id = c.identity_of(slot).await?;
            c.admin(c.members()[0]).await?.drain_node(NodeRequest { node_id: id }).await?;
            Some((slot, id))
        };
        let s = spec(o, Workload::W, &keys, Consistency::Linearizable);
        let moving = {
            let conns = conns.clone();
            let name = format!("{from} → {to} nodes, moving");
            tokio::spawn(async move { driver::run(&name, &conns, &s).await })
        };
        c.wait_settled(SETTLE_MAX).await?;
        let rebalance_s = started.elapsed().as_secs_f64();
        let moved_mb = (snapshot_bytes(&c).await - bytes_before) / 1e6;
        let mut r = moving.await??;
        let after_nodes = up_nodes(&c).await?;
        let after_map = c.current_map().await?;
        let predicted = predicted_moves(layout, &before_nodes, &after_nodes)?;
        if let Some((slot, id)) = leaving {
            c.admin(c.members()[0]).await?.remove_node(NodeRequest { node_id: id }).await?;
            c.retire(slot)?;
        }
        r.extra.insert("nodes_before".into(), from as f64);
        r.extra.insert("nodes_after".into(), to as f64);
        r.extra.insert("moves_predicted".into(), predicted as f64);
        r.extra.insert("moves".into(), actual_moves(&before_map, &after_map) as f64);
        r.extra.insert("predicted_mb".into(), predicted as f64 * per_replica_mb);
        r.extra.insert("moved_mb".into(), moved_mb);
        r.extra.insert("rebalance_s".into(), rebalance_s);
        println!(
            "{from} → {to}: {} moves ({predicted} predicted), {moved_mb:.1} MB sent, settled in {rebalance_s:.1} s",
            r.extra["moves"]
        );
        for (shard, got, want) in off_placement(layout, &after_nodes, &after_map)? {
            println!("  shard {shard}: on {got:?}, the placement function says {want:?}");
        }
        phases.push(Phase { name: r.name.clone(), per_second: r.per_second.clone(), moving: true });
        runs.push(r);
        let steady_run = steady(to).await?;
        phases.push(Phase {
            name: steady_run.name.clone(),
            per_second: steady_run.per_second.clone(),
            moving: false,
        });
        runs.push(steady_run);
        if let Some(cp) = &o.checkpoint {
            cp.save(&runs)?;
        }
    }
    drop(router);
    Ok((runs, phases))
}

/// Writes per second over the whole sequence, moving phases shaded.
pub fn plot(path: &std::path::Path, title: &str, phases: &[Phase]) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let total: usize = phases.iter().map(|p| p.per_second.len()).sum();
    let y_max = phases.iter().flat_map(|p| p.per_second.iter()).copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..total.max(1) as f64, 0f64..y_max as f64 * 1.15)?;
    chart.configure_mesh().x_desc("seconds").y_desc("writes/s").draw()?;
    let mut x = 0usize;
    let mut points = Vec::new();
    for p in phases {
        let len = p.per_second.len();
        if p.moving {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x as f64, 0.0), ((x + len) as f64, y_max as f64 * 1.15)],
                RGBColor(255, 200, 120).mix(0.35).filled(),
            )))?;
        }
        chart.draw_series(std::iter::once(Text::new(
            p.name.clone(),
            (x as f64 + 0.5, y_max as f64 * 1.1),
            ("sans-serif", 11),
        )))?;
        points.extend(
            p.per_second.iter().enumerate().map(|(i, n)| ((x + i) as f64 + 0.5, *n as f64)),
        );
        x += len;
    }
    chart.draw_series(LineSeries::new(points, BLUE))?;
    root.present()?;
    Ok(())
}
