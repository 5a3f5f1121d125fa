//! What a leader may claim about its freshness on the messages it sends.
//!
//! Every AppendEntries carries a wall-clock stamp. A follower that has applied the message's
//! commit index reports its STALE reads as "fresh as of that stamp" (see `crate::shard`). For
//! that to be true, every write acknowledged to a client before the stamp must have an index
//! at or below the message's commit index, and no newer leader may have acknowledged anything
//! before the stamp.
//!
//! Stamping "now" when the message leaves is not enough, and the chaos harness proved it
//! (bug 12 in `docs/chaos.md`): openraft builds a request, reading the commit index, and then
//! may hold it (replication backoff after errors, a heartbeat worker waiting on a slow peer)
//! before the transport sees it. A request built 2 s before it was sent to a restarted node
//! carried a 2 s old commit index under a fresh stamp, and the follower served 2 s old values
//! as 74 ms old. So the stamp is the earliest of:
//!
//! - **the last time this leader's applied index was at or below the commit index carried**.
//!   A leader acknowledges a write only after applying it, and the state machine announces
//!   the applied index before it answers the clients, so at any time `t` with
//!   `applied(t) <= commit`, every write this leader had acknowledged is covered. The clock
//!   keeps a few recent samples `(time, applied)`, taken when messages are stamped: the time
//!   is read before the applied index, so each sample is a true upper bound. A message whose
//!   commit index is older than every sample makes no claim.
//! - **the send time of the last heartbeat a quorum acknowledged** (openraft's
//!   `last_quorum_acked`). A newer leader needs votes from a quorum, which overlaps the one
//!   that acknowledged this leader, and a voter that acknowledged this leader had not voted for
//!   another yet; so no newer leader had acknowledged anything before that time.
//!
//! A replica that is not the leader of the message's term, or has no quorum acknowledgement
//! yet, makes no claim (stamp 0). Only AppendEntries carry claims; other messages are stamped
//! with the plain send time, which nobody reads for freshness.

use crate::network::unix_ms;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::AppendEntriesRequest;
use openraft::type_config::alias::WatchReceiverOf;
use openraft::{RaftMetrics, ServerState};
use ringkv_storage::TypeConfig;
use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

/// Samples of the applied index kept per shard. Under steady load a message is stamped within
/// a few samples of its build; a request held longer than the samples reach back simply makes
/// no claim, which errs on the safe side (the follower's staleness grows until the next one).
const SAMPLES_MAX: usize = 32;

/// The freshness stamp source of one shard replica, shared by its clients to every peer.
pub struct LeaderClock {
    applied: tokio::sync::watch::Receiver<u64>,
    /// Set once the Raft group exists (the network is built before it).
    metrics: OnceLock<WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>>,
    samples: Mutex<Samples>,
}

impl std::fmt::Debug for LeaderClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderClock").field("applied", &*self.applied.borrow()).finish()
    }
}

impl LeaderClock {
    /// `applied` is the state machine's applied-index watch, announced before clients are
    /// answered.
    pub fn new(applied: tokio::sync::watch::Receiver<u64>) -> Self {
        LeaderClock { applied, metrics: OnceLock::new(), samples: Mutex::new(Samples::default()) }
    }

    /// Connects the clock to its Raft group's metrics; until then it makes no claims.
    pub fn attach(&self, metrics: WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>) {
        // A second attach would be a programming error; the first one stays.
        let _ = self.metrics.set(metrics);
    }

    /// The freshness stamp (Unix ms, 0 for no claim) for `rpc`, about to be sent.
    pub fn stamp(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> u64 {
        let term = rpc.vote.leader_id.term;
        let Some(commit) = rpc.leader_commit.as_ref().filter(|c| c.leader_id.term == term) else {
            return 0;
        };
        // Time first, state after: what is read afterwards can only be newer than `now`.
        let now = unix_ms();
        let Some(metrics) = self.metrics.get() else {
            return 0;
        };
        let quorum_acked_unix_ms = {
            let m = metrics.borrow_watched();
            if m.state != ServerState::Leader || m.current_term != term {
                return 0;
            }
            let Some(age) = crate::shard::quorum_acked_age(&m) else {
                return 0;
            };
            let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            now.saturating_sub(age_ms)
        };
        let applied = *self.applied.borrow();
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.record(now, applied);
        samples.covered_at(commit.index).map_or(0, |at| at.min(quorum_acked_unix_ms))
    }
}

/// Recent `(unix_ms, applied index)` pairs, oldest first, both increasing.
#[derive(Debug, Default)]
struct Samples(VecDeque<(u64, u64)>);

impl Samples {
    fn record(&mut self, at_unix_ms: u64, applied: u64) {
        match self.0.back_mut() {
            // Same applied index: the later time is the better bound for it.
            Some(last) if last.1 == applied => last.0 = last.0.max(at_unix_ms),
            _ => {
                if self.0.len() == SAMPLES_MAX {
                    self.0.pop_front();
                }
                self.0.push_back((at_unix_ms, applied));
            }
        }
    }

    /// The latest sampled time at which the applied index was at most `commit`.
    fn covered_at(&self, commit: u64) -> Option<u64> {
        self.0.iter().rev().find(|&&(_, applied)| applied <= commit).map(|&(at, _)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_current_commit_is_covered_now() {
        let mut s = Samples::default();
        s.record(1_000, 10);
        assert_eq!(s.covered_at(10), Some(1_000));
        assert_eq!(s.covered_at(12), Some(1_000));
    }

    #[test]
    fn an_old_commit_gets_the_time_it_was_still_current() {
        // The request was built when 10 was the commit, and held while the leader applied more.
        let mut s = Samples::default();
        s.record(1_000, 10);
        s.record(1_400, 10);
        s.record(2_000, 40);
        s.record(3_000, 77);
        assert_eq!(s.covered_at(10), Some(1_400));
        assert_eq!(s.covered_at(50), Some(2_000));
        assert_eq!(s.covered_at(9), None, "older than every sample: no claim");
    }

    #[test]
    fn samples_are_bounded_and_forget_the_oldest() {
        let mut s = Samples::default();
        for i in 0..(SAMPLES_MAX as u64 * 3) {
            s.record(i * 10, i);
        }
        assert_eq!(s.0.len(), SAMPLES_MAX);
        assert_eq!(s.covered_at(0), None);
        let last = SAMPLES_MAX as u64 * 3 - 1;
        assert_eq!(s.covered_at(last), Some(last * 10));
    }
}
