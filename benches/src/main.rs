//! `ringkv-bench`: run YCSB workloads against ringkv (router or direct) and etcd, the
//! side-by-side comparison suite, and the availability-vs-distribution lab.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ringkv_bench::driver::{self, LoadSpec};
use ringkv_bench::etcd::EtcdCluster;
use ringkv_bench::keys::{Distribution, KeyChooser};
use ringkv_bench::lab::{self, LabOptions};
use ringkv_bench::results::{self, RunResult};
use ringkv_bench::server_cpu::{self, CpuWindow, Role};
use ringkv_bench::simulate::simulate;
use ringkv_bench::target::{Conn, TargetKind};
use ringkv_bench::workload::Workload;
use ringkv_client::Consistency;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "ringkv-bench",
    version,
    about = "Benchmarks ringkv and etcd side by side, and the HA-vs-load-distribution lab"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Level {
    Linearizable,
    Lease,
    Stale,
}

impl From<Level> for Consistency {
    fn from(l: Level) -> Self {
        match l {
            Level::Linearizable => Consistency::Linearizable,
            Level::Lease => Consistency::Lease,
            Level::Stale => Consistency::Stale,
        }
    }
}

#[derive(Debug, clap::Args, Clone)]
struct Load {
    /// Seconds per run.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Records loaded before the runs.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Concurrent clients (closed loop) or operations in flight at most (open loop).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Connections the clients share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Results folder.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One workload against fresh clusters of each target, side by side.
    Run {
        #[command(flatten)]
        load: Load,
        /// Targets, comma separated: router, direct, etcd.
        #[arg(long, value_delimiter = ',', default_value = "router")]
        target: Vec<TargetKind>,
        #[arg(long, value_enum, default_value = "a")]
        workload: Workload,
        /// Key distribution (default: the workload's own).
        #[arg(long, value_enum)]
        distribution: Option<Distribution>,
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: Level,
        /// Open loop at this many operations per second (closed loop without it).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value_t = 8)]
        shards: u32,
        #[arg(long, default_value_t = 3)]
        rf: u32,
        /// Run ringkv with TLS everywhere (certificates of a throwaway CA, as `ringkv dev
        /// --tls`), to measure what TLS costs.
        #[arg(long)]
        tls: bool,
        /// Run ringkv with an access policy (implies `--tls`, nodes with a CA of their own):
        /// every request carries a token checked by the router and the node, to measure what
        /// authorization costs.
        #[arg(long)]
        auth: bool,
    },
    /// The comparison with etcd behind docs/performance.md: writes at 64 clients and at one,
    /// linearizable and stale/serializable reads, RF 1 beside RF 3, router beside direct.
    Suite {
        #[command(flatten)]
        load: Load,
        /// Leave etcd out (when it is not installed).
        #[arg(long)]
        no_etcd: bool,
    },
    /// Sweeps over fresh clusters: rf, shards, failure; or simulate at scale.
    Lab {
        #[command(subcommand)]
        sweep: Sweep,
    },
}

