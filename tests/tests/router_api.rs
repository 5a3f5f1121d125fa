//! The router's API beyond single keys: scans merged across shards in key order with
//! pagination, multi-key gets fanned out over shards, the client's direct mode, and weighted
//! traffic splitting between two clusters (sticky by key).

use anyhow::{Result, ensure};
use ringkv_client::{Client, Consistency, ScanOptions};
use ringkv_tests::{Cluster, Tuning};
use std::time::Duration;

const KEYS: usize = 300;

fn key(i: usize) -> Vec<u8> {
    format!("item/{i:04}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_scan_multi_get_and_direct_mode() -> Result<()> {
    let c = Cluster::start(3, 8, 3, Tuning::default()).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let router = c.start_router("round-robin").await?;
    // A 20 s deadline per call: under the full suite's load on 2 cores an election can stall a
    // shard for seconds; this test is about what scans and multi-gets return, not latency.
    let client = ringkv_tests::router_client(&router.addr).await?;
    let t0 = std::time::Instant::now();
    for i in 0..KEYS {
        client.put(&key(i), format!("v{i}").as_bytes()).await?;
    }
    println!("{KEYS} sequential puts through the router took {:?}", t0.elapsed());
    client.put(b"other/x", b"not in the prefix").await?;

    // Pages of 37 across all 8 shards: every key once, in order.
    let mut seen = Vec::new();
    let mut continuation = Vec::new();
    loop {
        let page = client
            .scan(ScanOptions {
                prefix: b"item/".to_vec(),
                limit: 37,
                continuation,
                ..ScanOptions::default()
            })
            .await?;
        ensure!(page.kvs.len() <= 37);
        seen.extend(page.kvs.into_iter().map(|kv| kv.key.to_vec()));
        if page.continuation.is_empty() {
            break;
        }
        continuation = page.continuation;
    }
    let want: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    ensure!(seen == want, "scan returned {} keys, want {} in order", seen.len(), want.len());

    let some: Vec<Vec<u8>> = (0..KEYS).step_by(7).map(key).chain([b"missing".to_vec()]).collect();
    let refs: Vec<&[u8]> = some.iter().map(Vec::as_slice).collect();
    let got = client.multi_get(&refs).await?;
    ensure!(got.len() == some.len() - 1, "multi_get found {} of {}", got.len(), some.len() - 1);
    ensure!(
        got.iter().zip(&some).all(|(kv, k)| kv.key[..] == k[..]),
        "multi_get keeps request order"
    );

    // Direct mode routes by itself to the same data.
    let direct = Client::builder()
        .direct(c.seeds().split(','))
        .timeout(Duration::from_secs(20))
        .connect()
        .await?;
    let kv = direct.get_with(&key(5), Consistency::Stale).await?;
    ensure!(kv.is_some_and(|kv| &kv.value[..] == b"v5"));
    direct.put(b"direct", b"yes").await?;
    ensure!(client.get(b"direct").await?.is_some_and(|kv| &kv.value[..] == b"yes"));
    let page = direct
        .scan(ScanOptions { prefix: b"item/".to_vec(), limit: 10, ..ScanOptions::default() })
        .await?;
    ensure!(page.kvs.len() == 10 && page.kvs[0].key[..] == key(0)[..]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_split_sends_a_sticky_share_of_keys_to_the_second_cluster() -> Result<()> {
    let main = Cluster::start(1, 2, 1, Tuning::default()).await?;
    let canary = Cluster::start(1, 2, 1, Tuning::default()).await?;
    main.wait_for_leaders(Duration::from_secs(30)).await?;
    canary.wait_for_leaders(Duration::from_secs(30)).await?;
    let seeds = canary.seeds();
    let router =
        main.start_router_with(&["--split-seeds", &seeds, "--split-percent", "30"]).await?;
    let client = Client::builder().router(router.addr.clone()).connect().await?;
    for i in 0..KEYS {
        client.put(&key(i), b"v").await?;
    }
    let mut in_canary = 0;
    for i in 0..KEYS {
        let a = main
            .get(&key(i), Consistency::Linearizable, Duration::from_secs(10))
            .await?
            .kv
            .is_some();
        let b = canary
            .get(&key(i), Consistency::Linearizable, Duration::from_secs(10))
            .await?
            .kv
            .is_some();
        ensure!(a != b, "key {i} must live in exactly one cluster (main {a}, canary {b})");
        in_canary += usize::from(b);
        // Sticky: reading through the router finds it wherever it went.
        ensure!(client.get(&key(i)).await?.is_some());
    }
    let share = in_canary as f64 / KEYS as f64;
    println!("canary received {in_canary} of {KEYS} keys ({:.0}%)", share * 100.0);
    ensure!((0.2..=0.4).contains(&share), "30% split sent {:.0}% of keys", share * 100.0);
    Ok(())
}
