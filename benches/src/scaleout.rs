//! `lab scaleout`: does throughput grow with nodes when each node has cores of its own?
//!
//! On a shared machine the nodes, the router and the load generator fight for the same cores,
//! so adding nodes adds contention, not capacity, and the figures say nothing about scale-out.
//! This lab gives every process its own cores (`sched_setaffinity` on every thread of the
//! process, so threads started later inherit it): the load generator (this process) on the
//! first `client_cpus`, the router on the next `router_cpus`, then `cpus_per_node` per node.
//! For each cluster size it starts a fresh cluster, pins it, loads the keys and runs the write
//! workload (W) and the read workload (C, linearizable) through the router. Then etcd with 3
//! members, each pinned to the cores nodes 1–3 had, runs the same two workloads beside it.
//!
//! A machine with fewer cores than the largest size needs is refused before anything starts,
//! with the count it needs: sharing cores would produce numbers that look like scale-out
//! figures and are not. Each point records the cores each process was actually allowed
//! (read back from `/proc/<pid>/status`), so a result shows its pinning held.

use crate::driver;
use crate::etcd::EtcdCluster;
use crate::lab::{LabOptions, connect, loaded, spec, start_cluster};
use crate::results::RunResult;
use crate::target::{Conn, TargetKind};
use crate::workload::Workload;
use anyhow::{Context, Result, bail};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use ringkv_client::Consistency;
use std::sync::Arc;

/// Which cores each process gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPlan {
    /// Empty: the load generator is not pinned (`--client-cpus 0`, for a plumbing run on a
    /// small machine; its figures are not scale-out figures).
    pub client: Vec<usize>,
    pub router: Vec<usize>,
    /// Cores of node slot `i + 1`, for the largest size.
    pub nodes: Vec<Vec<usize>>,
}

impl CpuPlan {
    /// Lays out the cores this process may use (`available`, e.g. its `Cpus_allowed_list`:
    /// under a cpuset they need not start at 0) for up to `max_nodes` nodes, or says how many
    /// are missing.
    pub fn new(
        max_nodes: usize,
        cpus_per_node: usize,
        router_cpus: usize,
        client_cpus: usize,
        available: &[usize],
    ) -> Result<Self, String> {
        if cpus_per_node == 0 || router_cpus == 0 {
            return Err("every node and the router need at least one core of their own".into());
        }
        let needed = max_nodes * cpus_per_node + router_cpus + client_cpus;
        if needed > available.len() {
            return Err(format!(
                "lab scaleout needs {needed} cores ({max_nodes} nodes x {cpus_per_node} + router {router_cpus} + \
                 load generator {client_cpus}) and this machine has {}: sharing cores would measure \
                 contention, not scale-out; use fewer or smaller nodes, or a bigger machine",
                available.len()
            ));
        }
        let mut next = available.iter().copied();
        let mut take = |n: usize| next.by_ref().take(n).collect::<Vec<_>>();
        let client = take(client_cpus);
        let router = take(router_cpus);
        let nodes = (0..max_nodes).map(|_| take(cpus_per_node)).collect();
        Ok(CpuPlan { client, router, nodes })
    }
}

/// Pins every thread of process `pid` to `cpus`. New threads inherit their creator's mask,
/// but one created by a not-yet-pinned thread while the list is walked would keep the old
/// one, so the threads are listed again until a pass finds none it had not pinned.
pub fn pin(pid: u32, cpus: &[usize]) -> Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).with_context(|| format!("core {c}"))?;
    }
    let mut pinned = std::collections::BTreeSet::new();
    for _ in 0..PIN_PASSES_MAX {
        let mut new = 0;
        for tid in threads(pid)? {
            if !pinned.insert(tid) {
                continue;
            }
            new += 1;
            // A thread that ended since the listing is no longer ours to pin.
            match sched_setaffinity(Pid::from_raw(tid), &set) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => bail!("pinning thread {tid} of process {pid} to {cpus:?}: {e}"),
            }
        }
        if new == 0 {
            return Ok(());
        }
    }
    bail!("process {pid} kept starting threads while being pinned")
}

/// Passes over a process's threads before pinning gives up (threads start at start-up only).
const PIN_PASSES_MAX: usize = 10;

fn threads(pid: u32) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("threads of process {pid}"))?
    {
        out.push(task?.file_name().to_string_lossy().parse()?);
    }
    Ok(out)
}

/// The cores process `pid`'s main thread may run on (`Cpus_allowed_list`), e.g. `[2, 3]`.
pub fn allowed(pid: u32) -> Result<Vec<usize>> {
    allowed_at(&format!("/proc/{pid}/status"))
}

fn allowed_at(status_path: &str) -> Result<Vec<usize>> {
    let status = std::fs::read_to_string(status_path)?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list")?;
    let mut out = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>()?..=b.parse::<usize>()?),
            None => out.push(part.parse()?),
        }
    }
    Ok(out)
}

