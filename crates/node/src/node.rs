//! Starting and stopping a node.
//!
//! Start-up, in order:
//! 1. compute the shard map from the configuration (pure, the same on every node);
//! 2. open storage; on the first start record the layout and members, on later starts refuse
//!    to run if they changed (that would silently re-place every key on old data);
//! 3. create one openraft instance per local shard; each recovers its log, vote and applied
//!    state from disk;
//! 4. start the gRPC server (KV, Streams, Admin, the internal Raft transport, health) and
//!    `/metrics`, and the background loops (leader balancing, retention);
//! 5. initialize every shard that has never been initialized, with the same membership on
//!    every replica. openraft accepts identical initialization on several nodes, and refuses it
//!    on any node that already has a log or a vote, so restarts, and nodes starting in any
//!    order, never re-bootstrap a group or split it.
//!
//! Shutdown (SIGTERM or the handle): stop accepting requests, shut every Raft group down
//! (which stops replication and lets in-flight storage work finish), then drop storage.

use crate::admin_service::AdminService;
use crate::config::NodeConfig;
use crate::kv_service::KvService;
use crate::metrics::NodeMetrics;
use crate::network::{PeerPool, ShardNetwork};
use crate::raft_service::RaftService;
use crate::registry::ShardRegistry;
use crate::shard::Shard;
use crate::streams_service::StreamsService;
use crate::validate::GRPC_MESSAGE_BYTES_MAX;
use openraft::{BasicNode, SnapshotPolicy};
use ringkv_placement::{Layout, NodeSpec, PlacementError, ShardMap};
use ringkv_proto::internal::raft_server::RaftServer;
use ringkv_proto::v1::admin_server::AdminServer;
use ringkv_proto::v1::kv_server::KvServer;
use ringkv_proto::v1::streams_server::StreamsServer;
use ringkv_storage::{NodeStorage, StorageMetrics};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The first shard map's epoch.
pub const INITIAL_EPOCH: u64 = 1;
const CLUSTER_RECORD: &str = "cluster";
const METRICS_REFRESH: Duration = Duration::from_secs(1);
/// Each shutdown step (Raft groups, then the server) gets at most this long.
const SHUTDOWN_STEP_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid placement: {0}")]
    Placement(#[from] PlacementError),
    #[error("storage at {path}: {source}")]
    Storage { path: String, source: std::io::Error },
    #[error("{0}")]
    ClusterMismatch(String),
    #[error("invalid raft settings: {0}")]
    RaftConfig(String),
    #[error("cannot start Raft for shard {shard}: {reason}")]
    Raft { shard: u64, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// What the first start recorded in the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClusterRecord {
    node_id: u64,
    layout: Layout,
    members: Vec<NodeSpec>,
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub registry: ShardRegistry,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
}

impl NodeHandle {
    /// Stops serving, shuts every shard down, and waits for it (bounded: a peer holding a
    /// replication stream open must not keep the process alive).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for task in &self.background {
            task.abort();
        }
        // Stopping the groups ends their replication streams in both directions, which is
        // what lets the server's graceful shutdown finish.
        let stops = self.registry.shards().into_iter().map(|shard| async move {
            match tokio::time::timeout(SHUTDOWN_STEP_MAX, shard.raft.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(shard = shard.id, error = %e, "raft shutdown"),
                Err(_) => tracing::warn!(shard = shard.id, "raft shutdown timed out"),
            }
        });
        futures::future::join_all(stops).await;
        match tokio::time::timeout(SHUTDOWN_STEP_MAX, &mut self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => {
                tracing::warn!("gRPC server did not drain in time; closing remaining connections");
                self.server.abort();
            }
        }
    }

    /// Waits until the server stops by itself (it only does on a fatal server error).
    pub async fn wait(&mut self) -> Result<(), String> {
        match (&mut self.server).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn raft_config(cfg: &NodeConfig) -> Result<Arc<openraft::Config>, StartError> {
    let t = cfg.raft;
    let c = openraft::Config {
        cluster_name: "ringkv".into(),
        heartbeat_interval: t.heartbeat_interval_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_after_entries),
        max_in_snapshot_log_to_keep: t.log_entries_kept,
        // Snapshots stream at disk/network speed; the transport applies its own deadline.
        install_snapshot_timeout: 600_000,
        enable_pre_vote: Some(true),
        // The state machine is written without its own fsync (it is replayed from the log), so
        // a restarted leader must win a fresh election instead of resuming blindly.
        enable_leader_restore: Some(false),
        purge_batch_size: 256,
        ..Default::default()
    };
    c.validate().map(Arc::new).map_err(|e| StartError::RaftConfig(e.to_string()))
}

