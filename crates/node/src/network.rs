//! The client side of the Raft transport: how a shard's leader talks to its followers.
//!
//! One gRPC channel (one HTTP/2 connection) per peer node is shared by every shard's Raft
//! group ([`PeerPool`]); openraft asks for a client per (shard, target) often, so making one
//! only clones a channel handle. Every message carries the shard id.
//!
//! Replication is pipelined: a session sends AppendEntries requests as openraft produces them
//! and yields the replies in order, so the leader does not wait a round trip between batches.
//! Sessions and heartbeats travel packed: every shard's, on one stream per peer
//! ([`crate::packer`]). A peer without packed replication gets one `StreamAppend` stream per
//! session and unary `AppendEntries` for heartbeats instead.
//!
//! Snapshots stream as chunks of at most [`SNAPSHOT_CHUNK_BYTES`] with a CRC32 each, read from
//! the snapshot file as they are sent (bounded memory on both sides).

use crate::leader_clock::LeaderClock;
use crate::packer::Down;
use crate::wire;
use futures::{StreamExt, TryStreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use ringkv_placement::{NodeId, ShardId};
use ringkv_proto::internal::raft_client::RaftClient;
use ringkv_proto::internal::{RaftReply, RaftRequest, SnapshotChunk, raft_reply};
use ringkv_storage::type_config::Vote;
use ringkv_storage::{ShardSnapshot, SnapshotFile, TypeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Snapshot chunks read ahead of the network.
const SNAPSHOT_CHUNKS_IN_FLIGHT: usize = 4;
/// A whole snapshot transfer may take this long before it is abandoned and retried.
const SNAPSHOT_TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One shared channel per peer node, and the node-wide snapshot send budget.
#[derive(Clone, Default)]
pub struct PeerPool {
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
    snapshots: Arc<Throttle>,
    /// Snapshot bytes sent to peers (what replica moves and lagging followers cost).
    pub snapshot_bytes_sent: prometheus_client::metrics::counter::Counter,
    /// Peers serve Raft and membership this many ports above their client port.
    raft_port_offset: u16,
    /// Plaintext, or mutual TLS with this node's certificate.
    dialer: ringkv_tls::Dialer,
    /// Whether AppendEntries travel packed, one stream per peer (see [`crate::packer`]).
    packed: bool,
    pub packers: Arc<crate::packer::Packers>,
}

/// Paces snapshot sends to `bytes_per_sec` for the whole node, so moving replicas (many
/// snapshots at once) cannot crowd out replication and client traffic on the same links.
/// Each chunk is given the next free slot of a virtual clock: no background task, and chunks
/// of concurrent transfers interleave fairly. 0 means no limit.
#[derive(Debug, Default)]
pub struct Throttle {
    bytes_per_sec: u64,
    next_free: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Self {
        Throttle { bytes_per_sec, next_free: tokio::sync::Mutex::new(None) }
    }

    /// Waits until `bytes` may be sent.
    pub async fn take(&self, bytes: usize) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let start = {
            let mut next = self.next_free.lock().await;
            let now = tokio::time::Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            *next = Some(start + cost);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

impl std::fmt::Debug for PeerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerPool")
    }
}

impl PeerPool {
    /// A pool whose snapshot sends are paced to `snapshot_bytes_per_sec` (0: unpaced), and
    /// which reaches peers `raft_port_offset` ports above their advertised port.
    /// `packed`: AppendEntries travel packed, one stream per peer (see [`crate::packer`]).
    pub fn new(
        snapshot_bytes_per_sec: u64,
        raft_port_offset: u16,
        dialer: ringkv_tls::Dialer,
        packed: bool,
    ) -> Self {
        PeerPool {
            snapshots: Arc::new(Throttle::new(snapshot_bytes_per_sec)),
            raft_port_offset,
            dialer,
            packed,
            ..Default::default()
        }
    }

    /// Whether this node sends and accepts packed replication.
    pub fn packed(&self) -> bool {
        self.packed
    }

    /// The packed stream to `node` at `addr`; `None` when packing is off or the peer lacks it.
    pub fn packer(
        &self,
        node: NodeId,
        addr: &str,
    ) -> Result<Option<Arc<crate::packer::Packer>>, String> {
        if !self.packed {
            return Ok(None);
        }
        self.packers.get(node, addr, || Ok(raft_client(self.channel(node, addr)?)))
    }

    /// The channel to `node` at `addr`, created lazily (it connects on first use and
    /// reconnects by itself after failures).
    pub fn raft_port_offset(&self) -> u16 {
        self.raft_port_offset
    }

    /// How this node dials other nodes (TLS or not).
    pub fn dialer(&self) -> &ringkv_tls::Dialer {
        &self.dialer
    }

    /// Where the node advertised at `addr` serves its peers.
    pub fn peer_addr(&self, addr: &str) -> Result<String, String> {
        crate::peer_addr::peer_addr(addr, self.raft_port_offset)
    }

    /// `addr` is the node's advertised (client) address; the channel goes to its peer port
    /// (see [`crate::peer_addr`]).
    pub fn channel(&self, node: NodeId, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, ch)) = map.get(&node)
            && known == addr
        {
            return Ok(ch.clone());
        }
        let peer = self.peer_addr(addr)?;
        let endpoint = self
            .dialer
            .endpoint(&peer)
            .map_err(|e| format!("bad address {addr}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let ch = self.dialer.lazy(&endpoint);
        map.insert(node, (addr.to_string(), ch.clone()));
        Ok(ch)
    }
}

/// Creates per-target clients for one shard.
#[derive(Clone, Debug)]
pub struct ShardNetwork {
    pub shard: ShardId,
    pub from: NodeId,
    pub cluster_id: u64,
    pub pool: PeerPool,
    /// This replica's wake count as leader, stamped on every message (see `crate::quiesce`).
    pub leader_wakes: Arc<AtomicU64>,
    /// The freshness stamps of AppendEntries (see `crate::leader_clock`).
    pub clock: Arc<LeaderClock>,
}

/// A shard's client to one peer.
pub struct ShardPeer {
    shard: ShardId,
    from: NodeId,
    cluster_id: u64,
    target: NodeId,
    /// The target's advertised address.
    addr: String,
    pool: PeerPool,
    client: Result<RaftClient<Channel>, String>,
    leader_wakes: Arc<AtomicU64>,
    clock: Arc<LeaderClock>,
}

impl RaftNetworkFactory<TypeConfig> for ShardNetwork {
    type Network = ShardPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> ShardPeer {
        let client = self.pool.channel(target, &node.addr).map(raft_client);
        ShardPeer {
            shard: self.shard,
            from: self.from,
            cluster_id: self.cluster_id,
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
            client,
            leader_wakes: self.leader_wakes.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// A Raft client over `ch` that takes messages as big as a peer may send.
fn raft_client(ch: Channel) -> RaftClient<Channel> {
    RaftClient::new(ch)
        .max_decoding_message_size(wire::PAYLOAD_BYTES_MAX)
        .max_encoding_message_size(wire::PAYLOAD_BYTES_MAX)
}

/// This node's wall clock, Unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn status_to_rpc(s: tonic::Status) -> RPCError<TypeConfig> {
    match s.code() {
        // Connection refused/reset, peer down: openraft backs off before retrying.
        tonic::Code::Unavailable | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&s))
        }
        _ => RPCError::Network(NetworkError::new(&s)),
    }
}

fn decode_reply<T: DeserializeOwned>(reply: RaftReply) -> Result<T, RPCError<TypeConfig>> {
    match reply.result {
        Some(raft_reply::Result::Payload(p)) => {
            wire::decode(&p).map_err(|e| RPCError::Network(NetworkError::from_string(e)))
        }
        Some(raft_reply::Result::Error(e)) => Err(RPCError::Network(NetworkError::from_string(e))),
        None => Err(RPCError::Network(NetworkError::from_string("empty reply"))),
    }
}

impl ShardPeer {
    fn client(&self) -> Result<RaftClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))
    }

    /// `sent_at_unix_ms`: the freshness claim for AppendEntries, the send time otherwise.
    fn request<T: Serialize>(
        &self,
        msg: &T,
        sent_at_unix_ms: u64,
    ) -> Result<RaftRequest, RPCError<TypeConfig>> {
        let payload =
            wire::encode(msg).map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        Ok(RaftRequest {
            shard_id: self.shard,
            from_node_id: self.from,
            payload: payload.into(),
            sent_at_unix_ms,
            cluster_id: self.cluster_id,
            to_node_id: self.target,
            leader_wakes: self.leader_wakes.load(Ordering::SeqCst),
        })
    }

    /// One unary call with openraft's deadline.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        action: RPCTypes,
        req: &Req,
        sent_at_unix_ms: u64,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<RaftRequest>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftReply>, tonic::Status>>,
    {
        let ttl = option.hard_ttl();
        let mut request = tonic::Request::new(self.request(req, sent_at_unix_ms)?);
        request.set_timeout(ttl);
        let fut = call(self.client()?, request);
        match tokio::time::timeout(ttl, fut).await {
            Ok(Ok(resp)) => decode_reply(resp.into_inner()),
            Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => {
                Err(self.timeout(action, ttl))
            }
            Ok(Err(s)) => Err(status_to_rpc(s)),
            Err(_) => Err(self.timeout(action, ttl)),
        }
    }

    fn timeout(&self, action: RPCTypes, timeout: Duration) -> RPCError<TypeConfig> {
        RPCError::Timeout(Timeout { action, id: self.from, target: self.target, timeout })
    }
}

