//! `/readyz` and the gRPC health service mean something (see `ringkv_node::health`).
//!
//! A 4-node cluster (RF 3, so a node can be drained) with a 2 s staleness bound. Every node
//! becomes ready; a node whose peers are all frozen (SIGSTOP) loses its quorum and is not
//! ready, and is ready again once they resume; a node restarted while its peers are frozen
//! cannot catch up and is not ready until they resume; a drained node is not ready. The gRPC
//! health service of the client API says the same as `/readyz`.

use anyhow::Result;
use nix::sys::signal::Signal;
use ringkv_proto::v1::NodeRequest;
use ringkv_tests::{Cluster, Tuning, health, wait_for};
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;

const T: Duration = Duration::from_secs(60);

/// Waits until `/readyz` and gRPC health agree that node `id` is (not) ready. `because`, when
/// given, must be among the reasons: a node may also be briefly not ready for another reason
/// (a replica a moment behind on a loaded machine), and that is not what the step checks.
async fn wait_ready(
    c: &Cluster,
    id: u64,
    ready: bool,
    because: &[&str],
    why: &str,
) -> Result<String> {
    let what = format!(
        "node {id} to be {} ({why}) with a reason among {because:?}",
        if ready { "ready" } else { "not ready" }
    );
    wait_for(T, &what, || async move {
        let (code, body) = c.readyz(id).await.ok()?;
        let grpc = health(&c.addr(id), "ringkv.v1.KV").await.ok()?;
        let want = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        let reason = because.is_empty() || because.iter().any(|r| body.contains(r));
        ((code == 200) == ready && grpc == want && reason).then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_only_while_up_and_current() -> Result<()> {
    let tuning = Tuning { ready_staleness_max_ms: 2_000, ..Tuning::default() };
    let mut c = Cluster::start(4, 4, 3, tuning).await?;
    c.wait_for_leaders(T).await?;
    for id in 1..=4 {
        wait_ready(&c, id, true, &[], "a healthy cluster").await?;
    }
    let others = [2, 3, 4];

    // Cut off from every peer: no quorum for anything it holds.
    for &o in &others {
        c.signal(o, Signal::SIGSTOP)?;
    }
    wait_ready(&c, 1, false, &["ms old", "since start"], "its peers are frozen").await?;
    for &o in &others {
        c.signal(o, Signal::SIGCONT)?;
    }
    wait_ready(&c, 1, true, &[], "its peers resumed").await?;

    // Restarted while nobody can bring it up to date: it serves, but is not ready.
    c.kill(1)?;
    for &o in &others {
        c.signal(o, Signal::SIGSTOP)?;
    }
    c.restart(1).await?;
    // A restarted replica says it never caught up.
    wait_ready(&c, 1, false, &["since start"], "restarted with its peers frozen").await?;
    for &o in &others {
        c.signal(o, Signal::SIGCONT)?;
    }
    wait_ready(&c, 1, true, &[], "caught up after its peers resumed").await?;

    // Drained: its replicas are leaving, it is not to be counted on.
    let id = c.identity_of(4).await?;
    let mut admin = c.admin(1).await?;
    admin.drain_node(NodeRequest { node_id: id }).await?;
    wait_ready(&c, 4, false, &["draining"], "drained").await?;
    // The others are ready while it drains. Not necessarily at every instant: a replica
    // moving onto one of them is briefly behind right after it becomes a voter (the meta
    // group's, once, in CI), and readiness says so honestly.
    for id in 1..=3 {
        wait_ready(&c, id, true, &[], "another node drains").await?;
    }
    Ok(())
}
