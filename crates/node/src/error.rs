//! The node's errors, and the one table that maps them to gRPC statuses.
//!
//! Every variant carries what a client needs to recover, and [`NodeError::to_status`] puts it
//! in the status details as a `google.rpc.ErrorInfo` (reason + metadata), so clients match on
//! data, not on message strings. The reasons are the names of `ringkv.v1.ErrorReason`.
//!
//! | error               | gRPC code             | what the client should do                       |
//! |---------------------|-----------------------|-------------------------------------------------|
//! | InvalidArgument     | INVALID_ARGUMENT      | fix the request                                  |
//! | NotLeader           | FAILED_PRECONDITION   | retry at `leader_addr` (nothing was applied)     |
//! | WrongShard          | FAILED_PRECONDITION   | refresh the shard map (`epoch`), re-route        |
//! | OutcomeUnknown      | UNKNOWN               | read back, or retry only if idempotent          |
//! | SessionSuperseded   | FAILED_PRECONDITION   | read back; the write may have been applied       |
//! | ShardUnavailable    | UNAVAILABLE           | retry later / elsewhere                          |
//! | QuorumUnavailable   | UNAVAILABLE           | retry later (no quorum confirmed leadership)     |
//! | Timeout             | DEADLINE_EXCEEDED     | retry; a timed-out write may have been applied   |
//! | Corrupted           | DATA_LOSS             | page an operator; read from another replica      |
//! | Internal            | INTERNAL              | report a bug                                     |
//! | NotFound            | NOT_FOUND             | create the topic / check the name                |
//! | AlreadyExists       | ALREADY_EXISTS        | use the existing topic or another name           |
//! | OffsetOutOfRange    | OUT_OF_RANGE          | resume from `earliest_offset`                    |
//! | Compacted           | OUT_OF_RANGE          | re-read state, watch from `compact_revision`     |
//! | OutOfOrderSequence  | FAILED_PRECONDITION   | resend from `expected_sequence` (or new producer)|
//! | DuplicateSequence   | ALREADY_EXISTS        | nothing: the batch was appended before           |
//! | TopicChanged        | FAILED_PRECONDITION   | look the topic up again                          |
//! | LimitReached        | RESOURCE_EXHAUSTED    | free something up; retrying will not help        |
//! | Overloaded          | RESOURCE_EXHAUSTED    | retry after the RetryInfo delay (node is busy)   |
//! | WrongCluster        | FAILED_PRECONDITION   | fix the configuration: another cluster's node    |
//! | Refused             | FAILED_PRECONDITION   | a membership change would be unsafe; read why    |
//! | Unauthenticated     | UNAUTHENTICATED       | present the credential named in `needs`          |

use ringkv_placement::cluster::shard_name;
use ringkv_placement::{NodeId, ShardId};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use ringkv_proto::ERROR_DOMAIN;

