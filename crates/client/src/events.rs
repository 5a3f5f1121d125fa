//! Event streams and watch in the client: topics, appends (plain or through an idempotent
//! [`Producer`]), reads, subscriptions, consumer-group offsets and KV watch.
//!
//! In router mode every call goes to the router's `Events`/`Watch` services; in direct mode
//! the embedded routing core does what the router would (including following a subscription
//! or a watch across leader changes).
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringkv_client::ClientError> {
//! use ringkv_client::{Client, Event, Retention};
//! let client = Client::builder().router("127.0.0.1:6000").connect().await?;
//! client.create_topic("orders", 8, Retention::default()).await?;
//! let producer = client.producer("orders").await?;
//! let at = producer.send(vec![Event { key: b"cust-1".to_vec().into(), payload: b"{}".to_vec().into(), ..Default::default() }]).await?;
//! let mut sub = client.subscribe_group("orders", at.partition, "billing").await?;
//! while let Some(batch) = sub.next().await {
//!     let batch = batch?;
//!     // ... process batch.events, then:
//!     client.commit_offset("billing", "orders", batch.partition, batch.next_offset).await?;
//! }
//! # Ok(()) }
//! ```

use crate::{Client, ClientError, Mode, WriteOutcome};
use ringkv_proto::v1::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};
use tonic::Streaming;

enum Source<T> {
    Router(Box<Streaming<T>>),
    Direct(mpsc::Receiver<Result<T, tonic::Status>>),
}

/// A server stream (subscription or watch). `next` returns `None` when it ends.
pub struct ClientStream<T> {
    source: Source<T>,
}

impl<T> std::fmt::Debug for ClientStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStream").finish_non_exhaustive()
    }
}

impl<T> ClientStream<T> {
    pub async fn next(&mut self) -> Option<Result<T, ClientError>> {
        match &mut self.source {
            Source::Router(s) => s.message().await.map_err(ClientError::from).transpose(),
            Source::Direct(rx) => rx.recv().await.map(|r| r.map_err(ClientError::from)),
        }
    }
}

pub type Subscription = ClientStream<SubscribeResponse>;
pub type Watcher = ClientStream<WatchResponse>;

