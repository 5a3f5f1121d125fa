//! The server side of the Raft transport: routes each message to its shard's Raft group.
//!
//! Every request names its shard; the node looks the group up in its [`ShardRegistry`] and
//! hands the decoded openraft message to it. Requests for a shard this node does not hold, or
//! that do not decode, are answered with an error reply (never a panic), which the sender's
//! openraft treats as a network error and retries with backoff.
//!
//! Incoming snapshots are written chunk by chunk to a file in the shard's snapshot directory,
//! each chunk's CRC32 checked as it arrives, and only a complete, verified file is handed to
//! openraft to install.

use crate::registry::ShardRegistry;
use crate::shard::Shard;
use crate::wire;
use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use ringkv_proto::internal::raft_server::Raft as RaftRpc;
use ringkv_proto::internal::{
    PackedFrame, PingReply, PingRequest, QuiesceReply, QuiesceRequest, RaftReply, RaftRequest,
    SnapshotChunk, raft_reply,
};
use ringkv_storage::type_config::{SnapshotMeta, Vote};
use ringkv_storage::{SnapshotFile, TypeConfig};
use serde::Serialize;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

/// Requests of one replication stream whose arrival is remembered until replied to (openraft
/// keeps far fewer in flight).
const STREAM_ARRIVALS_MAX: usize = 4096;

/// Largest snapshot accepted from a peer, so a runaway sender cannot fill the disk.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 << 30;

#[derive(Clone, Debug)]
pub struct RaftService {
    registry: ShardRegistry,
}

impl RaftService {
    pub fn new(registry: ShardRegistry) -> Self {
        RaftService { registry }
    }

    /// Resolves when the node stops.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.registry.stopped()
    }

    /// A message of another cluster, or for an identity this node does not have, is refused:
    /// an identity that lost its data and was replaced may live at the same address, and must
    /// never answer (least of all vote) for the old one.
    fn addressed_here(&self, cluster_id: u64, to_node_id: u64) -> Result<(), String> {
        if cluster_id != self.registry.cluster_id() {
            return Err(format!(
                "node {} belongs to cluster {:#x}, not {cluster_id:#x}",
                self.registry.node_id(),
                self.registry.cluster_id()
            ));
        }
        if to_node_id != self.registry.node_id() {
            return Err(format!(
                "this is node {}, not node {to_node_id} (that identity is gone from this address)",
                self.registry.node_id()
            ));
        }
        Ok(())
    }

    /// The shard a request is for, if it is addressed here.
    fn target(&self, req: &RaftRequest) -> Result<Arc<Shard>, String> {
        self.addressed_here(req.cluster_id, req.to_node_id)?;
        self.registry.raft(req.shard_id)
    }

    /// The shard a vote request is for, if this replica may vote: only a replica whose own
    /// membership names it a voter. A replica created empty for a move (its log may have been
    /// deleted before, when it was removed) would otherwise grant any candidate its vote on
    /// an empty log, and a candidate with an old configuration that still counts it could win
    /// without the entries this replica once held. Once the leader has sent it a membership
    /// that makes it a voter, its log is newer than any such candidate's. (A founding replica
    /// that has never held a log may vote: see `crate::bootstrap`.)
    fn voter(&self, req: &RaftRequest) -> Result<Arc<Shard>, String> {
        let shard = self.target(req)?;
        if !shard.may_vote() {
            return Err(format!(
                "node {} is not a voter of shard {} in its own membership",
                self.registry.node_id(),
                ringkv_placement::cluster::shard_name(req.shard_id)
            ));
        }
        Ok(shard)
    }
}

impl RaftService {
    /// Why a sleeping replica refuses a pre-vote, if it does: it is the leader, which is
    /// alive by definition (it wakes and heartbeats, so the candidate hears from it), or a
    /// follower whose leader's node answers pings (see `PeerLiveness::alive`).
    async fn sleeping_refusal(&self, shard: &Shard) -> Option<String> {
        if shard.quiet.is_quiet_leader() {
            shard.wake_leader().await;
            return Some(format!("node {} leads this shard and is alive", self.registry.node_id()));
        }
        let leader = shard.quiet.quiet_leader()?;
        self.registry
            .peers()
            .alive(leader)
            .then(|| format!("the leader, node {leader}, answers pings: it is alive"))
    }
}

impl RaftService {
    /// Handles one AppendEntries request (a heartbeat, or a unary call).
    pub(crate) async fn append_one(&self, req: RaftRequest) -> RaftReply {
        match (self.target(&req), wire::decode::<AppendEntriesRequest<TypeConfig>>(&req.payload)) {
            (Ok(shard), Ok(rpc)) => {
                shard.note_leader_contact(req.sent_at_unix_ms, &rpc);
                let handled = shard.raft.append_entries(rpc).await;
                shard.after_append(req.from_node_id, req.leader_wakes);
                reply(handled)
            }
            (Err(e), _) | (_, Err(e)) => err(e),
        }
    }