impl RaftNetworkV2<TypeConfig> for ShardPeer {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let sent_at = self.clock.stamp(&rpc);
        let packer = self
            .pool
            .packer(self.target, &self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
        if let Some(packer) = packer {
            let ttl = option.hard_ttl();
            let request = self.request(&rpc, sent_at)?;
            let call = async {
                match packer.ready().await {
                    Ok(()) => {}
                    Err(Down::Unimplemented) => return None,
                    Err(down) => return Some(Err(status_to_rpc(down.status()))),
                }
                let mut replies = packer.single(request).await;
                Some(match replies.next().await {
                    Some(Ok(reply)) => decode_reply(reply),
                    Some(Err(s)) => Err(status_to_rpc(s)),
                    None => Err(RPCError::Network(NetworkError::from_string(
                        "the peer ended a heartbeat without replying",
                    ))),
                })
            };
            match tokio::time::timeout(ttl, call).await {
                Err(_) => return Err(self.timeout(RPCTypes::AppendEntries, ttl)),
                Ok(Some(result)) => return result,
                Ok(None) => self.pool.packers.mark_legacy(self.target, &self.addr),
            }
        }
        self.unary(RPCTypes::AppendEntries, &rpc, sent_at, &option, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        let (shard, from, cluster_id, to) = (self.shard, self.from, self.cluster_id, self.target);
        let client = self.client();
        let wakes = self.leader_wakes.clone();
        let clock = self.clock.clone();
        let (pool, addr) = (self.pool.clone(), self.addr.clone());
        Box::pin(async move {
            // The first request is pulled before dialling, because openraft waits out its
            // backoff (after Unreachable errors) inside the request stream, when a request is
            // pulled. A transport that dials first and fails without pulling never backs off:
            // with a peer killed, its survivors redialled it in a tight loop (~20,000 failed
            // sessions a second per node at 8 shards, with two warnings each: a whole core).
            let mut input = input;
            let Some(first) = input.next().await else {
                let nothing: BoxStream<'s, _> = Box::pin(futures::stream::empty());
                return Ok(nothing);
            };
            // An entry that cannot be encoded ends the outbound stream; openraft then sees the
            // reply stream end early and starts a new session.
            let requests = futures::stream::once(futures::future::ready(first))
                .chain(input)
                .map(move |req| {
                    wire::encode(&req).map(|p| RaftRequest {
                        shard_id: shard,
                        from_node_id: from,
                        payload: p.into(),
                        sent_at_unix_ms: clock.stamp(&req),
                        cluster_id,
                        to_node_id: to,
                        leader_wakes: wakes.load(Ordering::SeqCst),
                    })
                })
                .take_while(|r| futures::future::ready(r.is_ok()))
                .filter_map(|r| futures::future::ready(r.ok()));
            let packer = pool
                .packer(to, &addr)
                .map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
            let packer = match packer {
                Some(packer) => match packer.ready().await {
                    Ok(()) => Some(packer),
                    Err(Down::Unimplemented) => {
                        pool.packers.mark_legacy(to, &addr);
                        None
                    }
                    Err(down) => return Err(status_to_rpc(down.status())),
                },
                None => None,
            };
            let replies: BoxStream<'static, Result<RaftReply, tonic::Status>> = match packer {
                Some(packer) => packer.open(requests.boxed()).await.boxed(),
                None => {
                    let mut client = client?;
                    client
                        .stream_append(requests)
                        .await
                        .map_err(status_to_rpc)?
                        .into_inner()
                        .boxed()
                }
            };
            let results = replies.map_err(status_to_rpc).and_then(|reply| {
                futures::future::ready(decode_reply::<StreamAppendResult<TypeConfig>>(reply))
            });
            let boxed: BoxStream<'s, _> = Box::pin(results);
            Ok(boxed)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(
            RPCTypes::Vote,
            &rpc,
            unix_ms(),
            &option,
            |mut c, r| async move { c.vote(r).await },
        )
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(RPCTypes::Vote, &rpc, unix_ms(), &option, |mut c, r| async move {
            c.pre_vote(r).await
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(RPCTypes::TransferLeader, &req, unix_ms(), &option, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: ShardSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let header =
            wire::encode(&(vote, snapshot.meta.clone())).map_err(NetworkError::from_string)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(SNAPSHOT_CHUNKS_IN_FLIGHT);
        let (shard, from, cluster_id, to) = (self.shard, self.from, self.cluster_id, self.target);
        let (throttle, sent) = (self.pool.snapshots.clone(), self.pool.snapshot_bytes_sent.clone());
        let path = snapshot.snapshot.path.clone();
        // Reads the file chunk by chunk; the bounded channel holds the reader back to the
        // network's pace. Dropping the sender (end of file or error) ends the stream.
        let reader = tokio::spawn(async move {
            let first = SnapshotChunk {
                shard_id: shard,
                from_node_id: from,
                header: header.into(),
                data: Default::default(),
                crc32: 0,
                cluster_id,
                to_node_id: to,
            };
            if tx.send(first).await.is_err() {
                return Ok(());
            }
            let mut file = tokio::fs::File::open(&path).await?;
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = file.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                buf.truncate(filled);
                throttle.take(filled).await;
                sent.inc_by(filled as u64);
                let crc32 = crc32fast::hash(&buf);
                let chunk = SnapshotChunk {
                    shard_id: shard,
                    from_node_id: from,
                    header: Default::default(),
                    data: buf.into(),
                    crc32,
                    cluster_id,
                    to_node_id: to,
                };
                if tx.send(chunk).await.is_err() {
                    return Ok(());
                }
            }
        });
        let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let result = tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(SNAPSHOT_TRANSFER_TIMEOUT, call) => match r {
                Err(_) => Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot, id: self.from, target: self.target, timeout: SNAPSHOT_TRANSFER_TIMEOUT,
                })),
                Ok(Err(s)) => Err(StreamingError::from(status_to_rpc(s))),
                Ok(Ok(resp)) => decode_reply::<SnapshotResponse<TypeConfig>>(resp.into_inner()).map_err(StreamingError::from),
            },
        };
        reader.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_storage::type_config::Vote;
    use std::sync::atomic::AtomicBool;

    /// Shard 1's client, on node 1, to node 2 at `addr`.
    async fn peer_at(addr: &str) -> ShardPeer {
        let (_tx, applied) = tokio::sync::watch::channel(0);
        let mut network = ShardNetwork {
            shard: 1,
            from: 1,
            cluster_id: 7,
            pool: PeerPool::new(0, 0, ringkv_tls::Dialer::plaintext(), true),
            leader_wakes: Arc::default(),
            clock: Arc::new(LeaderClock::new(applied)),
        };
        network.new_client(2, &BasicNode { addr: addr.into() }).await
    }

    /// A peer that refuses connections must still have its first request pulled: openraft
    /// applies its backoff when a request is pulled, so a transport that fails before pulling
    /// makes the leader redial a dead peer without pause.
    #[tokio::test]
    async fn a_refused_stream_pulls_the_first_request_before_failing() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut peer = peer_at(&format!("127.0.0.1:{port}")).await;
        let pulled = Arc::new(AtomicBool::new(false));
        let seen = pulled.clone();
        let input = futures::stream::once(async move {
            seen.store(true, Ordering::SeqCst);
            AppendEntriesRequest::<TypeConfig> {
                vote: Vote::new(2, 1),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            }
        })
        .boxed();
        let result = peer.stream_append(input, RPCOption::new(Duration::from_millis(500))).await;
        assert!(
            matches!(result, Err(RPCError::Unreachable(_))),
            "a refused connection is Unreachable, got {:?}",
            result.map(|_| "a stream")
        );
        assert!(pulled.load(Ordering::SeqCst), "the first request was not pulled");
    }

    /// With nothing to send, no connection is made and the reply stream is empty.
    #[tokio::test]
    async fn an_empty_session_dials_nothing() {
        // Port 1 refuses: a dial would fail the call.
        let mut peer = peer_at("127.0.0.1:1").await;
        let input = futures::stream::empty::<AppendEntriesRequest<TypeConfig>>().boxed();
        let Ok(replies) =
            peer.stream_append(input, RPCOption::new(Duration::from_millis(500))).await
        else {
            panic!("an empty session failed");
        };
        assert_eq!(replies.count().await, 0);
    }
}
