//! Admission control: a node takes on only as much client work as it has said it can hold,
//! and turns the rest away at once with a clear error.
//!
//! Without it, an overloaded node queues: every request waits behind the ones before it,
//! latency grows until callers time out and retry, and the retries add to the queue. Shedding
//! at the door keeps the admitted requests fast and tells the others, in so many words, to
//! come back later: `RESOURCE_EXHAUSTED` with reason `OVERLOADED`, the limit that was hit, and
//! a `RetryInfo` delay in the status details. The routing core waits that long before it
//! tries again (within the caller's deadline and retry budget) and never counts the answer
//! as a node failure: the node answered, it is only busy.
//!
//! Two limits, both per node and both checked without waiting:
//! - requests in flight (`--inflight-requests-max`): the work a node holds at once, and with
//!   it the queueing delay of the last one admitted;
//! - request bytes in flight (`--inflight-bytes-max`): the memory held by requests being
//!   served, so a burst of large batches cannot take more than this however few they are.
//!   A request larger than the whole limit is charged the whole limit (it runs alone) rather
//!   than refused forever; each message is bounded by the gRPC size limit anyway.
//!
//! Only the client services (`KV`, `Streams`) pass through here. Raft traffic, health checks
//! and admin calls do not: a node shedding client load must keep its groups' heartbeats,
//! its probes and its operator's leader transfers going, or overload would turn into
//! elections, restarts and an operator locked out. A subscription or watch holds its admission
//! only while it is being set up; open streams are bounded by their own limit.

use crate::error::NodeError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests in flight on a node by default. A node on 2 cores serves ~10k requests/s at a
/// few ms each, so a few hundred in flight already means tens of ms of queueing; 1,024 leaves
/// room for bursts and for bigger machines while still bounding the queue.
pub const INFLIGHT_REQUESTS_MAX_DEFAULT: u32 = 1024;
/// Request bytes in flight on a node by default: 128 MiB, next to the ~256 MiB a node with
/// 1,024 idle shards needs, so overload cannot multiply a node's memory.
pub const INFLIGHT_BYTES_MAX_DEFAULT: u64 = 128 << 20;
/// The retry delay suggested to a refused caller: about the time a node at its limit needs
/// to finish a good part of what it holds (requests take a few ms; batches tens).
pub const RETRY_AFTER_DEFAULT: Duration = Duration::from_millis(50);

/// Which limit refused a request (a metric label and the error's `limit_kind`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Bytes,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
            Limit::Bytes => "bytes",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

/// A node's admission limits and what they hold now.
#[derive(Clone, Debug)]
pub struct Admission {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    requests_max: u32,
    /// In permits of [`BYTE_UNIT`] bytes (a semaphore counts in u32 at a time).
    byte_units_max: u32,
    retry_after: Duration,
    rejected: Family<LimitLabel, Counter>,
    inflight_requests: Gauge,
    inflight_bytes: Gauge,
}

/// Bytes are counted in KiB: a u32 of permits then covers 4 TiB, and a small request still
/// costs one unit, which is about its real cost in buffers.
const BYTE_UNIT: u64 = 1024;

/// What an admitted request holds until it is answered.
#[derive(Debug)]
pub struct Admitted {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    gauges: (Gauge, Gauge, i64),
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gauges.0.dec();
        self.gauges.1.dec_by(self.gauges.2);
    }
}

impl Admission {
    /// Limits of `requests_max` requests and `bytes_max` request bytes in flight (both at
    /// least 1; 0 would refuse everything, which is not a limit but an outage).
    pub fn new(requests_max: u32, bytes_max: u64, retry_after: Duration) -> Self {
        let requests_max = requests_max.max(1);
        let byte_units_max =
            u32::try_from(bytes_max.div_ceil(BYTE_UNIT).max(1)).unwrap_or(u32::MAX);
        Admission {
            requests: Arc::new(Semaphore::new(requests_max as usize)),
            bytes: Arc::new(Semaphore::new(byte_units_max as usize)),
            requests_max,
            byte_units_max,
            retry_after,
            rejected: Family::default(),
            inflight_requests: Gauge::default(),
            inflight_bytes: Gauge::default(),
        }
    }

