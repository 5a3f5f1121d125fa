//! The lab: sweeps that start a fresh cluster per point and measure it, to show what
//! replication buys and costs and what sharding and balancing buy.
//!
//! - [`sweep_rf`]: replication factor × read consistency (reads), and writes per RF: the price
//!   of availability. Five nodes for every point, so only RF changes.
//! - [`sweep_shards`]: shard count × read-balancing policy (STALE reads, which any replica may
//!   serve) plus leader-only reads: the gain of distribution, with the per-node load spread
//!   (max/mean of requests served per node, from the nodes' own `/metrics`).
//! - [`sweep_failure`]: kill -9 the node leading the most shards a third into a write run,
//!   restart it at two thirds: seconds each shard had no leader, client errors, the throughput
//!   dip and the time to recover.
//!
//! - [`crate::scale::sweep_scale`]: 3 → 4 → 5 → 4 → 3 nodes under writes: replicas and
//!   bytes moved against the placement function's prediction, seconds to rebalance, and the
//!   load during moves against steady state.
//!
//! With `net_delay_ms`, nodes run in their own network namespaces with that delay on every
//! packet (`tc netem`), so the sweeps show a network-bound cluster too.

use crate::driver::{self, LoadSpec};
use crate::keys::KeyChooser;
use crate::results::RunResult;
use crate::target::{Conn, TargetKind};
use crate::workload::Workload;
use anyhow::{Result, bail};
use ringkv_client::Consistency;
use ringkv_tests::{Cluster, NetLab, RouterProc, Tuning};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LabOptions {
    pub duration: Duration,
    pub records: u64,
    pub value_bytes: usize,
    pub clients: usize,
    pub connections: usize,
    pub target: TargetKind,
    pub net_delay_ms: Option<u32>,
    /// Where to write the results after every point, so a long sweep cut short keeps what
    /// it measured.
    pub checkpoint: Option<Checkpoint>,
}

/// A results folder that is rewritten after each point of a sweep.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: std::path::PathBuf,
    pub title: String,
    pub extra_cols: Vec<&'static str>,
}

impl Checkpoint {
    pub fn save(&self, runs: &[RunResult]) -> Result<()> {
        let title = format!("{} (in progress: {} points)", self.title, runs.len());
        crate::results::write_folder(&self.dir, &title, runs, &self.extra_cols).map(|_| ())
    }
}

impl LabOptions {
    /// Adds a point's result and saves the checkpoint.
    pub(crate) fn record(&self, out: &mut Vec<RunResult>, r: RunResult) -> Result<()> {
        out.push(r);
        match &self.checkpoint {
            Some(c) => c.save(out),
            None => Ok(()),
        }
    }
}

pub async fn start_cluster(
    nodes: u64,
    shards: u32,
    rf: u32,
    net_delay_ms: Option<u32>,
) -> Result<Cluster> {
    start_cluster_tuned(nodes, shards, rf, net_delay_ms, Tuning::default()).await
}

/// [`start_cluster`] with the nodes' tuning given.
pub async fn start_cluster_tuned(
    nodes: u64,
    shards: u32,
    rf: u32,
    net_delay_ms: Option<u32>,
    tuning: Tuning,
) -> Result<Cluster> {
    let lab = match net_delay_ms {
        None => None,
        Some(ms) => {
            let lab = NetLab::create(&(1..=nodes).collect::<Vec<_>>())?;
            if !lab.netem_available() {
                bail!("--net-delay needs tc netem, which this kernel does not have (no sch_netem)");
            }
            lab.delay(ms, ms / 10)?;
            Some(lab)
        }
    };
    let c = Cluster::start_in(nodes, shards, rf, tuning, lab).await?;
    c.wait_for_leaders(Duration::from_secs(60)).await?;
    Ok(c)
}

