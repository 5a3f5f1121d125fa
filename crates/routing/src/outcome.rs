//! Whether a failed write may still have taken effect.
//!
//! A caller whose write failed needs one bit to go on: may it send the write again as a new
//! one, or must it first find out whether the old one landed (read back, or keep retrying
//! with the same session)? The answer is "not applied" only when the request certainly
//! changed nothing:
//! - a connection refused while connecting (nothing listened at the node's address, so
//!   nothing was sent);
//! - a refusal before anything was proposed: `NOT_LEADER`, `WRONG_SHARD`, invalid input;
//! - a command rejected when applied, with no effect: a missing or changed topic, a reached
//!   limit, an out-of-order producer sequence;
//! - an explicit `outcome` = `NOT_APPLIED` in the status's ErrorInfo metadata, which the
//!   routing core sets when it gives up after attempts that were all of the kinds above
//!   (`RETRY_BUDGET_EXHAUSTED`, `RETRIES_TIMED_OUT`, see kv.proto).
//!
//! An explicit `outcome` always wins: the routing core (and the producer, across its own
//! retries) marks a refusal that followed an attempt of unknown outcome with `UNKNOWN`
//! ([`mark_unknown`]), keeping the node's code and reason so readers still see, say,
//! `NOT_FOUND`. Everything else is "unknown": a timeout, a lost connection,
//! `OUTCOME_UNKNOWN`, an unavailable shard, and any code this module does not know. Erring
//! that way only costs the caller a read; erring the other way would let it report a write
//! as failed that later shows up, which a linearizability checker (or a user) would rightly
//! call lost-then-found.

use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The `ErrorInfo` metadata key the outcome travels in.
pub const OUTCOME_KEY: &str = "outcome";

/// What a failed call did, as far as anyone can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Certainly not applied: safe to send again as a new write.
    NotApplied,
    /// May or may not have been applied.
    Unknown,
}

impl WriteOutcome {
    /// The value of the `outcome` metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOutcome::NotApplied => "NOT_APPLIED",
            WriteOutcome::Unknown => "UNKNOWN",
        }
    }

    /// The outcome of a failed call that answered with `status`.
    pub fn of(status: &Status) -> WriteOutcome {
        let details = status.get_error_details();
        let info = details.error_info();
        match info.and_then(|i| i.metadata.get(OUTCOME_KEY)).map(String::as_str) {
            Some("NOT_APPLIED") => return WriteOutcome::NotApplied,
            Some(_) => return WriteOutcome::Unknown,
            None => {}
        }
        let refused = match info {
            Some(i) => matches!(
                i.reason.as_str(),
                "NOT_LEADER"
                    | "WRONG_SHARD"
                    | "INVALID_INPUT"
                    | "TOPIC_CHANGED"
                    | "LIMIT_REACHED"
                    | "OVERLOADED"
                    | "OUT_OF_ORDER_SEQUENCE"
                    | "UNAUTHENTICATED"
                    | "PERMISSION_DENIED"
            ),
            // Only a status made here, without details, can be a failed connect.
            None => connection_refused(status),
        };
        if refused || matches!(status.code(), Code::InvalidArgument | Code::NotFound) {
            WriteOutcome::NotApplied
        } else {
            WriteOutcome::Unknown
        }
    }

    /// The outcome of several attempts of the same call: not applied only if none was.
    pub fn and(self, other: WriteOutcome) -> WriteOutcome {
        if self == WriteOutcome::NotApplied && other == WriteOutcome::NotApplied {
            WriteOutcome::NotApplied
        } else {
            WriteOutcome::Unknown
        }
    }
}

/// `status` with `outcome` = `UNKNOWN` added to its ErrorInfo (one is added if it has none),
/// everything else kept: for a refusal that followed an attempt whose outcome is unknown, or
/// a step of a multi-write call that failed after an earlier step was applied.
pub fn mark_unknown(status: Status) -> Status {
    let mut details = status.get_error_details();
    let (reason, domain, mut metadata) = match details.error_info() {
        Some(i) => (i.reason.clone(), i.domain.clone(), i.metadata.clone()),
        None => {
            ("OUTCOME_UNKNOWN".to_string(), ringkv_proto::ERROR_DOMAIN.to_string(), HashMap::new())
        }
    };
    metadata.insert(OUTCOME_KEY.to_string(), WriteOutcome::Unknown.as_str().to_string());
    details.set_error_info(reason, domain, metadata);
    Status::with_error_details(status.code(), status.message(), details)
}

