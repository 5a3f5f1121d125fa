//! How a node with an empty data directory finds its cluster, or founds one.
//!
//! An empty node has no identity (see [`crate::identity`]). Before it can hold any replica it
//! must learn whether its cluster exists, and the answer must never be "no" by mistake: a node
//! that re-founded a cluster, or rejoined under its old identity, would vote as a member that
//! has forgotten its votes and its log, and could elect a leader that lacks acknowledged
//! writes. So, in rounds:
//!
//! 1. It asks every seed (the initial members and the `--join` addresses) who they are.
//! 2. If any answers with a cluster, it **joins** that cluster under a **new** identity, handed
//!    out by the meta group (`Join`), even if its name is an initial member's. The identity it
//!    may have had before is retired, and its replicas re-created elsewhere.
//! 3. Otherwise only the **founder** — the initial member with the lowest id — may found a
//!    cluster, and only when a quorum of initial members (itself included) answer that they
//!    are empty and configured alike (same members, same layout). It waits, a few seconds at
//!    most, for the rest; then it stores a random cluster id and, with [`complete_founding`],
//!    sends each empty member its identity (`Bootstrap`), which the member stores before it
//!    answers and accepts only once. It forms its groups once a quorum has stored the id.
//! 4. Every other initial member waits for that message, or for a cluster to join.
//!
//! Why a wiped pod, restarted with the StatefulSet's unchanged environment, cannot found the
//! cluster again: its peers still hold their data, so they answer with the cluster, and the
//! pod joins it as a new node; and founding needs a quorum of *empty* members. Why two
//! clusters cannot form from one member list: one founder, and a member stores one cluster id.
//!
//! What it does not survive: losing a quorum of initial members' disks in the few seconds of
//! founding (the cluster then cannot form and must be started again on empty directories).

use crate::config::NodeConfig;
use crate::identity::{self, Identity};
use crate::node::StartError;
use crate::transport::Transport;
use ringkv_placement::{Layout, NodeId, NodeSpec};
use ringkv_proto::internal::membership_client::MembershipClient;
use ringkv_proto::internal::membership_server::{Membership, MembershipServer};
use ringkv_proto::internal::{
    AddLearnerRequest, BootstrapReply, BootstrapRequest, ChangeVotersRequest, GroupReply,
    GroupRequest, HelloReply, HelloRequest, JoinReply, JoinRequest, MemberSpec,
    RemoveLearnerRequest, StepReply, SyncReply, SyncRequest,
};
use ringkv_storage::NodeStorage;
use ringkv_tls::{ClientAuth, Dialer};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// How long one peer has to answer (connect included); an unreachable one is retried next
/// round, so a node starting inside a partition is held back, not stopped.
pub const ASK_TIMEOUT: Duration = Duration::from_millis(1_000);
const ROUND_INTERVAL: Duration = Duration::from_millis(300);
/// How long the founder waits for the remaining members once a quorum has answered: a member
/// that misses founding joins later under a new identity, which costs replica moves.
const FOUNDING_GRACE: Duration = Duration::from_secs(5);
/// How often a waiting node says what it waits for.
const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// NOT_LEADER hints followed per join attempt.
const HOPS_MAX: usize = 8;

/// A majority of `n`.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// A client for a peer's membership service (lazy connect, bounded by [`ASK_TIMEOUT`]).
/// A membership client for the node advertised at `addr`, at its peer port (`addr` plus the
/// cluster's `raft_port_offset`; see [`crate::peer_addr`]).
pub fn membership_client(
    addr: &str,
    raft_port_offset: u16,
    dialer: &Dialer,
) -> Result<MembershipClient<Channel>, String> {
    let peer = crate::peer_addr::peer_addr(addr, raft_port_offset)?;
    let endpoint = dialer
        .endpoint(&peer)
        .map_err(|e| format!("bad address {peer}: {e}"))?
        .connect_timeout(ASK_TIMEOUT)
        .tcp_nodelay(true);
    Ok(MembershipClient::new(dialer.lazy(&endpoint)))
}

pub fn member_specs(members: &[NodeSpec]) -> Vec<MemberSpec> {
    members
        .iter()
        .map(|m| MemberSpec { id: m.id, addr: m.addr.clone(), weight: m.weight })
        .collect()
}

