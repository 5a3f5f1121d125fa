//! Founding a cluster when not everything goes to plan.
//!
//! At founding each shard is formed by its preferred leader only; the other replicas wait
//! for it, and a stand-in forms the shard only when that node stays silent
//! (`crates/node/src/bootstrap.rs`). So a member missing at founding must not leave the shards
//! it prefers without a leader: the other two form them, serve reads and writes, and the
//! missing member takes its replicas when it starts, even after its shards went to sleep
//! without it. And a cluster killed while it forms its
//! shards forms them when it starts again.

use anyhow::{Result, ensure};
use ringkv_proto::v1::Consistency;
use ringkv_tests::{Cluster, Tuning, wait_for};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_founded_with_a_member_down_forms_every_shard() -> Result<()> {
    // 6 shards over 3 nodes: node 3 is the preferred leader of two of them.
    let mut c = Cluster::start_missing(3, 6, 3, Tuning::default(), 3).await?;
    let preferred_by_3 = (0..6).filter(|&s| c.map.preferred_leader(s) == Some(3)).count();
    ensure!(preferred_by_3 > 0, "the test needs shards that node 3 prefers");
    // Node 3's shards wait for ~10 s of its silence before nodes 1 and 2 form them.
    c.wait_for_leaders(Duration::from_secs(60)).await?;
    for i in 0..60 {
        let key = format!("k{i}");
        c.put(key.as_bytes(), b"v", Duration::from_secs(20)).await?;
    }

    // Every shard goes to sleep past the missing member (a quorum is enough). Its replicas,
    // created empty when it starts, have no election timer that could wake their leaders:
    // the leaders' replication, which keeps retrying what a follower lacks while they
    // sleep, must bring it up to date.
    wait_for(Duration::from_secs(60), "every shard asleep without node 3", || async {
        for id in [1, 2] {
            let st = c.status(id).await.ok()?;
            let mut data = st.shards.iter().filter(|s| s.shard_id < c.shard_count()).peekable();
            data.peek()?;
            data.all(|s| s.quiesced).then_some(())?;
        }
        Some(())
    })
    .await?;
    c.spawn(3)?;
    c.wait_node_serving(3, Duration::from_secs(30)).await?;
    // Every shard's leader is then named by all three replicas, node 3's included.
    c.wait_for_leaders(Duration::from_secs(60)).await?;
    c.wait_for_rf(Duration::from_secs(60)).await?;
    for i in 0..60 {
        let key = format!("k{i}");
        let got = c.get(key.as_bytes(), Consistency::Linearizable, Duration::from_secs(20)).await?;
        ensure!(got.kv.is_some(), "key {key} lost");
    }
    c.assert_checksums_equal(Duration::from_secs(60)).await?;
    Ok(())
}

/// Every node killed as soon as the cluster serves, while its shards may still be forming,
/// then started again: every shard forms. A replica that voted for its preferred leader but
/// had not yet received the membership must still vote after the restart (it holds no log),
/// or that shard would wait for an election nobody can win.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_killed_while_forming_its_shards_forms_them_after_a_restart() -> Result<()> {
    let mut c = Cluster::start(3, 64, 3, Tuning::default()).await?;
    c.kill_all()?;
    for id in 1..=3 {
        c.spawn(id)?;
    }
    for id in 1..=3 {
        c.wait_node_serving(id, Duration::from_secs(30)).await?;
    }
    c.wait_for_leaders(Duration::from_secs(60)).await?;
    for i in 0..64 {
        let key = format!("k{i}");
        c.put(key.as_bytes(), b"v", Duration::from_secs(20)).await?;
        let got = c.get(key.as_bytes(), Consistency::Linearizable, Duration::from_secs(20)).await?;
        ensure!(got.kv.is_some(), "key {key} not read back");
    }
    Ok(())
}
