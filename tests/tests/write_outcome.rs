//! What a writer is told when its write fails: "not applied" only when it certainly was not.
//!
//! A 3-node, 1-shard cluster loses its leader and one follower (SIGTERM). Writes through the
//! client's direct mode and through the router then fail: the survivor refuses them
//! (NOT_LEADER: it cannot elect itself) and the stopped nodes refuse connections, so the
//! routing core gives up (retry budget or deadline) with outcome NOT_APPLIED. The nodes come
//! back, and every write that was reported NOT_APPLIED is read back: a false "not applied"
//! would show up as a key that exists.

use anyhow::{Result, bail, ensure};
use ringkv_client::{Client, ClientError, WriteOutcome};
use ringkv_tests::{Cluster, Tuning, wait_for};
use std::time::{Duration, Instant};

/// Writes reported NOT_APPLIED per client before the nodes come back.
const NOT_APPLIED_WANTED: usize = 3;
/// Writes per client at most: with no quorum, each fails within its 2 s deadline, so a
/// client that never reports NOT_APPLIED fails the test instead of looping.
const WRITES_MAX: usize = 30;

async fn client(direct_seeds: Option<String>, router: Option<String>) -> Result<Client> {
    let b = Client::builder().timeout(Duration::from_secs(2));
    let b = match (direct_seeds, router) {
        (Some(seeds), _) => b.direct(seeds.split(',').map(str::to_string).collect::<Vec<_>>()),
        (None, Some(addr)) => b.router(addr),
        (None, None) => bail!("no endpoint"),
    };
    Ok(b.connect().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_refused_everywhere_are_reported_not_applied_and_are_not() -> Result<()> {
    let mut c = Cluster::start(3, 1, 3, Tuning::default()).await?;
    let leaders = c.wait_for_leaders(Duration::from_secs(30)).await?;
    let leader = *leaders.values().next().expect("one shard");
    let router = c.start_router("round-robin").await?;
    let clients = [
        ("direct", client(Some(c.seeds()), None).await?),
        ("router", client(None, Some(router.addr.clone())).await?),
    ];
    for (name, cl) in &clients {
        cl.put(format!("{name}-warm").as_bytes(), b"1").await?;
    }

    let follower = (1..=3).find(|&n| n != leader).expect("three nodes");
    c.terminate(leader)?;
    c.terminate(follower)?;

    let mut not_applied = Vec::new();
    for (name, cl) in &clients {
        let mut unknown: Vec<String> = Vec::new();
        let mut found = 0;
        for i in 0..WRITES_MAX {
            let key = format!("{name}-{i}");
            let started = Instant::now();
            let e: ClientError = match cl.put(key.as_bytes(), b"v").await {
                Ok(_) => bail!("{name}: {key} was acknowledged by one node of three"),
                Err(e) => e,
            };
            ensure!(started.elapsed() < Duration::from_secs(10), "{name}: {key} hung: {e}");
            match e.write_outcome() {
                WriteOutcome::NotApplied => {
                    let reason = e.reason().unwrap_or_default();
                    ensure!(
                        reason == "RETRY_BUDGET_EXHAUSTED" || reason == "RETRIES_TIMED_OUT",
                        "{name}: {key}: NOT_APPLIED with reason {reason:?}: {e}"
                    );
                    not_applied.push(key);
                    found += 1;
                    if found == NOT_APPLIED_WANTED {
                        break;
                    }
                }
                WriteOutcome::Unknown => unknown.push(format!("{key}: {e}")),
            }
        }
        ensure!(
            found == NOT_APPLIED_WANTED,
            "{name}: {found} of {WRITES_MAX} failed writes were reported NOT_APPLIED; the others: {unknown:#?}"
        );
    }

    c.restart(leader).await?;
    c.restart(follower).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    // The clients take writes again (their first calls may still meet connections to the
    // stopped processes; recovery speed is not what this test is about).
    for (name, cl) in &clients {
        let key = format!("{name}-after");
        wait_for(Duration::from_secs(30), &format!("{name} to write again"), || async {
            cl.put(key.as_bytes(), b"1").await.ok()
        })
        .await?;
    }
    let reader = &clients[0].1;
    for key in &not_applied {
        let got = reader.get(key.as_bytes()).await?;
        ensure!(got.is_none(), "{key} was reported NOT_APPLIED but holds {got:?}");
    }
    Ok(())
}
