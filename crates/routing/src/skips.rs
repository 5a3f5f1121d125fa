//! The nodes one call is steering around, and why.
//!
//! A call (a unary request with its retries, or a followed stream) skips a node after it
//! refused or failed, so the next attempt goes elsewhere. The reason matters when another
//! replica then names a skipped node as the leader:
//!
//! - a node that *refused* (`NOT_LEADER`, often while it was still taking over after a leader
//!   transfer) may have become leader since: a fresh hint naming it is news, and the node comes
//!   off the list. Ignoring such hints was a livelock for streams, which have no deadline
//!   (`docs/chaos.md`, bug 4), and cost unary calls a full backoff round;
//! - a node that *failed to answer* (unreachable, timed out) is not helped by a hint: the
//!   replica naming it has simply not noticed yet. The hint is stale and the call looks
//!   elsewhere; once every replica is skipped the caller clears the list and backs off.
//!
//! Unary calls and streams share this type so they cannot drift apart again.

/// Skipped nodes of one call.
#[derive(Debug, Default, Clone)]
pub struct Skips {
    /// Every skipped node, in the order skipped (what node choice avoids).
    nodes: Vec<u64>,
    /// The subset that failed to answer (hints do not bring these back).
    failed: Vec<u64>,
}

impl Skips {
    /// The nodes to avoid.
    pub fn nodes(&self) -> &[u64] {
        &self.nodes
    }

    /// `node` refused (not the leader, no usable hint).
    pub fn refused(&mut self, node: u64) {
        if !self.nodes.contains(&node) {
            self.nodes.push(node);
        }
    }

    /// `node` did not answer.
    pub fn failed(&mut self, node: u64) {
        self.refused(node);
        if !self.failed.contains(&node) {
            self.failed.push(node);
        }
    }

    /// Another replica named `leader` as the shard's leader. Returns whether the hint is worth
    /// following: yes unless `leader` failed to answer during this call. A node that only
    /// refused comes off the list.
    pub fn follow_hint(&mut self, leader: u64) -> bool {
        if self.failed.contains(&leader) {
            return false;
        }
        self.nodes.retain(|n| *n != leader);
        true
    }

    /// Starts over with every replica (all were skipped, or a stream got through).
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.failed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_brings_back_a_node_that_refused_but_not_one_that_failed() {
        let mut s = Skips::default();
        s.refused(3);
        s.failed(2);
        assert_eq!(s.nodes(), &[3, 2]);
        assert!(s.follow_hint(3), "node 3 only refused: it may have taken over since");
        assert_eq!(s.nodes(), &[2]);
        assert!(!s.follow_hint(2), "node 2 did not answer: a hint naming it is stale");
        assert!(s.nodes().contains(&2));
        assert!(s.follow_hint(1), "a hint for a node never skipped is followed");
        s.clear();
        assert!(s.nodes().is_empty() && s.follow_hint(2));
    }

    #[test]
    fn skipping_twice_lists_a_node_once() {
        let mut s = Skips::default();
        s.refused(1);
        s.failed(1);
        s.refused(1);
        assert_eq!(s.nodes(), &[1]);
        assert!(!s.follow_hint(1));
    }
}