/// A failed read or write of a shard's data on this node: `Corrupted` (DATA_LOSS) when the
/// storage layer found damaged data, `ShardUnavailable` otherwise (the disk, not the request
/// and not a bug: another replica may serve it). Decided by the error's kind, not its text.
pub fn storage(shard: ShardId) -> impl FnOnce(std::io::Error) -> NodeError {
    move |e| match ringkv_storage::FaultKind::of(&e) {
        ringkv_storage::FaultKind::Corrupt => NodeError::Corrupted { shard, reason: e.to_string() },
        ringkv_storage::FaultKind::Other => {
            NodeError::ShardUnavailable { shard, reason: format!("reading its data failed: {e}") }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String, limit: Option<u64> },
    #[error("node is not the leader of shard {}{}", shard_name(*.shard), leader_hint(.leader))]
    NotLeader { shard: ShardId, leader: Option<(NodeId, String)> },
    #[error("this node holds no replica of shard {shard} (shard map epoch {epoch})")]
    WrongShard { shard: ShardId, epoch: u64 },
    #[error(
        "leadership of shard {shard} changed before the write's outcome was known; it may or may not have been applied"
    )]
    OutcomeUnknown { shard: ShardId },
    #[error(
        "shard {shard} already applied a later write (sequence {last_seq}) of this session; this write's outcome is no longer known"
    )]
    SessionSuperseded { shard: ShardId, last_seq: u64 },
    #[error("shard {} is unavailable: {reason}", shard_name(*.shard))]
    ShardUnavailable { shard: ShardId, reason: String },
    #[error("shard {} could not confirm leadership with a quorum: {reason}", shard_name(*.shard))]
    QuorumUnavailable { shard: ShardId, reason: String },
    #[error("shard {}: {what} did not finish within {waited_ms} ms", shard_name(*.shard))]
    Timeout { shard: ShardId, what: &'static str, waited_ms: u64 },
    #[error("shard {shard} stopped serving after finding corrupt data: {reason}")]
    Corrupted { shard: ShardId, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{what} not found")]
    NotFound { what: String, topic: String, partition: Option<u32> },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error(
        "offset {offset} of {topic}/{partition} is out of range: the partition keeps offsets {earliest_offset} to {end_offset} (end exclusive)"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        offset: u64,
        earliest_offset: u64,
        end_offset: u64,
    },
    #[error(
        "revision {revision} of shard {shard} is compacted; the oldest revision kept is {compact_revision}"
    )]
    Compacted { shard: ShardId, revision: u64, compact_revision: u64 },
    #[error("producer {producer} sent sequence {got}, expected {expected}")]
    OutOfOrderSequence { producer: u64, expected: u64, got: u64 },
    #[error(
        "producer {producer} resent sequence {got}, older than its last batch (up to {last_seq}): it was appended before, at offsets no longer remembered"
    )]
    DuplicateSequence { producer: u64, got: u64, last_seq: u64 },
    #[error("topic {topic} changed: {detail}")]
    TopicChanged { topic: String, detail: String },
    #[error("limit of {limit} {what} reached")]
    LimitReached { what: &'static str, limit: u64 },
    #[error("this node belongs to cluster {expected:#x}; the request came from cluster {got:#x}")]
    WrongCluster { expected: u64, got: u64 },
    #[error("refused, nothing changed: {reason}")]
    Refused { reason: String },
    #[error(
        "node overloaded: {max} {} in flight already; nothing was done, retry in {retry_after_ms} ms",
        .limit.as_str()
    )]
    Overloaded { limit: crate::admission::Limit, max: u64, retry_after_ms: u64 },
    #[error("the {service} service is only for this cluster's nodes: {needs}")]
    Unauthenticated { service: &'static str, needs: &'static str },
}

fn leader_hint(leader: &Option<(NodeId, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("; the leader is node {id} at {addr}"),
        None => "; the leader is not known yet".to_string(),
    }
}

