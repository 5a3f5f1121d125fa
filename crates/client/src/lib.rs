//! The ringkv client library.
//!
//! One builder, two modes:
//! - **router mode** ([`ClientBuilder::router`]): every call goes to one `ringkv-router`
//!   endpoint, which routes, balances and retries. The simplest deployment (the router runs as
//!   a sidecar or a shared service).
//! - **direct mode** ([`ClientBuilder::direct`]): the client embeds the same routing core as
//!   the router ([`ringkv_routing::Cluster`]) and talks to the nodes itself, saving a hop.
//!
//! Besides key-value calls, the client has event streams and watch (module `events`):
//! topics, appends, idempotent [`Producer`]s, subscriptions and consumer-group offsets, and
//! watches of keys or prefixes.
//!
//! Writes always carry a session (client id + sequence number), so they are applied at most
//! once even when retried after a lost reply. Reads are linearizable unless you ask for
//! [`Consistency::Lease`] or [`Consistency::Stale`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringkv_client::ClientError> {
//! use ringkv_client::{Client, Consistency};
//! let client = Client::builder().router("127.0.0.1:6000").connect().await?;
//! let version = client.put(b"greeting", b"hello").await?;
//! let kv = client.get(b"greeting").await?.expect("just written");
//! assert_eq!(kv.version, version);
//! let stale = client.get_with(b"greeting", Consistency::Stale).await?;
//! # let _ = stale; Ok(()) }
//! ```

mod events;

pub use events::{ClientStream, Producer, Subscription, Watcher};
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::events_client::EventsClient;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::watch_client::WatchClient;
use ringkv_proto::v1::{
    BatchWriteRequest, Compare, CompareAndSwapRequest, DeleteRequest, GetRequest,
    GetShardMapRequest, MultiGetRequest, PutRequest, ScanRequest, ShardMap, WriteOp, compare,
    write_op,
};
pub use ringkv_proto::v1::{
    DescribeTopicResponse, Event, PartitionInfo, ReadResponse, Retention, StoredEvent,
    SubscribeRequest, SubscribeResponse, TopicInfo, WatchEvent, WatchRequest, WatchResponse,
    subscribe_request, watch_event,
};
pub use ringkv_routing::WriteOutcome;
use ringkv_routing::lanes::Lanes;
use ringkv_routing::{Cluster, ReadPolicy, RoutingConfig, RoutingError};
use std::time::Duration;
// Adds the client's token (when it has one) to every call.
use ringkv_auth::AuthChannel as Channel;
use tonic_types::StatusExt;

pub use ringkv_proto::v1::{Consistency, GetResponse, KeyValue, ResponseHeader};

/// What went wrong. [`ClientError::reason`] gives the server's machine-readable reason.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{}", .0.message())]
    Status(tonic::Status),
    #[error("client is not configured: {0}")]
    Config(&'static str),
    /// An idempotent producer's batch to this partition ended with an unknown outcome (it may
    /// or may not have been appended). Reusing its sequence number for other events could make
    /// them look like a retry and be dropped, so the producer refuses; start a new one.
    #[error(
        "this producer's last batch to partition {partition} has an unknown outcome; start a new producer to go on"
    )]
    ProducerFenced { partition: u32 },
}

impl ClientError {
    /// The `ErrorInfo` reason of a server error (`NOT_LEADER`, `INVALID_INPUT`, ...).
    pub fn reason(&self) -> Option<String> {
        match self {
            ClientError::Status(s) => s.get_error_details().error_info().map(|i| i.reason.clone()),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }

    /// Whether the failed call may have been applied. [`WriteOutcome::NotApplied`] means it
    /// certainly was not (every attempt was refused before anything was proposed, or nothing
    /// was sent): the write can be sent again as a new one. [`WriteOutcome::Unknown`] means
    /// read back first (or retry with the same session, which the router already did).
    pub fn write_outcome(&self) -> WriteOutcome {
        match self {
            ClientError::Status(s) => WriteOutcome::of(s),
            ClientError::Connect { .. }
            | ClientError::Config(_)
            | ClientError::ProducerFenced { .. } => WriteOutcome::NotApplied,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status(s)
    }
}

impl From<RoutingError> for ClientError {
    fn from(e: RoutingError) -> Self {
        ClientError::Status(e.to_status())
    }
}

/// The condition of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Value(Vec<u8>),
    Version(u64),
    Absent,
}

/// The outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    pub succeeded: bool,
    /// The new version when it succeeded (0 for a delete).
    pub version: u64,
    /// The current key-value when it failed (`None` if the key does not exist).
    pub current: Option<KeyValue>,
}

/// A write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// What to scan. `shard` restricts the scan to one shard.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub prefix: Vec<u8>,
    pub limit: u32,
    pub continuation: Vec<u8>,
    pub shard: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ScanPage {
    pub kvs: Vec<KeyValue>,
    /// Pass back in [`ScanOptions::continuation`] for the next page; empty at the end.
    pub continuation: Vec<u8>,
}

#[derive(Debug)]
enum Mode {
    Router(Box<RouterConn>),
    Direct(Cluster),
}

