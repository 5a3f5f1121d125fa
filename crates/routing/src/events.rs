//! Event streams through the routing core: the public `ringkv.v1.Events` operations built
//! from the nodes' shard-level `Streams` steps.
//!
//! Creating a topic writes its catalog record first (on the catalog shard; the log index of
//! that write becomes the topic id), then creates every partition on its own shard, tagged
//! with the id. Every step is idempotent, so a create that failed half-way is finished by
//! running it again, and a partition left over from an older topic of the same name is
//! replaced when the newer id arrives. Deleting marks the catalog record first (so the name
//! cannot be re-created mid-way), drops every partition, then removes the record; again,
//! running it again finishes a broken delete.
//!
//! Appends need the topic's partition count and id; they come from a small cache of catalog
//! records ([`TopicCache`], refreshed after [`TOPIC_CACHE_TTL`] or when a node answers
//! `NOT_FOUND`/`TOPIC_CHANGED`). An append without an explicit partition goes to the partition
//! its first event's key hashes to, or round-robin when the key is empty. Appends and offset
//! commits carry a session lane like KV writes, so the routing core's own retries never apply
//! one twice; an idempotent producer's sequence numbers protect the application's retries.

use crate::cluster::{Cluster, Target};
use crate::error::RoutingError;
use crate::follow::{self, OUTPUT_BUFFER, Resumable};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use ringkv_placement::ShardId;
use ringkv_proto::v1::streams_client::StreamsClient;
use ringkv_proto::v1::*;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
// Every channel to a node adds the credential of the call (see `ringkv_auth::forward`).
use ringkv_auth::AuthChannel as Channel;
use tonic::{Status, Streaming};

/// How long a cached catalog record is trusted.
pub const TOPIC_CACHE_TTL: Duration = Duration::from_secs(5);
/// Catalog records cached; the catalog itself is bounded too (10,000 topics).
const TOPIC_CACHE_MAX: usize = 10_000;
/// Partitions created, dropped or described at once.
const PARTITION_CALLS_IN_FLIGHT: usize = 16;

/// Recently used catalog records.
#[derive(Debug, Default)]
pub struct TopicCache {
    entries: Mutex<HashMap<String, (TopicInfo, Instant)>>,
    round_robin: AtomicU64,
}

impl TopicCache {
    fn get(&self, name: &str) -> Option<TopicInfo> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).filter(|(_, at)| at.elapsed() < TOPIC_CACHE_TTL).map(|(t, _)| t.clone())
    }

    fn put(&self, t: TopicInfo) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= TOPIC_CACHE_MAX {
            map.retain(|_, (_, at)| at.elapsed() < TOPIC_CACHE_TTL);
        }
        if map.len() < TOPIC_CACHE_MAX {
            map.insert(t.name.clone(), (t, Instant::now()));
        }
    }

    fn forget(&self, name: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }
}

