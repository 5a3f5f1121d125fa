//! The router's gRPC services: `ringkv.v1.KV` backed by the routing core, and the part of
//! `ringkv.v1.Admin` a router can answer (the shard map).

use crate::metrics::RouterMetrics;
use ringkv_placement::hash::key_hash;
use ringkv_proto::v1::admin_server::Admin;
use ringkv_proto::v1::kv_server::Kv;
use ringkv_proto::v1::*;
use ringkv_routing::{Cluster, RoutingError};
use tonic::{Request, Response, Status};

#[derive(Clone, Debug)]
pub struct RouterKv {
    primary: Cluster,
    /// A second cluster and the percentage of keys it receives.
    secondary: Option<(Cluster, u32)>,
    metrics: RouterMetrics,
}

impl RouterKv {
    pub fn new(
        primary: Cluster,
        secondary: Option<(Cluster, u32)>,
        metrics: RouterMetrics,
    ) -> Self {
        RouterKv { primary, secondary, metrics }
    }

    /// The cluster that owns `key`: sticky by key hash, so a key never flips between clusters.
    pub fn cluster_for(&self, key: &[u8]) -> &Cluster {
        match &self.secondary {
            // A different hash seed than the shard ring's would be nicer; taking the hash from
            // the top bits keeps it independent enough of the ring positions.
            Some((c, percent)) if (key_hash(key) >> 32) % 100 < u64::from(*percent) => c,
            _ => &self.primary,
        }
    }