/// Starts a node and returns once it is serving.
pub async fn start(cfg: NodeConfig) -> Result<NodeHandle, StartError> {
    let map = ShardMap::new(cfg.layout, cfg.members.clone(), INITIAL_EPOCH)?;
    let storage_err =
        |source| StartError::Storage { path: cfg.data_dir.display().to_string(), source };
    let storage_metrics = StorageMetrics::default();
    let storage = NodeStorage::open(&cfg.data_dir, storage_metrics.clone()).map_err(storage_err)?;
    let record =
        ClusterRecord { node_id: cfg.node_id, layout: cfg.layout, members: map.nodes().to_vec() };
    match storage.get_record::<ClusterRecord>(CLUSTER_RECORD).map_err(storage_err)? {
        None => storage.put_record(CLUSTER_RECORD, &record).await.map_err(storage_err)?,
        Some(old) if old == record => {}
        Some(old) => {
            return Err(StartError::ClusterMismatch(format!(
                "data directory {} belongs to node {} with layout {:?} and members {:?}, but this start asks for node {} with layout {:?} and members {:?}; \
                 start with the original settings or an empty data directory",
                cfg.data_dir.display(),
                old.node_id,
                old.layout,
                old.members,
                record.node_id,
                record.layout,
                record.members
            )));
        }
    }

    let raft_cfg = raft_config(&cfg)?;
    let pool = PeerPool::default();
    let mut shards = Vec::new();
    for shard_id in map.shards_of_node(cfg.node_id) {
        let sm = storage.state_machine(shard_id).map_err(storage_err)?;
        let network = ShardNetwork { shard: shard_id, from: cfg.node_id, pool: pool.clone() };
        let raft = openraft::Raft::new(
            cfg.node_id,
            raft_cfg.clone(),
            network,
            storage.log_store(shard_id),
            sm.clone(),
        )
        .await
        .map_err(|e| StartError::Raft { shard: shard_id, reason: e.to_string() })?;
        shards.push(Shard::new(shard_id, cfg.node_id, raft, sm, storage.reader(shard_id)));
    }
    let registry = ShardRegistry::new(cfg.node_id, map, shards);

    let metrics = NodeMetrics::new();
    metrics.with_registry(|r| storage_metrics.register(r));

    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| StartError::Bind { addr: cfg.listen, source })?;
    let grpc_addr =
        listener.local_addr().map_err(|source| StartError::Bind { addr: cfg.listen, source })?;
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KvServer<KvService>>().await;
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(
            KvServer::new(KvService::new(registry.clone(), metrics.clone()))
                .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX),
        )
        .add_service(
            StreamsServer::new(StreamsService::new(registry.clone(), metrics.clone()))
                .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX),
        )
        .add_service(AdminServer::new(AdminService::new(registry.clone())))
        .add_service(
            RaftServer::new(RaftService::new(registry.clone()))
                .max_decoding_message_size(crate::wire::PAYLOAD_BYTES_MAX)
                .max_encoding_message_size(crate::wire::PAYLOAD_BYTES_MAX),
        )
        // The builder's `tcp_nodelay` applies only to listeners tonic binds itself; ours must
        // say it again, or small responses wait for a delayed ACK (a 40 ms stall per request).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = shutdown_rx.await;
            },
        );
    let server = tokio::spawn(server);

    let mut background = Vec::new();
    let metrics_addr = match cfg.metrics_listen {
        Some(addr) => {
            let (addr, task) = crate::http::serve_metrics(addr, metrics.clone())
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            background.push(task);
            Some(addr)
        }
        None => None,
    };
    {
        let (metrics, registry) = (metrics.clone(), registry.clone());
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_REFRESH);
            loop {
                tick.tick().await;
                metrics.refresh(&registry);
            }
        }));
    }

    if cfg.raft.leader_balance_interval_ms > 0 {
        background.push(crate::balancer::spawn(
            registry.clone(),
            Duration::from_millis(cfg.raft.leader_balance_interval_ms),
            Duration::from_millis(cfg.raft.election_timeout_min_ms),
        ));
    }

    if cfg.raft.retention_interval_ms > 0 {
        background.push(crate::retention::spawn(
            registry.clone(),
            metrics.clone(),
            Duration::from_millis(cfg.raft.retention_interval_ms),
            cfg.raft.watch_history_revisions,
        ));
    }

    let members: BTreeMap<u64, BasicNode> =
        registry.map().nodes().iter().map(|n| (n.id, BasicNode { addr: n.addr.clone() })).collect();
    for shard in registry.shards() {
        let is_init = shard
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft { shard: shard.id, reason: e.to_string() })?;
        if is_init {
            continue;
        }
        let voters: BTreeMap<u64, BasicNode> = registry
            .map()
            .replicas(shard.id)
            .iter()
            .filter_map(|id| members.get(id).map(|n| (*id, n.clone())))
            .collect();
        match shard.raft.initialize(voters).await {
            Ok(()) => tracing::info!(shard = shard.id, "initialized shard group"),
            // Another start got there first (or a peer's vote arrived): nothing to do.
            Err(openraft::errors::RaftError::APIError(
                openraft::errors::InitializeError::NotAllowed(_),
            )) => {}
            Err(e) => return Err(StartError::Raft { shard: shard.id, reason: e.to_string() }),
        }
    }
    tracing::info!(node = cfg.node_id, %grpc_addr, shards = registry.shards().len(), "node serving");
    Ok(NodeHandle {
        grpc_addr,
        metrics_addr,
        registry,
        shutdown: Some(shutdown_tx),
        server,
        background,
    })
}
