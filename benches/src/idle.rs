//! The idle cost of shards: CPU and memory of nodes that serve no request at all.
//!
//! A shard is a Raft group, and a Raft group costs something even when nobody writes to it:
//! its tick, its heartbeats to each follower, their answers, the metrics it keeps. That cost
//! grows with the shard count and caps how many shards a node can hold, which in turn caps
//! how evenly load spreads (`lab simulate`). This measurement starts a fresh cluster per shard
//! count, waits until every shard has a leader and a settling period has passed (elections,
//! the first heartbeats and the leader balancer's hand-offs are start-up, not idle cost),
//! then reads each node process's CPU time and resident memory from `/proc` at the start and
//! the end of a quiet window. The figures are per node: CPU as a fraction of one core over
//! the window, RSS at its end.
//!
//! With `busy`, every shard first takes writes for that long (64 clients, uniform keys), and
//! the window starts after the settling period that follows: what a cluster that went quiet
//! after traffic costs, which may differ from one that never had any (queues that grew or
//! were walked through stay resident).
//!
//! After the window, one write to every shard in turn through one direct client (the
//! embedded router: persistent connections, the leaders known), so each shard is met as the
//! window left it (asleep, with quiescence on); and right after each, a second write to the
//! same shard, now awake: the pair says what waking costs. The client is opened, and has
//! written once to every shard, before the (last) settling period, after any kill, so neither
//! connecting nor finding leaders is in the figures (and the shards have gone back to sleep
//! since). Its own periodic map refresh (every 30 s) is the only request in the window.
//!
//! With `down`, that many nodes are killed (-9) after the settling period, and the survivors
//! are measured after a second one: what a cluster with a node lost costs at rest. Every
//! group that had a replica on the lost node has a follower that answers nothing, and the
//! groups it led elect elsewhere; with quiescence they go back to sleep without it.

use crate::lab;
use crate::target::Conn;
use anyhow::{Context, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The unit of the CPU times in `/proc/<pid>/stat`: USER_HZ, which the kernel fixes at 100 for
/// user space on every Linux architecture (what `sysconf(_SC_CLK_TCK)` returns).
const USER_HZ: f64 = 100.0;

/// One node's idle cost at one shard count.
#[derive(Debug, Clone, Serialize)]
pub struct IdlePoint {
    pub shards: u32,
    pub rf: u32,
    pub node: u64,
    /// CPU time over the window, as a fraction of one core (0.02 = 2% of a core).
    pub cpu_cores: f64,
    pub rss_mib: f64,
    /// Of the RSS, anonymous transparent huge pages: an allocator that asks for them backs
    /// every group's few touched kilobytes with 2 MiB pages (docs/performance.md).
    pub huge_pages_mib: f64,
    /// Of the RSS, what the node reports for RocksDB (memtables, block cache, table readers)
    /// and for its shards' entry and session caches, at the end of the window.
    pub rocksdb_mib: f64,
    pub caches_mib: f64,
    pub window_s: f64,
    pub quiesce_after_ms: u64,
    /// Nodes killed before the window (not measured).
    pub nodes_down: u64,
    /// Seconds of writes to every shard before settling, and the writes acknowledged in them.
    pub busy_s: f64,
    pub busy_writes: u64,
    /// Writes of the busy phase that failed (deadlines missed on a saturated machine).
    pub busy_errors: u64,
    /// One write per shard right after the window (each shard idle, asleep if quiescence is
    /// on, for the whole window): the median and the slowest, ms. The same on every node's row.
    pub wake_write_p50_ms: f64,
    pub wake_write_max_ms: f64,
    /// The write right after each of those, to the same shard, now awake: the median, ms.
    pub awake_write_p50_ms: f64,
}

/// User plus system CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_seconds(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))
}

/// `utime` and `stime` are fields 14 and 15; the command name (field 2) is in parentheses and
/// may itself hold spaces or parentheses, so fields are counted after its last `)`.
fn parse_cpu_seconds(stat: &str) -> Result<f64> {
    let rest = stat.rsplit_once(')').context("no command name")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so field n is index n - 3.
    let tick = |n: usize| -> Result<f64> {
        let f = fields.get(n - 3).with_context(|| format!("field {n} missing"))?;
        Ok(f.parse::<u64>().with_context(|| format!("field {n}: {f:?}"))? as f64)
    };
    Ok((tick(14)? + tick(15)?) / USER_HZ)
}

