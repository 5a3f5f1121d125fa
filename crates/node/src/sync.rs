//! Following the meta group: every node, every sync interval, tells the meta leader it is
//! alive and gets the cluster's records when they changed; then it makes its local replicas
//! match them.
//!
//! **Finding the meta leader.** The local meta replica knows it when this node holds one;
//! otherwise the node tries the address that answered last, then the meta replicas of the
//! last state it has, then its seeds, following NOT_LEADER hints.
//!
//! **Reconciling.** The records say which groups this node should run: the shards it is a
//! replica of, and those a move is adding it to (see `ClusterState::hosted_by`).
//! - A wanted group that is missing is created empty. It holds no membership of its own; the
//!   shard's leader adds it as a learner and sends it the log or a snapshot. Unless a
//!   tombstone says this node's replica of that shard was removed at a later configuration
//!   epoch than the records show: then the records are older than the removal, and nothing is
//!   created.
//! - A group that is no longer wanted is stopped and its data deleted, leaving a tombstone
//!   with the epoch and the replica's last vote (see `NodeStorage::destroy_shard`). The
//!   records only stop naming a replica after the Raft configuration without it has
//!   committed (or after a learner that never became a voter was removed), so no quorum
//!   still needs it.
//!
//! Records are installed only when newer than the ones the node has, and stored in the data
//! directory, so a restarted node starts from them.

use crate::discovery::membership_client;
use crate::driver::Driver;
use crate::registry::ShardRegistry;
use ringkv_placement::ShardId;
use ringkv_placement::cluster::{ClusterState, NodeState, shard_name};
use ringkv_proto::internal::SyncRequest;
use ringkv_proto::internal::membership_client::MembershipClient;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Sync attempts (addresses tried, hints followed) per round.
const TRIES_PER_ROUND: usize = 8;
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node that cannot reach the meta group says so.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);

pub struct Syncer {
    registry: ShardRegistry,
    driver: Arc<Driver>,
    seeds: Vec<String>,
    interval: Duration,
    channels: HashMap<String, MembershipClient<Channel>>,
    /// The address that answered last.
    last: Option<String>,
    last_ok: Instant,
    last_report: Instant,
    removed_reported: bool,
}

impl Syncer {
    pub fn new(
        registry: ShardRegistry,
        driver: Arc<Driver>,
        seeds: Vec<String>,
        interval: Duration,
    ) -> Self {
        Syncer {
            registry,
            driver,
            seeds,
            interval,
            channels: HashMap::new(),
            last: None,
            last_ok: Instant::now(),
            last_report: Instant::now(),
            removed_reported: false,
        }
    }

