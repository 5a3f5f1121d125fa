//! The node at run time: its identity, the replicas it runs, and the cluster state it follows.
//!
//! Built once the node has an identity and shared by every service. Replicas come and go
//! while the node runs (moves add and remove them), so the shard table is behind a lock that
//! is only held to look up or swap an `Arc` (never across an await); creating and destroying
//! replicas are serialized by one async lock, and the set of replicas is written to the data
//! directory before a group is created and after one is destroyed (see
//! [`crate::identity`]).
//!
//! The shard map clients route by is rebuilt from each newer cluster state (see
//! `ClusterState::shard_map`). Before the first state arrives it is the founding placement (on
//! founding members) or empty (on a node that just joined), at epoch 0, so any map from the
//! meta group replaces it.

use crate::error::NodeError;
use crate::identity::{self, Identity};
use crate::leader_clock::LeaderClock;
use crate::network::{PeerPool, ShardNetwork};
use crate::read_pool::ReadPool;
use crate::shard::Shard;
use ringkv_placement::cluster::{ClusterState, META_SHARD, shard_name};
use ringkv_placement::{Layout, NodeId, PlacementError, ShardId, ShardMap};
use ringkv_proto::internal::MetaRecord;
use ringkv_storage::NodeStorage;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How long a destroyed replica's Raft group may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ShardRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    identity: Identity,
    advertise_addr: String,
    storage: NodeStorage,
    raft_config: Arc<openraft::Config>,
    pool: PeerPool,
    read_pool: ReadPool,
    map: RwLock<Arc<ShardMap>>,
    state: RwLock<Option<Arc<ClusterState>>>,
    shards: RwLock<HashMap<ShardId, Arc<Shard>>>,
    /// The meta leader's address as a node that holds no meta replica last found it.
    meta_leader: Mutex<Option<String>>,
    lifecycle: tokio::sync::Mutex<()>,
    /// Random per process start (see `crate::quiesce`).
    boot_id: u64,
    peers: crate::quiesce::PeerLiveness,
    /// Sleeps begun by any replica here: the pinger recomputes the peers it watches only when
    /// this moved (see `Pinger::refresh_watched`).
    sleeps_begun: Arc<std::sync::atomic::AtomicU64>,
    /// Set once the node is shutting down (see `crate::handoff`): not ready, and it refuses
    /// leaderships offered to it.
    stopping: std::sync::atomic::AtomicBool,
    /// Set when every group is being stopped: open Raft streams end then (see `stopped`).
    stopped: tokio::sync::watch::Sender<bool>,
}

impl ShardRegistry {
    pub fn new(
        identity: Identity,
        advertise_addr: String,
        storage: NodeStorage,
        raft_config: Arc<openraft::Config>,
        pool: PeerPool,
    ) -> Result<Self, PlacementError> {
        let map = initial_map(&identity)?;
        let dead_after = Duration::from_millis(raft_config.election_timeout_max);
        Ok(ShardRegistry {
            inner: Arc::new(Inner {
                identity,
                advertise_addr,
                storage,
                raft_config,
                pool,
                read_pool: ReadPool::for_this_machine(),
                map: RwLock::new(Arc::new(map)),
                state: RwLock::new(None),
                shards: RwLock::new(HashMap::new()),
                meta_leader: Mutex::new(None),
                lifecycle: tokio::sync::Mutex::new(()),
                boot_id: rand::random(),
                // A peer silent for the longest election timeout is taken for dead: a sleeping
                // group's failover then takes about as long as an awake group's.
                peers: crate::quiesce::PeerLiveness::new(dead_after),
                sleeps_begun: Arc::default(),
                stopping: std::sync::atomic::AtomicBool::new(false),
                stopped: tokio::sync::watch::Sender::new(false),
            }),
        })
    }

    /// What this node's pings know of its peers (see `crate::quiesce`).
    pub fn peers(&self) -> &crate::quiesce::PeerLiveness {
        &self.inner.peers
    }

