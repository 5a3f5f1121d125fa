//! The public `ringkv.v1.Admin` service: shard map, this node's view of its replicas,
//! per-shard checksums (to compare replicas), leader transfer and on-demand snapshots, and
//! the cluster's membership (list, drain, remove, activate, weight).
//!
//! Membership requests are decided by the placement driver on the meta group's leader. Any
//! node takes them and forwards them there once (marked, so a request that lands on a node
//! that lost the leadership meanwhile gets NOT_LEADER instead of being passed on again).

use crate::driver::{Driver, NodeAction};
use crate::error::{NodeError, storage};
use crate::registry::ShardRegistry;
use openraft::ServerState;
use ringkv_placement::ShardMap;
use ringkv_placement::cluster::{META_SHARD, NodeRecord};
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::admin_server::Admin;
use ringkv_proto::v1::{
    GetShardMapRequest, GetShardMapResponse, ListNodesRequest, ListNodesResponse, MoveInfo,
    NodeInfo, NodeRequest, NodeResponse, NodeStatusRequest, NodeStatusResponse, RaftRole,
    ReplicaProgress, SetNodeWeightRequest, ShardChecksumRequest, ShardChecksumResponse,
    ShardStatus, TransferLeaderRequest, TransferLeaderResponse, TriggerSnapshotRequest,
    TriggerSnapshotResponse,
};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// How long TriggerSnapshot waits for the snapshot to be built.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

/// Marks a membership request a node forwarded to the meta leader.
const FORWARDED: &str = "ringkv-forwarded";
/// How long a forwarded membership request may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct AdminService {
    registry: ShardRegistry,
    driver: Arc<Driver>,
}

impl AdminService {
    pub fn new(registry: ShardRegistry, driver: Arc<Driver>) -> Self {
        AdminService { registry, driver }
    }

    /// The meta leader's admin client, for forwarding (`None`: this node leads, or the request
    /// was forwarded already and must be answered here).
    fn forward_to<T>(&self, req: &Request<T>) -> Result<Option<AdminClient<Channel>>, Status> {
        let leads = self.registry.replica(META_SHARD).is_ok_and(|m| m.is_leader());
        if leads || req.metadata().contains_key(FORWARDED) {
            return Ok(None);
        }
        let Some((_, addr)) = self.registry.meta_leader_hint() else {
            return Err(NodeError::ShardUnavailable {
                shard: META_SHARD,
                reason: "this node does not know the meta group's leader yet; retry".into(),
            }
            .into());
        };
        let dialer = self.registry.pool().dialer();
        let endpoint = dialer
            .endpoint(&addr)
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(1));
        Ok(Some(AdminClient::new(dialer.lazy(&endpoint))))
    }
}

fn forwarded<T>(msg: T, cluster_id: u64) -> Request<T> {
    let mut r = ringkv_proto::with_cluster_id(Request::new(msg), cluster_id);
    r.set_timeout(FORWARD_TIMEOUT);
    r.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    r
}

/// The admin service's interceptor: a call naming another cluster is refused before any
/// handler runs (see [`ringkv_proto::CLUSTER_ID_HEADER`]).
pub fn cluster_check(cluster_id: u64) -> impl tonic::service::Interceptor + Clone {
    move |req: Request<()>| {
        let named = req.metadata().get(ringkv_proto::CLUSTER_ID_HEADER);
        match named.map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok())) {
            None => Ok(req),
            Some(Some(id)) if id == cluster_id => Ok(req),
            Some(got) => {
                Err(NodeError::WrongCluster { expected: cluster_id, got: got.unwrap_or(0) }
                    .to_status())
            }
        }
    }
}

/// The admin service's interceptors: the cluster check, then who the caller is (see
/// `ringkv_auth`; each handler checks the grant its call needs). A call this node forwards to
/// the meta leader was authorized here and arrives there from a node.
pub fn admin_check(
    cluster_id: u64,
    auth: &ringkv_auth::Auth,
) -> impl tonic::service::Interceptor + Clone + use<> {
    use tonic::service::Interceptor as _;
    let mut cluster = cluster_check(cluster_id);
    let mut auth = auth.interceptor();
    move |req: Request<()>| auth.call(cluster.call(req)?)
}

pub fn shard_map_proto(map: &ShardMap) -> ringkv_proto::v1::ShardMap {
    ringkv_proto::shard_map::map_to_proto(map)
}

