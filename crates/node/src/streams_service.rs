//! The node's `ringkv.v1.Streams` service: the shard-level steps of event streams and watch.
//!
//! Unary calls follow the KV pattern: validate, find the local replica of the shard that owns
//! the topic catalog or the partition (else `WrongShard`), then propose a
//! [`StreamCommand`] through Raft or pass a read barrier and read applied state. Rejections
//! decided by the state machine (a sequence gap, an unknown partition) come back as typed
//! [`NodeError`]s.
//!
//! Streams (`Subscribe`, `Watch`) are served by the shard's leader only, so a router that
//! follows leaders always reads the freshest replica; when this replica stops being leader
//! the stream ends with `NOT_LEADER` and the router resumes elsewhere from the last position
//! it delivered. Each stream is one task that reads a bounded page, hands it to a channel of
//! [`STREAM_BUFFER`] messages and waits for room: tonic only pulls from the channel as fast
//! as HTTP/2 flow control lets the client take, so a slow consumer holds at most a few pages
//! of memory here. Idle streams wake on the shard's applied-index watch, not on a timer.

use crate::admission::Admission;
use crate::error::{NodeError, storage};
use crate::metrics::NodeMetrics;
use crate::registry::ShardRegistry;
use crate::shard::{Shard, request_deadline};
use crate::validate;
use crate::validate_events as check;
use prost::Message as _;
use ringkv_proto::v1::streams_server::Streams;
use ringkv_proto::v1::*;
use ringkv_storage::stream_reader::KeyFilter;
use ringkv_storage::streams::{
    EventRecord, PartitionRecord, StreamCommand, StreamRejection, StreamResult, TopicRecord,
};
use ringkv_storage::{Command, CommandResult, Proposal, Session};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Messages queued per stream before the reader task waits for the client.
pub const STREAM_BUFFER: usize = 2;
/// Open subscriptions and watches per node; more get RESOURCE_EXHAUSTED.
pub const STREAMS_PER_NODE_MAX: usize = 1024;
/// An idle stream re-checks leadership (and sends a watch progress mark) this often.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Changes per watch message (whole revisions are never split, so a message may exceed it
/// by one batch write).
const WATCH_PAGE_CHANGES: usize = 1000;

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone, Debug)]
pub struct StreamsService {
    registry: ShardRegistry,
    metrics: NodeMetrics,
    admission: Admission,
    open_streams: Arc<Semaphore>,
}

/// A state machine answer of the wrong kind: a bug.
fn internal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Internal(e.to_string())
}

fn topic_info(t: TopicRecord) -> TopicInfo {
    let r = t.config.retention;
    TopicInfo {
        name: t.name,
        config: Some(TopicConfig {
            partitions: t.config.partitions,
            retention: Some(Retention {
                max_age_ms: r.max_age_ms,
                max_bytes: r.max_bytes,
                max_events: r.max_events,
            }),
        }),
        topic_id: t.topic_id,
        deleting: t.deleting,
    }
}

fn partition_info(partition: u32, shard: u64, p: &PartitionRecord) -> PartitionInfo {
    PartitionInfo {
        partition,
        shard_id: shard,
        start_offset: p.start_offset,
        end_offset: p.next_offset,
        bytes: p.bytes(),
        producers: p.producers,
        groups: p.groups,
        topic_id: p.topic_id,
    }
}

fn stored_event(offset: u64, r: EventRecord) -> StoredEvent {
    StoredEvent {
        offset,
        key: r.event.key.into(),
        payload: r.event.payload.into(),
        headers: r.event.headers.into_iter().map(|(k, v)| (k, v.into())).collect(),
        timestamp_ms: r.timestamp_ms,
    }
}

fn no_partition(topic: &str, partition: u32) -> NodeError {
    NodeError::NotFound {
        what: format!("partition {partition} of topic {topic}"),
        topic: topic.to_string(),
        partition: Some(partition),
    }
}

