//! Leader balancing: whatever replicas win the first elections, leaderships end up on each
//! shard's preferred leader, which spreads them evenly over the nodes; and after a node is
//! killed and restarted, its leaderships come back to it.

use anyhow::Result;
use ringkv_tests::{Cluster, Tuning, wait_for};
use std::collections::HashMap;
use std::time::Duration;

fn per_node(leaders: &HashMap<u64, u64>) -> Vec<usize> {
    let mut v = vec![0; 3];
    for n in leaders.values() {
        v[(*n - 1) as usize] += 1;
    }
    v
}

async fn wait_balanced(c: &Cluster, what: &str) -> Result<HashMap<u64, u64>> {
    let want: HashMap<u64, u64> =
        (0..c.shard_count()).map(|s| (s, c.map.preferred_leader(s).unwrap_or(0))).collect();
    wait_for(Duration::from_secs(60), what, || async {
        let got = c.leaders().await;
        (got == want).then_some(got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderships_spread_evenly_and_return_after_restart() -> Result<()> {
    let mut c =
        Cluster::start(3, 6, 3, Tuning { leader_balance_ms: 300, ..Tuning::default() }).await?;
    let leaders = wait_balanced(&c, "every shard led by its preferred replica").await?;
    assert_eq!(per_node(&leaders), vec![2, 2, 2]);

    c.kill(1)?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    c.restart(1).await?;
    let leaders = wait_balanced(&c, "leaderships to return to node 1").await?;
    assert_eq!(per_node(&leaders), vec![2, 2, 2]);
    Ok(())
}
