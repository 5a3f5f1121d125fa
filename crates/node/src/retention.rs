//! Retention: trimming old events and old watch history, decided by each shard's leader and
//! applied through Raft.
//!
//! Every interval the leader of each shard looks at the partitions it holds and computes the
//! first offset to keep under the topic's limits (events, bytes, age), then proposes a `Trim`
//! to that offset. Because the trim is a log entry, every replica removes exactly the same
//! events at the same point of its history, and a replica that was down catches up on the trim
//! like on any write. The leader's clock decides "too old" once, when it proposes; the
//! followers never look at their own clocks.
//!
//! The same loop compacts the KV change history that watchers read: once a shard has applied
//! more than `watch_history_revisions` entries beyond its oldest kept change, the leader
//! proposes `CompactChanges` so that about that many revisions stay available.
//!
//! A shard whose state has not changed since its last look (same applied index) and holds no
//! partition with an age limit is skipped: limits by count and bytes, and the compaction,
//! depend only on the state, so the same state gives the same answer. Without this every
//! leader read its partitions from RocksDB, off the runtime, every second, idle or not: at
//! 1,024 shards, about 340 blocking reads a second per node for nothing.

use crate::error::storage;
use crate::metrics::NodeMetrics;
use crate::registry::ShardRegistry;
use crate::shard::Shard;
use ringkv_placement::ShardId;
use ringkv_storage::stream_reader::PartitionEntry;
use ringkv_storage::streams::StreamCommand;
use ringkv_storage::{Command, Proposal, ShardReader};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Events examined per partition and round when trimming by age: bounds one round's work.
const AGE_SCAN_EVENTS_MAX: usize = 10_000;
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub fn spawn(
    registry: ShardRegistry,
    metrics: NodeMetrics,
    interval: Duration,
    history_revisions: u64,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Shard → the applied index at which a look found nothing time could change.
        let mut settled: HashMap<ShardId, u64> = HashMap::new();
        loop {
            tick.tick().await;
            let shards = registry.shards();
            // Forget shards that moved away (the same index means the same state, so a stale
            // entry is never wrong, only kept too long).
            if settled.len() > shards.len() {
                let ids: HashSet<ShardId> = shards.iter().map(|s| s.id).collect();
                settled.retain(|id, _| ids.contains(id));
            }
            for shard in shards {
                if !shard.is_leader() {
                    continue;
                }
                let applied = shard.applied_index();
                if settled.get(&shard.id) == Some(&applied) {
                    continue;
                }
                match enforce(&shard, &metrics, history_revisions).await {
                    Ok(Outcome { age_limited: false }) => {
                        settled.insert(shard.id, applied);
                    }
                    Ok(Outcome { age_limited: true }) => {
                        settled.remove(&shard.id);
                    }
                    Err(e) => {
                        settled.remove(&shard.id);
                        tracing::warn!(shard = shard.id, error = %e, "retention round failed");
                    }
                }
            }
        }
    })
}

async fn propose(shard: &Shard, metrics: &NodeMetrics, cmd: StreamCommand) -> Result<(), String> {
    metrics.retention_proposals.inc();
    let proposal = Proposal { session: None, command: Command::Stream(cmd) };
    shard.write(proposal, PROPOSE_TIMEOUT).await.map(|_| ()).map_err(|e| e.to_string())
}

/// What one look at a shard found.
struct Outcome {
    /// Some partition has an age limit: the next look may trim even if nothing changed.
    age_limited: bool,
}

async fn enforce(
    shard: &Shard,
    metrics: &NodeMetrics,
    history_revisions: u64,
) -> Result<Outcome, String> {
    let now_ms = crate::network::unix_ms();
    // The reads (every partition's record, a binary search by bytes, up to 10,000 events by
    // age) run off the async runtime, in one go; the proposals follow.
    let (trims, first) = shard
        .read(move |r| {
            let partitions = r.partitions().map_err(storage(r.shard_id()))?;
            let mut trims = Vec::new();
            for p in partitions {
                let before = keep_from(r, &p, now_ms).map_err(storage(r.shard_id()))?;
                trims.push((p, before));
            }
            Ok((trims, r.first_revision().map_err(storage(r.shard_id()))?))
        })
        .await
        .map_err(|e| e.to_string())?;
    let age_limited = trims.iter().any(|(p, _)| p.record.config.retention.max_age_ms > 0);
    for (p, before) in trims {
        if before > p.record.start_offset {
            tracing::debug!(shard = shard.id, topic = %p.topic, partition = p.partition, before, "trimming");
            propose(
                shard,
                metrics,
                StreamCommand::Trim {
                    topic: p.topic,
                    partition: p.partition,
                    before_offset: before,
                },
            )
            .await?;
        }
    }
    let applied = shard.applied_index();
    // A tenth of slack, so compaction runs in steps instead of after every write.
    if history_revisions > 0 && applied > first + history_revisions + history_revisions / 10 {
        propose(
            shard,
            metrics,
            StreamCommand::CompactChanges { below_revision: applied - history_revisions },
        )
        .await?;
    }
    Ok(Outcome { age_limited })
}

/// The first offset the partition must keep under its retention limits.
pub fn keep_from(reader: &ShardReader, p: &PartitionEntry, now_ms: u64) -> std::io::Result<u64> {
    let r = &p.record;
    let limits = r.config.retention;
    let mut keep = r.start_offset;
    if limits.max_events > 0 {
        keep = keep.max(r.next_offset.saturating_sub(limits.max_events));
    }
    if limits.max_bytes > 0 && r.bytes() > limits.max_bytes {
        // The smallest offset o with end_pos - pos(o) <= max_bytes; pos grows with o.
        let (mut lo, mut hi) = (r.start_offset, r.next_offset);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let pos = match reader.event(&p.topic, p.partition, mid)? {
                Some(e) => e.pos,
                None => r.end_pos,
            };
            if r.end_pos - pos <= limits.max_bytes {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        keep = keep.max(lo);
    }
    if limits.max_age_ms > 0 {
        let cutoff = now_ms.saturating_sub(limits.max_age_ms);
        let events =
            reader.events(&p.topic, p.partition, r.start_offset, AGE_SCAN_EVENTS_MAX, u64::MAX)?;
        let expired = events.iter().take_while(|(_, e)| e.timestamp_ms < cutoff).last();
        if let Some((offset, _)) = expired {
            keep = keep.max(offset + 1);
        }
    }
    Ok(keep)
}