/// A sweep over replication factors.
#[derive(Debug, clap::Args)]
struct PerRf {
    #[command(flatten)]
    load: Load,
    #[arg(long, value_delimiter = ',', default_value = "1,3,5")]
    rf: Vec<u32>,
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Delay on every packet between nodes, ms (nodes in network namespaces; needs netem).
    #[arg(long)]
    net_delay: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum Sweep {
    /// Replication factor × read consistency, and writes per RF.
    Rf(PerRf),
    /// Shard count × read-balancing policy, with per-node load spread.
    Shards {
        #[command(flatten)]
        load: Load,
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        shards: Vec<u32>,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "round-robin,least-outstanding,peak-ewma,key-affinity"
        )]
        policy: Vec<String>,
        #[arg(long)]
        net_delay: Option<u32>,
    },
    /// Kill the busiest leader mid-run, per replication factor.
    Failure(PerRf),
    /// Grow and shrink under writes (3,4,5,4,3 nodes): data moved against the placement
    /// function's prediction, seconds to rebalance, load during moves against steady state.
    Scale {
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 16)]
        shards: u32,
        #[arg(long, value_delimiter = ',', default_value = "3,4,5,4,3")]
        sizes: Vec<u64>,
    },
    /// Scale-out with cores of its own per process: writes and reads at each cluster size,
    /// every node, the router and the load generator pinned (sched_setaffinity), and etcd
    /// (3 members on the first nodes' cores) beside them. Refuses a machine with too few
    /// cores for the largest size.
    Scaleout {
        #[command(flatten)]
        load: Load,
        /// Cluster sizes, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "3,6,9")]
        nodes: Vec<usize>,
        #[arg(long, default_value_t = 1)]
        cpus_per_node: usize,
        #[arg(long, default_value_t = 2)]
        router_cpus: usize,
        /// Cores for the load generator (this process); 0 leaves it unpinned (plumbing runs
        /// on a small machine only: its figures are not scale-out figures).
        #[arg(long, default_value_t = 2)]
        client_cpus: usize,
        /// Shards at every size (tens per node at the largest, for even load).
        #[arg(long, default_value_t = 24)]
        shards: u32,
        /// Skip etcd (it needs a size of 3 or more to have cores).
        #[arg(long)]
        no_etcd: bool,
    },
    /// What shards cost at rest: CPU (% of a core) and RSS per node of an idle cluster, per
    /// shard count (use a release build: a debug build's cost is several times higher).
    Idle {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, value_delimiter = ',', default_value = "8,128,1024")]
        shards: Vec<u32>,
        #[arg(long, default_value_t = 3)]
        rf: u32,
        /// Seconds after every shard has a leader before measuring (start-up is not idle).
        #[arg(long, default_value_t = 15)]
        settle: u64,
        /// Seconds measured.
        #[arg(long, default_value_t = 30)]
        window: u64,
        /// The nodes' `--quiesce-after-ms` (their default; 0: idle shards stay awake, for a
        /// before/after).
        #[arg(long, default_value_t = 500)]
        quiesce_after_ms: u64,
        /// Nodes killed (-9) after settling; the others are measured after settling again.
        #[arg(long, default_value_t = 0)]
        down: u64,
        /// Seconds of writes to every shard (64 clients, uniform keys) before settling: the
        /// idle cost of a cluster that was busy, not one that never was.
        #[arg(long, default_value_t = 0)]
        busy: u64,
        /// Results folder (`idle/idle.json` and `idle/idle.md` in it).
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// Quorum loss, load spread and data movement at scale, from the placement code alone.
    Simulate {
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        nodes: Vec<u64>,
        #[arg(long, default_value_t = 1024)]
        shards: u32,
        #[arg(long, value_delimiter = ',', default_value = "3,5")]
        rf: Vec<u32>,
        /// Nodes failed at once.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        fail: Vec<u64>,
        #[arg(long, default_value_t = 200)]
        trials: u32,
    },
}

/// The columns `run` and `suite` add: server CPU seconds per 1,000 operations, in all and by
/// role (the generator excluded; see `server_cpu`).
const CPU_COLS: &[&str] = &[server_cpu::SERVER, server_cpu::NODES, server_cpu::ROUTER];

/// A point of the suite: name, target, workload, consistency, clients, (nodes, shards, RF).
type SuitePoint = (String, TargetKind, Workload, Consistency, usize, (u64, u32, u32));