#[derive(Debug)]
struct RouterConn {
    kv: KvClient<Channel>,
    admin: AdminClient<Channel>,
    events: EventsClient<Channel>,
    watch: WatchClient<Channel>,
    lanes: Lanes,
}

/// A ringkv client. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Client {
    mode: Mode,
    consistency: Consistency,
    timeout: Duration,
}

#[derive(Debug, Default)]
pub struct ClientBuilder {
    router: Option<String>,
    seeds: Vec<String>,
    consistency: Option<Consistency>,
    timeout: Option<Duration>,
    read_policy: ReadPolicy,
    dialer: ringkv_tls::Dialer,
    token: Option<ringkv_auth::Token>,
}

impl ClientBuilder {
    /// Talk to a `ringkv-router` at `host:port`.
    pub fn router(mut self, endpoint: impl Into<String>) -> Self {
        self.router = Some(endpoint.into());
        self
    }

    /// Talk to the nodes directly, learning the cluster from these `host:port` seeds.
    pub fn direct(mut self, seeds: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// Default consistency of reads (LINEARIZABLE unless set).
    pub fn consistency(mut self, c: Consistency) -> Self {
        self.consistency = Some(c);
        self
    }

    /// Deadline of each call, retries included (10 s unless set).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// How to dial the router or nodes: TLS with the cluster's CA (and a client certificate,
    /// where the cluster asks for one), or plaintext (the default).
    pub fn dialer(mut self, dialer: ringkv_tls::Dialer) -> Self {
        self.dialer = dialer;
        self
    }

    /// The bearer token sent with every call, for clusters with an access policy (see
    /// docs/security.md): its roles decide what this client may read, write and administer.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(ringkv_auth::Token::new(token));
        self
    }

    /// How direct mode spreads STALE reads.
    pub fn read_policy(mut self, p: ReadPolicy) -> Self {
        self.read_policy = p;
        self
    }

    pub async fn connect(self) -> Result<Client, ClientError> {
        let timeout = self.timeout.unwrap_or(Duration::from_secs(10));
        let consistency = self.consistency.unwrap_or(Consistency::Linearizable);
        let mode = match (self.router, self.seeds.is_empty()) {
            (Some(endpoint), _) => {
                let connect_err =
                    |reason: String| ClientError::Connect { endpoint: endpoint.clone(), reason };
                let ep = self
                    .dialer
                    .endpoint(&endpoint)
                    .map_err(|e| connect_err(e.to_string()))?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true);
                let channel =
                    self.dialer.connect(&ep).await.map_err(|e| connect_err(error_chain(&e)))?;
                let channel = Channel::new(channel, self.token.as_ref())
                    .map_err(|e| connect_err(e.to_string()))?;
                Mode::Router(Box::new(RouterConn {
                    kv: KvClient::new(channel.clone()).max_decoding_message_size(64 << 20),
                    admin: AdminClient::new(channel.clone()),
                    events: EventsClient::new(channel.clone()).max_decoding_message_size(64 << 20),
                    watch: WatchClient::new(channel).max_decoding_message_size(64 << 20),
                    lanes: Lanes::new(1024),
                }))
            }
            (None, false) => {
                let cfg = RoutingConfig {
                    seeds: self.seeds,
                    read_policy: self.read_policy,
                    default_timeout: timeout,
                    dialer: self.dialer,
                    token: self.token,
                    ..RoutingConfig::default()
                };
                Mode::Direct(Cluster::connect(cfg).await?)
            }
            (None, true) => {
                return Err(ClientError::Config("set a router endpoint or direct seeds"));
            }
        };
        Ok(Client { mode, consistency, timeout })
    }
}

