//! Starting and stopping a node.
//!
//! Start-up, in order:
//! 1. open storage and bind the listener;
//! 2. if the data directory holds no identity, find or found the cluster
//!    ([`crate::discovery`]), serving only the membership discovery calls meanwhile;
//! 3. reopen every replica this node holds (the set is in the data directory), and on a
//!    founding member create its initial replicas; start the cluster state it last saw;
//! 4. start the gRPC server (KV, Streams, Admin, Membership, the internal Raft transport,
//!    health; with a `raft_port_offset`, Membership and Raft on a second listener that only
//!    peers need to reach, see [`crate::peer_addr`]) and `/metrics`, and the background loops (sync with the meta group and
//!    reconcile, the placement driver, leader balancing, retention);
//! 5. on a founding member: finish founding and initialize the initial groups, once (see
//!    [`crate::bootstrap`]).
//!
//! Shutdown (SIGTERM or the handle): stop accepting requests, shut every Raft group down
//! (which stops replication and lets in-flight storage work finish), then drop storage.

use crate::admin_service::AdminService;
use crate::config::NodeConfig;
use crate::driver::{Driver, DriverConfig};
use crate::identity;
use crate::kv_service::KvService;
use crate::membership_service::MembershipService;
use crate::metrics::DriverMetrics;
use crate::metrics::NodeMetrics;
use crate::network::PeerPool;
use crate::raft_service::RaftService;
use crate::registry::ShardRegistry;
use crate::streams_service::StreamsService;
use crate::sync::Syncer;
use crate::transport::Transport;
use crate::validate::GRPC_MESSAGE_BYTES_MAX;
use futures::FutureExt as _;
use openraft::SnapshotPolicy;
use ringkv_placement::PlacementError;
use ringkv_placement::cluster::ClusterState;
use ringkv_placement::planner::Limits;
use ringkv_proto::internal::membership_server::MembershipServer;
use ringkv_proto::internal::raft_server::RaftServer;
use ringkv_proto::v1::admin_server::AdminServer;
use ringkv_proto::v1::kv_server::KvServer;
use ringkv_proto::v1::streams_server::StreamsServer;
use ringkv_storage::{NodeStorage, StorageMetrics};
use ringkv_tls::ClientAuth;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

