//! Connections to the nodes, and what the routing core knows of each node's health.
//!
//! One lazily connected gRPC channel per node (HTTP/2 multiplexes every request over it).
//! Health: requests in flight and a peak-EWMA latency feed the read balancing policies;
//! consecutive failures feed outlier ejection. An ejected node is skipped until its interval
//! ends (doubling with each ejection up to a cap); then one request is let through as a probe
//! (half-open): success restores it, failure ejects it again for longer.

use crate::config::RoutingConfig;
use ringkv_placement::NodeId;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_tls::Dialer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
// Every channel to a node adds the credential of the call (see `ringkv_auth::forward`).
use ringkv_auth::AuthChannel as Channel;

/// Largest gRPC message accepted from a node (a full scan page of large values).
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;

#[derive(Debug)]
pub struct NodeEntry {
    pub id: NodeId,
    pub addr: String,
    channel: Channel,
    in_flight: AtomicU64,
    /// Peak EWMA of latency in microseconds.
    ewma_us: AtomicU64,
    failures: AtomicU32,
    ejections: AtomicU32,
    state: Mutex<Health>,
}

/// Outlier-ejection state of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Healthy,
    Ejected {
        /// When the ejection began.
        since: Instant,
        until: Instant,
    },
    /// Half-open: one probe is out. A probe that never reports back (its caller gave up) does
    /// not block the node forever: after `PROBE_TIMEOUT` another probe may go.
    Probing {
        /// When the probe was let through: failures of requests sent before it are not the
        /// probe's.
        opened: Instant,
        since: Instant,
    },
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts a request as in flight while alive.
#[derive(Debug)]
pub struct InFlight(Arc<NodeEntry>, Instant);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    pub fn elapsed(&self) -> Duration {
        self.1.elapsed()
    }

    /// When the request was sent.
    pub fn started(&self) -> Instant {
        self.1
    }
}

impl NodeEntry {
    fn new(
        id: NodeId,
        addr: &str,
        dialer: &Dialer,
        token: Option<&ringkv_auth::Token>,
    ) -> Result<Self, String> {
        let endpoint = dialer
            .endpoint(addr)
            .map_err(|e| format!("bad node address {addr}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = Channel::new(dialer.lazy(&endpoint), token).map_err(|e| e.to_string())?;
        Ok(NodeEntry {
            id,
            addr: addr.to_string(),
            channel,
            in_flight: AtomicU64::new(0),
            ewma_us: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            state: Mutex::new(Health::Healthy),
        })
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone(), Instant::now())
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn ewma_us(&self) -> u64 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    /// Usable now? An expired ejection lets exactly one probe through.
    pub fn available(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match *state {
            Health::Healthy => true,
            Health::Ejected { until, .. } | Health::Probing { since: until, .. } if now < until => {
                false
            }
            Health::Ejected { .. } | Health::Probing { .. } => {
                *state = Health::Probing { opened: now, since: now + PROBE_TIMEOUT };
                tracing::debug!(node = self.id, "letting a probe through");
                true
            }
        }
    }

    /// Ejected and still inside its interval (or its probe is out).
    pub fn is_ejected(&self) -> bool {
        let now = Instant::now();
        match *self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            Health::Healthy => false,
            Health::Ejected { until, .. } | Health::Probing { since: until, .. } => now < until,
        }
    }

    /// Another node just named this one its shard's leader: evidence that it is up again
    /// (a restarted node stays ejected for the rest of its interval, up to `eject_max`, and
    /// every write of its shards would fail meanwhile). Ends the ejection so the next request
    /// is a probe, but only once it has lasted `eject_base`: a hint that is wrong (a stale
    /// vote, or a node this router cannot reach) then costs at most one probe per
    /// `eject_base`, and a failed probe ejects for longer as usual. Returns true if it did.
    pub fn named_leader(&self, cfg: &RoutingConfig) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match *state {
            Health::Ejected { since, until } if now < until && now >= since + cfg.eject_base => {
                *state = Health::Ejected { since, until: now };
                true
            }
            _ => false,
        }
    }

