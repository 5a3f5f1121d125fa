//! Errors of the routing core. A node's own error (with its status details) is passed through
//! unchanged; the routing core adds only what it decides itself.
//!
//! | error           | gRPC code         | ErrorInfo reason         | metadata              |
//! |-----------------|-------------------|--------------------------|-----------------------|
//! | Node            | the node's        | the node's               | the node's            |
//! | NoMap           | UNAVAILABLE       | (none)                   |                       |
//! | Deadline        | DEADLINE_EXCEEDED | RETRIES_TIMED_OUT        | attempts, outcome     |
//! | BudgetExhausted | UNAVAILABLE       | RETRY_BUDGET_EXHAUSTED   | attempts, outcome     |
//! | InvalidArgument | INVALID_ARGUMENT  | INVALID_INPUT            |                       |
//! | Overloaded      | RESOURCE_EXHAUSTED| OVERLOADED (+ RetryInfo) | limit_kind, limit     |
//!
//! `outcome` tells a writer whether its write may have been applied ([`WriteOutcome`]). A node's
//! refusal that followed an attempt of unknown outcome is passed through with `outcome` =
//! `UNKNOWN` added ([`crate::outcome::mark_unknown`]), so it never reads as "not applied".

use crate::outcome::{OUTCOME_KEY, WriteOutcome};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// A node's answer that retrying cannot change (bad input, a failed precondition...), or
    /// the last answer when retries ran out.
    #[error("{0}")]
    Node(Status),
    #[error("no seed node answered with a shard map: {0}")]
    NoMap(String),
    #[error("deadline of {deadline_ms} ms exceeded after {attempts} attempts; last error: {last}")]
    Deadline { deadline_ms: u64, attempts: u32, last: String, outcome: WriteOutcome },
    #[error("retry budget exhausted after {attempts} attempts; last error: {last}")]
    BudgetExhausted { attempts: u32, last: String, outcome: WriteOutcome },
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The router's own admission limit (its requests in flight, or this caller's rate):
    /// nothing was sent to the cluster.
    #[error(
        "router overloaded: {limit_kind} limit of {limit} reached; nothing was done, retry in {} ms",
        .retry_after.as_millis()
    )]
    Overloaded { limit_kind: &'static str, limit: u64, retry_after: std::time::Duration },
}

fn with_info(code: Code, message: String, reason: &str, md: &[(&str, String)]) -> Status {
    let md: HashMap<String, String> = md.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ringkv_proto::ERROR_DOMAIN, md),
    )
}

impl RoutingError {
    /// The same error, saying the write may have been applied: for a call of several writes
    /// that failed after an earlier one took effect.
    pub fn outcome_unknown(self) -> RoutingError {
        match self {
            RoutingError::Deadline { deadline_ms, attempts, last, .. } => RoutingError::Deadline {
                deadline_ms,
                attempts,
                last,
                outcome: WriteOutcome::Unknown,
            },
            RoutingError::BudgetExhausted { attempts, last, .. } => {
                RoutingError::BudgetExhausted { attempts, last, outcome: WriteOutcome::Unknown }
            }
            other => RoutingError::Node(crate::outcome::mark_unknown(other.to_status())),
        }
    }

    /// The status to return to a caller of the router.
    pub fn to_status(&self) -> Status {
        let message = self.to_string();
        match self {
            RoutingError::Node(s) => s.clone(),
            RoutingError::NoMap(_) => Status::unavailable(message),
            RoutingError::Deadline { attempts, outcome, .. } => with_info(
                Code::DeadlineExceeded,
                message,
                "RETRIES_TIMED_OUT",
                &[("attempts", attempts.to_string()), (OUTCOME_KEY, outcome.as_str().into())],
            ),
            RoutingError::BudgetExhausted { attempts, outcome, .. } => with_info(
                Code::Unavailable,
                message,
                "RETRY_BUDGET_EXHAUSTED",
                &[("attempts", attempts.to_string()), (OUTCOME_KEY, outcome.as_str().into())],
            ),
            RoutingError::InvalidArgument(_) => {
                with_info(Code::InvalidArgument, message, "INVALID_INPUT", &[])
            }
            RoutingError::Overloaded { limit_kind, limit, retry_after } => {
                let md = HashMap::from([
                    ("limit_kind".to_string(), limit_kind.to_string()),
                    ("limit".to_string(), limit.to_string()),
                ]);
                let mut details =
                    ErrorDetails::with_error_info("OVERLOADED", ringkv_proto::ERROR_DOMAIN, md);
                details.set_retry_info(Some(*retry_after));
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
        }
    }
}

impl From<RoutingError> for Status {
    fn from(e: RoutingError) -> Status {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_says_what_its_error_says() {
        use WriteOutcome::{NotApplied, Unknown};
        let cases = [
            (
                RoutingError::BudgetExhausted {
                    attempts: 4,
                    last: "x".into(),
                    outcome: NotApplied,
                },
                NotApplied,
            ),
            (
                RoutingError::Deadline {
                    deadline_ms: 10,
                    attempts: 2,
                    last: "x".into(),
                    outcome: Unknown,
                },
                Unknown,
            ),
            (RoutingError::InvalidArgument("key is empty".into()), NotApplied),
            (
                RoutingError::Overloaded {
                    limit_kind: "rate",
                    limit: 100,
                    retry_after: std::time::Duration::from_millis(20),
                },
                NotApplied,
            ),
            // No seed answered: the status has no details, so it reads as unknown (safe).
            (RoutingError::NoMap("refused".into()), Unknown),
        ];
        for (e, want) in cases {
            // The outcome survives the trip through a status (router -> client).
            assert_eq!(WriteOutcome::of(&e.to_status()), want, "{e}");
        }
    }

    #[test]
    fn a_later_step_of_a_multi_write_call_fails_as_unknown() {
        let refused = RoutingError::Node(Status::not_found("no such partition"));
        assert_eq!(WriteOutcome::of(&refused.to_status()), WriteOutcome::NotApplied);
        for e in [
            refused,
            RoutingError::BudgetExhausted {
                attempts: 4,
                last: "x".into(),
                outcome: WriteOutcome::NotApplied,
            },
            RoutingError::InvalidArgument("x".into()),
        ] {
            let marked = e.outcome_unknown();
            assert_eq!(WriteOutcome::of(&marked.to_status()), WriteOutcome::Unknown, "{marked}");
        }
    }

    #[test]
    fn exhausted_retries_keep_the_retry_rule() {
        use crate::retry::{Next, classify};
        let e = RoutingError::BudgetExhausted {
            attempts: 4,
            last: "x".into(),
            outcome: WriteOutcome::Unknown,
        };
        // A router's "no more retries" is not a sign that the router itself failed.
        assert_eq!(classify(&e.to_status()), Next::Backoff { node_failed: false });
    }
}