fn lab_options(
    load: &Load,
    net_delay: Option<u32>,
    sub: &str,
    title: &str,
    extra_cols: &[&'static str],
) -> LabOptions {
    LabOptions {
        checkpoint: Some(lab::Checkpoint {
            dir: load.out.join(sub),
            title: title.to_string(),
            extra_cols: extra_cols.to_vec(),
        }),
        duration: Duration::from_secs(load.duration),
        records: load.records,
        value_bytes: load.value_bytes,
        clients: load.clients,
        connections: load.connections,
        target: TargetKind::Router,
        net_delay_ms: net_delay,
    }
}

fn finish(dir: &std::path::Path, title: &str, runs: &[RunResult], extra: &[&str]) -> Result<()> {
    let table = results::write_folder(dir, title, runs, extra)?;
    println!("\n## {title}\n\n{table}\nresults in {}", dir.display());
    Ok(())
}

/// Runs one workload on a fresh cluster of `kind`.
#[allow(clippy::too_many_arguments)]
async fn run_target(
    kind: TargetKind,
    load: &Load,
    workload: Workload,
    distribution: Distribution,
    consistency: Consistency,
    rate: Option<f64>,
    (nodes, shards, rf): (u64, u32, u32),
    clients: usize,
    name: &str,
    (tls, auth): (bool, bool),
) -> Result<RunResult> {
    let keys = Arc::new(KeyChooser::new(distribution, load.records)?);
    let spec = LoadSpec {
        workload,
        keys,
        value_bytes: load.value_bytes,
        clients,
        duration: Duration::from_secs(load.duration),
        rate,
        consistency,
    };
    let mut r = if kind == TargetKind::Etcd {
        let etcd = EtcdCluster::start(3).await?;
        let mut conns = Vec::new();
        for i in 0..load.connections.max(1) {
            let addr = &etcd.client_addrs[i % etcd.client_addrs.len()];
            conns.push(Arc::new(Conn::open(kind, addr, consistency).await?));
        }
        driver::load(&conns, load.records, load.value_bytes, 64).await?;
        let cpu = CpuWindow::start(etcd.pids().into_iter().map(|pid| (Role::Node, pid)))?;
        let mut r = driver::run(name, &conns, &spec).await?;
        r.extra.extend(cpu.finish(r.ops)?);
        r
    } else {
        let cluster = if auth {
            let policy = lab::bench_policy();
            let c = ringkv_tests::Cluster::start_with_policy(
                nodes,
                shards,
                rf,
                Default::default(),
                &policy,
            )
            .await?;
            c.wait_for_leaders(Duration::from_secs(60)).await?;
            c
        } else if tls {
            let c = ringkv_tests::Cluster::start_tls(nodes, shards, rf, Default::default()).await?;
            c.wait_for_leaders(Duration::from_secs(60)).await?;
            c
        } else {
            lab::start_cluster(nodes, shards, rf, None).await?
        };
        let router = cluster.start_router("round-robin").await?;
        let conns =
            lab::connect(kind, &cluster, Some(&router), load.connections, consistency).await?;
        driver::load(&conns, load.records, load.value_bytes, 64).await?;
        let mut servers = Vec::new();
        for slot in cluster.running() {
            servers.push((Role::Node, cluster.pid(slot).context("node not running")?));
        }
        // In direct mode the router is started but idle: not one of this run's servers.
        if kind == TargetKind::Router {
            servers.push((Role::Router, router.pid()));
        }
        let cpu = CpuWindow::start(servers)?;
        let mut r = driver::run(name, &conns, &spec).await?;
        r.extra.extend(cpu.finish(r.ops)?);
        r
    };
    r.distribution = Some(format!("{distribution:?}").to_lowercase());
    Ok(r)
}

// The load generator shares the machine with what it measures; glibc malloc was ~7% of its
// CPU in a read run (the nodes and the router use mimalloc for the same reason).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run {
            load,
            target,
            workload,
            distribution,
            consistency,
            rate,
            nodes,
            shards,
            rf,
            tls,
            auth,
        } => {
            let dist = distribution.unwrap_or(workload.default_distribution());
            let mut runs = Vec::new();
            for t in target {
                let tls_tag = match (tls, auth) {
                    _ if t == TargetKind::Etcd => "",
                    (_, true) => " auth",
                    (true, false) => " tls",
                    (false, false) => "",
                };
                let name = format!("{t:?} {workload:?}{tls_tag}").to_lowercase();
                runs.push(
                    run_target(
                        t,
                        &load,
                        workload,
                        dist,
                        consistency.into(),
                        rate,
                        (nodes, shards, rf),
                        load.clients,
                        &name,
                        (tls, auth),
                    )
                    .await
                    .with_context(|| format!("running against {t:?}"))?,
                );
            }
            finish(&load.out, &format!("workload {workload:?}, {dist:?} keys"), &runs, CPU_COLS)
        }
        Command::Suite { load, no_etcd } => {
            let c = load.clients;
            let shape = (3, 8, 3);
            let mut points: Vec<SuitePoint> = vec![
                (
                    format!("ringkv router writes x{c}"),
                    TargetKind::Router,
                    Workload::W,
                    Consistency::Linearizable,
                    c,
                    shape,
                ),
                (
                    format!("ringkv direct writes x{c}"),
                    TargetKind::Direct,
                    Workload::W,
                    Consistency::Linearizable,
                    c,
                    shape,
                ),
                (
                    "ringkv router writes x1".into(),
                    TargetKind::Router,
                    Workload::W,
                    Consistency::Linearizable,
                    1,
                    shape,
                ),
                (
                    format!("ringkv RF1 writes x{c}"),
                    TargetKind::Router,
                    Workload::W,
                    Consistency::Linearizable,
                    c,
                    (3, 8, 1),
                ),
                (
                    format!("ringkv linearizable reads x{c}"),
                    TargetKind::Router,
                    Workload::C,
                    Consistency::Linearizable,
                    c,
                    shape,
                ),
                (
                    format!("ringkv stale reads x{c}"),
                    TargetKind::Router,
                    Workload::C,
                    Consistency::Stale,
                    c,
                    shape,
                ),
            ];
            if !no_etcd {
                points.extend([
                    (
                        format!("etcd writes x{c}"),
                        TargetKind::Etcd,
                        Workload::W,
                        Consistency::Linearizable,
                        c,
                        shape,
                    ),
                    (
                        "etcd writes x1".into(),
                        TargetKind::Etcd,
                        Workload::W,
                        Consistency::Linearizable,
                        1,
                        shape,
                    ),
                    (
                        format!("etcd linearizable reads x{c}"),
                        TargetKind::Etcd,
                        Workload::C,
                        Consistency::Linearizable,
                        c,
                        shape,
                    ),
                    (
                        format!("etcd serializable reads x{c}"),
                        TargetKind::Etcd,
                        Workload::C,
                        Consistency::Stale,
                        c,
                        shape,
                    ),
                ]);
            }
            let checkpoint = lab::Checkpoint {
                dir: load.out.clone(),
                title: "ringkv and etcd side by side".into(),
                extra_cols: CPU_COLS.to_vec(),
            };
            let mut runs = Vec::new();
            for (name, kind, w, cons, clients, shape) in points {
                runs.push(
                    run_target(
                        kind,
                        &load,
                        w,
                        Distribution::Uniform,
                        cons,
                        None,
                        shape,
                        clients,
                        &name,
                        (false, false),
                    )
                    .await
                    .with_context(|| name.clone())?,
                );
                checkpoint.save(&runs)?;
            }
            finish(&load.out, "ringkv and etcd side by side", &runs, CPU_COLS)
        }
        Command::Lab { sweep } => match sweep {
            Sweep::Rf(PerRf { load, rf, shards, net_delay }) => {
                let (title, cols) = ("replication factor x consistency", ["rf"]);
                let o = lab_options(&load, net_delay, "rf", title, &cols);
                let runs = lab::sweep_rf(&o, &rf, shards).await?;
                finish(&load.out.join("rf"), title, &runs, &cols)
            }
            Sweep::Shards { load, shards, policy, net_delay } => {
                let policies: Vec<&str> = policy.iter().map(String::as_str).collect();
                let (title, cols) = ("shards x balancing", ["shards", "node_load_max_over_mean"]);
                let o = lab_options(&load, net_delay, "shards", title, &cols);
                let runs = lab::sweep_shards(&o, &shards, &policies).await?;
                finish(&load.out.join("shards"), title, &runs, &cols)
            }
            Sweep::Failure(PerRf { load, rf, shards, net_delay }) => {
                let title = "kill the busiest leader";
                let cols =
                    ["rf", "shards_unavailable", "unavailable_s_max", "dip_fraction", "recovery_s"];
                let o = lab_options(&load, net_delay, "failure", title, &cols);
                let runs = lab::sweep_failure(&o, &rf, shards).await?;
                finish(&load.out.join("failure"), title, &runs, &cols)
            }
            Sweep::Scaleout {
                load,
                nodes,
                cpus_per_node,
                router_cpus,
                client_cpus,
                shards,
                no_etcd,
            } => {
                let available = ringkv_bench::scaleout::allowed(std::process::id())?;
                let max = nodes.iter().copied().max().unwrap_or(0);
                let plan = ringkv_bench::scaleout::CpuPlan::new(
                    max,
                    cpus_per_node,
                    router_cpus,
                    client_cpus,
                    &available,
                )
                .map_err(|e| anyhow::anyhow!(e))?;
                let title = "scale-out with pinned cores";
                let cols = ["nodes", "cpus_per_node", "pinned"];
                let o = lab_options(&load, None, "scaleout", title, &cols);
                let runs =
                    ringkv_bench::scaleout::sweep_scaleout(&o, &plan, &nodes, shards, !no_etcd)
                        .await?;
                finish(&load.out.join("scaleout"), title, &runs, &cols)
            }
            Sweep::Scale { load, shards, sizes } => {
                let title = "grow and shrink under writes";
                let cols = [
                    "nodes_before",
                    "nodes_after",
                    "moves",
                    "moves_predicted",
                    "moved_mb",
                    "predicted_mb",
                    "rebalance_s",
                ];
                let o = lab_options(&load, None, "scale", title, &cols);
                let (runs, phases) = ringkv_bench::scale::sweep_scale(&o, shards, &sizes).await?;
                let dir = load.out.join("scale");
                finish(&dir, title, &runs, &cols)?;
                ringkv_bench::scale::plot(&dir.join("scale.svg"), title, &phases)
            }
            Sweep::Idle {
                nodes,
                shards,
                rf,
                settle,
                window,
                quiesce_after_ms,
                down,
                busy,
                out,
            } => {
                let mut points = Vec::new();
                for &n in &shards {
                    println!(
                        "idle: {nodes} nodes ({down} to be killed), {n} shards, RF {rf}, quiesce after {quiesce_after_ms} ms: {busy} s of writes, settling {settle} s, measuring {window} s"
                    );
                    let spec = ringkv_bench::idle::IdleSpec {
                        nodes,
                        shards: n,
                        rf,
                        settle: Duration::from_secs(settle),
                        window: Duration::from_secs(window),
                        quiesce_after_ms,
                        down,
                        busy: Duration::from_secs(busy),
                    };
                    let at = ringkv_bench::idle::measure(&spec).await?;
                    points.extend(at);
                }
                let dir = out.join("idle");
                std::fs::create_dir_all(&dir)?;
                let table = ringkv_bench::idle::table(&points);
                std::fs::write(dir.join("idle.json"), serde_json::to_string_pretty(&points)?)?;
                std::fs::write(dir.join("idle.md"), &table)?;
                println!("\n## idle cost per node\n\n{table}\nresults in {}", dir.display());
                Ok(())
            }
            Sweep::Simulate { nodes, shards, rf, fail, trials } => {
                println!(
                    "| nodes | shards | RF | failed | shards without quorum (mean) | worst trial | trials with loss | replicas max/mean | leaders max/mean | moved on +1 node | moved on -1 node |"
                );
                println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
                for &n in &nodes {
                    for &r in &rf {
                        for &f in &fail {
                            let s = simulate(n, shards, r, f, trials)?;
                            println!(
                                "| {} | {} | {} | {} | {:.4}% | {:.2}% | {:.0}% | {:.2} | {:.2} | {:.2}% | {} |",
                                s.nodes,
                                s.shards,
                                s.rf,
                                s.failed,
                                100.0 * s.quorum_lost_mean,
                                100.0 * s.quorum_lost_max,
                                100.0 * s.trials_with_loss,
                                s.replicas_max_over_mean,
                                s.leaders_max_over_mean,
                                100.0 * s.moved_on_add,
                                if s.moved_on_remove.is_nan() {
                                    "n/a".to_string()
                                } else {
                                    format!("{:.2}%", 100.0 * s.moved_on_remove)
                                }
                            );
                        }
                    }
                }
                Ok(())
            }
        },
    }
}
