//! KV watch through the router across a leader failover, and the history's compaction.
//!
//! A prefix watch starts at known per-shard revisions while writers keep writing unique
//! values; the node leading the most shards is killed and restarted mid-run. At the end the
//! watch must have delivered, per shard, strictly increasing revisions; every acknowledged
//! write after its start (at the revision its put returned); nothing that was not written; and
//! exactly the sequence that a second watch, started afterwards from the same revisions,
//! reads from the history (so the first watch missed nothing across the failover).

use anyhow::{Context, Result, ensure};
use ringkv_client::{WatchRequest, Watcher, watch_event};
use ringkv_proto::v1::ShardRevision;
use ringkv_tests::{Cluster, Tuning, router_client, wait_for};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// One change: (revision, key, value or None for a delete).
type Change = (u64, String, Option<String>);
/// Changes per shard.
type Seen = BTreeMap<u64, Vec<Change>>;
type Shared<T> = Arc<Mutex<T>>;

async fn drain(
    w: &mut Watcher,
    seen: &Mutex<Seen>,
    positions: &Mutex<HashMap<u64, u64>>,
) -> Result<()> {
    while let Some(msg) = w.next().await {
        let msg = msg?;
        positions.lock().await.insert(msg.shard_id, msg.revision);
        let mut s = seen.lock().await;
        for e in msg.events {
            let kv = e.kv.context("event without kv")?;
            let value = (e.kind == watch_event::Kind::Put as i32)
                .then(|| String::from_utf8_lossy(&kv.value).into_owned());
            s.entry(msg.shard_id).or_default().push((
                kv.version,
                String::from_utf8_lossy(&kv.key).into_owned(),
                value,
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_sees_every_change_in_order_across_a_failover() -> Result<()> {
    let mut c = Cluster::start(3, 3, 3, Tuning::default()).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let router = c.start_router("round-robin").await?;
    let client = router_client(&router.addr).await?;
    // Some history before the watch starts; the watch begins after it.
    let mut start: HashMap<u64, u64> = HashMap::new();
    for i in 0..30 {
        let key = format!("w/pre{i}");
        let version = client.put(key.as_bytes(), b"old").await?;
        let shard = c.map.shard_of(key.as_bytes());
        let s = start.entry(shard).or_default();
        *s = (*s).max(version + 1);
    }
    let resume: Vec<ShardRevision> = c
        .map
        .shard_ids()
        .map(|s| ShardRevision { shard_id: s, revision: start.get(&s).copied().unwrap_or(1) })
        .collect();
    let req = WatchRequest {
        key: b"w/".to_vec().into(),
        prefix: true,
        resume: resume.clone(),
        ..Default::default()
    };
    let seen = Arc::new(Mutex::new(Seen::new()));
    let positions = Arc::new(Mutex::new(HashMap::new()));
    let mut watcher = client.watch(req.clone()).await?;
    let watch_task = {
        let (seen, positions) = (seen.clone(), positions.clone());
        tokio::spawn(async move { drain(&mut watcher, &seen, &positions).await })
    };

    let acked: Shared<Vec<Change>> = Arc::default();
    let attempted: Shared<HashSet<(String, Option<String>)>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (acked, attempted, stop, addr) =
            (acked.clone(), attempted.clone(), stop.clone(), router.addr.clone());
        let map_keys: Vec<String> = (0..5).map(|k| format!("w/{w}/{k}")).collect();
        writers.push(tokio::spawn(async move {
            let client = router_client(&addr).await?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = map_keys[(n % 5) as usize].clone();
                let value = (n % 4 != 3).then(|| format!("v{w}-{n}"));
                attempted.lock().await.insert((key.clone(), value.clone()));
                let result = match &value {
                    Some(v) => client.put(key.as_bytes(), v.as_bytes()).await.map(Some),
                    // Deletes have no version in their answer; they are checked as "attempted".
                    None => client.delete(key.as_bytes()).await.map(|_| None),
                };
                match result {
                    Ok(Some(version)) => acked.lock().await.push((version, key, value)),
                    Ok(None) => {}
                    Err(e) => eprintln!("writer {w}: {e}"),
                }
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    let count = |acked: Shared<Vec<Change>>| async move { acked.lock().await.len() };
    wait_for(Duration::from_secs(60), "writes before the failover", || {
        let a = acked.clone();
        async move { (count(a).await >= 100).then_some(()) }
    })
    .await?;
    let victim = c.busiest_leader().await.context("no leader")?;
    eprintln!("stage: kill node {victim}");
    c.kill(victim)?;
    let before = count(acked.clone()).await;
    wait_for(Duration::from_secs(60), "writes after the failover", || {
        let a = acked.clone();
        async move { (count(a).await >= before + 100).then_some(()) }
    })
    .await?;
    c.restart(victim).await?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    // The watch has caught up once every shard's position reaches its last acked revision.
    let last: HashMap<u64, u64> = {
        let mut m = HashMap::new();
        for (v, k, _) in acked.lock().await.iter() {
            let e = m.entry(c.map.shard_of(k.as_bytes())).or_insert(0);
            *e = (*e).max(*v);
        }
        m
    };
    wait_for(Duration::from_secs(60), "the watch to catch up", || {
        let (positions, last) = (positions.clone(), last.clone());
        async move {
            let p = positions.lock().await;
            last.iter().all(|(s, v)| p.get(s).is_some_and(|at| at >= v)).then_some(())
        }
    })
    .await?;
    let upto: HashMap<u64, u64> = positions.lock().await.clone();
    watch_task.abort();

    // A second watch from the same start reads the history up to the same positions.
    let replay = Arc::new(Mutex::new(Seen::new()));
    let replay_pos = Arc::new(Mutex::new(HashMap::new()));
    let mut second = client.watch(req).await?;
    let replay_task = {
        let (replay, replay_pos) = (replay.clone(), replay_pos.clone());
        tokio::spawn(async move { drain(&mut second, &replay, &replay_pos).await })
    };
    wait_for(Duration::from_secs(30), "the replay to reach the same positions", || {
        let (replay_pos, upto) = (replay_pos.clone(), upto.clone());
        async move {
            let p = replay_pos.lock().await;
            upto.iter().all(|(s, v)| p.get(s).is_some_and(|at| at >= v)).then_some(())
        }
    })
    .await?;
    replay_task.abort();

    let seen = seen.lock().await;
    let replay = replay.lock().await;
    let attempted = attempted.lock().await;
    let mut delivered: HashSet<Change> = HashSet::new();
    for (shard, events) in seen.iter() {
        let from = start.get(shard).copied().unwrap_or(1);
        for pair in events.windows(2) {
            ensure!(
                pair[0].0 <= pair[1].0,
                "shard {shard}: revision {} after {}",
                pair[1].0,
                pair[0].0
            );
            ensure!(pair[0] != pair[1], "shard {shard}: {:?} delivered twice", pair[0]);
        }
        for e in events {
            ensure!(
                e.0 >= from,
                "shard {shard}: revision {} is before the watch's start {from}",
                e.0
            );
            ensure!(
                attempted.contains(&(e.1.clone(), e.2.clone())),
                "shard {shard}: {e:?} was never written"
            );
            delivered.insert(e.clone());
        }
        let limit = upto.get(shard).copied().unwrap_or(0);
        let replayed: Vec<_> = replay
            .get(shard)
            .map(|v| v.iter().filter(|e| e.0 <= limit).cloned().collect())
            .unwrap_or_default();
        let live: Vec<_> = events.iter().filter(|e| e.0 <= limit).cloned().collect();
        ensure!(
            live == replayed,
            "shard {shard}: the live watch and the replay differ ({} vs {} events)",
            live.len(),
            replayed.len()
        );
    }
    for a in acked.lock().await.iter() {
        ensure!(delivered.contains(a), "acknowledged write {a:?} was not delivered");
    }
    eprintln!("watch: {} events delivered over {} shards", delivered.len(), seen.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_fails_clearly() -> Result<()> {
    let tuning =
        Tuning { watch_history_revisions: 50, retention_interval_ms: 100, ..Tuning::default() };
    let c = Cluster::start(1, 1, 1, tuning).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let router = c.start_router("round-robin").await?;
    let client = router_client(&router.addr).await?;
    for i in 0..200 {
        client.put(b"hot", format!("{i}").as_bytes()).await?;
    }
    let status = wait_for(Duration::from_secs(30), "the history to be compacted", || {
        let client = &client;
        async move {
            let req = WatchRequest {
                key: b"hot".to_vec().into(),
                start_revision: 1,
                ..Default::default()
            };
            let mut w = client.watch(req).await.ok()?;
            match w.next().await? {
                Err(ringkv_client::ClientError::Status(s)) => Some(s),
                _ => None,
            }
        }
    })
    .await?;
    ensure!(status.code() == tonic::Code::OutOfRange, "{status:?}");
    ensure!(ringkv_tests::reason(&status).as_deref() == Some("COMPACTED"), "{status:?}");
    ensure!(status.message().contains("oldest revision kept"), "{}", status.message());
    // A watch from a kept revision still works and starts where it was asked to.
    let mut w = client
        .watch(WatchRequest {
            key: b"hot".to_vec().into(),
            start_revision: 180,
            ..Default::default()
        })
        .await?;
    let mut got = Vec::new();
    while got.len() < 5 {
        let msg = w.next().await.context("watch ended")??;
        got.extend(msg.events.into_iter().filter_map(|e| e.kv).map(|kv| kv.version));
    }
    ensure!(got[0] >= 180 && got.windows(2).all(|p| p[0] < p[1]), "{got:?}");
    Ok(())
}
