//! The sending side of packed replication: one stream to each peer carries every shard's
//! AppendEntries.
//!
//! Without it, each shard's replication session to a peer is its own HTTP/2 stream, and each
//! heartbeat its own unary call: a node leading 64 busy shards sends 128 streams' worth of
//! small messages, each paying its own gRPC framing, its own wake-up of the connection task
//! and of the receiving handler, and often its own `write(2)`. The profile of 64 shards under
//! writes put the HTTP/2 client at ~11% of a node and task switches at ~8 per write
//! (docs/performance.md, "Writes over many shards").
//!
//! A [`Packer`] owns one bidirectional `Packed` stream to one peer. Shards open *sessions* on
//! it: a replication session (openraft's `stream_append`: many requests, replies in order) or
//! a single request (a heartbeat). Every request carries its session id; the outbound side is
//! one stream that polls all live sessions and packs whatever they have ready into one frame
//! ([`crate::frames`]), so shards that produce messages while the previous frame is being
//! written share the next one, and a lone message goes out at once. Replies come back packed
//! the same way, and a reader task hands each to its session.
//!
//! **Ordering and failure.** A session's requests stay in order (one stream, polled in
//! order), and so do its replies. When the stream fails, every session on it gets the error
//! (as every shard's stream did when a connection broke), openraft backs off and opens new
//! sessions, and the pool makes a new packer. A session whose replies are not read ends
//! alone when its bounded queue fills, rather than hold up the others; openraft restarts it.
//!
//! **Old peers.** A peer that answers UNIMPLEMENTED (an older version during a rolling
//! upgrade) is remembered for [`LEGACY_RETRY`], and its shards use the per-shard streams
//! meanwhile.

use crate::frames::Frames;
use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use ringkv_placement::NodeId;
use ringkv_proto::internal::raft_client::RaftClient;
use ringkv_proto::internal::{PackedFrame, PackedReply, PackedRequest, RaftReply, RaftRequest};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Channel;

/// Replies waiting for one session's reader. openraft reads them as they come and keeps far
/// fewer requests in flight; a session this far behind is ended so it cannot stall the
/// stream's reader (which would stall every other shard).
pub const SESSION_REPLIES_MAX: usize = 1024;
/// Sessions waiting to join the outbound stream before `open` waits.
const SESSIONS_QUEUED_MAX: usize = 1024;
/// How long a peer without packed replication is left alone before it is tried again.
pub const LEGACY_RETRY: Duration = Duration::from_secs(60);

impl crate::frames::FrameSize for PackedRequest {
    fn frame_bytes(&self) -> usize {
        self.request.as_ref().map_or(16, |r| r.payload.len() + 64)
    }
}

/// Why a packed stream is not usable.
#[derive(Clone, Debug)]
pub enum Down {
    /// The peer does not have packed replication.
    Unimplemented,
    /// The stream could not be opened or broke.
    Failed(tonic::Code, String),
}

impl Down {
    pub fn status(&self) -> tonic::Status {
        match self {
            Down::Unimplemented => tonic::Status::unimplemented("no packed replication"),
            Down::Failed(code, msg) => tonic::Status::new(*code, msg.clone()),
        }
    }
}

#[derive(Clone, Debug)]
enum Link {
    Connecting,
    Up,
    Down(Down),
}

/// What a session's reader gets: a reply, or the failure that ended the stream.
pub type SessionItem = Result<RaftReply, tonic::Status>;

struct Route {
    tx: mpsc::Sender<SessionItem>,
    /// One request, one reply: the route ends with its first reply.
    single: bool,
}

#[derive(Default)]
struct Routes {
    map: HashMap<u64, Route>,
    /// Set once, when the stream fails; no session is routed after it.
    down: Option<Down>,
}

/// Counts of what the packers send (see `crate::node` for their registration).
#[derive(Clone, Debug)]
pub struct PackMetrics {
    /// Messages per frame sent: how much packing saves.
    pub frame_messages: prometheus_client::metrics::histogram::Histogram,
}

impl Default for PackMetrics {
    fn default() -> Self {
        PackMetrics {
            frame_messages: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 11),
            ),
        }
    }
}

/// One packed stream to one peer. See the module documentation.
pub struct Packer {
    next_session: AtomicU64,
    sessions: mpsc::Sender<BoxStream<'static, PackedRequest>>,
    routes: Arc<Mutex<Routes>>,
    link: watch::Receiver<Link>,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer").field("link", &*self.link.borrow()).finish()
    }
}