impl Client {
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        retention: Retention,
    ) -> Result<CreateTopicResponse, ClientError> {
        let req = CreateTopicRequest {
            name: name.into(),
            config: Some(TopicConfig { partitions, retention: Some(retention) }),
        };
        Ok(match &self.mode {
            Mode::Router(r) => r.events.clone().create_topic(self.request(req)).await?.into_inner(),
            Mode::Direct(c) => c.create_topic(req, Some(self.timeout)).await?,
        })
    }

    /// Deletes a topic and all its events; false if there was none.
    pub async fn delete_topic(&self, name: &str) -> Result<bool, ClientError> {
        let req = DeleteTopicRequest { name: name.into() };
        Ok(match &self.mode {
            Mode::Router(r) => r.events.clone().delete_topic(self.request(req)).await?.into_inner(),
            Mode::Direct(c) => c.delete_topic(req, Some(self.timeout)).await?,
        }
        .deleted)
    }

    pub async fn describe_topic(&self, name: &str) -> Result<DescribeTopicResponse, ClientError> {
        let req = DescribeTopicRequest { name: name.into() };
        Ok(match &self.mode {
            Mode::Router(r) => {
                r.events.clone().describe_topic(self.request(req)).await?.into_inner()
            }
            Mode::Direct(c) => c.describe_topic(req, Some(self.timeout)).await?,
        })
    }

    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        Ok(match &self.mode {
            Mode::Router(r) => {
                r.events.clone().list_topics(self.request(ListTopicsRequest {})).await?.into_inner()
            }
            Mode::Direct(c) => c.list_topics(Some(self.timeout)).await?,
        }
        .topics)
    }

    /// Appends events to `partition` (or the one the first event's key picks). Applied at
    /// most once even if retried internally; for retries of your own, use a [`Producer`].
    pub async fn append(
        &self,
        topic: &str,
        partition: Option<u32>,
        events: Vec<Event>,
    ) -> Result<AppendResponse, ClientError> {
        self.append_request(AppendRequest {
            topic: topic.into(),
            partition,
            events,
            ..Default::default()
        })
        .await
    }

    async fn append_request(&self, req: AppendRequest) -> Result<AppendResponse, ClientError> {
        Ok(match &self.mode {
            Mode::Router(r) => {
                let lane = r.lanes.acquire().await;
                let req = AppendRequest { session: Some(lane.session()), ..req };
                r.events.clone().append(self.request(req)).await?.into_inner()
            }
            Mode::Direct(c) => c.append(req, Some(self.timeout)).await?,
        })
    }

    /// Reads up to `max_events` events of one partition from `offset` (0 = server default).
    pub async fn read_events(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_events: u32,
    ) -> Result<ReadResponse, ClientError> {
        let req = ReadRequest {
            topic: topic.into(),
            partition,
            offset,
            max_events,
            consistency: self.consistency as i32,
            ..Default::default()
        };
        Ok(match &self.mode {
            Mode::Router(r) => r.events.clone().read(self.request(req)).await?.into_inner(),
            Mode::Direct(c) => c.read(req, Some(self.timeout)).await?,
        })
    }

    /// Subscribes to a partition from a start point (see `SubscribeRequest`).
    pub async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, ClientError> {
        let source = match &self.mode {
            Mode::Router(r) => {
                Source::Router(Box::new(r.events.clone().subscribe(req).await?.into_inner()))
            }
            Mode::Direct(c) => Source::Direct(c.subscribe(req)?),
        };
        Ok(ClientStream { source })
    }

    /// Subscribes as consumer group `group`: from its committed offset, else the earliest.
    pub async fn subscribe_group(
        &self,
        topic: &str,
        partition: u32,
        group: &str,
    ) -> Result<Subscription, ClientError> {
        self.subscribe(SubscribeRequest {
            topic: topic.into(),
            partition,
            start: Some(subscribe_request::Start::Group(group.into())),
            max_batch_events: 0,
        })
        .await
    }

    /// Records that `group` has processed everything before `offset` on this partition.
    pub async fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), ClientError> {
        let req = CommitOffsetRequest {
            group: group.into(),
            topic: topic.into(),
            partition,
            offset,
            session: None,
        };
        match &self.mode {
            Mode::Router(r) => {
                let lane = r.lanes.acquire().await;
                let req = CommitOffsetRequest { session: Some(lane.session()), ..req };
                r.events.clone().commit_offset(self.request(req)).await?;
            }
            Mode::Direct(c) => {
                c.commit_offset(req, Some(self.timeout)).await?;
            }
        }
        Ok(())
    }

    /// The offset `group` committed on this partition, if any.
    pub async fn fetch_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, ClientError> {
        let req = FetchOffsetRequest { group: group.into(), topic: topic.into(), partition };
        Ok(match &self.mode {
            Mode::Router(r) => r.events.clone().fetch_offset(self.request(req)).await?.into_inner(),
            Mode::Direct(c) => c.fetch_offset(req, Some(self.timeout)).await?,
        }
        .offset)
    }

    /// Watches a key (or, with `prefix`, every key starting with it) from `start_revision`
    /// (0: from now).
    pub async fn watch(&self, req: WatchRequest) -> Result<Watcher, ClientError> {
        let source = match &self.mode {
            Mode::Router(r) => {
                Source::Router(Box::new(r.watch.clone().watch(req).await?.into_inner()))
            }
            Mode::Direct(c) => Source::Direct(c.watch(req)?),
        };
        Ok(ClientStream { source })
    }

    /// An idempotent producer for `topic` with a fresh random producer id.
    pub async fn producer(&self, topic: &str) -> Result<Producer<'_>, ClientError> {
        let info = self.describe_topic(topic).await?;
        let partitions = info.topic.and_then(|t| t.config).map_or(1, |c| c.partitions.max(1));
        Ok(Producer {
            client: self,
            topic: topic.into(),
            partitions,
            // Random, so producers never share an id; never 0 (the wire's "none").
            id: rand::random::<u64>().max(1),
            next_seq: Mutex::new(HashMap::new()),
            round_robin: AtomicU64::new(0),
        })
    }
}

