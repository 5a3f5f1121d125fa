//! The public `ringkv.v1.KV` service of a node.
//!
//! Each handler validates its input (see [`crate::validate`]), finds the local replica of the
//! key's shard (or answers `WrongShard`), and either proposes a command through Raft (writes)
//! or passes the consistency level's read barrier and reads the applied state (reads). All
//! errors leave through [`NodeError::to_status`].

use crate::admission::Admission;
use crate::error::{NodeError, storage};
use crate::metrics::NodeMetrics;
use crate::registry::ShardRegistry;
use crate::shard::{Shard, request_deadline};
use crate::validate;
use bytes::Bytes;
use prost::Message as _;
use ringkv_proto::v1::kv_server::Kv;
use ringkv_proto::v1::{
    BatchWriteRequest, BatchWriteResponse, CompareAndSwapRequest, CompareAndSwapResponse,
    Consistency, DeleteRequest, DeleteResponse, GetRequest, GetResponse, KeyValue, MultiGetRequest,
    MultiGetResponse, PutRequest, PutResponse, ScanRequest, ScanResponse, compare, write_op,
};
use ringkv_storage::{BatchOp, Command, CommandResult, Expected, Proposal, ScanRange, Versioned};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

#[derive(Clone, Debug)]
pub struct KvService {
    registry: ShardRegistry,
    metrics: NodeMetrics,
    admission: Admission,
}

impl KvService {
    pub fn new(registry: ShardRegistry, metrics: NodeMetrics, admission: Admission) -> Self {
        KvService { registry, metrics, admission }
    }
}

fn kv(key: Vec<u8>, v: Versioned) -> KeyValue {
    KeyValue { key: key.into(), value: v.value.into(), version: v.version }
}

fn unexpected(result: &CommandResult) -> NodeError {
    NodeError::Internal(format!("state machine returned {result:?} for another command kind"))
}

impl KvService {
    async fn read_shard(
        &self,
        key: &[u8],
        consistency: Consistency,
        timeout: Duration,
    ) -> Result<Arc<Shard>, NodeError> {
        let shard = self.registry.shard_for_key(key)?;
        shard.read_barrier(consistency, timeout).await?;
        Ok(shard)
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("put", async {
                let _admitted = admitted?;
                validate::key(&req.key)?;
                validate::value(&req.value)?;
                let shard = self.registry.shard_for_key(&req.key)?;
                let session = validate::session(req.session.as_ref())?;
                let command = Command::Put { key: req.key.to_vec(), value: req.value.to_vec() };
                match shard.write(Proposal { session, command }, timeout).await? {
                    CommandResult::Put { version } => Ok(PutResponse {
                        header: Some(shard.header(Consistency::Linearizable)),
                        version,
                    }),
                    other => Err(unexpected(&other)),
                }
            })
            .await
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("get", async {
                let _admitted = admitted?;
                validate::key(&req.key)?;
                let consistency = validate::consistency(req.consistency)?;
                let shard = self.read_shard(&req.key, consistency, timeout).await?;
                let header = shard.header(consistency);
                // A point read stays on the runtime: it is served from the memtable or block
                // cache in microseconds, and the hop to a blocking thread cost 17-19% of read
                // throughput (paired debug runs, docs/performance.md). Scans, multi-gets and
                // stream pages go through the read pool.
                let found = shard.reader.get(&req.key).map_err(storage(shard.id))?;
                Ok(GetResponse { header: Some(header), kv: found.map(|v| kv(req.key.to_vec(), v)) })
            })
            .await
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("delete", async {
                let _admitted = admitted?;
                validate::key(&req.key)?;
                let shard = self.registry.shard_for_key(&req.key)?;
                let session = validate::session(req.session.as_ref())?;
                let command = Command::Delete { key: req.key.to_vec() };
                match shard.write(Proposal { session, command }, timeout).await? {
                    CommandResult::Delete { deleted } => Ok(DeleteResponse {
                        header: Some(shard.header(Consistency::Linearizable)),
                        deleted,
                    }),
                    other => Err(unexpected(&other)),
                }
            })
            .await
    }

