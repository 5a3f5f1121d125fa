//! ringkv's benchmark harness.
//!
//! The pieces, bottom up:
//! - [`keys`]: which key an operation touches (uniform, zipfian, latest), YCSB style;
//! - [`workload`]: the YCSB core mixes A–F plus write-only, and the values written;
//! - [`target`]: one interface over ringkv (through the router or the client's direct mode)
//!   and etcd (its v3 gRPC API), so every workload runs unchanged against each;
//! - [`etcd`]: a three-member etcd cluster on loopback, started and stopped by the harness;
//! - [`driver`]: closed loop (N clients, M connections) and open loop (a target rate, latency
//!   measured from each operation's *intended* start so coordinated omission cannot hide
//!   queueing), with HdrHistograms per operation and throughput per second;
//! - [`idle`]: what shards cost at rest (CPU and RSS per node of an idle cluster);
//! - [`server_cpu`]: the servers' CPU seconds per 1,000 operations (nodes and router, or etcd);
//! - [`results`]: JSON, a markdown table and SVG plots per results folder;
//! - [`lab`]: sweeps over fresh clusters (replication × consistency, shards × balancing,
//!   failures) and [`simulate`], the same questions at scale answered with the real placement
//!   code instead of processes.

pub mod driver;
pub mod etcd;
pub mod idle;
pub mod keys;
pub mod lab;
pub mod results;
pub mod scale;
pub mod scaleout;
pub mod server_cpu;
pub mod simulate;
pub mod target;
pub mod workload;

/// The generated etcd v3 KV client (subset, see `proto/etcd/kv.proto`).
pub mod etcdpb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("etcdserverpb");
}
