//! Healing: a node silent for longer than `--down-after` is marked down and its replicas are
//! re-created on the other nodes, back to RF; when it returns it is up again and the placement
//! moves replicas back to it. A restart shorter than `--down-after` moves nothing: the cluster
//! never shrinks because a node restarted.

use anyhow::{Context, Result, ensure};
use ringkv_proto::v1::Consistency;
use ringkv_tests::{Cluster, Tuning, wait_for};
use std::time::Duration;

const DOWN_AFTER_MS: u64 = 4_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_for_long_is_healed_around_and_a_quick_restart_is_not() -> Result<()> {
    let tuning = Tuning { down_after_ms: DOWN_AFTER_MS, ..Tuning::default() };
    let mut c = Cluster::start(4, 8, 3, tuning).await?;
    c.wait_for_rf(Duration::from_secs(60)).await?;
    for i in 0..200 {
        c.put(format!("k{i}").as_bytes(), b"v", Duration::from_secs(20)).await?;
    }
    let settled = c.list_nodes().await?;
    let held = |l: &ringkv_proto::v1::ListNodesResponse, id: u64| {
        l.nodes.iter().find(|n| n.id == id).map_or(0, |n| n.replicas)
    };
    ensure!(held(&settled, 4) > 0, "node 4 holds no replica to heal: {settled:?}");

    // A restart well within --down-after: nothing moves.
    let epoch = c.current_map().await?.epoch;
    c.kill(4)?;
    tokio::time::sleep(Duration::from_millis(DOWN_AFTER_MS / 4)).await;
    c.restart(4).await?;
    c.wait_settled(Duration::from_secs(60)).await?;
    let after_restart = c.list_nodes().await?;
    ensure!(after_restart.nodes.iter().all(|n| n.state == "up"), "{after_restart:?}");
    ensure!(c.current_map().await?.epoch == epoch, "a quick restart moved replicas");

    // Down for longer than --down-after: its replicas are re-created elsewhere.
    c.kill(4)?;
    let healed =
        wait_for(Duration::from_secs(120), "node 4 down and its replicas re-created", || async {
            let l = c.list_nodes().await.ok()?;
            let n = l.nodes.iter().find(|n| n.id == 4)?;
            (n.state == "down"
                && n.replicas == 0
                && l.moves.is_empty()
                && l.under_replicated_shards == 0)
                .then_some(l)
        })
        .await?;
    ensure!(healed.shards_without_quorum == 0, "{healed:?}");
    // Nodes follow the records within a sync interval.
    wait_for(Duration::from_secs(10), "every node's map without node 4", || async {
        let map = c.current_map().await.ok()?;
        map.shards.iter().all(|s| s.replicas.len() == 3 && !s.replicas.contains(&4)).then_some(())
    })
    .await?;
    for i in 0..200 {
        let got = c
            .get(format!("k{i}").as_bytes(), Consistency::Linearizable, Duration::from_secs(20))
            .await?;
        ensure!(got.kv.is_some(), "key k{i} lost while healing");
    }

    // Back: up again, and replicas return to it.
    c.restart(4).await?;
    wait_for(Duration::from_secs(60), "node 4 up again", || async {
        let l = c.list_nodes().await.ok()?;
        l.nodes.iter().find(|n| n.id == 4).filter(|n| n.state == "up").map(|_| ())
    })
    .await?;
    let back = c.wait_settled(Duration::from_secs(120)).await?;
    let n = back.nodes.iter().find(|n| n.id == 4).context("node 4 listed")?;
    ensure!(n.replicas > 0, "no replica moved back to node 4: {back:?}");
    c.assert_checksums_equal(Duration::from_secs(60)).await?;
    Ok(())
}