/// An error and its causes on one line: a transport error's own text is only "transport
/// error"; the reason (refused, a TLS certificate not trusted) is in its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    /// Writes `value` under `key`; returns the new version.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        let req =
            PutRequest { key: key.to_vec().into(), value: value.to_vec().into(), session: None };
        Ok(match &self.mode {
            Mode::Router(r) => {
                let RouterConn { kv, lanes, .. } = &**r;
                let lane = lanes.acquire().await;
                let req = PutRequest { session: Some(lane.session()), ..req };
                kv.clone().put(self.request(req)).await?.into_inner().version
            }
            Mode::Direct(c) => c.put(req, Some(self.timeout)).await?.version,
        })
    }

    /// Reads `key` at the client's default consistency.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, ClientError> {
        self.get_with(key, self.consistency).await
    }

    pub async fn get_with(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<KeyValue>, ClientError> {
        Ok(self.get_detailed(key, consistency).await?.kv)
    }

    /// Reads `key` and returns the whole response, whose header says which replica answered,
    /// at which applied index and, for STALE reads, how long ago that replica last heard from
    /// its leader (`staleness_ms`).
    pub async fn get_detailed(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<GetResponse, ClientError> {
        let req = GetRequest { key: key.to_vec().into(), consistency: consistency as i32 };
        Ok(match &self.mode {
            Mode::Router(r) => r.kv.clone().get(self.request(req)).await?.into_inner(),
            Mode::Direct(c) => c.get(req, Some(self.timeout)).await?,
        })
    }

    /// Deletes `key`; false if it did not exist.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        let req = DeleteRequest { key: key.to_vec().into(), session: None };
        Ok(match &self.mode {
            Mode::Router(r) => {
                let RouterConn { kv, lanes, .. } = &**r;
                let lane = lanes.acquire().await;
                let req = DeleteRequest { session: Some(lane.session()), ..req };
                kv.clone().delete(self.request(req)).await?.into_inner().deleted
            }
            Mode::Direct(c) => c.delete(req, Some(self.timeout)).await?.deleted,
        })
    }

    /// Writes `new` (or deletes, when `None`) if `key` matches `expect`.
    pub async fn cas(
        &self,
        key: &[u8],
        expect: Expect,
        new: Option<&[u8]>,
    ) -> Result<CasOutcome, ClientError> {
        let target = match expect {
            Expect::Value(v) => compare::Target::Value(v.into()),
            Expect::Version(v) => compare::Target::Version(v),
            Expect::Absent => compare::Target::MustNotExist(true),
        };
        let req = CompareAndSwapRequest {
            key: key.to_vec().into(),
            expected: Some(Compare { target: Some(target) }),
            new_value: new.unwrap_or_default().to_vec().into(),
            delete: new.is_none(),
            session: None,
        };
        let resp = match &self.mode {
            Mode::Router(r) => {
                let RouterConn { kv, lanes, .. } = &**r;
                let lane = lanes.acquire().await;
                let req = CompareAndSwapRequest { session: Some(lane.session()), ..req };
                kv.clone().compare_and_swap(self.request(req)).await?.into_inner()
            }
            Mode::Direct(c) => c.compare_and_swap(req, Some(self.timeout)).await?,
        };
        Ok(CasOutcome { succeeded: resp.succeeded, version: resp.version, current: resp.current })
    }

    /// Applies `ops` atomically (all keys must be in one shard); returns the batch's version.
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<u64, ClientError> {
        let ops = ops
            .into_iter()
            .map(|op| WriteOp {
                op: Some(match op {
                    BatchOp::Put(k, v) => write_op::Op::Put(PutRequest {
                        key: k.into(),
                        value: v.into(),
                        session: None,
                    }),
                    BatchOp::Delete(k) => {
                        write_op::Op::Delete(DeleteRequest { key: k.into(), session: None })
                    }
                }),
            })
            .collect();
        let req = BatchWriteRequest { ops, session: None };
        Ok(match &self.mode {
            Mode::Router(r) => {
                let RouterConn { kv, lanes, .. } = &**r;
                let lane = lanes.acquire().await;
                let req = BatchWriteRequest { session: Some(lane.session()), ..req };
                kv.clone().batch_write(self.request(req)).await?.into_inner().version
            }
            Mode::Direct(c) => c.batch_write(req, Some(self.timeout)).await?.version,
        })
    }

    /// Reads many keys (any shards) in parallel; returns those that exist, in request order.
    pub async fn multi_get(&self, keys: &[&[u8]]) -> Result<Vec<KeyValue>, ClientError> {
        let req = MultiGetRequest {
            keys: keys.iter().map(|k| k.to_vec().into()).collect(),
            consistency: self.consistency as i32,
        };
        Ok(match &self.mode {
            Mode::Router(r) => {
                let kv = &r.kv;
                kv.clone().multi_get(self.request(req)).await?.into_inner().kvs
            }
            Mode::Direct(c) => c.multi_get(req, Some(self.timeout)).await?.kvs,
        })
    }

    /// One page of a scan across all shards (or one, with `shard`), in key order.
    pub async fn scan(&self, o: ScanOptions) -> Result<ScanPage, ClientError> {
        let req = ScanRequest {
            shard_id: o.shard,
            start_key: o.start.into(),
            end_key: o.end.into(),
            prefix: o.prefix.into(),
            limit: o.limit,
            continuation_token: o.continuation.into(),
            consistency: self.consistency as i32,
        };
        let resp = match &self.mode {
            Mode::Router(r) => r.kv.clone().scan(self.request(req)).await?.into_inner(),
            Mode::Direct(c) => c.scan(req, Some(self.timeout)).await?,
        };
        Ok(ScanPage { kvs: resp.kvs, continuation: resp.continuation_token.to_vec() })
    }

    /// The cluster's shard map (epoch, nodes, every shard's replicas).
    pub async fn shard_map(&self) -> Result<ShardMap, ClientError> {
        match &self.mode {
            Mode::Router(r) => r
                .admin
                .clone()
                .get_shard_map(self.request(GetShardMapRequest {}))
                .await?
                .into_inner()
                .map
                .ok_or(ClientError::Config("router returned no shard map")),
            Mode::Direct(c) => {
                let map = match c.map() {
                    Some(m) => m,
                    None => c.refresh_map().await?,
                };
                Ok(ringkv_routing::topology::map_to_proto(&map))
            }
        }
    }
}
