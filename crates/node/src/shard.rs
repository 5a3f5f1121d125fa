//! One shard replica on this node: its Raft group and the ways requests use it.
//!
//! Writes are proposed through Raft and answered with the state machine's result. Reads take
//! a barrier chosen by the consistency level first:
//! - LINEARIZABLE: ReadIndex. The leader confirms with a quorum that it is still leader, then
//!   waits until it has applied up to the commit index it saw; any read after that sees every
//!   write acknowledged before the read began.
//! - LEASE: the leader skips the quorum round while its lease (the time since a quorum last
//!   acknowledged it, below the election timeout) is fresh; otherwise it refuses.
//! - STALE: no quorum round; any replica answers from what it has applied and says how old
//!   that state may be (`staleness_ms`, an upper bound on the age of the newest write it might
//!   miss):
//!   - a leader: the time since a quorum last acknowledged it (the send time of the heartbeat
//!     they acknowledged), so a deposed leader cut off in a minority reports a growing age;
//!   - a follower: the time since the leader's freshness stamp on a message whose commit index
//!     the follower has since applied (`crate::freshness` has the rule and the versions of it
//!     the chaos harness proved wrong; `crate::leader_clock` how the leader stamps);
//!   - a follower that has not caught up with a leader since it started refuses (UNAVAILABLE,
//!     retried elsewhere by the router): its state is as old as its crash, or older.

use crate::error::NodeError;
use crate::freshness::Freshness;
use crate::quiesce::Quiet;
use crate::read_barrier::{ReadBarrier, ReadFailure};
use crate::read_pool::ReadPool;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, Fatal, LinearizableReadError, RaftError};
use openraft::raft::AppendEntriesRequest;
use openraft::{Instant as _, RaftMetrics, ReadPolicy, ServerState};
use ringkv_placement::{NodeId, ShardId};
use ringkv_proto::v1::{Consistency, ResponseHeader};
use ringkv_storage::{
    CommandResult, Fault, FaultKind, Proposal, ShardReader, ShardStateMachine, TypeConfig,
};
use std::sync::Mutex;
use std::time::Duration;

pub type ShardRaft = openraft::Raft<TypeConfig, ShardStateMachine>;

/// How long a request may wait on Raft when the caller set no deadline.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// The caller's deadline (grpc-timeout) if it set one, else the default.
pub fn request_deadline<T>(req: &tonic::Request<T>) -> Duration {
    ringkv_proto::grpc_timeout(req.metadata()).unwrap_or(REQUEST_TIMEOUT_DEFAULT)
}

/// How long ago a quorum last acknowledged this leader, by its metrics; `None` if none has
/// yet. A leader that is its group's only voter (RF 1) is its own quorum, acknowledged now:
/// openraft holds its lease valid without acknowledgements, and its `last_quorum_acked` never
/// moves (no follower answers; it may even hold a time from before the group shrank to one).
pub(crate) fn quorum_acked_age(m: &RaftMetrics<TypeConfig>) -> Option<Duration> {
    let mut voters = m.membership_config.membership().voter_ids();
    if voters.next() == Some(m.id) && voters.next().is_none() {
        return Some(Duration::ZERO);
    }
    m.last_quorum_acked.as_ref().map(|acked| acked.elapsed())
}

pub struct Shard {
    pub id: ShardId,
    pub node_id: NodeId,
    pub raft: ShardRaft,
    pub state_machine: ShardStateMachine,
    pub reader: ShardReader,
    read_pool: ReadPool,
    freshness: Mutex<Freshness>,
    reads: ReadBarrier,
    /// Whether the group sleeps on this replica (see `crate::quiesce`).
    pub quiet: Quiet,
    /// A founding replica left for its preferred peer to form: it may vote while it holds no
    /// log (see `crate::bootstrap`).
    founding_vote: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("id", &self.id).finish()
    }
}

