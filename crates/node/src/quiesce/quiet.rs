//! One replica's quiescence state: awake, asleep as leader or asleep as follower, and the
//! transitions between them (which switch openraft's ticker, heartbeats and elections).

use crate::shard::ShardRaft;
use ringkv_placement::NodeId;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AWAKE: u8 = 0;
const LEADING: u8 = 1;
const FOLLOWING: u8 = 2;

/// One replica's quiescence state.
#[derive(Debug)]
pub struct Quiet {
    /// AWAKE, LEADING (quiesced as leader) or FOLLOWING (quiesced as follower); read without
    /// the lock on every message and request, changed only under it.
    mode: AtomicU8,
    /// The leader a quiesced follower follows.
    leader: AtomicU64,
    /// When this replica last served a request, in ms since `epoch`.
    last_active_ms: AtomicU64,
    /// When this replica last woke as a sleeping leader, in ms since `epoch` (see
    /// `awake_for`).
    woke_ms: AtomicU64,
    /// How many times this replica went to sleep: a vote or snapshot wakes it only if it
    /// arrived after the sleep began (see `Shard::after_raft_message`).
    sleeps: AtomicU64,
    /// The node-wide count of sleeps begun, shared by every replica of the node.
    sleeps_begun: Arc<AtomicU64>,
    /// How many times this replica woke as a sleeping leader (or gave up going to sleep after
    /// its followers agreed); stamped on its messages (`RaftRequest.leader_wakes`).
    wakes: Arc<AtomicU64>,
    /// While asleep as a follower: the leader's wake count when it went to sleep. Its
    /// messages with a higher count were sent after it woke.
    leader_wakes: AtomicU64,
    epoch: Instant,
    /// Serializes transitions; holds the peers (id, address) the sleep depends on: the
    /// leader for a follower, the followers for a leader (the pinger watches them without
    /// reading the group's metrics).
    transitions: Mutex<Vec<(NodeId, String)>>,
    /// The term this replica was last seen leading and since when (see `leading_for`).
    leading: Mutex<Option<(u64, Instant)>>,
}

impl Quiet {
    /// `wakes` is shared with the replica's Raft network, which stamps it on every message;
    /// `sleeps_begun` with every replica of the node, which counts each sleep it begins.
    pub fn new(wakes: Arc<AtomicU64>, sleeps_begun: Arc<AtomicU64>) -> Self {
        Quiet {
            mode: AtomicU8::new(AWAKE),
            leader: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
            woke_ms: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            sleeps_begun,
            wakes,
            leader_wakes: AtomicU64::new(0),
            epoch: Instant::now(),
            transitions: Mutex::new(Vec::new()),
            leading: Mutex::new(None),
        }
    }

