//! Durability: writes acknowledged before every node is killed with SIGKILL at once are all
//! there after the cluster restarts. Nothing is flushed on the way down (kill -9 runs no
//! shutdown code), so this holds only if every acknowledgement waited for an fsync.

use anyhow::{Context, Result, ensure};
use futures::stream::{self, StreamExt};
use ringkv_proto::v1::Consistency;
use ringkv_tests::{Cluster, Tuning};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

const WRITERS: usize = 32;
/// Kill once this many writes have been acknowledged, while more are in flight.
const ACKED_BEFORE_KILL: usize = 1_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_of_every_node() -> Result<()> {
    let c = Cluster::start(3, 8, 3, Tuning::default()).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let cluster = Arc::new(c);
    let acked = Arc::new(Mutex::new(Vec::<(Vec<u8>, Vec<u8>)>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (cluster, acked, count, stop) =
            (cluster.clone(), acked.clone(), count.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{i}").into_bytes();
                let value = format!("v{w}-{i}").into_bytes();
                i += 1;
                // Routed to the leader, retried across elections (the put is idempotent):
                // a success is an acknowledgement.
                if cluster.put(&key, &value, Duration::from_secs(5)).await.is_ok() {
                    acked.lock().await.push((key, value));
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    ringkv_tests::wait_for(Duration::from_secs(120), "writes to be acknowledged", || async {
        (count.load(Ordering::Relaxed) >= ACKED_BEFORE_KILL).then_some(())
    })
    .await?;
    // Kill while writers are mid-flight. The cluster is shared with the writers, so take it
    // back only after they stop; the kill itself must not wait for them.
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    for pid in &pids {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(*pid)?),
            nix::sys::signal::Signal::SIGKILL,
        )?;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let mut c = Arc::try_unwrap(cluster).map_err(|_| anyhow::anyhow!("cluster still shared"))?;
    ensure!(c.kill_all()?.len() == 3, "all three nodes should have been running");
    let acked = acked.lock().await.clone();
    ensure!(acked.len() >= ACKED_BEFORE_KILL);

    for id in 1..=3 {
        c.restart(id).await?;
    }
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let results: Vec<Result<()>> = stream::iter(&acked)
        .map(|(k, v)| {
            let c = &c;
            async move {
                let got = c.get(k, Consistency::Linearizable, Duration::from_secs(20)).await?;
                let kv = got.kv.with_context(|| {
                    format!("acknowledged key {} lost", String::from_utf8_lossy(k))
                })?;
                ensure!(
                    kv.value[..] == v[..],
                    "acknowledged key {} has another value",
                    String::from_utf8_lossy(k)
                );
                Ok(())
            }
        })
        .buffer_unordered(WRITERS)
        .collect()
        .await;
    let lost: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    ensure!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
    Ok(())
}
