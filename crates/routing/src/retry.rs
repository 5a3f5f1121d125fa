//! What to do after a failed attempt, and how much retrying is allowed.
//!
//! Only failures that are safe to repeat are retried. Writes always carry a session (see
//! [`crate::lanes`]), which makes "may have been applied" outcomes (timeouts, lost
//! connections, leader changes mid-write) safe too: the shard answers a repeat with the first
//! result. Everything that retrying cannot change (bad input, a failed CAS, a superseded
//! session) goes straight back to the caller.
//!
//! A retry budget keeps retries from multiplying load during an outage: each request adds
//! `retry_ratio` tokens (up to a cap), each retry spends one, and a floor of
//! `retry_min_per_sec` tokens per second keeps a quiet client able to retry at all.

use crate::config::RoutingConfig;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The decision after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The node is not the leader; try the named one (or another replica) at once.
    Redirect(Option<u64>),
    /// The map is stale: refresh it, then retry.
    RefreshMap,
    /// A transient failure of the node or shard: back off and retry.
    Backoff { node_failed: bool },
    /// The node is overloaded and said when to come back: wait that long (not a failure of
    /// the node: it answered, and ejecting it would move its load onto the others).
    RetryAfter(Duration),
    /// Final: return this to the caller.
    Fail,
}

pub fn reason(status: &Status) -> Option<String> {
    status.get_error_details().error_info().map(|i| i.reason.clone())
}

pub fn classify(status: &Status) -> Next {
    let reason = reason(status);
    match (status.code(), reason.as_deref()) {
        (Code::FailedPrecondition, Some("NOT_LEADER")) => {
            let leader = status
                .get_error_details()
                .error_info()
                .and_then(|i| i.metadata.get("leader_id").and_then(|v| v.parse().ok()));
            Next::Redirect(leader)
        }
        (Code::FailedPrecondition, Some("WRONG_SHARD")) => Next::RefreshMap,
        // No ErrorInfo: the transport failed (connection refused or reset), not the shard.
        (Code::Unavailable, None) | (Code::Cancelled, _) => Next::Backoff { node_failed: true },
        // A bound of the cluster (topics, groups): waiting does not free it.
        (Code::ResourceExhausted, Some("LIMIT_REACHED")) => Next::Fail,
        (Code::ResourceExhausted, Some("OVERLOADED")) => Next::RetryAfter(retry_after(status)),
        (Code::Unavailable, Some(_))
        | (Code::DeadlineExceeded, _)
        | (Code::ResourceExhausted, _)
        | (Code::Aborted, _) => Next::Backoff { node_failed: false },
        (Code::Unknown, Some("OUTCOME_UNKNOWN")) => Next::Backoff { node_failed: false },
        // A stream or connection error surfaced as Unknown without ringkv's details.
        (Code::Unknown, None) => Next::Backoff { node_failed: true },
        _ => Next::Fail,
    }
}

/// The delay an `OVERLOADED` refusal asks for, from its `RetryInfo` (a node that sent none
/// gets [`RETRY_AFTER_DEFAULT`]; a huge one is capped at [`RETRY_AFTER_MAX`], since a caller
/// whose deadline is shorter gives up anyway).
pub fn retry_after(status: &Status) -> Duration {
    status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or(RETRY_AFTER_DEFAULT)
        .min(RETRY_AFTER_MAX)
}

/// The wait after an `OVERLOADED` refusal without a `RetryInfo`.
pub const RETRY_AFTER_DEFAULT: Duration = Duration::from_millis(50);
/// The longest wait an `OVERLOADED` refusal can ask for.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);

/// The wait before retrying a node that asked for `delay`: the delay plus up to half of it
/// again at random, so callers refused together do not all come back at the same instant.
pub fn jittered(delay: Duration) -> Duration {
    let extra = u64::try_from(delay.as_micros() / 2).unwrap_or(u64::MAX);
    delay + Duration::from_micros(rand::random_range(0..=extra))
}

/// Whether `status` came from the node itself (an error of ringkv's, with its details), not
/// from a transport that failed to reach it.
pub fn node_answered(status: &Status) -> bool {
    classify(status) != Next::Backoff { node_failed: true }
}

/// A token bucket for retries. It starts full, so a fresh client rides out one election.
#[derive(Debug)]
pub struct RetryBudget {
    state: Mutex<(f64, Instant)>,
    ratio: f64,
    min_per_sec: f64,
}

const BUDGET_CAP: f64 = 100.0;

impl RetryBudget {
    pub fn new(cfg: &RoutingConfig) -> Self {
        RetryBudget {
            state: Mutex::new((BUDGET_CAP / 10.0, Instant::now())),
            ratio: cfg.retry_ratio,
            min_per_sec: cfg.retry_min_per_sec,
        }
    }

    fn refill(&self, s: &mut (f64, Instant)) {
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.min_per_sec).min(BUDGET_CAP);
        s.1 = now;
    }

    pub fn on_request(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut s);
        s.0 = (s.0 + self.ratio).min(BUDGET_CAP);
    }

    /// Takes a token for one retry, if there is one.
    pub fn try_retry(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut s);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Full-jitter exponential backoff: uniform in [0, min(max, base * 2^attempt)].