    /// How many sleeps replicas here have begun (see `Pinger::refresh_watched`).
    pub fn sleeps_begun(&self) -> u64 {
        self.inner.sleeps_begun.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn raft_config(&self) -> &openraft::Config {
        &self.inner.raft_config
    }

    /// Marks the node as shutting down (for good: a node never stops stopping).
    pub fn set_stopping(&self) {
        self.inner.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Random per process start: peers see a restart as a new value.
    pub fn boot_id(&self) -> u64 {
        self.inner.boot_id
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.identity.node_id
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner.identity.cluster_id
    }

    pub fn name(&self) -> &str {
        &self.inner.identity.name
    }

    pub fn advertise_addr(&self) -> &str {
        &self.inner.advertise_addr
    }

    pub fn layout(&self) -> Layout {
        self.inner.identity.layout
    }

    pub fn identity(&self) -> Identity {
        self.inner.identity.clone()
    }

    pub fn pool(&self) -> &PeerPool {
        &self.inner.pool
    }

    pub fn storage(&self) -> &NodeStorage {
        &self.inner.storage
    }

    /// The shard map this node routes by.
    pub fn map(&self) -> Arc<ShardMap> {
        self.inner.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The newest cluster state this node has, if it has heard one.
    pub fn state(&self) -> Option<Arc<ClusterState>> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs `state` if it is newer than the one the node has (and stores its records so a
    /// restart begins from them). Returns whether it was installed.
    pub async fn install_state(&self, state: ClusterState, records: &[MetaRecord]) -> bool {
        if state.cluster.cluster_id != self.cluster_id() {
            tracing::error!(
                theirs = state.cluster.cluster_id,
                "refusing cluster records of another cluster"
            );
            return false;
        }
        let map = match state.shard_map() {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                tracing::error!(error = %e, "the cluster's records give no valid shard map");
                None
            }
        };
        {
            let mut cur = self.inner.state.write().unwrap_or_else(|p| p.into_inner());
            if cur.as_ref().is_some_and(|c| c.version >= state.version) {
                return false;
            }
            *cur = Some(Arc::new(state));
            if let Some(map) = map {
                *self.inner.map.write().unwrap_or_else(|p| p.into_inner()) = map;
            }
        }
        if !records.is_empty()
            && let Err(e) = identity::store_cluster_records(&self.inner.storage, records).await
        {
            tracing::warn!(error = %e, "storing the cluster records");
        }
        true
    }

    /// Whether a move of `shard` is under way (leader balancing leaves such shards alone: the
    /// driver moves their leadership itself).
    pub fn moving(&self, shard: ShardId) -> bool {
        self.state().is_some_and(|s| s.moves.contains_key(&shard))
    }

    fn lookup(&self, shard: ShardId) -> Option<Arc<Shard>> {
        self.inner.shards.read().unwrap_or_else(|p| p.into_inner()).get(&shard).cloned()
    }

    /// The local replica of data shard `shard`, or `WrongShard`.
    pub fn shard(&self, shard: ShardId) -> Result<Arc<Shard>, NodeError> {
        match self.lookup(shard).filter(|_| shard != META_SHARD) {
            Some(s) => Ok(s),
            None => Err(NodeError::WrongShard { shard, epoch: self.map().epoch() }),
        }
    }

    /// The local replica of any group, the meta group included.
    pub fn replica(&self, shard: ShardId) -> Result<Arc<Shard>, NodeError> {
        self.lookup(shard).ok_or(NodeError::WrongShard { shard, epoch: self.map().epoch() })
    }

    /// The local replica of the shard that owns `key`.
    pub fn shard_for_key(&self, key: &[u8]) -> Result<Arc<Shard>, NodeError> {
        self.shard(self.map().shard_of(key))
    }

    /// For the Raft transport: errors are plain strings sent back to the peer.
    pub fn raft(&self, shard: ShardId) -> Result<Arc<Shard>, String> {
        self.lookup(shard).ok_or_else(|| {
            format!("node {} holds no replica of shard {}", self.node_id(), shard_name(shard))
        })
    }

    /// Local data shards in id order (the meta group is not a data shard).
    pub fn shards(&self) -> Vec<Arc<Shard>> {
        let mut v: Vec<_> = self
            .inner
            .shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.id != META_SHARD)
            .cloned()
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Every local replica, the meta group's last.
    pub fn replicas(&self) -> Vec<Arc<Shard>> {
        let mut v: Vec<_> =
            self.inner.shards.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }

    pub fn replica_ids(&self) -> BTreeSet<ShardId> {
        self.inner.shards.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    /// Where the meta group's leader is, as far as this node knows: from its own meta replica,
    /// else the address that last answered a sync.
    pub fn meta_leader_hint(&self) -> Option<(NodeId, String)> {
        if let Some(meta) = self.lookup(META_SHARD) {
            let m = meta.metrics();
            let id = m.current_leader?;
            let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
            return Some((id, addr));
        }
        let addr = self.inner.meta_leader.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        Some((0, addr))
    }

    pub fn set_meta_leader_addr(&self, addr: Option<String>) {
        *self.inner.meta_leader.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    pub fn tombstone(&self, shard: ShardId) -> std::io::Result<Option<u64>> {
        self.inner.storage.tombstone(shard)
    }

    /// Opens (creating it empty if it has no data) this node's replica of `shard`.
    pub async fn open_replica(&self, shard: ShardId) -> Result<Arc<Shard>, NodeError> {
        let _one_at_a_time = self.inner.lifecycle.lock().await;
        if let Some(s) = self.lookup(shard) {
            return Ok(s);
        }
        let storage = &self.inner.storage;
        let io =
            |e: std::io::Error| NodeError::Internal(format!("shard {}: {e}", shard_name(shard)));
        let mut set = identity::replicas(storage).map_err(io)?;
        if set.insert(shard) {
            identity::store_replicas(storage, &set).await.map_err(io)?;
        }
        let sm = storage.state_machine(shard).map_err(io)?;
        let leader_wakes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let clock = Arc::new(LeaderClock::new(sm.applied_watch()));
        let network = ShardNetwork {
            shard,
            from: self.node_id(),
            cluster_id: self.cluster_id(),
            pool: self.inner.pool.clone(),
            leader_wakes: leader_wakes.clone(),
            clock: clock.clone(),
        };
        let raft = openraft::Raft::new(
            self.node_id(),
            self.inner.raft_config.clone(),
            network,
            storage.log_store(shard),
            sm.clone(),
        )
        .await
        .map_err(|e| {
            NodeError::Internal(format!("starting Raft for shard {}: {e}", shard_name(shard)))
        })?;
        clock.attach(raft.metrics());
        let replica = Arc::new(Shard::new(
            shard,
            self.node_id(),
            raft,
            sm,
            storage.reader(shard),
            self.inner.read_pool.clone(),
            crate::quiesce::Quiet::new(leader_wakes, self.inner.sleeps_begun.clone()),
        ));
        self.inner.shards.write().unwrap_or_else(|p| p.into_inner()).insert(shard, replica.clone());
        Ok(replica)
    }

    /// Stops this node's replica of `shard` and deletes its data, leaving a tombstone at
    /// `config_epoch` (see `NodeStorage::destroy_shard`).
    pub async fn destroy_replica(
        &self,
        shard: ShardId,
        config_epoch: u64,
    ) -> Result<(), NodeError> {
        let _one_at_a_time = self.inner.lifecycle.lock().await;
        let Some(replica) =
            self.inner.shards.write().unwrap_or_else(|p| p.into_inner()).remove(&shard)
        else {
            return Ok(());
        };
        match tokio::time::timeout(STOP_TIMEOUT, replica.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(shard = %shard_name(shard), error = %e, "raft shutdown"),
            Err(_) => tracing::warn!(shard = %shard_name(shard), "raft shutdown timed out"),
        }
        let storage = &self.inner.storage;
        let io =
            |e: std::io::Error| NodeError::Internal(format!("shard {}: {e}", shard_name(shard)));
        storage.destroy_shard(shard, config_epoch).await.map_err(io)?;
        let mut set = identity::replicas(storage).map_err(io)?;
        if set.remove(&shard) {
            identity::store_replicas(storage, &set).await.map_err(io)?;
        }
        Ok(())
    }

    /// Stops every group (shutdown).
    /// Resolves once [`ShardRegistry::stop_all`] has begun. Long-lived Raft streams from
    /// peers end then: an idle one would otherwise stay open and hold the server's graceful
    /// shutdown until its deadline.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.stopped.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    pub async fn stop_all(&self) {
        self.inner.stopped.send_replace(true);
        let stops = self.replicas().into_iter().map(|shard| async move {
            match tokio::time::timeout(STOP_TIMEOUT, shard.raft.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(shard = shard.id, error = %e, "raft shutdown"),
                Err(_) => tracing::warn!(shard = shard.id, "raft shutdown timed out"),
            }
        });
        futures::future::join_all(stops).await;
    }
}

/// The map before the first cluster state: the founding placement at epoch 0 on founding
/// members, no replicas anywhere on a node that joined.
fn initial_map(identity: &Identity) -> Result<ShardMap, PlacementError> {
    if !identity.founders.is_empty() {
        return ShardMap::new(identity.layout, identity.founders.clone(), 0);
    }
    let empty = vec![Vec::new(); identity.layout.shard_count as usize];
    ShardMap::with_replicas(identity.layout, Vec::new(), empty, 0)
}
