//! A node that lost its data must never vote as the member it was.
//!
//! The scenario of the issue: node 3 is paused; 407 keys are written and acknowledged by
//! nodes 1 and 2; nodes 1 and 2 are killed; node 2's data directory is wiped and it starts
//! again; node 3 resumes. If the empty node 2 voted as node 2, it and node 3 would be a quorum
//! that has never seen the writes, and would elect a leader without them. Instead node 2 must
//! come back as a new identity that no existing group counts: nothing is served until node 1
//! (which has the writes) returns, then every acknowledged write is there, the old identity
//! is retired, and every shard is back to three replicas with equal checksums.

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;
use ringkv_proto::v1::Consistency;
use ringkv_tests::{Cluster, Tuning};
use std::time::Duration;

const KEYS: usize = 407;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_node_rejoins_as_a_new_identity_and_nothing_is_lost() -> Result<()> {
    let mut c = Cluster::start(3, 4, 3, Tuning::default()).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;

    c.signal(3, Signal::SIGSTOP)?;
    let mut acked = Vec::new();
    for i in 0..KEYS {
        let key = format!("k{i}").into_bytes();
        c.put(&key, b"v", Duration::from_secs(20))
            .await
            .with_context(|| format!("writing key {i} with node 3 paused"))?;
        acked.push(key);
    }
    c.kill(1)?;
    c.kill(2)?;
    c.wipe(2)?;
    c.spawn(2)?;
    c.signal(3, Signal::SIGCONT)?;

    // Nodes 3 and the empty node 2 must not serve anything on their own: a read that
    // succeeds now would come from a quorum without the writes.
    let early = c.get(&acked[0], Consistency::Linearizable, Duration::from_secs(5)).await;
    ensure!(
        early.as_ref().map_or(true, |r| r.kv.is_some()),
        "a quorum without node 1 served a read that misses an acknowledged write"
    );

    c.restart(1).await?;
    // Node 1 brings the quorum (and the writes) back; the empty node can now join.
    c.wait_node_serving(2, Duration::from_secs(60)).await?;
    c.wait_for_rf(Duration::from_secs(120)).await?;
    c.learn_identities().await;
    for key in &acked {
        let got = c.get(key, Consistency::Linearizable, Duration::from_secs(20)).await?;
        ensure!(got.kv.is_some(), "acknowledged key {} lost", String::from_utf8_lossy(key));
    }
    let new_id = c.identity_of(2).await?;
    ensure!(new_id != 2, "the wiped node came back as node 2");
    c.assert_checksums_equal(Duration::from_secs(60)).await?;
    Ok(())
}