pub fn backoff(cfg: &RoutingConfig, attempt: u32) -> Duration {
    let ceiling = cfg.backoff_base.saturating_mul(1u32 << attempt.min(16)).min(cfg.backoff_max);
    let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rand::random_range(0..=micros))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::tests::with_info as with_reason;

    #[test]
    fn only_safe_failures_are_retried() {
        assert_eq!(
            classify(&with_reason(Code::FailedPrecondition, "NOT_LEADER", &[("leader_id", "3")])),
            Next::Redirect(Some(3))
        );
        assert_eq!(
            classify(&with_reason(Code::FailedPrecondition, "NOT_LEADER", &[])),
            Next::Redirect(None)
        );
        assert_eq!(
            classify(&with_reason(Code::FailedPrecondition, "WRONG_SHARD", &[])),
            Next::RefreshMap
        );
        assert_eq!(
            classify(&Status::unavailable("connection refused")),
            Next::Backoff { node_failed: true }
        );
        assert_eq!(
            classify(&with_reason(Code::Unknown, "OUTCOME_UNKNOWN", &[])),
            Next::Backoff { node_failed: false }
        );
        assert_eq!(classify(&with_reason(Code::InvalidArgument, "INVALID_INPUT", &[])), Next::Fail);
        assert_eq!(
            classify(&with_reason(Code::FailedPrecondition, "SESSION_SUPERSEDED", &[])),
            Next::Fail
        );
        assert_eq!(classify(&with_reason(Code::DataLoss, "SHARD_CORRUPTED", &[])), Next::Fail);
        assert_eq!(
            classify(&with_reason(Code::ResourceExhausted, "LIMIT_REACHED", &[])),
            Next::Fail
        );
        // Every node judges a credential the same: another attempt would be refused too.
        assert_eq!(
            classify(&with_reason(Code::Unauthenticated, "UNAUTHENTICATED", &[])),
            Next::Fail
        );
        assert_eq!(
            classify(&with_reason(Code::PermissionDenied, "PERMISSION_DENIED", &[])),
            Next::Fail
        );
    }

    #[test]
    fn an_overloaded_node_is_waited_for_as_long_as_it_asks_and_is_not_a_failure() {
        use std::collections::HashMap;
        use tonic_types::ErrorDetails;
        let overloaded = |delay: Option<Duration>| {
            let mut d = ErrorDetails::with_error_info(
                "OVERLOADED",
                ringkv_proto::ERROR_DOMAIN,
                HashMap::from([("limit_kind".to_string(), "requests".to_string())]),
            );
            if let Some(delay) = delay {
                d.set_retry_info(Some(delay));
            }
            Status::with_error_details(Code::ResourceExhausted, "busy", d)
        };
        let s = overloaded(Some(Duration::from_millis(80)));
        assert_eq!(classify(&s), Next::RetryAfter(Duration::from_millis(80)));
        assert!(node_answered(&s), "a busy node answered: no ejection");
        assert_eq!(classify(&overloaded(None)), Next::RetryAfter(RETRY_AFTER_DEFAULT));
        assert_eq!(
            classify(&overloaded(Some(Duration::from_secs(3600)))),
            Next::RetryAfter(RETRY_AFTER_MAX)
        );
        for _ in 0..100 {
            let j = jittered(Duration::from_millis(80));
            assert!(j >= Duration::from_millis(80) && j <= Duration::from_millis(120), "{j:?}");
        }
    }

    #[test]
    fn only_transport_failures_count_as_no_answer() {
        assert!(!node_answered(&Status::unavailable("tcp connect error")));
        assert!(!node_answered(&Status::cancelled("connection reset")));
        assert!(!node_answered(&Status::unknown("h2 protocol error")));
        assert!(node_answered(&with_reason(Code::FailedPrecondition, "NOT_LEADER", &[])));
        assert!(node_answered(&with_reason(Code::Unavailable, "SHARD_UNAVAILABLE", &[])));
        assert!(node_answered(&with_reason(Code::DeadlineExceeded, "SHARD_UNAVAILABLE", &[])));
    }

    #[test]
    fn budget_limits_retries_to_a_fraction_of_requests() {
        let cfg =
            RoutingConfig { retry_ratio: 0.1, retry_min_per_sec: 0.0, ..RoutingConfig::default() };
        let b = RetryBudget::new(&cfg);
        while b.try_retry() {}
        for _ in 0..100 {
            b.on_request();
        }
        let allowed = (0..100).filter(|_| b.try_retry()).count();
        assert!((9..=10).contains(&allowed), "{allowed} retries after 100 requests at ratio 0.1");
    }

    #[test]
    fn backoff_is_bounded() {
        let cfg = RoutingConfig::default();
        for attempt in 0..40 {
            assert!(backoff(&cfg, attempt) <= cfg.backoff_max);
        }
    }
}
