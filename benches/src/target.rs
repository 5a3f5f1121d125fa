//! One interface over the systems under test, so a workload runs unchanged against each:
//! ringkv through its router, ringkv through the client's direct mode (routing embedded, one
//! hop less), and etcd through its v3 gRPC API.
//!
//! Consistency maps as closely as the systems allow: ringkv LINEARIZABLE/LEASE/STALE; etcd
//! has linearizable reads (ReadIndex) and serializable reads (the member's own state), so
//! LEASE runs as linearizable and STALE as serializable there. A read-modify-write is a read
//! followed by a compare-and-swap on the value read (ringkv CAS, etcd Txn on mod_revision).

use crate::etcdpb::kv_client::KvClient as EtcdKv;
use crate::etcdpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, request_op,
};
use ringkv_client::{Client, Consistency, Expect, ScanOptions};
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// ringkv through `ringkv-router`.
    Router,
    /// ringkv through the client library's direct mode.
    Direct,
    /// etcd v3.
    Etcd,
}

/// One connection to a system under test. A run opens M of these and spreads clients on them.
pub enum Conn {
    Ringkv(Client),
    Etcd(EtcdKv<Channel>),
}

/// An operation's failure, by kind (the gRPC code name, or `timeout`).
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct OpError {
    pub kind: String,
    pub message: String,
}

impl From<ringkv_client::ClientError> for OpError {
    fn from(e: ringkv_client::ClientError) -> Self {
        let kind = e.code().map_or_else(|| "client".to_string(), |c| format!("{c:?}"));
        OpError { kind, message: e.to_string() }
    }
}

impl From<tonic::Status> for OpError {
    fn from(s: tonic::Status) -> Self {
        OpError { kind: format!("{:?}", s.code()), message: s.message().to_string() }
    }
}

/// Per-request deadline.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

impl Conn {
    /// Opens a connection. `endpoint` is the router address (router), comma-separated seeds
    /// (direct) or one etcd client URL host:port (etcd). A plaintext connection; see
    /// [`Conn::open_with`] for TLS.
    pub async fn open(
        kind: TargetKind,
        endpoint: &str,
        consistency: Consistency,
    ) -> anyhow::Result<Conn> {
        Self::open_with(kind, endpoint, consistency, ringkv_tls::Dialer::plaintext()).await
    }

    /// [`Conn::open`], dialing ringkv with `dialer` (TLS for a TLS cluster).
    pub async fn open_with(
        kind: TargetKind,
        endpoint: &str,
        consistency: Consistency,
        dialer: ringkv_tls::Dialer,
    ) -> anyhow::Result<Conn> {
        Self::open_as(kind, endpoint, consistency, dialer, None).await
    }

    /// [`Conn::open_with`], sending `token` with every call (a cluster with an access policy).
    pub async fn open_as(
        kind: TargetKind,
        endpoint: &str,
        consistency: Consistency,
        dialer: ringkv_tls::Dialer,
        token: Option<&str>,
    ) -> anyhow::Result<Conn> {
        let builder = |b: ringkv_client::ClientBuilder| {
            let b = b.consistency(consistency).timeout(OP_TIMEOUT).dialer(dialer.clone());
            match token {
                Some(t) => b.token(t),
                None => b,
            }
        };
        Ok(match kind {
            TargetKind::Router => {
                Conn::Ringkv(builder(Client::builder().router(endpoint)).connect().await?)
            }
            TargetKind::Direct => Conn::Ringkv(
                builder(Client::builder().direct(endpoint.split(',').map(str::to_string)))
                    .connect()
                    .await?,
            ),
            TargetKind::Etcd => {
                let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))?
                    .timeout(OP_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect()
                    .await?;
                Conn::Etcd(EtcdKv::new(ch))
            }
        })
    }

    pub async fn read(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<Vec<u8>>, OpError> {
        match self {
            Conn::Ringkv(c) => Ok(c.get_with(key, consistency).await?.map(|kv| kv.value.to_vec())),
            Conn::Etcd(c) => {
                let resp = c
                    .clone()
                    .range(RangeRequest {
                        key: key.to_vec().into(),
                        serializable: consistency == Consistency::Stale,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok(resp.kvs.into_iter().next().map(|kv| kv.value.to_vec()))
            }
        }
    }

    pub async fn write(&self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        match self {
            Conn::Ringkv(c) => c.put(key, value).await.map(|_| ()).map_err(Into::into),
            Conn::Etcd(c) => {
                c.clone()
                    .put(PutRequest {
                        key: key.to_vec().into(),
                        value: value.to_vec().into(),
                        lease: 0,
                    })
                    .await?;
                Ok(())
            }
        }
    }

    /// Up to `records` keys from `start` in key order; returns how many came back.
    pub async fn scan(&self, start: &[u8], records: u32) -> Result<usize, OpError> {
        match self {
            Conn::Ringkv(c) => {
                let page = c
                    .scan(ScanOptions {
                        start: start.to_vec(),
                        limit: records,
                        ..Default::default()
                    })
                    .await?;
                Ok(page.kvs.len())
            }
            Conn::Etcd(c) => {
                let resp = c
                    .clone()
                    .range(RangeRequest {
                        key: start.to_vec().into(),
                        range_end: vec![0xff].into(),
                        limit: i64::from(records),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok(resp.kvs.len())
            }
        }
    }

    /// Read, then compare-and-swap the value read for `value`. `Ok(false)` when another
    /// writer got there first (a normal outcome under contention, not an error).
    pub async fn read_modify_write(&self, key: &[u8], value: &[u8]) -> Result<bool, OpError> {
        match self {
            Conn::Ringkv(c) => {
                let current = c.get(key).await?;
                let expect = match current {
                    Some(kv) => Expect::Version(kv.version),
                    None => Expect::Absent,
                };
                Ok(c.cas(key, expect, Some(value)).await?.succeeded)
            }
            Conn::Etcd(c) => {
                let resp = c
                    .clone()
                    .range(RangeRequest { key: key.to_vec().into(), ..Default::default() })
                    .await?
                    .into_inner();
                let rev = resp.kvs.first().map_or(0, |kv| kv.mod_revision);
                let txn = TxnRequest {
                    compare: vec![Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Mod as i32,
                        key: key.to_vec().into(),
                        target_union: Some(compare::TargetUnion::ModRevision(rev)),
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key.to_vec().into(),
                            value: value.to_vec().into(),
                            lease: 0,
                        })),
                    }],
                    failure: vec![],
                };
                Ok(c.clone().txn(txn).await?.into_inner().succeeded)
            }
        }
    }
}
