//! One shard replica on this node: its Raft group and the ways requests use it.
//!
//! Writes are proposed through Raft and answered with the state machine's result. Reads take
//! a barrier chosen by the consistency level first:
//! - LINEARIZABLE: ReadIndex. The leader confirms with a quorum that it is still leader, then
//!   waits until it has applied up to the commit index it saw; any read after that sees every
//!   write acknowledged before the read began.
//! - LEASE: the leader skips the quorum round while its lease (the time since a quorum last
//!   acknowledged it, below the election timeout) is fresh; otherwise it refuses.
//! - STALE: no barrier; any replica answers from what it has applied and says how old that
//!   state may be (`staleness_ms`, an upper bound on the age of the newest write it might miss):
//!   - a leader: the time since a quorum last acknowledged it (the send time of the heartbeat
//!     they acknowledged), so a deposed leader cut off in a minority reports a growing age;
//!   - a follower: the time since it received a leader message whose commit index it has since
//!     applied. Merely hearing from a leader is not enough: a follower catching up after a
//!     partition hears heartbeats long before it has the entries (the chaos harness caught
//!     exactly that: STALE reads 3 s old reported as 40 ms old).

use crate::error::NodeError;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, Fatal, LinearizableReadError, RaftError};
use openraft::{Instant as _, RaftMetrics, ReadPolicy, ServerState};
use ringkv_placement::{NodeId, ShardId};
use ringkv_proto::v1::{Consistency, ResponseHeader};
use ringkv_storage::{CommandResult, Proposal, ShardReader, ShardStateMachine, TypeConfig};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub type ShardRaft = openraft::Raft<TypeConfig, ShardStateMachine>;

/// How long a request may wait on Raft when the caller set no deadline.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

pub struct Shard {
    pub id: ShardId,
    pub node_id: NodeId,
    pub raft: ShardRaft,
    pub state_machine: ShardStateMachine,
    pub reader: ShardReader,
    started: Instant,
    freshness: Mutex<Freshness>,
}

/// When this replica's applied state was last known to hold everything committed, in
/// milliseconds after `Shard::started`.
#[derive(Debug, Default)]
struct Freshness {
    fresh_ms: u64,
    /// The newest leader contact not yet covered: (received at ms, leader's commit index).
    /// One slot, the newest: a follower that applies slower than the leader commits never
    /// catches up with it and honestly reports a growing staleness.
    pending: Option<(u64, u64)>,
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
    ) -> Self {
        Shard {
            id,
            node_id,
            raft,
            state_machine,
            reader,
            started: Instant::now(),
            freshness: Mutex::new(Freshness::default()),
        }
    }

    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Called on every AppendEntries (heartbeats included) received from a leader, with the
    /// leader's commit index: once this replica has applied that index, its state is as fresh
    /// as the moment the message arrived.
    pub fn note_leader_contact(&self, leader_commit: u64) {
        let now = self.now_ms();
        let mut f = self.freshness.lock().unwrap_or_else(|p| p.into_inner());
        f.pending = Some((now, leader_commit));
    }

    fn staleness_ms(&self, m: &RaftMetrics<TypeConfig>) -> u64 {
        let now = self.now_ms();
        if m.state == ServerState::Leader {
            return match &m.last_quorum_acked {
                Some(acked) => u64::try_from(acked.elapsed().as_millis()).unwrap_or(u64::MAX),
                None => now,
            };
        }
        let applied = m.last_applied.map_or(0, |l| l.index);
        let mut f = self.freshness.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, commit)) = f.pending
            && applied >= commit
        {
            f.fresh_ms = f.fresh_ms.max(at);
            f.pending = None;
        }
        now.saturating_sub(f.fresh_ms)
    }

    pub fn header(&self, consistency: Consistency) -> ResponseHeader {
        let m = self.metrics();
        ResponseHeader {
            shard_id: self.id,
            node_id: self.node_id,
            term: m.current_term,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            staleness_ms: if consistency == Consistency::Stale { self.staleness_ms(&m) } else { 0 },
        }
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

    fn fatal(&self, f: &Fatal<TypeConfig>) -> NodeError {
        match f {
            Fatal::StorageError(e) if e.to_string().contains("corrupt") => {
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
        let policy = match consistency {
            Consistency::Stale => {
                // Even stale reads must come from a running shard (not a stopped, corrupt one).
                return match &self.metrics().running_state {
                    Ok(()) => Ok(()),
                    Err(f) => Err(self.fatal(f)),
                };
            }
            Consistency::Lease => ReadPolicy::LeaseRead,
            Consistency::Linearizable | Consistency::Unspecified => ReadPolicy::ReadIndex,
        };
        let waited_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let result = tokio::time::timeout(timeout, self.raft.ensure_linearizable(policy))
            .await
            .map_err(|_| NodeError::Timeout { shard: self.id, what: "read barrier", waited_ms })?;
        match result {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(self.leader_hint(f.leader_id, f.leader_node))
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q))) => {
                Err(NodeError::QuorumUnavailable { shard: self.id, reason: q.to_string() })
            }
            Err(RaftError::Fatal(f)) => Err(self.fatal(&f)),
        }
    }

    /// The current fault of this replica, if it stopped.
    pub fn fault(&self) -> Option<String> {
        self.metrics().running_state.err().map(|f| f.to_string())
    }
}