/// The error for a rejection the state machine decided.
fn rejected(
    r: StreamRejection,
    topic: &str,
    partition: u32,
    producer: Option<(u64, u64)>,
) -> NodeError {
    let (producer, got) = producer.unwrap_or_default();
    match r {
        StreamRejection::TopicExists { existing } => NodeError::AlreadyExists {
            what: format!(
                "topic {topic} (with {} partitions and retention {:?}; delete it first to change it)",
                existing.config.partitions, existing.config.retention
            ),
        },
        StreamRejection::TopicDeleting => NodeError::TopicChanged {
            topic: topic.into(),
            detail: "it is being deleted; run DeleteTopic again to finish".into(),
        },
        StreamRejection::TooManyTopics { limit } => {
            NodeError::LimitReached { what: "topics", limit }
        }
        StreamRejection::NoPartition => no_partition(topic, partition),
        StreamRejection::TopicChanged { current_topic_id } => NodeError::TopicChanged {
            topic: topic.into(),
            detail: format!("partition {partition} now belongs to incarnation {current_topic_id}"),
        },
        StreamRejection::OutOfOrderSequence { expected } => {
            NodeError::OutOfOrderSequence { producer, expected, got }
        }
        StreamRejection::DuplicateSequence { last_seq } => {
            NodeError::DuplicateSequence { producer, got, last_seq }
        }
        StreamRejection::TooManyGroups { limit } => NodeError::LimitReached {
            what: "consumer groups on this partition",
            limit: u64::from(limit),
        },
        StreamRejection::OffsetBeyondEnd { end_offset } => NodeError::InvalidArgument {
            field: "offset",
            reason: format!("beyond the end of {topic}/{partition} ({end_offset})"),
            limit: Some(end_offset),
        },
    }
}

impl StreamsService {
    pub fn new(registry: ShardRegistry, metrics: NodeMetrics, admission: Admission) -> Self {
        StreamsService {
            registry,
            metrics,
            admission,
            open_streams: Arc::new(Semaphore::new(STREAMS_PER_NODE_MAX)),
        }
    }

    fn catalog(&self) -> Result<Arc<Shard>, NodeError> {
        self.registry.shard(self.registry.map().catalog_shard())
    }

    fn partition_shard(&self, topic: &str, partition: u32) -> Result<Arc<Shard>, NodeError> {
        self.registry.shard(self.registry.map().partition_shard(topic, partition))
    }

    async fn propose(
        shard: &Shard,
        session: Option<Session>,
        cmd: StreamCommand,
        timeout: Duration,
    ) -> Result<StreamResult, NodeError> {
        match shard.write(Proposal { session, command: Command::Stream(cmd) }, timeout).await? {
            CommandResult::Stream(r) => Ok(r),
            other => {
                Err(internal(format!("state machine returned {other:?} for a stream command")))
            }
        }
    }

    /// The partition's record after a linearizable read barrier.
    async fn read_partition(
        &self,
        topic: &str,
        partition: u32,
        consistency: Consistency,
        timeout: Duration,
    ) -> Result<(Arc<Shard>, PartitionRecord), NodeError> {
        check::topic(topic)?;
        let shard = self.partition_shard(topic, partition)?;
        shard.read_barrier(consistency, timeout).await?;
        let t = topic.to_owned();
        let rec =
            shard.read(move |r| r.partition(&t, partition).map_err(storage(r.shard_id()))).await?;
        Ok((shard, rec.ok_or_else(|| no_partition(topic, partition))?))
    }

    fn acquire_stream(&self) -> Result<StreamSlot, NodeError> {
        let permit =
            self.open_streams.clone().try_acquire_owned().map_err(|_| NodeError::LimitReached {
                what: "open subscriptions and watches on this node",
                limit: STREAMS_PER_NODE_MAX as u64,
            })?;
        self.metrics.open_streams.inc();
        Ok(StreamSlot { _permit: permit, metrics: self.metrics.clone() })
    }
}

/// A stream's place under [`STREAMS_PER_NODE_MAX`]; given back (and counted) when dropped.
struct StreamSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: NodeMetrics,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.metrics.open_streams.dec();
    }
}

/// Waits until the shard applies something new, the client goes away (false), or the idle
/// period passes.
async fn wait_for_data<T>(
    applied: &mut tokio::sync::watch::Receiver<u64>,
    tx: &mpsc::Sender<Result<T, Status>>,
) -> bool {
    tokio::select! {
        _ = applied.changed() => true,
        _ = tx.closed() => false,
        _ = tokio::time::sleep(IDLE_CHECK) => true,
    }
}