/// Whether `status` is this process's failure to *connect* because nothing listened: the
/// request was never sent. Both must show in the cause chain: hyper's "tcp connect error"
/// (a failed connect, not a broken connection) and an I/O error of kind `ConnectionRefused`.
/// The kind alone is not enough: an established connection that hits an ICMP port
/// unreachable (an iptables REJECT) and then times out reports `ECONNREFUSED` too, after it
/// may have carried the request. If hyper ever words the message differently this answers
/// false, the safe way. (The cause chain exists only where the call was made, so this never
/// matches a status that came over the network.)
fn connection_refused(status: &Status) -> bool {
    let mut connecting = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        connecting |= e.to_string().starts_with("tcp connect error");
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return connecting && io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::ErrorDetails;

    /// A status as a node sends it: code, ErrorInfo reason and metadata.
    pub(crate) fn with_info(code: Code, reason: &str, md: &[(&str, &str)]) -> Status {
        let md: HashMap<String, String> =
            md.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Status::with_error_details(
            code,
            "x",
            ErrorDetails::with_error_info(reason, ringkv_proto::ERROR_DOMAIN, md),
        )
    }

    #[test]
    fn refusals_before_proposing_are_not_applied() {
        for (code, reason) in [
            (Code::FailedPrecondition, "NOT_LEADER"),
            (Code::FailedPrecondition, "WRONG_SHARD"),
            (Code::InvalidArgument, "INVALID_INPUT"),
            (Code::FailedPrecondition, "TOPIC_CHANGED"),
            (Code::ResourceExhausted, "LIMIT_REACHED"),
            (Code::NotFound, "NOT_FOUND"),
            (Code::Unauthenticated, "UNAUTHENTICATED"),
            (Code::PermissionDenied, "PERMISSION_DENIED"),
        ] {
            assert_eq!(WriteOutcome::of(&with_info(code, reason, &[])), WriteOutcome::NotApplied);
        }
    }

    #[test]
    fn anything_that_may_have_reached_a_shard_is_unknown() {
        for status in [
            with_info(Code::Unknown, "OUTCOME_UNKNOWN", &[]),
            with_info(Code::FailedPrecondition, "SESSION_SUPERSEDED", &[]),
            with_info(Code::DeadlineExceeded, "SHARD_UNAVAILABLE", &[]),
            with_info(Code::Unavailable, "SHARD_UNAVAILABLE", &[]),
            // A duplicate sequence was appended before.
            with_info(Code::AlreadyExists, "DUPLICATE_SEQUENCE", &[]),
            with_info(Code::Unavailable, "RETRY_BUDGET_EXHAUSTED", &[("outcome", "UNKNOWN")]),
            Status::unavailable("connection reset"),
            Status::deadline_exceeded("timeout"),
            Status::cancelled("gone"),
        ] {
            assert_eq!(WriteOutcome::of(&status), WriteOutcome::Unknown, "{status:?}");
        }
    }

    #[test]
    fn routing_errors_carry_their_outcome() {
        let s =
            with_info(Code::Unavailable, "RETRY_BUDGET_EXHAUSTED", &[("outcome", "NOT_APPLIED")]);
        assert_eq!(WriteOutcome::of(&s), WriteOutcome::NotApplied);
    }

    /// A real call to a port nothing listens on: refused, so certainly not sent.
    #[tokio::test]
    async fn a_refused_connection_is_not_applied() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let mut kv = ringkv_proto::v1::kv_client::KvClient::new(channel);
        let status = kv.put(ringkv_proto::v1::PutRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(WriteOutcome::of(&status), WriteOutcome::NotApplied, "{status:?}");
    }

    #[test]
    fn a_marked_refusal_is_unknown_but_keeps_its_code_and_reason() {
        let s = mark_unknown(with_info(Code::NotFound, "NOT_FOUND", &[("topic", "t")]));
        assert_eq!(WriteOutcome::of(&s), WriteOutcome::Unknown);
        assert_eq!(s.code(), Code::NotFound);
        let details = s.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "NOT_FOUND");
        assert_eq!(info.metadata.get("topic").map(String::as_str), Some("t"));
        // Without ErrorInfo (a bare status) the mark still reads as unknown.
        assert_eq!(
            WriteOutcome::of(&mark_unknown(Status::invalid_argument("x"))),
            WriteOutcome::Unknown
        );
    }

    #[test]
    fn one_unknown_attempt_makes_the_call_unknown() {
        use WriteOutcome::{NotApplied, Unknown};
        assert_eq!(NotApplied.and(NotApplied), NotApplied);
        assert_eq!(NotApplied.and(Unknown), Unknown);
        assert_eq!(Unknown.and(NotApplied), Unknown);
    }
}