/// Opens `n` connections of `kind` to `cluster` (through `router` for the router target).
pub async fn connect(
    kind: TargetKind,
    cluster: &Cluster,
    router: Option<&RouterProc>,
    n: usize,
    consistency: Consistency,
) -> Result<Vec<Arc<Conn>>> {
    let endpoint = match (kind, router) {
        (TargetKind::Router, Some(r)) => r.addr.clone(),
        (TargetKind::Direct, _) => cluster.seeds(),
        _ => bail!("the {kind:?} target needs a router"),
    };
    let token = cluster.auth_policy.is_some().then_some(BENCH_TOKEN);
    let mut conns = Vec::new();
    for _ in 0..n.max(1) {
        let conn = Conn::open_as(kind, &endpoint, consistency, cluster.dialer(), token).await?;
        conns.push(Arc::new(conn));
    }
    Ok(conns)
}

/// The token the load generator sends to a cluster started with [`bench_policy`].
pub const BENCH_TOKEN: &str = "ringkv-bench-token";

/// The access policy of `ringkv-bench run --auth`: the generator's token may read and write
/// every key (so every request pays for the full check: a token hash and a grant lookup, in
/// the router and again in the node); the harness's and the router's certificates are known.
pub fn bench_policy() -> String {
    format!(
        r#"[[role]]
name = "bench"
grants = [{{ keys = "", access = "readwrite" }}]
[[role]]
name = "operator"
grants = [{{ cluster = true, access = "admin" }}]
{}[[certificate]]
subject = "127.0.0.1"
roles = ["operator"]
delegate = true
"#,
        ringkv_auth::policy::token_entry("bench", BENCH_TOKEN, &["bench"])
    )
}

pub(crate) fn spec(
    o: &LabOptions,
    workload: Workload,
    keys: &Arc<KeyChooser>,
    consistency: Consistency,
) -> LoadSpec {
    LoadSpec {
        workload,
        keys: keys.clone(),
        value_bytes: o.value_bytes,
        clients: o.clients,
        duration: o.duration,
        rate: None,
        consistency,
    }
}