fn lock(routes: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    // Every change to the routes is complete under the lock, so a poisoned one is intact.
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

impl Packer {
    /// Opens the stream over `client` (it connects in the background; see [`Packer::ready`]).
    pub fn start(client: RaftClient<Channel>, metrics: PackMetrics) -> Arc<Packer> {
        let (sessions, new_sessions) = mpsc::channel(SESSIONS_QUEUED_MAX);
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (link_tx, link) = watch::channel(Link::Connecting);
        tokio::spawn(drive(client, new_sessions, routes.clone(), link_tx, metrics));
        Arc::new(Packer { next_session: AtomicU64::new(1), sessions, routes, link })
    }

    /// Whether the stream failed (a new packer is needed).
    pub fn is_down(&self) -> bool {
        matches!(*self.link.borrow(), Link::Down(_))
    }

    /// Waits until the stream is open, or says why it is not.
    pub async fn ready(&self) -> Result<(), Down> {
        let mut link = self.link.clone();
        let seen = link.wait_for(|l| !matches!(l, Link::Connecting)).await;
        match seen.as_deref() {
            Ok(Link::Up) => Ok(()),
            Ok(Link::Down(d)) => Err(d.clone()),
            // The driver is gone, which only happens after it said why.
            _ => Err(Down::Failed(tonic::Code::Unavailable, "packed stream closed".into())),
        }
    }

    /// A replication session: `requests` go out in order, their replies come back in order.
    /// Dropping the replies ends the session (the peer is told).
    pub async fn open(&self, requests: BoxStream<'static, RaftRequest>) -> SessionReplies {
        let (id, replies, cancel) = self.route(false);
        let end = PackedRequest { session: id, request: None, single: false, open: false };
        let mut open = true;
        let items = requests
            .take_until(cancel)
            .map(move |r| {
                let first = std::mem::take(&mut open);
                PackedRequest { session: id, request: Some(r), single: false, open: first }
            })
            .chain(futures::stream::once(futures::future::ready(end)));
        self.join(items.boxed(), replies).await
    }

    /// One request and its reply (a heartbeat).
    pub async fn single(&self, request: RaftRequest) -> SessionReplies {
        let (id, replies, _cancel) = self.route(true);
        let item = PackedRequest { session: id, request: Some(request), single: true, open: true };
        self.join(futures::stream::once(futures::future::ready(item)).boxed(), replies).await
    }

    fn route(&self, single: bool) -> (u64, SessionReplies, oneshot::Receiver<()>) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SESSION_REPLIES_MAX);
        let (cancel_tx, cancel_rx) = oneshot::channel();
        {
            let mut routes = lock(&self.routes);
            match &routes.down {
                // Failed before the session joined: it gets the failure at once.
                Some(down) => {
                    let _ = tx.try_send(Err(down.status()));
                }
                None => {
                    routes.map.insert(id, Route { tx, single });
                }
            }
        }
        let replies =
            SessionReplies { id, rx, routes: self.routes.clone(), _cancel: Some(cancel_tx) };
        (id, replies, cancel_rx)
    }

    async fn join(
        &self,
        items: BoxStream<'static, PackedRequest>,
        replies: SessionReplies,
    ) -> SessionReplies {
        if self.sessions.send(items).await.is_err() {
            // The outbound stream is gone; the driver fails every route when it notices, but
            // this one may have been routed after that.
            fail(
                &self.routes,
                Down::Failed(tonic::Code::Unavailable, "packed stream closed".into()),
            );
        }
        replies
    }
}

/// The replies of one session. Dropping it ends the session.
pub struct SessionReplies {
    id: u64,
    rx: mpsc::Receiver<SessionItem>,
    routes: Arc<Mutex<Routes>>,
    /// Dropped with the session: ends its requests (see [`Packer::open`]).
    _cancel: Option<oneshot::Sender<()>>,
}