fn node_specs(members: &[MemberSpec]) -> Vec<NodeSpec> {
    members.iter().map(|m| NodeSpec { id: m.id, addr: m.addr.clone(), weight: m.weight }).collect()
}

/// Whether a peer's member list and layout are this node's.
fn same_config(
    mine: &[NodeSpec],
    layout: Layout,
    theirs: &[MemberSpec],
    shard_count: u32,
    rf: u32,
) -> bool {
    let mut a = member_specs(mine);
    let mut b = theirs.to_vec();
    a.sort_by_key(|m| m.id);
    b.sort_by_key(|m| m.id);
    a == b && layout.shard_count == shard_count && layout.replication_factor == rf
}

/// Asks every address "who are you?", at once; addresses that fail are left out.
pub async fn hello_all(
    cfg: &NodeConfig,
    dialer: &Dialer,
    addrs: &[String],
) -> Vec<(String, HelloReply)> {
    let req = HelloRequest {
        name: cfg.name.clone(),
        addr: cfg.advertise_addr.clone(),
        members: member_specs(&cfg.members),
        shard_count: cfg.layout.shard_count,
        replication_factor: cfg.layout.replication_factor,
    };
    let asks = addrs.iter().map(|addr| {
        let req = req.clone();
        async move {
            let mut client = membership_client(addr, cfg.raft_port_offset, dialer).ok()?;
            let reply = tokio::time::timeout(ASK_TIMEOUT, client.hello(req)).await.ok()?.ok()?;
            Some((addr.clone(), reply.into_inner()))
        }
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

/// Seeds: the other initial members and the `--join` addresses.
fn seeds(cfg: &NodeConfig) -> Vec<String> {
    let mut out: Vec<String> = cfg
        .members
        .iter()
        .map(|m| m.addr.clone())
        .chain(cfg.join.iter().cloned())
        .filter(|a| *a != cfg.advertise_addr)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What the discovery server has been told: a founder's `Bootstrap`.
#[derive(Default)]
struct Accepted {
    identity: Mutex<Option<Identity>>,
    notify: Notify,
}

/// The membership service of a node without an identity: it answers who it is and takes a
/// founder's `Bootstrap`; everything else waits for the node to belong to a cluster.
struct DiscoveryService {
    name: String,
    initial_id: Option<NodeId>,
    members: Vec<NodeSpec>,
    layout: Layout,
    storage: NodeStorage,
    accepted: Arc<Accepted>,
}

fn not_yet() -> Status {
    Status::unavailable(
        "this node has no identity yet: it is still finding or founding its cluster",
    )
}

#[tonic::async_trait]
impl Membership for DiscoveryService {
    async fn hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let req = req.into_inner();
        let accepted = self.accepted.identity.lock().await.clone();
        Ok(Response::new(HelloReply {
            cluster_id: accepted.as_ref().map_or(0, |i| i.cluster_id),
            node_id: accepted.as_ref().map_or(0, |i| i.node_id),
            name: self.name.clone(),
            same_config: same_config(
                &self.members,
                self.layout,
                &req.members,
                req.shard_count,
                req.replication_factor,
            ),
            known: Vec::new(),
        }))
    }

    async fn bootstrap(
        &self,
        req: Request<BootstrapRequest>,
    ) -> Result<Response<BootstrapReply>, Status> {
        let req = req.into_inner();
        let mut accepted = self.accepted.identity.lock().await;
        if let Some(id) = accepted.as_ref() {
            let same = id.cluster_id == req.cluster_id && id.node_id == req.node_id;
            return Ok(Response::new(BootstrapReply {
                accepted: same,
                cluster_id: id.cluster_id,
                reason: if same { String::new() } else { "already in another cluster".into() },
            }));
        }
        let refuse = |reason: String| {
            Ok(Response::new(BootstrapReply { accepted: false, cluster_id: 0, reason }))
        };
        if req.cluster_id == 0 {
            return refuse("cluster id 0 is reserved".into());
        }
        if Some(req.node_id) != self.initial_id {
            return refuse(format!(
                "this node ({}) is not initial member {}",
                self.name, req.node_id
            ));
        }
        if !same_config(
            &self.members,
            self.layout,
            &req.members,
            req.shard_count,
            req.replication_factor,
        ) {
            return refuse("member list or layout differs from this node's".into());
        }
        let identity = Identity {
            cluster_id: req.cluster_id,
            node_id: req.node_id,
            name: self.name.clone(),
            layout: self.layout,
            founders: node_specs(&req.members),
            founding_acks: None,
            formed: false,
        };
        // Durable before the answer: the founder counts this member towards its quorum.
        identity::store(&self.storage, &identity)
            .await
            .map_err(|e| Status::internal(format!("storing the identity: {e}")))?;
        tracing::info!(
            cluster = req.cluster_id,
            node = req.node_id,
            "accepted the founder's cluster"
        );
        *accepted = Some(identity);
        self.accepted.notify.notify_one();
        Ok(Response::new(BootstrapReply {
            accepted: true,
            cluster_id: req.cluster_id,
            reason: String::new(),
        }))
    }

    async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        Err(not_yet())
    }
    async fn sync(&self, _: Request<SyncRequest>) -> Result<Response<SyncReply>, Status> {
        Err(not_yet())
    }
    async fn group(&self, _: Request<GroupRequest>) -> Result<Response<GroupReply>, Status> {
        Err(not_yet())
    }
    async fn add_learner(
        &self,
        _: Request<AddLearnerRequest>,
    ) -> Result<Response<StepReply>, Status> {
        Err(not_yet())
    }
    async fn change_voters(
        &self,
        _: Request<ChangeVotersRequest>,
    ) -> Result<Response<StepReply>, Status> {
        Err(not_yet())
    }
    async fn remove_learner(
        &self,
        _: Request<RemoveLearnerRequest>,
    ) -> Result<Response<StepReply>, Status> {
        Err(not_yet())
    }
}

/// Finds or founds this node's cluster, serving the discovery half of the membership
/// protocol on `listener` meanwhile. Returns the stored identity.
pub async fn run(
    cfg: &NodeConfig,
    transport: &Transport,
    storage: &NodeStorage,
    listener: &Arc<TcpListener>,
    auth: ClientAuth,
) -> Result<Identity, StartError> {
    let accepted = Arc::new(Accepted::default());
    let service = DiscoveryService {
        name: cfg.name.clone(),
        initial_id: cfg.initial_id,
        members: cfg.members.clone(),
        layout: cfg.layout,
        storage: storage.clone(),
        accepted: accepted.clone(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = tonic::transport::Server::builder().add_service(
        MembershipServer::with_interceptor(service, transport.peer_check("Membership")),
    );
    let stopped = async {
        let _ = stopped.await;
    };
    let mut server = tokio::spawn(transport.serve(router, listener.clone(), auth, stopped));
    let result = discover(cfg, transport.dialer(), storage, &accepted).await;
    let _ = stop.send(());
    // Peers' open connections would hold a graceful stop; they reconnect to the next server.
    if tokio::time::timeout(Duration::from_secs(2), &mut server).await.is_err() {
        server.abort();
    }
    result
}

async fn discover(
    cfg: &NodeConfig,
    dialer: &Dialer,
    storage: &NodeStorage,
    accepted: &Accepted,
) -> Result<Identity, StartError> {
    let seeds = seeds(cfg);
    let founder =
        cfg.initial_id.is_some() && cfg.initial_id == cfg.members.iter().map(|m| m.id).min();
    let mut quorum_since: Option<Instant> = None;
    let mut last_report = Instant::now();
    let mut waiting_for;
    tracing::info!(
        name = %cfg.name,
        founder,
        seeds = seeds.len(),
        "empty data directory: looking for this node's cluster"
    );
    loop {
        if let Some(id) = accepted.identity.lock().await.clone() {
            return Ok(id);
        }
        let replies = hello_all(cfg, dialer, &seeds).await;
        if let Some((_, known)) = replies.iter().find(|(_, r)| r.cluster_id != 0) {
            let mut addrs: Vec<String> = known.known.iter().map(|m| m.addr.clone()).collect();
            addrs.extend(replies.iter().filter(|(_, r)| r.cluster_id != 0).map(|(a, _)| a.clone()));
            match join(cfg, dialer, known.cluster_id, &addrs).await {
                Ok(identity) => {
                    tracing::info!(
                        cluster = format!("{:#x}", identity.cluster_id),
                        node = identity.node_id,
                        "joined the cluster under a new identity"
                    );
                    return adopt(cfg, storage, accepted, identity).await;
                }
                Err(e) => waiting_for = format!("to join cluster {:#x}: {e}", known.cluster_id),
            }
        } else if founder {
            let by_addr: BTreeMap<&str, NodeId> =
                cfg.members.iter().map(|m| (m.addr.as_str(), m.id)).collect();
            let mut empty = BTreeSet::new();
            for (addr, r) in &replies {
                match by_addr.get(addr.as_str()) {
                    Some(&id) if r.same_config => {
                        empty.insert(id);
                    }
                    Some(&id) => tracing::warn!(
                        member = id,
                        %addr,
                        "this initial member has a different member list or layout: it cannot found a cluster with this node"
                    ),
                    None => {}
                }
            }
            let answered = empty.len() + 1;
            let need = quorum(cfg.members.len());
            if answered >= need {
                let since = *quorum_since.get_or_insert_with(Instant::now);
                if answered == cfg.members.len() || since.elapsed() >= FOUNDING_GRACE {
                    let identity = Identity {
                        cluster_id: rand::random::<u64>().max(1),
                        node_id: cfg.initial_id.unwrap_or(1),
                        name: cfg.name.clone(),
                        layout: cfg.layout,
                        founders: cfg.members.clone(),
                        founding_acks: Some(BTreeSet::from([cfg.initial_id.unwrap_or(1)])),
                        formed: false,
                    };
                    tracing::info!(
                        cluster = format!("{:#x}", identity.cluster_id),
                        members = answered,
                        "founding a new cluster"
                    );
                    return adopt(cfg, storage, accepted, identity).await;
                }
                waiting_for = format!(
                    "the remaining initial members ({answered} of {} answered; founding without them in {:?})",
                    cfg.members.len(),
                    FOUNDING_GRACE.saturating_sub(since.elapsed())
                );
            } else {
                quorum_since = None;
                waiting_for = format!(
                    "a quorum of empty initial members to found the cluster ({answered} of {need} needed)"
                );
            }
        } else if cfg.initial_id.is_some() {
            waiting_for =
                "the founder (the initial member with the lowest id) to found the cluster".into();
        } else {
            waiting_for = "a seed (--join) that belongs to a cluster".into();
        }
        if last_report.elapsed() >= REPORT_INTERVAL {
            tracing::info!("waiting for {waiting_for}");
            last_report = Instant::now();
        }
        let _ = tokio::time::timeout(ROUND_INTERVAL, accepted.notify.notified()).await;
    }
}

/// Stores `identity` unless a founder's `Bootstrap` was accepted first (then that one stands:
/// the founder has counted this node). Under the same lock as `Bootstrap`, so a node can never
/// end up with two identities.
async fn adopt(
    cfg: &NodeConfig,
    storage: &NodeStorage,
    accepted: &Accepted,
    identity: Identity,
) -> Result<Identity, StartError> {
    let mut slot = accepted.identity.lock().await;
    if let Some(first) = slot.clone() {
        return Ok(first);
    }
    identity::store(storage, &identity).await.map_err(|source| StartError::Storage {
        path: cfg.data_dir.display().to_string(),
        source,
    })?;
    *slot = Some(identity.clone());
    Ok(identity)
}

/// Asks the meta group (through any of `addrs`, following NOT_LEADER hints) for a new
/// identity in `cluster_id`.
pub async fn join(
    cfg: &NodeConfig,
    dialer: &Dialer,
    cluster_id: u64,
    addrs: &[String],
) -> Result<Identity, String> {
    let req = JoinRequest {
        cluster_id,
        name: cfg.name.clone(),
        addr: cfg.advertise_addr.clone(),
        weight: cfg.weight,
        zone: cfg.zone.clone(),
    };
    let mut queue: Vec<String> = addrs.to_vec();
    queue.dedup();
    let mut errors = Vec::new();
    let mut hops = 0;
    while let Some(addr) = queue.pop() {
        hops += 1;
        if hops > HOPS_MAX + addrs.len() {
            break;
        }
        let Ok(mut client) = membership_client(&addr, cfg.raft_port_offset, dialer) else {
            continue;
        };
        let mut request = Request::new(req.clone());
        request.set_timeout(ASK_TIMEOUT * 5);
        match client.join(request).await {
            Ok(reply) => {
                let r = reply.into_inner();
                return Ok(Identity {
                    cluster_id,
                    node_id: r.node_id,
                    name: cfg.name.clone(),
                    layout: Layout {
                        shard_count: r.shard_count,
                        replication_factor: r.replication_factor,
                        vnodes_per_shard: r.vnodes_per_shard,
                    },
                    founders: Vec::new(),
                    founding_acks: None,
                    formed: true,
                });
            }
            Err(status) => {
                if let Some(leader) = crate::error::leader_addr_hint(&status) {
                    if leader != addr && !queue.contains(&leader) {
                        queue.push(leader);
                    }
                    continue;
                }
                // A refusal (a live node holds the name, another cluster) is final for this
                // round; anything else may be a node that is not the leader or not up.
                if matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition
                        | tonic::Code::AlreadyExists
                        | tonic::Code::InvalidArgument
                ) {
                    return Err(format!("{addr}: {}", status.message()));
                }
                errors.push(format!("{addr}: {}", status.message()));
            }
        }
    }
    Err(if errors.is_empty() { "no seed answered".into() } else { errors.join("; ") })
}

/// The founder's second half of founding: send each empty initial member its identity until a
/// quorum has stored the cluster id (members that had stored it before, or answer with it,
/// count). Returns the identity with the founding finished.
pub async fn complete_founding(
    cfg: &NodeConfig,
    dialer: &Dialer,
    storage: &NodeStorage,
    mut identity: Identity,
) -> Result<Identity, StartError> {
    let Some(mut acks) = identity.founding_acks.clone() else { return Ok(identity) };
    let members = identity.founders.clone();
    let need = quorum(members.len());
    let mut last_report = Instant::now();
    loop {
        let pending: Vec<&NodeSpec> = members.iter().filter(|m| !acks.contains(&m.id)).collect();
        let addrs: Vec<String> = pending.iter().map(|m| m.addr.clone()).collect();
        let replies = hello_all(cfg, dialer, &addrs).await;
        for (addr, reply) in replies {
            let Some(m) = pending.iter().find(|m| m.addr == addr) else { continue };
            if reply.cluster_id == identity.cluster_id && reply.node_id == m.id {
                acks.insert(m.id);
                continue;
            }
            if reply.cluster_id != 0 || !reply.same_config {
                continue;
            }
            let req = BootstrapRequest {
                cluster_id: identity.cluster_id,
                node_id: m.id,
                members: member_specs(&members),
                shard_count: identity.layout.shard_count,
                replication_factor: identity.layout.replication_factor,
                vnodes_per_shard: identity.layout.vnodes_per_shard,
            };
            let Ok(mut client) = membership_client(&addr, cfg.raft_port_offset, dialer) else {
                continue;
            };
            match tokio::time::timeout(ASK_TIMEOUT * 5, client.bootstrap(req)).await {
                Ok(Ok(r)) if r.get_ref().accepted => {
                    acks.insert(m.id);
                }
                Ok(Ok(r)) => {
                    tracing::warn!(member = m.id, reason = %r.get_ref().reason, "member refused the cluster")
                }
                _ => {}
            }
        }
        identity.founding_acks = Some(acks.clone());
        if acks.len() >= need {
            // Members that have not stored the id by now join later under new identities.
            identity.founding_acks = None;
        }
        identity::store(storage, &identity).await.map_err(|source| StartError::Storage {
            path: cfg.data_dir.display().to_string(),
            source,
        })?;
        if identity.founding_acks.is_none() {
            tracing::info!(
                cluster = format!("{:#x}", identity.cluster_id),
                members = acks.len(),
                "cluster founded"
            );
            return Ok(identity);
        }
        if last_report.elapsed() >= REPORT_INTERVAL {
            tracing::info!(
                stored = acks.len(),
                need,
                "founding: waiting for initial members to store the cluster id"
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(ROUND_INTERVAL).await;
    }
}
