//! The router's `ringkv.v1.Events` and `ringkv.v1.Watch` services, backed by the routing core.
//!
//! Unary calls go through the routing core's retry loop like KV calls. Subscriptions and
//! watches are followed streams: the router keeps each one on the current leader of its
//! shard and, when the upstream breaks (leader change, node death), reopens it from the last
//! offset or revision it passed on, so the application sees neither a gap nor a repeat.
//!
//! Events and watches always use the primary cluster: splitting traffic between clusters is
//! by key for KV, and a topic's partitions must stay together.

use crate::metrics::RouterMetrics;
use ringkv_proto::v1::events_server::Events;
use ringkv_proto::v1::watch_server::Watch;
use ringkv_proto::v1::*;
use ringkv_routing::Cluster;
use std::pin::Pin;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone, Debug)]
pub struct RouterEvents {
    cluster: Cluster,
    metrics: RouterMetrics,
}

impl RouterEvents {
    pub fn new(cluster: Cluster, metrics: RouterMetrics) -> Self {
        RouterEvents { cluster, metrics }
    }
}

fn timeout<T>(req: &Request<T>) -> Option<std::time::Duration> {
    crate::deadline::routing_timeout(req.metadata())
}

#[tonic::async_trait]
impl Events for RouterEvents {
    async fn create_topic(
        &self,
        req: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = timeout(&req);
        self.metrics
            .observed(&caller, "create_topic", self.cluster.create_topic(req.into_inner(), t))
            .await
    }

    async fn delete_topic(
        &self,
        req: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = timeout(&req);
        self.metrics
            .observed(&caller, "delete_topic", self.cluster.delete_topic(req.into_inner(), t))
            .await
    }

    async fn describe_topic(
        &self,
        req: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = timeout(&req);
        self.metrics
            .observed(&caller, "describe_topic", self.cluster.describe_topic(req.into_inner(), t))
            .await
    }

    async fn list_topics(
        &self,
        req: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = timeout(&req);
        let mut listed =
            self.metrics.observed(&caller, "list_topics", self.cluster.list_topics(t)).await?;
        // The nodes filter too; this keeps the rule where they do not check.
        listed.get_mut().topics.retain(|topic| caller.sees_topic(&topic.name));
        Ok(listed)
    }

    async fn append(
        &self,
        req: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = timeout(&req);
        self.metrics.observed(&caller, "append", self.cluster.append(req.into_inner(), t)).await
    }

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = timeout(&req);
        self.metrics.observed(&caller, "read", self.cluster.read(req.into_inner(), t)).await
    }

    type SubscribeStream = Stream<SubscribeResponse>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let rx = self
            .metrics
            .observed(&caller, "subscribe", async { self.cluster.subscribe(req.into_inner()) })
            .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx.into_inner()))))
    }

    async fn commit_offset(
        &self,
        req: Request<CommitOffsetRequest>,
    ) -> Result<Response<CommitOffsetResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = timeout(&req);
        self.metrics
            .observed(&caller, "commit_offset", self.cluster.commit_offset(req.into_inner(), t))
            .await
    }

    async fn fetch_offset(
        &self,
        req: Request<FetchOffsetRequest>,
    ) -> Result<Response<FetchOffsetResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = timeout(&req);
        self.metrics
            .observed(&caller, "fetch_offset", self.cluster.fetch_offset(req.into_inner(), t))
            .await
    }
}

#[tonic::async_trait]
impl Watch for RouterEvents {
    type WatchStream = Stream<WatchResponse>;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let rx = self
            .metrics
            .observed(&caller, "watch", async { self.cluster.watch(req.into_inner()) })
            .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx.into_inner()))))
    }
}