/// Resident memory of a process, in bytes (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(kib_field(&status, "VmRSS:").context("no VmRSS line")? * 1024)
}

/// The value of a `Key: N kB` line of a `/proc` file, in KiB.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Anonymous transparent huge pages of a process, in bytes (`AnonHugePages` in
/// `/proc/<pid>/smaps_rollup`); 0 on a kernel without the file (before 4.14) or the line.
pub fn huge_pages_bytes(pid: u32) -> Result<u64> {
    let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        // The process must exist: its status is readable.
        rss_bytes(pid)?;
        return Ok(0);
    };
    Ok(kib_field(&rollup, "AnonHugePages:").map_or(0, |kib| kib * 1024))
}

/// What [`measure`] measures.
#[derive(Debug, Clone)]
pub struct IdleSpec {
    pub nodes: u64,
    pub shards: u32,
    pub rf: u32,
    /// Waited after every shard has a leader (and after the busy phase, and after a kill).
    pub settle: Duration,
    /// Measured.
    pub window: Duration,
    /// The nodes' `--quiesce-after-ms`.
    pub quiesce_after_ms: u64,
    /// The last `down` nodes are killed (-9) after settling; the others are measured.
    pub down: u64,
    /// Writes to every shard for this long before settling (zero: none). A group that was busy
    /// once may keep more memory than one that never was (queues grown or walked through):
    /// the figure for a cluster that went quiet after a day of traffic, not one that never
    /// had any.
    pub busy: Duration,
}

/// Clients and connections of the busy phase: enough for every node to be saturated.
const BUSY_CLIENTS: usize = 64;
const BUSY_CONNECTIONS: usize = 8;
/// Keys written in the busy phase, spread uniformly over every shard.
const BUSY_RECORDS: u64 = 100_000;