    async fn compare_and_swap(
        &self,
        req: Request<CompareAndSwapRequest>,
    ) -> Result<Response<CompareAndSwapResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics.observed("compare_and_swap", async {
            let _admitted = admitted?;
            validate::key(&req.key)?;
            let expected = match req.expected.and_then(|c| c.target) {
                Some(compare::Target::Value(v)) => {
                    validate::value(&v)?;
                    Expected::Value(v.to_vec())
                }
                Some(compare::Target::Version(v)) => Expected::Version(v),
                Some(compare::Target::MustNotExist(true)) => Expected::Absent,
                Some(compare::Target::MustNotExist(false)) | None => {
                    return Err(NodeError::invalid(
                        "expected",
                        "set one of expected.value, expected.version or expected.must_not_exist = true",
                    ));
                }
            };
            let new = if req.delete {
                None
            } else {
                validate::value(&req.new_value)?;
                Some(req.new_value.to_vec())
            };
            let shard = self.registry.shard_for_key(&req.key)?;
            let session = validate::session(req.session.as_ref())?;
            let command = Command::Cas { key: req.key.to_vec(), expected, new };
            match shard.write(Proposal { session, command }, timeout).await? {
                CommandResult::Cas { succeeded, version, current } => Ok(CompareAndSwapResponse {
                    header: Some(shard.header(Consistency::Linearizable)),
                    succeeded,
                    version,
                    current: current.map(|v| kv(req.key.to_vec(), v)),
                }),
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn scan(&self, req: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics.observed("scan", async {
            let _admitted = admitted?;
            let consistency = validate::consistency(req.consistency)?;
            let limit = validate::scan_limit(req.limit)?;
            for (field, v) in [("start_key", &req.start_key), ("end_key", &req.end_key), ("prefix", &req.prefix)] {
                if v.len() > validate::KEY_BYTES_MAX {
                    return Err(NodeError::too_large(field, v.len(), validate::KEY_BYTES_MAX));
                }
            }
            let shard_id = match req.shard_id {
                Some(s) => s,
                None if self.registry.map().layout().shard_count == 1 => 0,
                None => {
                    return Err(NodeError::invalid(
                        "shard_id",
                        "keys are hash-partitioned over several shards, so a node scans one shard at a time; \
                         set shard_id, or scan through the router, which merges all shards",
                    ));
                }
            };
            let shard = self.registry.shard(shard_id)?;
            shard.read_barrier(consistency, timeout).await?;
            let header = shard.header(consistency);
            // The continuation token is the first key of the next page.
            let start = if req.continuation_token.is_empty() { req.start_key } else { req.continuation_token };
            let (end, prefix) = (req.end_key, req.prefix);
            let page = shard
                .read(move |r| {
                    let range = ScanRange { start: &start[..], end: (!end.is_empty()).then_some(&end[..]), prefix: &prefix[..] };
                    r.scan(&range, limit).map_err(storage(r.shard_id()))
                })
                .await?;
            Ok(ScanResponse {
                header: Some(header),
                kvs: page.items.into_iter().map(|(k, v)| kv(k, v)).collect(),
                continuation_token: page.next_start.unwrap_or_default().into(),
            })
        })
        .await
    }

    async fn batch_write(
        &self,
        req: Request<BatchWriteRequest>,
    ) -> Result<Response<BatchWriteResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics.observed("batch_write", async {
            let _admitted = admitted?;
            let bytes: usize = req
                .ops
                .iter()
                .map(|op| match &op.op {
                    Some(write_op::Op::Put(p)) => p.key.len() + p.value.len(),
                    Some(write_op::Op::Delete(d)) => d.key.len(),
                    None => 0,
                })
                .sum();
            validate::batch(req.ops.len(), bytes)?;
            let map = self.registry.map();
            let mut shard_id = None;
            let mut ops = Vec::with_capacity(req.ops.len());
            for (i, op) in req.ops.into_iter().enumerate() {
                let (key, op) = match op.op {
                    Some(write_op::Op::Put(p)) => {
                        validate::value(&p.value)?;
                        (p.key.clone(), BatchOp::Put { key: p.key.to_vec(), value: p.value.to_vec() })
                    }
                    Some(write_op::Op::Delete(d)) => (d.key.clone(), BatchOp::Delete { key: d.key.to_vec() }),
                    None => return Err(NodeError::invalid("ops", format!("operation {i} is neither put nor delete"))),
                };
                validate::key(&key)?;
                let s = map.shard_of(&key);
                match shard_id {
                    None => shard_id = Some(s),
                    Some(first) if first != s => {
                        return Err(NodeError::invalid(
                            "ops",
                            format!("operation {i} is for shard {s} but operation 0 is for shard {first}; an atomic batch must stay in one shard (use keys that hash together, or separate batches)"),
                        ));
                    }
                    Some(_) => {}
                }
                ops.push(op);
            }
            let shard = self.registry.shard(shard_id.unwrap_or(0))?;
            let session = validate::session(req.session.as_ref())?;
            match shard.write(Proposal { session, command: Command::Batch { ops } }, timeout).await? {
                CommandResult::Batch { version } => {
                    Ok(BatchWriteResponse { header: Some(shard.header(Consistency::Linearizable)), version })
                }
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn multi_get(
        &self,
        req: Request<MultiGetRequest>,
    ) -> Result<Response<MultiGetResponse>, Status> {
        ringkv_auth::authorize(&req)?;
        let timeout = request_deadline(&req);
        let req = req.into_inner();
        let admitted = self.admission.admit(req.encoded_len());
        self.metrics
            .observed("multi_get", async {
                let _admitted = admitted?;
                if req.keys.len() > validate::MULTI_GET_KEYS_MAX {
                    return Err(NodeError::InvalidArgument {
                        field: "keys",
                        reason: format!(
                            "{} keys exceeds the limit of {}",
                            req.keys.len(),
                            validate::MULTI_GET_KEYS_MAX
                        ),
                        limit: Some(validate::MULTI_GET_KEYS_MAX as u64),
                    });
                }
                let consistency = validate::consistency(req.consistency)?;
                for k in &req.keys {
                    validate::key(k)?;
                }
                // One barrier per shard, then one blocking read per shard for its keys, in
                // the order asked.
                let mut by_shard: Vec<(Arc<Shard>, Vec<(usize, Bytes)>)> = Vec::new();
                for (i, k) in req.keys.iter().enumerate() {
                    let shard = self.registry.shard_for_key(k)?;
                    match by_shard.iter_mut().find(|(s, _)| s.id == shard.id) {
                        Some((_, keys)) => keys.push((i, k.clone())),
                        None => {
                            shard.read_barrier(consistency, timeout).await?;
                            by_shard.push((shard, vec![(i, k.clone())]));
                        }
                    }
                }
                let mut found = Vec::new();
                for (shard, keys) in by_shard {
                    let got = shard
                        .read(move |r| {
                            let mut got = Vec::new();
                            for (i, k) in keys {
                                if let Some(v) = r.get(&k).map_err(storage(r.shard_id()))? {
                                    got.push((i, kv(k.to_vec(), v)));
                                }
                            }
                            Ok(got)
                        })
                        .await?;
                    found.extend(got);
                }
                found.sort_unstable_by_key(|(i, _)| *i);
                Ok(MultiGetResponse { kvs: found.into_iter().map(|(_, kv)| kv).collect() })
            })
            .await
    }
}
