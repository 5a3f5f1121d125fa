//! Clients steer around a node that came back empty at its old address.
//!
//! A node whose data is gone (a wiped disk, a pod with a new volume) starts at the same
//! address and joins as a new identity; the old identity is retired at once, but the shard
//! map lists it as a replica until each of its replicas has been re-created elsewhere. In
//! that window a client that sends a shard's request to the old identity reaches the new
//! node, which answers `WRONG_SHARD` (it holds no replica of the shard). The map it then
//! refreshes still names the old identity, so the client must not try it again for that
//! call: the other replicas serve. (Found by the StatefulSet rehearsal: the routing layer
//! refreshed the map and went straight back to the same node until its retry budget ran
//! out, 1,281 client errors while a pod came back empty.)
//!
//! Replica moves go one at a time here (`moves_max` 1), so the old identity stays in the map
//! of most shards for seconds after the new node serves; the test checks that some writes
//! fell in that window.

use anyhow::{Context, Result, ensure};
use ringkv_client::Client;
use ringkv_proto::v1::TransferLeaderRequest;
use ringkv_tests::{Cluster, Tuning, wait_for};
use std::time::Duration;

/// Listed in the map, not serving: the old identity, at an address a new node now answers.
fn lists(map: &ringkv_proto::v1::ShardMap, shard: u64, node: u64) -> bool {
    map.shards.iter().any(|s| s.shard_id == shard && s.replicas.contains(&node))
}

const SHARDS: u64 = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_steer_around_a_node_that_came_back_empty_at_its_address() -> Result<()> {
    let tuning =
        Tuning { moves_max: 1, moves_per_node_max: 1, leader_balance_ms: 0, ..Tuning::default() };
    let mut c = Cluster::start(3, SHARDS as u32, 3, tuning).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    if !c.leaders().await.values().any(|&l| l == 2) {
        let mut admin = c.admin(1).await?;
        admin.transfer_leader(TransferLeaderRequest { shard_id: 0, to_node_id: 2 }).await?;
        wait_for(Duration::from_secs(30), "node 2 to lead shard 0", || async {
            (c.leaders().await.get(&0) == Some(&2)).then_some(())
        })
        .await?;
    }
    let seeds: Vec<String> = c.seeds().split(',').map(str::to_string).collect();
    let client = Client::builder().direct(seeds).timeout(Duration::from_secs(10)).connect().await?;
    // The client learns every shard's leader.
    let keys: Vec<Vec<u8>> = (0..SHARDS).map(|s| c.key_in_shard(s, "k")).collect();
    for (s, key) in keys.iter().enumerate() {
        client
            .put(key, b"before")
            .await
            .with_context(|| format!("the first write to shard {s}"))?;
    }
    let mut led: Vec<u64> =
        c.leaders().await.into_iter().filter(|&(_, l)| l == 2).map(|(s, _)| s).collect();
    led.sort_unstable();
    ensure!(!led.is_empty(), "node 2 leads no shard");

    c.kill(2)?;
    c.wipe(2)?;
    c.spawn(2)?;
    c.wait_node_serving(2, Duration::from_secs(60)).await?;
    let new_id = c.identity_of(2).await?;
    ensure!(new_id != 2, "the wiped node came back as node 2");

    // Node 2's address now answers as node `new_id`, with WRONG_SHARD for every shard whose
    // replica on node 2 has not been re-created yet.
    let mut in_window = Vec::new();
    for &s in &led {
        let key = &keys[s as usize];
        client.put(key, b"after").await.with_context(|| {
            format!("a write to shard {s}, whose cached leader's address now holds a new node")
        })?;
        let got = client.get(key).await.with_context(|| format!("a read of shard {s}"))?;
        ensure!(
            got.as_ref().map(|kv| kv.value.to_vec()) == Some(b"after".to_vec()),
            "shard {s}: read {got:?} after writing \"after\""
        );
        if lists(&c.current_map().await?, s, 2) {
            in_window.push(s);
        }
    }
    println!(
        "shards node 2 led: {led:?}; written while the map still listed node 2: {in_window:?}"
    );
    ensure!(
        !in_window.is_empty(),
        "every shard node 2 led had moved before it was written: the test saw no window"
    );
    Ok(())
}

/// Many calls that run into a stale map at the same moment share one map fetch, instead of
/// each fetching the whole map from the nodes at the moment they are busiest (every
/// `WRONG_SHARD` answer asks for one). Fifty refreshes asked together cost at most two fetches:
/// one may already be under way when they ask (its map may predate what they saw), and one
/// after it serves them all. The first seed accepts connections and never answers, so every
/// fetch takes its 2 s timeout there before a node answers: all fifty ask while the first
/// fetch is under way, however slowly this machine starts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_that_need_a_fresh_map_together_share_one_fetch() -> Result<()> {
    let c = Cluster::start(3, 8, 3, Tuning::default()).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut seeds = vec![silent.local_addr()?.to_string()];
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    seeds.extend(c.seeds().split(',').map(String::from));
    // Only the refreshes below fetch.
    let cfg = ringkv_routing::config::RoutingConfig {
        seeds,
        refresh_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let routing = ringkv_routing::Cluster::connect(cfg).await?;
    let before = routing.stats().map_refreshes.get();
    let burst = (0..50).map(|_| routing.refresh_map());
    let maps = futures::future::try_join_all(burst).await?;
    let fetches = routing.stats().map_refreshes.get() - before;
    ensure!(maps.iter().all(|m| m.nodes().len() == 3), "every caller got the map of 3 nodes");
    ensure!(fetches <= 2, "50 concurrent refreshes made {fetches} map fetches (at most 2)");
    println!("50 concurrent refreshes: {fetches} fetch(es)");
    Ok(())
}
