//! Server streams that survive leader changes: follow a shard's leader, and when the stream
//! breaks, reopen it on the (new) leader from the last position delivered.
//!
//! A subscription or a watch is served by one shard's leader. When that node dies, loses
//! leadership (it ends the stream with `NOT_LEADER`) or the connection drops, the follower
//! classifies the error like a unary call would ([`crate::retry::classify`]): a redirect goes
//! to the named leader, a transient failure backs off, a final error (a compacted revision,
//! an offset trimmed away, a deleted topic) is passed to the consumer and ends the stream.
//! The position is what the consumer has *received*: a message counts once it is in the
//! output channel, so a reopened stream starts right after it: no gap, no repeat.
//!
//! Flow control carries through: the output channel holds [`OUTPUT_BUFFER`] messages, and the
//! upstream stream is only read when there is room, so HTTP/2 flow control pushes back on the
//! node. Reconnects never give up while the consumer is there (a stream has no deadline), but
//! back off up to `backoff_max` between attempts.

use crate::cluster::{Cluster, Target};
use crate::retry::{self, Next};
use crate::skips::Skips;
use futures::future::BoxFuture;
use ringkv_placement::{ShardId, ShardMap};
use std::time::Duration;
use tokio::sync::mpsc;
// Every channel to a node adds the credential of the call (see `ringkv_auth::forward`).
use ringkv_auth::AuthChannel as Channel;
use tonic::{Status, Streaming};

/// Messages buffered between a followed stream and its consumer.
pub const OUTPUT_BUFFER: usize = 2;
/// How long opening a stream (the node's read barrier included) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a followed stream needs: how to open it from the current position, and how a message
/// moves the position.
pub trait Resumable: Send + 'static {
    type Item: Send + 'static;
    fn shard(&self) -> ShardId;
    /// Opens the stream on `channel` from the current position.
    fn open(&self, channel: Channel) -> BoxFuture<'static, Result<Streaming<Self::Item>, Status>>;
    /// Records that `item` was delivered; returns whether to pass it on (a reopened stream's
    /// empty "starting here" message is not news to the consumer).
    fn advance(&mut self, item: &Self::Item, first_ever: bool) -> bool;
}

/// Follows `r` until the consumer drops the receiving end or a final error.
pub async fn follow<R: Resumable>(
    cluster: Cluster,
    mut r: R,
    tx: mpsc::Sender<Result<R::Item, Status>>,
) {
    let shard = r.shard();
    let mut failures = 0u32;
    let mut first_ever = true;
    let mut skip = Skips::default();
    loop {
        if tx.is_closed() {
            return;
        }
        let status = 'attempt: {
            let map = match cluster.current_map() {
                Ok(m) => m,
                Err(e) => break 'attempt e.to_status(),
            };
            let Some(node) = cluster.choose(&map, shard, Target::Leader, skip.nodes()) else {
                skip.clear();
                break 'attempt Status::unavailable("no replica of the shard is known");
            };
            let mut stream = match tokio::time::timeout(OPEN_TIMEOUT, r.open(node.channel())).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(status)) => {
                    if retry::node_answered(&status) {
                        node.on_answer();
                    }
                    note_failure(&cluster, &map, shard, node.id, &status, &mut skip).await;
                    break 'attempt status;
                }
                Err(_) => {
                    skip.failed(node.id);
                    break 'attempt Status::deadline_exceeded("opening the stream timed out");
                }
            };
            node.on_answer();
            cluster.inner.topology.set_leader(shard, node.id);
            tracing::debug!(shard, node = node.id, "stream opened");
            skip.clear();
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                match msg {
                    Ok(Some(item)) => {
                        failures = 0;
                        let pass = r.advance(&item, first_ever);
                        first_ever = false;
                        if pass && tx.send(Ok(item)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break 'attempt Status::unavailable("the node ended the stream"),
                    Err(status) => {
                        note_failure(&cluster, &map, shard, node.id, &status, &mut skip).await;
                        break 'attempt status;
                    }
                }
            }
        };
        if retry::classify(&status) == Next::Fail {
            let _ = tx.send(Err(status)).await;
            return;
        }
        tracing::debug!(shard, error = %status.message(), "stream broke; resuming");
        if !matches!(retry::classify(&status), Next::Redirect(Some(_))) || failures > 0 {
            let pause = match retry::classify(&status) {
                Next::RetryAfter(delay) => retry::jittered(delay),
                _ => retry::backoff(&cluster.inner.cfg, failures),
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = tx.closed() => return,
            }
        }
        failures = failures.saturating_add(1);
    }
}

async fn note_failure(
    cluster: &Cluster,
    map: &ShardMap,
    shard: ShardId,
    node: u64,
    status: &Status,
    skip: &mut Skips,
) {
    let topology = &cluster.inner.topology;
    match retry::classify(status) {
        // A fresh hint brings back a node that only refused: a stream has no deadline, so a
        // node skipped forever while every other replica names it as leader would be a
        // livelock (found by the event tests under load). A hint naming a node that did not
        // answer is stale (see `skips`).
        Next::Redirect(Some(leader)) if leader != node && skip.follow_hint(leader) => {
            cluster.learned_leader(map, shard, leader);
        }
        Next::Redirect(_) => {
            topology.forget_leader(shard, node);
            skip.refused(node);
        }
        Next::Backoff { node_failed: true } => {
            topology.forget_leader(shard, node);
            skip.failed(node);
        }
        Next::RefreshMap => {
            // As for unary calls (`Cluster::call`): the node holds no replica, whatever the
            // refreshed map says.
            topology.forget_leader(shard, node);
            skip.refused(node);
            let _ = cluster.refresh_map().await;
        }
        Next::Backoff { node_failed: false } | Next::RetryAfter(_) | Next::Fail => {}
    }
}