    pub fn spawn(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.round().await;
            }
        })
    }

    /// One sync, then a reconcile against the newest records.
    pub async fn round(&mut self) {
        match self.sync().await {
            Ok(()) => self.last_ok = Instant::now(),
            Err(e) => {
                if self.last_report.elapsed() >= REPORT_INTERVAL
                    && self.last_ok.elapsed() >= REPORT_INTERVAL
                {
                    tracing::warn!(
                        error = %e,
                        silent_ms = self.last_ok.elapsed().as_millis() as u64,
                        "cannot reach the meta group's leader"
                    );
                    self.last_report = Instant::now();
                }
            }
        }
        if let Some(state) = self.registry.state() {
            reconcile(&self.registry, &state).await;
            self.report_removed(&state);
        }
    }

    fn client(&mut self, addr: &str) -> Option<MembershipClient<Channel>> {
        if let Some(c) = self.channels.get(addr) {
            return Some(c.clone());
        }
        let pool = self.registry.pool();
        let c = membership_client(addr, pool.raft_port_offset(), pool.dialer()).ok()?;
        self.channels.insert(addr.to_string(), c.clone());
        Some(c)
    }

    fn candidates(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |a: String| {
            if !a.is_empty() && !out.contains(&a) {
                out.push(a);
            }
        };
        if let Some((_, addr)) = self.registry.meta_leader_hint() {
            push(addr);
        }
        if let Some(a) = &self.last {
            push(a.clone());
        }
        if let Some(state) = self.registry.state() {
            for n in state.meta_replicas() {
                if let Some(rec) = state.node(*n) {
                    push(rec.addr.clone());
                }
            }
        }
        for s in &self.seeds {
            push(s.clone());
        }
        out
    }

    async fn sync(&mut self) -> Result<(), String> {
        let me = self.registry.node_id();
        let known = self.registry.state().map_or(0, |s| s.version);
        // The meta leader syncs with itself without the network.
        if let Ok(view) =
            self.driver.sync(me, self.registry.name(), self.registry.advertise_addr()).await
        {
            if let Some(state) = view.state.as_ref().filter(|s| s.version > known) {
                self.registry.install_state((**state).clone(), &view.records).await;
            }
            self.last = None;
            return Ok(());
        }
        let mut queue = self.candidates();
        let mut errors = Vec::new();
        let mut tries = 0;
        while !queue.is_empty() && tries < TRIES_PER_ROUND {
            tries += 1;
            let addr = queue.remove(0);
            if addr == self.registry.advertise_addr() {
                continue;
            }
            let Some(mut client) = self.client(&addr) else { continue };
            let mut req = tonic::Request::new(SyncRequest {
                cluster_id: self.registry.cluster_id(),
                node_id: me,
                known_version: known,
                name: self.registry.name().to_string(),
                addr: self.registry.advertise_addr().to_string(),
            });
            req.set_timeout(SYNC_TIMEOUT);
            match client.sync(req).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    self.registry.set_meta_leader_addr(Some(addr.clone()));
                    self.last = Some(addr.clone());
                    if reply.records.is_empty() || reply.version <= known {
                        return Ok(());
                    }
                    return match crate::meta::state_from_records(&reply.records) {
                        Ok(Some(state)) => {
                            // At the version the meta leader read them at, which counts
                            // deletions; the records alone may say less.
                            let state = state.at_version(reply.version);
                            self.registry.install_state(state, &reply.records).await;
                            Ok(())
                        }
                        Ok(None) => Ok(()),
                        Err(e) => Err(format!("{addr} sent records that do not decode: {e}")),
                    };
                }
                Err(status) => {
                    if let Some(hint) = crate::error::leader_addr_hint(&status)
                        && !queue.contains(&hint)
                    {
                        queue.insert(0, hint);
                    }
                    errors.push(format!("{addr}: {}", status.message()));
                }
            }
        }
        Err(if errors.is_empty() { "no meta replica known".into() } else { errors.join("; ") })
    }

    fn report_removed(&mut self, state: &ClusterState) {
        let me = self.registry.node_id();
        if let Some(rec) = state.node(me).filter(|r| r.state == NodeState::Removed)
            && !self.removed_reported
        {
            self.removed_reported = true;
            match rec.replaced_by {
                Some(by) => tracing::error!(
                    node = me,
                    replaced_by = by,
                    "this node's identity was retired: another node took its name after it fell silent. \
                     It holds no replicas; to serve again, start it on an empty data directory"
                ),
                None => tracing::warn!(
                    node = me,
                    "this node was removed from the cluster; it holds no replicas"
                ),
            }
        }
    }
}

/// Creates the groups the records want here and destroys the ones they no longer name.
pub async fn reconcile(registry: &ShardRegistry, state: &ClusterState) {
    let me = registry.node_id();
    let want = state.hosted_by(me);
    let have: BTreeSet<ShardId> = registry.replica_ids();
    for &shard in want.difference(&have) {
        let Some(rec) = state.shards.get(&shard) else { continue };
        match registry.tombstone(shard) {
            Ok(Some(tomb)) if tomb > rec.config_epoch => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(shard = %shard_name(shard), error = %e, "reading a tombstone");
                continue;
            }
        }
        match registry.open_replica(shard).await {
            Ok(_) => {
                tracing::info!(shard = %shard_name(shard), "created an empty replica for a move")
            }
            Err(e) => tracing::warn!(shard = %shard_name(shard), error = %e, "creating a replica"),
        }
    }
    for &shard in have.difference(&want) {
        // Only what the records describe is destroyed.
        let Some(rec) = state.shards.get(&shard) else { continue };
        match registry.destroy_replica(shard, rec.config_epoch).await {
            Ok(()) => tracing::info!(
                shard = %shard_name(shard),
                epoch = rec.config_epoch,
                "replica moved away: stopped and its data deleted"
            ),
            Err(e) => {
                tracing::warn!(shard = %shard_name(shard), error = %e, "destroying a replica")
            }
        }
    }
}
