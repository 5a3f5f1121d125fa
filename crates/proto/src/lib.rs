//! The wire types of ringkv, generated from `proto/` at build time.
//!
//! The services:
//! - `ringkv.v1.KV`: the public key-value API, served by every node (and by the router).
//! - `ringkv.v1.Events` and `ringkv.v1.Watch`: event streams and KV watch, served by the
//!   router (nodes serve their shard-level steps, `ringkv.v1.Streams`).
//! - `ringkv.v1.Admin`: cluster status and the shard map.
//! - `ringkv.internal.v1.Raft`: the node-to-node Raft transport. It carries a shard id on
//!   every call, so one gRPC server per node serves every shard's Raft group.
//! - `ringkv.internal.v1.Membership`: finding and founding a cluster, joining it, following
//!   the meta group, and the placement driver's steps on shard leaders.
//!
//! Byte fields are generated as [`bytes::Bytes`](prost::bytes::Bytes) so large values are not
//! copied on their way through the server.

/// The public API (`ringkv.v1`).
pub mod shard_map;

pub mod v1 {
    tonic::include_proto!("ringkv.v1");
}

/// The node-to-node transport (`ringkv.internal.v1`). Not for applications.
pub mod internal {
    tonic::include_proto!("ringkv.internal.v1");
}

/// The encoded `FileDescriptorSet` of every proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ringkv_descriptor");

/// Request metadata naming the cluster an admin call is meant for (decimal). Nodes refuse an
/// admin call that names another cluster (`WRONG_CLUSTER`); calls without it are served.
pub const CLUSTER_ID_HEADER: &str = "ringkv-cluster-id";

/// Adds [`CLUSTER_ID_HEADER`] to a request (a cluster id of 0, unknown, adds nothing).
pub fn with_cluster_id<T>(mut req: tonic::Request<T>, cluster_id: u64) -> tonic::Request<T> {
    if cluster_id != 0
        && let Ok(v) = cluster_id.to_string().parse()
    {
        req.metadata_mut().insert(CLUSTER_ID_HEADER, v);
    }
    req
}

/// The domain of every `google.rpc.ErrorInfo` ringkv sends (nodes and routers alike).
pub const ERROR_DOMAIN: &str = "ringkv.io";

/// The caller's deadline from a request's `grpc-timeout` header, if it set one.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    metadata.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout)
}

/// `grpc-timeout` is up to 8 digits followed by a unit letter (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
    }
}
