//! The bench smoke CI runs so the harness cannot rot: the `ringkv-bench` binary runs a few
//! seconds of workload A against a fresh ringkv cluster (router and direct) and etcd, and
//! writes its results folder with the servers' CPU per operation; the driver's open loop keeps
//! its schedule; the idle measurement reads real nodes' CPU and memory.

use ringkv_bench::driver::{self, LoadSpec};
use ringkv_bench::idle::IdleSpec;
use ringkv_bench::keys::{Distribution, KeyChooser};
use ringkv_bench::lab;
use ringkv_bench::server_cpu;
use ringkv_bench::target::TargetKind;
use ringkv_bench::workload::Workload;
use ringkv_client::Consistency;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn bench_binary_runs_router_direct_and_etcd_side_by_side() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let bin = ringkv_tests::binary("ringkv-bench")?;
    let targets = if ringkv_bench::etcd::etcd_binary().is_ok() {
        "router,direct,etcd"
    } else {
        "router,direct"
    };
    let status = std::process::Command::new(bin)
        .args([
            "run",
            "--target",
            targets,
            "--workload",
            "a",
            "--records",
            "300",
            "--duration",
            "3",
        ])
        .args(["--clients", "8", "--connections", "2", "--out"])
        .arg(out.path())
        .status()?;
    anyhow::ensure!(status.success(), "ringkv-bench run failed: {status}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json"))?)?;
    let runs = json.as_array().cloned().unwrap_or_default();
    anyhow::ensure!(runs.len() == targets.split(',').count(), "one result per target: {json}");
    for r in &runs {
        anyhow::ensure!(r["ops"].as_u64().unwrap_or(0) > 10, "too few operations: {r}");
        anyhow::ensure!(r["all"]["p99_ms"].as_f64().unwrap_or(0.0) > 0.0, "no latency: {r}");
        // The servers' CPU per 1,000 operations: always the nodes' (or etcd members') share,
        // the router's only when the run went through it.
        let cpu = |k: &str| r["extra"][k].as_f64();
        let server = cpu(server_cpu::SERVER).filter(|s| *s > 0.0);
        anyhow::ensure!(server.is_some(), "no server CPU figure: {r}");
        anyhow::ensure!(cpu(server_cpu::NODES).is_some_and(|n| n > 0.0), "no node share: {r}");
        let through_router = r["name"].as_str().is_some_and(|n| n.starts_with("router"));
        anyhow::ensure!(
            cpu(server_cpu::ROUTER).is_some() == through_router,
            "the router's share belongs to router runs only: {r}"
        );
    }
    let table = std::fs::read_to_string(out.path().join("results.md"))?;
    anyhow::ensure!(table.contains(server_cpu::SERVER), "no CPU column in the table: {table}");
    for f in ["results.md", "throughput.svg", "timeline.svg"] {
        anyhow::ensure!(out.path().join(f).exists(), "{f} missing");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_offers_the_scheduled_rate() -> anyhow::Result<()> {
    let cluster = lab::start_cluster(3, 2, 3, None).await?;
    let router = cluster.start_router("round-robin").await?;
    let conns =
        lab::connect(TargetKind::Router, &cluster, Some(&router), 2, Consistency::Stale).await?;
    driver::load(&conns, 100, 64, 8).await?;
    let spec = LoadSpec {
        workload: Workload::C,
        keys: Arc::new(KeyChooser::new(Distribution::Uniform, 100)?),
        value_bytes: 64,
        clients: 32,
        duration: Duration::from_secs(3),
        rate: Some(50.0),
        consistency: Consistency::Stale,
    };
    let r = driver::run("open loop", &conns, &spec).await?;
    // 50/s for 3 s: the schedule issues 150 operations; all must complete and be counted.
    anyhow::ensure!((140..=151).contains(&r.ops), "{} operations for a schedule of 150", r.ops);
    anyhow::ensure!(r.errors.is_empty(), "errors: {:?}", r.errors);
    Ok(())
}

/// 3 nodes, 4 shards, RF 3, 1 s to settle, quiescence after 500 ms, no busy phase.
fn idle_spec(window: Duration, down: u64) -> IdleSpec {
    IdleSpec {
        nodes: 3,
        shards: 4,
        rf: 3,
        settle: Duration::from_secs(1),
        window,
        quiesce_after_ms: 500,
        down,
        busy: Duration::ZERO,
    }
}

/// The idle measurement's plumbing: real node processes, their CPU time and RSS from /proc,
/// after a busy phase that wrote to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_measurement_reads_every_nodes_cpu_and_memory() -> anyhow::Result<()> {
    // With a busy phase first: its writes reach every shard and are counted.
    let spec = IdleSpec { busy: Duration::from_secs(2), ..idle_spec(Duration::from_secs(2), 0) };
    let points = ringkv_bench::idle::measure(&spec).await?;
    anyhow::ensure!(points.len() == 3, "one point per node: {points:?}");
    let cores = std::thread::available_parallelism()?.get() as f64;
    for p in &points {
        // Every node pings its peers and syncs with the meta leader, so some CPU is used; a
        // node cannot use more than the machine has.
        anyhow::ensure!(p.cpu_cores > 0.0 && p.cpu_cores <= cores, "CPU: {p:?}");
        anyhow::ensure!(p.rss_mib > 8.0, "a node with RocksDB open holds more than 8 MiB: {p:?}");
        anyhow::ensure!(p.window_s >= 2.0, "window: {p:?}");
        // The busy phase's writes went through the memtables. Both figures come from the
        // node's /metrics (the caches' may be zero: sleeping shards hold none).
        anyhow::ensure!(
            p.rocksdb_mib > 0.0 && p.rocksdb_mib < p.rss_mib,
            "RocksDB's memory, part of the RSS: {p:?}"
        );
        anyhow::ensure!(p.caches_mib < p.rss_mib, "caches: {p:?}");
        anyhow::ensure!(p.busy_s == 2.0 && p.busy_writes > 0, "the busy phase wrote: {p:?}");
        anyhow::ensure!(
            p.wake_write_p50_ms > 0.0 && p.wake_write_max_ms >= p.wake_write_p50_ms,
            "every shard took a write after the window: {p:?}"
        );
        anyhow::ensure!(p.awake_write_p50_ms > 0.0, "and a second one: {p:?}");
    }
    let table = ringkv_bench::idle::table(&points);
    anyhow::ensure!(table.lines().count() == 3, "header, rule, one row: {table}");
    Ok(())
}

