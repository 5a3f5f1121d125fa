//! Quiescence on real processes: idle shards stop their timers on every replica and stay
//! stable (no elections while nobody sends heartbeats); a request wakes a shard and is
//! served; a quiesced leader's death (or pause) is noticed by node-pair pings and the
//! followers elect; a shard sleeps past a follower that is gone, never without a quorum, and
//! the follower is caught up when it returns; a quiesced follower that restarts does not
//! depose the healthy leaders it follows; the meta group sleeps too and wakes for membership
//! changes, and elects a new leader when its leader's node dies while it sleeps; sleeping
//! replicas keep no log entries or session records in memory.

use anyhow::{Context, Result, ensure};
use ringkv_proto::v1::{Consistency, GetRequest, NodeRequest, RaftRole};
use ringkv_tests::{Cluster, Tuning, wait_for};
use std::collections::HashMap;
use std::time::Duration;

const QUIESCE_AFTER_MS: u64 = 300;

fn tuning() -> Tuning {
    Tuning { quiesce_after_ms: QUIESCE_AFTER_MS, ..Tuning::default() }
}

/// (shard → (leader, term)) as the leaders report it, data shards only.
async fn leaders_and_terms(c: &Cluster) -> HashMap<u64, (u64, u64)> {
    let mut out = HashMap::new();
    for id in c.running() {
        if let Ok(st) = c.status(id).await {
            for s in st.shards {
                if s.role == RaftRole::Leader as i32 && s.shard_id < c.shard_count() {
                    out.insert(s.shard_id, (id, s.term));
                }
            }
        }
    }
    out
}

/// Waits until every replica (the meta group's too) on every running node is quiesced; on
/// timeout says which are awake (node, shard, role, term).
async fn wait_all_quiet(c: &Cluster, timeout: Duration) -> Result<()> {
    wait_quiet_on(c, &c.running(), timeout).await
}

/// [`wait_all_quiet`] on `nodes` only.
async fn wait_quiet_on(c: &Cluster, nodes: &[u64], timeout: Duration) -> Result<()> {
    wait_none_left(timeout, "every replica quiesced", "awake", || async {
        let mut awake = Vec::new();
        for &id in nodes {
            let st = c.status(id).await.ok()?;
            if !st.shards.iter().any(|s| s.shard_id < c.shard_count()) {
                return None;
            }
            awake.extend(st.shards.iter().filter(|s| !s.quiesced).map(|s| {
                format!("node {id} shard {} role {} term {}", s.shard_id, s.role, s.term)
            }));
        }
        Some(awake)
    })
    .await
}