impl NodeError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        NodeError::InvalidArgument { field, reason: reason.into(), limit: None }
    }

    pub fn too_large(field: &'static str, got: usize, limit: usize) -> Self {
        NodeError::InvalidArgument {
            field,
            reason: format!("{got} bytes exceeds the limit of {limit} bytes"),
            limit: Some(limit as u64),
        }
    }

    /// The reason (an `ErrorReason` name), the code and the metadata of this error.
    fn parts(&self) -> (Code, &'static str, HashMap<String, String>) {
        let mut md = HashMap::new();
        let code_reason = match self {
            NodeError::InvalidArgument { field, limit, .. } => {
                md.insert("field".into(), (*field).to_string());
                if let Some(l) = limit {
                    md.insert("limit".into(), l.to_string());
                }
                (Code::InvalidArgument, "INVALID_INPUT")
            }
            NodeError::NotLeader { shard, leader } => {
                md.insert("shard_id".into(), shard.to_string());
                if let Some((id, addr)) = leader {
                    md.insert("leader_id".into(), id.to_string());
                    md.insert("leader_addr".into(), addr.clone());
                }
                (Code::FailedPrecondition, "NOT_LEADER")
            }
            NodeError::WrongShard { shard, epoch } => {
                md.insert("shard_id".into(), shard.to_string());
                md.insert("epoch".into(), epoch.to_string());
                (Code::FailedPrecondition, "WRONG_SHARD")
            }
            NodeError::OutcomeUnknown { shard } => {
                md.insert("shard_id".into(), shard.to_string());
                (Code::Unknown, "OUTCOME_UNKNOWN")
            }
            NodeError::SessionSuperseded { shard, last_seq } => {
                md.insert("shard_id".into(), shard.to_string());
                md.insert("last_seq".into(), last_seq.to_string());
                (Code::FailedPrecondition, "SESSION_SUPERSEDED")
            }
            NodeError::ShardUnavailable { shard, .. }
            | NodeError::QuorumUnavailable { shard, .. } => {
                md.insert("shard_id".into(), shard.to_string());
                (Code::Unavailable, "SHARD_UNAVAILABLE")
            }
            NodeError::Timeout { shard, .. } => {
                md.insert("shard_id".into(), shard.to_string());
                (Code::DeadlineExceeded, "SHARD_UNAVAILABLE")
            }
            NodeError::Corrupted { shard, .. } => {
                md.insert("shard_id".into(), shard.to_string());
                (Code::DataLoss, "SHARD_CORRUPTED")
            }
            NodeError::Internal(_) => (Code::Internal, "INTERNAL"),
            NodeError::NotFound { topic, partition, .. } => {
                md.insert("topic".into(), topic.clone());
                if let Some(p) = partition {
                    md.insert("partition".into(), p.to_string());
                }
                (Code::NotFound, "NOT_FOUND")
            }
            NodeError::AlreadyExists { .. } => (Code::AlreadyExists, "ALREADY_EXISTS"),
            NodeError::OffsetOutOfRange { earliest_offset, end_offset, .. } => {
                md.insert("earliest_offset".into(), earliest_offset.to_string());
                md.insert("end_offset".into(), end_offset.to_string());
                (Code::OutOfRange, "OFFSET_OUT_OF_RANGE")
            }
            NodeError::Compacted { shard, compact_revision, .. } => {
                md.insert("shard_id".into(), shard.to_string());
                md.insert("compact_revision".into(), compact_revision.to_string());
                (Code::OutOfRange, "COMPACTED")
            }
            NodeError::OutOfOrderSequence { expected, .. } => {
                md.insert("expected_sequence".into(), expected.to_string());
                (Code::FailedPrecondition, "OUT_OF_ORDER_SEQUENCE")
            }
            NodeError::DuplicateSequence { last_seq, .. } => {
                md.insert("last_sequence".into(), last_seq.to_string());
                (Code::AlreadyExists, "DUPLICATE_SEQUENCE")
            }
            NodeError::TopicChanged { topic, .. } => {
                md.insert("topic".into(), topic.clone());
                (Code::FailedPrecondition, "TOPIC_CHANGED")
            }
            NodeError::LimitReached { limit, .. } => {
                md.insert("limit".into(), limit.to_string());
                (Code::ResourceExhausted, "LIMIT_REACHED")
            }
            NodeError::WrongCluster { expected, got } => {
                md.insert("expected".into(), expected.to_string());
                md.insert("got".into(), got.to_string());
                (Code::FailedPrecondition, "WRONG_CLUSTER")
            }
            NodeError::Refused { .. } => (Code::FailedPrecondition, "MEMBERSHIP_REFUSED"),
            NodeError::Overloaded { limit, max, .. } => {
                md.insert("limit_kind".into(), limit.as_str().into());
                md.insert("limit".into(), max.to_string());
                (Code::ResourceExhausted, "OVERLOADED")
            }
            NodeError::Unauthenticated { service, needs } => {
                md.insert("service".into(), (*service).into());
                md.insert("needs".into(), (*needs).into());
                (Code::Unauthenticated, "UNAUTHENTICATED")
            }
        };
        (code_reason.0, code_reason.1, md)
    }

    /// The gRPC status for this error, with an ErrorInfo (and, for bad input, a BadRequest
    /// field violation) in its details.
    pub fn to_status(&self) -> Status {
        let (code, reason, metadata) = self.parts();
        let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
        if let NodeError::InvalidArgument { field, reason, .. } = self {
            details.add_bad_request_violation(*field, reason.clone());
        }
        if let NodeError::Overloaded { retry_after_ms, .. } = self {
            details.set_retry_info(Some(std::time::Duration::from_millis(*retry_after_ms)));
        }
        Status::with_error_details(code, self.to_string(), details)
    }
}

