//! The routing core's operations.
//!
//! Every operation is the same loop: pick a node (the shard's leader for writes and
//! linearizable or lease reads; a replica chosen by the read policy for stale reads), call it
//! with the time left before the deadline, and learn from the answer: a success confirms the
//! leader; `NOT_LEADER` redirects (to the named leader, else the next replica); `WRONG_SHARD`
//! refreshes the map; a transient failure backs off (jittered, exponential) and, for transport
//! failures, counts toward ejecting the node; `OVERLOADED` waits as long as the node's
//! `RetryInfo` asks (a busy node is not a failed one). Retries stop at the deadline, when the retry
//! budget is spent, or at an error retrying cannot fix. A call that gives up says whether its
//! write may have been applied: not if every attempt was refused before anything was
//! proposed (see [`crate::outcome`]).

use crate::balance;
use crate::config::RoutingConfig;
use crate::error::RoutingError;
use crate::lanes::{LaneGuard, Lanes};
use crate::map_fetch::MapFetch;
use crate::nodes::{NodeEntry, Nodes};
use crate::outcome::WriteOutcome;
use crate::retry::{self, Next, RetryBudget};
use crate::skips::Skips;
use crate::topology::{Topology, map_from_proto};
use futures::future::try_join_all;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use ringkv_placement::{ShardId, ShardMap};
use ringkv_proto::v1::WriteSession;
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::{
    BatchWriteRequest, BatchWriteResponse, CompareAndSwapRequest, CompareAndSwapResponse,
    Consistency, DeleteRequest, DeleteResponse, GetRequest, GetResponse, GetShardMapRequest,
    KeyValue, MultiGetRequest, MultiGetResponse, PutRequest, PutResponse, ScanRequest,
    ScanResponse, write_op,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};
use tonic::codegen::Bytes;
// Every channel to a node adds the credential of the call (see `ringkv_auth::forward`).
use ringkv_auth::AuthChannel as Channel;
use tonic::{Response, Status};

/// Redirects followed without backoff before a redirect counts as a retry.
const FREE_REDIRECTS: u32 = 3;
/// The continuation token of a merged scan page that covered the key space up to `key`: the
/// smallest key after it, which every shard's (and cluster's) scan takes as its start key.
pub fn resume_after(key: &[u8]) -> Bytes {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next.into()
}

/// The page size of a scan that asks for none (`limit` 0), as on a node.
pub const SCAN_LIMIT_DEFAULT: u32 = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: u64,
}

/// What the routing core counts; a router registers it in its `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct RoutingStats {
    pub requests: Counter,
    pub retries: Counter,
    pub redirects: Counter,
    pub map_refreshes: Counter,
    pub ejections: Counter,
    /// OVERLOADED answers waited out (a busy node, not a failed one).
    pub overloaded: Counter,
    pub shard_requests: Family<ShardLabel, Counter>,
    pub node_attempts: Family<NodeLabel, Counter>,
    pub node_failures: Family<NodeLabel, Counter>,
}

impl RoutingStats {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ringkv_routing");
        r.register("requests", "Requests routed (one per shard touched)", self.requests.clone());
        r.register("retries", "Attempts beyond the first", self.retries.clone());
        r.register("redirects", "NOT_LEADER answers followed", self.redirects.clone());
        r.register("map_refreshes", "Shard map fetches", self.map_refreshes.clone());
        r.register("ejections", "Nodes ejected after consecutive failures", self.ejections.clone());
        r.register(
            "overloaded",
            "OVERLOADED answers from nodes, waited out as their RetryInfo asked",
            self.overloaded.clone(),
        );
        r.register("shard_requests", "Requests routed per shard", self.shard_requests.clone());
        r.register("node_attempts", "Attempts sent per node", self.node_attempts.clone());
        r.register("node_failures", "Transport failures per node", self.node_failures.clone());
    }
}

/// A handle to a ringkv cluster. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: RoutingConfig,
    pub(crate) topology: Topology,
    pub(crate) nodes: Nodes,
    pub(crate) budget: RetryBudget,
    pub(crate) lanes: Lanes,
    pub(crate) rr: AtomicUsize,
    pub(crate) stats: RoutingStats,
    pub(crate) topics: crate::events::TopicCache,
    /// Map fetches shared by concurrent callers (see [`crate::map_fetch`]).
    pub(crate) map_fetch: MapFetch<Result<Arc<ShardMap>, String>>,
}

