//! The wire types of ringkv, generated from `proto/` at build time.
//!
//! Three services live here:
//! - `ringkv.v1.KV`: the public key-value API, served by every node (and by the router).
//! - `ringkv.v1.Admin`: cluster status and the shard map.
//! - `ringkv.internal.v1.Raft`: the node-to-node Raft transport. It carries a shard id on
//!   every call, so one gRPC server per node serves every shard's Raft group.
//!
//! Byte fields are generated as [`bytes::Bytes`](prost::bytes::Bytes) so large values are not
//! copied on their way through the server.

/// The public API (`ringkv.v1`).
pub mod v1 {
    tonic::include_proto!("ringkv.v1");
}

/// The node-to-node transport (`ringkv.internal.v1`). Not for applications.
pub mod internal {
    tonic::include_proto!("ringkv.internal.v1");
}

/// The encoded `FileDescriptorSet` of every proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ringkv_descriptor");