/// Measures the idle nodes of `spec`: over its window after settling (after a busy phase,
/// and with nodes killed, when asked), then the first write to every shard.
pub async fn measure(spec: &IdleSpec) -> Result<Vec<IdlePoint>> {
    let IdleSpec { nodes, shards, rf, settle, window, quiesce_after_ms, down, busy } = *spec;
    // Every shard must keep a quorum, or the writes after the window cannot succeed.
    anyhow::ensure!(
        down * 2 < u64::from(rf) && down < nodes,
        "--down {down} with RF {rf} on {nodes} nodes leaves shards without a quorum: at most {} \
         nodes may be down",
        (u64::from(rf) - 1) / 2
    );
    let tuning = ringkv_tests::Tuning { quiesce_after_ms, ..ringkv_tests::Tuning::default() };
    let mut cluster = lab::start_cluster_tuned(nodes, shards, rf, None, tuning).await?;
    let (busy_writes, busy_errors) =
        if busy.is_zero() { (0, 0) } else { busy_phase(&cluster, busy).await? };
    if down > 0 {
        tokio::time::sleep(settle).await;
        for id in (nodes - down + 1)..=nodes {
            cluster.kill(id)?;
        }
    }
    // Warmed after any kill, so it knows the leaders the survivors elected.
    let client = wake_client(&cluster, shards).await?;
    tokio::time::sleep(settle).await;
    let ids = cluster.running();
    let mut before = Vec::new();
    for &id in &ids {
        let pid = cluster.pid(id).context("node not running")?;
        before.push((id, pid, cpu_seconds(pid)?));
    }
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let window_s = start.elapsed().as_secs_f64();
    let mut samples = Vec::new();
    for (id, pid, cpu0) in before {
        let (cpu, rss, huge) = (cpu_seconds(pid)? - cpu0, rss_bytes(pid)?, huge_pages_bytes(pid)?);
        let metrics = cluster.metrics(id).await?;
        let sum = |names: &[&str]| names.iter().map(|n| gauge(&metrics, n)).sum::<Result<f64>>();
        let rocksdb = sum(&ROCKSDB_GAUGES)?;
        let caches = sum(&CACHE_GAUGES)?;
        samples.push((id, cpu, rss, huge, rocksdb, caches));
    }
    // One shard at a time, so each write meets its shard as the window left it.
    let (mut wake_ms, mut awake_ms) = (Vec::new(), Vec::new());
    for shard in 0..u64::from(shards) {
        for (prefix, times) in [("idle-wake", &mut wake_ms), ("idle-awake", &mut awake_ms)] {
            let key = cluster.key_in_shard(shard, prefix);
            let started = Instant::now();
            client
                .write(&key, b"w")
                .await
                .map_err(|e| anyhow::anyhow!("{prefix} write to shard {shard}: {e}"))?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let p50 = median(&mut wake_ms);
    let max = wake_ms.last().copied().unwrap_or(0.0);
    let awake_p50 = median(&mut awake_ms);
    let mut points = Vec::new();
    for (id, cpu, rss, huge, rocksdb, caches) in samples {
        points.push(IdlePoint {
            shards,
            rf,
            node: id,
            cpu_cores: cpu / window_s,
            rss_mib: rss as f64 / (1024.0 * 1024.0),
            huge_pages_mib: huge as f64 / (1024.0 * 1024.0),
            rocksdb_mib: rocksdb / (1024.0 * 1024.0),
            caches_mib: caches / (1024.0 * 1024.0),
            window_s,
            quiesce_after_ms,
            nodes_down: down,
            busy_s: busy.as_secs_f64(),
            busy_writes,
            busy_errors,
            wake_write_p50_ms: p50,
            wake_write_max_ms: max,
            awake_write_p50_ms: awake_p50,
        });
    }
    Ok(points)
}

/// One direct client that has written to every shard (connections open, leaders known).
async fn wake_client(cluster: &ringkv_tests::Cluster, shards: u32) -> Result<Arc<Conn>> {
    let conns = lab::connect(
        crate::target::TargetKind::Direct,
        cluster,
        None,
        1,
        ringkv_client::Consistency::Linearizable,
    )
    .await?;
    let client = conns.into_iter().next().context("no connection opened")?;
    for shard in 0..u64::from(shards) {
        let key = cluster.key_in_shard(shard, "idle-warm");
        client
            .write(&key, b"w")
            .await
            .map_err(|e| anyhow::anyhow!("warming write to shard {shard}: {e}"))?;
    }
    Ok(client)
}

/// The node's gauges of RocksDB's memory, and of its shards' caches (`ringkv_storage`).
const ROCKSDB_GAUGES: [&str; 3] = [
    "ringkv_storage_rocksdb_memtable_bytes",
    "ringkv_storage_rocksdb_block_cache_bytes",
    "ringkv_storage_rocksdb_table_readers_bytes",
];
const CACHE_GAUGES: [&str; 2] =
    ["ringkv_storage_entry_cache_bytes", "ringkv_storage_session_cache_bytes"];

/// The value of an unlabelled gauge in a Prometheus text exposition.
fn gauge(exposition: &str, name: &str) -> Result<f64> {
    let line = exposition
        .lines()
        .find(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ')))
        .with_context(|| format!("the node reports no {name}"))?;
    let value = line.rsplit(' ').next().unwrap_or_default();
    value.parse().with_context(|| format!("{name}: not a number: {line:?}"))
}

/// Writes uniformly spread keys (so every shard) with [`BUSY_CLIENTS`] clients for `busy`,
/// in direct mode; returns the writes acknowledged and those that failed (a saturated
/// machine misses some client deadlines; that is the load's tail, not the figure's concern,
/// and it is reported beside it).
async fn busy_phase(cluster: &ringkv_tests::Cluster, busy: Duration) -> Result<(u64, u64)> {
    let conns = lab::connect(
        crate::target::TargetKind::Direct,
        cluster,
        None,
        BUSY_CONNECTIONS,
        ringkv_client::Consistency::Linearizable,
    )
    .await?;
    let spec = crate::driver::LoadSpec {
        workload: crate::workload::Workload::W,
        keys: std::sync::Arc::new(crate::keys::KeyChooser::new(
            crate::keys::Distribution::Uniform,
            BUSY_RECORDS,
        )?),
        value_bytes: 256,
        clients: BUSY_CLIENTS,
        duration: busy,
        rate: None,
        consistency: ringkv_client::Consistency::Linearizable,
    };
    let r = crate::driver::run("busy", &conns, &spec).await?;
    anyhow::ensure!(r.ops > 0, "no write succeeded in the busy phase: {:?}", r.errors);
    Ok((r.ops, r.errors.values().sum()))
}

/// A markdown table of the points, one row per shard count (mean and worst node).
pub fn table(points: &[IdlePoint]) -> String {
    let mut out = String::from(
        "| shards | RF | nodes (+ down) | quiesce after, ms | busy before, s (writes, failed) | CPU per node, % of a core (mean / max) | RSS per node, MiB (mean / max) | of which huge pages, MiB (max) | of which RocksDB, MiB (mean) | of which shard caches, MiB (mean) | first write after the window, ms (p50 / max) | the write after it, ms (p50) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut counts: Vec<u32> = points.iter().map(|p| p.shards).collect();
    counts.dedup();
    for shards in counts {
        let at: Vec<&IdlePoint> = points.iter().filter(|p| p.shards == shards).collect();
        let n = at.len() as f64;
        let cpu: Vec<f64> = at.iter().map(|p| p.cpu_cores * 100.0).collect();
        let rss: Vec<f64> = at.iter().map(|p| p.rss_mib).collect();
        let huge: Vec<f64> = at.iter().map(|p| p.huge_pages_mib).collect();
        let mean = |f: fn(&IdlePoint) -> f64| at.iter().map(|p| f(p)).sum::<f64>() / n;
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        out.push_str(&format!(
            "| {shards} | {} | {}{} | {} | {:.0} ({}, {}) | {:.1} / {:.1} | {:.0} / {:.0} | {:.0} | {:.0} | {:.1} | {:.1} / {:.1} | {:.1} |\n",
            at[0].rf,
            at.len(),
            match at[0].nodes_down {
                0 => String::new(),
                d => format!(" (+ {d} down)"),
            },
            at[0].quiesce_after_ms,
            at[0].busy_s,
            at[0].busy_writes,
            at[0].busy_errors,
            cpu.iter().sum::<f64>() / n,
            max(&cpu),
            rss.iter().sum::<f64>() / n,
            max(&rss),
            max(&huge),
            mean(|p| p.rocksdb_mib),
            mean(|p| p.caches_mib),
            at[0].wake_write_p50_ms,
            at[0].wake_write_max_ms,
            at[0].awake_write_p50_ms,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_read_by_their_whole_name() {
        let text = "# HELP x\nringkv_storage_entry_cache_bytes_total 9\nringkv_storage_entry_cache_bytes 1536\nringkv_storage_session_cache_bytes 0\n";
        assert_eq!(gauge(text, "ringkv_storage_entry_cache_bytes").unwrap(), 1536.0);
        assert_eq!(gauge(text, "ringkv_storage_session_cache_bytes").unwrap(), 0.0);
        let missing = gauge(text, "ringkv_storage_rocksdb_memtable_bytes").unwrap_err();
        assert!(missing.to_string().contains("reports no"), "{missing}");
        assert!(
            gauge("ringkv_storage_entry_cache_bytes x\n", "ringkv_storage_entry_cache_bytes")
                .is_err()
        );
    }

    #[test]
    fn cpu_times_are_read_after_the_command_name_whatever_it_holds() {
        // Fields 14 and 15 are 250 and 50 ticks: 3 s.
        let stat = "42 (ringkv (node) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_cpu_seconds(stat).expect("parses"), 3.0);
        assert!(parse_cpu_seconds("42 (x) S 1 2").is_err(), "short lines are errors");
        assert!(parse_cpu_seconds("garbage").is_err());
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let me = std::process::id();
        assert!(rss_bytes(me).expect("rss") > 1024 * 1024);
        assert!(huge_pages_bytes(me).expect("huge pages") <= rss_bytes(me).expect("rss"));
        assert!(cpu_seconds(me).expect("cpu") >= 0.0);
    }
}
