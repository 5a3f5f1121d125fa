//! Faults, injected on a schedule, each healed after it is held; everything is healed again at
//! the end so the final reads run on a whole cluster.
//!
//! Process faults (work everywhere):
//! - `kill`: SIGKILL a random node, restart it on the same data when the fault is healed.
//! - `pause`: SIGSTOP a random node past the election timeout, then SIGCONT.
//! - `pause-leader`: SIGSTOP the node leading the most shards (the classic breaker of lease
//!   reads: the paused leader wakes up and may still believe it leads).
//! - `transfer`: move every shard's leadership to another replica at once.
//!
//! Network faults (need the per-node namespaces of [`ringkv_tests::NetLab`], i.e. root):
//! - `partition-halves`: a random minority cut off from the majority;
//! - `partition-leaders`: every node that leads a shard alone, the rest together (when every
//!   node leads something, the busiest leader alone);
//! - `partition-bridge`: two sides that cannot see each other and one node that sees both;
//! - `partition-ring`: each node sees only its two ring neighbours (needs 4+ nodes);
//! - `loss`: 20% of packets dropped at random on every node;
//! - `slow`: every node's outgoing bandwidth capped at 1 Mbit/s;
//! - `delay`: 50 ± 25 ms on every packet (`tc netem`; only where the kernel has netem).
//!
//! Membership faults (the cluster changes shape under the workload; see
//! `docs/operations.md`):
//! - `join`: a new node joins (in a spare slot, or in the slot of a node that left, on an
//!   empty data directory) and replicas move onto it;
//! - `drain`: a node is drained, removed once it holds nothing, and stopped for good;
//! - `remove`: a node is removed without draining first (its replicas are re-created
//!   elsewhere), then stopped for good;
//! - `wipe`: a node is killed, its data directory deleted, and it starts again: it must come
//!   back under a new identity and never vote as the old one.
//!
//! Drain and remove only pick a node when more than `rf` nodes are up (otherwise the cluster
//! refuses, correctly); join only while a spare or retired slot is left. A fault that does not
//! apply turns into a `wipe`. Drain, remove and wipe first wait (a minute at most) until every
//! shard is fully replicated, and are skipped otherwise: losing a second replica of a shard
//! before the first is re-created is beyond what RF 3 tolerates (the first campaign did it, and
//! three shards lost their quorum for good).

use ringkv_proto::v1::TransferLeaderRequest;
use ringkv_tests::Cluster;
use ringkv_tests::netns::{Grudge, partitions};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill,
    Pause,
    PauseLeader,
    Transfer,
    PartitionHalves,
    PartitionLeaders,
    PartitionBridge,
    PartitionRing,
    Loss,
    Slow,
    Delay,
    Join,
    Drain,
    Remove,
    Wipe,
}

pub const PROCESS_FAULTS: &[Fault] =
    &[Fault::Kill, Fault::Pause, Fault::PauseLeader, Fault::Transfer];
pub const MEMBERSHIP_FAULTS: &[Fault] = &[Fault::Join, Fault::Drain, Fault::Remove, Fault::Wipe];
pub const PARTITIONS: &[Fault] = &[
    Fault::PartitionHalves,
    Fault::PartitionLeaders,
    Fault::PartitionBridge,
    Fault::PartitionRing,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::PauseLeader => "pause-leader",
            Fault::Transfer => "transfer",
            Fault::PartitionHalves => "partition-halves",
            Fault::PartitionLeaders => "partition-leaders",
            Fault::PartitionBridge => "partition-bridge",
            Fault::PartitionRing => "partition-ring",
            Fault::Loss => "loss",
            Fault::Slow => "slow",
            Fault::Delay => "delay",
            Fault::Join => "join",
            Fault::Drain => "drain",
            Fault::Remove => "remove",
            Fault::Wipe => "wipe",
        }
    }

    /// Whether the fault needs nodes in their own network namespaces.
    pub fn needs_net(self) -> bool {
        !PROCESS_FAULTS.contains(&self) && !MEMBERSHIP_FAULTS.contains(&self)
    }

    /// Parses a comma-separated list of faults and groups (`process`, `partition`, `network`,
    /// `all`, `none`). What the machine cannot inject is dropped later, with a note, by the
    /// runner (which knows whether there are namespaces and netem).
    pub fn parse_list(names: &[String]) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        let network = || {
            let mut v = PARTITIONS.to_vec();
            v.extend([Fault::Loss, Fault::Slow, Fault::Delay]);
            v
        };
        for n in names {
            match n.as_str() {
                "none" => {}
                "process" => out.extend_from_slice(PROCESS_FAULTS),
                "membership" => out.extend_from_slice(MEMBERSHIP_FAULTS),
                "partition" => out.extend_from_slice(PARTITIONS),
                "network" => out.extend(network()),
                "all" => {
                    out.extend_from_slice(PROCESS_FAULTS);
                    out.extend(network());
                }
                other => out.push(other.parse()?),
            }
        }
        out.dedup();
        Ok(out)
    }
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let all = [
            PROCESS_FAULTS,
            PARTITIONS,
            &[Fault::Loss, Fault::Slow, Fault::Delay],
            MEMBERSHIP_FAULTS,
        ]
        .concat();
        all.iter().copied().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|f| f.name()).collect();
            format!(
                "unknown nemesis {s:?}: use {}, or the groups process, partition, network, membership, all, none",
                names.join(", ")
            )
        })
    }
}

