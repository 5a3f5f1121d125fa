//! What the servers spent per operation: CPU seconds per 1,000 operations.
//!
//! Throughput alone flatters whichever side burns more CPU for it, and on this 2-core machine
//! the nodes, the router and the load generator share the same cores, so a faster run may
//! only mean the generator got less of them. The figure that compares across machines and
//! against etcd is the work the servers did for each operation: user plus system CPU time of
//! every server process (the ringkv nodes and the router, or etcd's members), read from
//! `/proc/<pid>/stat` right before and right after the measured window, divided by the
//! operations that succeeded in it. The load generator is left out: it is the same code for
//! both systems, and it is not what a user deploys.
//!
//! The resolution is the kernel's tick (10 ms per process), negligible against the seconds a
//! run spends; records loaded before the window are not counted.

use crate::idle::cpu_seconds;
use anyhow::{Context, Result};
use std::collections::BTreeMap;

/// Server CPU seconds per 1,000 operations: nodes and router together, or etcd's members.
pub const SERVER: &str = "server_cpu_s_per_1k";
/// The ringkv nodes' (or etcd members') share of [`SERVER`].
pub const NODES: &str = "node_cpu_s_per_1k";
/// The router's share of [`SERVER`] (absent in direct mode and for etcd).
pub const ROUTER: &str = "router_cpu_s_per_1k";

/// Which figure a server process counts towards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A ringkv node or an etcd member: where the data lives.
    Node,
    /// The ringkv router (the ambassador).
    Router,
}

/// CPU times of the server processes at the start of a window.
#[derive(Debug)]
pub struct CpuWindow {
    start: Vec<(Role, u32, f64)>,
}

impl CpuWindow {
    /// Reads every process's CPU time now. Fails when one is gone: a run whose server died
    /// has no figure to give.
    pub fn start(procs: impl IntoIterator<Item = (Role, u32)>) -> Result<Self> {
        let start = procs
            .into_iter()
            .map(|(role, pid)| Ok((role, pid, cpu_seconds(pid)?)))
            .collect::<Result<Vec<_>>>()?;
        anyhow::ensure!(!start.is_empty(), "no server process to measure");
        Ok(CpuWindow { start })
    }

    /// The figures for `ops` operations done since [`CpuWindow::start`], keyed [`SERVER`],
    /// [`NODES`] and (when a router was measured) [`ROUTER`]. No figure for a window without a
    /// successful operation: it would be infinite.
    pub fn finish(self, ops: u64) -> Result<BTreeMap<String, f64>> {
        let mut spent: BTreeMap<&str, f64> = BTreeMap::new();
        for (role, pid, before) in &self.start {
            let now = cpu_seconds(*pid).with_context(|| format!("server process {pid} ended"))?;
            let key = match role {
                Role::Node => NODES,
                Role::Router => ROUTER,
            };
            *spent.entry(key).or_default() += (now - before).max(0.0);
        }
        Ok(per_1k(&spent, ops))
    }
}

/// Seconds spent by role over `ops` operations, as seconds per 1,000 operations, with the
/// servers' total under [`SERVER`].
fn per_1k(spent: &BTreeMap<&str, f64>, ops: u64) -> BTreeMap<String, f64> {
    if ops == 0 {
        return BTreeMap::new();
    }
    let k_ops = ops as f64 / 1000.0;
    let mut out: BTreeMap<String, f64> =
        spent.iter().map(|(k, s)| (k.to_string(), s / k_ops)).collect();
    out.insert(SERVER.to_string(), spent.values().sum::<f64>() / k_ops);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_1k_splits_by_role_and_sums_the_servers() {
        let spent = BTreeMap::from([(NODES, 3.0), (ROUTER, 1.0)]);
        let got = per_1k(&spent, 10_000);
        assert_eq!(got[NODES], 0.3);
        assert_eq!(got[ROUTER], 0.1);
        assert!((got[SERVER] - 0.4).abs() < 1e-12);
        assert!(per_1k(&spent, 0).is_empty(), "no operation, no figure");
    }

    #[test]
    fn a_window_measures_this_process_and_refuses_a_missing_one() {
        let me = std::process::id();
        let w = CpuWindow::start([(Role::Node, me)]).expect("own stat");
        // Burn CPU until the kernel has counted some (its tick is 10 ms; a loaded machine may
        // give this thread little of its wall time), bounded so a broken reading fails.
        let before = cpu_seconds(me).expect("own stat");
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_seconds(me).expect("own stat") < before + 0.03
            && t0.elapsed() < std::time::Duration::from_secs(30)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let got = w.finish(1000).expect("still running");
        assert!(got[NODES] > 0.0, "{got:?}");
        assert_eq!(got[NODES], got[SERVER]);
        assert!(!got.contains_key(ROUTER));
        assert!(CpuWindow::start([]).is_err());
        assert!(CpuWindow::start([(Role::Node, u32::MAX)]).is_err(), "no such process");
    }
}
