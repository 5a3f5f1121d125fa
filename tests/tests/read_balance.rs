//! Balancing stale reads: with one replica artificially slowed (frozen with SIGSTOP for 90 ms
//! out of every 100), the least-outstanding policy sends it clearly fewer reads than the
//! others, while round-robin (the control) keeps sending it its third.
//!
//! The bounds: the slowed replica serves less than 0.8 of the healthy replicas' average under
//! least-outstanding (power of two choices over in-flight requests: it equalizes in-flight
//! counts, so a slow replica still gets work until its queue matches the others'; measured
//! 0.35-0.66) and less than 0.6 under peak-EWMA (in-flight weighted by recent worst latency;
//! measured 0.15-0.48), the high ends when other tests load the machine; under round-robin it
//! gets at least 25% of all reads.

use anyhow::{Result, ensure};
use ringkv_client::{Client, Consistency};
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_tests::{Cluster, Tuning, channel};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const READERS: usize = 24;
const READS_PER_READER: usize = 60;

/// Stale reads through a router; how many each node served.
async fn reads_per_node(router: &str) -> Result<HashMap<u64, usize>> {
    let ch = channel(router).await?;
    let mut tasks = Vec::new();
    for r in 0..READERS {
        let mut kv = KvClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut served = Vec::new();
            for i in 0..READS_PER_READER {
                let key = format!("k{}", (r + i) % 8).into_bytes();
                let req = GetRequest { key: key.into(), consistency: Consistency::Stale as i32 };
                if let Ok(resp) = kv.get(req).await
                    && let Some(h) = resp.into_inner().header
                {
                    served.push(h.node_id);
                }
            }
            served
        }));
    }
    let mut counts = HashMap::new();
    for t in tasks {
        for node in t.await? {
            *counts.entry(node).or_default() += 1;
        }
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_outstanding_steers_stale_reads_away_from_a_slow_replica() -> Result<()> {
    let c = Arc::new(
        Cluster::start(3, 1, 3, Tuning { leader_balance_ms: 0, ..Tuning::default() }).await?,
    );
    let leaders = c.wait_for_leaders(Duration::from_secs(30)).await?;
    let leader = leaders[&0];
    let slow = (1..=3).find(|n| *n != leader).unwrap_or(1);
    let setup_router = c.start_router("round-robin").await?;
    let writer = Client::builder().router(setup_router.addr.clone()).connect().await?;
    for i in 0..8 {
        writer.put(format!("k{i}").as_bytes(), b"v").await?;
    }
    let lo = c.start_router("least-outstanding").await?;
    let ewma = c.start_router("peak-ewma").await?;
    let rr = c.start_router("round-robin").await?;

    // Freeze the slow follower nine tenths of the time, in short bursts well under the election
    // timeout so it stays a member in good standing.
    let stop = Arc::new(AtomicBool::new(false));
    let pauser = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = c.signal(slow, nix::sys::signal::Signal::SIGSTOP);
                std::thread::sleep(Duration::from_millis(90));
                let _ = c.signal(slow, nix::sys::signal::Signal::SIGCONT);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let lo_counts = reads_per_node(&lo.addr).await;
    let ewma_counts = reads_per_node(&ewma.addr).await;
    let rr_counts = reads_per_node(&rr.addr).await;
    stop.store(true, Ordering::Relaxed);
    let _ = pauser.join();
    c.signal(slow, nix::sys::signal::Signal::SIGCONT)?;
    let (lo_counts, ewma_counts, rr_counts) = (lo_counts?, ewma_counts?, rr_counts?);
    println!(
        "slowed node {slow}; least-outstanding {lo_counts:?}; peak-ewma {ewma_counts:?}; round-robin {rr_counts:?}"
    );

    let total = |m: &HashMap<u64, usize>| m.values().sum::<usize>();
    let others = |m: &HashMap<u64, usize>| {
        (1..=3).filter(|n| *n != slow).map(|n| m.get(&n).copied().unwrap_or(0)).sum::<usize>()
            as f64
            / 2.0
    };
    ensure!(
        total(&lo_counts) >= READERS * READS_PER_READER * 9 / 10,
        "too many reads failed: {lo_counts:?}"
    );
    let lo_slow = lo_counts.get(&slow).copied().unwrap_or(0) as f64;
    ensure!(
        lo_slow < others(&lo_counts) * 0.8,
        "least-outstanding sent {lo_slow} reads to the slow replica vs {} on average to the others",
        others(&lo_counts)
    );
    let ewma_slow = ewma_counts.get(&slow).copied().unwrap_or(0) as f64;
    ensure!(
        ewma_slow < others(&ewma_counts) * 0.6,
        "peak-ewma sent {ewma_slow} reads to the slow replica vs {} on average to the others",
        others(&ewma_counts)
    );
    let rr_slow = rr_counts.get(&slow).copied().unwrap_or(0) as f64;
    ensure!(
        rr_slow >= total(&rr_counts) as f64 * 0.25,
        "round-robin should ignore load: {rr_counts:?}"
    );
    Ok(())
}
