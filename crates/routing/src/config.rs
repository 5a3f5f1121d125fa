//! Routing settings. Defaults suit a LAN cluster.

use std::time::Duration;

/// How `STALE` reads pick among a shard's replicas. Writes and linearizable reads always go to
/// the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadPolicy {
    /// Each replica in turn.
    #[default]
    RoundRobin,
    /// Two random replicas, the one with fewer requests in flight (power of two choices).
    LeastOutstanding,
    /// Two random replicas, the one with the lower peak-EWMA latency × (in flight + 1).
    PeakEwma,
    /// Always the same replica for the same key (cache-friendly), unless it is ejected.
    KeyAffinity,
}

impl std::str::FromStr for ReadPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" => Ok(ReadPolicy::RoundRobin),
            "least-outstanding" => Ok(ReadPolicy::LeastOutstanding),
            "peak-ewma" => Ok(ReadPolicy::PeakEwma),
            "key-affinity" => Ok(ReadPolicy::KeyAffinity),
            other => Err(format!(
                "unknown read policy {other:?}: use round-robin, least-outstanding, peak-ewma or key-affinity"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Node addresses to fetch the shard map from (any one suffices).
    pub seeds: Vec<String>,
    pub read_policy: ReadPolicy,
    /// Deadline of a request whose caller set none.
    pub default_timeout: Duration,
    /// Re-fetch the shard map this often even without errors.
    pub refresh_interval: Duration,
    /// Retries may add at most this fraction of the request rate (plus `retry_min_per_sec`).
    pub retry_ratio: f64,
    pub retry_min_per_sec: f64,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Consecutive failures that eject a node.
    pub eject_after_failures: u32,
    pub eject_base: Duration,
    pub eject_max: Duration,
    /// Concurrent writes per routing core (one session lane each).
    pub write_lanes_max: usize,
    /// How nodes are dialed: plaintext, or TLS with the CA (and this process's certificate,
    /// for clusters that want one from routers).
    pub dialer: ringkv_tls::Dialer,
    /// The bearer token of this process (the client's, or a router's own): sent on every
    /// call not made for a caller whose credential is forwarded (see `ringkv_auth::forward`).
    pub token: Option<ringkv_auth::Token>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            seeds: Vec::new(),
            read_policy: ReadPolicy::default(),
            default_timeout: Duration::from_secs(10),
            refresh_interval: Duration::from_secs(30),
            retry_ratio: 0.2,
            retry_min_per_sec: 50.0,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            eject_after_failures: 5,
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(30),
            write_lanes_max: 1024,
            dialer: ringkv_tls::Dialer::plaintext(),
            token: None,
        }
    }
}
