//! Forming a founded cluster's first Raft groups.
//!
//! A founding member creates, once, its replicas of the initial placement (the placement
//! function over the founding members) and of the meta group, and initializes each with its
//! first membership. Only then and only there: a replica created later, for a move, holds no
//! membership until the shard's leader sends it one (initializing it would invent a second
//! history for the shard).
//!
//! Every founding replica is allowed to initialize, with the same membership: openraft
//! accepts identical initialization on several nodes and refuses it on a node that already
//! has a log or a vote. So a fresh cluster forms whatever order its nodes start in.
//!
//! **But only one replica of each shard forms it**: its preferred leader (the shard map's,
//! which spreads leaders evenly; for the meta group its lowest member), and a node forms its
//! preferred shards in batches ([`FORM_BATCH`]), the next when the previous sleeps. When every
//! replica of every shard initialized at once, 1,024 shards on 2 cores started as 3,072 awake
//! groups: more heartbeats than the cores could deliver, so they came late, followers
//! campaigned, terms rose to 21 and it took ~70 s until every shard had a settled leader
//! (docs/performance.md). Now at most a batch per node is awake and forming.
//!
//! The other replicas *defer*: they stay uninitialized (no membership, so no election timer)
//! and receive the membership from the preferred one once it leads. For that it needs their
//! votes, and an uninitialized replica normally refuses to vote (`raft_service.rs`: a replica
//! re-created empty for a move may once have acknowledged entries it no longer has). A
//! deferred founding replica may vote while it holds no log and its node has never destroyed
//! it (no tombstone): it has never acknowledged an entry (a replica that receives one holds a
//! log; one whose disk was wiped comes back as a new node, never as a founding member), so its
//! vote is as safe as any new voter's. That holds across restarts: what makes a founding
//! replica deferred is its empty log, not openraft's "initialized", which a cast vote
//! already sets. When a shard's preferred peer does not answer as itself for
//! [`ABSENT_CHECKS`] checks (down, or not started), a *stand-in* forms it: the lowest-id
//! other replica that answers, so the shard still starts with one candidate; after
//! [`DEFER_MAX`] the stand-in forms it even if the preferred peer answers, and after twice
//! that every replica may. Left open: if the preferred leader wins its first election and its
//! node is lost for good before it sends anything, the replicas that voted for it can neither
//! initialize (openraft refuses once a vote is cast) nor campaign; the shard waits for that
//! node.
//!
//! A node campaigns for its shards at once after initializing them. A replica that starts
//! after its peers have already elected a term-1 leader, but before that leader's first heartbeat reached
//! it, would campaign at term 1 with a higher node id, which openraft orders above the sitting
//! leader's vote: the leader steps down when it hears of it, and the shard has no leader until
//! an election timeout passes (clients saw ~1.5 s of NOT_LEADER right after a fresh cluster
//! reported a leader). So before initializing, a replica asks the shard's other replicas: if
//! any of them knows a leader, the group has formed, with this replica in it, and its leader
//! will bring the membership here within a heartbeat; initializing could only disrupt it. A
//! peer that does not answer (not started yet, or down) knows nothing. What is left is a race
//! of a few milliseconds (a peer elected between the question and the initialization), which
//! costs at most the one election it always cost.

use crate::identity::Identity;
use crate::node::StartError;
use crate::registry::ShardRegistry;
use crate::shard::Shard;
use openraft::BasicNode;
use ringkv_placement::cluster::{META_SHARD, initial_meta_replicas};
use ringkv_placement::{NodeId, ShardId, ShardMap};
use ringkv_proto::v1::NodeStatusRequest;
use ringkv_proto::v1::admin_client::AdminClient;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// How long a peer has to answer the question (connect included). A peer that is down refuses
/// the connection at once; this bounds a peer that is unreachable, so a node starting inside a
/// partition is not held back for long.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(1_000);

/// How often a deferring replica checks whether its shards formed, and asks after the peers
/// that should have formed them.
const DEFER_CHECK_INTERVAL: Duration = Duration::from_millis(1_000);

/// A preferred peer that has not answered this many checks in a row is taken for absent, and
/// its shards are formed without it. Generous: a peer still discovering its cluster does not
/// answer yet either, and forming its shards here would bring back the contested elections.
const ABSENT_CHECKS: u32 = 10;

/// However alive its preferred peer answers, a shard still unformed after this long is formed
/// by its stand-in (at the cost of a contested election if the preferred one was merely
/// slow), and after twice this long by any replica: a peer that answers but never forms the
/// shard must not keep it without a leader. Far above the founding of thousands of shards in
/// batches of at most [`BATCH_SETTLE_MAX`].
const DEFER_MAX: Duration = Duration::from_secs(120);