    pub fn ejection_count(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// The node answered a request (with a result or with an error of its own, such as
    /// `NOT_LEADER`): it is reachable, so its failure streak, ejection or probe is over.
    ///
    /// Ejection is for nodes that cannot be reached. Counting only successes here left a node
    /// whose probe was answered `NOT_LEADER` (it had restarted and not yet taken over) in the
    /// probing state for the probe timeout: every replica then named it leader and every call
    /// steered around it for 10 s.
    pub fn on_answer(&self) {
        self.failures.store(0, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *state != Health::Healthy {
            *state = Health::Healthy;
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    pub fn on_success(&self, latency: Duration) {
        self.on_answer();
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let old = self.ewma_us.load(Ordering::Relaxed);
        // Peak EWMA: jump up to a slow sample at once, decay slowly (1/8 per sample).
        let new = if sample > old { sample } else { old - (old - sample) / 8 };
        self.ewma_us.store(new, Ordering::Relaxed);
    }

    /// A transport-level failure of a request sent at `started`. Returns true if it ejected
    /// the node.
    ///
    /// Requests already in flight when the node was ejected fail late, often all at once (a
    /// paused process times them all out together). They say nothing new, so they neither
    /// extend the ejection nor count as failed probes: counting them doubled the interval
    /// once per request and ejected a node paused for 3 s for the 30 s maximum within
    /// milliseconds (seen in a chaos campaign's router log).
    pub fn on_failure(&self, cfg: &RoutingConfig, started: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let stale = match *state {
            Health::Healthy => false,
            Health::Ejected { until, .. } => started < until,
            Health::Probing { opened, .. } => started < opened,
        };
        if stale {
            return false;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        // A failure after the ejection interval is a failed probe, however it was sent.
        let was_probe = *state != Health::Healthy;
        if failures < cfg.eject_after_failures && !was_probe {
            return false;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed);
        let interval = cfg.eject_base.saturating_mul(1u32 << n.min(16)).min(cfg.eject_max);
        let now = Instant::now();
        *state = Health::Ejected { since: now, until: now + interval };
        self.failures.store(0, Ordering::Relaxed);
        tracing::warn!(node = self.id, addr = %self.addr, ?interval, "ejecting node after repeated failures");
        true
    }
}

/// Every known node, by id.
#[derive(Debug, Default)]
pub struct Nodes {
    nodes: RwLock<HashMap<NodeId, Arc<NodeEntry>>>,
    dialer: Dialer,
    token: Option<ringkv_auth::Token>,
}

impl Nodes {
    pub fn new(dialer: Dialer, token: Option<ringkv_auth::Token>) -> Self {
        Nodes { nodes: RwLock::default(), dialer, token }
    }

    /// The entry of `id` at `addr`, created (or replaced, if its address changed) on demand.
    pub fn get(&self, id: NodeId, addr: &str) -> Result<Arc<NodeEntry>, String> {
        if let Some(n) = self.nodes.read().unwrap_or_else(|p| p.into_inner()).get(&id)
            && n.addr == addr
        {
            return Ok(n.clone());
        }
        let entry = Arc::new(NodeEntry::new(id, addr, &self.dialer, self.token.as_ref())?);
        self.nodes.write().unwrap_or_else(|p| p.into_inner()).insert(id, entry.clone());
        Ok(entry)
    }

    pub fn all(&self) -> Vec<Arc<NodeEntry>> {
        let mut v: Vec<_> =
            self.nodes.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by_key(|n| n.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ejects after 3 failures, for 40 ms doubling up to `eject_max`.
    fn ejecting(eject_max: Duration) -> RoutingConfig {
        RoutingConfig {
            eject_after_failures: 3,
            eject_base: Duration::from_millis(40),
            eject_max,
            ..RoutingConfig::default()
        }
    }

    #[tokio::test]
    async fn ejection_grows_then_half_open_probe_restores() {
        let cfg = ejecting(Duration::from_millis(200));
        let n = NodeEntry::new(1, "127.0.0.1:1", &Dialer::plaintext(), None).unwrap();
        let now = Instant::now;
        assert!(!n.on_failure(&cfg, now()) && !n.on_failure(&cfg, now()));
        assert!(n.on_failure(&cfg, now()), "third consecutive failure ejects");
        assert!(!n.available() && n.is_ejected());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(n.available(), "after the interval one probe goes through");
        assert!(!n.available(), "but only one");
        // The probe fails: ejected again, for twice as long.
        assert!(n.on_failure(&cfg, now()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!n.available(), "second ejection lasts 80 ms");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(n.available());
        n.on_success(Duration::from_millis(1));
        assert!(n.available() && n.available(), "a successful probe restores the node");
        assert_eq!(n.ejection_count(), 0);
    }

    #[tokio::test]
    async fn requests_in_flight_at_the_ejection_do_not_extend_it() {
        let cfg = ejecting(Duration::from_secs(30));
        let n = NodeEntry::new(1, "127.0.0.1:1", &Dialer::plaintext(), None).unwrap();
        let sent = Instant::now();
        assert!(!n.on_failure(&cfg, sent) && !n.on_failure(&cfg, sent));
        assert!(n.on_failure(&cfg, sent));
        // Fifty more requests sent before the ejection fail late, together.
        for _ in 0..50 {
            assert!(!n.on_failure(&cfg, sent), "a late failure must not re-eject");
        }
        assert_eq!(n.ejection_count(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(n.available(), "the first 40 ms ejection ended on time");
        // While the probe is out, failures of older requests are not the probe's either.
        assert!(!n.on_failure(&cfg, sent));
        assert_eq!(n.ejection_count(), 1);
        assert!(n.on_failure(&cfg, Instant::now()), "the probe itself failing re-ejects");
        assert_eq!(n.ejection_count(), 2);
    }

    #[tokio::test]
    async fn a_node_named_leader_is_probed_early_but_at_most_once_per_base_interval() {
        let cfg = ejecting(Duration::from_secs(30));
        let n = NodeEntry::new(1, "127.0.0.1:1", &Dialer::plaintext(), None).unwrap();
        for _ in 0..3 {
            n.on_failure(&cfg, Instant::now());
        }
        // A failed probe: the second ejection lasts twice eject_base.
        tokio::time::sleep(cfg.eject_base).await;
        assert!(n.available());
        assert!(n.on_failure(&cfg, Instant::now()));
        assert!(n.is_ejected());
        assert!(!n.named_leader(&cfg), "a hint right after the ejection does not end it");
        assert!(!n.available());
        tokio::time::sleep(cfg.eject_base).await;
        assert!(n.named_leader(&cfg), "after eject_base a hint opens a probe");
        assert!(n.available(), "the probe goes");
        assert!(!n.available(), "one at a time");
        // The probe fails: ejected for longer, and the next hint must wait again.
        assert!(n.on_failure(&cfg, Instant::now()));
        assert!(!n.named_leader(&cfg) && !n.available());
    }

    #[tokio::test]
    async fn a_probe_answered_with_an_error_still_restores_the_node() {
        let cfg = ejecting(Duration::from_secs(30));
        let n = NodeEntry::new(1, "127.0.0.1:1", &Dialer::plaintext(), None).unwrap();
        for _ in 0..3 {
            n.on_failure(&cfg, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(n.available(), "the probe goes");
        assert!(!n.available(), "and holds the node until it reports");
        // It comes back NOT_LEADER: the node is reachable again.
        n.on_answer();
        assert!(n.available() && n.available() && !n.is_ejected());
        assert_eq!(n.ejection_count(), 0, "the next ejection starts from eject_base again");
        assert_eq!(n.ewma_us(), 0, "an error answer is no latency sample");
    }

    #[tokio::test]
    async fn peak_ewma_jumps_up_and_decays_slowly() {
        let n = NodeEntry::new(1, "127.0.0.1:1", &Dialer::plaintext(), None).unwrap();
        n.on_success(Duration::from_millis(10));
        assert_eq!(n.ewma_us(), 10_000);
        n.on_success(Duration::from_millis(2));
        assert_eq!(n.ewma_us(), 9_000);
        n.on_success(Duration::from_millis(50));
        assert_eq!(n.ewma_us(), 50_000);
    }
}
