//! Faults, injected on a schedule and always healed at the end.
//!
//! - `kill`: SIGKILL a random node, restart it after a few seconds (on the same data).
//! - `pause`: SIGSTOP a random node past the election timeout, then SIGCONT (the classic
//!   breaker of lease-based reads: the paused leader wakes up still believing it leads).
//! - `transfer`: move every shard's leadership to another replica at once.
//!
//! Network partitions (iptables between per-node network namespaces) and latency (netem) are
//! the next nemeses to add; this runner starts nodes on loopback, where only process faults
//! can be injected.

use ringkv_proto::v1::TransferLeaderRequest;
use ringkv_tests::Cluster;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill,
    Pause,
    Transfer,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(Fault::Kill),
            "pause" => Ok(Fault::Pause),
            "transfer" => Ok(Fault::Transfer),
            other => Err(format!("unknown nemesis {other:?}: use kill, pause, transfer or all")),
        }
    }
}

/// A fault window, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct FaultWindow {
    pub fault: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Injects one fault and heals it; returns its description.
pub async fn inject(c: &mut Cluster, fault: Fault, hold: Duration) -> anyhow::Result<String> {
    let running = c.running();
    let victim = running[rand::random_range(0..running.len())];
    Ok(match fault {
        Fault::Kill => {
            c.kill(victim)?;
            tokio::time::sleep(hold).await;
            c.restart(victim).await?;
            format!("kill -9 node {victim}, restart after {hold:?}")
        }
        Fault::Pause => {
            c.signal(victim, nix::sys::signal::Signal::SIGSTOP)?;
            tokio::time::sleep(hold).await;
            c.signal(victim, nix::sys::signal::Signal::SIGCONT)?;
            format!("SIGSTOP node {victim} for {hold:?}")
        }
        Fault::Transfer => {
            let leaders = c.leaders().await;
            for (shard, leader) in &leaders {
                let others: Vec<u64> =
                    c.map.replicas(*shard).iter().copied().filter(|n| n != leader).collect();
                if others.is_empty() {
                    continue;
                }
                let to = others[rand::random_range(0..others.len())];
                if let Ok(mut admin) = c.admin(*leader).await {
                    // A leader that lost leadership meanwhile refuses; that is fine.
                    let _ = admin
                        .transfer_leader(TransferLeaderRequest { shard_id: *shard, to_node_id: to })
                        .await;
                }
            }
            format!("transfer leadership of {} shards", leaders.len())
        }
    })
}

/// Heals everything: resumes paused nodes and restarts stopped ones.
pub async fn heal(c: &mut Cluster) -> anyhow::Result<()> {
    for id in c.running() {
        let _ = c.signal(id, nix::sys::signal::Signal::SIGCONT);
    }
    let all: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    for id in all {
        if !c.running().contains(&id) {
            c.restart(id).await?;
        }
    }
    Ok(())
}