impl Stream for SessionReplies {
    type Item = SessionItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SessionItem>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for SessionReplies {
    fn drop(&mut self) {
        lock(&self.routes).map.remove(&self.id);
    }
}

/// Every live session gets `down`, and none is routed after it.
fn fail(routes: &Mutex<Routes>, down: Down) {
    let mut routes = lock(routes);
    if routes.down.is_none() {
        routes.down = Some(down.clone());
    }
    for (_, route) in routes.map.drain() {
        let _ = route.tx.try_send(Err(down.status()));
    }
}

/// Hands one reply to its session.
fn deliver(routes: &Mutex<Routes>, reply: PackedReply) {
    let mut routes = lock(routes);
    let Some(route) = routes.map.get(&reply.session) else {
        // The session ended on this side; its late replies have no reader.
        return;
    };
    let Some(item) = reply.reply else {
        // The peer ended the session: dropping the sender ends its replies.
        routes.map.remove(&reply.session);
        return;
    };
    let keep = match route.tx.try_send(Ok(item)) {
        Ok(()) => !route.single,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                session = reply.session,
                queued = SESSION_REPLIES_MAX,
                "a replication session's replies are not being read; ending it"
            );
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    };
    if !keep {
        routes.map.remove(&reply.session);
    }
}

async fn drive(
    mut client: RaftClient<Channel>,
    new_sessions: mpsc::Receiver<BoxStream<'static, PackedRequest>>,
    routes: Arc<Mutex<Routes>>,
    link: watch::Sender<Link>,
    metrics: PackMetrics,
) {
    let outbound =
        Frames::new(Sessions { new: new_sessions, new_open: true, live: SelectAll::new() }).map(
            move |requests| {
                metrics.frame_messages.observe(requests.len() as f64);
                PackedFrame { requests }
            },
        );
    let down = match client.packed(outbound).await {
        Err(s) if s.code() == tonic::Code::Unimplemented => Down::Unimplemented,
        Err(s) => Down::Failed(s.code(), s.message().to_string()),
        Ok(response) => {
            link.send_replace(Link::Up);
            let mut inbound = response.into_inner();
            loop {
                match inbound.message().await {
                    Ok(Some(frame)) => {
                        for reply in frame.replies {
                            deliver(&routes, reply);
                        }
                    }
                    Ok(None) => {
                        break Down::Failed(
                            tonic::Code::Unavailable,
                            "the peer ended the packed stream".into(),
                        );
                    }
                    Err(s) => break Down::Failed(s.code(), s.message().to_string()),
                }
            }
        }
    };
    link.send_replace(Link::Down(down.clone()));
    fail(&routes, down);
}

/// The outbound requests of every session, in the order each session produces them.
struct Sessions {
    new: mpsc::Receiver<BoxStream<'static, PackedRequest>>,
    new_open: bool,
    live: SelectAll<BoxStream<'static, PackedRequest>>,
}