    /// The one cluster that owns every key of a batch. A batch is atomic, so it cannot be
    /// divided between two clusters: one whose keys the split sends to both is refused, and
    /// nothing is written.
    fn batch_cluster(&self, req: &BatchWriteRequest) -> Result<&Cluster, RoutingError> {
        let keys = req.ops.iter().filter_map(|op| match &op.op {
            Some(write_op::Op::Put(p)) => Some(&p.key),
            Some(write_op::Op::Delete(d)) => Some(&d.key),
            None => None,
        });
        let mut owner: Option<(&Cluster, &[u8])> = None;
        for key in keys {
            let cluster = self.cluster_for(key);
            match owner {
                None => owner = Some((cluster, key)),
                Some((first, first_key)) if !std::ptr::eq(first, cluster) => {
                    return Err(RoutingError::InvalidArgument(format!(
                        "batch keys {} and {} go to different clusters of the traffic split \
                         (a batch is atomic and cannot span them); send them as separate batches",
                        String::from_utf8_lossy(first_key).escape_debug(),
                        String::from_utf8_lossy(key).escape_debug(),
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(owner.map_or(&self.primary, |(c, _)| c))
    }

    /// One page of a scan over both clusters of a split, from a page of each.
    ///
    /// Each cluster keeps the keys the split sends to it (a key written to the primary before
    /// the split began is not served by it any more, as a get would not find it there either).
    /// A page that may continue covered the key space only up to its last key, so the merged
    /// page stops at the smallest such key (`cutoff`); the continuation token is the key after
    /// the last one returned, or after the cutoff when the filtering left the page short, which
    /// both clusters' scans read as their next start key. No key repeats or is skipped.
    fn merge_split_pages(
        &self,
        limit: u32,
        primary: ScanResponse,
        secondary_page: ScanResponse,
        secondary: &Cluster,
    ) -> ScanResponse {
        let limit = if limit == 0 { ringkv_routing::SCAN_LIMIT_DEFAULT } else { limit } as usize;
        let cutoff = [&primary, &secondary_page]
            .into_iter()
            .filter(|p| !p.continuation_token.is_empty())
            .filter_map(|p| p.kvs.last().map(|kv| kv.key.clone()))
            .min();
        let owned_by =
            |cluster: &Cluster, kv: &KeyValue| std::ptr::eq(self.cluster_for(&kv.key), cluster);
        let mut kvs: Vec<KeyValue> = primary
            .kvs
            .into_iter()
            .filter(|kv| owned_by(&self.primary, kv))
            .chain(secondary_page.kvs.into_iter().filter(|kv| owned_by(secondary, kv)))
            .filter(|kv| cutoff.as_ref().is_none_or(|c| kv.key <= *c))
            .collect();
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        let truncated = kvs.len() > limit;
        kvs.truncate(limit);
        let continuation_token = match (kvs.last(), &cutoff) {
            (Some(last), _) if truncated => ringkv_routing::resume_after(&last.key),
            (_, Some(c)) => ringkv_routing::resume_after(c),
            _ => Default::default(),
        };
        ScanResponse { header: None, kvs, continuation_token }
    }
}

#[tonic::async_trait]
impl Kv for RouterKv {
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        self.metrics.observed(&caller, "put", self.cluster_for(&req.key).put(req.clone(), t)).await
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        self.metrics.observed(&caller, "get", self.cluster_for(&req.key).get(req.clone(), t)).await
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        self.metrics
            .observed(&caller, "delete", self.cluster_for(&req.key).delete(req.clone(), t))
            .await
    }

    async fn compare_and_swap(
        &self,
        req: Request<CompareAndSwapRequest>,
    ) -> Result<Response<CompareAndSwapResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        self.metrics
            .observed(
                &caller,
                "compare_and_swap",
                self.cluster_for(&req.key).compare_and_swap(req.clone(), t),
            )
            .await
    }

    async fn scan(&self, req: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        // A scan of one shard names a shard of the primary's map: shard ids are per cluster.
        let secondary = match &self.secondary {
            Some((c, _)) if req.shard_id.is_none() => c,
            _ => return self.metrics.observed(&caller, "scan", self.primary.scan(req, t)).await,
        };
        self.metrics
            .observed(&caller, "scan", async {
                let (a, b) = futures::try_join!(
                    self.primary.scan(req.clone(), t),
                    secondary.scan(req.clone(), t),
                )?;
                Ok(self.merge_split_pages(req.limit, a, b, secondary))
            })
            .await
    }

    async fn batch_write(
        &self,
        req: Request<BatchWriteRequest>,
    ) -> Result<Response<BatchWriteResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        self.metrics
            .observed(&caller, "batch_write", async {
                let cluster = self.batch_cluster(&req)?;
                cluster.batch_write(req, t).await
            })
            .await
    }

    async fn multi_get(
        &self,
        req: Request<MultiGetRequest>,
    ) -> Result<Response<MultiGetResponse>, Status> {
        let caller = ringkv_auth::authorize(&req)?;
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        self.metrics
            .observed(&caller, "multi_get", async {
                let Some((secondary, _)) = &self.secondary else {
                    return self.primary.multi_get(req, t).await;
                };
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for k in &req.keys {
                    if std::ptr::eq(self.cluster_for(k), secondary) {
                        b.push(k.clone())
                    } else {
                        a.push(k.clone())
                    }
                }
                let (ra, rb) = futures::try_join!(
                    self.primary
                        .multi_get(MultiGetRequest { keys: a, consistency: req.consistency }, t),
                    secondary
                        .multi_get(MultiGetRequest { keys: b, consistency: req.consistency }, t),
                )?;
                let mut found: std::collections::HashMap<_, _> =
                    ra.kvs.into_iter().chain(rb.kvs).map(|kv| (kv.key.clone(), kv)).collect();
                Ok(MultiGetResponse {
                    kvs: req.keys.iter().filter_map(|k| found.remove(k)).collect(),
                })
            })
            .await
    }
}

/// Admin calls a router can answer itself; the rest belong to the nodes.
#[derive(Clone, Debug)]
pub struct RouterAdmin {
    primary: Cluster,
}

impl RouterAdmin {
    pub fn new(primary: Cluster) -> Self {
        RouterAdmin { primary }
    }
}

fn node_only(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is answered by the nodes, not the router: get the node addresses from GetShardMap and ask them"
    ))
}

#[tonic::async_trait]
impl Admin for RouterAdmin {
    async fn get_shard_map(
        &self,
        req: Request<GetShardMapRequest>,
    ) -> Result<Response<GetShardMapResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let map = match self.primary.map() {
            Some(m) => m,
            None => self.primary.refresh_map().await?,
        };
        // (Fetched with the router's own credential: the map is the cluster's, not the
        // caller's, and any known caller may read it.)
        let mut map = ringkv_routing::topology::map_to_proto(&map);
        map.cluster_id = self.primary.cluster_id();
        Ok(Response::new(GetShardMapResponse { map: Some(map) }))
    }

    async fn node_status(
        &self,
        req: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        Err(node_only("NodeStatus"))
    }

    async fn shard_checksum(
        &self,
        req: Request<ShardChecksumRequest>,
    ) -> Result<Response<ShardChecksumResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        Err(node_only("ShardChecksum"))
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        Err(node_only("TransferLeader"))
    }

    async fn trigger_snapshot(
        &self,
        req: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        Err(node_only("TriggerSnapshot"))
    }

    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        Err(node_only("ListNodes"))
    }

    async fn drain_node(
        &self,
        req: Request<NodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        Err(node_only("DrainNode"))
    }

    async fn remove_node(
        &self,
        req: Request<NodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        Err(node_only("RemoveNode"))
    }

    async fn activate_node(
        &self,
        req: Request<NodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        Err(node_only("ActivateNode"))
    }

    async fn set_node_weight(
        &self,
        req: Request<SetNodeWeightRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        Err(node_only("SetNodeWeight"))
    }
}
