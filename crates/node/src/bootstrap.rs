//! Forming a founded cluster's first Raft groups.
//!
//! A founding member creates, once, its replicas of the initial placement (the placement
//! function over the founding members) and of the meta group, and initializes each with its
//! first membership. Only then and only there: a replica created later, for a move, holds no
//! membership until the shard's leader sends it one (initializing it would invent a second
//! history for the shard).
//!
//! Every founding replica is allowed to initialize, with the same membership: openraft
//! accepts identical initialization on several nodes and refuses it on a node that already
//! has a log or a vote. So a fresh cluster forms whatever order its nodes start in.
//!
//! Initializing also starts an election at once, at term 1. A replica that starts after its
//! peers have already elected a term-1 leader, but before that leader's first heartbeat reached
//! it, would campaign at term 1 with a higher node id, which openraft orders above the sitting
//! leader's vote: the leader steps down when it hears of it, and the shard has no leader until
//! an election timeout passes (clients saw ~1.5 s of NOT_LEADER right after a fresh cluster
//! reported a leader). So before initializing, a replica asks the shard's other replicas: if
//! any of them knows a leader, the group has formed, with this replica in it, and its leader
//! will bring the membership here within a heartbeat; initializing could only disrupt it. A
//! peer that does not answer (not started yet, or down) knows nothing. What is left is a race
//! of a few milliseconds (a peer elected between the question and the initialization), which
//! costs at most the one election it always cost.

use crate::identity::Identity;
use crate::node::StartError;
use crate::registry::ShardRegistry;
use openraft::BasicNode;
use ringkv_placement::cluster::{META_SHARD, initial_meta_replicas};
use ringkv_placement::{NodeId, ShardId, ShardMap};
use ringkv_proto::v1::NodeStatusRequest;
use ringkv_proto::v1::admin_client::AdminClient;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// How long a peer has to answer the question (connect included). A peer that is down refuses
/// the connection at once; this bounds a peer that is unreachable, so a node starting inside a
/// partition is not held back for long.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(1_000);

/// The founding placement and meta membership, as (shard -> voters).
fn founding_groups(identity: &Identity) -> Result<BTreeMap<ShardId, Vec<NodeId>>, StartError> {
    let map = ShardMap::new(identity.layout, identity.founders.clone(), 0)?;
    let mut groups: BTreeMap<ShardId, Vec<NodeId>> =
        map.shard_ids().map(|s| (s, map.replicas(s).to_vec())).collect();
    groups.insert(META_SHARD, initial_meta_replicas(&identity.founders));
    Ok(groups)
}

/// The replicas a founding member holds at first: its shards of the founding placement, and
/// the meta group if it is one of its first replicas.
pub fn initial_replicas(identity: &Identity) -> Result<Vec<ShardId>, StartError> {
    Ok(founding_groups(identity)?
        .into_iter()
        .filter(|(_, voters)| voters.contains(&identity.node_id))
        .map(|(s, _)| s)
        .collect())
}

/// Initializes every founding replica that has never been initialized, unless a peer already
/// knows a leader for it.
pub async fn form_groups(registry: &ShardRegistry, identity: &Identity) -> Result<(), StartError> {
    let groups = founding_groups(identity)?;
    let addr_of: BTreeMap<NodeId, String> =
        identity.founders.iter().map(|m| (m.id, m.addr.clone())).collect();
    let me = identity.node_id;
    let mut fresh = Vec::new();
    for (&shard_id, voters) in groups.iter().filter(|(_, v)| v.contains(&me)) {
        let shard = registry
            .replica(shard_id)
            .map_err(|e| StartError::Raft { shard: shard_id, reason: e.to_string() })?;
        let initialized = shard
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft { shard: shard_id, reason: e.to_string() })?;
        if !initialized {
            fresh.push((shard, voters.clone()));
        }
    }
    if fresh.is_empty() {
        return Ok(());
    }
    let peers: BTreeSet<NodeId> =
        fresh.iter().flat_map(|(_, v)| v.iter().copied()).filter(|&id| id != me).collect();
    let led = shards_with_a_known_leader(registry.pool().dialer(), &addr_of, &peers).await;
    for (shard, voters) in fresh {
        if let Some(peer) = led.get(&shard.id) {
            tracing::info!(
                shard = shard.id,
                peer,
                "a peer already knows a leader for this shard: waiting to be contacted"
            );
            continue;
        }
        let voters: BTreeMap<NodeId, BasicNode> = voters
            .iter()
            .filter_map(|id| addr_of.get(id).map(|a| (*id, BasicNode { addr: a.clone() })))
            .collect();
        match shard.raft.initialize(voters).await {
            Ok(()) => tracing::info!(shard = shard.id, "initialized shard group"),
            // A peer's message arrived in the meantime: nothing to do.
            Err(openraft::errors::RaftError::APIError(
                openraft::errors::InitializeError::NotAllowed(_),
            )) => {}
            Err(e) => return Err(StartError::Raft { shard: shard.id, reason: e.to_string() }),
        }
    }
    Ok(())
}

/// Of the shards the `peers` replicate, those for which one of them reports a leader, with
/// that peer. Peers are asked at once; one that fails or is slow counts as knowing nothing.
async fn shards_with_a_known_leader(
    dialer: &ringkv_tls::Dialer,
    addr_of: &BTreeMap<NodeId, String>,
    peers: &BTreeSet<NodeId>,
) -> HashMap<ShardId, NodeId> {
    let asks = peers.iter().filter_map(|&id| {
        let addr = addr_of.get(&id)?.clone();
        Some(async move {
            let ask = async {
                let endpoint = dialer.endpoint(&addr).ok()?.connect_timeout(PEER_STATUS_TIMEOUT);
                let channel = dialer.connect(&endpoint).await.ok()?;
                AdminClient::new(channel).node_status(NodeStatusRequest {}).await.ok()
            };
            let status = tokio::time::timeout(PEER_STATUS_TIMEOUT, ask).await.ok().flatten();
            (id, status.map(tonic::Response::into_inner))
        })
    });
    let mut led = HashMap::new();
    for (peer, status) in futures::future::join_all(asks).await {
        for s in status.map(|s| s.shards).unwrap_or_default() {
            if s.leader_id.is_some_and(|l| l != 0) {
                led.entry(s.shard_id).or_insert(peer);
            }
        }
    }
    led
}