fn streams(ch: Channel) -> StreamsClient<Channel> {
    StreamsClient::new(ch).max_decoding_message_size(crate::nodes::MESSAGE_BYTES_MAX)
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

fn not_found(name: &str) -> RoutingError {
    RoutingError::Node(Status::not_found(format!("topic {name} not found")))
}

fn reason(e: &RoutingError) -> Option<String> {
    match e {
        RoutingError::Node(s) => crate::retry::reason(s),
        _ => None,
    }
}

impl Cluster {
    fn catalog_shard(&self) -> Result<ShardId, RoutingError> {
        Ok(self.current_map()?.catalog_shard())
    }

    fn partition_shard(&self, topic: &str, partition: u32) -> Result<ShardId, RoutingError> {
        Ok(self.current_map()?.partition_shard(topic, partition))
    }

    /// Runs `call` against the leader of every partition of `topic` (at most
    /// [`PARTITION_CALLS_IN_FLIGHT`] at once, each with the routing core's retries); the results
    /// come back in partition order.
    async fn on_partitions<T, F, Fut>(
        &self,
        topic: &TopicInfo,
        deadline: Instant,
        call: F,
    ) -> Result<Vec<T>, RoutingError>
    where
        F: Fn(StreamsClient<Channel>, u32, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let partitions = topic.config.as_ref().map_or(0, |c| c.partitions);
        let call = &call;
        let calls = (0..partitions).map(|p| async move {
            let shard = self.partition_shard(&topic.name, p)?;
            self.call_with(shard, Target::Leader, deadline, |ch, t| call(streams(ch), p, t)).await
        });
        futures::stream::iter(calls)
            .buffered(PARTITION_CALLS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Catalog records: all of them, or the one named.
    async fn get_topics(
        &self,
        name: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<TopicInfo>, RoutingError> {
        let req = GetTopicsRequest { name: name.map(str::to_string) };
        let resp = self
            .call_with(self.catalog_shard()?, Target::Leader, deadline, |ch, t| {
                let r = request(req.clone(), t);
                async move { streams(ch).get_topics(r).await }
            })
            .await?;
        for t in &resp.topics {
            self.inner.topics.put(t.clone());
        }
        Ok(resp.topics)
    }

    /// The catalog record of `name`, from the cache when fresh.
    pub async fn topic(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<TopicInfo, RoutingError> {
        if let Some(t) = self.inner.topics.get(name) {
            return Ok(t);
        }
        let found = self.get_topics(Some(name), self.deadline(timeout)).await?;
        found.into_iter().next().ok_or_else(|| not_found(name))
    }

    pub async fn create_topic(
        &self,
        req: CreateTopicRequest,
        timeout: Option<Duration>,
    ) -> Result<CreateTopicResponse, RoutingError> {
        let deadline = self.deadline(timeout);
        let put = PutTopicRequest { name: req.name.clone(), config: req.config };
        let resp = self
            .call_with(self.catalog_shard()?, Target::Leader, deadline, |ch, t| {
                let r = request(put.clone(), t);
                async move { streams(ch).put_topic(r).await }
            })
            .await?;
        // From here on the catalog record exists: a later failure leaves the topic created
        // (or half-created) and must not read as "not applied".
        let topic = resp.topic.clone().ok_or_else(|| {
            RoutingError::Node(crate::outcome::mark_unknown(Status::internal(
                "the catalog accepted the topic but returned no record of it",
            )))
        })?;
        self.on_partitions(&topic, deadline, |mut c, p, t| {
            let r = request(
                CreatePartitionRequest {
                    topic: topic.name.clone(),
                    partition: p,
                    topic_id: topic.topic_id,
                    config: topic.config,
                },
                t,
            );
            async move { c.create_partition(r).await }
        })
        .await
        .map_err(RoutingError::outcome_unknown)?;
        self.inner.topics.put(topic);
        Ok(resp)
    }

    pub async fn delete_topic(
        &self,
        req: DeleteTopicRequest,
        timeout: Option<Duration>,
    ) -> Result<DeleteTopicResponse, RoutingError> {
        let deadline = self.deadline(timeout);
        self.inner.topics.forget(&req.name);
        let Some(topic) = self.get_topics(Some(&req.name), deadline).await?.into_iter().next()
        else {
            return Ok(DeleteTopicResponse { deleted: false });
        };
        self.inner.topics.forget(&req.name);
        let remove = |mark_only| {
            let rm = RemoveTopicRequest {
                name: topic.name.clone(),
                topic_id: topic.topic_id,
                mark_only,
            };
            async move {
                self.call_with(self.catalog_shard()?, Target::Leader, deadline, |ch, t| {
                    let r = request(rm.clone(), t);
                    async move { streams(ch).remove_topic(r).await }
                })
                .await
            }
        };
        remove(true).await?;
        // The topic is marked deleted now: a later failure must not read as "not applied".
        self.on_partitions(&topic, deadline, |mut c, p, t| {
            let r = request(
                DropPartitionRequest {
                    topic: topic.name.clone(),
                    partition: p,
                    topic_id: topic.topic_id,
                },
                t,
            );
            async move { c.drop_partition(r).await }
        })
        .await
        .map_err(RoutingError::outcome_unknown)?;
        remove(false).await.map_err(RoutingError::outcome_unknown)?;
        Ok(DeleteTopicResponse { deleted: true })
    }

    pub async fn describe_topic(
        &self,
        req: DescribeTopicRequest,
        timeout: Option<Duration>,
    ) -> Result<DescribeTopicResponse, RoutingError> {
        let deadline = self.deadline(timeout);
        let Some(topic) = self.get_topics(Some(&req.name), deadline).await?.into_iter().next()
        else {
            return Err(not_found(&req.name));
        };
        let infos = self
            .on_partitions(&topic, deadline, |mut c, p, t| {
                let r = request(GetPartitionRequest { topic: topic.name.clone(), partition: p }, t);
                async move { c.get_partition(r).await }
            })
            .await?;
        Ok(DescribeTopicResponse { topic: Some(topic), partitions: infos })
    }

    pub async fn list_topics(
        &self,
        timeout: Option<Duration>,
    ) -> Result<ListTopicsResponse, RoutingError> {
        let topics = self.get_topics(None, self.deadline(timeout)).await?;
        Ok(ListTopicsResponse { topics })
    }

    /// Appends to the partition named, or to the one the first event's key picks.
    pub async fn append(
        &self,
        mut req: AppendRequest,
        timeout: Option<Duration>,
    ) -> Result<AppendResponse, RoutingError> {
        let deadline = self.deadline(timeout);
        let _lane = self.lane_for(&mut req.session).await;
        // One retry with a fresh catalog record if the cached one turns out stale.
        for fresh in [false, true] {
            if fresh {
                self.inner.topics.forget(&req.topic);
            }
            let topic = self
                .topic(&req.topic, Some(deadline.saturating_duration_since(Instant::now())))
                .await?;
            if topic.deleting {
                return Err(RoutingError::Node(Status::failed_precondition(format!(
                    "topic {} is being deleted",
                    topic.name
                ))));
            }
            let partitions = topic.config.as_ref().map_or(0, |c| c.partitions).max(1);
            let partition = match req.partition {
                Some(p) if p >= partitions => {
                    return Err(RoutingError::InvalidArgument(format!(
                        "partition {p} does not exist: topic {} has {partitions} partitions",
                        topic.name
                    )));
                }
                Some(p) => p,
                None => match req.events.first().map(|e| &e.key) {
                    Some(k) if !k.is_empty() => {
                        (ringkv_placement::hash::key_hash(k) % u64::from(partitions)) as u32
                    }
                    _ => {
                        (self.inner.topics.round_robin.fetch_add(1, Ordering::Relaxed)
                            % u64::from(partitions)) as u32
                    }
                },
            };
            let sub = AppendRequest {
                partition: Some(partition),
                topic_id: topic.topic_id,
                ..req.clone()
            };
            let result = self
                .call_with(
                    self.partition_shard(&req.topic, partition)?,
                    Target::Leader,
                    deadline,
                    |ch, t| {
                        let r = request(sub.clone(), t);
                        async move { streams(ch).append(r).await }
                    },
                )
                .await;
            match result {
                Err(e)
                    if !fresh
                        && matches!(reason(&e).as_deref(), Some("TOPIC_CHANGED" | "NOT_FOUND")) =>
                {
                    continue;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    pub async fn read(
        &self,
        req: ReadRequest,
        timeout: Option<Duration>,
    ) -> Result<ReadResponse, RoutingError> {
        let target = if req.consistency == Consistency::Stale as i32 {
            Target::AnyReplica { key_hash: u64::from(req.partition) }
        } else {
            Target::Leader
        };
        self.call_with(
            self.partition_shard(&req.topic, req.partition)?,
            target,
            self.deadline(timeout),
            |ch, t| {
                let r = request(req.clone(), t);
                async move { streams(ch).read(r).await }
            },
        )
        .await
    }

    pub async fn commit_offset(
        &self,
        mut req: CommitOffsetRequest,
        timeout: Option<Duration>,
    ) -> Result<CommitOffsetResponse, RoutingError> {
        let shard = self.partition_shard(&req.topic, req.partition)?;
        let _lane = self.lane_for(&mut req.session).await;
        self.call_with(shard, Target::Leader, self.deadline(timeout), |ch, t| {
            let r = request(req.clone(), t);
            async move { streams(ch).commit_offset(r).await }
        })
        .await
    }

    pub async fn fetch_offset(
        &self,
        req: FetchOffsetRequest,
        timeout: Option<Duration>,
    ) -> Result<FetchOffsetResponse, RoutingError> {
        self.call_with(
            self.partition_shard(&req.topic, req.partition)?,
            Target::Leader,
            self.deadline(timeout),
            |ch, t| {
                let r = request(req.clone(), t);
                async move { streams(ch).fetch_offset(r).await }
            },
        )
        .await
    }

    /// Subscribes to a partition; the stream follows the partition's leader across failovers
    /// and never repeats or skips an offset (see [`crate::follow`]).
    pub fn subscribe(
        &self,
        req: SubscribeRequest,
    ) -> Result<mpsc::Receiver<Result<SubscribeResponse, Status>>, RoutingError> {
        ringkv_placement::check_topic_name(&req.topic).map_err(RoutingError::InvalidArgument)?;
        let shard = self.partition_shard(&req.topic, req.partition)?;
        let (tx, rx) = mpsc::channel(OUTPUT_BUFFER);
        tokio::spawn(ringkv_auth::forward::propagate(follow::follow(
            self.clone(),
            Subscription { shard, req },
            tx,
        )));
        Ok(rx)
    }
}

struct Subscription {
    shard: ShardId,
    req: SubscribeRequest,
}

impl Resumable for Subscription {
    type Item = SubscribeResponse;

    fn shard(&self) -> ShardId {
        self.shard
    }

    fn open(
        &self,
        channel: Channel,
    ) -> BoxFuture<'static, Result<Streaming<SubscribeResponse>, Status>> {
        let req = self.req.clone();
        async move { streams(channel).subscribe(req).await.map(|r| r.into_inner()) }.boxed()
    }

    fn advance(&mut self, item: &SubscribeResponse, first_ever: bool) -> bool {
        // From now on, resume at an explicit offset: "latest" or a group's commit must not be
        // re-resolved after a failover.
        self.req.start = Some(subscribe_request::Start::Offset(item.next_offset));
        first_ever || !item.events.is_empty()
    }
}