/// The body of one subscription: pages of events from `next` on, until the client leaves,
/// this replica loses leadership, or the position falls behind retention.
async fn run_subscription(
    shard: Arc<Shard>,
    topic: String,
    partition: u32,
    mut next: u64,
    batch: usize,
    tx: mpsc::Sender<Result<SubscribeResponse, Status>>,
) {
    let mut applied = shard.state_machine.applied_watch();
    // The first message says where the subscription starts, so a resumer knows its position
    // even before any event arrives.
    if tx
        .send(Ok(SubscribeResponse { partition, events: vec![], next_offset: next }))
        .await
        .is_err()
    {
        return;
    }
    loop {
        if !shard.is_leader() {
            let _ = tx.send(Err(shard.not_leader().to_status())).await;
            return;
        }
        applied.borrow_and_update();
        let topic_read = topic.clone();
        let page = shard
            .read(move |reader| -> Result<Vec<StoredEvent>, NodeError> {
                let topic = topic_read;
                let rec =
                    reader.partition(&topic, partition).map_err(storage(reader.shard_id()))?;
                let rec = rec.ok_or_else(|| no_partition(&topic, partition))?;
                if next < rec.start_offset {
                    return Err(NodeError::OffsetOutOfRange {
                        topic: topic.clone(),
                        partition,
                        offset: next,
                        earliest_offset: rec.start_offset,
                        end_offset: rec.next_offset,
                    });
                }
                let events = reader
                    .events(&topic, partition, next, batch, u64::from(check::READ_BYTES_DEFAULT))
                    .map_err(storage(reader.shard_id()))?;
                Ok(events.into_iter().map(|(o, r)| stored_event(o, r)).collect())
            })
            .await;
        match page {
            Err(e) => {
                let _ = tx.send(Err(e.to_status())).await;
                return;
            }
            Ok(events) if events.is_empty() => {
                if !wait_for_data(&mut applied, &tx).await {
                    return;
                }
            }
            Ok(events) => {
                next = events.last().map_or(next, |e| e.offset + 1);
                let msg = SubscribeResponse { partition, events, next_offset: next };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The body of one watch of one shard.
async fn run_watch(
    shard: Arc<Shard>,
    key: Vec<u8>,
    prefix: bool,
    mut next: u64,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
) {
    let mut applied = shard.state_machine.applied_watch();
    let progress = |revision| WatchResponse { shard_id: shard.id, events: vec![], revision };
    if tx.send(Ok(progress(next - 1))).await.is_err() {
        return;
    }
    let mut last_sent = Instant::now();
    loop {
        if !shard.is_leader() {
            let _ = tx.send(Err(shard.not_leader().to_status())).await;
            return;
        }
        applied.borrow_and_update();
        let to = shard.applied_index();
        let (shard_id, key) = (shard.id, key.clone());
        let page = shard
            .read(move |reader| {
                let first = reader.first_revision().map_err(storage(reader.shard_id()))?;
                if next < first {
                    return Err(NodeError::Compacted {
                        shard: shard_id,
                        revision: next,
                        compact_revision: first,
                    });
                }
                let filter = if prefix { KeyFilter::Prefix(&key) } else { KeyFilter::Exact(&key) };
                reader
                    .changes(next, to, filter, WATCH_PAGE_CHANGES)
                    .map_err(storage(reader.shard_id()))
            })
            .await;
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e.to_status())).await;
                return;
            }
        };
        let advanced = page.scanned_to + 1 > next;
        next = next.max(page.scanned_to + 1);
        if !page.changes.is_empty() {
            let events = page
                .changes
                .into_iter()
                .map(|(rev, c)| {
                    let kind = if c.value.is_some() {
                        watch_event::Kind::Put
                    } else {
                        watch_event::Kind::Delete
                    };
                    WatchEvent {
                        kind: kind as i32,
                        kv: Some(KeyValue {
                            key: c.key.into(),
                            value: c.value.unwrap_or_default().into(),
                            version: rev,
                        }),
                    }
                })
                .collect();
            let msg = WatchResponse { shard_id: shard.id, events, revision: page.scanned_to };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
            last_sent = Instant::now();
            continue;
        }
        if advanced && last_sent.elapsed() >= IDLE_CHECK {
            if tx.send(Ok(progress(page.scanned_to))).await.is_err() {
                return;
            }
            last_sent = Instant::now();
        }
        if next <= shard.applied_index() {
            // A page stopped early (the scan bound): keep going without waiting.
            continue;
        }
        if !wait_for_data(&mut applied, &tx).await {
            return;
        }
    }
}

