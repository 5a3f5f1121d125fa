//! KV watch through the routing core: one followed stream per shard a watch can touch,
//! merged into one.
//!
//! An exact-key watch touches one shard; a prefix watch touches all of them (keys are
//! hash-partitioned, so a prefix is spread everywhere). Each shard's stream is followed on its
//! own (see [`crate::follow`]) with its own position, because revisions are per-shard Raft log
//! indexes: changes of one shard arrive in revision order, shards interleave freely. Every
//! message names its shard and the revision it is complete up to, which is exactly what
//! [`WatchRequest::resume`] takes back, so a consumer can resume after a router restart too.

use crate::cluster::Cluster;
use crate::error::RoutingError;
use crate::follow::{self, OUTPUT_BUFFER, Resumable};
use futures::FutureExt;
use futures::future::BoxFuture;
use ringkv_placement::ShardId;
use ringkv_proto::v1::streams_client::StreamsClient;
use ringkv_proto::v1::{ShardRevision, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
// Every channel to a node adds the credential of the call (see `ringkv_auth::forward`).
use ringkv_auth::AuthChannel as Channel;
use tonic::{Status, Streaming};

struct ShardWatch {
    shard: ShardId,
    req: WatchRequest,
}

impl Resumable for ShardWatch {
    type Item = WatchResponse;

    fn shard(&self) -> ShardId {
        self.shard
    }

    fn open(
        &self,
        channel: Channel,
    ) -> BoxFuture<'static, Result<Streaming<WatchResponse>, Status>> {
        let req = self.req.clone();
        async move {
            StreamsClient::new(channel)
                .max_decoding_message_size(crate::nodes::MESSAGE_BYTES_MAX)
                .watch(req)
                .await
                .map(|r| r.into_inner())
        }
        .boxed()
    }

    fn advance(&mut self, item: &WatchResponse, _first_ever: bool) -> bool {
        let next = item.revision + 1;
        self.req.resume = vec![ShardRevision { shard_id: self.shard, revision: next }];
        self.req.start_revision = next;
        // Progress marks are forwarded too: they are what lets a consumer resume a quiet watch
        // without falling behind compaction.
        true
    }
}

impl Cluster {
    /// Watches a key or prefix over every shard it can touch, merged into one stream.
    pub fn watch(
        &self,
        req: WatchRequest,
    ) -> Result<mpsc::Receiver<Result<WatchResponse, Status>>, RoutingError> {
        let map = self.current_map()?;
        let shards: Vec<ShardId> = match req.shard_id {
            Some(s) => vec![s],
            None if !req.prefix => {
                if req.key.is_empty() {
                    return Err(RoutingError::InvalidArgument(
                        "watch needs a key, or prefix = true (an empty prefix watches everything)"
                            .into(),
                    ));
                }
                vec![map.shard_of(&req.key)]
            }
            None => map.shard_ids().collect(),
        };
        let (tx, rx) = mpsc::channel(OUTPUT_BUFFER * shards.len().max(1));
        for shard in shards {
            let start = req
                .resume
                .iter()
                .find(|r| r.shard_id == shard)
                .map_or(req.start_revision, |r| r.revision);
            let sub = WatchRequest {
                shard_id: Some(shard),
                start_revision: start,
                resume: vec![],
                ..req.clone()
            };
            tokio::spawn(ringkv_auth::forward::propagate(follow::follow(
                self.clone(),
                ShardWatch { shard, req: sub },
                tx.clone(),
            )));
        }
        Ok(rx)
    }
}