/// Which replicas may serve a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Leader,
    AnyReplica { key_hash: u64 },
}

/// How often a provisional map (epoch 0) is refreshed.
const PROVISIONAL_REFRESH: Duration = Duration::from_millis(200);
/// Retry bounds while no seed has answered yet.
const NO_MAP_RETRY_MIN: Duration = Duration::from_millis(100);
const NO_MAP_RETRY_MAX: Duration = Duration::from_secs(5);

impl Cluster {
    /// Fetches the shard map from the first seed that answers and starts the periodic refresh.
    /// Fails when no seed answers (a client that needs the cluster now); see [`Cluster::open`]
    /// for one that may start first.
    pub async fn connect(cfg: RoutingConfig) -> Result<Self, RoutingError> {
        let cluster = Self::open(cfg)?;
        cluster.refresh_map().await?;
        Ok(cluster)
    }

    /// A handle that keeps looking for the cluster in the background, backing off while no
    /// seed answers. Calls fail with `NoMap` (UNAVAILABLE) until the first map arrives. For a
    /// router started beside a cluster that is not up yet: it must not crash-loop.
    pub fn open(cfg: RoutingConfig) -> Result<Self, RoutingError> {
        if cfg.seeds.is_empty() {
            return Err(RoutingError::InvalidArgument("no seed node addresses".into()));
        }
        // The refresh runs on the caller's runtime; say so instead of panicking without one.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            RoutingError::InvalidArgument(
                "Cluster::open must be called inside a tokio runtime".into(),
            )
        })?;
        let inner = Arc::new(Inner {
            budget: RetryBudget::new(&cfg),
            lanes: Lanes::new(cfg.write_lanes_max),
            topology: Topology::default(),
            nodes: Nodes::new(cfg.dialer.clone(), cfg.token.clone()),
            rr: AtomicUsize::new(0),
            stats: RoutingStats::default(),
            topics: Default::default(),
            map_fetch: MapFetch::default(),
            cfg,
        });
        let cluster = Cluster { inner };
        let weak = Arc::downgrade(&cluster.inner);
        let every = cluster.inner.cfg.refresh_interval;
        runtime.spawn(async move {
            let mut failures: u32 = 0;
            loop {
                let delay = {
                    let Some(inner) = weak.upgrade() else { return };
                    match inner.topology.map() {
                        // No cluster found yet: ask again soon, backing off while nobody
                        // answers (a cluster still starting, or wrong seeds).
                        None => NO_MAP_RETRY_MIN
                            .saturating_mul(1 << failures.min(6))
                            .min(NO_MAP_RETRY_MAX)
                            .min(every),
                        // A map at epoch 0 is a founding cluster's placement before its
                        // records are written: the real one follows within a second.
                        Some(m) if m.epoch() == 0 => PROVISIONAL_REFRESH.min(every),
                        Some(_) => every,
                    }
                };
                tokio::time::sleep(delay).await;
                let Some(inner) = weak.upgrade() else { return };
                match (Cluster { inner }).refresh_map().await {
                    Ok(_) => failures = 0,
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        // The first failure and then one in a while, not one line per try.
                        if failures == 1 || failures.is_multiple_of(30) {
                            tracing::warn!(error = %e, failures, "shard map refresh failed");
                        }
                    }
                }
            }
        });
        Ok(cluster)
    }

    pub fn config(&self) -> &RoutingConfig {
        &self.inner.cfg
    }

    pub fn stats(&self) -> &RoutingStats {
        &self.inner.stats
    }

    pub fn nodes(&self) -> Vec<Arc<NodeEntry>> {
        self.inner.nodes.all()
    }

    pub fn map(&self) -> Option<Arc<ShardMap>> {
        self.inner.topology.map()
    }

    /// The id of the cluster this routing core follows (0 until its first map).
    pub fn cluster_id(&self) -> u64 {
        self.inner.topology.cluster_id()
    }

    /// The channel to a node of the map (for admin calls).
    pub fn channel(&self, node: u64) -> Option<Channel> {
        let map = self.map()?;
        let spec = map.node(node)?;
        self.inner.nodes.get(node, &spec.addr).ok().map(|n| n.channel())
    }

    /// Pulls the map from any known node (seeds first), keeping the newest epoch. Callers that
    /// ask at the same moment share one fetch (see [`crate::map_fetch`]).
    pub async fn refresh_map(&self) -> Result<Arc<ShardMap>, RoutingError> {
        self.inner.map_fetch.run(|| self.fetch_map()).await.map_err(RoutingError::NoMap)
    }

    async fn fetch_map(&self) -> Result<Arc<ShardMap>, String> {
        self.inner.stats.map_refreshes.inc();
        let mut addrs: Vec<String> = self.inner.cfg.seeds.clone();
        if let Some(m) = self.map() {
            addrs.extend(m.nodes().iter().map(|n| n.addr.clone()));
        }
        let mut errors = Vec::new();
        for addr in addrs {
            let entry = match self.inner.nodes.get(0, &addr) {
                Ok(e) => e,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let mut admin = AdminClient::new(entry.channel());
            let mut req = tonic::Request::new(GetShardMapRequest {});
            req.set_timeout(Duration::from_secs(2));
            match admin.get_shard_map(req).await {
                Ok(resp) => {
                    match resp.into_inner().map.ok_or("empty map".to_string()).and_then(|m| {
                        let map = map_from_proto(&m)?;
                        self.inner.topology.install(map, m.cluster_id)
                    }) {
                        Ok(_) => {
                            if let Some(m) = self.map() {
                                return Ok(m);
                            }
                        }
                        Err(e) => errors.push(format!("{addr}: {e}")),
                    }
                }
                Err(s) => errors.push(format!("{addr}: {}", s.message())),
            }
        }
        Err(errors.join("; "))
    }

    pub(crate) fn current_map(&self) -> Result<Arc<ShardMap>, RoutingError> {
        self.map().ok_or_else(|| RoutingError::NoMap("no shard map yet".into()))
    }

    pub fn shard_of(&self, key: &[u8]) -> Result<ShardId, RoutingError> {
        Ok(self.current_map()?.shard_of(key))
    }

    fn entry(&self, map: &ShardMap, node: u64) -> Option<Arc<NodeEntry>> {
        let spec = map.node(node)?;
        self.inner.nodes.get(node, &spec.addr).ok()
    }

    /// A replica named `leader` as `shard`'s leader (a hint this call follows): remember it,
    /// and if it is ejected let a probe through early (see [`NodeEntry::named_leader`]).
    /// Shared by unary calls and followed streams.
    pub(crate) fn learned_leader(&self, map: &ShardMap, shard: ShardId, leader: u64) {
        self.inner.topology.set_leader(shard, leader);
        if let Some(e) = self.entry(map, leader) {
            e.named_leader(&self.inner.cfg);
        }
    }

    /// The node to try next for `shard`. `skip` holds nodes that just failed this call.
    pub(crate) fn choose(
        &self,
        map: &ShardMap,
        shard: ShardId,
        target: Target,
        skip: &[u64],
    ) -> Option<Arc<NodeEntry>> {
        let replicas: Vec<Arc<NodeEntry>> = map
            .replicas(shard)
            .iter()
            .filter(|n| !skip.contains(n))
            .filter_map(|&n| self.entry(map, n))
            .collect();
        match target {
            Target::AnyReplica { key_hash } => {
                balance::pick(self.inner.cfg.read_policy, &replicas, key_hash, &self.inner.rr)
            }
            Target::Leader => {
                if let Some(l) = self.inner.topology.leader(shard).filter(|l| !skip.contains(l))
                    && let Some(e) = self.entry(map, l).filter(|e| e.available())
                {
                    return Some(e);
                }
                // Unknown leader: the preferred leader first (where balancing puts it), then
                // the others in placement order, skipping ejected nodes while we can.
                let preferred = map.preferred_leader(shard);
                let mut order = replicas;
                order.sort_by_key(|e| Some(e.id) != preferred);
                order.iter().find(|e| e.available()).cloned().or_else(|| order.first().cloned())
            }
        }
    }

    /// The retry loop around one KV call to one shard.
    async fn call<T, F, Fut>(
        &self,
        shard: ShardId,
        target: Target,
        deadline: Instant,
        f: F,
    ) -> Result<T, RoutingError>
    where
        F: Fn(KvClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call_with(shard, target, deadline, |ch, t| {
            f(KvClient::new(ch).max_decoding_message_size(crate::nodes::MESSAGE_BYTES_MAX), t)
        })
        .await
    }

    /// The retry loop around one call to one shard, of any service: `f` gets the node's
    /// channel and the time left.
    pub(crate) async fn call_with<T, F, Fut>(
        &self,
        shard: ShardId,
        target: Target,
        deadline: Instant,
        f: F,
    ) -> Result<T, RoutingError>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let inner = &self.inner;
        inner.stats.requests.inc();
        inner.stats.shard_requests.get_or_create(&ShardLabel { shard }).inc();
        inner.budget.on_request();
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut retries = 0u32;
        let mut skip = Skips::default();
        let mut last = String::from("no attempt made");
        // Not applied until an attempt says otherwise (see `outcome`).
        let mut outcome = WriteOutcome::NotApplied;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(RoutingError::Deadline {
                    deadline_ms: u64::try_from(deadline.duration_since(started).as_millis())
                        .unwrap_or(u64::MAX),
                    attempts,
                    last,
                    outcome,
                });
            }
            let map = self.current_map()?;
            let Some(node) = self.choose(&map, shard, target, skip.nodes()) else {
                // Every replica failed this round: start over with all of them, after a pause.
                skip.clear();
                tokio::time::sleep(retry::backoff(&inner.cfg, retries).min(remaining)).await;
                retries += 1;
                continue;
            };
            attempts += 1;
            inner.stats.node_attempts.get_or_create(&NodeLabel { node: node.id }).inc();
            let guard = node.start();
            let sent = guard.started();
            let result = f(node.channel(), remaining).await;
            let latency = guard.elapsed();
            drop(guard);
            let status = match result {
                Ok(resp) => {
                    node.on_success(latency);
                    if target == Target::Leader {
                        inner.topology.set_leader(shard, node.id);
                    }
                    return Ok(resp.into_inner());
                }
                Err(s) => s,
            };
            last = format!("node {}: {:?}: {}", node.id, status.code(), status.message());
            tracing::debug!(shard, attempt = attempts, error = %last, "attempt failed");
            if retry::node_answered(&status) {
                node.on_answer();
            }
            let this = WriteOutcome::of(&status);
            let earlier = outcome;
            outcome = outcome.and(this);
            let next = match retry::classify(&status) {
                // A hint naming a node this call could not reach is stale: look elsewhere (a
                // node that only refused comes back; see `skips`).
                Next::Redirect(Some(l)) if l != node.id && !skip.follow_hint(l) => {
                    Next::Redirect(None)
                }
                other => other,
            };
            // Redirects are cheap and expected around elections: a few are free.
            let free = matches!(next, Next::Redirect(Some(_))) && attempts <= FREE_REDIRECTS;
            if let Next::RetryAfter(delay) = next
                && delay >= remaining
            {
                // Waiting as asked would outlast the caller's deadline: the node's own answer,
                // with its retry delay, says more than a deadline error would.
                return Err(RoutingError::Node(status));
            }
            if next == Next::Fail {
                if earlier == WriteOutcome::Unknown && this == WriteOutcome::NotApplied {
                    // The node's refusal would read as "not applied"; an earlier attempt may
                    // have been. Its code and reason stay, for readers.
                    return Err(RoutingError::Node(crate::outcome::mark_unknown(status)));
                }
                return Err(RoutingError::Node(status));
            }
            if !free && !inner.budget.try_retry() {
                if matches!(next, Next::RetryAfter(_)) {
                    // The cluster is shedding load: its own answer (with its retry delay)
                    // tells the caller that better than "retry budget exhausted".
                    return Err(RoutingError::Node(status));
                }
                return Err(RoutingError::BudgetExhausted { attempts, last, outcome });
            }
            inner.stats.retries.inc();
            match next {
                Next::Redirect(Some(leader)) if map.node(leader).is_none() => {
                    // A leader this map does not know: a node that joined since. The new map
                    // has its address.
                    inner.stats.redirects.inc();
                    let _ = self.refresh_map().await;
                    if let Some(m) = self.map().filter(|m| m.node(leader).is_some()) {
                        self.learned_leader(&m, shard, leader);
                    }
                }
                Next::Redirect(Some(leader)) if leader != node.id => {
                    inner.stats.redirects.inc();
                    self.learned_leader(&map, shard, leader);
                    if !free {
                        tokio::time::sleep(retry::backoff(&inner.cfg, retries).min(remaining))
                            .await;
                        retries += 1;
                    }
                }
                Next::Redirect(_) => {
                    inner.stats.redirects.inc();
                    inner.topology.forget_leader(shard, node.id);
                    skip.refused(node.id);
                    tokio::time::sleep(retry::backoff(&inner.cfg, retries).min(remaining)).await;
                    retries += 1;
                }
                Next::RefreshMap => {
                    // The node holds no replica of the shard: the map was stale, or the node
                    // at that address is not the one the map means (a node that came back
                    // empty, as a new identity, while the map still lists its old one until
                    // those replicas are moved). A refreshed map may still send the call
                    // there, so this call steers around it; retried at once, it answered the
                    // same until the retry budget ran out (found by the StatefulSet
                    // rehearsal: 1,281 client errors while a pod came back empty).
                    inner.topology.forget_leader(shard, node.id);
                    skip.refused(node.id);
                    // A failed refresh is not final: the next attempt may reach another node.
                    let _ = self.refresh_map().await;
                }
                Next::Backoff { node_failed } => {
                    if node_failed {
                        inner.stats.node_failures.get_or_create(&NodeLabel { node: node.id }).inc();
                        inner.topology.forget_leader(shard, node.id);
                        skip.failed(node.id);
                        if node.on_failure(&inner.cfg, sent) {
                            inner.stats.ejections.inc();
                        }
                    }
                    tokio::time::sleep(retry::backoff(&inner.cfg, retries).min(remaining)).await;
                    retries += 1;
                }
                Next::RetryAfter(delay) => {
                    inner.stats.overloaded.inc();
                    tokio::time::sleep(retry::jittered(delay).min(remaining)).await;
                    retries += 1;
                }
                Next::Fail => unreachable!("handled above"),
            }
        }
    }

    /// Gives a write without a session one from a free lane, held until the write is done
    /// (all its retries carry the same sequence number). Writes that bring their own session
    /// (a client in router mode) keep it.
    pub(crate) async fn lane_for(&self, session: &mut Option<WriteSession>) -> Option<LaneGuard> {
        if session.is_some() {
            return None;
        }
        let lane = self.inner.lanes.acquire().await;
        *session = Some(lane.session());
        Some(lane)
    }

    pub(crate) fn deadline(&self, timeout: Option<Duration>) -> Instant {
        Instant::now() + timeout.unwrap_or(self.inner.cfg.default_timeout)
    }

    pub async fn put(
        &self,
        mut req: PutRequest,
        timeout: Option<Duration>,
    ) -> Result<PutResponse, RoutingError> {
        let shard = self.shard_of(&req.key)?;
        let _lane = self.lane_for(&mut req.session).await;
        self.call(shard, Target::Leader, self.deadline(timeout), |mut c, t| {
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(t);
            async move { c.put(r).await }
        })
        .await
    }

    pub async fn delete(
        &self,
        mut req: DeleteRequest,
        timeout: Option<Duration>,
    ) -> Result<DeleteResponse, RoutingError> {
        let shard = self.shard_of(&req.key)?;
        let _lane = self.lane_for(&mut req.session).await;
        self.call(shard, Target::Leader, self.deadline(timeout), |mut c, t| {
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(t);
            async move { c.delete(r).await }
        })
        .await
    }

    pub async fn compare_and_swap(
        &self,
        mut req: CompareAndSwapRequest,
        timeout: Option<Duration>,
    ) -> Result<CompareAndSwapResponse, RoutingError> {
        let shard = self.shard_of(&req.key)?;
        let _lane = self.lane_for(&mut req.session).await;
        self.call(shard, Target::Leader, self.deadline(timeout), |mut c, t| {
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(t);
            async move { c.compare_and_swap(r).await }
        })
        .await
    }

    pub async fn batch_write(
        &self,
        mut req: BatchWriteRequest,
        timeout: Option<Duration>,
    ) -> Result<BatchWriteResponse, RoutingError> {
        let first = req.ops.first().and_then(|op| match &op.op {
            Some(write_op::Op::Put(p)) => Some(p.key.clone()),
            Some(write_op::Op::Delete(d)) => Some(d.key.clone()),
            None => None,
        });
        // An empty or malformed batch is for the node to reject with its usual message.
        let shard = self.shard_of(first.as_deref().unwrap_or_default())?;
        let _lane = self.lane_for(&mut req.session).await;
        self.call(shard, Target::Leader, self.deadline(timeout), |mut c, t| {
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(t);
            async move { c.batch_write(r).await }
        })
        .await
    }

    fn read_target(consistency: i32, key: &[u8]) -> Target {
        if consistency == Consistency::Stale as i32 {
            Target::AnyReplica { key_hash: ringkv_placement::hash::key_hash(key) }
        } else {
            Target::Leader
        }
    }

    pub async fn get(
        &self,
        req: GetRequest,
        timeout: Option<Duration>,
    ) -> Result<GetResponse, RoutingError> {
        let shard = self.shard_of(&req.key)?;
        let target = Self::read_target(req.consistency, &req.key);
        self.call(shard, target, self.deadline(timeout), |mut c, t| {
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(t);
            async move { c.get(r).await }
        })
        .await
    }

    /// Gets many keys: split by shard, one call per shard, all in parallel.
    pub async fn multi_get(
        &self,
        req: MultiGetRequest,
        timeout: Option<Duration>,
    ) -> Result<MultiGetResponse, RoutingError> {
        let map = self.current_map()?;
        let mut by_shard: BTreeMap<ShardId, Vec<Bytes>> = BTreeMap::new();
        for k in &req.keys {
            by_shard.entry(map.shard_of(k)).or_default().push(k.clone());
        }
        let deadline = self.deadline(timeout);
        let calls = by_shard.into_iter().map(|(shard, keys)| {
            let target =
                Self::read_target(req.consistency, keys.first().map_or(&[][..], |k| &k[..]));
            let sub = MultiGetRequest { keys, consistency: req.consistency };
            self.call(shard, target, deadline, move |mut c, t| {
                let mut r = tonic::Request::new(sub.clone());
                r.set_timeout(t);
                async move { c.multi_get(r).await }
            })
        });
        let parts = try_join_all(calls).await?;
        let mut found: std::collections::HashMap<Bytes, KeyValue> =
            parts.into_iter().flat_map(|p| p.kvs).map(|kv| (kv.key.clone(), kv)).collect();
        let kvs = req.keys.iter().filter_map(|k| found.remove(k)).collect();
        Ok(MultiGetResponse { kvs })
    }

    /// Scans one shard (when `shard_id` is set) or all of them, merged in key order.
    ///
    /// A cross-shard page asks every shard for up to `limit` keys from the same start, merges
    /// them, and keeps the first `limit`; the continuation token is the key after the last one
    /// returned. Keys live in exactly one shard, so pages never repeat or skip a key.
    pub async fn scan(
        &self,
        req: ScanRequest,
        timeout: Option<Duration>,
    ) -> Result<ScanResponse, RoutingError> {
        let deadline = self.deadline(timeout);
        let target = if req.consistency == Consistency::Stale as i32 {
            Target::AnyReplica { key_hash: 0 }
        } else {
            Target::Leader
        };
        if let Some(shard) = req.shard_id {
            return self
                .call(shard, target, deadline, |mut c, t| {
                    let mut r = tonic::Request::new(req.clone());
                    r.set_timeout(t);
                    async move { c.scan(r).await }
                })
                .await;
        }
        let limit = if req.limit == 0 { SCAN_LIMIT_DEFAULT } else { req.limit } as usize;
        let map = self.current_map()?;
        let start = if req.continuation_token.is_empty() {
            req.start_key.clone()
        } else {
            req.continuation_token.clone()
        };
        let calls = map.shard_ids().map(|shard| {
            let sub = ScanRequest {
                shard_id: Some(shard),
                start_key: start.clone(),
                continuation_token: Default::default(),
                ..req.clone()
            };
            self.call(shard, target, deadline, move |mut c, t| {
                let mut r = tonic::Request::new(sub.clone());
                r.set_timeout(t);
                async move { c.scan(r).await }
            })
        });
        let pages = try_join_all(calls).await?;
        let more_somewhere = pages.iter().any(|p| !p.continuation_token.is_empty());
        let mut kvs: Vec<KeyValue> = pages.into_iter().flat_map(|p| p.kvs).collect();
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        let truncated = kvs.len() > limit;
        kvs.truncate(limit);
        let continuation_token = match kvs.last() {
            Some(last) if truncated || more_somewhere => resume_after(&last.key),
            _ => Default::default(),
        };
        Ok(ScanResponse { header: None, kvs, continuation_token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_outside_a_runtime_is_an_error_not_a_panic() {
        let cfg = RoutingConfig { seeds: vec!["127.0.0.1:1".into()], ..RoutingConfig::default() };
        let e = Cluster::open(cfg).expect_err("no runtime here");
        assert!(e.to_string().contains("tokio runtime"), "{e}");
    }
}
