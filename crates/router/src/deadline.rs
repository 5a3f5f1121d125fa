//! How long the router may spend on a request: the caller's deadline minus time for the answer
//! to travel back.
//!
//! Routing with the caller's whole `grpc-timeout` means that when retries run to the end, the
//! router's own answer ("retries timed out; not applied") is sent just as the caller's timer
//! fires, and the caller sees only its local "timeout expired": an unknown outcome, even for a
//! write the router knows was never applied. So the router stops a little earlier:
//! [`REPLY_SHARE`] of the timeout, at most [`REPLY_MARGIN_MAX`].

use std::time::Duration;

/// Fraction of the caller's timeout kept for the reply (1/10).
const REPLY_SHARE: u32 = 10;
/// A reply over a LAN or loopback takes well under this; longer timeouts need no more.
const REPLY_MARGIN_MAX: Duration = Duration::from_millis(50);

/// The time the router may route for, given the caller's `grpc-timeout` (if any).
pub fn routing_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    ringkv_proto::grpc_timeout(metadata).map(leave_reply_margin)
}

fn leave_reply_margin(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / REPLY_SHARE).min(REPLY_MARGIN_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_router_answers_before_the_caller_gives_up() {
        assert_eq!(leave_reply_margin(Duration::from_secs(2)), Duration::from_millis(1950));
        assert_eq!(leave_reply_margin(Duration::from_millis(100)), Duration::from_millis(90));
        assert_eq!(leave_reply_margin(Duration::ZERO), Duration::ZERO);
    }
}