/// How many of its preferred shards a node forms at once. The groups of a batch are awake
/// (heartbeating every interval) until they have been idle long enough to sleep; 128 per
/// node keeps a 3-node cluster near 8,000 heartbeats a second at worst, which two cores
/// carry, where 1,024 shards at once wanted ~20,000 (docs/performance.md).
const FORM_BATCH: usize = 128;

/// The longest a batch is waited for before the next one starts: a batch that cannot settle
/// (a follower down, quiescence refused) must not hold back the rest.
const BATCH_SETTLE_MAX: Duration = Duration::from_secs(10);

/// How often a forming batch is looked at.
const BATCH_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A founding replica left for its preferred peer to form.
struct Deferred {
    shard: Arc<Shard>,
    voters: Vec<NodeId>,
    preferred: NodeId,
}

/// What is left to form of a founding member's replicas ([`form_groups`]).
pub struct Founding {
    /// Replicas this node is the preferred leader of: it forms them, in batches.
    own: Vec<(Arc<Shard>, Vec<NodeId>)>,
    /// The others: formed by their preferred peers, unless those are absent.
    deferred: Vec<Deferred>,
}

/// The replica that campaigns first for `shard` at founding.
fn preferred_of(map: &ShardMap, shard: ShardId, voters: &[NodeId]) -> Option<NodeId> {
    if shard == META_SHARD {
        return voters.iter().copied().min();
    }
    map.preferred_leader(shard).filter(|p| voters.contains(p))
}

/// The founding placement and meta membership, as (shard -> voters).
fn founding_groups(identity: &Identity) -> Result<BTreeMap<ShardId, Vec<NodeId>>, StartError> {
    let map = ShardMap::new(identity.layout, identity.founders.clone(), 0)?;
    let mut groups: BTreeMap<ShardId, Vec<NodeId>> =
        map.shard_ids().map(|s| (s, map.replicas(s).to_vec())).collect();
    groups.insert(META_SHARD, initial_meta_replicas(&identity.founders));
    Ok(groups)
}

/// The replicas a founding member holds at first: its shards of the founding placement, and
/// the meta group if it is one of its first replicas.
pub fn initial_replicas(identity: &Identity) -> Result<Vec<ShardId>, StartError> {
    Ok(founding_groups(identity)?
        .into_iter()
        .filter(|(_, voters)| voters.contains(&identity.node_id))
        .map(|(s, _)| s)
        .collect())
}

/// This member's founding replicas that have never been initialized, split into those it
/// forms and those it leaves to their preferred peers (which may vote from now on: see the
/// module docs). Nothing is initialized yet: [`Founding::run`] does that.
pub async fn form_groups(
    registry: &ShardRegistry,
    identity: &Identity,
) -> Result<Founding, StartError> {
    let groups = founding_groups(identity)?;
    let map = ShardMap::new(identity.layout, identity.founders.clone(), 0)?;
    let me = identity.node_id;
    let mut founding = Founding { own: Vec::new(), deferred: Vec::new() };
    for (&shard_id, voters) in groups.iter().filter(|(_, v)| v.contains(&me)) {
        let shard = registry
            .replica(shard_id)
            .map_err(|e| StartError::Raft { shard: shard_id, reason: e.to_string() })?;
        // Formed once it holds a log: the first entry is the membership. A replica that has
        // only voted (openraft calls it initialized) is not: it restarted, or its leader
        // failed, before the membership came, and must still be able to vote.
        if shard.with_metrics(|m| m.last_log_index.is_some()) {
            continue;
        }
        // One destroyed here before (moved away, perhaps back since) may have acknowledged
        // entries it no longer has: never a founding voter again, and never initialized.
        let destroyed = registry
            .tombstone(shard_id)
            .map_err(|e| StartError::Raft { shard: shard_id, reason: e.to_string() })?;
        if destroyed.is_some() {
            continue;
        }
        match preferred_of(&map, shard_id, voters) {
            Some(preferred) if preferred != me => {
                shard.allow_founding_vote(true);
                founding.deferred.push(Deferred { shard, voters: voters.clone(), preferred });
            }
            _ => founding.own.push((shard, voters.clone())),
        }
    }
    // The meta group first: nodes sync with its leader.
    founding.own.sort_by_key(|(s, _)| s.id != META_SHARD);
    Ok(founding)
}