const METRICS_REFRESH: Duration = Duration::from_secs(1);
/// How long the server may drain after every Raft group has stopped. Nothing useful is left
/// in flight by then (a request still open can only fail), but a peer may hold an idle
/// stream open for ever; waiting longer only delays a rolling restart.
const SERVER_DRAIN_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid placement: {0}")]
    Placement(#[from] PlacementError),
    #[error("storage at {path}: {source}")]
    Storage { path: String, source: std::io::Error },
    #[error("{0}")]
    LayoutMismatch(String),
    #[error("invalid raft settings: {0}")]
    RaftConfig(String),
    #[error("cannot start Raft for shard {shard}: {reason}")]
    Raft { shard: u64, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] ringkv_tls::TlsError),
    #[error("authorization: {0}")]
    Auth(#[from] ringkv_auth::AuthError),
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// How long a SIGTERM may spend handing leaderships off (`shutdown_handoff_ms`).
    pub handoff_ms: u64,
    pub registry: ShardRegistry,
    pub driver: Arc<Driver>,
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
        self.registry.stop_all().await;
        match tokio::time::timeout(SERVER_DRAIN_MAX, &mut self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => {
                tracing::info!("gRPC server did not drain in time; closing remaining connections");
                self.server.abort();
            }
        }
    }

    /// Marks the node stopping and moves its leaderships to other replicas, for at most
    /// `timeout` (see [`crate::handoff`]). Call before [`NodeHandle::shutdown`].
    pub async fn hand_off(&self, timeout: Duration) -> crate::handoff::HandOff {
        crate::handoff::hand_off_leaders(&self.registry, timeout).await
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

/// How long after a replication round a follower goes without a separate heartbeat.
///
/// An acknowledged append proves what a heartbeat proves (the leader is alive, the follower
/// is current, the lease holds), so a busy group needs no heartbeats at all: with this set,
/// openraft skips a heartbeat to a follower that acknowledged anything sent within the last
/// interval. One heartbeat interval, or less where the election timeout is too tight for it:
/// a suppressed heartbeat goes out up to `heartbeat + this + one tick` after the last message,
/// and that gap must stay below the shortest election timeout (0 turns suppression off).
fn heartbeat_min_interval_ms(heartbeat_ms: u64, election_min_ms: u64) -> u64 {
    // openraft's tick, at which heartbeats go out: 13/64 of the heartbeat interval.
    let tick_ms = (heartbeat_ms * 13 / 64).max(1);
    election_min_ms.saturating_sub(heartbeat_ms + tick_ms + 1).min(heartbeat_ms)
}

fn raft_config(cfg: &NodeConfig) -> Result<Arc<openraft::Config>, StartError> {
    let t = cfg.raft;
    let c = openraft::Config {
        cluster_name: "ringkv".into(),
        heartbeat_interval: t.heartbeat_interval_ms,
        heartbeat_min_interval: Some(heartbeat_min_interval_ms(
            t.heartbeat_interval_ms,
            t.election_timeout_min_ms,
        )),
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
    let storage_err =
        |source| StartError::Storage { path: cfg.data_dir.display().to_string(), source };
    let storage_metrics = StorageMetrics::default();
    let storage = NodeStorage::open(&cfg.data_dir, storage_metrics.clone()).map_err(storage_err)?;
    let (transport, tls_watcher) =
        Transport::load(cfg.tls.as_ref(), Duration::from_millis(cfg.tls_reload_interval_ms))?;
    // Only nodes (and routers) of the cluster hold a certificate of its CA: a port of their
    // own can demand one in the handshake; a shared port cannot (clients need none).
    let peer_auth = match cfg.raft_port_offset {
        0 => ClientAuth::Optional,
        _ => ClientAuth::Required,
    };
    let listener = Arc::new(
        TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| StartError::Bind { addr: cfg.listen, source })?,
    );
    let grpc_addr =
        listener.local_addr().map_err(|source| StartError::Bind { addr: cfg.listen, source })?;
    // Peers' services (Raft, membership) on a port of their own, when configured.
    let peer_listener = match cfg.raft_port_offset {
        0 => None,
        offset => {
            let mut addr = cfg.listen;
            addr.set_port(cfg.listen.port().saturating_add(offset));
            Some(Arc::new(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ))
        }
    };

    let mut identity = match identity::load(&storage).map_err(storage_err)? {
        Some(id) => id,
        None => {
            let peers_reach = peer_listener.as_ref().unwrap_or(&listener);
            crate::discovery::run(&cfg, &transport, &storage, peers_reach, peer_auth).await?
        }
    };
    if cfg.layout_explicit && identity.layout != cfg.layout {
        return Err(StartError::LayoutMismatch(format!(
            "data directory {} belongs to node {} of cluster {:#x} with layout {:?}, but this start asks for layout {:?}; \
             start with the original settings (a cluster's layout is fixed when it is founded), \
             or on an empty data directory to join as a new node",
            cfg.data_dir.display(),
            identity.node_id,
            identity.cluster_id,
            identity.layout,
            cfg.layout
        )));
    }
    tracing::info!(
        cluster = format!("{:#x}", identity.cluster_id),
        node = identity.node_id,
        name = %identity.name,
        "starting"
    );

    let raft_cfg = raft_config(&cfg)?;
    let pool = PeerPool::new(
        cfg.membership.snapshot_send_bytes_per_sec,
        cfg.raft_port_offset,
        transport.dialer().clone(),
        cfg.raft.packed_replication,
    );
    let registry = ShardRegistry::new(
        identity.clone(),
        cfg.advertise_addr.clone(),
        storage.clone(),
        raft_cfg,
        pool.clone(),
    )?;
    let cached = identity::cluster_records(&storage).map_err(storage_err)?;
    if let Ok(Some(state)) =
        ClusterState::from_records(cached.iter().map(|(k, v, r)| (k.as_slice(), v.as_slice(), *r)))
    {
        registry.install_state(state, &[]).await;
    }
    let mut local = identity::replicas(&storage).map_err(storage_err)?;
    if !identity.formed && !identity.founders.is_empty() {
        local.extend(crate::bootstrap::initial_replicas(&identity)?);
    }
    for shard in local {
        registry
            .open_replica(shard)
            .await
            .map_err(|e| StartError::Raft { shard, reason: e.to_string() })?;
    }

    let auth = match &cfg.auth_policy {
        Some(path) => {
            ringkv_auth::Auth::load(path, transport.tls().cloned(), ringkv_auth::Side::Node)?
        }
        None => ringkv_auth::Auth::disabled(),
    };
    let auth_watcher = auth.watch(Duration::from_millis(cfg.tls_reload_interval_ms));
    let metrics = NodeMetrics::new();
    metrics.with_registry(|r| storage_metrics.register(r));
    let driver_metrics = DriverMetrics::default();
    metrics.with_registry(|r| {
        driver_metrics.register(r);
        r.sub_registry_with_prefix("ringkv").register(
            "snapshot_bytes_sent",
            "Snapshot bytes sent to peers (replica moves and lagging followers)",
            pool.snapshot_bytes_sent.clone(),
        );
        r.sub_registry_with_prefix("ringkv").register(
            "raft_frame_messages",
            "Raft messages per packed frame sent to a peer (how many shards' messages share one)",
            pool.packers.metrics.frame_messages.clone(),
        );
        ringkv_tls::register_metrics(r.sub_registry_with_prefix("ringkv"), transport.tls());
        auth.register(r.sub_registry_with_prefix("ringkv"));
    });
    let m = &cfg.membership;
    let driver = Arc::new(Driver::new(
        registry.clone(),
        DriverConfig {
            down_after: Duration::from_millis(m.down_after_ms),
            move_timeout: Duration::from_millis(m.move_timeout_ms),
            live_window: Duration::from_millis(m.sync_interval_ms * 6).max(Duration::from_secs(3)),
            limits: Limits { moves_max: m.moves_max, moves_per_node_max: m.moves_per_node_max },
            ..DriverConfig::default()
        },
        driver_metrics,
    ));

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let health = crate::health::Health::new(registry.clone(), cfg.raft.ready_staleness_max_ms);
    // Not ready until the first check says so (a restarted node is still catching up).
    for service in ["", "ringkv.v1.KV", "ringkv.v1.Streams"] {
        health_reporter.set_service_status(service, tonic_health::ServingStatus::NotServing).await;
    }
    let a = cfg.admission;
    let admission = crate::admission::Admission::new(
        a.inflight_requests_max,
        a.inflight_bytes_max,
        Duration::from_millis(a.retry_after_ms),
    );
    metrics.with_registry(|r| admission.register(r));
    let clients = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Every client RPC a hop of its caller's trace (the peer services are not traced:
        // Raft's messages are many and belong to no one request).
        .layer(ringkv_trace::TraceLayer)
        .add_service(health_service)
        .add_service(InterceptedService::new(
            KvServer::new(KvService::new(registry.clone(), metrics.clone(), admission.clone()))
                .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX),
            auth.interceptor(),
        ))
        .add_service(InterceptedService::new(
            StreamsServer::new(StreamsService::new(
                registry.clone(),
                metrics.clone(),
                admission.clone(),
            ))
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX),
            auth.interceptor(),
        ))
        .add_service(AdminServer::with_interceptor(
            AdminService::new(registry.clone(), driver.clone()),
            crate::admin_service::admin_check(registry.cluster_id(), &auth),
        ));
    let membership = MembershipServer::with_interceptor(
        MembershipService::new(registry.clone(), driver.clone()),
        transport.peer_check("Membership"),
    );
    let raft = InterceptedService::new(
        RaftServer::new(RaftService::new(registry.clone()))
            .max_decoding_message_size(crate::wire::PAYLOAD_BYTES_MAX)
            .max_encoding_message_size(crate::wire::PAYLOAD_BYTES_MAX),
        transport.peer_check("Raft"),
    );
    let shutdown = async move {
        let _ = shutdown_rx.await;
    }
    .shared();
    let server = match peer_listener {
        None => {
            let router = clients.add_service(membership).add_service(raft);
            tokio::spawn(transport.serve(router, listener, ClientAuth::Optional, shutdown))
        }
        Some(peer_listener) => {
            let clients =
                transport.serve(clients, listener, ClientAuth::Optional, shutdown.clone());
            // Admin too: the placement driver moves leaderships through it (it is
            // cluster-checked, and this port is for nodes only).
            let peers = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(AdminServer::with_interceptor(
                    AdminService::new(registry.clone(), driver.clone()),
                    crate::admin_service::admin_check(registry.cluster_id(), &auth),
                ))
                .add_service(membership)
                .add_service(raft);
            let peers = transport.serve(peers, peer_listener, ClientAuth::Required, shutdown);
            tokio::spawn(async move {
                let (c, p) = tokio::join!(clients, peers);
                c.and(p)
            })
        }
    };

    let mut background = vec![health.clone().spawn_reporter(health_reporter, metrics.clone())];
    background.extend(tls_watcher);
    background.extend(auth_watcher);
    let metrics_addr = match cfg.metrics_listen {
        Some(addr) => {
            let (addr, task) = crate::http::serve(addr, metrics.clone(), health)
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
                // In-memory property reads, microseconds: fine on the runtime.
                registry.storage().refresh_metrics();
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
    if cfg.raft.quiesce_after_ms > 0 {
        let t = cfg.raft;
        let heartbeat = Duration::from_millis(t.heartbeat_interval_ms);
        let election_min = Duration::from_millis(t.election_timeout_min_ms);
        background.push(crate::quiesce::spawn(
            // Each ping may take half the silence after which a peer is taken for dead.
            crate::quiesce::Pinger::new(registry.clone(), election_min / 2, heartbeat),
            crate::quiesce::Quiescer::new(
                registry.clone(),
                Duration::from_millis(t.quiesce_after_ms),
                election_min,
                election_min / 2,
            ),
            heartbeat,
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

    if identity.founding_acks.is_some() {
        identity =
            crate::discovery::complete_founding(&cfg, transport.dialer(), &storage, identity)
                .await?;
    }
    if !identity.formed && !identity.founders.is_empty() {
        let founding = crate::bootstrap::form_groups(&registry, &identity).await?;
        if founding.is_empty() {
            identity.formed = true;
            identity::store(&storage, &identity).await.map_err(storage_err)?;
        } else {
            // The groups form in the background, batch by batch; the node serves meanwhile (it
            // must: that is how its peers reach its replicas). Until all have formed,
            // `formed` stays false, so a restart looks at them again.
            let (registry, storage, mut formed) =
                (registry.clone(), storage.clone(), identity.clone());
            let quiesce = cfg.raft.quiesce_after_ms > 0;
            background.push(tokio::spawn(async move {
                founding.run(&registry, &formed, quiesce).await;
                formed.formed = true;
                if let Err(e) = identity::store(&storage, &formed).await {
                    tracing::warn!(error = %e, "recording that the founding shards formed failed");
                }
            }));
        }
    }
    let mut seeds: Vec<String> = cfg.members.iter().map(|m| m.addr.clone()).collect();
    seeds.extend(cfg.join.iter().cloned());
    seeds.extend(identity.founders.iter().map(|m| m.addr.clone()));
    seeds.sort();
    seeds.dedup();
    background.push(
        Syncer::new(
            registry.clone(),
            driver.clone(),
            seeds,
            Duration::from_millis(cfg.membership.sync_interval_ms),
        )
        .spawn(),
    );
    background.push(driver.clone().spawn());
    {
        // Clears the stopping mark a previous process of this node left on its peers.
        let registry = registry.clone();
        tokio::spawn(async move { crate::handoff::announce(&registry, false).await });
    }
    tracing::info!(
        node = registry.node_id(),
        %grpc_addr,
        replicas = registry.replica_ids().len(),
        "node serving"
    );
    Ok(NodeHandle {
        grpc_addr,
        metrics_addr,
        handoff_ms: cfg.raft.shutdown_handoff_ms,
        registry,
        driver,
        shutdown: Some(shutdown_tx),
        server,
        background,
    })
}

#[cfg(test)]
mod tests {
    use super::heartbeat_min_interval_ms;

    fn valid(hb: u64, emin: u64) -> bool {
        let c = openraft::Config {
            heartbeat_interval: hb,
            heartbeat_min_interval: Some(heartbeat_min_interval_ms(hb, emin)),
            election_timeout_min: emin,
            election_timeout_max: emin * 2,
            ..Default::default()
        };
        c.validate().is_ok()
    }

    #[test]
    fn heartbeats_are_suppressed_for_one_interval_where_the_election_timeout_allows() {
        // The defaults (100 ms heartbeats, 500–1,000 ms elections): a full interval.
        assert_eq!(heartbeat_min_interval_ms(100, 500), 100);
        // Tight: 100 + 20 (tick) + x < 201 leaves 80.
        assert_eq!(heartbeat_min_interval_ms(100, 201), 80);
        // Too tight for any suppression: off.
        assert_eq!(heartbeat_min_interval_ms(100, 110), 0);
        // Whatever the config validation in `config.rs` lets through, openraft accepts.
        for hb in [1, 10, 50, 100, 250, 1_000] {
            for emin in [hb * 2 + 1, hb * 3, hb * 5, hb * 10] {
                assert!(valid(hb, emin), "heartbeat {hb} ms, election {emin} ms");
            }
        }
    }
}