/// A fault window, for the report (times on the history's clock).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FaultWindow {
    pub fault: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

fn shuffled(mut v: Vec<u64>) -> Vec<u64> {
    for i in (1..v.len()).rev() {
        v.swap(i, rand::random_range(0..=i));
    }
    v
}

fn describe(g: &Grudge) -> String {
    let parts: Vec<String> = g
        .iter()
        .map(|(n, es)| {
            let es: Vec<String> = es.iter().map(u64::to_string).collect();
            format!("{n}x{}", es.join("+"))
        })
        .collect();
    parts.join(" ")
}

/// The node leading the most shards, and every leader.
async fn leaders(c: &Cluster) -> (Option<u64>, Vec<u64>) {
    let leaders = c.leaders().await;
    let mut all: Vec<u64> = leaders.values().copied().collect();
    all.sort_unstable();
    all.dedup();
    (ringkv_tests::busiest(&leaders), all)
}

/// How long a drain or removal may take before the nemesis leaves it running.
const MOVE_WAIT: Duration = Duration::from_secs(120);
/// How long a membership fault waits for the cluster to be fully replicated before it acts.
const SETTLE_WAIT: Duration = Duration::from_secs(60);

/// Injects `fault`, holds it for `hold`, heals it; returns what was done.
pub async fn inject(c: &mut Cluster, fault: Fault, hold: Duration) -> anyhow::Result<String> {
    let running = c.running();
    let victim = running[rand::random_range(0..running.len())];
    let all: Vec<u64> = c.members();
    let what = match fault {
        Fault::Kill => {
            c.kill(victim)?;
            tokio::time::sleep(hold).await;
            c.restart(victim).await?;
            return Ok(format!("kill -9 node {victim}, restart after {hold:?}"));
        }
        Fault::Pause | Fault::PauseLeader => {
            let victim = match fault {
                Fault::PauseLeader => leaders(c).await.0.unwrap_or(victim),
                _ => victim,
            };
            c.signal(victim, nix::sys::signal::Signal::SIGSTOP)?;
            tokio::time::sleep(hold).await;
            c.signal(victim, nix::sys::signal::Signal::SIGCONT)?;
            return Ok(format!("SIGSTOP node {victim} for {hold:?} ({})", fault.name()));
        }
        Fault::Transfer => return Ok(transfer_all(c).await),
        Fault::PartitionHalves => partitions::halves(&shuffled(all.clone())),
        Fault::PartitionLeaders => {
            let (busiest, leading) = leaders(c).await;
            let isolated =
                if leading.len() < all.len() { leading } else { busiest.into_iter().collect() };
            partitions::isolate(&all, &isolated)
        }
        Fault::PartitionBridge => partitions::bridge(&shuffled(all.clone())),
        Fault::PartitionRing => partitions::ring(&shuffled(all.clone())),
        Fault::Join | Fault::Drain | Fault::Remove | Fault::Wipe => {
            return membership(c, fault, hold).await;
        }
        Fault::Loss | Fault::Slow | Fault::Delay => {
            let lab = c
                .net
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("{} needs namespaces", fault.name()))?;
            let what = match fault {
                Fault::Loss => {
                    lab.loss(20)?;
                    "20% packet loss on every node"
                }
                Fault::Slow => {
                    lab.slow(1000)?;
                    "bandwidth capped at 1 Mbit/s on every node"
                }
                _ => {
                    lab.delay(50, 25)?;
                    "50 ± 25 ms delay on every node"
                }
            };
            tokio::time::sleep(hold).await;
            lab.heal()?;
            return Ok(format!("{what} for {hold:?}"));
        }
    };
    let lab = c.net.as_ref().ok_or_else(|| anyhow::anyhow!("{} needs namespaces", fault.name()))?;
    lab.partition(&what)?;
    tokio::time::sleep(hold).await;
    lab.heal()?;
    Ok(format!("{} [{}] for {hold:?} (NxM: N drops M)", fault.name(), describe(&what)))
}