/// `lab scaleout` on a machine too small for what was asked refuses before starting anything,
/// and says how many cores it needs.
#[test]
fn scaleout_refuses_a_machine_with_too_few_cores() -> anyhow::Result<()> {
    let out = std::process::Command::new(ringkv_tests::binary("ringkv-bench")?)
        .args(["lab", "scaleout", "--nodes", "3,64", "--cpus-per-node", "1", "--out"])
        .arg(tempfile::tempdir()?.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(!out.status.success(), "64 nodes of one core each should not fit here");
    anyhow::ensure!(stderr.contains("needs 68 cores"), "stderr: {stderr}");
    Ok(())
}

/// The plumbing of `lab scaleout` on the smallest run this machine allows: one node and the
/// router on a core each, the load generator unpinned. Each point reports that its pinning held.
#[test]
fn scaleout_pins_node_and_router_and_measures() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let status = std::process::Command::new(ringkv_tests::binary("ringkv-bench")?)
        .args(["lab", "scaleout", "--nodes", "1", "--cpus-per-node", "1", "--router-cpus", "1"])
        .args(["--client-cpus", "0", "--shards", "2", "--no-etcd", "--records", "200"])
        .args(["--duration", "2", "--clients", "4", "--connections", "1", "--out"])
        .arg(out.path())
        .status()?;
    anyhow::ensure!(status.success(), "ringkv-bench lab scaleout failed: {status}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        out.path().join("scaleout").join("results.json"),
    )?)?;
    let runs = json.as_array().cloned().unwrap_or_default();
    anyhow::ensure!(runs.len() == 2, "a write and a read point: {json}");
    for r in &runs {
        anyhow::ensure!(r["ops"].as_u64().unwrap_or(0) > 10, "too few operations: {r}");
        anyhow::ensure!(r["extra"]["pinned"].as_f64() == Some(1.0), "not pinned: {r}");
        anyhow::ensure!(r["extra"]["nodes"].as_f64() == Some(1.0), "wrong size: {r}");
    }
    Ok(())
}

/// With a node killed before the window: the survivors are measured, every shard still
/// takes a write, and a down count that would leave shards without a quorum is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_measurement_with_a_node_down_measures_the_survivors() -> anyhow::Result<()> {
    let refused = ringkv_bench::idle::measure(&idle_spec(Duration::from_secs(1), 2)).await;
    let Err(e) = refused else { anyhow::bail!("2 of RF 3 down was accepted") };
    anyhow::ensure!(e.to_string().contains("without a quorum"), "unclear refusal: {e}");

    let points = ringkv_bench::idle::measure(&idle_spec(Duration::from_secs(2), 1)).await?;
    anyhow::ensure!(points.len() == 2, "one point per surviving node: {points:?}");
    for p in &points {
        anyhow::ensure!(p.node != 3 && p.nodes_down == 1, "the killed node is not measured: {p:?}");
        anyhow::ensure!(p.wake_write_max_ms >= p.wake_write_p50_ms, "writes after: {p:?}");
    }
    let table = ringkv_bench::idle::table(&points);
    anyhow::ensure!(table.contains("2 (+ 1 down)"), "the table says a node was down: {table}");
    Ok(())
}
