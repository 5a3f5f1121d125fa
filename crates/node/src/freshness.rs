//! How fresh a follower's state is: the rule behind a STALE read's `staleness_ms` there.
//!
//! A follower's applied state holds every write acknowledged before time `T` once it has
//! applied the commit index a leader vouched for at `T` (the message's freshness stamp, see
//! `crate::leader_clock`). So the follower keeps the newest (stamp, commit index) it received
//! and, once its applied index reaches that commit index, it is fresh as of the stamp. Each
//! weaker rule was found wrong by the chaos harness (`docs/chaos.md`): the time a message
//! *arrived* (a follower catching up hears heartbeats long before it has the entries), "fresh
//! since start" (a restarted follower serves data from before its crash), a commit index of
//! an earlier term (a new leader's commit index lags until it commits one of its own), and the
//! *send* time (openraft may hold a built request for seconds).
//!
//! One pending slot, the newest: a follower that applies more slowly than the leader commits
//! never catches up with it and honestly reports a growing staleness.

/// A follower's freshness. I/O-free: the shard feeds it messages and its applied index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Freshness {
    fresh_unix_ms: Option<u64>,
    /// The newest leader message not yet covered: (stamp, Unix ms; leader's commit index).
    pending: Option<(u64, u64)>,
}

impl Freshness {
    /// A leader message: its freshness stamp (0 for none) and commit index, when that index
    /// belongs to the leader's own term (`None` otherwise: it proves nothing).
    pub fn note(&mut self, stamp_unix_ms: u64, own_term_commit: Option<u64>) {
        let Some(commit) = own_term_commit else { return };
        if stamp_unix_ms == 0 {
            return;
        }
        // Messages of one stream arrive in order; across reconnects keep the newest.
        if self.pending.is_none_or(|(at, _)| stamp_unix_ms >= at) {
            self.pending = Some((stamp_unix_ms, commit));
        }
    }

    /// How old the state with `applied` as its applied index may be at `now_unix_ms`, or
    /// `None` if it has not caught up with a leader since this replica started.
    pub fn staleness_ms(&mut self, applied: u64, now_unix_ms: u64) -> Option<u64> {
        if let Some((at, commit)) = self.pending
            && applied >= commit
        {
            self.fresh_unix_ms = Some(self.fresh_unix_ms.map_or(at, |fresh| fresh.max(at)));
            self.pending = None;
        }
        self.fresh_unix_ms.map(|fresh| now_unix_ms.saturating_sub(fresh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_follower_is_not_fresh_until_it_applies_what_a_leader_vouched_for() {
        let mut f = Freshness::default();
        assert_eq!(f.staleness_ms(500, 10_000), None, "nothing heard since start");
        f.note(9_000, Some(600));
        assert_eq!(f.staleness_ms(500, 10_000), None, "heard, but behind the commit index");
        assert_eq!(f.staleness_ms(600, 10_000), Some(1_000));
        assert_eq!(f.staleness_ms(600, 12_500), Some(3_500), "no news: the age grows");
    }

    #[test]
    fn messages_that_prove_nothing_are_ignored() {
        let mut f = Freshness::default();
        f.note(9_000, None);
        f.note(0, Some(10));
        assert_eq!(f.staleness_ms(1_000, 10_000), None);
    }

    #[test]
    fn the_newest_message_wins_and_an_older_one_never_moves_freshness_back() {
        let mut f = Freshness::default();
        f.note(5_000, Some(10));
        assert_eq!(f.staleness_ms(10, 6_000), Some(1_000));
        f.note(7_000, Some(20));
        f.note(6_500, Some(15)); // from an older stream, arriving late: ignored
        assert_eq!(f.staleness_ms(15, 8_000), Some(3_000), "15 does not cover the newest (20)");
        assert_eq!(f.staleness_ms(20, 8_000), Some(1_000));
        f.note(6_000, Some(21));
        assert_eq!(f.staleness_ms(21, 8_000), Some(1_000), "an older stamp never rewinds");
    }

    #[test]
    fn a_follower_that_applies_slower_than_the_leader_commits_reports_a_growing_age() {
        let mut f = Freshness::default();
        f.note(1_000, Some(10));
        assert_eq!(f.staleness_ms(10, 1_000), Some(0));
        // The leader keeps committing ahead of what this replica applies.
        for (t, commit, applied) in [(2_000, 30, 25), (3_000, 50, 45), (4_000, 70, 65)] {
            f.note(t, Some(commit));
            assert_eq!(f.staleness_ms(applied, t), Some(t - 1_000));
        }
    }
}
