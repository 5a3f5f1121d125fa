//! Through the router while leaders move: every shard's leadership is transferred and a node
//! is killed with SIGKILL (then restarted) during a steady stream of writes and reads from many
//! clients. Writes are unique appends to a few lists by compare-and-swap.
//!
//! Checked at the end:
//! - every acknowledged append is in its list exactly once (none lost, none applied twice —
//!   the router retries writes across leader changes, so this is what its sessions guarantee);
//! - nothing appears that no client attempted, and no attempted append appears twice;
//! - linearizable reads never returned a list shorter than one already acknowledged before
//!   the read started.

use anyhow::{Context, Result, ensure};
use ringkv_client::{Client, Consistency, Expect};
use ringkv_proto::v1::TransferLeaderRequest;
use ringkv_tests::{Cluster, Tuning, wait_for};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

const LISTS: usize = 6;
const WRITERS: usize = 12;
const READERS: usize = 4;

fn tokens(v: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(v).split(';').filter(|t| !t.is_empty()).map(String::from).collect()
}

#[derive(Default)]
struct Ledger {
    acked: HashSet<String>,
    attempted: HashSet<String>,
    /// Longest acknowledged length per list.
    acked_len: HashMap<usize, usize>,
    stale_reads: Vec<String>,
    errors: usize,
    error_kinds: HashMap<String, usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_stay_exactly_once_while_leaders_move_and_a_node_dies() -> Result<()> {
    let mut c = Cluster::start(3, 4, 3, Tuning::default()).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let router = c.start_router("round-robin").await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();

    for w in 0..WRITERS {
        let client = Client::builder()
            .router(router.addr.clone())
            .timeout(Duration::from_secs(15))
            .connect()
            .await?;
        let (ledger, stop) = (ledger.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let list = (w + n as usize) % LISTS;
                let key = format!("list-{list}");
                let token = format!("w{w}n{n}");
                n += 1;
                ledger.lock().await.attempted.insert(token.clone());
                // Read-modify-write until this token is in (or the outcome is unknown).
                loop {
                    let current = match client.get(key.as_bytes()).await {
                        Ok(kv) => kv,
                        Err(e) => {
                            let mut l = ledger.lock().await;
                            l.errors += 1;
                            *l.error_kinds.entry(format!("get: {e}")).or_default() += 1;
                            drop(l);
                            // Back off like a real client would, rather than spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    let (expect, mut value) = match current {
                        Some(kv) => (Expect::Value(kv.value.to_vec()), kv.value.to_vec()),
                        None => (Expect::Absent, Vec::new()),
                    };
                    value.extend_from_slice(format!("{token};").as_bytes());
                    match client.cas(key.as_bytes(), expect, Some(&value)).await {
                        Ok(out) if out.succeeded => {
                            let mut l = ledger.lock().await;
                            l.acked.insert(token.clone());
                            let len = tokens(&value).len();
                            let e = l.acked_len.entry(list).or_default();
                            *e = (*e).max(len);
                            break;
                        }
                        Ok(_) => continue, // lost the race to another writer: not applied, retry
                        Err(e) => {
                            // Unknown outcome (the router gave up): the token may or may not be in.
                            let mut l = ledger.lock().await;
                            l.errors += 1;
                            *l.error_kinds.entry(format!("cas: {e}")).or_default() += 1;
                            break;
                        }
                    }
                }
            }
        }));
    }
    for r in 0..READERS {
        let client = Client::builder().router(router.addr.clone()).connect().await?;
        let (ledger, stop) = (ledger.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let list = i % LISTS;
                i += 1;
                let known = ledger.lock().await.acked_len.get(&list).copied().unwrap_or(0);
                if let Ok(kv) = client
                    .get_with(format!("list-{list}").as_bytes(), Consistency::Linearizable)
                    .await
                {
                    let seen = kv.map_or(0, |kv| tokens(&kv.value).len());
                    if seen < known {
                        ledger
                            .lock()
                            .await
                            .stale_reads
                            .push(format!("list-{list}: read {seen} after {known} acknowledged"));
                    }
                }
            }
        }));
    }

    let acked = |ledger: Arc<Mutex<Ledger>>| async move { ledger.lock().await.acked.len() };
    wait_for(Duration::from_secs(60), "appends before the faults", || {
        let l = ledger.clone();
        async move { (acked(l).await >= 50).then_some(()) }
    })
    .await?;
    eprintln!("stage: transfers");
    // Fault 1: move the leadership of every shard to another replica.
    for (shard, leader) in c.leaders().await {
        let to = *c.map.replicas(shard).iter().find(|&&n| n != leader).context("RF 3")?;
        let mut admin = c.admin(leader).await?;
        // The leader may have changed meanwhile; a refused transfer is fine.
        let _ =
            admin.transfer_leader(TransferLeaderRequest { shard_id: shard, to_node_id: to }).await;
    }
    let before = acked(ledger.clone()).await;
    wait_for(Duration::from_secs(60), "appends after the transfers", || {
        let l = ledger.clone();
        async move { (acked(l).await >= before + 50).then_some(()) }
    })
    .await?;
    eprintln!("stage: kill");
    // Fault 2: SIGKILL the node that leads the most shards, keep going, bring it back.
    let victim = c.busiest_leader().await.context("no leader")?;
    c.kill(victim)?;
    let before = acked(ledger.clone()).await;
    wait_for(Duration::from_secs(60), "appends with a node down", || {
        let l = ledger.clone();
        async move { (acked(l).await >= before + 50).then_some(()) }
    })
    .await?;
    eprintln!("stage: restart");
    c.restart(victim).await?;
    let before = acked(ledger.clone()).await;
    wait_for(Duration::from_secs(60), "appends after the restart", || {
        let l = ledger.clone();
        async move { (acked(l).await >= before + 50).then_some(()) }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }

    eprintln!("stage: check");
    let client = Client::builder().router(router.addr.clone()).connect().await?;
    let l = ledger.lock().await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for list in 0..LISTS {
        let key = format!("list-{list}");
        let kv = wait_for(Duration::from_secs(30), "a final read", || async {
            client.get(key.as_bytes()).await.ok()
        })
        .await?;
        for t in kv.map(|kv| tokens(&kv.value)).unwrap_or_default() {
            *seen.entry(t).or_default() += 1;
        }
    }
    let lost: Vec<_> = l.acked.iter().filter(|t| !seen.contains_key(*t)).collect();
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let invented: Vec<_> = seen.keys().filter(|t| !l.attempted.contains(*t)).collect();
    println!(
        "acknowledged {} appends, {} present, {} client-visible errors",
        l.acked.len(),
        seen.len(),
        l.errors
    );
    for (e, n) in l.error_kinds.iter().take(8) {
        println!("  {n} x {e}");
    }
    ensure!(lost.is_empty(), "acknowledged appends lost: {lost:?}");
    ensure!(doubled.is_empty(), "appends applied twice: {doubled:?}");
    ensure!(invented.is_empty(), "appends nobody attempted: {invented:?}");
    ensure!(l.stale_reads.is_empty(), "stale linearizable reads: {:?}", l.stale_reads);
    Ok(())
}
