//! The receiving side of packed replication: one stream from a peer, many shards' sessions.
//!
//! A reader task takes each frame of the peer's `Packed` stream (see [`crate::packer`] for
//! the sender) and hands every request to its session: a new session id starts a session of
//! the shard its first request names, run exactly as a per-shard `StreamAppend` stream is
//! (`RaftService::append_session`), or, for a single request, handled as one AppendEntries
//! call. Each session's replies, in order, go to one outbound queue that is packed into
//! frames the same way ([`crate::frames`]). When a session ends on this side (its shard
//! stopped, a request for another shard), an empty reply tells the sender.
//!
//! **Bounds.** The reader never waits on a session: requests queue per session up to
//! [`SESSION_REQUESTS_MAX`], and a session that falls that far behind is ended alone (its
//! leader opens a new one), so one stuck group cannot stall replication of every other
//! shard from that peer. At most [`SESSIONS_MAX`] sessions live on one stream. A session
//! starts only with a request marked as its first, so a late request of a session this side
//! ended is recognised and dropped, never mistaken for a new session.

use crate::frames::{FrameSize, Frames};
use crate::raft_service::RaftService;
use futures::{Stream, StreamExt};
use ringkv_proto::internal::{
    PackedFrame, PackedReplies, PackedReply, RaftReply, RaftRequest, raft_reply,
};
use std::collections::HashMap;
use std::pin::Pin;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

/// Requests queued for one session. openraft's follower takes 64 ahead of the ones it is
/// handling; a session further behind than this is stuck, not busy.
pub const SESSION_REQUESTS_MAX: usize = 256;
/// Live sessions on one stream: every shard's session plus heartbeats in flight, with room.
pub const SESSIONS_MAX: usize = 65_536;
/// Replies waiting to be packed before sessions wait.
const REPLIES_QUEUED_MAX: usize = 4096;

pub type PackedStream = Pin<Box<dyn Stream<Item = Result<PackedReplies, Status>> + Send>>;

impl FrameSize for PackedReply {
    fn frame_bytes(&self) -> usize {
        match self.reply.as_ref().and_then(|r| r.result.as_ref()) {
            Some(raft_reply::Result::Payload(p)) => p.len() + 16,
            Some(raft_reply::Result::Error(e)) => e.len() + 16,
            None => 16,
        }
    }
}

/// Serves one packed stream from a peer.
pub fn serve(service: RaftService, inbound: Streaming<PackedFrame>) -> PackedStream {
    let (out, replies) = mpsc::channel(REPLIES_QUEUED_MAX);
    let stopped = service.stopped();
    tokio::spawn(read(service, inbound, out));
    let frames = Frames::new(tokio_stream::wrappers::ReceiverStream::new(replies))
        .map(|replies| Ok(PackedReplies { replies }))
        .take_until(stopped);
    Box::pin(frames)
}

async fn read(
    service: RaftService,
    mut inbound: Streaming<PackedFrame>,
    out: mpsc::Sender<PackedReply>,
) {
    let mut sessions: HashMap<u64, mpsc::Sender<RaftRequest>> = HashMap::new();
    let stopped = service.stopped();
    tokio::pin!(stopped);
    loop {
        let frame = tokio::select! {
            frame = inbound.message() => frame,
            () = &mut stopped => break,
        };
        // The stream's end or failure ends every session (dropping their senders below).
        let Ok(Some(frame)) = frame else { break };
        for item in frame.requests {
            let id = item.session;
            let Some(request) = item.request else {
                // The sender ended the session: its input ends when the sender is dropped.
                sessions.remove(&id);
                continue;
            };
            if !item.open {
                let Some(tx) = sessions.get(&id) else { continue };
                match tx.try_send(request) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(r)) => {
                        tracing::warn!(
                            session = id,
                            shard = r.shard_id,
                            queued = SESSION_REQUESTS_MAX,
                            "a packed replication session fell behind; ending it"
                        );
                        sessions.remove(&id);
                    }
                    // The session ended on this side; its end is on its way to the sender.
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        sessions.remove(&id);
                    }
                }
                continue;
            }
            if item.single {
                let (service, out) = (service.clone(), out.clone());
                tokio::spawn(async move {
                    let reply = service.append_one(request).await;
                    let _ = out.send(PackedReply { session: id, reply: Some(reply) }).await;
                });
                continue;
            }
            if sessions.len() >= SESSIONS_MAX {
                refuse(&out, id, format!("more than {SESSIONS_MAX} sessions on one stream"));
                continue;
            }
            let (tx, rx) = mpsc::channel(SESSION_REQUESTS_MAX);
            match service.append_session(request, tokio_stream::wrappers::ReceiverStream::new(rx)) {
                Err(e) => refuse(&out, id, e),
                Ok(replies) => {
                    sessions.insert(id, tx);
                    tokio::spawn(forward(id, replies, out.clone()));
                }
            }
        }
    }
}

/// Sends one session's replies, then its end.
async fn forward(id: u64, replies: impl Stream<Item = RaftReply>, out: mpsc::Sender<PackedReply>) {
    let mut replies = std::pin::pin!(replies);
    while let Some(reply) = replies.next().await {
        if out.send(PackedReply { session: id, reply: Some(reply) }).await.is_err() {
            return;
        }
    }
    let _ = out.send(PackedReply { session: id, reply: None }).await;
}

/// Ends a new session at once, saying why (without making the reader wait).
fn refuse(out: &mpsc::Sender<PackedReply>, id: u64, why: String) {
    let out = out.clone();
    tokio::spawn(async move {
        let error = RaftReply { result: Some(raft_reply::Result::Error(why)) };
        let _ = out.send(PackedReply { session: id, reply: Some(error) }).await;
        let _ = out.send(PackedReply { session: id, reply: None }).await;
    });
}