    /// How long this replica has been seen leading in `term`: since the first call for that
    /// term (the quiescer asks every round, so this is within a round of the election). A
    /// follower that has not acknowledged a leadership this old is taken as gone.
    pub(super) fn leading_for(&self, term: u64) -> Duration {
        let mut leading = self.leading.lock().unwrap_or_else(|p| p.into_inner());
        match *leading {
            Some((t, since)) if t == term => since.elapsed(),
            _ => {
                *leading = Some((term, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// This replica's wake count as leader.
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::SeqCst)
    }

    /// Counts a wake-up of this replica as leader: followers asleep since before it wake on
    /// its next message.
    pub(super) fn bump_wakes(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }

    /// Wakes a sleeping follower on an AppendEntries handled from `from` stamped `wakes`:
    /// when the leader woke since it went to sleep, or another node sends (a new leader). A
    /// sleeping leader that receives one (from a leader of a newer term) wakes too.
    pub fn wake_on_append(&self, raft: &ShardRaft, from: NodeId, wakes: u64) {
        match self.mode.load(Ordering::SeqCst) {
            AWAKE => {}
            FOLLOWING => {
                if from != self.leader.load(Ordering::SeqCst)
                    || wakes > self.leader_wakes.load(Ordering::SeqCst)
                {
                    self.wake(raft);
                }
            }
            _ => {
                self.wake(raft);
            }
        }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(NodeId, String)>> {
        self.transitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The sleep count, to take before handling a Raft message.
    pub fn sleeps(&self) -> u64 {
        self.sleeps.load(Ordering::SeqCst)
    }

    /// Wakes the group if it sleeps since before the message that took `sleeps_before` was
    /// received. A message that was in flight when the group went to sleep (a reply yielded
    /// late, a heartbeat handled while the follower agreed to sleep) says nothing about the
    /// leader being awake: waking on it would leave an awake follower that hears from no
    /// one, and its election timer would depose the sleeping leader.
    pub fn wake_on_message(&self, raft: &ShardRaft, sleeps_before: u64) {
        if self.mode.load(Ordering::SeqCst) == AWAKE || self.sleeps() != sleeps_before {
            return;
        }
        self.wake(raft);
    }

    /// Calls `f` with each peer (id, address) this replica's sleep depends on, without
    /// copying them: the pinger asks every replica this many times a second.
    pub fn each_peer(&self, mut f: impl FnMut(NodeId, &str)) {
        // Under the lock: transitions change the mode and the peers together under it.
        let peers = self.lock();
        if !self.is_quiet() {
            return;
        }
        for (peer, addr) in peers.iter() {
            f(*peer, addr);
        }
    }

    /// Whether this replica sleeps depending on `peer`.
    pub fn sleeps_on(&self, peer: NodeId) -> bool {
        let mut found = false;
        self.each_peer(|p, _| found |= p == peer);
        found
    }

    /// Whether the group is quiesced on this replica.
    pub fn is_quiet(&self) -> bool {
        self.mode.load(Ordering::SeqCst) != AWAKE
    }

    /// The leader this replica follows while quiesced as a follower.
    pub fn quiet_leader(&self) -> Option<NodeId> {
        (self.mode.load(Ordering::SeqCst) == FOLLOWING).then(|| self.leader.load(Ordering::SeqCst))
    }

    /// Whether this replica is quiesced as the group's leader.
    pub fn is_quiet_leader(&self) -> bool {
        self.mode.load(Ordering::SeqCst) == LEADING
    }

    /// When this replica last served a request (an opaque stamp, to compare).
    pub(super) fn active_at_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::SeqCst)
    }

    /// How long this replica has been awake since it last woke as a sleeping leader (or since
    /// it was created). A sleeping leader sends nothing, so its followers' acknowledgements
    /// are as old as its sleep: only silence while awake says a follower is gone.
    pub(super) fn awake_for(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.woke_ms.load(Ordering::SeqCst)))
    }

    pub(super) fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms().saturating_sub(self.last_active_ms.load(Ordering::SeqCst)),
        )
    }

    /// A request arrived: it keeps the group awake, and wakes a quiesced leader. Returns
    /// whether it did (the caller sends a heartbeat round). A quiesced follower serving a
    /// STALE read stays asleep: woken alone, its election timer (counting from a leader
    /// contact long ago) would start an election against a healthy leader.
    pub fn activity(&self, raft: &ShardRaft) -> bool {
        // Store first, read the mode second; `quiesce_leader` does the reverse, so either this
        // sees the group quiesced (and wakes it) or the quiescer sees this activity (and backs
        // off).
        self.last_active_ms.store(self.now_ms(), Ordering::SeqCst);
        if self.mode.load(Ordering::SeqCst) != LEADING {
            return false;
        }
        self.wake_leader(raft)
    }

    /// Wakes a quiesced leader (not a follower: see `activity`). Returns whether it slept.
    pub fn wake_leader(&self, raft: &ShardRaft) -> bool {
        let _g = self.lock();
        if self.mode.load(Ordering::SeqCst) != LEADING {
            return false;
        }
        self.mode.store(AWAKE, Ordering::SeqCst);
        self.woke_ms.store(self.now_ms(), Ordering::SeqCst);
        self.bump_wakes();
        let rc = raft.runtime_config();
        rc.heartbeat(true);
        rc.tick(true);
        true
    }

    /// Wakes the group on this replica: timers on again. Returns whether it was quiesced as
    /// leader.
    pub fn wake(&self, raft: &ShardRaft) -> bool {
        let _g = self.lock();
        let was = self.mode.swap(AWAKE, Ordering::SeqCst);
        let rc = raft.runtime_config();
        match was {
            LEADING => {
                self.woke_ms.store(self.now_ms(), Ordering::SeqCst);
                self.bump_wakes();
                rc.heartbeat(true);
                rc.tick(true);
                true
            }
            FOLLOWING => {
                rc.elect(true);
                rc.tick(true);
                false
            }
            _ => false,
        }
    }

    /// Quiesces this follower (the leader checked everything else; the caller checked the
    /// replica follows it and is caught up).
    pub(super) fn quiesce_follower(
        &self,
        raft: &ShardRaft,
        leader: (NodeId, String),
        leader_wakes: u64,
    ) {
        let mut peers = self.lock();
        let (leader, addr) = leader;
        *peers = vec![(leader, addr)];
        self.sleeps.fetch_add(1, Ordering::SeqCst);
        self.sleeps_begun.fetch_add(1, Ordering::SeqCst);
        self.leader.store(leader, Ordering::SeqCst);
        self.leader_wakes.store(leader_wakes, Ordering::SeqCst);
        self.mode.store(FOLLOWING, Ordering::SeqCst);
        let rc = raft.runtime_config();
        rc.elect(false);
        rc.tick(false);
    }

    /// Quiesces this leader unless a request arrived since `idle_since_ms`.
    pub(super) fn quiesce_leader(
        &self,
        raft: &ShardRaft,
        active_at_ms: u64,
        followers: &[(NodeId, String)],
    ) -> bool {
        let mut peers = self.lock();
        if self.mode.load(Ordering::SeqCst) != AWAKE {
            return false;
        }
        self.mode.store(LEADING, Ordering::SeqCst);
        if self.last_active_ms.load(Ordering::SeqCst) != active_at_ms {
            self.mode.store(AWAKE, Ordering::SeqCst);
            // Followers agreed: they must wake on this leader's next message.
            self.bump_wakes();
            return false;
        }
        self.sleeps.fetch_add(1, Ordering::SeqCst);
        self.sleeps_begun.fetch_add(1, Ordering::SeqCst);
        *peers = followers.to_vec();
        let rc = raft.runtime_config();
        rc.heartbeat(false);
        rc.tick(false);
        true
    }
}
