//! Membership requests that must be refused are refused, with a clear error, and change
//! nothing; messages of another cluster, or for an identity a node does not have, are refused
//! by every node.

use anyhow::{Context, Result, ensure};
use ringkv_proto::internal::membership_client::MembershipClient;
use ringkv_proto::internal::raft_client::RaftClient;
use ringkv_proto::internal::{JoinRequest, RaftRequest, raft_reply};
use ringkv_proto::v1::{ListNodesRequest, NodeRequest, SetNodeWeightRequest};
use ringkv_tests::{Cluster, Tuning, channel, reason};
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_or_invalid_membership_changes_are_refused_and_change_nothing() -> Result<()> {
    let c = Cluster::start(3, 2, 3, Tuning::default()).await?;
    c.wait_for_leaders(Duration::from_secs(30)).await?;
    let before = c.list_nodes().await?;
    ensure!(before.nodes.len() == 3 && before.nodes.iter().all(|n| n.state == "up"));
    let cluster_id = before.cluster_id;
    let mut admin = c.admin(2).await?;

    // Draining or removing one of three nodes with RF 3 would leave too few up nodes.
    for e in [
        admin.drain_node(NodeRequest { node_id: 3 }).await.unwrap_err(),
        admin.remove_node(NodeRequest { node_id: 3 }).await.unwrap_err(),
    ] {
        ensure!(e.code() == Code::FailedPrecondition, "{e:?}");
        ensure!(reason(&e).as_deref() == Some("MEMBERSHIP_REFUSED"), "{e:?}");
        ensure!(e.message().contains("fewer than the replication factor 3"), "{}", e.message());
    }
    // An unknown node, a weight out of range.
    let e = admin.drain_node(NodeRequest { node_id: 99 }).await.unwrap_err();
    ensure!(e.code() == Code::NotFound && e.message().contains("node 99"), "{e:?}");
    let e =
        admin.set_node_weight(SetNodeWeightRequest { node_id: 1, weight: 0 }).await.unwrap_err();
    ensure!(e.code() == Code::InvalidArgument, "{e:?}");

    // A join with another cluster's id, and a join under a name a live node holds.
    let leader = c.meta_leader().await.context("no meta leader")?;
    let mut membership = MembershipClient::new(channel(&c.peer_addr(leader)).await?);
    let join = |cluster_id, name: &str| JoinRequest {
        cluster_id,
        name: name.to_string(),
        addr: "127.0.0.1:1".into(),
        weight: 1,
        zone: String::new(),
    };
    let e = membership.join(join(cluster_id ^ 1, "intruder")).await.unwrap_err();
    ensure!(reason(&e).as_deref() == Some("WRONG_CLUSTER"), "{e:?}");
    let e = membership.join(join(cluster_id, "2")).await.unwrap_err();
    ensure!(reason(&e).as_deref() == Some("MEMBERSHIP_REFUSED"), "{e:?}");
    ensure!(e.message().contains("belongs to node 2"), "{}", e.message());

    let after = c.list_nodes().await?;
    ensure!(
        after.nodes
            == before
                .nodes
                .iter()
                .cloned()
                .map(|mut n| {
                    n.last_seen_ms =
                        after.nodes.iter().find(|a| a.id == n.id).and_then(|a| a.last_seen_ms);
                    n
                })
                .collect::<Vec<_>>(),
        "refused requests changed the membership: {before:?} -> {after:?}"
    );
    ensure!(after.epoch == before.epoch, "the map epoch moved");

    // An admin call naming another cluster is refused before it does anything.
    let wrong = ringkv_proto::with_cluster_id(
        tonic::Request::new(NodeRequest { node_id: 3 }),
        cluster_id ^ 1,
    );
    let e = admin.activate_node(wrong).await.unwrap_err();
    ensure!(reason(&e).as_deref() == Some("WRONG_CLUSTER"), "{e:?}");
    let right = ringkv_proto::with_cluster_id(tonic::Request::new(ListNodesRequest {}), cluster_id);
    ensure!(admin.list_nodes(right).await.is_ok(), "a call naming the right cluster is served");

    // Raft messages of another cluster, or for another identity, are refused.
    let mut raft = RaftClient::new(channel(&c.peer_addr(1)).await?);
    for (cid, to, want) in
        [(cluster_id ^ 1, 1, "belongs to cluster"), (cluster_id, 2, "not node 2")]
    {
        let reply = raft
            .vote(RaftRequest {
                shard_id: 0,
                from_node_id: 3,
                payload: Vec::new().into(),
                sent_at_unix_ms: 0,
                cluster_id: cid,
                to_node_id: to,
                leader_wakes: 0,
            })
            .await?
            .into_inner();
        match reply.result {
            Some(raft_reply::Result::Error(e)) => ensure!(e.contains(want), "{e}"),
            other => anyhow::bail!("a misaddressed vote request was answered: {other:?}"),
        }
    }
    Ok(())
}