impl Stream for Sessions {
    type Item = PackedRequest;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PackedRequest>> {
        while self.new_open {
            match self.new.poll_recv(cx) {
                Poll::Ready(Some(s)) => self.live.push(s),
                Poll::Ready(None) => self.new_open = false,
                Poll::Pending => break,
            }
        }
        match self.live.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            // No live session: wait for a new one, unless none can come.
            Poll::Ready(None) if self.new_open => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The pool's packers, one per peer (see `crate::network::PeerPool`).
#[derive(Default)]
pub struct Packers {
    slots: Mutex<HashMap<NodeId, Slot>>,
    pub metrics: PackMetrics,
}

enum Slot {
    Packer {
        addr: String,
        packer: Arc<Packer>,
    },
    /// The peer lacks packed replication; try again after this.
    Legacy {
        addr: String,
        until: tokio::time::Instant,
    },
}

impl Packers {
    /// The packer to `node` at `addr`: the live one, or a new one over `client()`. `None`
    /// while the peer is known to lack packed replication.
    pub fn get(
        &self,
        node: NodeId,
        addr: &str,
        client: impl FnOnce() -> Result<RaftClient<Channel>, String>,
    ) -> Result<Option<Arc<Packer>>, String> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get(&node) {
            Some(Slot::Packer { addr: a, packer }) if a == addr && !packer.is_down() => {
                return Ok(Some(packer.clone()));
            }
            Some(Slot::Legacy { addr: a, until })
                if a == addr && tokio::time::Instant::now() < *until =>
            {
                return Ok(None);
            }
            _ => {}
        }
        let packer = Packer::start(client()?, self.metrics.clone());
        slots.insert(node, Slot::Packer { addr: addr.to_string(), packer: packer.clone() });
        Ok(Some(packer))
    }

    /// `node` at `addr` answered UNIMPLEMENTED: use per-shard streams for a while.
    pub fn mark_legacy(&self, node: NodeId, addr: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        tracing::info!(node, addr, "peer has no packed replication; using per-shard streams");
        slots.insert(
            node,
            Slot::Legacy {
                addr: addr.to_string(),
                until: tokio::time::Instant::now() + LEGACY_RETRY,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(session: u64, body: Option<&str>) -> PackedReply {
        PackedReply {
            session,
            reply: body.map(|b| RaftReply {
                result: Some(ringkv_proto::internal::raft_reply::Result::Error(b.into())),
            }),
        }
    }

    fn routed(single: bool, capacity: usize) -> (Mutex<Routes>, mpsc::Receiver<SessionItem>) {
        let (tx, rx) = mpsc::channel(capacity);
        let mut routes = Routes::default();
        routes.map.insert(7, Route { tx, single });
        (Mutex::new(routes), rx)
    }

    /// A stream session gets its replies in order until the peer ends it.
    #[tokio::test]
    async fn a_session_gets_its_replies_in_order_until_the_peer_ends_it() {
        let (routes, mut rx) = routed(false, 8);
        deliver(&routes, reply(7, Some("a")));
        deliver(&routes, reply(99, Some("for nobody")));
        deliver(&routes, reply(7, Some("b")));
        deliver(&routes, reply(7, None));
        let got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|r| format!("{:?}", r.unwrap().result))
            .collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].contains("\"a\"") && got[1].contains("\"b\""), "{got:?}");
        assert!(lock(&routes).map.is_empty(), "the peer's end removes the route");
        assert!(rx.recv().await.is_none(), "the session's replies end");
    }

    /// A single request's route ends with its reply.
    #[test]
    fn a_single_request_is_forgotten_after_its_reply() {
        let (routes, mut rx) = routed(true, 8);
        deliver(&routes, reply(7, Some("a")));
        assert!(rx.try_recv().is_ok());
        assert!(lock(&routes).map.is_empty());
    }

    /// A session whose replies are not read is ended alone rather than block the reader.
    #[test]
    fn an_unread_session_is_ended_when_its_queue_is_full() {
        let (routes, mut rx) = routed(false, 2);
        for _ in 0..3 {
            deliver(&routes, reply(7, Some("x")));
        }
        assert!(lock(&routes).map.is_empty(), "the overflowing session was not ended");
        assert_eq!(std::iter::from_fn(|| rx.try_recv().ok()).count(), 2);
    }

    /// A failed stream fails every session, and a session routed after the failure gets it
    /// at once instead of waiting for replies that cannot come.
    #[tokio::test]
    async fn a_failure_reaches_every_session_and_every_later_one() {
        let (routes, mut rx) = routed(false, 8);
        let routes = Arc::new(routes);
        fail(&routes, Down::Failed(tonic::Code::Unavailable, "gone".into()));
        assert_eq!(
            rx.recv().await.map(|r| r.map(|_| ()).unwrap_err().code()),
            Some(tonic::Code::Unavailable)
        );
        let (tx, _new) = mpsc::channel(1);
        let (_link_tx, link) = watch::channel(Link::Down(Down::Unimplemented));
        let packer = Packer { next_session: AtomicU64::new(1), sessions: tx, routes, link };
        let (_, mut late, _) = packer.route(false);
        let first = late.next().await.expect("the late session got nothing");
        assert_eq!(first.map(|_| ()).unwrap_err().code(), tonic::Code::Unavailable);
        assert!(late.next().await.is_none());
    }

    /// The outbound side waits for sessions while none is live, and ends only when no new one
    /// can come.
    #[tokio::test]
    async fn the_outbound_stream_waits_for_sessions_and_interleaves_them() {
        let (tx, new) = mpsc::channel(4);
        let mut out = Sessions { new, new_open: true, live: SelectAll::new() };
        let item = |session| PackedRequest { session, request: None, single: false, open: false };
        assert!(
            futures::poll!(out.next()).is_pending(),
            "an outbound stream with no session must wait, not end"
        );
        tx.send(futures::stream::iter([item(1), item(1)]).boxed()).await.unwrap();
        tx.send(futures::stream::iter([item(2)]).boxed()).await.unwrap();
        drop(tx);
        let mut got: Vec<u64> = out.map(|r| r.session).collect().await;
        assert_eq!(got.len(), 3);
        got.sort_unstable();
        assert_eq!(got, vec![1, 1, 2]);
    }
}