/// The ErrorInfo of a status, if it carries ringkv's.
fn error_info(status: &Status) -> Option<tonic_types::ErrorInfo> {
    status.get_error_details().error_info().cloned()
}

/// The `leader_addr` of a NOT_LEADER status.
pub fn leader_addr_hint(status: &Status) -> Option<String> {
    let info = error_info(status).filter(|i| i.reason == "NOT_LEADER")?;
    info.metadata.get("leader_addr").cloned().filter(|a| !a.is_empty())
}

/// The `leader_id` of a NOT_LEADER status.
pub fn leader_id_hint(status: &Status) -> Option<NodeId> {
    let info = error_info(status).filter(|i| i.reason == "NOT_LEADER")?;
    info.metadata.get("leader_id")?.parse().ok()
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(status: &Status) -> (String, HashMap<String, String>) {
        let d = status.get_error_details();
        let i = d.error_info().expect("every ringkv error carries an ErrorInfo");
        assert_eq!(i.domain, ERROR_DOMAIN);
        (i.reason.clone(), i.metadata.clone())
    }

    #[test]
    fn not_leader_names_the_leader_in_details() {
        let s = NodeError::NotLeader { shard: 3, leader: Some((2, "10.0.0.2:7000".into())) }
            .to_status();
        assert_eq!(s.code(), Code::FailedPrecondition);
        let (reason, md) = info(&s);
        assert_eq!(reason, "NOT_LEADER");
        assert_eq!(md["leader_id"], "2");
        assert_eq!(md["leader_addr"], "10.0.0.2:7000");
        assert_eq!(md["shard_id"], "3");
        let unknown = NodeError::NotLeader { shard: 3, leader: None }.to_status();
        assert!(!info(&unknown).1.contains_key("leader_id"));
    }

    #[test]
    fn the_meta_group_is_named_and_hints_are_read_back() {
        let meta = ringkv_placement::cluster::META_SHARD;
        let s =
            NodeError::NotLeader { shard: meta, leader: Some((4, "h4:7001".into())) }.to_status();
        assert!(s.message().contains("shard meta"), "{}", s.message());
        assert_eq!(leader_addr_hint(&s).as_deref(), Some("h4:7001"));
        assert_eq!(leader_id_hint(&s), Some(4));
        let other = NodeError::ShardUnavailable { shard: meta, reason: "x".into() }.to_status();
        assert_eq!(leader_addr_hint(&other), None);
        assert!(other.message().contains("shard meta is unavailable"));
    }

    #[test]
    fn storage_failures_are_data_loss_only_when_the_data_is_corrupt() {
        use std::io;
        let corrupt = storage(3)(io::Error::new(io::ErrorKind::InvalidData, "crc mismatch"));
        assert_eq!(corrupt.to_status().code(), Code::DataLoss);
        assert!(matches!(corrupt, NodeError::Corrupted { shard: 3, .. }));
        // An I/O failure is the disk, not a bug: UNAVAILABLE, so the client may go elsewhere,
        // even when its message mentions corruption.
        let disk = storage(3)(io::Error::other("No space left on device (not corrupt)"));
        let s = disk.to_status();
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        assert!(s.message().contains("reading its data failed"), "{}", s.message());
    }

    #[test]
    fn every_variant_maps_to_its_code_and_reason() {
        let cases = [
            (NodeError::too_large("value", 10, 5), Code::InvalidArgument, "INVALID_INPUT"),
            (NodeError::WrongShard { shard: 1, epoch: 7 }, Code::FailedPrecondition, "WRONG_SHARD"),
            (NodeError::OutcomeUnknown { shard: 1 }, Code::Unknown, "OUTCOME_UNKNOWN"),
            (
                NodeError::SessionSuperseded { shard: 1, last_seq: 9 },
                Code::FailedPrecondition,
                "SESSION_SUPERSEDED",
            ),
            (
                NodeError::ShardUnavailable { shard: 1, reason: "x".into() },
                Code::Unavailable,
                "SHARD_UNAVAILABLE",
            ),
            (
                NodeError::QuorumUnavailable { shard: 1, reason: "x".into() },
                Code::Unavailable,
                "SHARD_UNAVAILABLE",
            ),
            (
                NodeError::Corrupted { shard: 1, reason: "crc".into() },
                Code::DataLoss,
                "SHARD_CORRUPTED",
            ),
            (
                NodeError::Timeout { shard: 1, what: "write", waited_ms: 5 },
                Code::DeadlineExceeded,
                "SHARD_UNAVAILABLE",
            ),
            (NodeError::Internal("bug".into()), Code::Internal, "INTERNAL"),
            (
                NodeError::WrongCluster { expected: 1, got: 2 },
                Code::FailedPrecondition,
                "WRONG_CLUSTER",
            ),
            (
                NodeError::Refused { reason: "too few nodes".into() },
                Code::FailedPrecondition,
                "MEMBERSHIP_REFUSED",
            ),
            (
                NodeError::Overloaded {
                    limit: crate::admission::Limit::Bytes,
                    max: 1,
                    retry_after_ms: 5,
                },
                Code::ResourceExhausted,
                "OVERLOADED",
            ),
            (
                NodeError::Unauthenticated { service: "Raft", needs: "a node certificate" },
                Code::Unauthenticated,
                "UNAUTHENTICATED",
            ),
            (
                NodeError::OffsetOutOfRange {
                    topic: "t".into(),
                    partition: 0,
                    offset: 1,
                    earliest_offset: 5,
                    end_offset: 9,
                },
                Code::OutOfRange,
                "OFFSET_OUT_OF_RANGE",
            ),
            (
                NodeError::Compacted { shard: 1, revision: 3, compact_revision: 10 },
                Code::OutOfRange,
                "COMPACTED",
            ),
            (
                NodeError::OutOfOrderSequence { producer: 1, expected: 4, got: 9 },
                Code::FailedPrecondition,
                "OUT_OF_ORDER_SEQUENCE",
            ),
            (
                NodeError::LimitReached { what: "topics", limit: 10 },
                Code::ResourceExhausted,
                "LIMIT_REACHED",
            ),
        ];
        for (err, code, reason) in cases {
            let s = err.to_status();
            assert_eq!(s.code(), code, "{err}");
            assert_eq!(info(&s).0, reason, "{err}");
        }
    }

    #[test]
    fn invalid_argument_has_field_limit_and_violation() {
        let s = NodeError::too_large("key", 5000, 4096).to_status();
        let (_, md) = info(&s);
        assert_eq!(md["field"], "key");
        assert_eq!(md["limit"], "4096");
        let d = s.get_error_details();
        let v = &d.bad_request().expect("bad request details").field_violations[0];
        assert_eq!(v.field, "key");
        assert!(
            v.description.contains("5000 bytes exceeds the limit of 4096"),
            "{}",
            v.description
        );
        assert!(s.message().contains("invalid key"));
    }
}