#[tonic::async_trait]
impl Streams for StreamsService {
    async fn put_topic(
        &self,
        req: Request<PutTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("put_topic", async {
                let _admitted = admitted?;
                check::topic(&req.name)?;
                let config = check::config(req.config.as_ref())?;
                let shard = self.catalog()?;
                let cmd = StreamCommand::PutTopic { name: req.name.clone(), config };
                match Self::propose(&shard, None, cmd, timeout).await? {
                    StreamResult::Topic { topic, created } => {
                        Ok(CreateTopicResponse { topic: Some(topic_info(topic)), created })
                    }
                    StreamResult::Rejected(r) => Err(rejected(r, &req.name, 0, None)),
                    other => Err(internal(format!("unexpected {other:?}"))),
                }
            })
            .await
    }

    async fn remove_topic(
        &self,
        req: Request<RemoveTopicRequest>,
    ) -> Result<Response<RemoveTopicResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("remove_topic", async {
                let _admitted = admitted?;
                check::topic(&req.name)?;
                let shard = self.catalog()?;
                let cmd = StreamCommand::RemoveTopic {
                    name: req.name.clone(),
                    topic_id: req.topic_id,
                    mark_only: req.mark_only,
                };
                match Self::propose(&shard, None, cmd, timeout).await? {
                    StreamResult::Removed { existed } => Ok(RemoveTopicResponse { existed }),
                    StreamResult::Rejected(r) => Err(rejected(r, &req.name, 0, None)),
                    other => Err(internal(format!("unexpected {other:?}"))),
                }
            })
            .await
    }

    async fn get_topics(
        &self,
        req: Request<GetTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("get_topics", async {
                let _admitted = admitted?;
                if let Some(n) = &req.name {
                    check::topic(n)?;
                }
                let shard = self.catalog()?;
                shard.read_barrier(Consistency::Linearizable, timeout).await?;
                let name = req.name.clone();
                let topics = shard
                    .read(move |r| r.topics(name.as_deref()).map_err(storage(r.shard_id())))
                    .await?;
                // A caller learns only of the topics it holds a grant on.
                let topics =
                    topics.into_iter().map(topic_info).filter(|t| caller.sees_topic(&t.name));
                Ok(ListTopicsResponse { topics: topics.collect() })
            })
            .await
    }

    async fn create_partition(
        &self,
        req: Request<CreatePartitionRequest>,
    ) -> Result<Response<PartitionInfo>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("create_partition", async {
                let _admitted = admitted?;
                check::topic(&req.topic)?;
                let config = check::config(req.config.as_ref())?;
                let shard = self.partition_shard(&req.topic, req.partition)?;
                let cmd = StreamCommand::CreatePartition {
                    topic: req.topic.clone(),
                    partition: req.partition,
                    topic_id: req.topic_id,
                    config,
                };
                match Self::propose(&shard, None, cmd, timeout).await? {
                    StreamResult::Partition(p) => Ok(partition_info(req.partition, shard.id, &p)),
                    StreamResult::Rejected(r) => Err(rejected(r, &req.topic, req.partition, None)),
                    other => Err(internal(format!("unexpected {other:?}"))),
                }
            })
            .await
    }

    async fn drop_partition(
        &self,
        req: Request<DropPartitionRequest>,
    ) -> Result<Response<DropPartitionResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("drop_partition", async {
                let _admitted = admitted?;
                check::topic(&req.topic)?;
                let shard = self.partition_shard(&req.topic, req.partition)?;
                let cmd = StreamCommand::DropPartition {
                    topic: req.topic.clone(),
                    partition: req.partition,
                    topic_id: req.topic_id,
                };
                match Self::propose(&shard, None, cmd, timeout).await? {
                    StreamResult::Removed { existed } => Ok(DropPartitionResponse { existed }),
                    StreamResult::Rejected(r) => Err(rejected(r, &req.topic, req.partition, None)),
                    other => Err(internal(format!("unexpected {other:?}"))),
                }
            })
            .await
    }

    async fn get_partition(
        &self,
        req: Request<GetPartitionRequest>,
    ) -> Result<Response<PartitionInfo>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("get_partition", async {
                let _admitted = admitted?;
                let (shard, rec) = self
                    .read_partition(&req.topic, req.partition, Consistency::Linearizable, timeout)
                    .await?;
                Ok(partition_info(req.partition, shard.id, &rec))
            })
            .await
    }

    async fn append(
        &self,
        req: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("append", async {
                let _admitted = admitted?;
                check::topic(&req.topic)?;
                let partition = req.partition.ok_or_else(|| {
                    NodeError::invalid(
                        "partition",
                        "a node needs an explicit partition (routers choose one by key)",
                    )
                })?;
                let producer = match req.producer {
                    Some(p) if p.producer_id == 0 => {
                        return Err(NodeError::invalid("producer.producer_id", "must be non-zero"));
                    }
                    Some(p) => Some((p.producer_id, p.sequence)),
                    None => None,
                };
                let session = validate::session(req.session.as_ref())?;
                let events = check::events(req.events)?;
                let shard = self.partition_shard(&req.topic, partition)?;
                let cmd = StreamCommand::Append {
                    topic: req.topic.clone(),
                    partition,
                    topic_id: req.topic_id,
                    producer,
                    timestamp_ms: crate::network::unix_ms(),
                    events,
                };
                match Self::propose(&shard, session, cmd, timeout).await? {
                    StreamResult::Appended { first_offset, count, duplicate } => {
                        if !duplicate {
                            self.metrics.events_appended.inc_by(u64::from(count));
                        }
                        Ok(AppendResponse {
                            partition,
                            first_offset,
                            count,
                            duplicate,
                            header: Some(shard.header(Consistency::Linearizable)),
                        })
                    }
                    StreamResult::Rejected(r) => Err(rejected(r, &req.topic, partition, producer)),
                    other => Err(internal(format!("unexpected {other:?}"))),
                }
            })
            .await
    }

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("read", async {
                let _admitted = admitted?;
                let consistency = validate::consistency(req.consistency)?;
                let (max_events, max_bytes) = check::read_limits(req.max_events, req.max_bytes)?;
                let (shard, rec) =
                    self.read_partition(&req.topic, req.partition, consistency, timeout).await?;
                if req.offset < rec.start_offset || req.offset > rec.next_offset {
                    return Err(NodeError::OffsetOutOfRange {
                        topic: req.topic.clone(),
                        partition: req.partition,
                        offset: req.offset,
                        earliest_offset: rec.start_offset,
                        end_offset: rec.next_offset,
                    });
                }
                let header = shard.header(consistency);
                let (topic, partition, offset) = (req.topic.clone(), req.partition, req.offset);
                let events = shard
                    .read(move |r| {
                        r.events(&topic, partition, offset, max_events, max_bytes)
                            .map_err(storage(r.shard_id()))
                    })
                    .await?;
                let next_offset = events.last().map_or(req.offset, |(o, _)| o + 1);
                Ok(ReadResponse {
                    events: events.into_iter().map(|(o, r)| stored_event(o, r)).collect(),
                    next_offset,
                    start_offset: rec.start_offset,
                    end_offset: rec.next_offset,
                    header: Some(header),
                })
            })
            .await
    }

    type SubscribeStream = Stream<SubscribeResponse>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("subscribe", async {
                let _admitted = admitted?;
                let batch = match req.max_batch_events {
                    0 => check::SUBSCRIBE_BATCH_DEFAULT,
                    n if n > check::READ_EVENTS_MAX => {
                        return Err(NodeError::InvalidArgument {
                            field: "max_batch_events",
                            reason: format!("{n} exceeds the limit of {}", check::READ_EVENTS_MAX),
                            limit: Some(u64::from(check::READ_EVENTS_MAX)),
                        });
                    }
                    n => n,
                } as usize;
                if let Some(subscribe_request::Start::Group(g)) = &req.start {
                    check::group(g)?;
                }
                let permit = self.acquire_stream()?;
                let (shard, rec) = self
                    .read_partition(&req.topic, req.partition, Consistency::Linearizable, timeout)
                    .await?;
                let start = match &req.start {
                    Some(subscribe_request::Start::Offset(o)) => *o,
                    Some(subscribe_request::Start::Latest(_)) => rec.next_offset,
                    Some(subscribe_request::Start::Group(g)) => {
                        let (topic, partition, g) = (req.topic.clone(), req.partition, g.clone());
                        shard
                            .read(move |r| {
                                r.group_offset(&topic, partition, &g).map_err(storage(r.shard_id()))
                            })
                            .await?
                            .unwrap_or(rec.start_offset)
                    }
                    Some(subscribe_request::Start::Earliest(_)) | None => rec.start_offset,
                };
                if start < rec.start_offset || start > rec.next_offset {
                    return Err(NodeError::OffsetOutOfRange {
                        topic: req.topic.clone(),
                        partition: req.partition,
                        offset: start,
                        earliest_offset: rec.start_offset,
                        end_offset: rec.next_offset,
                    });
                }
                let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                tokio::spawn(async move {
                    run_subscription(shard, req.topic, req.partition, start, batch, tx).await;
                    drop(permit);
                });
                Ok(Box::pin(ReceiverStream::new(rx)) as Self::SubscribeStream)
            })
            .await
    }

    async fn commit_offset(
        &self,
        req: Request<CommitOffsetRequest>,
    ) -> Result<Response<CommitOffsetResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("commit_offset", async {
                let _admitted = admitted?;
                check::topic(&req.topic)?;
                check::group(&req.group)?;
                let session = validate::session(req.session.as_ref())?;
                let shard = self.partition_shard(&req.topic, req.partition)?;
                let cmd = StreamCommand::CommitOffset {
                    topic: req.topic.clone(),
                    partition: req.partition,
                    group: req.group.clone(),
                    offset: req.offset,
                };
                match Self::propose(&shard, session, cmd, timeout).await? {
                    StreamResult::Committed => Ok(CommitOffsetResponse {}),
                    StreamResult::Rejected(r) => Err(rejected(r, &req.topic, req.partition, None)),
                    other => Err(internal(format!("unexpected {other:?}"))),
                }
            })
            .await
    }

    async fn fetch_offset(
        &self,
        req: Request<FetchOffsetRequest>,
    ) -> Result<Response<FetchOffsetResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("fetch_offset", async {
                let _admitted = admitted?;
                check::group(&req.group)?;
                let (shard, _) = self
                    .read_partition(&req.topic, req.partition, Consistency::Linearizable, timeout)
                    .await?;
                let (topic, partition, group) =
                    (req.topic.clone(), req.partition, req.group.clone());
                let offset = shard
                    .read(move |r| {
                        r.group_offset(&topic, partition, &group).map_err(storage(r.shard_id()))
                    })
                    .await?;
                Ok(FetchOffsetResponse { offset })
            })
            .await
    }

    type WatchStream = Stream<WatchResponse>;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("watch", async {
                let _admitted = admitted?;
                if req.key.len() > validate::KEY_BYTES_MAX {
                    return Err(NodeError::too_large(
                        "key",
                        req.key.len(),
                        validate::KEY_BYTES_MAX,
                    ));
                }
                let shard = match req.shard_id {
                    Some(id) => self.registry.shard(id)?,
                    None if !req.prefix => {
                        validate::key(&req.key)?;
                        self.registry.shard_for_key(&req.key)?
                    }
                    None if self.registry.map().layout().shard_count == 1 => {
                        self.registry.shard(0)?
                    }
                    None => {
                        return Err(NodeError::invalid(
                            "shard_id",
                            "a prefix watch on a node needs a shard id (routers watch every shard)",
                        ));
                    }
                };
                let permit = self.acquire_stream()?;
                shard.read_barrier(Consistency::Linearizable, timeout).await?;
                let start = req
                    .resume
                    .iter()
                    .find(|r| r.shard_id == shard.id)
                    .map_or(req.start_revision, |r| r.revision);
                let start = if start == 0 { shard.applied_index() + 1 } else { start };
                let first =
                    shard.read(|r| r.first_revision().map_err(storage(r.shard_id()))).await?;
                if start < first {
                    return Err(NodeError::Compacted {
                        shard: shard.id,
                        revision: start,
                        compact_revision: first,
                    });
                }
                let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                tokio::spawn(async move {
                    run_watch(shard, req.key.to_vec(), req.prefix, start, tx).await;
                    drop(permit);
                });
                Ok(Box::pin(ReceiverStream::new(rx)) as Self::WatchStream)
            })
            .await
    }
}