/// A node's record as the admin API shows it.
pub fn node_info(n: &NodeRecord, replicas: u32) -> NodeInfo {
    NodeInfo {
        id: n.id,
        addr: n.addr.clone(),
        weight: n.weight,
        name: n.name.clone(),
        state: n.state.name().to_string(),
        zone: n.zone.clone(),
        replicas,
        replaced_by: n.replaced_by,
        last_seen_ms: None,
    }
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
        req: Request<GetShardMapRequest>,
    ) -> Result<Response<GetShardMapResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let mut map = shard_map_proto(&self.registry.map());
        map.cluster_id = self.registry.cluster_id();
        if let Some(state) = self.registry.state() {
            for n in &mut map.nodes {
                if let Some(rec) = state.node(n.id) {
                    *n = node_info(rec, 0);
                }
            }
        }
        Ok(Response::new(GetShardMapResponse { map: Some(map) }))
    }

    async fn node_status(
        &self,
        req: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let map = self.registry.map();
        let me = self.registry.state().and_then(|s| s.node(self.registry.node_id()).cloned());
        let shards: Vec<ShardStatus> = self
            .registry
            .replicas()
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
                    quiesced: shard.quiet.is_quiet(),
                }
            })
            .collect();
        let node = match me {
            Some(rec) => node_info(&rec, u32::try_from(shards.len()).unwrap_or(u32::MAX)),
            None => NodeInfo {
                id: self.registry.node_id(),
                addr: self.registry.advertise_addr().to_string(),
                name: self.registry.name().to_string(),
                replicas: u32::try_from(shards.len()).unwrap_or(u32::MAX),
                ..NodeInfo::default()
            },
        };
        let mut map = shard_map_proto(&map);
        map.cluster_id = self.registry.cluster_id();
        Ok(Response::new(NodeStatusResponse { node: Some(node), map: Some(map), shards }))
    }

    async fn shard_checksum(
        &self,
        req: Request<ShardChecksumRequest>,
    ) -> Result<Response<ShardChecksumResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let shard_id = req.into_inner().shard_id;
        let shard = self.registry.replica(shard_id)?;
        let sum = shard.read(|r| r.checksum().map_err(storage(r.shard_id()))).await?;
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
        ringkv_auth::authorize(&req)?;
        let req = req.into_inner();
        let shard = self.registry.replica(req.shard_id)?;
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
        shard.on_request(true, crate::shard::REQUEST_TIMEOUT_DEFAULT).await;
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
        ringkv_auth::authorize(&req)?;
        let req = req.into_inner();
        let shard = self.registry.replica(req.shard_id)?;
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

    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        if let Some(mut leader) = self.forward_to(&req)? {
            return leader
                .list_nodes(forwarded(req.into_inner(), self.registry.cluster_id()))
                .await;
        }
        let state = self.driver.current()?;
        let counts = state.replica_counts();
        let health = self.driver.health(&state);
        Ok(Response::new(ListNodesResponse {
            cluster_id: state.cluster.cluster_id,
            epoch: state.epoch,
            nodes: state
                .nodes
                .values()
                .map(|n| NodeInfo {
                    last_seen_ms: self
                        .driver
                        .last_seen(n.id)
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    ..node_info(n, counts.get(&n.id).copied().unwrap_or(0) as u32)
                })
                .collect(),
            moves: state
                .moves
                .iter()
                .map(|(&shard_id, m)| MoveInfo {
                    shard_id,
                    add: m.add,
                    remove: m.remove,
                    started_unix_ms: m.started_unix_ms,
                    aborting: m.aborting,
                })
                .collect(),
            meta_replicas: state.meta_replicas().to_vec(),
            under_replicated_shards: health.under_replicated,
            shards_without_quorum: health.without_quorum,
            shards_off_target: health.off_target,
        }))
    }

    async fn drain_node(
        &self,
        req: Request<NodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        self.node_action(req, NodeAction::Drain).await
    }

    async fn remove_node(
        &self,
        req: Request<NodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        self.node_action(req, NodeAction::Remove).await
    }

    async fn activate_node(
        &self,
        req: Request<NodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        self.node_action(req, NodeAction::Activate).await
    }

    async fn set_node_weight(
        &self,
        req: Request<SetNodeWeightRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        if let Some(mut leader) = self.forward_to(&req)? {
            return leader
                .set_node_weight(forwarded(req.into_inner(), self.registry.cluster_id()))
                .await;
        }
        let req = req.into_inner();
        let rec = self.driver.set_weight(req.node_id, req.weight).await?;
        Ok(Response::new(NodeResponse { node: Some(node_info(&rec, 0)) }))
    }
}

impl AdminService {
    async fn node_action(
        &self,
        req: Request<NodeRequest>,
        action: NodeAction,
    ) -> Result<Response<NodeResponse>, Status> {
        if let Some(mut leader) = self.forward_to(&req)? {
            let msg = forwarded(req.into_inner(), self.registry.cluster_id());
            return match action {
                NodeAction::Drain => leader.drain_node(msg).await,
                NodeAction::Remove => leader.remove_node(msg).await,
                NodeAction::Activate => leader.activate_node(msg).await,
            };
        }
        let rec = self.driver.node_action(req.into_inner().node_id, action).await?;
        Ok(Response::new(NodeResponse { node: Some(node_info(&rec, 0)) }))
    }
}