impl Shard {
    pub fn new(
        id: ShardId,
        node_id: NodeId,
        raft: ShardRaft,
        state_machine: ShardStateMachine,
        reader: ShardReader,
        read_pool: ReadPool,
        quiet: Quiet,
    ) -> Self {
        Shard {
            id,
            node_id,
            reads: ReadBarrier::new(raft.clone()),
            raft,
            state_machine,
            reader,
            read_pool,
            freshness: Mutex::new(Freshness::default()),
            quiet,
            founding_vote: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Wakes a quiesced leader and sends a heartbeat round at once. Returns whether it slept.
    pub async fn wake_leader(&self) -> bool {
        let woke = self.quiet.wake_leader(&self.raft);
        if woke {
            let _ = self.raft.trigger().heartbeat().await;
        }
        woke
    }

    /// A request for this replica: keeps the group awake and wakes it if it slept. With
    /// `lease`, a woken leader waits (within `timeout`) until a quorum acknowledged it again,
    /// since openraft refuses writes while its lease is expired; on timeout the request goes
    /// on and fails the way it would have. A leader that is the group's only voter is its own
    /// quorum and waits for nothing (see [`quorum_acked_age`]).
    pub async fn on_request(&self, lease: bool, timeout: Duration) {
        if !self.quiet.activity(&self.raft) {
            return;
        }
        let _ = self.raft.trigger().heartbeat().await;
        if lease {
            let lease = Duration::from_millis(self.raft.config().election_timeout_min);
            let _ = self
                .raft
                .wait(Some(timeout))
                .metrics(
                    |m| quorum_acked_age(m).is_some_and(|age| age < lease),
                    "a quorum acknowledged the woken leader",
                )
                .await;
        }
    }

    /// A Raft message for this replica was handled; `sleeps_before` is
    /// `self.quiet.sleeps()` taken when it arrived. A group asleep since before then wakes
    /// (only now, after the message, see `crate::quiesce`).
    pub fn after_raft_message(&self, sleeps_before: u64) {
        self.quiet.wake_on_message(&self.raft, sleeps_before);
    }

    /// An AppendEntries from `from`, stamped with its wake count `leader_wakes`, was handled:
    /// a sleeping replica wakes if the sender woke since it went to sleep, or is another node.
    pub fn after_append(&self, from: NodeId, leader_wakes: u64) {
        self.quiet.wake_on_append(&self.raft, from, leader_wakes);
    }

    /// Runs a read of this replica's applied state off the async runtime, bounded by the
    /// node's [`ReadPool`]; the caller has passed whatever read barrier it needs.
    pub async fn read<T, F>(&self, read: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&ShardReader) -> Result<T, NodeError> + Send + 'static,
    {
        let reader = self.reader.clone();
        self.read_pool.run(move || read(&reader)).await
    }

    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Whether this replica is the shard's leader now (streams end when it stops being one).
    pub fn is_leader(&self) -> bool {
        self.with_metrics(|m| m.state == ServerState::Leader && m.running_state.is_ok())
    }

    /// Whether this replica's own membership names it a voter (see `RaftService::voter`).
    pub fn is_voter(&self) -> bool {
        self.with_metrics(|m| m.membership_config.voter_ids().any(|v| v == self.node_id))
    }

    /// Whether this replica may grant votes: a voter of its own membership, or a founding
    /// replica left for its preferred peer to form that holds no log yet (`crate::bootstrap`).
    pub fn may_vote(&self) -> bool {
        self.with_metrics(|m| {
            m.membership_config.voter_ids().any(|v| v == self.node_id)
                || (self.founding_vote.load(std::sync::atomic::Ordering::Acquire)
                    && m.last_log_index.is_none())
        })
    }

    /// Lets this founding replica vote before it holds a membership (or no longer).
    pub fn allow_founding_vote(&self, allow: bool) {
        self.founding_vote.store(allow, std::sync::atomic::Ordering::Release);
    }

    /// How old this replica's state may be now (what a STALE read here would report), or
    /// `None` if it has not caught up with a leader since it started.
    pub fn staleness_now_ms(&self) -> Option<u64> {
        self.with_metrics(|m| self.staleness_ms(m))
    }

    /// The last log index this replica has applied.
    pub fn applied_index(&self) -> u64 {
        self.with_metrics(|m| m.last_applied.map_or(0, |l| l.index))
    }

    /// Runs `f` on the current metrics without cloning them (they hold maps; reads call this
    /// on every request). `f` runs holding the metrics channel's read lock, which openraft
    /// needs to publish new metrics: it must not await, must not read this shard's metrics
    /// again, and must not take a lock whose holder could be waiting on openraft.
    pub fn with_metrics<R>(&self, f: impl FnOnce(&RaftMetrics<TypeConfig>) -> R) -> R {
        f(&self.raft.metrics().borrow_watched())
    }

    /// Called on every AppendEntries (heartbeats included) received from a leader, with its
    /// freshness stamp: once this replica has applied the message's commit index, its state is
    /// as fresh as the stamp. The stamp is not the send time but the time the leader can vouch
    /// for its commit index (`crate::leader_clock`): a request built, held in a backoff and
    /// sent 2 s later carries a 2 s old commit index (bug 12 in `docs/chaos.md`).
    ///
    /// Only a commit index of the leader's own term counts: a new leader does not know how far
    /// its predecessor committed until it commits an entry of its own term (Raft §5.4.2), so
    /// until then its commit index may miss writes already acknowledged to clients (found by
    /// the chaos harness: a 2 s old STALE read reported as 4 ms old right after an election).
    pub fn note_leader_contact(
        &self,
        sent_at_unix_ms: u64,
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) {
        let own_term_commit = rpc
            .leader_commit
            .as_ref()
            .filter(|c| c.leader_id.term == rpc.vote.leader_id.term)
            .map(|c| c.index);
        self.freshness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(sent_at_unix_ms, own_term_commit);
    }

    /// How old this replica's state may be, or `None` if it has not caught up with a leader
    /// since it started.
    fn staleness_ms(&self, m: &RaftMetrics<TypeConfig>) -> Option<u64> {
        if m.state == ServerState::Leader {
            // Until it has applied an entry of its own term, a new leader may lack writes its
            // predecessor committed (see `note_leader_contact`).
            if m.last_applied.as_ref().map(|l| l.leader_id.term) != Some(m.current_term) {
                return None;
            }
            // No quorum acknowledgement yet: a leader elected a moment ago.
            return Some(
                quorum_acked_age(m)
                    .map_or(0, |age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            );
        }
        let applied = m.last_applied.map_or(0, |l| l.index);
        self.freshness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .staleness_ms(applied, crate::network::unix_ms())
    }

    pub fn header(&self, consistency: Consistency) -> ResponseHeader {
        self.with_metrics(|m| ResponseHeader {
            shard_id: self.id,
            node_id: self.node_id,
            term: m.current_term,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            staleness_ms: if consistency == Consistency::Stale {
                self.staleness_ms(m).unwrap_or(u64::MAX)
            } else {
                0
            },
        })
    }

    fn leader_hint(
        &self,
        leader_id: Option<NodeId>,
        leader_node: Option<openraft::BasicNode>,
    ) -> NodeError {
        let leader = match (leader_id, leader_node) {
            (Some(id), Some(node)) => Some((id, node.addr)),
            (Some(id), None) => {
                let m = self.metrics();
                m.membership_config.membership().get_node(&id).map(|n| (id, n.addr.clone()))
            }
            _ => None,
        };
        NodeError::NotLeader { shard: self.id, leader }
    }

    /// `NotLeader` naming the leader this replica currently knows of, if any.
    pub fn not_leader(&self) -> NodeError {
        let leader = self.with_metrics(|m| m.current_leader);
        self.leader_hint(leader, None)
    }

    fn fatal(&self, f: &Fatal<TypeConfig>) -> NodeError {
        match f {
            // By the fault's kind, which the storage layer set where it found the damage.
            Fatal::StorageError(e)
                if Fault::find(e).is_some_and(|f| f.kind == FaultKind::Corrupt) =>
            {
                NodeError::Corrupted { shard: self.id, reason: e.to_string() }
            }
            other => NodeError::ShardUnavailable { shard: self.id, reason: other.to_string() },
        }
    }

    /// Proposes `proposal` and waits for it to be applied (or for `timeout`). A write whose
    /// session was superseded comes back as an error: its outcome is unknown.
    pub async fn write(
        &self,
        proposal: Proposal,
        timeout: Duration,
    ) -> Result<CommandResult, NodeError> {
        let waited_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let started = std::time::Instant::now();
        self.on_request(true, timeout).await;
        let timeout = timeout.saturating_sub(started.elapsed());
        let result = tokio::time::timeout(timeout, self.raft.client_write(proposal))
            .await
            .map_err(|_| NodeError::Timeout { shard: self.id, what: "write", waited_ms })?;
        match result {
            Ok(resp) => match resp.data {
                CommandResult::SessionSuperseded { last_seq } => {
                    Err(NodeError::SessionSuperseded { shard: self.id, last_seq })
                }
                data => Ok(data),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.leader_hint(f.leader_id, f.leader_node))
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(NodeError::OutcomeUnknown { shard: self.id })
            }
            Err(RaftError::APIError(other)) => Err(NodeError::Internal(other.to_string())),
            Err(RaftError::Fatal(f)) => Err(self.fatal(&f)),
        }
    }

    /// Waits until a read at `consistency` may be served from this replica.
    pub async fn read_barrier(
        &self,
        consistency: Consistency,
        timeout: Duration,
    ) -> Result<(), NodeError> {
        let started = std::time::Instant::now();
        self.on_request(consistency == Consistency::Lease, timeout).await;
        let timeout = timeout.saturating_sub(started.elapsed());
        let policy = match consistency {
            Consistency::Stale => {
                // Even stale reads must come from a running shard (not a stopped, corrupt one)
                // that knows how old its state is.
                return self.with_metrics(|m| {
                    if let Err(f) = &m.running_state {
                        return Err(self.fatal(f));
                    }
                    match self.staleness_ms(m) {
                        Some(_) => Ok(()),
                        None => Err(NodeError::ShardUnavailable {
                            shard: self.id,
                            reason: "this replica has not caught up with a leader since it \
                                     started, so it cannot bound the staleness of its state; \
                                     try another replica"
                                .into(),
                        }),
                    }
                });
            }
            Consistency::Lease => Some(ReadPolicy::LeaseRead),
            // ReadIndex rounds are shared by the reads waiting for one (see `read_barrier`).
            Consistency::Linearizable | Consistency::Unspecified => None,
        };
        let waited_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let barrier = async {
            match policy {
                Some(p) => {
                    self.raft.ensure_linearizable(p).await.map(|_| ()).map_err(ReadFailure::Raft)
                }
                None => self.reads.wait().await,
            }
        };
        let timed_out = || NodeError::Timeout { shard: self.id, what: "read barrier", waited_ms };
        let result = tokio::time::timeout(timeout, barrier).await.map_err(|_| timed_out())?;
        let raft_error = match result {
            Ok(()) => return Ok(()),
            Err(ReadFailure::RoundTimeout) => return Err(timed_out()),
            Err(ReadFailure::Raft(e)) => e,
        };
        match raft_error {
            RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => {
                Err(self.leader_hint(f.leader_id, f.leader_node))
            }
            RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)) => {
                Err(NodeError::QuorumUnavailable { shard: self.id, reason: q.to_string() })
            }
            RaftError::Fatal(f) => Err(self.fatal(&f)),
        }
    }

    /// The current fault of this replica, if it stopped.
    pub fn fault(&self) -> Option<String> {
        self.metrics().running_state.err().map(|f| f.to_string())
    }
}
