//! The router's API beyond single keys: scans merged across shards in key order with
//! pagination, multi-key gets fanned out over shards, the client's direct mode, and weighted
//! traffic splitting between two clusters (sticky by key; scans merge both, a batch across
//! both is refused).

use anyhow::{Result, ensure};
use ringkv_client::{BatchOp, Client, Consistency, KeyValue, ScanOptions};
use ringkv_tests::{Cluster, Tuning};
use std::time::Duration;

const KEYS: usize = 300;

fn key(i: usize) -> Vec<u8> {
    format!("item/{i:04}").into_bytes()
}

/// Every key under `item/`, read in pages of `limit`; each page must keep to the limit.
async fn scan_in_pages(client: &Client, limit: u32) -> Result<Vec<KeyValue>> {
    let mut seen = Vec::new();
    let mut continuation = Vec::new();
    loop {
        let page = client
            .scan(ScanOptions {
                prefix: b"item/".to_vec(),
                limit,
                continuation,
                ..ScanOptions::default()
            })
            .await?;
        ensure!(page.kvs.len() <= limit as usize, "page of {} keys, limit {limit}", page.kvs.len());
        seen.extend(page.kvs);
        if page.continuation.is_empty() {
            return Ok(seen);
        }
        continuation = page.continuation;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_scan_multi_get_and_direct_mode() -> Result<()> {
    cross_shard_api(Cluster::start(3, 8, 3, Tuning::default()).await?).await
}

/// The same API over TLS everywhere: mutual TLS between nodes and from the router, server
/// TLS from the clients (router mode and direct mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_scan_multi_get_and_direct_mode_over_tls() -> Result<()> {
    cross_shard_api(Cluster::start_tls(3, 8, 3, Tuning::default()).await?).await
}

async fn cross_shard_api(c: Cluster) -> Result<()> {
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let router = c.start_router("round-robin").await?;
    // A 20 s deadline per call: under the full suite's load on 2 cores an election can stall a
    // shard for seconds; this test is about what scans and multi-gets return, not latency.
    let client = c.router_client(&router.addr).await?;
    let t0 = std::time::Instant::now();
    for i in 0..KEYS {
        client.put(&key(i), format!("v{i}").as_bytes()).await?;
    }
    println!("{KEYS} sequential puts through the router took {:?}", t0.elapsed());
    client.put(b"other/x", b"not in the prefix").await?;

    // Pages of 37 across all 8 shards: every key once, in order.
    let seen: Vec<Vec<u8>> =
        scan_in_pages(&client, 37).await?.into_iter().map(|kv| kv.key.to_vec()).collect();
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
        .dialer(c.dialer())
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
    let mut canary_keys = std::collections::HashSet::new();
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
        if b {
            canary_keys.insert(i);
        }
        // Sticky: reading through the router finds it wherever it went.
        ensure!(client.get(&key(i)).await?.is_some());
    }
    let share = in_canary as f64 / KEYS as f64;
    println!("canary received {in_canary} of {KEYS} keys ({:.0}%)", share * 100.0);
    ensure!((0.2..=0.4).contains(&share), "30% split sent {:.0}% of keys", share * 100.0);

    // A stray copy in the primary of a key the split sends to the canary (as if written before
    // the split began) is not what a get through the router sees, so a scan must not show it.
    let is_canary = |i: usize| canary_keys.contains(&i);
    let canary_key = (0..KEYS).find(|&i| is_canary(i)).expect("some key in the canary");
    let main_key = (0..KEYS).find(|&i| !is_canary(i)).expect("some key in the primary");
    main.put(&key(canary_key), b"stray", Duration::from_secs(10)).await?;

    // Scans merge both clusters: every key once, in order, across pages.
    let scanned = scan_in_pages(&client, 37).await?;
    ensure!(scanned.iter().all(|kv| &kv.value[..] == b"v"), "a stray copy was scanned");
    let seen: Vec<Vec<u8>> = scanned.into_iter().map(|kv| kv.key.to_vec()).collect();
    let want: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    ensure!(seen == want, "split scan returned {} keys, want {} in order", seen.len(), KEYS);

    // A batch is atomic, so one whose keys go to both clusters is refused and changes nothing.
    let spanning = vec![
        BatchOp::Put(key(main_key), b"batch".to_vec()),
        BatchOp::Put(key(canary_key), b"batch".to_vec()),
    ];
    let e = client.batch(spanning).await.expect_err("a batch across clusters must be refused");
    ensure!(e.code() == Some(tonic::Code::InvalidArgument), "{e:?}");
    ensure!(e.reason().as_deref() == Some("INVALID_INPUT"), "{e:?}");
    ensure!(e.to_string().contains("different clusters"), "{e}");
    for i in [main_key, canary_key] {
        let v = client.get(&key(i)).await?.map(|kv| kv.value.to_vec());
        ensure!(v.as_deref() == Some(&b"v"[..]), "key {i} changed by a refused batch: {v:?}");
    }
    // A batch within one cluster goes to that cluster.
    client.batch(vec![BatchOp::Put(key(canary_key), b"batched".to_vec())]).await?;
    let v =
        canary.get(&key(canary_key), Consistency::Linearizable, Duration::from_secs(10)).await?;
    ensure!(v.kv.is_some_and(|kv| &kv.value[..] == b"batched"), "batch went elsewhere");
    Ok(())
}