impl Founding {
    /// Whether everything has formed already.
    pub fn is_empty(&self) -> bool {
        self.own.is_empty() && self.deferred.is_empty()
    }

    /// Forms this member's own shards batch by batch and waits for the deferred ones (forming
    /// those whose preferred peer is absent); returns when all have formed. `quiesce`: whether
    /// groups sleep when idle (a batch is settled when its groups sleep; without quiescence,
    /// when they have leaders).
    pub async fn run(self, registry: &ShardRegistry, identity: &Identity, quiesce: bool) {
        let own = form_own(registry, identity, self.own, quiesce);
        let deferred = form_deferred(registry, identity, self.deferred);
        tokio::join!(own, deferred);
    }
}

/// Forms `own` in batches of [`FORM_BATCH`], each campaigning at once, the next once the
/// previous has settled (or [`BATCH_SETTLE_MAX`] passed).
async fn form_own(
    registry: &ShardRegistry,
    identity: &Identity,
    own: Vec<(Arc<Shard>, Vec<NodeId>)>,
    quiesce: bool,
) {
    let mut rest = own.into_iter().peekable();
    while rest.peek().is_some() {
        let batch: Vec<_> = rest.by_ref().take(FORM_BATCH).collect();
        let shards: Vec<Arc<Shard>> = batch.iter().map(|(s, _)| s.clone()).collect();
        let formed = initialize(registry, identity, batch).await;
        tracing::info!(shards = formed.len(), "forming a batch of founding shards");
        let settled = |s: &Shard| {
            s.with_metrics(|m| m.current_leader.is_some())
                // The meta group is not waited for: the placement driver writes the founding
                // records to it as soon as it has a leader, which keeps it awake a while.
                && (!quiesce || s.id == META_SHARD || s.quiet.is_quiet())
        };
        let deadline = tokio::time::Instant::now() + BATCH_SETTLE_MAX;
        while !shards.iter().all(|s| settled(s)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(BATCH_CHECK_INTERVAL).await;
        }
    }
}

/// Waits for the deferred replicas to be formed by their preferred peers; a shard whose
/// preferred peer is absent is formed by a *stand-in*, the lowest-id other replica that is
/// present, so that it too starts with one candidate. Returns when every one holds its
/// membership (or is no longer this node's).
async fn form_deferred(registry: &ShardRegistry, identity: &Identity, mut deferred: Vec<Deferred>) {
    let addr_of = addresses(identity);
    let me = identity.node_id;
    let started = tokio::time::Instant::now();
    // Consecutive checks each peer has not answered as itself.
    let mut silent: HashMap<NodeId, u32> = HashMap::new();
    loop {
        deferred.retain(|d| {
            // Formed once it holds a log (its first entry is the membership); no longer ours
            // if its replica here was destroyed (moved away), even if created again since.
            let current = registry.replica(d.shard.id).is_ok_and(|s| Arc::ptr_eq(&s, &d.shard));
            let formed = d.shard.with_metrics(|m| m.last_log_index.is_some());
            if formed || !current {
                d.shard.allow_founding_vote(false);
            }
            current && !formed
        });
        if deferred.is_empty() {
            return;
        }
        let peers: BTreeSet<NodeId> =
            deferred.iter().flat_map(|d| d.voters.iter().copied()).filter(|&v| v != me).collect();
        let answers = futures::future::join_all(peers.iter().map(|&p| {
            let addr = addr_of.get(&p).cloned();
            async move {
                // Another node at that address (one that joined under a new identity) is not
                // the peer: only its own answer counts.
                let answered = match addr {
                    Some(a) => node_status(registry.pool().dialer(), &a)
                        .await
                        .is_some_and(|s| s.node.is_some_and(|n| n.id == p)),
                    None => false,
                };
                (p, answered)
            }
        }))
        .await;
        for (p, answered) in answers {
            let count = silent.entry(p).or_default();
            *count = if answered { 0 } else { count.saturating_add(1) };
        }
        let absent = |n: NodeId| n != me && silent.get(&n).is_some_and(|&c| c >= ABSENT_CHECKS);
        let waited = started.elapsed();
        let mine: Vec<(Arc<Shard>, Vec<NodeId>)> = deferred
            .iter()
            .filter(|d| {
                if waited >= DEFER_MAX * 2 {
                    // Last resort: whatever holds it up, every replica may form it.
                    return true;
                }
                if !absent(d.preferred) && waited < DEFER_MAX {
                    return false;
                }
                let stand_in =
                    d.voters.iter().copied().filter(|&v| v != d.preferred && !absent(v)).min();
                stand_in == Some(me)
            })
            .map(|d| (d.shard.clone(), d.voters.clone()))
            .collect();
        if !mine.is_empty() {
            // A replica that has voted cannot initialize (openraft refuses it): it keeps
            // waiting for the leader it voted for.
            let formed = initialize(registry, identity, mine).await;
            if !formed.is_empty() {
                tracing::info!(
                    shards = formed.len(),
                    waited_ms = waited.as_millis() as u64,
                    "formed founding shards in place of their preferred replica"
                );
            }
        }
        tokio::time::sleep(DEFER_CHECK_INTERVAL).await;
    }
}

