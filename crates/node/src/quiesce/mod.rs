//! Quiescence: an idle shard stops its Raft timers on every replica, so a node can hold
//! thousands of shards that cost nothing while nobody uses them (TiKV's hibernate regions,
//! CockroachDB's quiescence).
//!
//! **Why.** An awake openraft group ticks every ~1/5 of the heartbeat interval on every
//! replica and its leader sends a heartbeat to every follower each interval: 128 idle shards
//! on 3 nodes kept a fifth of a core busy per node. A quiesced group has its ticker parked
//! (`runtime_config().tick(false)`): no wake-ups, no heartbeats, no election timeouts.
//!
//! **Going quiet** (leader-driven, [`Quiescer::round`]). The leader of a group that served no
//! request for `quiesce_after`, whose every voter has acknowledged it recently and holds its
//! last log entry, that has applied everything of its own term, has a uniform membership with
//! no learners and no replica move, and that the leader balancer would not hand away, asks
//! each follower to quiesce, naming its term and last index. A follower agrees only if it
//! follows that leader in that term, has applied exactly that index and can bound the
//! staleness of its state (it holds a leader's freshness claim covering it, so STALE reads
//! keep working while it sleeps); it then turns off its ticker (and with it its election
//! timer). When all agreed and nothing happened on the
//! leader meanwhile, the leader turns off its heartbeats and ticker. A follower that agreed
//! while the leader did not finish is woken by the leader's next heartbeat.
//!
//! **Past a gone follower.** A follower that has acknowledged nothing for a long while (its
//! node down or cut off) is neither asked nor waited for, as long as the leader and the
//! followers that agree are a majority; otherwise the group stays awake and keeps trying.
//! With a node down, every group it was part of would otherwise stay awake and heartbeat it
//! (at 1,024 shards that kept both survivors' cores busy). When it comes back, the leader's
//! replication, which retries what a follower lacks (with backoff) asleep or not, catches it
//! up; one that lacks nothing pre-votes when its election timer fires, and the sleeping
//! leader wakes on that, refuses, and heartbeats it.
//!
//! **Waking.** A Raft message handled by a quiesced replica wakes it, *after* the message was
//! handled: a follower's election timer counts from the last leader contact, which was long
//! ago; turned on first, it would start an election at once instead of taking the leader's
//! message. But only a message sent after the sleep began: the leader stamps every message
//! with how many times it woke, and names that count when it asks to sleep, so a heartbeat
//! still in flight when the follower agreed does not wake it (it would then hear from no one
//! and depose the sleeping leader; the chaos of a loaded test machine found this). A request at a quiesced leader (write, read, membership change, leader
//! transfer) wakes it and sends a heartbeat round at once; writes and lease reads then wait
//! for a quorum to acknowledge it, since openraft refuses writes while the leader lease
//! (renewed only by acknowledgements) has expired.
//!
//! **Failure detection without heartbeats** ([`Pinger`]). One ping per node pair and
//! heartbeat interval replaces the heartbeats of every quiesced group between the two nodes.
//! A ping answers with the peer's boot id (random per process start), and carries the
//! sender's: a ping received tells as much as an answered one, so a node does not ping a peer
//! that pinged it within the interval (of two nodes, one pings and the other listens). A follower whose
//! leader's node stops answering for an election timeout, or restarted (its groups no longer
//! lead), wakes the groups that node led, which then elect as usual. A leader whose follower
//! restarted or stopped answering wakes too, so the restarted follower hears a heartbeat
//! before its own election timer fires and does not depose a healthy leader.
//!
//! A replica going to sleep also releases its shard's entry and session caches (see
//! `ringkv_storage::entry_cache`): up to a mebibyte each per shard, which a node of a thousand
//! shards could otherwise hold for entries nobody reads again.
//!
//! The meta group sleeps like any other. Every node's sync (each half second) asks its leader
//! for the records, which it serves from its applied state without Raft traffic, so a sync
//! does not wake it; what changes the records (a join, a drain, a node state, a move step)
//! is a write, which does. It cost each node ~0.4% of a core awake: a tick every 20 ms and
//! heartbeats to every peer, on a cluster doing nothing.
//!
//! The parts: [`Quiet`] (one replica's state and its transitions), [`Quiescer`] (the leader
//! side), [`Pinger`] and [`PeerLiveness`] (node-pair failure detection).

mod pinger;
mod quiescer;
mod quiet;

pub use pinger::{PeerLiveness, Pinger, ping, wake_sleeping_on};
pub use quiescer::{Quiescer, accept, follower_may_quiesce};
pub use quiet::Quiet;

use std::time::Duration;

/// Runs the quiescer and the pinger until aborted. The pinger runs every `interval`
/// (the heartbeat interval); the quiescer every few.
pub fn spawn(
    mut pinger: Pinger,
    quiescer: Quiescer,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            pinger.round().await;
            // The quiescer's checks walk every group's metrics: a few times per second is
            // plenty for a decision measured in seconds of idleness.
            if n.is_multiple_of(4) {
                quiescer.round().await;
            }
            n += 1;
        }
    })
}
