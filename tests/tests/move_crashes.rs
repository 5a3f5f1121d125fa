//! Replica moves survive crashes at every step.
//!
//! A fourth node joins a three-node cluster, so about a third of the replicas move onto it,
//! one move at a time, with snapshots paced slowly enough (256 KiB/s) that each move lasts a
//! while. During the moves, in turn:
//! 1. the meta leader (whose placement driver runs the moves) is killed as soon as a move is
//!    recorded, and restarted: the next leader resumes from the record;
//! 2. the node being added is killed while it is a learner catching up, and restarted: the
//!    move resumes (or, past its timeout, is undone);
//! 3. a node whose replica is being removed is killed mid-move, and restarted.
//!
//! Meanwhile a writer writes keys and a monitor asks the meta leader for shards without a
//! live quorum: there must never be one (one node down at a time, RF 3). Afterwards every
//! shard is back on RF replicas, on its target placement, with equal checksums, and every
//! acknowledged write is there.

use anyhow::{Context, Result, ensure};
use ringkv_proto::v1::Consistency;
use ringkv_tests::{Cluster, Tuning, wait_for};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, RwLock};

const STEP: Duration = Duration::from_secs(90);

/// Waits until a move exists that satisfies `pick`, returning it.
async fn a_move(
    c: &Cluster,
    what: &str,
    pick: impl Fn(&ringkv_proto::v1::MoveInfo) -> bool,
) -> Result<ringkv_proto::v1::MoveInfo> {
    wait_for(STEP, what, || async {
        let l = c.list_nodes().await.ok()?;
        l.moves.into_iter().find(|m| pick(m))
    })
    .await
}

/// `Some` once `node` is a learner (in a leader's progress, not a voter) of some shard.
async fn learner_somewhere(c: &Cluster, node: u64) -> Option<()> {
    for slot in c.running() {
        let Ok(st) = c.status(slot).await else { continue };
        for s in st.shards {
            if s.progress.iter().any(|p| p.node_id == node) && !s.voters.contains(&node) {
                return Some(());
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moves_complete_or_roll_back_through_crashes() -> Result<()> {
    let tuning = Tuning {
        snapshot_after_entries: 200,
        log_entries_kept: 50,
        moves_max: 1,
        moves_per_node_max: 1,
        move_timeout_ms: 20_000,
        snapshot_send_bytes_per_sec: 256 << 10,
        ..Tuning::default()
    };
    let c = Cluster::start(3, 6, 3, tuning).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    // Enough data that snapshots take a few seconds at the paced rate.
    let value = vec![b'x'; 4096];
    for i in 0..600 {
        c.put(format!("base-{i}").as_bytes(), &value, Duration::from_secs(20)).await?;
    }

    // Readers (writer, monitor, waiting) share the cluster; kills and restarts take it whole.
    let c = Arc::new(RwLock::new(c));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let quorum_lost = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (c, stop, acked) = (c.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("during-{i}").into_bytes();
                i += 1;
                let ok = c.read().await.put(&key, b"v", Duration::from_secs(2)).await.is_ok();
                if ok {
                    acked.lock().await.push(key);
                }
            }
        })
    };
    let monitor = {
        let (c, stop, lost) = (c.clone(), stop.clone(), quorum_lost.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(l) = c.read().await.list_nodes().await
                    && l.shards_without_quorum > 0
                {
                    lost.lock().await.push(format!("{l:?}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let joiner = c.write().await.add_node()?;
    c.read().await.wait_node_serving(joiner, STEP).await?;
    let new_id = c.read().await.identity_of(joiner).await?;

    // 1. The meta leader, as soon as a move is recorded.
    let leader = {
        let g = c.read().await;
        a_move(&g, "a move to be recorded", |m| m.add == Some(new_id)).await?;
        g.meta_leader().await.context("no meta leader")?
    };
    c.write().await.kill(leader)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.write().await.restart(leader).await?;

    // 2. The node being added, while it is a learner catching up.
    {
        let g = c.read().await;
        wait_for(STEP, "the new node to be a learner somewhere", || learner_somewhere(&g, new_id))
            .await?;
    }
    c.write().await.kill(joiner)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.write().await.restart(joiner).await?;

    // 3. A node whose replica is leaving, mid-move.
    let slot = {
        let g = c.read().await;
        let mv = a_move(&g, "a move that removes a replica", |m| m.remove.is_some()).await?;
        let leaving = mv.remove.context("remove")?;
        g.slot_of(leaving).await.context("leaving node's slot")?
    };
    c.write().await.kill(slot)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.write().await.restart(slot).await?;

    c.read().await.wait_for_rf(Duration::from_secs(300)).await?;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    monitor.await?;
    let lost = quorum_lost.lock().await.clone();
    ensure!(lost.is_empty(), "shards without a live quorum were reported: {lost:?}");

    let c = Arc::try_unwrap(c).map_err(|_| anyhow::anyhow!("cluster still shared"))?.into_inner();
    c.learn_identities().await;
    c.assert_checksums_equal(Duration::from_secs(60)).await?;
    let l = c.list_nodes().await?;
    ensure!(l.moves.is_empty() && l.under_replicated_shards == 0, "{l:?}");
    let acked = acked.lock().await.clone();
    ensure!(acked.len() > 50, "only {} writes acknowledged during the moves", acked.len());
    for key in &acked {
        let got = c.get(key, Consistency::Linearizable, Duration::from_secs(20)).await?;
        ensure!(got.kv.is_some(), "acknowledged key {} lost", String::from_utf8_lossy(key));
    }
    Ok(())
}
