//! `ringkv cluster status`: asks every node for its view of its replicas and prints one row
//! per shard with each replica's role, term and applied index, and the lag behind the leader.

use anyhow::Result;
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::{
    ListNodesRequest, ListNodesResponse, NodeStatusRequest, RaftRole, ShardMap, ShardStatus,
};
use ringkv_tls::Dialer;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// (shard, node) -> that node's status of the shard; nodes that did not answer are missing.
pub async fn collect(
    map: &ShardMap,
    dialer: &Dialer,
) -> (BTreeMap<(u64, u64), ShardStatus>, Vec<(u64, String)>) {
    let mut out = BTreeMap::new();
    let mut down = Vec::new();
    for n in &map.nodes {
        let status = async {
            let endpoint = dialer
                .endpoint(&n.addr)?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(2));
            let ch = dialer.connect(&endpoint).await?;
            Ok::<_, anyhow::Error>(
                AdminClient::new(ringkv_auth::AuthChannel::plain(ch))
                    .node_status(ringkv_proto::with_cluster_id(
                        tonic::Request::new(NodeStatusRequest {}),
                        map.cluster_id,
                    ))
                    .await?
                    .into_inner(),
            )
        }
        .await;
        match status {
            Ok(st) => {
                for s in st.shards {
                    out.insert((s.shard_id, n.id), s);
                }
            }
            Err(e) => down.push((n.id, format!("{e:#}"))),
        }
    }
    (out, down)
}

fn role(r: i32) -> &'static str {
    match RaftRole::try_from(r).unwrap_or(RaftRole::Unspecified) {
        RaftRole::Leader => "leader",
        RaftRole::Follower => "follower",
        RaftRole::Candidate => "candidate",
        RaftRole::Learner => "learner",
        RaftRole::Shutdown => "shutdown",
        RaftRole::Unspecified => "?",
    }
}

/// The membership as the meta leader sees it, from the first node that answers.
async fn membership(map: &ShardMap, dialer: &Dialer) -> Option<ListNodesResponse> {
    for n in &map.nodes {
        let endpoint = dialer
            .endpoint(&n.addr)
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5));
        let ch = dialer.lazy(&endpoint);
        let req =
            ringkv_proto::with_cluster_id(tonic::Request::new(ListNodesRequest {}), map.cluster_id);
        if let Ok(r) = AdminClient::new(ringkv_auth::AuthChannel::plain(ch)).list_nodes(req).await {
            return Some(r.into_inner());
        }
    }
    None
}

pub async fn print(map: &ShardMap, json_out: bool, dialer: &Dialer) -> Result<()> {
    let members = membership(map, dialer).await;
    if !json_out {
        match &members {
            Some(l) => crate::nodes::print_list(l, false),
            None => println!("membership unknown: no node could reach the meta group's leader"),
        }
        println!();
    }
    let (statuses, down) = collect(map, dialer).await;
    let mut rows = Vec::new();
    for s in &map.shards {
        let leader = s.replicas.iter().find(|n| {
            statuses.get(&(s.shard_id, **n)).is_some_and(|st| st.role == RaftRole::Leader as i32)
        });
        let leader_applied =
            leader.and_then(|l| statuses.get(&(s.shard_id, *l))).map(|st| st.applied_index);
        let replicas: Vec<serde_json::Value> = s
            .replicas
            .iter()
            .map(|n| match statuses.get(&(s.shard_id, *n)) {
                Some(st) => json!({
                    "node": n, "role": role(st.role), "term": st.term, "applied": st.applied_index,
                    "lag": leader_applied.map(|l| l.saturating_sub(st.applied_index)),
                    "fault": (!st.fault.is_empty()).then_some(&st.fault),
                    "quiesced": st.quiesced,
                }),
                None => json!({ "node": n, "role": "unreachable" }),
            })
            .collect();
        rows.push(json!({ "shard": s.shard_id, "leader": leader, "replicas": replicas }));
    }
    if json_out {
        let down: Vec<_> = down.iter().map(|(id, e)| json!({ "node": id, "error": e })).collect();
        let moves: Vec<_> = members
            .iter()
            .flat_map(|l| &l.moves)
            .map(|m| json!({ "shard": ringkv_placement::cluster::shard_name(m.shard_id), "add": m.add, "remove": m.remove, "aborting": m.aborting }))
            .collect();
        println!(
            "{}",
            json!({ "epoch": map.epoch, "shards": rows, "unreachable_nodes": down, "moves": moves })
        );
        return Ok(());
    }
    println!(
        "epoch {}  nodes {}  shards {}  replication factor {}",
        map.epoch,
        map.nodes.len(),
        map.shard_count,
        map.replication_factor
    );
    println!(
        "{:<6} {:<7} {:<6} REPLICAS (node:role term applied lag; zz: asleep, idle)",
        "SHARD", "LEADER", "TERM"
    );
    for r in &rows {
        let leader = r["leader"].as_u64().map_or("-".to_string(), |l| l.to_string());
        let term = r["replicas"]
            .as_array()
            .and_then(|a| a.iter().filter_map(|x| x["term"].as_u64()).max())
            .map_or("-".to_string(), |t| t.to_string());
        let cells: Vec<String> = r["replicas"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| match x["applied"].as_u64() {
                        Some(applied) => format!(
                            "{}:{} t{} a{} lag {}{}",
                            x["node"],
                            x["role"].as_str().unwrap_or("?"),
                            x["term"],
                            applied,
                            x["lag"].as_u64().map_or("-".into(), |l| l.to_string()),
                            if x["quiesced"].as_bool() == Some(true) { " zz" } else { "" }
                        ),
                        None => format!("{}:unreachable", x["node"]),
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!("{:<6} {:<7} {:<6} {}", r["shard"].to_string(), leader, term, cells.join(" | "));
    }
    for (id, e) in &down {
        println!("node {id} unreachable: {e}");
    }
    Ok(())
}