fn addresses(identity: &Identity) -> BTreeMap<NodeId, String> {
    identity.founders.iter().map(|m| (m.id, m.addr.clone())).collect()
}

/// Initializes `fresh` replicas with their founding membership, except those for which a
/// peer already knows a leader, and has each campaign at once (no need to wait for an
/// election timeout, nor for a pre-vote: the other replicas wait for this one); returns those
/// it initialized.
async fn initialize(
    registry: &ShardRegistry,
    identity: &Identity,
    fresh: Vec<(Arc<Shard>, Vec<NodeId>)>,
) -> Vec<Arc<Shard>> {
    let mut initialized = Vec::new();
    if fresh.is_empty() {
        return initialized;
    }
    let addr_of = addresses(identity);
    let me = identity.node_id;
    let peers: BTreeSet<NodeId> =
        fresh.iter().flat_map(|(_, v)| v.iter().copied()).filter(|&id| id != me).collect();
    let led = shards_with_a_known_leader(registry.pool().dialer(), &addr_of, &peers).await;
    for (shard, voters) in fresh {
        if let Some(peer) = led.get(&shard.id) {
            tracing::info!(
                shard = shard.id,
                peer,
                "a peer already knows a leader for this shard: waiting to be contacted"
            );
            continue;
        }
        let voters: BTreeMap<NodeId, BasicNode> = voters
            .iter()
            .filter_map(|id| addr_of.get(id).map(|a| (*id, BasicNode { addr: a.clone() })))
            .collect();
        match shard.raft.initialize(voters).await {
            Ok(()) => {
                tracing::debug!(shard = shard.id, "initialized shard group");
                if let Err(e) = shard.raft.trigger().elect(false).await {
                    tracing::warn!(shard = shard.id, error = %e, "could not start the first election");
                }
                initialized.push(shard);
            }
            // A peer's message arrived in the meantime: nothing to do.
            Err(openraft::errors::RaftError::APIError(
                openraft::errors::InitializeError::NotAllowed(_),
            )) => {}
            // Stopped (the node is shutting down, or the replica was destroyed): the
            // others still form; a restart looks at this one again.
            Err(e) => {
                tracing::warn!(shard = shard.id, error = %e, "could not initialize a founding shard")
            }
        }
    }
    initialized
}

/// A peer's status, or `None` when it does not answer within [`PEER_STATUS_TIMEOUT`].
async fn node_status(
    dialer: &ringkv_tls::Dialer,
    addr: &str,
) -> Option<ringkv_proto::v1::NodeStatusResponse> {
    let ask = async {
        let endpoint = dialer.endpoint(addr).ok()?.connect_timeout(PEER_STATUS_TIMEOUT);
        let channel = dialer.connect(&endpoint).await.ok()?;
        AdminClient::new(channel).node_status(NodeStatusRequest {}).await.ok()
    };
    tokio::time::timeout(PEER_STATUS_TIMEOUT, ask)
        .await
        .ok()
        .flatten()
        .map(tonic::Response::into_inner)
}

/// Of the shards the `peers` replicate, those for which one of them reports a leader, with
/// that peer. Peers are asked at once; one that fails or is slow counts as knowing nothing.
async fn shards_with_a_known_leader(
    dialer: &ringkv_tls::Dialer,
    addr_of: &BTreeMap<NodeId, String>,
    peers: &BTreeSet<NodeId>,
) -> HashMap<ShardId, NodeId> {
    let asks = peers.iter().filter_map(|&id| {
        let addr = addr_of.get(&id)?.clone();
        Some(async move { (id, node_status(dialer, &addr).await) })
    });
    let mut led = HashMap::new();
    for (peer, status) in futures::future::join_all(asks).await {
        for s in status.map(|s| s.shards).unwrap_or_default() {
            if s.leader_id.is_some_and(|l| l != 0) {
                led.entry(s.shard_id).or_insert(peer);
            }
        }
    }
    led
}