/// Waits until `find` returns an empty list (`None`: cannot tell yet); on timeout names what
/// the last look found, as `label: a; b; ...`.
async fn wait_none_left<F, Fut>(
    timeout: Duration,
    what: &str,
    label: &str,
    mut find: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Vec<String>>>,
{
    let last = std::sync::Mutex::new(Vec::new());
    let waited = wait_for(timeout, what, || {
        let found = find();
        let last = &last;
        async move {
            let found = found.await?;
            let done = found.is_empty();
            *last.lock().unwrap_or_else(|p| p.into_inner()) = found;
            done.then_some(())
        }
    })
    .await;
    waited.map_err(|e| {
        let last = last.lock().unwrap_or_else(|p| p.into_inner()).join("; ");
        e.context(format!("{label}: {last}"))
    })
}

/// Runs `body` on `c`; on failure keeps the node logs and says where.
async fn keeping_logs<F>(c: &Cluster, body: F) -> Result<()>
where
    F: std::future::Future<Output = Result<()>>,
{
    body.await.map_err(|e| e.context(c.keep_logs("quiescence")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_shards_sleep_without_elections_and_wake_for_requests() -> Result<()> {
    let c = Cluster::start(3, 8, 3, tuning()).await?;
    keeping_logs(&c, sleep_and_wake(&c)).await
}

async fn sleep_and_wake(c: &Cluster) -> Result<()> {
    c.wait_for_rf(Duration::from_secs(60)).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    for s in 0..c.shard_count() {
        let key = c.key_in_shard(s, "before");
        c.put(&key, b"v1", Duration::from_secs(20)).await?;
    }
    wait_all_quiet(c, Duration::from_secs(60)).await?;
    wait_caches_released(c).await?;
    let asleep = leaders_and_terms(c).await;
    ensure!(asleep.len() as u64 == c.shard_count(), "a shard without a leader: {asleep:?}");
    // The gauge follows within a metrics refresh.
    wait_for(Duration::from_secs(10), "node 1's ringkv_replicas_quiesced above 0", || async {
        let metrics = c.metrics(1).await.ok()?;
        metrics
            .lines()
            .any(|l| l.starts_with("ringkv_replicas_quiesced ") && !l.ends_with(" 0"))
            .then_some(())
    })
    .await?;

    // STALE reads served by sleeping followers leave them asleep (woken alone, a follower
    // would start an election against its healthy leader).
    for (&s, &(leader, _)) in &asleep {
        let key = c.key_in_shard(s, "before");
        for node in c.running().into_iter().filter(|&n| n != leader) {
            let req =
                GetRequest { key: key.clone().into(), consistency: Consistency::Stale as i32 };
            let got = c.kv(node).await?.get(req).await?.into_inner();
            ensure!(got.kv.is_some(), "stale read of shard {s} at follower {node}");
        }
    }
    // Three maximal election timeouts without a heartbeat: a follower whose election timer
    // still ran would have started an election (a new term) by now. This is an observation
    // window, not a synchronisation: nothing is awaited.
    tokio::time::sleep(Duration::from_millis(3 * tuning().election_max_ms)).await;
    let now = leaders_and_terms(c).await;
    ensure!(now == asleep, "an election happened while quiesced: {asleep:?} became {now:?}");

    // Every kind of request wakes its shard and is served.
    for s in 0..c.shard_count() {
        let key = c.key_in_shard(s, "before");
        let got = c.get(&key, Consistency::Lease, Duration::from_secs(20)).await?;
        ensure!(got.kv.is_some_and(|kv| kv.value.as_ref() == b"v1"), "lease read of shard {s}");
    }
    wait_all_quiet(c, Duration::from_secs(60)).await?;
    for s in 0..c.shard_count() {
        let key = c.key_in_shard(s, "after");
        c.put(&key, b"v2", Duration::from_secs(20)).await?;
        let got = c.get(&key, Consistency::Linearizable, Duration::from_secs(20)).await?;
        ensure!(got.kv.is_some_and(|kv| kv.value.as_ref() == b"v2"), "read back in shard {s}");
    }
    // Waking is not an election: the same leaders, in the same terms.
    let now = leaders_and_terms(c).await;
    ensure!(now == asleep, "waking a shard moved its leadership: {asleep:?} became {now:?}");
    c.assert_checksums_equal(Duration::from_secs(30)).await?;
    // And they sleep again, and give their caches back again.
    wait_all_quiet(c, Duration::from_secs(60)).await?;
    wait_caches_released(c).await?;
    Ok(())
}

/// Waits until no running node's shards keep log entries or session records in memory (every
/// replica released its caches when it went to sleep); says what they hold on timeout.
async fn wait_caches_released(c: &Cluster) -> Result<()> {
    const GAUGES: [&str; 2] =
        ["ringkv_storage_entry_cache_bytes ", "ringkv_storage_session_cache_bytes "];
    wait_none_left(Duration::from_secs(10), "sleeping shards' caches released", "held", || async {
        let mut held = Vec::new();
        for id in c.running() {
            let metrics = c.metrics(id).await.ok()?;
            for gauge in GAUGES {
                let line = metrics.lines().find(|l| l.starts_with(gauge))?;
                if !line.ends_with(" 0") {
                    held.push(format!("node {id}: {line}"));
                }
            }
        }
        Some(held)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pings_replace_heartbeats_for_quiesced_shards() -> Result<()> {
    let mut c = Cluster::start(3, 8, 3, tuning()).await?;
    c.wait_for_rf(Duration::from_secs(60)).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    wait_all_quiet(&c, Duration::from_secs(60)).await?;

    // A node stops answering (SIGSTOP): the shards it led elect elsewhere (their followers'
    // pings go unanswered) and every shard takes writes. Then every shard goes back to sleep
    // on the other two nodes, past the silent follower: a quorum is enough, and heartbeats
    // to a node that answers nothing would only cost.
    let paused = 3;
    c.signal(paused, nix::sys::signal::Signal::SIGSTOP)?;
    for s in 0..c.shard_count() {
        let key = c.key_in_shard(s, "while-paused");
        c.put(&key, b"v", Duration::from_secs(30)).await?;
    }
    wait_for(Duration::from_secs(60), "every shard asleep past the paused node", || async {
        for id in [1, 2] {
            let st = c.status(id).await.ok()?;
            let data = st.shards.iter().filter(|s| s.shard_id < c.shard_count());
            data.clone().all(|s| s.quiesced).then_some(())?;
        }
        Some(())
    })
    .await?;
    // And they stay asleep: nothing (such as the leader balancer, for the shards that prefer
    // the paused node) keeps waking them. Sampled every 100 ms over three balancer intervals,
    // an observation window, not a synchronisation.
    let samples = 3 * tuning().leader_balance_ms / 100;
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for id in [1, 2] {
            let st = c.status(id).await?;
            let awake: Vec<u64> = st
                .shards
                .iter()
                .filter(|s| s.shard_id < c.shard_count() && !s.quiesced)
                .map(|s| s.shard_id)
                .collect();
            ensure!(awake.is_empty(), "node {id} woke {awake:?} while node {paused} is paused");
        }
    }
    // It resumes behind (it missed the writes). The leaders' replication, retried while they
    // sleep, brings its replicas up to date (right after it resumes they may still sleep
    // on their old state, which STALE reads may return: it is within their stated
    // staleness); then every replica sleeps again.
    c.signal(paused, nix::sys::signal::Signal::SIGCONT)?;
    wait_for(Duration::from_secs(60), "the resumed node to catch up", || async {
        for s in 0..c.shard_count() {
            let key = c.key_in_shard(s, "while-paused");
            let req = GetRequest { key: key.into(), consistency: Consistency::Stale as i32 };
            let got = c.kv(paused).await.ok()?.get(req).await.ok()?.into_inner();
            got.kv.is_some_and(|kv| kv.value.as_ref() == b"v").then_some(())?;
        }
        Some(())
    })
    .await?;
    wait_all_quiet(&c, Duration::from_secs(60)).await?;

    // Two nodes stop answering: the third holds no quorum for anything, and none of its
    // groups may sleep (they keep trying); after they resume, everything sleeps again.
    for id in [2, 3] {
        c.signal(id, nix::sys::signal::Signal::SIGSTOP)?;
    }
    // An observation window of three absence periods (a follower is taken as gone after four
    // minimal election timeouts of silence), not a synchronisation.
    tokio::time::sleep(Duration::from_millis(3 * 4 * tuning().election_min_ms)).await;
    let st = c.status(1).await?;
    let asleep: Vec<u64> = st
        .shards
        .iter()
        .filter(|s| s.shard_id < c.shard_count() && s.quiesced)
        .map(|s| s.shard_id)
        .collect();
    ensure!(asleep.is_empty(), "node 1 sleeps in {asleep:?} without a quorum");
    for id in [2, 3] {
        c.signal(id, nix::sys::signal::Signal::SIGCONT)?;
    }
    wait_all_quiet(&c, Duration::from_secs(60)).await?;

    // A follower restarts: the leaders it follows notice (a new boot id, or silence) and
    // wake, so it hears from them before its election timer fires: no shard led elsewhere
    // changes leader or term.
    let before = leaders_and_terms(&c).await;
    let follower = 3;
    c.kill(follower)?;
    c.restart(follower).await?;
    wait_for(Duration::from_secs(60), "the restarted follower caught up", || async {
        let st = c.status(follower).await.ok()?;
        let data: Vec<_> = st.shards.iter().filter(|s| s.shard_id < c.shard_count()).collect();
        (!data.is_empty() && data.iter().all(|s| s.leader_id.is_some_and(|l| l != 0))).then_some(())
    })
    .await?;
    let after = leaders_and_terms(&c).await;
    for (shard, &(leader, term)) in &before {
        if leader != follower {
            ensure!(
                after.get(shard) == Some(&(leader, term)),
                "shard {shard} was led by {leader} in term {term} and is now {:?}: the restarted \
                 follower deposed it",
                after.get(shard)
            );
        }
    }

    // A leader dies while its shards sleep: its followers notice through the pings and elect.
    wait_all_quiet(&c, Duration::from_secs(60)).await?;
    let leaders = leaders_and_terms(&c).await;
    let victim = leaders.values().map(|&(l, _)| l).max().unwrap_or(1);
    let led: Vec<u64> = leaders.iter().filter(|(_, v)| v.0 == victim).map(|(&s, _)| s).collect();
    ensure!(!led.is_empty(), "node {victim} leads nothing: {leaders:?}");
    c.kill(victim)?;
    for &s in &led {
        let key = c.key_in_shard(s, "after-leader-died");
        c.put(&key, b"v", Duration::from_secs(30)).await?;
    }
    let now = leaders_and_terms(&c).await;
    for &s in &led {
        ensure!(
            now.get(&s).is_some_and(|&(l, _)| l != victim),
            "shard {s} has no new leader: {now:?}"
        );
    }
    Ok(())
}

/// The meta group sleeps like a data shard: every node's sync reads its leader's records,
/// which is no Raft traffic. It wakes for what changes the records (a drain, carried out by
/// the placement driver's writes), and when its leader's node dies while it sleeps, the pings
/// wake its followers, which elect a leader that takes the next membership change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meta_group_sleeps_and_wakes_for_membership_changes() -> Result<()> {
    let mut c = Cluster::start(4, 8, 3, tuning()).await?;
    let result = meta_sleeps_and_wakes(&mut c).await;
    result.map_err(|e| e.context(c.keep_logs("quiescence-meta")))
}

async fn meta_sleeps_and_wakes(c: &mut Cluster) -> Result<()> {
    c.wait_for_rf(Duration::from_secs(60)).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    wait_all_quiet(c, Duration::from_secs(60)).await?;

    // A drain is written to the sleeping meta group (through any node), and carried out.
    let leader = c.meta_leader().await;
    let drained = c.running().into_iter().rev().find(|&n| Some(n) != leader).unwrap_or(4);
    let drained_id = c.identity_of(drained).await?;
    let mut admin = c.admin(1).await?;
    admin.drain_node(NodeRequest { node_id: drained_id }).await?;
    c.wait_settled(Duration::from_secs(90)).await?;
    let others: Vec<u64> = c.running().into_iter().filter(|&n| n != drained).collect();
    wait_quiet_on(c, &others, Duration::from_secs(60)).await?;

    // Its leader's node dies while it sleeps: the others elect a new leader, which takes the
    // next membership change (removing the drained node).
    let leader = c.meta_leader().await.context("no meta leader")?;
    ensure!(leader != drained, "the drained node {drained} leads the meta group");
    c.kill(leader)?;
    let new_leader = wait_for(Duration::from_secs(30), "a new meta leader", || async {
        c.meta_leader().await.filter(|&l| l != leader)
    })
    .await?;
    let remaining: Vec<u64> = others.iter().copied().filter(|&n| n != leader).collect();
    ensure!(remaining.contains(&new_leader), "meta leader {new_leader} is not among {remaining:?}");
    wait_for(Duration::from_secs(30), "the drained node removed", || async {
        let mut admin = c.admin(new_leader).await.ok()?;
        admin.remove_node(NodeRequest { node_id: drained_id }).await.ok()
    })
    .await?;
    let nodes = c.list_nodes().await?;
    let record = nodes.nodes.iter().find(|n| n.id == drained_id).context("no record")?;
    ensure!(record.state == "removed", "node {drained_id} is {:?} after its removal", record.state);
    Ok(())
}

/// A shard whose only voter is its leader (RF 1) is its own quorum: woken by a write, it takes
/// it at once. It used to wait for a quorum acknowledgement that no follower would ever send,
/// until the request's deadline ran out (found when quiescence after 500 ms made the router
/// tests' RF 1 shards sleep between their writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_voter_wakes_and_takes_writes_at_once() -> Result<()> {
    let c = Cluster::start(1, 2, 1, tuning()).await?;
    keeping_logs(&c, sole_voter_writes(&c)).await
}

async fn sole_voter_writes(c: &Cluster) -> Result<()> {
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let router = c.start_router_with(&[]).await?;
    // A deadline far below the 10 s a stuck wake used to take, far above a loaded write.
    let client = ringkv_client::Client::builder()
        .router(router.addr.clone())
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    for round in 0..2 {
        wait_all_quiet(c, Duration::from_secs(60)).await?;
        for s in 0..c.shard_count() {
            let key = c.key_in_shard(s, &format!("sole-{round}"));
            client
                .put(&key, b"v")
                .await
                .with_context(|| format!("write to sleeping shard {s}, round {round}"))?;
            let got = client.get(&key).await?;
            ensure!(got.is_some_and(|kv| &kv.value[..] == b"v"), "read back in shard {s}");
        }
    }
    Ok(())
}
