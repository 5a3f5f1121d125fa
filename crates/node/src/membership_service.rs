//! The node-to-node membership service of a node that belongs to a cluster.
//!
//! - `Hello` / `Bootstrap`: what empty nodes ask (see [`crate::discovery`]); a member answers
//!   with its cluster, so an empty node joins it instead of founding another.
//! - `Join` and `Sync` are answered by the meta group's leader only (others reply NOT_LEADER
//!   with the leader they know): joining hands out a new identity, syncing records that the
//!   node is alive and returns the meta records when they changed.
//! - `Group`, `AddLearner`, `ChangeVoters`, `RemoveLearner` are the placement driver's steps,
//!   answered by a shard's leader. Each is idempotent: the driver may repeat any step after a
//!   crash, and asks `Group` again before deciding the next one.
//!
//! Every request carries the cluster id; another cluster's is refused (`WRONG_CLUSTER`).

use crate::driver::Driver;
use crate::error::NodeError;
use crate::registry::ShardRegistry;
use openraft::raft::Precondition;
use openraft::{BasicNode, ChangeMembers};
use ringkv_placement::{NodeId, ShardId};
use ringkv_proto::internal::membership_server::Membership;
use ringkv_proto::internal::{
    AddLearnerRequest, BootstrapReply, BootstrapRequest, ChangeVotersRequest, GroupReply,
    GroupRequest, HelloReply, HelloRequest, JoinReply, JoinRequest, Matched, MemberSpec,
    RemoveLearnerRequest, StepReply, SyncReply, SyncRequest, VoterSet,
};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How long a voter change may take before the driver is told to ask again: two log entries
/// committed by a quorum of both configurations.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct MembershipService {
    registry: ShardRegistry,
    driver: Arc<Driver>,
}

impl MembershipService {
    pub fn new(registry: ShardRegistry, driver: Arc<Driver>) -> Self {
        MembershipService { registry, driver }
    }

    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        let mine = self.registry.cluster_id();
        if cluster_id != mine {
            return Err(NodeError::WrongCluster { expected: mine, got: cluster_id }.into());
        }
        Ok(())
    }

    /// The local replica of `shard` after checking the request's cluster, if it leads, else
    /// NOT_LEADER.
    fn leader_for(
        &self,
        cluster_id: u64,
        shard: ShardId,
    ) -> Result<Arc<crate::shard::Shard>, Status> {
        self.check_cluster(cluster_id)?;
        self.leader_of(shard)
    }

    /// The local replica of `shard` if it leads, else NOT_LEADER.
    fn leader_of(&self, shard: ShardId) -> Result<Arc<crate::shard::Shard>, Status> {
        let s = self.registry.replica(shard).map_err(Status::from)?;
        if !s.is_leader() {
            return Err(s.not_leader().into());
        }
        Ok(s)
    }
}

fn unavailable(shard: ShardId, e: impl std::fmt::Display) -> Status {
    NodeError::ShardUnavailable { shard, reason: e.to_string() }.into()
}

#[tonic::async_trait]
impl Membership for MembershipService {
    async fn hello(&self, _req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let known = match self.registry.state() {
            Some(state) => state
                .nodes
                .values()
                .filter(|n| n.state != ringkv_placement::cluster::NodeState::Removed)
                .map(|n| MemberSpec { id: n.id, addr: n.addr.clone(), weight: n.weight })
                .collect(),
            None => crate::discovery::member_specs(self.registry.map().nodes()),
        };
        Ok(Response::new(HelloReply {
            cluster_id: self.registry.cluster_id(),
            node_id: self.registry.node_id(),
            name: self.registry.name().to_string(),
            same_config: false,
            known,
        }))
    }

    async fn bootstrap(
        &self,
        req: Request<BootstrapRequest>,
    ) -> Result<Response<BootstrapReply>, Status> {
        let req = req.into_inner();
        // The founder repeats a Bootstrap whose answer it lost: same cluster, same identity.
        let same =
            req.cluster_id == self.registry.cluster_id() && req.node_id == self.registry.node_id();
        Ok(Response::new(BootstrapReply {
            accepted: same,
            cluster_id: self.registry.cluster_id(),
            reason: if same { String::new() } else { "this node belongs to a cluster".into() },
        }))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let req = req.into_inner();
        self.check_cluster(req.cluster_id)?;
        let node_id = self.driver.join(&req).await?;
        let layout = self.registry.layout();
        Ok(Response::new(JoinReply {
            node_id,
            shard_count: layout.shard_count,
            replication_factor: layout.replication_factor,
            vnodes_per_shard: layout.vnodes_per_shard,
        }))
    }