async fn transfer_all(c: &Cluster) -> String {
    let leaders = c.leaders().await;
    for (shard, leader) in &leaders {
        // The voters as the leader sees them (replicas move; the initial map is no guide).
        let Ok(st) = c.status(*leader).await else { continue };
        let me = st.node.as_ref().map_or(0, |n| n.id);
        let Some(view) = st.shards.iter().find(|s| s.shard_id == *shard) else { continue };
        let others: Vec<u64> = view.voters.iter().copied().filter(|&n| n != me).collect();
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

/// A membership fault (see the module notes).
async fn membership(c: &mut Cluster, fault: Fault, hold: Duration) -> anyhow::Result<String> {
    let rf = c.tuning_rf();
    // Slots whose node is up in the cluster's records (a removed node left running after a
    // slow drain is not one).
    let nodes = c.list_nodes().await?;
    let mut up = Vec::new();
    for slot in c.members() {
        let Ok(id) = c.identity_of(slot).await else { continue };
        if nodes.nodes.iter().any(|n| n.id == id && n.state == "up") {
            up.push(slot);
        }
    }
    anyhow::ensure!(!up.is_empty(), "no up node to act on");
    let can_join = c.has_spare_slot() || !c.retired().is_empty();
    let fault = match fault {
        Fault::Join if !can_join => Fault::Wipe,
        Fault::Drain | Fault::Remove if up.len() <= rf => Fault::Wipe,
        other => other,
    };
    let victim = up[rand::random_range(0..up.len())];
    if fault != Fault::Join && c.wait_settled(SETTLE_WAIT).await.is_err() {
        // A disk lost (or a node taken away) while another one's replicas are still being
        // re-created could leave a shard with a majority of its replicas gone: beyond what RF 3
        // tolerates, in any Raft system. Operators replace one failed disk at a time.
        return Ok(format!("{}: skipped, the cluster is still healing", fault.name()));
    }
    match fault {
        Fault::Join => {
            // A new slot while there are spares, else a retired one comes back empty.
            let slot = if c.has_spare_slot() {
                c.add_node()?
            } else {
                let slot = c.retired()[rand::random_range(0..c.retired().len())];
                c.revive(slot)?;
                slot
            };
            c.wait_node_serving(slot, MOVE_WAIT).await?;
            let id = c.identity_of(slot).await?;
            c.learn_identities().await;
            Ok(format!("join: node slot {slot} joined as node {id}"))
        }
        Fault::Drain | Fault::Remove => {
            let id = c.identity_of(victim).await?;
            let mut admin =
                c.admin(up.iter().copied().find(|&n| n != victim).unwrap_or(victim)).await?;
            let req = ringkv_proto::v1::NodeRequest { node_id: id };
            let asked = if fault == Fault::Drain {
                admin.drain_node(req).await
            } else {
                admin.remove_node(req).await
            };
            if let Err(refused) = asked {
                return Ok(format!("{}: node {id} refused: {}", fault.name(), refused.message()));
            }
            let emptied =
                ringkv_tests::wait_for(MOVE_WAIT, "the node to hold no replica", || async {
                    let l = c.list_nodes().await.ok()?;
                    l.nodes.iter().find(|n| n.id == id).filter(|n| n.replicas == 0).map(|_| ())
                })
                .await;
            if emptied.is_err() {
                let moves =
                    c.list_nodes().await.map(|l| format!("{:?}", l.moves)).unwrap_or_default();
                return Ok(format!(
                    "{}: node {id} (slot {victim}) still holds replicas after {MOVE_WAIT:?}; left running; moves: {moves}",
                    fault.name()
                ));
            }
            if fault == Fault::Drain {
                admin.remove_node(ringkv_proto::v1::NodeRequest { node_id: id }).await?;
            }
            c.retire(victim)?;
            Ok(format!("{}: node {id} (slot {victim}) emptied, removed and stopped", fault.name()))
        }
        _ => {
            let old = c.identity_of(victim).await.unwrap_or(0);
            c.kill(victim)?;
            c.wipe(victim)?;
            tokio::time::sleep(hold).await;
            c.spawn(victim)?;
            c.wait_node_serving(victim, MOVE_WAIT).await?;
            let new = c.identity_of(victim).await?;
            c.learn_identities().await;
            anyhow::ensure!(new != old, "slot {victim} came back empty as the same node {old}");
            Ok(format!("wipe: node {old} (slot {victim}) lost its data, rejoined as node {new}"))
        }
    }
}

/// Heals everything: the network, paused nodes, stopped nodes.
pub async fn heal(c: &mut Cluster) -> anyhow::Result<()> {
    if let Some(lab) = &c.net {
        lab.heal()?;
    }
    for id in c.running() {
        let _ = c.signal(id, nix::sys::signal::Signal::SIGCONT);
    }
    for id in c.members() {
        if !c.running().contains(&id) {
            c.restart(id).await?;
        }
    }
    Ok(())
}