/// Appends with a producer id and per-partition sequence numbers, so that retrying an append
/// whose answer was lost never stores it twice (Kafka's idempotent producer). It retries
/// transient failures itself, with the same sequence number, until the client's timeout.
/// One batch per partition is in flight at a time (sends to one partition queue up). If a
/// batch's outcome stays unknown, the producer refuses further sends to that partition
/// ([`ClientError::ProducerFenced`]): start a new producer, as with Kafka's fatal errors.
#[derive(Debug)]
pub struct Producer<'a> {
    client: &'a Client,
    topic: String,
    partitions: u32,
    id: u64,
    next_seq: Mutex<HashMap<u32, Arc<Mutex<PartitionSeq>>>>,
    round_robin: AtomicU64,
}

/// A producer's sequence on one partition.
#[derive(Debug, Default)]
struct PartitionSeq {
    next: u64,
    /// The last batch's outcome is unknown: see [`ClientError::ProducerFenced`].
    fenced: bool,
}

/// Whether retrying the same batch (same sequence number) may help: the routing core's own
/// rule for what is safe to repeat, which the sequence number makes true of every append.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Status(s) => {
            ringkv_routing::retry::classify(s) != ringkv_routing::retry::Next::Fail
        }
        _ => false,
    }
}

impl Producer<'_> {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends to the partition the first event's key hashes to (round-robin for empty keys).
    pub async fn send(&self, events: Vec<Event>) -> Result<AppendResponse, ClientError> {
        let partition = match events.first().map(|e| &e.key) {
            Some(k) if !k.is_empty() => {
                (ringkv_placement::hash::key_hash(k) % u64::from(self.partitions)) as u32
            }
            _ => {
                (self.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(self.partitions))
                    as u32
            }
        };
        self.send_to(partition, events).await
    }

    pub async fn send_to(
        &self,
        partition: u32,
        events: Vec<Event>,
    ) -> Result<AppendResponse, ClientError> {
        let slot = self.next_seq.lock().await.entry(partition).or_default().clone();
        let mut seq = slot.lock().await;
        if seq.fenced {
            return Err(ClientError::ProducerFenced { partition });
        }
        let count = events.len() as u64;
        let req = AppendRequest {
            topic: self.topic.clone(),
            partition: Some(partition),
            events,
            producer: Some(ProducerSequence { producer_id: self.id, sequence: seq.next }),
            ..Default::default()
        };
        let deadline = Instant::now() + self.client.timeout;
        let mut attempt = 0u32;
        // Whether any attempt so far may have appended the batch.
        let mut outcome = WriteOutcome::NotApplied;
        loop {
            match self.client.append_request(req.clone()).await {
                Ok(resp) => {
                    seq.next += count;
                    return Ok(resp);
                }
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    outcome = outcome.and(e.write_outcome());
                    attempt += 1;
                    let pause = Duration::from_millis(20u64 << attempt.min(5));
                    tokio::time::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                }
                Err(e) => {
                    // A refusal after an attempt of unknown outcome leaves the batch unknown,
                    // and the error returned must say so too.
                    seq.fenced = outcome.and(e.write_outcome()) == WriteOutcome::Unknown;
                    return Err(match e {
                        ClientError::Status(s) if seq.fenced => {
                            ClientError::Status(ringkv_routing::outcome::mark_unknown(s))
                        }
                        other => other,
                    });
                }
            }
        }
    }
}