    /// One replication session of the shard `first` is for: `first` and `rest` in order, the
    /// replies in the same order. It ends at the first request of another shard or that does
    /// not decode, when the group stops, or when the node stops; the leader then opens a new
    /// one. `Err` when the first request is not for a shard here.
    pub(crate) fn append_session(
        &self,
        first: RaftRequest,
        rest: impl futures::Stream<Item = RaftRequest> + Send + 'static,
    ) -> Result<futures::stream::BoxStream<'static, RaftReply>, String> {
        let shard = self.target(&first)?;
        let shard_id = first.shard_id;
        let contact = shard.clone();
        // Each request's sender and wake stamp, consumed by its reply (replies come in request
        // order): see `Shard::after_append`. Bounded in case a session ends without replying
        // to everything.
        let arrivals = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let arrived = arrivals.clone();
        let requests = futures::stream::once(futures::future::ready(first))
            .chain(rest)
            .take_while(move |m| futures::future::ready(m.shard_id == shard_id))
            .map(move |m| {
                let rpc = wire::decode::<AppendEntriesRequest<TypeConfig>>(&m.payload).ok()?;
                contact.note_leader_contact(m.sent_at_unix_ms, &rpc);
                let mut q = arrived.lock().unwrap_or_else(|p| p.into_inner());
                if q.len() >= STREAM_ARRIVALS_MAX {
                    q.pop_front();
                }
                q.push_back((m.from_node_id, m.leader_wakes));
                Some(rpc)
            })
            // Skipping an undecodable request would leave the leader waiting for its reply.
            .take_while(|rpc| futures::future::ready(rpc.is_some()))
            .filter_map(futures::future::ready);
        let woken = shard.clone();
        let mut stopped = false;
        let replies = shard
            .raft
            .stream_append(requests)
            .map(move |r| {
                // A reply means its request was handled.
                let arrival = arrivals.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                if let Some((from, wakes)) = arrival {
                    woken.after_append(from, wakes);
                }
                r
            })
            // A stopped group answers nothing more: end the stream after saying so, or the
            // leader would keep it open and hold up this node's shutdown.
            .take_while(move |r| {
                let go_on = !stopped;
                stopped |= r.is_err();
                futures::future::ready(go_on)
            })
            .map(|r| match r {
                Ok(result) => ok(&result),
                Err(fatal) => err(fatal),
            })
            .take_until(self.registry.stopped());
        Ok(replies.boxed())
    }
}

fn ok<T: Serialize>(value: &T) -> RaftReply {
    match wire::encode(value) {
        Ok(p) => RaftReply { result: Some(raft_reply::Result::Payload(p.into())) },
        Err(e) => err(e),
    }
}

/// The reply for an openraft handler's result.
fn reply<T: Serialize, E: std::fmt::Display>(result: Result<T, E>) -> RaftReply {
    match result {
        Ok(resp) => ok(&resp),
        Err(e) => err(e),
    }
}

fn err(msg: impl ToString) -> RaftReply {
    RaftReply { result: Some(raft_reply::Result::Error(msg.to_string())) }
}