    async fn sync(&self, req: Request<SyncRequest>) -> Result<Response<SyncReply>, Status> {
        let req = req.into_inner();
        self.check_cluster(req.cluster_id)?;
        let view = self.driver.sync(req.node_id, &req.name, &req.addr).await?;
        let version = view.state.as_ref().map_or(0, |s| s.version);
        let records = if version > req.known_version { view.records.to_vec() } else { Vec::new() };
        Ok(Response::new(SyncReply { version, records }))
    }

    async fn group(&self, req: Request<GroupRequest>) -> Result<Response<GroupReply>, Status> {
        let req = req.into_inner();
        let shard = self.leader_for(req.cluster_id, req.shard_id)?;
        let m = shard.metrics();
        let membership = m.membership_config.membership();
        let matched = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| Matched {
                        node_id: *id,
                        index: l.as_ref().map_or(0, |l| l.index),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(GroupReply {
            leader_id: self.registry.node_id(),
            voters: membership
                .get_joint_config()
                .iter()
                .map(|set| VoterSet { voters: set.iter().copied().collect() })
                .collect(),
            learners: membership.learner_ids().collect(),
            last_log_index: m.last_log_index.unwrap_or(0),
            matched,
            membership_index: m.membership_config.log_id().as_ref().map_or(0, |l| l.index),
        }))
    }

    async fn add_learner(
        &self,
        req: Request<AddLearnerRequest>,
    ) -> Result<Response<StepReply>, Status> {
        let req = req.into_inner();
        let shard = self.leader_for(req.cluster_id, req.shard_id)?;
        // A membership change is a write: a quiesced leader wakes and renews its lease.
        shard.on_request(true, CHANGE_TIMEOUT).await;
        let m = shard.metrics();
        let membership = m.membership_config.membership();
        if membership.voter_ids().any(|v| v == req.node_id) {
            return Ok(Response::new(StepReply {}));
        }
        if membership.learner_ids().any(|l| l == req.node_id) {
            return Ok(Response::new(StepReply {}));
        }
        // Not blocking: a blocking add waits for the learner to catch up, possibly for ever
        // (openraft#847); the driver polls its progress instead.
        shard
            .raft
            .add_learner(req.node_id, BasicNode { addr: req.addr }, false)
            .await
            .map_err(|e| unavailable(shard.id, e))?;
        tracing::info!(shard = shard.id, learner = req.node_id, "added a learner");
        Ok(Response::new(StepReply {}))
    }

    async fn change_voters(
        &self,
        req: Request<ChangeVotersRequest>,
    ) -> Result<Response<StepReply>, Status> {
        let req = req.into_inner();
        let shard = self.leader_for(req.cluster_id, req.shard_id)?;
        // A membership change is a write: a quiesced leader wakes and renews its lease.
        shard.on_request(true, CHANGE_TIMEOUT).await;
        let m = shard.metrics();
        let voters: BTreeSet<NodeId> = req.voters.iter().copied().collect();
        let config = m.membership_config.membership().get_joint_config().clone();
        if config.len() == 1 && config[0] == voters {
            return Ok(Response::new(StepReply {}));
        }
        let current = *m.membership_config.log_id();
        if current.as_ref().map_or(0, |l| l.index) != req.expected_membership_index {
            return Err(Status::failed_precondition(format!(
                "the membership of shard {} changed since the driver looked (now at index {})",
                req.shard_id,
                current.as_ref().map_or(0, |l| l.index)
            )));
        }
        let change = shard.raft.change_membership_if(
            ChangeMembers::ReplaceAllVoters(voters.clone()),
            false,
            [Precondition::LastMembershipLogId { last_membership_log_id: current }],
        );
        match tokio::time::timeout(CHANGE_TIMEOUT, change).await {
            Err(_) => Err(NodeError::Timeout {
                shard: shard.id,
                what: "membership change",
                waited_ms: CHANGE_TIMEOUT.as_millis() as u64,
            }
            .into()),
            Ok(Err(e)) => Err(unavailable(shard.id, e)),
            Ok(Ok(_)) => {
                tracing::info!(shard = shard.id, ?voters, "changed the voters");
                Ok(Response::new(StepReply {}))
            }
        }
    }

    async fn remove_learner(
        &self,
        req: Request<RemoveLearnerRequest>,
    ) -> Result<Response<StepReply>, Status> {
        let req = req.into_inner();
        let shard = self.leader_for(req.cluster_id, req.shard_id)?;
        // A membership change is a write: a quiesced leader wakes and renews its lease.
        shard.on_request(true, CHANGE_TIMEOUT).await;
        let m = shard.metrics();
        let membership = m.membership_config.membership();
        if !membership.learner_ids().any(|l| l == req.node_id) {
            return Ok(Response::new(StepReply {}));
        }
        shard
            .raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([req.node_id])), false)
            .await
            .map_err(|e| unavailable(shard.id, e))?;
        tracing::info!(shard = shard.id, learner = req.node_id, "removed a learner");
        Ok(Response::new(StepReply {}))
    }
}
