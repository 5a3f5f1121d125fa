//! The router's gRPC services: `ringkv.v1.KV` backed by the routing core, and the part of
//! `ringkv.v1.Admin` a router can answer (the shard map).

use crate::metrics::RouterMetrics;
use ringkv_placement::hash::key_hash;
use ringkv_proto::v1::admin_server::Admin;
use ringkv_proto::v1::kv_server::Kv;
use ringkv_proto::v1::*;
use ringkv_routing::Cluster;
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
}

#[tonic::async_trait]
impl Kv for RouterKv {
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        self.metrics.observed("put", self.cluster_for(&req.key).put(req.clone(), t)).await
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        self.metrics.observed("get", self.cluster_for(&req.key).get(req.clone(), t)).await
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        self.metrics.observed("delete", self.cluster_for(&req.key).delete(req.clone(), t)).await
    }

    async fn compare_and_swap(
        &self,
        req: Request<CompareAndSwapRequest>,
    ) -> Result<Response<CompareAndSwapResponse>, Status> {
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        self.metrics
            .observed(
                "compare_and_swap",
                self.cluster_for(&req.key).compare_and_swap(req.clone(), t),
            )
            .await
    }

    async fn scan(&self, req: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let t = crate::deadline::routing_timeout(req.metadata());
        // Scans cover key ranges, which a per-key split cannot divide: they go to the primary.
        self.metrics.observed("scan", self.primary.scan(req.into_inner(), t)).await
    }

    async fn batch_write(
        &self,
        req: Request<BatchWriteRequest>,
    ) -> Result<Response<BatchWriteResponse>, Status> {
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        let first = req.ops.first().and_then(|op| match &op.op {
            Some(write_op::Op::Put(p)) => Some(p.key.clone()),
            Some(write_op::Op::Delete(d)) => Some(d.key.clone()),
            None => None,
        });
        let cluster = self.cluster_for(first.as_deref().unwrap_or_default());
        self.metrics.observed("batch_write", cluster.batch_write(req, t)).await
    }

    async fn multi_get(
        &self,
        req: Request<MultiGetRequest>,
    ) -> Result<Response<MultiGetResponse>, Status> {
        let t = crate::deadline::routing_timeout(req.metadata());
        let req = req.into_inner();
        self.metrics
            .observed("multi_get", async {
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
        _req: Request<GetShardMapRequest>,
    ) -> Result<Response<GetShardMapResponse>, Status> {
        let map = match self.primary.map() {
            Some(m) => m,
            None => self.primary.refresh_map().await?,
        };
        let mut map = ringkv_routing::topology::map_to_proto(&map);
        map.cluster_id = self.primary.cluster_id();
        Ok(Response::new(GetShardMapResponse { map: Some(map) }))
    }

    async fn node_status(
        &self,
        _req: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        Err(node_only("NodeStatus"))
    }

    async fn shard_checksum(
        &self,
        _req: Request<ShardChecksumRequest>,
    ) -> Result<Response<ShardChecksumResponse>, Status> {
        Err(node_only("ShardChecksum"))
    }

    async fn transfer_leader(
        &self,
        _req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        Err(node_only("TransferLeader"))
    }

    async fn trigger_snapshot(
        &self,
        _req: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        Err(node_only("TriggerSnapshot"))
    }

    async fn list_nodes(
        &self,
        _req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        Err(node_only("ListNodes"))
    }

    async fn drain_node(
        &self,
        _req: Request<NodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        Err(node_only("DrainNode"))
    }

    async fn remove_node(
        &self,
        _req: Request<NodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        Err(node_only("RemoveNode"))
    }

    async fn activate_node(
        &self,
        _req: Request<NodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        Err(node_only("ActivateNode"))
    }

    async fn set_node_weight(
        &self,
        _req: Request<SetNodeWeightRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        Err(node_only("SetNodeWeight"))
    }
}