    pub fn register(&self, reg: &mut Registry) {
        // Both series from the start, at 0: an alert's rate() needs them before the first
        // refusal.
        for limit in [Limit::Requests, Limit::Bytes] {
            let _ = self.rejected.get_or_create(&LimitLabel { limit: limit.as_str() });
        }
        let r = reg.sub_registry_with_prefix("ringkv");
        r.register(
            "admission_rejected",
            "Client requests refused with RESOURCE_EXHAUSTED (OVERLOADED), by the limit hit",
            self.rejected.clone(),
        );
        r.register(
            "admission_inflight_requests",
            "Client requests being served (bounded by --inflight-requests-max)",
            self.inflight_requests.clone(),
        );
        r.register(
            "admission_inflight_bytes",
            "Bytes of client requests being served (bounded by --inflight-bytes-max)",
            self.inflight_bytes.clone(),
        );
    }

    /// Admits a request of `request_bytes`, or refuses it at once if either limit is full.
    pub fn admit(&self, request_bytes: usize) -> Result<Admitted, NodeError> {
        let Ok(request) = self.requests.clone().try_acquire_owned() else {
            return Err(self.refuse(Limit::Requests, u64::from(self.requests_max)));
        };
        let units = u64::try_from(request_bytes).unwrap_or(u64::MAX).div_ceil(BYTE_UNIT).max(1);
        let units = u32::try_from(units).unwrap_or(u32::MAX).min(self.byte_units_max);
        let Ok(bytes) = self.bytes.clone().try_acquire_many_owned(units) else {
            return Err(self.refuse(Limit::Bytes, u64::from(self.byte_units_max) * BYTE_UNIT));
        };
        let charged = i64::from(units) * BYTE_UNIT as i64;
        self.inflight_requests.inc();
        self.inflight_bytes.inc_by(charged);
        Ok(Admitted {
            _request: request,
            _bytes: bytes,
            gauges: (self.inflight_requests.clone(), self.inflight_bytes.clone(), charged),
        })
    }

    fn refuse(&self, limit: Limit, max: u64) -> NodeError {
        self.rejected.get_or_create(&LimitLabel { limit: limit.as_str() }).inc();
        NodeError::Overloaded {
            limit,
            max,
            retry_after_ms: u64::try_from(self.retry_after.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_beyond_the_limit_are_refused_until_one_finishes() {
        let a = Admission::new(2, 1 << 20, RETRY_AFTER_DEFAULT);
        let first = a.admit(10).expect("first");
        let _second = a.admit(10).expect("second");
        let refused = a.admit(10).expect_err("a third is over the limit");
        assert!(
            matches!(refused, NodeError::Overloaded { limit: Limit::Requests, max: 2, .. }),
            "{refused:?}"
        );
        drop(first);
        a.admit(10).expect("a finished request frees its place");
    }

    #[test]
    fn bytes_are_bounded_and_an_oversized_request_runs_alone() {
        let a = Admission::new(100, 64 * 1024, RETRY_AFTER_DEFAULT);
        let big = a.admit(48 * 1024).expect("48 KiB of 64");
        let e = a.admit(32 * 1024).expect_err("48 + 32 KiB is over 64");
        assert!(matches!(e, NodeError::Overloaded { limit: Limit::Bytes, .. }), "{e:?}");
        let _small = a.admit(100).expect("a small one fits beside");
        drop(big);
        drop(_small);
        // Larger than the whole limit: charged the whole limit, so it is admitted when the
        // node is otherwise idle, and nothing else is while it runs.
        let huge = a.admit(10 << 20).expect("an oversized request alone");
        assert!(a.admit(1).is_err());
        drop(huge);
        assert!(a.admit(1).is_ok());
    }

    #[test]
    fn a_refusal_says_which_limit_and_when_to_come_back() {
        let a = Admission::new(1, 1 << 20, Duration::from_millis(75));
        let _held = a.admit(1).expect("first");
        let s = a.admit(1).expect_err("second").to_status();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        use tonic_types::StatusExt;
        let d = s.get_error_details();
        assert_eq!(d.error_info().map(|i| i.reason.as_str()), Some("OVERLOADED"));
        assert_eq!(
            d.error_info().and_then(|i| i.metadata.get("limit_kind")).map(String::as_str),
            Some("requests")
        );
        assert_eq!(d.retry_info().and_then(|r| r.retry_delay), Some(Duration::from_millis(75)));
        assert!(s.message().contains("in flight"), "{}", s.message());
    }
}