type ReplyStream = Pin<Box<dyn futures::Stream<Item = Result<RaftReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        Ok(Response::new(self.append_one(req.into_inner()).await))
    }

    type StreamAppendStream = ReplyStream;

    async fn stream_append(
        &self,
        req: Request<Streaming<RaftRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let mut inbound = req.into_inner();
        // A leader opens a stream before it has anything to send (an idle group), so the
        // first message may never come: stop waiting when the node stops.
        let first = tokio::select! {
            first = inbound.message() => first?,
            () = self.registry.stopped() => None,
        };
        let Some(first) = first else {
            return Ok(Response::new(Box::pin(futures::stream::empty())));
        };
        // A transport error ends the session's input like its end.
        let rest = inbound
            .take_while(|m| futures::future::ready(m.is_ok()))
            .filter_map(|m| futures::future::ready(m.ok()));
        let replies = self.append_session(first, rest).map_err(Status::failed_precondition)?;
        Ok(Response::new(Box::pin(replies.map(Ok))))
    }

    type PackedStream = crate::packed_server::PackedStream;

    async fn packed(
        &self,
        req: Request<Streaming<PackedFrame>>,
    ) -> Result<Response<Self::PackedStream>, Status> {
        // A node with packing off behaves as one from before it: senders fall back to the
        // per-shard streams (and a mixed cluster is tested that way).
        if !self.registry.pool().packed() {
            return Err(Status::unimplemented("packed replication is off on this node"));
        }
        Ok(Response::new(crate::packed_server::serve(self.clone(), req.into_inner())))
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let reply = match (self.voter(&req), wire::decode::<VoteRequest<TypeConfig>>(&req.payload))
        {
            (Ok(shard), Ok(rpc)) => {
                let sleeps = shard.quiet.sleeps();
                let handled = shard.raft.vote(rpc).await;
                shard.after_raft_message(sleeps);
                reply(handled)
            }
            (Err(e), _) | (_, Err(e)) => err(e),
        };
        Ok(Response::new(reply))
    }

    async fn pre_vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let reply = match (self.voter(&req), wire::decode::<VoteRequest<TypeConfig>>(&req.payload))
        {
            (Ok(shard), Ok(rpc)) => {
                if let Some(refused) = self.sleeping_refusal(&shard).await {
                    return Ok(Response::new(err(refused)));
                }
                let sleeps = shard.quiet.sleeps();
                let handled = shard.raft.pre_vote(rpc).await;
                shard.after_raft_message(sleeps);
                reply(handled)
            }
            (Err(e), _) | (_, Err(e)) => err(e),
        };
        Ok(Response::new(reply))
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let reply = match (
            self.voter(&req),
            wire::decode::<TransferLeaderRequest<TypeConfig>>(&req.payload),
        ) {
            (Ok(shard), Ok(rpc)) => {
                let sleeps = shard.quiet.sleeps();
                let handled = shard.raft.handle_transfer_leader(rpc).await;
                shard.after_raft_message(sleeps);
                reply(handled)
            }
            (Err(e), _) | (_, Err(e)) => err(e),
        };
        Ok(Response::new(reply))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let mut inbound = req.into_inner();
        let Some(first) = inbound.message().await? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        self.addressed_here(first.cluster_id, first.to_node_id)
            .map_err(Status::failed_precondition)?;
        let shard = self.registry.raft(first.shard_id).map_err(Status::failed_precondition)?;
        let (vote, meta): (Vote, SnapshotMeta) = wire::decode(&first.header)
            .map_err(|e| Status::invalid_argument(format!("snapshot header: {e}")))?;
        let path = shard.state_machine.incoming_snapshot_path();
        let received = receive_file(&path, first.shard_id, &mut inbound).await;
        if let Err(e) = received {
            // A partial file must not linger; a new transfer starts from scratch.
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        let snapshot = openraft::storage::Snapshot { meta, snapshot: SnapshotFile { path } };
        let sleeps = shard.quiet.sleeps();
        let installed = shard.raft.install_full_snapshot(vote, snapshot).await;
        shard.after_raft_message(sleeps);
        let reply = match installed {
            Ok(resp) => ok(&resp),
            Err(e) => err(e),
        };
        Ok(Response::new(reply))
    }

    async fn quiesce(
        &self,
        req: Request<QuiesceRequest>,
    ) -> Result<Response<QuiesceReply>, Status> {
        let req = req.into_inner();
        let accepted = self.addressed_here(req.cluster_id, req.to_node_id).and_then(|()| {
            let shard = self.registry.raft(req.shard_id)?;
            crate::quiesce::accept(&self.registry, &shard, &req)
        });
        Ok(Response::new(match accepted {
            Ok(()) => QuiesceReply { accepted: true, reason: String::new() },
            Err(reason) => QuiesceReply { accepted: false, reason },
        }))
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        let req = req.into_inner();
        self.addressed_here(req.cluster_id, req.to_node_id).map_err(Status::failed_precondition)?;
        self.registry.peers().mark_stopping(req.from_node_id, req.stopping);
        if req.boot_id != 0 && self.registry.peers().pinged_by(req.from_node_id, req.boot_id) {
            // The sender restarted: what sleeps on it must wake, as when an answer says so.
            let (registry, peer) = (self.registry.clone(), req.from_node_id);
            tokio::spawn(async move { crate::quiesce::wake_sleeping_on(&registry, peer).await });
        }
        Ok(Response::new(PingReply { boot_id: self.registry.boot_id() }))
    }
}

async fn receive_file(
    path: &std::path::Path,
    shard: u64,
    inbound: &mut Streaming<SnapshotChunk>,
) -> Result<(), Status> {
    let io = |e: std::io::Error| Status::internal(format!("writing snapshot: {e}"));
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut total = 0u64;
    while let Some(chunk) = inbound.message().await? {
        if chunk.shard_id != shard {
            return Err(Status::invalid_argument("snapshot chunk of another shard"));
        }
        if crc32fast::hash(&chunk.data) != chunk.crc32 {
            return Err(Status::data_loss(format!(
                "snapshot chunk at byte {total} failed its CRC32"
            )));
        }
        total += chunk.data.len() as u64;
        if total > SNAPSHOT_BYTES_MAX {
            return Err(Status::resource_exhausted(format!(
                "snapshot exceeds {SNAPSHOT_BYTES_MAX} bytes"
            )));
        }
        file.write_all(&chunk.data).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    Ok(())
}