/// Pins `pid` and checks that it took.
/// Pins `pid` and checks that it took, on every thread.
fn pin_checked(pid: u32, cpus: &[usize], what: &str) -> Result<()> {
    pin(pid, cpus)?;
    for tid in threads(pid)? {
        // A thread may end between the listing and the read.
        let Ok(got) = allowed_at(&format!("/proc/{pid}/task/{tid}/status")) else { continue };
        if got != cpus {
            bail!(
                "{what} (pid {pid}, thread {tid}) should run on cores {cpus:?} but may run on {got:?}"
            );
        }
    }
    Ok(())
}

fn point(mut r: RunResult, nodes: usize, cpus_per_node: usize) -> RunResult {
    r.extra.insert("nodes".into(), nodes as f64);
    r.extra.insert("cpus_per_node".into(), cpus_per_node as f64);
    r.extra.insert("pinned".into(), 1.0);
    r
}

/// Runs the sizes in `sizes` and, with `etcd`, etcd beside them. `shards`: the ringkv shard
/// count (the same at every size, so only the node count changes).
pub async fn sweep_scaleout(
    o: &LabOptions,
    plan: &CpuPlan,
    sizes: &[usize],
    shards: u32,
    etcd: bool,
) -> Result<Vec<RunResult>> {
    let cpus_per_node = plan.nodes.first().map_or(0, Vec::len);
    if !plan.client.is_empty() {
        pin_checked(std::process::id(), &plan.client, "the load generator")?;
    }
    let mut out = Vec::new();
    for &n in sizes {
        let rf = u32::try_from(n.min(3))?;
        let cluster = start_cluster(n as u64, shards, rf, None).await?;
        for (slot, cores) in cluster.running().into_iter().zip(&plan.nodes) {
            let pid = cluster.pid(slot).context("node not running")?;
            pin_checked(pid, cores, &format!("node {slot}"))?;
        }
        let router = cluster.start_router("least-outstanding").await?;
        pin_checked(router.pid(), &plan.router, "the router")?;
        let keys = loaded(o, &cluster, Some(&router)).await?;
        for (workload, consistency, what) in [
            (Workload::W, Consistency::Linearizable, "writes"),
            (Workload::C, Consistency::Linearizable, "reads"),
        ] {
            let conns =
                connect(TargetKind::Router, &cluster, Some(&router), o.connections, consistency)
                    .await?;
            let r = driver::run(
                &format!("ringkv {n} nodes {what}"),
                &conns,
                &spec(o, workload, &keys, consistency),
            )
            .await?;
            o.record(&mut out, point(r, n, cpus_per_node))?;
        }
    }
    if etcd {
        if plan.nodes.len() < 3 {
            bail!("etcd beside ringkv needs cores for 3 members: give --nodes a size of 3 or more");
        }
        let members = EtcdCluster::start(3).await?;
        for (i, pid) in members.pids().into_iter().enumerate() {
            pin_checked(pid, &plan.nodes[i], &format!("etcd member {i}"))?;
        }
        let mut conns = Vec::new();
        for i in 0..o.connections.max(1) {
            let addr = &members.client_addrs[i % members.client_addrs.len()];
            conns.push(Arc::new(
                Conn::open(TargetKind::Etcd, addr, Consistency::Linearizable).await?,
            ));
        }
        driver::load(&conns, o.records, o.value_bytes, 64).await?;
        let keys =
            Arc::new(crate::keys::KeyChooser::new(crate::keys::Distribution::Uniform, o.records)?);
        for (workload, what) in [(Workload::W, "writes"), (Workload::C, "reads")] {
            let r = driver::run(
                &format!("etcd 3 members {what}"),
                &conns,
                &spec(o, workload, &keys, Consistency::Linearizable),
            )
            .await?;
            o.record(&mut out, point(r, 3, cpus_per_node))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_are_laid_out_without_overlap() {
        let p = CpuPlan::new(3, 2, 2, 1, &(0..16).collect::<Vec<_>>()).expect("fits");
        assert_eq!(p.client, vec![0]);
        assert_eq!(p.router, vec![1, 2]);
        assert_eq!(p.nodes, vec![vec![3, 4], vec![5, 6], vec![7, 8]]);
    }

    #[test]
    fn a_machine_too_small_is_refused_with_the_count() {
        let e = CpuPlan::new(9, 2, 2, 2, &[0, 1]).expect_err("2 cores cannot hold 9 nodes");
        assert!(e.contains("needs 22 cores") && e.contains("has 2"), "{e}");
        assert!(
            CpuPlan::new(1, 0, 1, 1, &(0..8).collect::<Vec<_>>()).is_err(),
            "a node without a core"
        );
        let small =
            CpuPlan::new(1, 1, 1, 0, &[0, 1]).expect("an unpinned load generator fits 2 cores");
        assert!(small.client.is_empty());
    }

    #[test]
    fn a_cpuset_that_does_not_start_at_zero_is_used_as_given() {
        let p = CpuPlan::new(2, 1, 1, 1, &[8, 9, 10, 11]).expect("fits");
        assert_eq!((p.client, p.router, p.nodes), (vec![8], vec![9], vec![vec![10], vec![11]]));
    }

    #[test]
    fn allowed_cores_are_read_back() {
        let mine = allowed(std::process::id()).expect("this process's cores");
        assert!(!mine.is_empty());
    }
}
