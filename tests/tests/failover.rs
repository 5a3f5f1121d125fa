//! Three real `ringkv-node` processes, 8 shards, RF 3: write 10,000 keys, read them back
//! linearizably, kill -9 the node that leads the most shards, check every shard accepts
//! writes again within a few election timeouts, keep writing until the survivors have purged
//! their logs behind snapshots, restart the node, and check it catches up (through a
//! snapshot) until every replica of every shard has the same checksum at the same index.

use anyhow::{Context, Result, ensure};
use futures::stream::{self, StreamExt};
use ringkv_proto::v1::{Consistency, ShardStatus, TriggerSnapshotRequest};
use ringkv_tests::{Cluster, Tuning, wait_for};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const KEYS: usize = 10_000;
const CLIENTS: usize = 32;
const OP_TIMEOUT: Duration = Duration::from_secs(20);

async fn write_keys(c: &Cluster, prefix: &str, n: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let results: Vec<Result<(Vec<u8>, Vec<u8>)>> = stream::iter(0..n)
        .map(|i| async move {
            let key = format!("{prefix}-{i:06}").into_bytes();
            let value = format!("value-{prefix}-{i}").into_bytes();
            c.put(&key, &value, OP_TIMEOUT).await.with_context(|| format!("put {prefix}-{i}"))?;
            Ok((key, value))
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn read_back(c: &Cluster, expected: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
    let results: Vec<Result<()>> = stream::iter(expected)
        .map(|(k, v)| async move {
            let got = c.get(k, Consistency::Linearizable, OP_TIMEOUT).await?;
            let kv =
                got.kv.with_context(|| format!("key {} missing", String::from_utf8_lossy(k)))?;
            ensure!(kv.value[..] == v[..], "key {} has a wrong value", String::from_utf8_lossy(k));
            Ok(())
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    results.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_leader_node_then_catch_up_through_snapshot() -> Result<()> {
    let tuning = Tuning { snapshot_after_entries: 400, log_entries_kept: 50, ..Tuning::default() };
    let mut c = Cluster::start(3, 8, 3, tuning).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;

    let mut written = write_keys(&c, "k", KEYS).await?;
    read_back(&c, &written).await?;

    // The node leading the most shards.
    let leaders = c.leaders().await;
    let mut per_node: HashMap<u64, usize> = HashMap::new();
    for node in leaders.values() {
        *per_node.entry(*node).or_default() += 1;
    }
    let (&victim, &led) = per_node.iter().max_by_key(|(_, n)| **n).context("no leaders")?;
    ensure!(led >= 1);
    let shard_count = c.shard_count();
    let data = move |s: &&ShardStatus| s.shard_id < shard_count;
    // Per shard: how far the victim got.
    let applied_before: HashMap<u64, u64> = c
        .status(victim)
        .await?
        .shards
        .iter()
        .filter(data)
        .map(|s| (s.shard_id, s.applied_index))
        .collect();
    c.kill(victim)?;
    let killed_at = Instant::now();

    // Every shard takes writes again; "a few election timeouts" is our bound.
    let bound = Duration::from_millis(tuning.election_max_ms * 5);
    for shard in 0..c.shard_count() {
        let key = c.key_in_shard(shard, "after-kill");
        c.put(&key, b"x", bound.saturating_sub(killed_at.elapsed()).max(Duration::from_millis(1)))
            .await
            .with_context(|| {
                format!("shard {shard} did not accept writes within {bound:?} of the kill")
            })?;
        written.push((key, b"x".to_vec()));
    }
    let recovered = killed_at.elapsed();
    ensure!(recovered < bound, "writes resumed after {recovered:?}, bound {bound:?}");

    // Enough new writes that every shard snapshots past the victim's log, then purge.
    written.extend(write_keys(&c, "while-down", 2_000).await?);
    for (shard, leader) in c.wait_for_leaders(Duration::from_secs(30)).await? {
        let mut admin = c.admin(leader).await?;
        admin.trigger_snapshot(TriggerSnapshotRequest { shard_id: shard, purge_log: true }).await?;
    }
    for shard in 0..c.shard_count() {
        let key = c.key_in_shard(shard, "after-purge");
        c.put(&key, b"y", OP_TIMEOUT).await?;
        written.push((key, b"y".to_vec()));
    }

    // openraft purges only while no replication to a follower is in flight; toward the dead
    // victim one is, except right after each failed retry (openraft backs off up to 1 s), so
    // the purge lands at its next retry. Wait for it, or the victim would catch up from the
    // log it finds still there.
    wait_for(Duration::from_secs(30), "the leaders to purge past the victim", || async {
        let leaders = c.leaders().await;
        for (&shard, &before) in &applied_before {
            let leader = *leaders.get(&shard)?;
            let st = c.status(leader).await.ok()?;
            let s = st.shards.iter().find(|x| x.shard_id == shard)?;
            (s.first_log_index > before + 1).then_some(())?;
        }
        Some(())
    })
    .await?;

    c.restart(victim).await?;
    // Caught up: on every shard, the restarted replica has applied what the leader applied.
    wait_for(Duration::from_secs(60), "the restarted node to catch up", || async {
        let leaders = c.leaders().await;
        let mine = c.status(victim).await.ok()?;
        for s in mine.shards.iter().filter(data) {
            let leader = *leaders.get(&s.shard_id)?;
            let theirs = c.status(leader).await.ok()?;
            let l = theirs.shards.iter().find(|x| x.shard_id == s.shard_id)?;
            if s.applied_index < l.applied_index {
                return None;
            }
        }
        Some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.log_tail(victim)))?;

    // It came back through snapshots: its logs now start after where it stopped.
    let st = c.status(victim).await?;
    ensure!(
        st.shards.iter().filter(data).all(|s| applied_before
            .get(&s.shard_id)
            .is_some_and(|&before| s.snapshot_index > before)),
        "every shard of the restarted node should have installed a snapshot past where it \
         stopped ({applied_before:?}): {:?}",
        st.shards.iter().map(|s| (s.shard_id, s.snapshot_index)).collect::<Vec<_>>()
    );

    // Same content everywhere, compared at equal applied indexes.
    for shard in 0..c.shard_count() {
        let sums = wait_for(
            Duration::from_secs(30),
            &format!("replicas of shard {shard} to converge"),
            || async {
                let mut sums = Vec::new();
                for node in 1..=3 {
                    sums.push(c.checksum(node, shard).await.ok()?);
                }
                let first = (sums[0].applied_index, sums[0].checksum);
                sums.iter().all(|s| (s.applied_index, s.checksum) == first).then_some(sums)
            },
        )
        .await?;
        ensure!(sums[0].key_count > 0, "shard {shard} is empty");
    }
    let total: u64 = {
        let mut t = 0;
        for shard in 0..c.shard_count() {
            t += c.checksum(1, shard).await?.key_count;
        }
        t
    };
    ensure!(total as usize == written.len(), "{total} keys stored, {} written", written.len());
    read_back(&c, &written).await?;
    Ok(())
}
