//! Packed replication on real processes: every shard's AppendEntries to a peer travel over one
//! stream (see `crates/node/src/packer.rs`), and a cluster in which some nodes do not have it
//! (as mid-upgrade) still replicates every shard both ways, those nodes' peers falling back
//! to the per-shard streams.

use anyhow::{Result, ensure};
use ringkv_proto::v1::{Consistency, GetRequest};
use ringkv_tests::{Cluster, Tuning, wait_for};
use std::time::Duration;

/// The count of packed frames node `id` sent, from its `/metrics`.
async fn frames_sent(c: &Cluster, id: u64) -> Result<u64> {
    let text = c.metrics(id).await?;
    let line = text
        .lines()
        .find(|l| l.starts_with("ringkv_raft_frame_messages_count"))
        .ok_or_else(|| anyhow::anyhow!("node {id} has no ringkv_raft_frame_messages_count"))?;
    let value = line.split_whitespace().last().unwrap_or_default();
    Ok(value.parse::<f64>()? as u64)
}

/// Writes a key to every shard, then waits until every node's own replica returns it.
async fn every_shard_reaches_every_node(c: &Cluster, prefix: &str) -> Result<()> {
    for s in 0..c.shard_count() {
        c.put(&c.key_in_shard(s, prefix), prefix.as_bytes(), Duration::from_secs(20)).await?;
    }
    wait_for(Duration::from_secs(60), "every replica to have every write", || async {
        for id in c.running() {
            for s in 0..c.shard_count() {
                let key = c.key_in_shard(s, prefix);
                let req = GetRequest { key: key.into(), consistency: Consistency::Stale as i32 };
                let got = c.kv(id).await.ok()?.get(req).await.ok()?.into_inner();
                got.kv.is_some_and(|kv| kv.value.as_ref() == prefix.as_bytes()).then_some(())?;
            }
        }
        Some(())
    })
    .await?;
    Ok(())
}

/// Node 3 runs without packing, as a node of the version before it: it answers UNIMPLEMENTED
/// to packed streams and sends per-shard streams. Shards it leads and shards it follows both
/// replicate; nodes 1 and 2 pack between themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_nodes_without_packing_replicates_every_shard() -> Result<()> {
    let tuning = Tuning { unpacked_nodes: &[3], ..Tuning::default() };
    let c = Cluster::start(3, 8, 3, tuning).await?;
    c.wait_for_rf(Duration::from_secs(60)).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    every_shard_reaches_every_node(&c, "mixed").await?;
    // Leaderships spread over the nodes (the balancer): node 3 leads some shards, whose
    // followers it reaches without packing.
    let leaders = wait_for(Duration::from_secs(30), "node 3 to lead a shard", || async {
        let leaders = c.wait_for_leaders(Duration::from_secs(5)).await.ok()?;
        leaders.values().any(|&l| l == 3).then_some(leaders)
    })
    .await?;
    every_shard_reaches_every_node(&c, "led-everywhere").await?;
    ensure!(frames_sent(&c, 3).await? == 0, "node 3 sent packed frames with packing off");
    let packed = frames_sent(&c, 1).await? + frames_sent(&c, 2).await?;
    ensure!(packed > 0, "nodes 1 and 2 sent no packed frames (leaders: {leaders:?})");
    Ok(())
}

/// With packing everywhere, every node sends packed frames and every shard replicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_replicates_packed() -> Result<()> {
    let c = Cluster::start(3, 8, 3, Tuning::default()).await?;
    c.wait_for_rf(Duration::from_secs(60)).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    every_shard_reaches_every_node(&c, "packed").await?;
    let leaders = c.wait_for_leaders(Duration::from_secs(30)).await?;
    for id in c.running() {
        let sent = frames_sent(&c, id).await?;
        let leads = leaders.values().filter(|&&l| l == id).count();
        ensure!(leads == 0 || sent > 0, "node {id} leads {leads} shards but sent no packed frame");
    }
    Ok(())
}
