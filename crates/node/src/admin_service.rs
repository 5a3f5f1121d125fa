//! The public `ringkv.v1.Admin` service: shard map, this node's view of its replicas,
//! per-shard checksums (to compare replicas), leader transfer and on-demand snapshots.

use crate::error::NodeError;
use crate::registry::ShardRegistry;
use openraft::ServerState;
use ringkv_placement::ShardMap;
use ringkv_proto::v1::admin_server::Admin;
use ringkv_proto::v1::{
    GetShardMapRequest, GetShardMapResponse, NodeInfo, NodeStatusRequest, NodeStatusResponse,
    RaftRole, ReplicaProgress, ShardChecksumRequest, ShardChecksumResponse, ShardStatus,
    TransferLeaderRequest, TransferLeaderResponse, TriggerSnapshotRequest, TriggerSnapshotResponse,
};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How long TriggerSnapshot waits for the snapshot to be built.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct AdminService {
    registry: ShardRegistry,
}

impl AdminService {
    pub fn new(registry: ShardRegistry) -> Self {
        AdminService { registry }
    }
}

pub fn shard_map_proto(map: &ShardMap) -> ringkv_proto::v1::ShardMap {
    ringkv_routing::topology::map_to_proto(map)
}

fn role(state: ServerState) -> RaftRole {
    match state {
        ServerState::Leader => RaftRole::Leader,
        ServerState::Follower => RaftRole::Follower,
        ServerState::Candidate => RaftRole::Candidate,
        ServerState::Learner => RaftRole::Learner,
        ServerState::Shutdown => RaftRole::Shutdown,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_shard_map(
        &self,
        _req: Request<GetShardMapRequest>,
    ) -> Result<Response<GetShardMapResponse>, Status> {
        Ok(Response::new(GetShardMapResponse { map: Some(shard_map_proto(self.registry.map())) }))
    }

    async fn node_status(
        &self,
        _req: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        let map = self.registry.map();
        let me = map.node(self.registry.node_id());
        let shards = self
            .registry
            .shards()
            .iter()
            .map(|shard| {
                let m = shard.metrics();
                let progress = m
                    .replication
                    .as_ref()
                    .map(|r| {
                        r.iter()
                            .map(|(id, matched)| ReplicaProgress {
                                node_id: *id,
                                matched_index: matched.map_or(0, |l| l.index),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ShardStatus {
                    shard_id: shard.id,
                    role: role(m.state) as i32,
                    term: m.current_term,
                    leader_id: m.current_leader,
                    last_log_index: m.last_log_index.unwrap_or(0),
                    committed_index: m.local_committed.map_or(0, |l| l.index),
                    applied_index: m.last_applied.map_or(0, |l| l.index),
                    first_log_index: m.purged.map_or(0, |l| l.index + 1),
                    snapshot_index: m.snapshot.map_or(0, |l| l.index),
                    voters: m.membership_config.voter_ids().collect(),
                    progress,
                    fault: shard.fault().unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(NodeStatusResponse {
            node: me.map(|n| NodeInfo { id: n.id, addr: n.addr.clone(), weight: n.weight }),
            map: Some(shard_map_proto(map)),
            shards,
        }))
    }

    async fn shard_checksum(
        &self,
        req: Request<ShardChecksumRequest>,
    ) -> Result<Response<ShardChecksumResponse>, Status> {
        let shard_id = req.into_inner().shard_id;
        let shard = self.registry.shard(shard_id)?;
        let reader = shard.reader.clone();
        let sum = tokio::task::spawn_blocking(move || reader.checksum())
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        Ok(Response::new(ShardChecksumResponse {
            shard_id,
            applied_index: sum.applied_index,
            checksum: sum.crc32,
            key_count: sum.keys,
        }))
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let req = req.into_inner();
        let shard = self.registry.shard(req.shard_id)?;
        let m = shard.metrics();
        if m.state != ServerState::Leader {
            let leader = m.current_leader.and_then(|id| {
                m.membership_config.membership().get_node(&id).map(|n| (id, n.addr.clone()))
            });
            return Err(NodeError::NotLeader { shard: shard.id, leader }.into());
        }
        if !m.membership_config.voter_ids().any(|v| v == req.to_node_id) {
            return Err(NodeError::invalid(
                "to_node_id",
                format!("node {} is not a voter of shard {}", req.to_node_id, shard.id),
            )
            .into());
        }
        shard
            .raft
            .trigger()
            .transfer_leader(req.to_node_id)
            .await
            .map_err(|e| NodeError::ShardUnavailable { shard: shard.id, reason: e.to_string() })?;
        Ok(Response::new(TransferLeaderResponse {}))
    }

    async fn trigger_snapshot(
        &self,
        req: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        let req = req.into_inner();
        let shard = self.registry.shard(req.shard_id)?;
        let applied = shard.metrics().last_applied.map_or(0, |l| l.index);
        let unavailable = |e: &dyn std::fmt::Display| NodeError::ShardUnavailable {
            shard: shard.id,
            reason: e.to_string(),
        };
        shard.raft.trigger().snapshot().await.map_err(|e| unavailable(&e))?;
        let m = shard
            .raft
            .wait(Some(SNAPSHOT_WAIT))
            .metrics(move |m| m.snapshot.is_some_and(|s| s.index >= applied), "snapshot built")
            .await
            .map_err(|e| unavailable(&e))?;
        let snapshot_index = m.snapshot.map_or(0, |s| s.index);
        if req.purge_log {
            shard.raft.trigger().purge_log(snapshot_index).await.map_err(|e| unavailable(&e))?;
        }
        Ok(Response::new(TriggerSnapshotResponse { snapshot_index }))
    }
}