/// KV requests each node has served so far (sum of `ringkv_requests_total`).
pub async fn requests_per_node(c: &Cluster) -> BTreeMap<u64, f64> {
    let mut out = BTreeMap::new();
    for n in &c.nodes {
        let text = c.metrics(n.id).await.unwrap_or_default();
        let total: f64 = text
            .lines()
            .filter(|l| l.starts_with("ringkv_requests_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        out.insert(n.id, total);
    }
    out
}

fn spread(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>) -> f64 {
    let d: Vec<f64> = after.iter().map(|(n, v)| v - before.get(n).unwrap_or(&0.0)).collect();
    let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
    if mean <= 0.0 { 0.0 } else { d.iter().copied().fold(0.0, f64::max) / mean }
}

pub(crate) async fn loaded(
    o: &LabOptions,
    cluster: &Cluster,
    router: Option<&RouterProc>,
) -> Result<Arc<KeyChooser>> {
    let conns =
        connect(o.target, cluster, router, o.connections, Consistency::Linearizable).await?;
    driver::load(&conns, o.records, o.value_bytes, 64).await?;
    Ok(Arc::new(KeyChooser::new(crate::keys::Distribution::Uniform, o.records)?))
}

pub async fn sweep_rf(o: &LabOptions, rfs: &[u32], shards: u32) -> Result<Vec<RunResult>> {
    let mut out = Vec::new();
    for &rf in rfs {
        let cluster = start_cluster(5, shards, rf, o.net_delay_ms).await?;
        let router = cluster.start_router("round-robin").await?;
        let keys = loaded(o, &cluster, Some(&router)).await?;
        for consistency in [Consistency::Linearizable, Consistency::Lease, Consistency::Stale] {
            let conns =
                connect(o.target, &cluster, Some(&router), o.connections, consistency).await?;
            let name = format!("RF {rf} reads {}", format!("{consistency:?}").to_uppercase());
            let mut r =
                driver::run(&name, &conns, &spec(o, Workload::C, &keys, consistency)).await?;
            r.extra.insert("rf".into(), f64::from(rf));
            o.record(&mut out, r)?;
        }
        let conns =
            connect(o.target, &cluster, Some(&router), o.connections, Consistency::Linearizable)
                .await?;
        let mut r = driver::run(
            &format!("RF {rf} writes"),
            &conns,
            &spec(o, Workload::W, &keys, Consistency::Linearizable),
        )
        .await?;
        r.extra.insert("rf".into(), f64::from(rf));
        o.record(&mut out, r)?;
    }
    Ok(out)
}

pub async fn sweep_shards(
    o: &LabOptions,
    shard_counts: &[u32],
    policies: &[&str],
) -> Result<Vec<RunResult>> {
    let mut out = Vec::new();
    for &shards in shard_counts {
        let cluster = start_cluster(3, shards, 3, o.net_delay_ms).await?;
        let keys = {
            let router = cluster.start_router("round-robin").await?;
            loaded(o, &cluster, Some(&router)).await?
        };
        let mut points: Vec<(String, Consistency)> =
            vec![("leader-reads".to_string(), Consistency::Linearizable)];
        points.extend(policies.iter().map(|p| (p.to_string(), Consistency::Stale)));
        for (policy, consistency) in points {
            let router_policy =
                if consistency == Consistency::Stale { policy.as_str() } else { "round-robin" };
            let router = cluster.start_router(router_policy).await?;
            let conns =
                connect(TargetKind::Router, &cluster, Some(&router), o.connections, consistency)
                    .await?;
            let before = requests_per_node(&cluster).await;
            let mut r = driver::run(
                &format!("{shards} shards {policy}"),
                &conns,
                &spec(o, Workload::B, &keys, consistency),
            )
            .await?;
            let after = requests_per_node(&cluster).await;
            r.extra.insert("shards".into(), f64::from(shards));
            r.extra.insert("node_load_max_over_mean".into(), spread(&before, &after));
            o.record(&mut out, r)?;
        }
    }
    Ok(out)
}

pub async fn sweep_failure(o: &LabOptions, rfs: &[u32], shards: u32) -> Result<Vec<RunResult>> {
    let mut out = Vec::new();
    for &rf in rfs {
        let mut cluster = start_cluster(5, shards, rf, o.net_delay_ms).await?;
        let router = cluster.start_router("round-robin").await?;
        let keys = loaded(o, &cluster, Some(&router)).await?;
        let conns =
            connect(o.target, &cluster, Some(&router), o.connections, Consistency::Linearizable)
                .await?;
        let s = spec(o, Workload::W, &keys, Consistency::Linearizable);
        let name = format!("RF {rf} kill busiest leader");
        let run = {
            let conns = conns.clone();
            tokio::spawn(async move { driver::run(&name, &conns, &s).await })
        };
        let started = Instant::now();
        tokio::time::sleep(o.duration / 3).await;
        let victim = cluster.busiest_leader().await.unwrap_or(1);
        let kill_at = started.elapsed();
        cluster.kill(victim)?;
        // Seconds each shard had no leader on a running node, sampled every 100 ms until the
        // victim comes back.
        let mut unavailable: BTreeMap<u64, f64> = BTreeMap::new();
        let restart_at = o.duration * 2 / 3;
        while started.elapsed() < restart_at {
            let now = cluster.leaders().await;
            for s in 0..cluster.shard_count() {
                if !now.contains_key(&s) {
                    *unavailable.entry(s).or_default() += 0.1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.restart(victim).await?;
        let mut r = run.await??;
        let kill_s = kill_at.as_secs() as usize;
        let before: Vec<u64> = r.per_second.iter().take(kill_s).copied().skip(1).collect();
        let base = before.iter().sum::<u64>() as f64 / before.len().max(1) as f64;
        let after = &r.per_second[kill_s.min(r.per_second.len())..];
        let dip = after.iter().take(5).copied().min().unwrap_or(0) as f64;
        let recovery =
            after.iter().position(|&n| n as f64 >= 0.8 * base).map_or(f64::NAN, |p| p as f64);
        r.extra.insert("rf".into(), f64::from(rf));
        r.extra.insert("shards_unavailable".into(), unavailable.len() as f64);
        r.extra
            .insert("unavailable_s_max".into(), unavailable.values().copied().fold(0.0, f64::max));
        r.extra.insert("dip_fraction".into(), if base > 0.0 { dip / base } else { 0.0 });
        r.extra.insert("recovery_s".into(), recovery);
        o.record(&mut out, r)?;
    }
    Ok(out)
}
