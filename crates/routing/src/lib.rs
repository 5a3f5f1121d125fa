//! The routing core: how a request for a key finds the node that can serve it.
//!
//! Used by the ambassador router (`ringkv-router`) and by the client library's direct mode,
//! so the logic exists once. The pieces:
//!
//! - [`topology`]: the shard map, pulled from the nodes (`Admin.GetShardMap`) and versioned by
//!   epoch, plus a leader cache learned from replies and `NOT_LEADER` hints.
//! - [`nodes`]: one gRPC channel per node, with per-node health: in-flight requests, a
//!   latency EWMA, and outlier ejection (a node that fails N times in a row is skipped for a
//!   growing interval, then probed by one request, half-open).
//! - [`balance`]: where a `STALE` read goes among a shard's replicas: round-robin, least
//!   outstanding requests (power of two choices), peak-EWMA latency, or key-hash affinity.
//! - [`retry`]: which failures are safe to retry, a retry budget (retries may add at most a
//!   fixed fraction of load), and jittered exponential backoff bounded by the caller's deadline.
//! - [`skips`]: the nodes one call steers around, and which hints bring them back.
//! - [`outcome`]: whether a failed write may have been applied (`NOT_APPLIED` only when every
//!   attempt was refused before anything was proposed).
//! - [`lanes`]: session lanes for at-most-once writes: every write carries a client id and a
//!   sequence number, so a retry after an unknown outcome is never applied twice.
//! - `map_fetch`: one shard-map fetch shared by the calls that need one at the same moment.
//! - [`cluster`]: the operations, each one a loop of "pick a node, call, learn from the
//!   answer" until success, a final error, the budget or the deadline.
//! - [`events`]: topics, appends, reads and consumer offsets, built from the nodes'
//!   shard-level `Streams` steps; [`watch`]: KV watch merged over shards; [`follow`]: server
//!   streams that follow a shard's leader and resume where they stopped.

pub mod balance;
pub mod cluster;
pub mod config;
pub mod error;
pub mod events;
pub mod follow;
pub mod lanes;
mod map_fetch;
pub mod nodes;
pub mod outcome;
pub mod retry;
pub mod skips;
pub mod topology;
pub mod watch;

pub use cluster::{Cluster, SCAN_LIMIT_DEFAULT, resume_after};
pub use config::{ReadPolicy, RoutingConfig};
pub use error::RoutingError;
pub use outcome::WriteOutcome;
